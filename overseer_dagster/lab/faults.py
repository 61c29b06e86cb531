"""Faults a lab replica, or the lab's gateway, can be given (control API, `Lab.apply_fault`, scenario files,
`overseer lab fault TARGET FAULT_JSON --gateway URL`).

A replica's faults (`POST /lab/replicas/{id}/faults` on the gateway's port, or `POST /lab/faults` on the replica's
own port) are JSON, one object with a `kind`:
- `{"kind": "kill"}`: the server closes its listening socket and every connection (connection refused) until
  `recover`, which re-binds the SAME port with a fresh engine (counters restart, as after a process restart).
- `{"kind": "hang"}`: connections are accepted but nothing is answered (health times out); decoding stalls.
- `{"kind": "slow", "factor": 3}`: prefill and decode steps take `factor` times as long.
- `{"kind": "error_burst", "count": 5}` or `{"kind": "error_burst", "duration_s": 10}`: the next `count` chat
  requests (or all for `duration_s`) fail; `"mode": "5xx"` (default; `"status"`, default 500) or `"empty"`
  (200 with an empty completion).
- `{"kind": "flap", "period_s": 2, "duration_s": 20}`: alternate dead (as `kill`) and alive every `period_s`
  for `duration_s`, ending alive.
- `{"kind": "engine_dead"}`: the server answers but the engine is gone: `/health` 503, chat requests 500.
- `{"kind": "recover"}`: clear every fault.
`kill`, `hang`, `slow` and `engine_dead` take an optional `duration_s`, after which that fault clears itself.

The gateway's one fault (`POST /lab/gateway/faults`; the target `gateway`):
- `{"kind": "outage", "duration_s": 240}`: the gateway's port closes and every open connection is reset, so
  `/v1`, `/fleet/state`, the router admin and the lab's own control endpoints (they live on that port) all
  refuse connections; the replicas keep running. After `duration_s` (required: nothing could reach the lab to
  end it otherwise) it re-binds the SAME port with its routing state, health breakers and latency windows as they
  were (its probes ran on inside), as a gateway restarted from persisted state. Requests in flight when it goes
  down are recorded failed, `gateway_down`. Another outage while down restarts the countdown.

`parse_fault(target, json)` validates one for its target and raises `FaultError` naming the field and the problem
(`kind: 'explode' is not one of kill, ...`, `duration_s: required: ...`); the control API answers 400 with it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Kill(_Fault):
    kind: Literal["kill"] = "kill"
    duration_s: float | None = Field(default=None, gt=0)


class Hang(_Fault):
    kind: Literal["hang"] = "hang"
    duration_s: float | None = Field(default=None, gt=0)


class Slow(_Fault):
    kind: Literal["slow"] = "slow"
    factor: float = Field(default=3.0, gt=0)
    duration_s: float | None = Field(default=None, gt=0)


class ErrorBurst(_Fault):
    kind: Literal["error_burst"] = "error_burst"
    count: int | None = Field(default=None, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    mode: Literal["5xx", "empty"] = "5xx"
    status: int = Field(default=500, ge=500, le=599)

    @model_validator(mode="after")
    def _bounded(self) -> ErrorBurst:
        if self.count is None and self.duration_s is None:
            raise ValueError("error_burst needs count or duration_s")
        return self


class Flap(_Fault):
    kind: Literal["flap"] = "flap"
    period_s: float = Field(gt=0)
    duration_s: float = Field(gt=0)


class EngineDead(_Fault):
    kind: Literal["engine_dead"] = "engine_dead"
    duration_s: float | None = Field(default=None, gt=0)


class Recover(_Fault):
    kind: Literal["recover"] = "recover"


Fault = Annotated[Kill | Hang | Slow | ErrorBurst | Flap | EngineDead | Recover, Field(discriminator="kind")]
FAULT_KINDS = ("kill", "hang", "slow", "error_burst", "flap", "engine_dead", "recover")
FAULT_ADAPTER: TypeAdapter[Fault] = TypeAdapter(Fault)


# -- the gateway ----------------------------------------------------------------------------------------------

GATEWAY = "gateway"  # the target name of the lab's gateway (CLI, control API); never a replica id


class Outage(_Fault):
    kind: Literal["outage"]
    duration_s: float = Field(gt=0)


GATEWAY_FAULT_KINDS = ("outage",)
GATEWAY_FAULT_ADAPTER: TypeAdapter[Outage] = TypeAdapter(Outage)


class FaultError(ValueError):
    """A fault JSON that cannot be applied: the message names the field and the problem."""


def _describe(exc: ValidationError, kinds: tuple[str, ...]) -> str:
    """`field: problem` per error of one fault object (pydantic's union branch names left out)."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in kinds)]
        path = ".".join(str(p) for p in loc)
        if err["type"] == "union_tag_invalid":
            path, msg = (f"{path}.kind" if path else "kind"), f"{err['ctx']['tag']!r} is not one of {', '.join(kinds)}"
        elif err["type"] == "union_tag_not_found":
            path, msg = (f"{path}.kind" if path else "kind"), f"required, one of {', '.join(kinds)}"
        elif err["type"] == "literal_error" and loc and loc[-1] == "kind":
            msg = f"{err['input']!r} is not one of {', '.join(kinds)}"
        elif err["type"] == "missing" and loc == ["kind"]:
            msg = f"required, one of {', '.join(kinds)}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{path or '(top level)'}: {msg}")
    return "; ".join(out)


def parse_fault(target: str, body: str | bytes | dict[str, Any]) -> Fault | Outage:
    """The fault for `target` (a replica id, or `gateway`) from its JSON; `FaultError` says what is wrong."""
    if not isinstance(body, dict):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FaultError(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise FaultError("a fault is a JSON object with a kind, e.g. {\"kind\": \"kill\", \"duration_s\": 90}")
    gateway = target == GATEWAY
    if gateway and body.get("kind") in FAULT_KINDS:
        raise FaultError(f"kind: {body['kind']!r} is a replica fault; the gateway takes "
                         f"{', '.join(GATEWAY_FAULT_KINDS)} (with duration_s)")
    if not gateway and body.get("kind") in GATEWAY_FAULT_KINDS:
        raise FaultError(f"kind: {body['kind']!r} is the gateway's fault (target {GATEWAY}); a replica takes "
                         f"{', '.join(FAULT_KINDS)}")
    if gateway and body.get("kind") == "outage" and "duration_s" not in body:
        raise FaultError("duration_s: required: the lab's control API lives on the gateway's port, so an outage "
                         "must end by itself")
    adapter: TypeAdapter[Any] = GATEWAY_FAULT_ADAPTER if gateway else FAULT_ADAPTER
    try:
        return adapter.validate_python(body)
    except ValidationError as exc:
        raise FaultError(_describe(exc, GATEWAY_FAULT_KINDS if gateway else FAULT_KINDS)) from None
