"""Demand profiles (arrival rate over time, requests/s) and request-size distributions for the traffic generator.

Profiles: `steady(rate)`, `step_spike(base, peak, at_s, hold_s)`, `sine(mean, amplitude, period_s)`, and a CSV
trace `t_s,rate` (a header row; the rate holds from its `t_s` to the next row's; the last row's `t_s` ends it).
On the command line: `steady:rate=2`, `step_spike:base=1,peak=8,at_s=30,hold_s=20`,
`sine:mean=4,amplitude=3,period_s=60`, `trace:path=FILE` (or `trace:FILE`).
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Steady(_Model):
    kind: Literal["steady"] = "steady"
    rate: float = Field(ge=0)

    def rate_at(self, t: float) -> float:
        return self.rate

    @property
    def peak(self) -> float:
        return self.rate

    @property
    def end_s(self) -> float | None:
        return None


class StepSpike(_Model):
    kind: Literal["step_spike"] = "step_spike"
    base: float = Field(ge=0)
    peak: float = Field(ge=0)
    at_s: float = Field(ge=0)
    hold_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _spike_above_base(self) -> StepSpike:
        if self.peak < self.base:
            raise ValueError("peak must be >= base")
        return self

    def rate_at(self, t: float) -> float:
        return self.peak if self.at_s <= t < self.at_s + self.hold_s else self.base

    @property
    def end_s(self) -> float | None:
        return None


class Sine(_Model):
    kind: Literal["sine"] = "sine"
    mean: float = Field(ge=0)
    amplitude: float = Field(ge=0)
    period_s: float = Field(gt=0)

    def rate_at(self, t: float) -> float:
        return max(0.0, self.mean + self.amplitude * math.sin(2 * math.pi * t / self.period_s))

    @property
    def peak(self) -> float:
        return self.mean + self.amplitude

    @property
    def end_s(self) -> float | None:
        return None


class Trace(_Model):
    kind: Literal["trace"] = "trace"
    # A CSV file (relative to the scenario file when in one), or the rows themselves.
    path: str | None = None
    points: tuple[tuple[float, float], ...] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Trace:
        if (self.path is None) == (self.points is None):
            raise ValueError("trace needs exactly one of path or points")
        if self.points is not None:
            _check_points(self.points)
        return self

    def loaded(self, base_dir: Path | None = None) -> Trace:
        if self.points is not None:
            return self
        assert self.path is not None
        path = Path(self.path)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return Trace(points=load_trace_points(path))

    def rate_at(self, t: float) -> float:
        assert self.points is not None, "trace not loaded"
        rate = 0.0
        for t_s, r in self.points:
            if t_s > t:
                break
            rate = r
        return rate if t < self.points[-1][0] else 0.0

    @property
    def peak(self) -> float:
        assert self.points is not None, "trace not loaded"
        return max(r for _, r in self.points)

    @property
    def end_s(self) -> float | None:
        assert self.points is not None, "trace not loaded"
        return self.points[-1][0]


Profile = Annotated[Steady | StepSpike | Sine | Trace, Field(discriminator="kind")]
PROFILE_ADAPTER: TypeAdapter[Profile] = TypeAdapter(Profile)


def steady(rate: float) -> Steady:
    return Steady(rate=rate)


def step_spike(base: float, peak: float, at_s: float, hold_s: float) -> StepSpike:
    return StepSpike(base=base, peak=peak, at_s=at_s, hold_s=hold_s)


def sine(mean: float, amplitude: float, period_s: float) -> Sine:
    return Sine(mean=mean, amplitude=amplitude, period_s=period_s)


def trace(path: str | Path) -> Trace:
    return Trace(points=load_trace_points(Path(path)))


def _check_points(points: tuple[tuple[float, float], ...]) -> None:
    if not points:
        raise ValueError("trace has no rows")
    for (t0, _), (t1, _) in zip(points, points[1:]):
        if t1 <= t0:
            raise ValueError(f"trace t_s must increase (got {t1:g} after {t0:g})")
    if any(r < 0 or t < 0 for t, r in points):
        raise ValueError("trace t_s and rate must be >= 0")


def load_trace_points(path: Path) -> tuple[tuple[float, float], ...]:
    """Rows of a `t_s,rate` CSV; errors name the file and line."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["t_s", "rate"]:
        raise ValueError(f"{path.name}:1: header must be t_s,rate")
    points = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            t_s, rate = (float(c) for c in row)
        except ValueError:
            raise ValueError(f"{path.name}:{lineno}: expected two numbers, got {','.join(row)!r}") from None
        points.append((t_s, rate))
    try:
        _check_points(tuple(points))
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    return tuple(points)


def parse_profile(spec: str) -> Steady | StepSpike | Sine | Trace:
    """`name:key=value,...` (see module docstring)."""
    name, _, args = spec.partition(":")
    name = name.strip()
    if name == "trace":
        path = args[5:] if args.startswith("path=") else args
        if not path:
            raise ValueError("trace needs a file: trace:path=FILE")
        return trace(path)
    fields: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"{spec!r}: expected key=value, got {part!r}")
        try:
            fields[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{spec!r}: {key.strip()} must be a number") from None
    return PROFILE_ADAPTER.validate_python({"kind": name, **fields})


class Sizes(_Model):
    """Token counts: lognormal around `median` (`sigma` 0 = constant), clipped to [min, max]."""

    median: float = Field(gt=0)
    sigma: float = Field(default=0.0, ge=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=4096, ge=1)

    def sample(self, rng: random.Random) -> int:
        value = self.median if self.sigma == 0 else rng.lognormvariate(math.log(self.median), self.sigma)
        return int(min(self.max, max(self.min, round(value))))
