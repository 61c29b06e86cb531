"""The scrubber: the one function every public projection passes through.

`findings(text)` lists what must not leave: addresses (IPv4/IPv6, URLs, `host:port`), credentials
(header values, key/value secrets, vendor keys, JWTs, PEM private keys), Bitcoin/Lightning material
(invoices, LNURL, seed phrases, nostr keys, extended and WIF keys, preimages, macaroons) and prompt or
message bodies. `redact(text)` replaces each finding by `[redacted:<kind>]`; it is idempotent, and a
marker never matches a rule. Version strings, replica ids, model names, timestamps, UUIDs, image
digests, commit ids and Prometheus metric names are kept.

Design: each rule is a few regexes written literal-first (so `re` can use its fast prefix scan) with
bounded quantifiers, plus an optional check that validates the candidate (`ipaddress`, base58check,
the BIP39 list, key names) and decides the exact span. Keyword rules run on `text.lower()` (same
indices). All candidate spans are merged (overlaps become their union) and the output is built once.
Spans never split a backslash escape, so `json.loads(redact(json.dumps(x)))` keeps working.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache

__all__ = ["Finding", "findings", "is_public_safe", "redact"]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    start: int
    end: int


def findings(text: str) -> list[Finding]:
    """Non-overlapping findings, sorted by start."""
    return [Finding(kind, start, end) for start, end, kind in _resolve(text)]


def redact(text: str) -> str:
    """`text` with each finding replaced by `[redacted:<kind>]`."""
    spans = _resolve(text)
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, end, kind in spans:
        out.append(text[pos:start])
        out.append(f"[redacted:{kind}]")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def is_public_safe(text: str) -> bool:
    return not findings(text)


# --- machinery ----------------------------------------------------------------------------------

Span = tuple[int, int, str]
# A check turns one regex match into zero or more spans; `text` is always the original text.
Check = Callable[[str, re.Match[str], str], Iterable[Span]]


def _whole(text: str, m: re.Match[str], kind: str) -> Iterable[Span]:
    return ((m.start(), m.end(), kind),)


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    # (needle, pattern): the pattern only runs if its leading literal occurs in text.lower().
    patterns: tuple[tuple[str, re.Pattern[str]], ...]
    check: Check = _whole
    # Patterns are lowercase and run on text.lower(): case-insensitive keywords keep a literal prefix.
    # (If lower() changes the length, U+0130, they run IGNORECASE on the text itself.)
    lowered: bool = False
    # Skip a match that starts inside a span its own pattern already produced: the value it would
    # find lies inside that span. Keeps `key=key=key=...` and nested structures linear.
    skip_inside: bool = False


def _needle(source: str) -> str:
    """The literal a pattern source starts with, lowercased ("" if none)."""
    src = source.removeprefix("(?P<key>")
    out: list[str] = []
    i = 0
    while i < len(src):
        if src[i] == "\\" and i + 1 < len(src) and not src[i + 1].isalnum():
            out.append(src[i + 1])
            i += 2
        elif src[i].isalnum() or src[i] in "_:/-":
            out.append(src[i])
            i += 1
        else:
            break
    if out and src[i : i + 1] in ("?", "*", "{"):
        out.pop()  # `credentials?`: the last character is optional
    return "".join(out).lower()


def _rule(kind: str, *sources: str, check: Check = _whole, lowered: bool = False, skip_inside: bool = False) -> _Rule:
    return _Rule(kind, tuple((_needle(s), re.compile(s)) for s in sources), check, lowered, skip_inside)


@cache
def _ignorecase(pattern: re.Pattern[str]) -> re.Pattern[str]:
    return re.compile(pattern.pattern, re.IGNORECASE)


def _first(head: str, before: str) -> str:
    """`head` (a literal) not preceded by a `before` character, unless that character ends a backslash
    escape (`\\n`, `\\u00e9`). Literal first, so re can use its fast prefix scan."""
    return f"{head}(?:(?<![{before}]{head})|(?<=\\\\[nrt]{head})|(?<=\\\\u[0-9a-fA-F]{{4}}{head}))"


def _lit(word: str, before: str = "A-Za-z0-9_-") -> str:
    return _first(re.escape(word), before)


_MARKER = re.compile(r"\[redacted:[a-z_]+\]")
_WORDCHAR = re.compile(r"\w")
_DIGITS = frozenset("0123456789")


def _escaped(text: str, pos: int) -> bool:
    """Is text[pos] escaped by a backslash (an odd run of backslashes right before it)?"""
    n = 0
    while pos - n > 0 and text[pos - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def _escape_around(text: str, pos: int) -> tuple[int, int] | None:
    """The span of the backslash escape (`\\n`, `\\"`, `\\u00e9`) text[pos] belongs to, its backslash aside."""
    for b in range(pos - 1, max(-1, pos - 6), -1):
        if text[b] == "\\":
            if _escaped(text, b):
                return None  # the second half of `\\\\`
            end = b + 6 if text[b + 1 : b + 2] == "u" else b + 2
            return (b, end) if pos < end else None
    return None


def _keep_escapes(text: str, start: int, end: int) -> tuple[int, int]:
    # Never split a backslash escape: JSON and repr text stay well-formed.
    around = _escape_around(text, start)
    if around:
        start = around[1]
    around = _escape_around(text, end) if start < end < len(text) else None
    if around and around[0] < end:
        end = around[0]
    return start, end


def _scan_back(text: str, pos: int, chars: frozenset[str], limit: int) -> int:
    """The smallest j <= pos such that text[j:pos] is made of `chars` (at most `limit` of them),
    not starting inside a backslash escape (the n of `\\n`)."""
    j = pos
    stop = max(0, pos - limit)
    while j > stop and text[j - 1] in chars:
        j -= 1
    around = _escape_around(text, j) if j < pos else None
    return min(around[1], pos) if around else j


def _glued(text: str, pos: int, also: str = "") -> bool:
    """Does a token starting at pos continue one before it (a word character or one of `also`)?
    The end of a backslash escape (`\\n`, `\\u00e9`) is a boundary, not a word character."""
    if pos <= 0:
        return False
    c = text[pos - 1]
    if c in also:
        return True
    return (c.isalnum() or c == "_") and _escape_around(text, pos - 1) is None


def _matches(pattern: re.Pattern[str], subject: str) -> Iterable[re.Match[str]]:
    if pattern.pattern.startswith("\\A"):  # finditer would try (and fail) at every position
        m = pattern.match(subject)
        return (m,) if m else ()
    return pattern.finditer(subject)


def _candidates(text: str) -> list[tuple[int, int, int, str]]:
    probe = text.lower()
    lowered = probe if len(probe) == len(text) else None
    out: list[tuple[int, int, int, str]] = []
    for order, rule in enumerate(_RULES):
        subject = lowered if rule.lowered and lowered is not None else text
        for needle, pattern in rule.patterns:
            if needle not in probe:
                continue
            if rule.lowered and lowered is None:
                pattern = _ignorecase(pattern)
            covered = -1
            for m in _matches(pattern, subject):
                if m.start() < covered:
                    continue
                for start, end, kind in rule.check(text, m, rule.kind):
                    start, end = _keep_escapes(text, start, end)
                    if start < end:
                        out.append((start, end, order, kind))
                        if rule.skip_inside:
                            covered = max(covered, end)
    return out


def _resolve(text: str) -> list[Span]:
    if not text:
        return []
    cands = _candidates(text)
    if not cands:
        return []
    if "[redacted:" in text:
        # An existing marker is opaque: drop candidates lying inside one (idempotence).
        markers = [m.span() for m in _MARKER.finditer(text)]
        starts = [s for s, _ in markers]

        def inside_marker(c: tuple[int, int, int, str]) -> bool:
            k = bisect_right(starts, c[0]) - 1
            return k >= 0 and c[1] <= markers[k][1]

        cands = [c for c in cands if not inside_marker(c)]
    # Earlier first, then longer, then rule order; overlapping spans merge into their union.
    cands.sort(key=lambda c: (c[0], -c[1], c[2]))
    spans: list[Span] = []
    for start, end, _, kind in cands:
        if spans and start < spans[-1][1]:
            if end > spans[-1][1]:
                spans[-1] = (spans[-1][0], end, spans[-1][2])
            continue
        spans.append((start, end, kind))
    return spans


# --- values after a key (key/value secrets, prompt bodies) -------------------------------------

_DQ_BODY = re.compile(r'[^"\\\n]*(?:\\.[^"\\\n]*)*')
_SQ_BODY = re.compile(r"[^'\\\n]*(?:\\.[^'\\\n]*)*")
# The body of a string whose quotes are themselves escaped (JSON inside a JSON string): up to `\"`.
_ESC_DQ_BODY = re.compile(r'(?:[^"\\\n]|\\[^"\n])*')
_BARE = re.compile(r"""[^\s"'`\\,;&<>(){}\[\]]{1,4096}""")
# Strings (escaped-quote, double, single; the closing quote optional) and brackets, for scanning structures.
_STRUCTURE = re.compile(
    r'\\"(?P<esc>(?:[^"\\\n]|\\[^"\n])*)(?:\\")?'
    r'|"(?P<dq>[^"\\\n]*(?:\\.[^"\\\n]*)*)"?'
    r"|'(?P<sq>[^'\\\n]*(?:\\.[^'\\\n]*)*)'?"
    r"|[\[\]{}()]"
)
_NULLISH = frozenset({"null", "none", "nil", "true", "false", "undefined", "~"})
_MAX_STRUCTURE = 1 << 16
_KEY_PUNCT = re.compile(r"[_.-]")
_KEYCHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _key_name(text: str, key_start: int, key_end: int) -> str:
    """The whole key ending at key_end (`OPENAI_API_KEY`, `x-api-key`), compacted: `openaiapikey`."""
    j = _scan_back(text, key_start, _KEYCHARS, 64)
    return _KEY_PUNCT.sub("", text[j:key_end]).lower()


