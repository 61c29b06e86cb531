"""Benchmark of the scrubber: MiB/s of `redact` on mixed log text, one core.

The corpus is deterministic (seeded): about 1 MiB of vLLM, uvicorn, nginx, Dagster, Prometheus and
JSON log lines, mostly benign, with ~5% of lines carrying a planted (fake) secret or address.
Goal (not a test): >= 5 MiB/s. Run: `python -m overseer_dagster.bench.redact [seconds]`.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import sys
import time

from mnemonic import Mnemonic

from overseer_dagster.core.redact import findings, redact

CORPUS_BYTES = 1 << 20
SECRET_LINE_RATIO = 0.05
SEED = 20261203

_MODELS = (
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-Coder-1.5B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
)
_REPLICAS = tuple(f"gpu-{c}-{n:02d}" for c in "abc" for n in range(1, 9)) + tuple(f"vllm-{n}" for n in range(4))
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_WORDS = Mnemonic("english").wordlist
_PROSE = (
    "Replica {r} was drained after three consecutive failed health probes; traffic moved to the rest of the pool.",
    "Demand forecast for the next hour is flat, so the overseer keeps the current fleet size and waits.",
    "The stress window closed without incident and every replica answered within its latency budget.",
    "Scale-up was deferred: the cost ceiling for this hour would be exceeded by one more {g} replica.",
)


def _b58check(payload: bytes) -> str:
    raw = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n = int.from_bytes(raw, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def _s(rng: random.Random, n: int, alphabet: str = _ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _ts(rng: random.Random) -> tuple[str, str]:
    h, m, s, ms = rng.randrange(24), rng.randrange(60), rng.randrange(60), rng.randrange(1000)
    return f"12-03 {h:02d}:{m:02d}:{s:02d}", f"2026-12-03T{h:02d}:{m:02d}:{s:02d}.{ms:03d}Z"


def benign_line(rng: random.Random) -> str:
    short, iso = _ts(rng)
    replica, model = rng.choice(_REPLICAS), rng.choice(_MODELS)
    kind = rng.randrange(9)
    if kind == 0:
        return (
            f"INFO {short} [metrics.py:{rng.randrange(100, 999)}] Avg prompt throughput: {rng.uniform(0, 900):.1f} "
            f"tokens/s, Avg generation throughput: {rng.uniform(0, 900):.1f} tokens/s, Running: {rng.randrange(32)} "
            f"reqs, Swapped: 0 reqs, Pending: {rng.randrange(8)} reqs, GPU KV cache usage: {rng.uniform(0, 100):.1f}%, "
            "CPU KV cache usage: 0.0%."
        )
    if kind == 1:
        return f"INFO {short} [engine.py:{rng.randrange(100, 999)}] Finished request chatcmpl-{_hex(rng, 32)}."
    if kind == 2:
        run_id = f"{_hex(rng, 8)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 12)}"
        return (
            f"{iso[:10]} {iso[11:19]} +0000 - dagster - DEBUG - fleet_tick - {run_id} - {rng.randrange(1000, 99999)} - "
            f'replica_health - STEP_SUCCESS - Finished execution of step "replica_health" in {rng.randrange(2, 900)}ms.'
        )
    if kind == 3:
        metric = rng.choice(("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prompt_tokens"))
        return f'vllm:{metric}{{engine="{rng.randrange(2)}",model_name="{model}"}} {rng.uniform(0, 64):.1f}'
    if kind == 4:
        return json.dumps(
            {
                "ts": iso,
                "level": "info",
                "replica": replica,
                "event": "health",
                "status": rng.choice(("healthy", "unhealthy", "unknown")),
                "latency_ms": round(rng.uniform(1, 300), 1),
                "version": rng.choice(("v0.6.3.post1", "0.7.2", "0.8.5")),
                "torch": "2.9.1+cu121",
            }
        )
    if kind == 5:
        return f"  File \"vllm/engine/async_llm_engine.py\", line {rng.randrange(50, 900)}, in generate"
    if kind == 6:
        return f"commit {_hex(rng, 40)} image sha256:{_hex(rng, 64)} dagster 1.13.27 replica {replica} ({_hex(rng, 8)})"
    if kind == 7:
        return f"{iso} {replica} " + rng.choice(_PROSE).format(r=replica, g=rng.choice(("h100", "a10g", "l4")))
    return (
        f"DEBUG {short} [scheduler.py:{rng.randrange(100, 999)}] step={rng.randrange(10**6)} "
        f"batch_size={rng.randrange(1, 256)} max_tokens={rng.randrange(16, 4096)} seed=None"
    )


def secret_line(rng: random.Random) -> str:
    """A line carrying one planted fake secret or address (built from parts, never a real one)."""
    short, iso = _ts(rng)
    ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    kind = rng.randrange(16)
    if kind == 0:
        return f'INFO:     {ip}:{rng.randrange(1024, 65535)} - "POST /v1/chat/completions HTTP/1.1" 200 OK'
    if kind == 1:
        return f'{ip} - - [03/Dec/2026:15:49:57 +0000] "GET /health HTTP/1.1" 200 2 "-" "curl/8.5.0" "http://{ip}:8000/"'
    if kind == 2:
        return f"INFO {short} [api_server.py:1024] API server on http://gpu-{rng.randrange(9)}.internal:8000/v1"
    if kind == 3:
        port = rng.randrange(8000, 8100)
        return f"WARNING {short} probe failed for vllm-a.prod.example.com:{port} (fe80::{_hex(rng, 4)}%eth0)"
    if kind == 4:
        return f"export OPENAI_API_KEY={'sk-' + 'proj-'}{_s(rng, 48)}"
    if kind == 5:
        jwt = f"{'ey' + 'J'}{_s(rng, 20)}.{'ey' + 'J'}{_s(rng, 40)}.{_s(rng, 43)}"
        return f"headers={{'authorization': 'Bearer {jwt}'}}"
    if kind == 6:
        return f"HF_TOKEN={'hf' + '_'}{_s(rng, 34)} GITHUB_TOKEN={'gh' + 'p_'}{_s(rng, 36)}"
    if kind == 7:
        return f"aws_access_key_id = {'AK' + 'IA'}{_s(rng, 16, _ALNUM[:26] + '234567')}"
    if kind == 8:
        return f"invoice: {'ln' + 'bc'}{rng.randrange(1, 9999)}u1{_s(rng, 200, _BECH32)}"
    if kind == 9:
        message = {"role": "user", "content": f"my account number is {rng.randrange(10**9)}"}
        return json.dumps({"model": rng.choice(_MODELS), "messages": [message]})
    if kind == 10:
        delta = json.dumps({"content": " " + _s(rng, 6)})
        return f'data: {{"id":"chatcmpl-{_hex(rng, 12)}","choices":[{{"index":0,"delta":{delta}}}]}}'
    if kind == 11:
        return "seed: " + " ".join(f"{i + 1}. {rng.choice(_WORDS)}" for i in range(rng.choice((12, 24))))
    if kind == 12:
        key = _b58check(b"\x80" + rng.randbytes(32) + b"\x01")
        return f"wallet import {key} done"
    if kind == 13:
        return f"payment settled preimage={_hex(rng, 64)} payment_hash={_hex(rng, 64)}"
    if kind == 14:
        return f"nostr {'ns' + 'ec1'}{_s(rng, 58, _BECH32)} and macaroon {'0201036c' + '6e64'}{_hex(rng, 200)}"
    return f"Proxy-Authorization: Basic {_s(rng, 24)}== via [2001:db8::{_hex(rng, 4)}]:{rng.randrange(1, 65535)}"


def corpus(size: int = CORPUS_BYTES, seed: int = SEED) -> str:
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    while total < size:
        line = secret_line(rng) if rng.random() < SECRET_LINE_RATIO else benign_line(rng)
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def run(seconds: float = 3.0) -> dict[str, object]:
    text = corpus()
    size = len(text.encode())
    mib = size / (1 << 20)
    found = len(findings(text))
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    while not rates or time.perf_counter() < deadline:
        start = time.perf_counter()
        redact(text)
        rates.append(mib / (time.perf_counter() - start))
    return {
        "bench": "redact",
        "mib_per_s_median": round(statistics.median(rates), 2),
        "runs": len(rates),
        "corpus_bytes": size,
        "findings_per_mib": round(found / mib, 1),
    }


if __name__ == "__main__":
    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)))
