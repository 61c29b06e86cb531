"""The JSON shapes vLLM's OpenAI server speaks: errors, chat requests, completion chunks and bodies."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Compact separators: the SSE hot path writes thousands of chunks a second.
_dumps = json.JSONEncoder(separators=(",", ":")).encode

# Four characters a token, so the lab's own estimate (len/4) counts its output exactly.
_VOCAB = (" the", " lab", " gpu", " kv.", " run", " ok,", " tok", " new")
_TEXT_CACHE: dict[int, str] = {}


def token_text(n: int) -> str:
    text = _TEXT_CACHE.get(n)
    if text is None:
        text = "".join(_VOCAB[i % len(_VOCAB)] for i in range(n))
        if len(_TEXT_CACHE) < 4096:
            _TEXT_CACHE[n] = text
    return text


def estimate_tokens(text_chars: int) -> int:
    return max(1, (text_chars + 3) // 4)


def vllm_error(message: str, *, status: int = 400, type_: str = "BadRequestError") -> dict[str, Any]:
    """vLLM's error body (flat, `object: error`)."""
    return {"object": "error", "message": message, "type": type_, "param": None, "code": status}


def openai_error(message: str, *, type_: str, status: int) -> dict[str, Any]:
    """OpenAI's error body (`{"error": {...}}`), used for the lab's own refusals (429, gateway 503)."""
    return {"error": {"message": message, "type": type_, "param": None, "code": status}}


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[_ContentPart] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of vLLM's ChatCompletionRequest the lab acts on; the rest are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)
    priority: int = 0
    ignore_eos: bool = False

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_chars(self) -> int:
        total = 0
        for m in self.messages:
            if isinstance(m.content, str):
                total += len(m.content)
            elif m.content:
                total += sum(len(p.text or "") for p in m.content)
        return total


def parse_chat_request(raw: bytes) -> ChatRequest | str:
    """The request, or vLLM's 400 message for it."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"JSON decode error: {exc}"
    if not isinstance(data, dict):
        return "Request body must be a JSON object"
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
        )


class ChunkWriter:
    """Pre-renders one request's chat.completion.chunk SSE events: only the content differs between chunks."""

    __slots__ = ("_head", "_tail_open", "request_id", "created", "model")

    def __init__(self, model: str) -> None:
        self.request_id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self._head = (
            'data: {"id":' + _dumps(self.request_id) + ',"object":"chat.completion.chunk","created":'
            + str(self.created) + ',"model":' + _dumps(model) + ","
        ).encode()
        self._tail_open = b',"logprobs":null,"finish_reason":'

    def content(self, n_tokens: int, *, first: bool = False, finish_reason: str | None = None) -> bytes:
        delta: dict[str, str] = {"role": "assistant"} if first else {}
        if n_tokens or first:
            delta["content"] = token_text(n_tokens)
        finish = b"null" if finish_reason is None else _dumps(finish_reason).encode()
        return (self._head + b'"choices":[{"index":0,"delta":' + _dumps(delta).encode()
                + self._tail_open + finish + b"}]}\n\n")

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = _usage(prompt_tokens, completion_tokens)
        return self._head + b'"choices":[],"usage":' + _dumps(usage).encode() + b"}\n\n"

    def completion(self, n_tokens: int, finish_reason: str, prompt_tokens: int) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": token_text(n_tokens), "tool_calls": []},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                    "stop_reason": None,
                }
            ],
            "usage": _usage(prompt_tokens, n_tokens),
        }


DONE = b"data: [DONE]\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


def models_body(model: str, *, created: int, max_model_len: int) -> dict[str, Any]:
    """`GET /v1/models` as vLLM serves it."""
    return {
        "object": "list",
        "data": [
            {
                "id": model,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": model,
                "parent": None,
                "max_model_len": max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{uuid.uuid4().hex}",
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
        ],
    }
