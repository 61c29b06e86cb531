"""Scenario files: timed faults and traffic phases for a running lab (`lab up --scenario FILE`).

A JSON object; times are seconds from the moment the lab is ready:

    {
      "name": "kill one replica under steady load",           (optional)
      "faults": [
        {"at_s": 5,  "replica": "replica-01", "kind": "kill"},
        {"at_s": 15, "replica": "replica-01", "kind": "recover"},
        {"at_s": 20, "replica": "replica-02", "kind": "slow", "factor": 4, "duration_s": 10},
        {"at_s": 25, "replica": "replica-03", "kind": "error_burst", "count": 5, "mode": "5xx"},
        {"at_s": 30, "replica": "replica-00", "kind": "flap", "period_s": 2, "duration_s": 12}
      ],
      "gateway": [
        {"at_s": 60, "kind": "outage", "duration_s": 30}
      ],
      "traffic": [
        {"at_s": 0, "duration_s": 60, "profile": {"kind": "steady", "rate": 2}},
        {"at_s": 10, "duration_s": 40, "demand_kind": "unlabeled", "seed": 7,
         "profile": {"kind": "step_spike", "base": 1, "peak": 6, "at_s": 10, "hold_s": 10},
         "prompt_tokens": {"median": 300, "sigma": 0.5, "min": 8, "max": 2000},
         "max_tokens": {"median": 128, "sigma": 0.4, "min": 8, "max": 512}},
        {"at_s": 0, "profile": {"kind": "trace", "path": "trace.csv"}}
      ]
    }

Fault entries: `at_s`, `replica` and one fault object's fields (kinds and fields: `overseer_dagster.lab.faults`).
Gateway entries: `at_s`, `"kind": "outage"` and `duration_s` (required): the gateway's port refuses connections
for that long (`/v1`, `/fleet/state`, the router admin, the lab's control endpoints), the replicas keep running,
then it re-binds the same port with its routing state. The gateway is not a replica: `"replica": "gateway"` in
`faults` is refused, pointing here.
Traffic entries: `at_s`, `profile` (`steady` rate / `step_spike` base, peak, at_s, hold_s / `sine` mean,
amplitude, period_s / `trace` path: a `t_s,rate` CSV relative to the scenario file), `duration_s` (required
except for a trace), optional `demand_kind` (default external), `seed`, `prompt_tokens`, `max_tokens`
(`{"median", "sigma", "min", "max"}`, lognormal). Unknown fields are refused. Errors name the file and field:
`scenario.json: faults[2].kind: 'explode' is not one of kill, hang, ...`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from overseer_dagster.core.demand import DemandKind
from overseer_dagster.lab.faults import FAULT_KINDS, GATEWAY, GATEWAY_FAULT_KINDS, Fault
from overseer_dagster.lab.profiles import Profile, Sizes, Trace
from overseer_dagster.lab.traffic import ClientPool, TrafficGenerator

log = logging.getLogger(__name__)

_PROFILE_KINDS = ("steady", "step_spike", "sine", "trace")


class ScenarioError(ValueError):
    pass


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduledFault(_Model):
    at_s: float = Field(ge=0)
    replica: str
    fault: Fault

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        """The file has the fault's fields next to at_s and replica."""
        if isinstance(data, dict) and "fault" not in data:
            rest = {k: v for k, v in data.items() if k not in ("at_s", "replica")}
            return {**{k: data[k] for k in ("at_s", "replica") if k in data}, "fault": rest}
        return data

    @field_validator("replica")
    @classmethod
    def _not_the_gateway(cls, replica: str) -> str:
        if replica == GATEWAY:
            raise ValueError('the gateway is not a replica: its outage goes in the "gateway" list, '
                             '{"at_s": T, "kind": "outage", "duration_s": S}')
        return replica


class ScheduledOutage(_Model):
    """The gateway's outage: its port closed for `duration_s`, then re-bound (see `faults.Outage`)."""

    at_s: float = Field(ge=0)
    kind: Literal["outage"]
    duration_s: float = Field(gt=0)


class TrafficPhase(_Model):
    at_s: float = Field(default=0.0, ge=0)
    duration_s: float | None = Field(default=None, gt=0)
    profile: Profile
    demand_kind: DemandKind = DemandKind.external
    seed: int = 0
    prompt_tokens: Sizes | None = None
    max_tokens: Sizes | None = None

    @model_validator(mode="after")
    def _bounded(self) -> TrafficPhase:
        if self.duration_s is None and not isinstance(self.profile, Trace):
            raise ValueError("duration_s is required unless the profile is a trace")
        return self


