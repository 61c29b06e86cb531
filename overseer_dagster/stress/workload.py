"""The built-in stress workload: a seeded mix of fixed-shape synthetic prompts and coding-session shapes.

- `synthetic`: the same prompt length and output length every time (`ignore_eos`), for clean tokens/s.
- `coding`: sessions per replica sharing one long repository prefix (prefix caching sees it again and
  again), multi-turn: each turn resends the conversation so far plus a new question.

Every body is an OpenAI chat completion, streaming with `stream_options.include_usage`, carrying the OpenAI
`user` field so the stress is recognisable in any log. Nothing here is secret or user data: the text is
generated from a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

STRESS_USER = "overseer-stress"
CHARS_PER_TOKEN = 4

_WORDS = ("cache", "batch", "token", "slot", "decode", "prefill", "replica", "router", "kernel", "tensor",
          "queue", "shard", "stream", "buffer", "layer", "sample", "schedule", "memory", "block", "page")
_QUESTIONS = (
    "Explain what this function does and where it could fail.",
    "Refactor the scheduler loop so it never blocks the event loop.",
    "Write a unit test for the eviction path.",
    "Why would the queue grow when the batch is not full?",
    "Add type hints and a docstring to the router module.",
    "Find the off-by-one in the block allocator.",
)


def _text(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens of plain words (four characters a token)."""
    words: list[str] = []
    chars = 0
    target = tokens * CHARS_PER_TOKEN
    while chars < target:
        w = rng.choice(_WORDS)
        words.append(w)
        chars += len(w) + 1
    return " ".join(words)[:target]


def _code(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens of Python-looking source."""
    lines: list[str] = []
    chars = 0
    target = tokens * CHARS_PER_TOKEN
    n = 0
    while chars < target:
        a, b = rng.choice(_WORDS), rng.choice(_WORDS)
        line = f"def {a}_{b}_{n}(x):\n    return x.{a}({b}=x.{b} + {n})\n"
        lines.append(line)
        chars += len(line)
        n += 1
    return "".join(lines)[:target]


@dataclass(frozen=True, slots=True)
class StressRequest:
    shape: str  # synthetic | coding
    body: dict[str, Any]
    # The prompt's size as the workload built it (characters / 4): the ledger's estimate when a stream
    # is cancelled before its usage arrives.
    prompt_tokens_est: int


@dataclass
class _Session:
    prefix_index: int
    turns: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WorkloadMix:
    synthetic_share: float = 0.5
    synthetic_prompt_tokens: int = 256
    synthetic_output_tokens: int = 128
    coding_prefix_tokens: int = 1200
    coding_prefixes: int = 2
    coding_turn_tokens: int = 40
    coding_output_tokens: int = 192
    coding_max_turns: int = 4


class Workload:
    """Deterministic for a given seed and call order."""

    def __init__(self, seed: int = 0, *, mix: WorkloadMix | None = None, model: str | None = None) -> None:
        self.mix = mix or WorkloadMix()
        self.model = model
        self._rng = random.Random(seed)
        self._synthetic_prompt = _text(random.Random(seed + 1), self.mix.synthetic_prompt_tokens)
        self._prefixes = [
            "You are a careful senior engineer. The repository follows.\n\n"
            + _code(random.Random(seed + 2 + i), self.mix.coding_prefix_tokens)
            for i in range(self.mix.coding_prefixes)
        ]
        self._sessions: dict[str, _Session] = {}

    def next(self, replica_id: str) -> StressRequest:
        if self._rng.random() < self.mix.synthetic_share:
            return self._synthetic()
        return self._coding(replica_id)

    def _base(self, messages: list[dict[str, str]], max_tokens: int, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": STRESS_USER,
            **extra,
        }
        if self.model is not None:
            body["model"] = self.model
        return body

    def _synthetic(self) -> StressRequest:
        m = self.mix
        body = self._base([{"role": "user", "content": self._synthetic_prompt}], m.synthetic_output_tokens,
                          ignore_eos=True, temperature=0.0)
        return StressRequest("synthetic", body, _estimate(body))

    def _coding(self, replica_id: str) -> StressRequest:
        m = self.mix
        session = self._sessions.get(replica_id)
        if session is None or len(session.turns) // 2 >= m.coding_max_turns:
            session = _Session(self._rng.randrange(len(self._prefixes)))
            self._sessions[replica_id] = session
        question = self._rng.choice(_QUESTIONS) + " " + _text(self._rng, m.coding_turn_tokens)
        messages = [{"role": "system", "content": self._prefixes[session.prefix_index]}, *session.turns,
                    {"role": "user", "content": question}]
        body = self._base(messages, m.coding_output_tokens, temperature=0.7)
        # The next turn carries this one; the answer stands in at the length asked for.
        session.turns += [{"role": "user", "content": question},
                          {"role": "assistant", "content": _code(self._rng, m.coding_output_tokens // 2)}]
        return StressRequest("coding", body, _estimate(body))


def _estimate(body: dict[str, Any]) -> int:
    chars = sum(len(m["content"]) for m in body["messages"])
    return max(1, (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)