def _string_at(text: str, i: int) -> tuple[int, int] | None:
    """The inner span of a quoted string starting at i (closing quote optional: truncated logs).

    Not a string if it looks like the gap between two strings (`"key=", "next"`): its body starts
    with `,` `:` `]` `}`, or its closing quote is glued to a word.
    """
    c = text[i : i + 1]
    if c == '"' or c == "'":
        start, end = i + 1, (_DQ_BODY if c == '"' else _SQ_BODY).match(text, i + 1).end()
    elif text.startswith('\\"', i):
        start, end = i + 2, _ESC_DQ_BODY.match(text, i + 2).end()
    else:
        return None
    return (start, end) if _plausible_string(text, start, end) else None


def _plausible_string(text: str, start: int, end: int) -> bool:
    """Is text[start:end] a string body, not the gap between two strings (`"a=", "b"`)?"""
    if end == start or text[start:end].lstrip()[:1] in (",", ":", "]", "}"):
        return False
    if text.startswith('\\"', end):
        after = end + 2
    elif text[end : end + 1] in ('"', "'"):
        after = end + 1
    else:
        return True  # unterminated (a truncated line): still a value
    return not (after < len(text) and (text[after].isalnum() or text[after] in "_\"'"))


def _structure_end(text: str, i: int) -> int:
    """End of the bracketed value opening at text[i], skipping strings; unbalanced: end of line."""
    depth = 0
    for t in _STRUCTURE.finditer(text, i, min(len(text), i + _MAX_STRUCTURE)):
        if t.lastgroup:
            continue
        c = t.group()
        if c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
            if depth == 0:
                return t.end()
    eol = text.find("\n", i)
    return len(text) if eol < 0 else eol