class Scenario(_Model):
    name: str | None = None
    faults: tuple[ScheduledFault, ...] = ()
    gateway: tuple[ScheduledOutage, ...] = ()
    traffic: tuple[TrafficPhase, ...] = ()

    def check_replicas(self, replica_ids: list[str], source: str = "scenario") -> None:
        for i, f in enumerate(self.faults):
            if f.replica not in replica_ids:
                raise ScenarioError(
                    f"{source}: faults[{i}].replica: {f.replica!r} is not a replica of this lab "
                    f"({', '.join(replica_ids)})")

    @property
    def end_s(self) -> float:
        ends = [f.at_s for f in self.faults]
        ends += [g.at_s + g.duration_s for g in self.gateway]
        for phase in self.traffic:
            length = phase.duration_s if phase.duration_s is not None else phase.profile.end_s
            ends.append(phase.at_s + (length or 0.0))
        return max(ends, default=0.0)


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    skip_tag = False
    for part in loc:
        if skip_tag:
            skip_tag = False
            if isinstance(part, str) and part in (*FAULT_KINDS, *_PROFILE_KINDS):
                continue  # pydantic's discriminated-union branch name, not a field
        if part == "fault":  # the flat file has no "fault" level
            skip_tag = True
            continue
        if part == "profile":
            skip_tag = True
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        path = _field_path(tuple(err["loc"]))
        if err["type"] == "union_tag_invalid":
            path = f"{path}.kind" if path else "kind"
            kinds = FAULT_KINDS if "faults" in err["loc"] else _PROFILE_KINDS
            msg = f"{err['ctx']['tag']!r} is not one of {', '.join(kinds)}"
        elif err["type"] == "union_tag_not_found":
            path = f"{path}.kind" if path else "kind"
            msg = "kind is required"
        elif err["loc"][:1] == ("gateway",) and err["loc"][-1] == "kind":
            msg = ("kind is required" if err["type"] == "missing"
                   else f"{err['input']!r} is not one of {', '.join(GATEWAY_FAULT_KINDS)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {path or '(top level)'}: {msg}")
    return "\n".join(lines)


def parse_scenario(text: str, *, source: str = "scenario.json", base_dir: Path | None = None) -> Scenario:
    """Validate a scenario and load its trace files; `ScenarioError` names the file and field (or line)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{source}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: (top level): a scenario is a JSON object")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_describe(source, exc)) from None
    phases = []
    for i, phase in enumerate(scenario.traffic):
        if isinstance(phase.profile, Trace):
            try:
                phase = phase.model_copy(update={"profile": phase.profile.loaded(base_dir)})
            except (OSError, ValueError) as exc:
                raise ScenarioError(f"{source}: traffic[{i}].profile.path: {exc}") from None
        phases.append(phase)
    return scenario.model_copy(update={"traffic": tuple(phases)})


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path.name}: {exc.strerror or exc}") from None
    return parse_scenario(text, source=path.name, base_dir=path.parent)


async def run_scenario(lab: Any, scenario: Scenario) -> list[dict[str, Any]]:
    """Apply the faults and run the traffic phases on `lab` (a started `Lab`); the phases' summaries."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def fault_at(item: ScheduledFault) -> None:
        await asyncio.sleep(max(0.0, t0 + item.at_s - loop.time()))
        log.info("scenario t=%.1fs: %s %s", loop.time() - t0, item.replica, item.fault.kind)
        await lab.apply_fault(item.replica, item.fault)

    async def outage_at(item: ScheduledOutage) -> None:
        await asyncio.sleep(max(0.0, t0 + item.at_s - loop.time()))
        log.info("scenario t=%.1fs: gateway outage for %gs", loop.time() - t0, item.duration_s)
        await lab.gateway_outage(item.duration_s)

    async def phase_at(phase: TrafficPhase, clients: ClientPool) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, t0 + phase.at_s - loop.time()))
        gen = TrafficGenerator(lab.gateway_url, phase.profile, duration_s=phase.duration_s, seed=phase.seed,
                               prompt_tokens=phase.prompt_tokens, max_tokens=phase.max_tokens,
                               demand_kind=phase.demand_kind.value, clients=clients)
        summary = (await gen.run()).to_dict()
        log.info("scenario traffic phase at %.0fs done: %s", phase.at_s, summary)
        return summary

    async with ClientPool() as clients:
        results = await asyncio.gather(*(fault_at(f) for f in scenario.faults),
                                       *(outage_at(g) for g in scenario.gateway),
                                       *(phase_at(p, clients) for p in scenario.traffic))
    return [r for r in results if r is not None]
