"""A mind script: the answers a scripted mind replays, one entry per proposal, in order.

The same file drives the in-process `ScriptMind` (`OVERSEER_MIND=script:FILE`) and the lab's
scripted OpenAI-compatible endpoint (`overseer_dagster.lab.script_mind`). It is JSON Lines (one
entry a line, blank lines ignored) or one JSON list of entries. An entry is:

- a string: the raw answer text, returned as-is (garbage on purpose is fine: the parser judges it);
- `{"unavailable": CODE}`: no answer, for the reason code CODE (`timeout`, `http_503`,
  `malformed_response`, ...);
- `{"delay_s": S}`: the server stalls S seconds and gives up (a timeout for a client that waits
  less); with `"answer": TEXT` or `"unavailable": CODE` it answers that after the delay.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# A reason code, never free text: it lands in the journal's `detail`.
UNAVAILABLE_CODE_PATTERN = r"^[a-z0-9_]{1,32}$"
MAX_SCRIPT_BYTES = 8 * 1024 * 1024


class ScriptError(ValueError):
    """The script cannot be used; the message names the entry and the problem (never its text)."""


class ScriptEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    answer: str | None = None
    unavailable: str | None = Field(default=None, pattern=UNAVAILABLE_CODE_PATTERN)
    delay_s: float = Field(default=0.0, ge=0, le=3600, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_outcome(self) -> ScriptEntry:
        if self.answer is not None and self.unavailable is not None:
            raise ValueError("an entry has an answer or is unavailable, not both")
        if self.answer is None and self.unavailable is None and self.delay_s == 0:
            raise ValueError("an entry needs an answer, an unavailable code or a delay_s")
        return self

    @property
    def stalls(self) -> bool:
        """A bare delay: no answer ever comes."""
        return self.answer is None and self.unavailable is None


def parse_script(text: str) -> tuple[ScriptEntry, ...]:
    """Entries from JSON Lines or a JSON list. Raises ScriptError naming the first bad entry."""
    if len(text) > MAX_SCRIPT_BYTES:
        raise ScriptError(f"the script is larger than {MAX_SCRIPT_BYTES} bytes")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ScriptError(f"not a JSON list: {error.msg} (line {error.lineno})") from None
        located = [(f"entry {i}", item) for i, item in enumerate(items)]
    else:
        located = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                located.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise ScriptError(f"line {number}: not JSON: {error.msg}") from None
    if not located:
        raise ScriptError("the script has no entries")
    return tuple(_entry(where, item) for where, item in located)


def _entry(where: str, item: object) -> ScriptEntry:
    if isinstance(item, str):
        return ScriptEntry(answer=item)
    if not isinstance(item, dict):
        raise ScriptError(f"{where}: an entry is a string or an object, not {type(item).__name__}")
    try:
        return ScriptEntry.model_validate(item)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(p) for p in first["loc"]) or "entry"
        raise ScriptError(f"{where}: {loc}: {first['msg']}") from None
