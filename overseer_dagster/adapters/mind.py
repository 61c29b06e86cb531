"""Minds: who proposes a tick's actions. Each answers with raw text (or says it is unavailable);
the answer is untrusted and goes through the same parser whichever mind wrote it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from overseer_dagster.core import policy
from overseer_dagster.core.context import TickContext


@dataclass(frozen=True, slots=True)
class MindAnswer:
    raw: str | None
    # A skip reason code when there is no answer: mind_unconfigured | mind_unavailable.
    unavailable: str | None = None
    detail: str | None = None


class Mind(Protocol):
    name: str

    def propose(self, ctx: TickContext) -> MindAnswer: ...


class RuleMind:
    """The built-in deterministic rule policy."""

    name = "rule"

    def propose(self, ctx: TickContext) -> MindAnswer:
        return MindAnswer(raw=policy.propose(ctx))


class UnconfiguredMind:
    name = "unconfigured"

    def __init__(self, detail: str) -> None:
        self.detail = detail

    def propose(self, ctx: TickContext) -> MindAnswer:
        return MindAnswer(raw=None, unavailable="mind_unconfigured", detail=self.detail)
