"""A scripted OpenAI-compatible endpoint: replays a mind script over HTTP, one entry per request.

The script format is the scripted mind's (`overseer_dagster.core.mind_script`), so the real
`OpenAIMind` is tested end to end against the same files `OVERSEER_MIND=script:FILE` replays in
process. `POST /v1/chat/completions` takes the next entry and answers it in OpenAI's shape:

- a string (or `answer`): 200, `choices[0].message.content` = the text, `finish_reason` "stop";
- `unavailable`: `timeout` hangs until the client gives up; `http_NNN` answers status NNN;
  `malformed_response` answers 200 with a body that is not JSON; `truncated` answers 200 with
  `finish_reason` "length" (the client's retry takes the next entry); any other code answers 503;
- a bare `delay_s`: stalls that long, then answers 504.

A request the endpoint refuses (not JSON, no `messages`, `response_format` when started with
`structured_output=False`) is a 400 and takes no entry. Past the last entry every request is a
503 "script exhausted": the endpoint does not cycle. `GET /script/state` shows the position.

    python -m overseer_dagster.lab.script_mind SCRIPT.jsonl [--port N] [--no-structured-output]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from overseer_dagster.core.mind_script import ScriptEntry, parse_script
from overseer_dagster.lab.serving import LOOPBACK, Listener, json_response
from overseer_dagster.lab.wire import openai_error, vllm_error

# How long a `timeout` entry hangs: longer than any client waits (a disconnect ends it sooner).
HANG_S = 3600.0
TRUNCATED_TEXT = '{"actions":[{"kind":'

@dataclass
class ScriptState:
    structured_output: bool = True
    position: int = 0
    # Every request body received, in order (tests read them; the lab never logs them).
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Authorization headers received, in order (None when absent).
    authorizations: list[str | None] = field(default_factory=list)
    # Requests refused with a 400 (they take no entry).
    refused: int = 0


ENTRIES = web.AppKey("entries", tuple)
STATE = web.AppKey("state", ScriptState)


def script_mind_app(entries: tuple[ScriptEntry, ...] | str, *, structured_output: bool = True) -> web.Application:
    """The endpoint for `entries` (or a script's text). `app[STATE]` holds position and requests."""
    app = web.Application()
    app[ENTRIES] = parse_script(entries) if isinstance(entries, str) else tuple(entries)
    app[STATE] = ScriptState(structured_output=structured_output)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/script/state", _state)
    return app


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    state, entries = request.app[STATE], request.app[ENTRIES]
    try:
        body = await request.json()
    except ValueError:
        body = None
    problem = _refusal(body, state)
    if problem is not None:
        state.refused += 1
        return json_response(vllm_error(problem), status=400)
    state.requests.append(body)
    state.authorizations.append(request.headers.get("Authorization"))
    if state.position >= len(entries):
        return json_response(openai_error("script exhausted", type_="service_unavailable", status=503), status=503)
    entry = entries[state.position]
    state.position += 1
    return await _play(entry, str(body.get("model", "script")))


def _refusal(body: object, state: ScriptState) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return "the body must be a JSON object with a 'messages' list"
    if "response_format" in body and not state.structured_output:
        return "response_format is not supported by this server"
    return None


async def _play(entry: ScriptEntry, model: str) -> web.StreamResponse:
    if entry.delay_s:
        await asyncio.sleep(entry.delay_s)
    if entry.answer is not None:
        return json_response(_completion(entry.answer, model, "stop"))
    code = entry.unavailable
    if code is None:  # a bare delay: the server gave up
        return json_response(openai_error("upstream timed out", type_="timeout", status=504), status=504)
    if code == "timeout":
        await asyncio.sleep(HANG_S)
        return json_response(openai_error("upstream timed out", type_="timeout", status=504), status=504)
    if code == "malformed_response":
        return web.Response(body=b'{"choices": [', status=200, content_type="application/json")
    if code == "truncated":
        return json_response(_completion(TRUNCATED_TEXT, model, "length"))
    status = int(code.removeprefix("http_")) if code.startswith("http_") and code[5:].isdigit() else 503
    status = status if 400 <= status <= 599 else 503
    return json_response(openai_error(f"scripted failure: {code}", type_="scripted", status=status), status=status)


def _completion(text: str, model: str, finish_reason: str) -> dict[str, Any]:
    completion_tokens = max(1, len(text) // 4)
    return {
        "id": f"chatcmpl-script-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 0, "completion_tokens": completion_tokens, "total_tokens": completion_tokens},
    }


async def _models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": [{"id": "script", "object": "model", "owned_by": "lab"}]})


async def _state(request: web.Request) -> web.Response:
    state, entries = request.app[STATE], request.app[ENTRIES]
    return json_response({"position": state.position, "entries": len(entries), "requests": len(state.requests),
                          "refused": state.refused})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="script_mind", description="Serve a mind script as an OpenAI-compatible endpoint.")
    parser.add_argument("script", type=Path, help="JSON Lines or a JSON list of entries")
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: any free port)")
    parser.add_argument("--no-structured-output", action="store_true", help="refuse response_format with a 400")
    args = parser.parse_args(argv)
    entries = parse_script(args.script.read_text(encoding="utf-8"))

    async def serve() -> None:
        listener = Listener(lambda: script_mind_app(entries, structured_output=not args.no_structured_output),
                            host=LOOPBACK, port=args.port)
        await listener.start()
        print(f"OVERSEER_MIND=openai OVERSEER_MIND_BASE_URL={listener.url}/v1 ({len(entries)} entries)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await listener.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
