"""The scrubber: the one function every public projection passes through. (Stub: being written.)"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    start: int
    end: int


def findings(text: str) -> list[Finding]:
    return []


def redact(text: str) -> str:
    return text


def is_public_safe(text: str) -> bool:
    return not findings(text)
