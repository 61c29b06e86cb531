"""Reading an OpenAI chat-completion SSE stream cheaply: split events, time them, JSON-parse only the last ones."""

from __future__ import annotations

import json
import re
from typing import Any

_FINISH = re.compile(rb'"finish_reason":"([a-z_]+)"')


class StreamStats:
    """Feed it raw bytes as they arrive; it keeps first/last content time, finish reason, usage and errors."""

    __slots__ = ("_buf", "first_t", "last_t", "finish_reason", "usage", "error", "done", "content_events")

    def __init__(self) -> None:
        self._buf = b""
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.done = False
        self.content_events = 0

    def feed(self, data: bytes, now: float, *, drop_usage: bool = False) -> bytes:
        """Account for `data`; return the complete events to forward (without the usage event if `drop_usage`)."""
        buf = self._buf + data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        complete, self._buf = buf[: end + 2], buf[end + 2:]
        dropped = False
        kept = []
        for event in complete.split(b"\n\n")[:-1]:
            if not event.startswith(b"data: "):
                kept.append(event)
                continue
            if event.startswith(b"data: [DONE]"):
                self.done = True
            elif b'"choices":[]' in event and b'"usage":{' in event:
                self.usage = json.loads(event[6:]).get("usage")
                if drop_usage:
                    dropped = True
                    continue
            elif event.startswith(b'data: {"error"'):
                self.error = json.loads(event[6:]).get("error")
            else:
                if self.first_t is None:
                    self.first_t = now
                self.last_t = now
                self.content_events += 1
                if self.finish_reason is None and b'"finish_reason":"' in event:
                    m = _FINISH.search(event)
                    if m:
                        self.finish_reason = m.group(1).decode()
            kept.append(event)
        if not dropped:
            return complete
        return b"".join(e + b"\n\n" for e in kept)

    @property
    def completion_tokens(self) -> int:
        return int(self.usage.get("completion_tokens", 0)) if self.usage else 0

    @property
    def prompt_tokens(self) -> int:
        return int(self.usage.get("prompt_tokens", 0)) if self.usage else 0

    def itl(self) -> float | None:
        """Mean inter-token latency: (last content - first content) / (tokens - 1)."""
        n = self.completion_tokens
        if self.first_t is None or self.last_t is None or n < 2:
            return None
        return max(0.0, (self.last_t - self.first_t) / (n - 1))
