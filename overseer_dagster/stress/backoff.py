"""Backing off a replica that answers stress with errors or garbage: exponential, then one probe at a time.

Pure, with `now` passed in. After `n` consecutive failures the replica gets no new stress for
`base_s * 2**(n-1)` (at most `max_s`); when that has passed, one request probes it (half-open) and a
success restores it. It is never hammered: at most one request is in flight to a replica that last failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ReplicaBackoff:
    base_s: float = 0.5
    max_s: float = 30.0
    failures: int = 0
    until: float = 0.0
    last_reason: str | None = None
    # Reason code -> count, for the report.
    reasons: dict[str, int] = field(default_factory=dict)

    def failure(self, now: float, reason: str) -> float:
        """Record a failure; returns the new backoff delay in seconds."""
        self.failures += 1
        self.last_reason = reason
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        delay = min(self.max_s, self.base_s * 2 ** (self.failures - 1))
        self.until = max(self.until, now + delay)
        return delay

    def success(self) -> None:
        self.failures = 0
        self.until = 0.0

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def cap(self, now: float) -> int | None:
        """Most requests allowed in flight: None (no limit), 0 (backing off) or 1 (one probe)."""
        if self.failures == 0:
            return None
        return 0 if now < self.until else 1
