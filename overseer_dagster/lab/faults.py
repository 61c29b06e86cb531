"""Faults a lab replica can be given (control API `POST /lab/faults`, `Lab.apply_fault`, scenario files).

JSON, one object with a `kind`:
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
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


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
