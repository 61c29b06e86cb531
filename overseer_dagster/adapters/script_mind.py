"""The scripted mind (`OVERSEER_MIND=script:FILE`): replays a mind script, one entry per proposal.

Ticks run in separate processes, so the position lives in a small state file (by default
`OVERSEER_HOME/mind-script.pos`), locked while an entry is claimed. It is keyed by the script's
digest: editing the script starts it again from the top. Past the last entry the mind is
unavailable (`script_exhausted`); it does not cycle, so a test that runs too far sees a skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from overseer_dagster.adapters.mind import MindAnswer
from overseer_dagster.core.context import TickContext
from overseer_dagster.core.mind_script import ScriptEntry, ScriptError, parse_script

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: ticks never overlap anyway (deciding lease)
    fcntl = None  # type: ignore[assignment]

STATE_FILE = "mind-script.pos"


class ScriptMind:
    name = "script"

    def __init__(self, script: Path, state: Path, *, timeout_s: float = 20.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.script = Path(script)
        self.state = Path(state)
        self.timeout_s = timeout_s
        self._sleep = sleep

    def propose(self, ctx: TickContext) -> MindAnswer:
        try:
            text = self.script.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return MindAnswer(raw=None, unavailable="mind_unconfigured",
                              detail="OVERSEER_MIND=script:FILE: the script file is missing or unreadable")
        try:
            entries = parse_script(text)
        except ScriptError as error:
            return MindAnswer(raw=None, unavailable="mind_unconfigured", detail=f"OVERSEER_MIND script: {error}")
        position = self._claim(hashlib.sha256(text.encode()).hexdigest())
        if position >= len(entries):
            return MindAnswer(raw=None, unavailable="mind_unavailable", detail="script_exhausted")
        return self._play(entries[position])

    def _play(self, entry: ScriptEntry) -> MindAnswer:
        if entry.delay_s >= self.timeout_s:
            self._sleep(self.timeout_s)
            return MindAnswer(raw=None, unavailable="mind_unavailable", detail="timeout")
        if entry.delay_s:
            self._sleep(entry.delay_s)
        if entry.answer is not None:
            return MindAnswer(raw=entry.answer)
        # A bare delay within the timeout: the server gave up (the lab's endpoint answers 504).
        return MindAnswer(raw=None, unavailable="mind_unavailable", detail=entry.unavailable or "http_504")

    def _claim(self, digest: str) -> int:
        """The position of this proposal's entry; the next proposal (any process) gets the one after."""
        self.state.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state, "a+", encoding="utf-8") as f:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            try:
                saved = json.loads(f.read() or "{}")
                position = saved["next"] if saved.get("script_sha256") == digest else 0
                position = position if isinstance(position, int) and position >= 0 else 0
            except (ValueError, TypeError, KeyError, AttributeError):
                position = 0  # an unreadable state file starts the script again
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"script_sha256": digest, "next": position + 1}))
            f.flush()
            os.fsync(f.fileno())
        return position