# --- checks -------------------------------------------------------------------------------------


def _check_ipv4(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
    start = _scan_back(text, m.start(), _DIGITS, 4)
    if not 1 <= m.start() - start <= 3:
        return
    if _glued(text, start, ".]"):
        return  # v1.2.3.4, x1.2.3.4, 1.2.3.4.5 (and `]`: what a marker left glued stays glued)
    address = re.split(r"[/:]", text[start : m.end()], maxsplit=1)[0]
    try:  # leading zeros are still an address: normalise them before asking ipaddress
        ipaddress.IPv4Address(".".join(str(int(o)) for o in address.split(".")))
    except ValueError:
        return
    yield start, m.end(), kind


_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:")
_IPV6 = re.compile(
    r"(?P<b>\[)?"
    r"(?P<addr>(?:[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,8}(?:\.\d{1,3}){0,3})"
    r"(?P<zone>%[0-9A-Za-z._~-]{1,32})?"
    r"(?P<plen>/\d{1,3}(?!\d))?"
    r"(?(b)(?:\](?::\d{1,5}(?!\d))?)?)"
)


def _check_ipv6(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
    start = _scan_back(text, m.start(), _IPV6_CHARS, 48)
    if start > 0 and text[start - 1] == "[":
        start -= 1
    if _glued(text, start, ".:]"):
        return  # std::vector, Vec::new, a.b::c, 10.0.0.1::1
    full = _IPV6.match(text, start)
    if full is None or full.end() <= m.start():
        return
    addr, end = full.group("addr"), full.end()
    if full.group("zone") is None and full.group("plen") is None and not full.group("b"):
        if addr.endswith(":") and not addr.endswith("::"):  # "fe80::1: refused"
            addr, end = addr[:-1], end - 1
    if not any(c not in ":." for c in addr):
        return  # a bare "::"
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        return  # 12:30:45, de:ad:be:ef:00:01
    plen = full.group("plen")
    if plen and int(plen[1:]) > 128:
        return
    closed = "]" in text[start:end]  # [addr]:port ends where its bracket says
    if not closed and end < len(text) and (text[end] in ":[" or _WORDCHAR.match(text, end)):
        return
    yield start, end, kind


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
# Source-file suffixes: `api_server.py:1024`, `main.go:88` are locations, not hosts.
_FILE_SUFFIXES = frozenset(
    "py pyx pyi go rs c cc cpp cxx h hh hpp cu cuh java kt kts scala rb php pl pm js mjs cjs jsx ts tsx "
    "lua swift ex exs erl hs ml sh bash zsh ps1 sql proto yaml yml json toml ini cfg conf txt log md rst "
    "html htm css vue ipynb cs fs dart nim zig r jl tf".split()
)


def _check_host_port(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
    start = _scan_back(text, m.start(), _HOST_CHARS, 253)
    while start < m.start() and text[start] in ".-":
        start += 1
    if _glued(text, start, "/]"):
        return  # a path (/a/b:1) or part of a larger word (batch_size:32)
    host = text[start : m.start()]
    if not host[:1].isalpha() or not 1 <= int(m.group("port")) <= 65535:
        return
    labels = host.split(".")
    if any(not 0 < len(label) <= 63 or label[0] == "-" or label[-1] == "-" for label in labels):
        return
    if len(labels) == 1:
        # One label: `localhost`, or a name with a digit or dash (vllm-0, gpu-a-07); not `line:42`.
        if host.lower() != "localhost" and not any(c.isdigit() or c == "-" for c in host):
            return
    elif not labels[-1][0].isalpha() or labels[-1].lower() in _FILE_SUFFIXES:
        return  # llama3.1:70, api_server.py:1024
    yield start, m.end(), kind


_URL_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


def _check_url(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
    start = _scan_back(text, m.start(), _URL_SCHEME_CHARS, 32)
    if start == m.start():
        return
    end = m.end()
    # Trailing punctuation belongs to the sentence; a closing bracket only if it opened in the URL.
    while end > m.start() + 3:
        c = text[end - 1]
        if c in ".,;:!?*" or (c == ")" and text.count("(", start, end) < text.count(")", start, end)):
            end -= 1
        elif c == "]" and text.count("[", start, end) < text.count("]", start, end):
            end -= 1
        else:
            break
    if end > m.start() + 3:
        yield start, end, kind


def _check_telegram(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
    start = _scan_back(text, m.start(), _DIGITS, 13)
    if 6 <= m.start() - start <= 12 and not _glued(text, start):
        yield start, m.end(), kind


def _back(n: int) -> Check:
    """The match plus the n characters its lookbehind vouched for, not glued to a word before."""

    def check(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
        start = m.start() - n
        if start >= 0 and not _glued(text, start):
            yield start, m.end(), kind

    return check


_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def _b58check_payload(s: str) -> bytes | None:
    n = 0
    for c in s:
        n = n * 58 + _B58_INDEX[c]
    raw = b"\0" * (len(s) - len(s.lstrip("1"))) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    payload, checksum = raw[:-4], raw[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        return None
    return payload


def _check_wif(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
    payload = _b58check_payload(m.group())
    # 0x80 mainnet / 0xef testnet, 32-byte key, optional 0x01 "compressed" flag.
    if payload and payload[0] in (0x80, 0xEF) and (len(payload) == 33 or (len(payload) == 34 and payload[-1] == 1)):
        yield m.start(), m.end(), kind


@cache
def _bip39() -> frozenset[str]:
    from mnemonic import Mnemonic

    return frozenset(Mnemonic("english").wordlist)


_LETTERS = re.compile(r"[A-Za-z]+")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]*")
_SEED_MIN = 12
_QUOTES = ("\"", "'", "\\")
_KEY_END = re.compile(r"""\\?["'][ \t]*[:=]""")  # after a word that is a key ("detail": ...)


def _check_seed(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
    words = _bip39()
    escapes = text.find("\\", m.start(), m.end()) >= 0
    if not escapes and sum(w in words for w in _LETTERS.findall(m.group().lower())) < _SEED_MIN:
        return  # prose: fewer than 12 list words in the whole run (the usual case, cheap)
    run: list[tuple[int, int]] = []

    def flush() -> Iterator[Span]:
        if len(run) >= _SEED_MIN:
            # One span per quoted piece (["w1", "w2", ...] keeps its strings, JSON stays JSON);
            # digits glued to the first or last word go too (`1abandon`, `zoo12`).
            start = _scan_back(text, run[0][0], _ALNUM, 16)
            for (_, end), (nxt, _) in zip(run, run[1:]):
                if '"' in text[end:nxt] or "'" in text[end:nxt]:
                    yield start, end, kind
                    start = nxt
            last = run[-1][1]
            yield start, _ALNUM_RUN.match(text, last, min(len(text), last + 16)).end(), kind

    for w in _LETTERS.finditer(text, m.start(), m.end()):
        (s, e), word = w.span(), w.group().lower()
        around = _escape_around(text, s) if escapes else None
        if around:  # `\nabandon`: the n belongs to the escape
            s, word = around[1], word[around[1] - s :]
        if word in words and not (text[e : e + 1] in _QUOTES and _KEY_END.match(text, e)):
            run.append((s, e))  # (a key, "detail": ..., is not a word of the phrase)
            continue
        yield from flush()
        run = []
    yield from flush()


def _kv_kind(name: str) -> str | None:
    """The kind of secret a (compacted, lowercase) key name holds, or None for an ordinary key."""
    if name.endswith(("authorization", "cookie")):
        return "auth_header"
    if name.endswith("secretaccesskey"):
        return "aws_secret_key"
    if name.endswith("apikey"):
        return "api_key"
    if name.endswith("privatekey"):
        return "private_key"
    if name.endswith(("secretkey", "signingkey", "encryptionkey", "masterkey", "accesskey", "sessionkey")):
        return "secret"
    if name.endswith("token"):
        # Tokenizer vocabulary (eos_token: "</s>") and counters are not credentials.
        return None if name.endswith(_VOCAB_TOKENS) else "token"
    if name.endswith(("secret", "credential", "credentials")):
        return "secret"
    if name.endswith(("password", "passwd", "pwd", "passphrase")):
        return "password"
    if name.endswith(("mnemonic", "seedphrase")):
        return "seed_phrase"
    if name.endswith("macaroon"):
        return "macaroon"
    if name.endswith("preimage"):
        return "preimage"
    return None


_VOCAB_TOKENS = tuple(
    f"{p}token"
    for p in "eos bos pad unk sep cls mask max num min stop special image audio video first last start end".split()
)
# A placeholder, not a secret: `$OPENAI_API_KEY`, or a scheme named on its own ("sent as `Authorization: Bearer`").
_NOT_A_VALUE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?|(?i:bearer|basic|token|digest|negotiate)")
_AUTH_SCHEME = re.compile(r"(?:bearer|basic|token|digest|negotiate|bot|apikey|aws4-hmac-sha256)[ \t]+", re.IGNORECASE)
# To the end of the line, taking `name="quoted"` parameters whole; stops at any other quote (the end
# of an enclosing string) and at an escaped newline.
_TO_EOL = re.compile(r'(?:[^\n"\\]|\\(?!n)[^\n]|(?<==)"[^"\n]*"(?![^,;\s]))*')


def _check_kv(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
    name = _key_name(text, m.start(), m.end("key"))
    secret_kind = _kv_kind(name)
    if secret_kind is None:
        return
    sep = m.group("sep")
    if not sep.strip(" \t") and not text.startswith("--", _scan_back(text, m.start(), _KEYCHARS, 64)):
        return  # whitespace separates a key from its value only for CLI flags: --api-key sk-...
    i = m.end()
    span = _string_at(text, i)
    if span is None:
        if text[i : i + 1] in ("[", "{", "("):
            return  # a structure: the secrets inside it have keys of their own
        scheme = _AUTH_SCHEME.match(text, i)
        j = scheme.end() if scheme else i
        bare = _BARE.match(text, j)
        if bare is None:
            return
        end = bare.end()
        if name.endswith("cookie") or (scheme and scheme.group().lower().startswith("digest")):
            # Cookie: a=1; b=2 and Digest username="u", response="…" run to the end of the line.
            end = len(text[i : _TO_EOL.match(text, i).end()].rstrip()) + i
        value = text[i:end]
        if (len(value) <= 9 and value.lower() in _NULLISH) or not value.strip("*") or _NOT_A_VALUE.fullmatch(value):
            return
        if sep.startswith('"') and len(value) <= 32 and value.replace(".", "", 1).lstrip("-").isdigit():
            return  # a JSON number ("token": 5): redacting it would break the document
        span = (i, end)
    elif text[span[0] : span[1]].lower() in _NULLISH:
        return
    yield span[0], span[1], secret_kind


def _check_preimage(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
    name = _key_name(text, m.start(), m.end("key"))
    if name.endswith(("preimage", "paymenthash", "rhash", "paymentsecret", "secret")):
        yield m.start("hex"), m.end("hex"), kind


_PROMPT_KEYS = frozenset(
    "prompt prompts prompttext prompttokenids systemprompt userprompt messages content reasoningcontent "
    "input inputs system completion text instructions".split()
)


def _check_prompt(text: str, m: re.Match[str], kind: str) -> Iterator[Span]:
    name = _key_name(text, m.start(), m.end("key"))
    if name not in _PROMPT_KEYS:
        return
    i = m.end()
    span = _string_at(text, i)
    if span is not None:
        yield span[0], span[1], kind
        return
    c = text[i : i + 1]
    if c in ("[", "{"):
        if name == "messages":
            return  # each message's content is found under its own key; roles stay readable
        end = _structure_end(text, i)
        strings = [t.span(t.lastgroup) for t in _STRUCTURE.finditer(text, i, end) if t.lastgroup]
        if strings:  # redact every string inside, keeping the structure (and JSON) well-formed
            if not all(_plausible_string(text, s, e) or s == e for s, e in strings):
                return  # the bracket sits inside a string ("content:[", ...): not a structure
            yield from ((s, e, kind) for s, e in strings if s < e)
        else:  # token ids: [1, 2, 3]
            yield i, end, kind
        return
    if m.group("sep") == "=":
        bare = _BARE.match(text, i)
        if bare and bare.group().lower() not in _NULLISH:
            yield i, bare.end(), kind


# --- the rules ----------------------------------------------------------------------------------

_B58 = "1-9A-HJ-NP-Za-km-z"
_BECH32 = "02-9ac-hj-np-z"
# A value follows a key: optional closing quote (plain or escaped), then `:`/`=`; or whitespace (CLI flags).
_KV_SEP = r"""(?P<sep>\\?["']?[ \t]*[:=][ \t]*|[ \t]+)"""
# Seed-phrase words: 3-8 letters (the BIP39 range) separated by spaces, commas, newlines, dashes,
# quotes, escaped newlines or numbering (`1.`, `2)`); the check keeps runs of >= 12 list words.
_SEED_GAP = r"""[\s,;|/_"'\[\]-]{0,8}+"""
_SEED_SEP = rf"""{_SEED_GAP}(?:\\[nrt]{_SEED_GAP})?+(?:\d{{1,3}}[.):]?{_SEED_GAP})?+"""
_SEED_TAIL = rf"[a-z]{{3,9}}+(?![a-z])(?:{_SEED_SEP}[a-z]{{3,8}}+(?![a-z])){{11,4096}}+"

# Order matters only for ties (same span): the more specific rule names the finding.
_RULES: tuple[_Rule, ...] = (
    # The whole PEM block; a truncated one (no END line) up to the end of its base64 body.
    _rule(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]{0,65536}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        r"|(?:[A-Za-z0-9+/=\s:,.-]|\\[nrt]){0,65536})",
    ),
    _rule("jwt", _lit("eyJ") + r"[A-Za-z0-9_-]{8,4096}\.eyJ[A-Za-z0-9_-]{8,8192}\.[A-Za-z0-9_-]{0,4096}"),
    _rule("anthropic_key", _lit("sk-ant-") + r"[A-Za-z0-9_-]{20,1024}"),
    _rule("openai_key", _lit("sk-") + r"(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,1024}"),
    _rule("stripe_key", *(_lit(p) + r"[A-Za-z0-9]{10,255}" for p in ("sk_live_", "rk_live_", "sk_test_", "rk_test_"))),
    _rule("aws_access_key", *(_lit(p, "A-Za-z0-9") + r"[A-Z0-9]{16}(?![A-Za-z0-9])" for p in ("AKIA", "ASIA"))),
    _rule("gcp_key", _lit("AIza") + r"[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"),
    _rule("github_token", _lit("gh") + r"[pousr]_[A-Za-z0-9]{36,255}", _lit("github_pat_") + r"[A-Za-z0-9_]{22,255}"),
    _rule("gitlab_token", _lit("glpat-") + r"[A-Za-z0-9_-]{20,255}"),
    _rule("hf_token", _lit("hf_") + r"[A-Za-z0-9]{30,255}"),
    _rule("slack_token", _lit("xox") + r"[abposr]-[A-Za-z0-9-]{10,255}", _lit("xapp-") + r"\d-[A-Za-z0-9-]{10,255}"),
    # <bot id>:<35 chars starting AA>; anchored on ":AA", the check takes the digits before it.
    _rule("telegram_token", r":AA(?<=\d:AA)[A-Za-z0-9_-]{33}(?![A-Za-z0-9_-])", check=_check_telegram),
    # base64(user id).timestamp.hmac: the first part starts M/N/O (ids are 17-19 digits). One pattern
    # per first character: a literal start scans far faster than a character class.
    _rule(
        "discord_token",
        *(_first(c, "A-Za-z0-9_.-") + r"[A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,40}(?![A-Za-z0-9_-])"
          for c in "MNO"),
    ),
    # BOLT11: hrp ln + network + amount, separator 1, bech32 data. Lowered: any case, `lightning:` or not.
    _rule(
        "lightning_invoice",
        _lit("ln", "a-z0-9") + rf"(?:bcrt|bc|tbs|tb|sb)\d{{0,20}}[munp]?1[{_BECH32}]{{50,8192}}",
        lowered=True,
    ),
    _rule("lnurl", _lit("lnurl1", "a-z0-9") + rf"[{_BECH32}]{{20,4096}}", lowered=True),
    _rule(
        "nostr_key", *(_lit(p, "a-z0-9") + rf"[{_BECH32}]{{50,70}}(?![a-z0-9])" for p in ("nsec1", "npub1")), lowered=True
    ),
    # BIP32 extended keys, [xtuvyzYZUV]prv/pub + base58, 111 chars; anchored on prv/pub (x is common).
    _rule(
        "extended_key",
        *(rf"{v}(?<=[xtyzuvYZUV]{v})[{_B58}]{{100,112}}(?![{_B58}])" for v in ("prv", "pub")),
        check=_back(1),
    ),
    # WIF: 51-52 base58 chars starting 5/K/L (mainnet) or 9/c (testnet); the base58check sum must hold.
    _rule("wif_key", *(_first(c, _B58) + rf"[{_B58}]{{50,51}}(?![{_B58}])" for c in "5KLc9"), check=_check_wif),
    # LND macaroons: hex (0201036c6e64 = version 2, location "lnd") and the same bytes in base64.
    _rule("macaroon", _lit("0201036c6e64", "0-9a-f") + r"[0-9a-f]{20,8192}", lowered=True),
    _rule("macaroon", _lit("AgEDbG5k", "A-Za-z0-9+/") + r"[A-Za-z0-9+/=_-]{20,8192}"),
    # 64 hex labelled preimage/payment_hash/secret, `:`/`=` optional. `sha256:<hex>` is a digest: kept.
    _rule(
        "preimage",
        *(rf"(?P<key>{k})(?![a-z0-9])[\"']?[ \t]*[:=]?[ \t]*[\"']?(?P<hex>(?:0x)?[0-9a-f]{{64}})(?![0-9a-z])"
          for k in ("preimage", "hash", "secret")),
        check=_check_preimage,
        lowered=True,
    ),
    # Anchored on the character before the first word (cheaper than a lookbehind), or at the start.
    _rule("seed_phrase", r"[^a-z]" + _SEED_TAIL, r"\A" + _SEED_TAIL, check=_check_seed, lowered=True),
    # A bearer token outside a header (the header form is a key/value below).
    _rule(
        "auth_header",
        _lit("bearer", "a-z0-9") + r"[ \t]+(?=[a-z._~+/-]{0,64}\d)[a-z0-9._~+/-]{8,4096}=*",
        lowered=True,
    ),
    # key: value, key=value, "key": "value", --flag value; the check classifies the whole key name.
    _rule(
        "secret",
        *(rf"(?P<key>{k})(?![a-z0-9]){_KV_SEP}" for k in (
            "key", "token", "secret", "pass(?:word|wd|phrase)", "pwd", "authorization", "cookie",
            "mnemonic", "phrase", "macaroon", "preimage", "credentials?")),
        check=_check_kv,
        lowered=True,
        skip_inside=True,
    ),
    # Prompt and message bodies: the value goes, the key stays.
    _rule(
        "prompt",
        *(rf"(?P<key>{k})(?![a-z0-9_-])\\?[\"']?[ \t]*(?P<sep>[:=])[ \t]*" for k in (
            "prompt(?:s|_text|_token_ids)?", "messages", "content", "inputs?", "system", "completion", "text",
            "instructions")),
        check=_check_prompt,
        lowered=True,
        skip_inside=True,
    ),
    # scheme://anything: anchored on "://", the check finds the scheme and trims sentence punctuation.
    _rule("url", r"://(?<=[A-Za-z0-9+.-]://)[^\s\"'<>`\\|{}^]{1,8192}", check=_check_url),
    # IPv6 has `::` or at least 7 colons: trigger on those (taking the rest of the hex/colon run, so a
    # long run is one candidate), then parse the whole candidate.
    _rule(
        "ip",
        r"::[0-9A-Fa-f:]{0,64}+",
        r":[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f:]{0,64}+",
        check=_check_ipv6,
    ),
    # IPv4 (with /prefix or :port), anchored on the first dot; the check takes the first octet.
    _rule(
        "ip",
        r"\.(?<=\d\.)\d{1,3}\.\d{1,3}\.\d{1,3}(?:/\d{1,2}(?!\d))?(?::\d{1,5}(?!\d))?(?![\w\[]|\.\d)",
        check=_check_ipv4,
    ),
    # host:port without a scheme, anchored on ":<digits>"; not a time (12:30:45), not file.py:12.
    _rule(
        "host_port",
        r":(?<=[A-Za-z0-9]:)(?<!:\d\d:)(?<![^A-Za-z0-9.-]\d:)(?<![^A-Za-z0-9.-]\d\d:)(?<!\.py:)"
        r"(?P<port>\d{1,5})(?![\w\[]|\.\d|:[\w\[])",
        check=_check_host_port,
    ),
)
