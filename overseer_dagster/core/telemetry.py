"""Engine telemetry: one vLLM or SGLang `/metrics` page, parsed and aggregated into one replica's view.

Pure: text in, `EngineTelemetry` out. Every way the text can be wrong ends in one exception type,
`TelemetryError`, whose `reason_code` is short enough to show in a tick report.

Aggregation across the labels that split one replica's series, deliberately (a replica is one server):

    field                                across data-parallel engines:    across tp_rank, pp_rank,
                                         engine, dp_rank, and any other   moe_ep_rank of one engine
                                         label (model, priority, ...)     (the same requests)
    -----------------------------------  -------------------------------  -------------------------
    requests_running, requests_waiting   sum                              max
    token, success, preemption counters  sum                              max
    kv_cache_usage                       max: the fullest engine binds    max
    ttft, itl, e2e histograms            sum, bucket by bucket            one rank: most observations

Tensor-, pipeline- and expert-parallel ranks of one engine serve the same requests, so adding them
would count each request several times; data-parallel engines serve different requests.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MALFORMED = "metrics_malformed"
# Valid samples, but none from vLLM or SGLang (another exporter, or the wrong port).
UNRECOGNIZED = "metrics_unrecognized"


def missing(field: str) -> str:
    return f"metrics_missing:{field}"


class TelemetryError(Exception):
    """The page cannot be trusted; `reason_code` says why (`metrics_malformed`, `metrics_missing:<field>`, ...)."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(reason_code, message)
        self.reason_code = reason_code
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason_code}: {self.message}"


_Count = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Histogram(_Model):
    """A cumulative Prometheus histogram: `buckets` are (upper bound, observations <= bound), ending at +Inf."""

    buckets: tuple[tuple[float, _Count], ...]
    count: _Count
    sum: float | None = None

    @model_validator(mode="after")
    def _cumulative(self) -> Histogram:
        bounds = [le for le, _ in self.buckets]
        counts = [c for _, c in self.buckets]
        if not bounds or bounds[-1] != math.inf:
            raise ValueError("the last bucket must be le=+Inf")
        if any(math.isnan(le) for le in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError("bucket bounds must increase")
        if any(a > b for a, b in zip(counts, counts[1:])):
            raise ValueError("cumulative bucket counts must not decrease")
        if counts[-1] != self.count:
            raise ValueError("the +Inf bucket must equal the count")
        return self

    def since(self, earlier: Histogram) -> Histogram | None:
        """The observations made after `earlier` was read, as a histogram of their own (bucket by bucket
        difference): what happened between two scrapes, as PromQL's `increase` over that window.

        None when the two do not line up: other bucket bounds, or a count lower than before (the engine
        restarted and its counters began again, so `self` alone is what it saw since the restart).
        """
        if [le for le, _ in self.buckets] != [le for le, _ in earlier.buckets]:
            return None
        buckets = tuple((le, now - then) for (le, now), (_, then) in zip(self.buckets, earlier.buckets))
        if any(count < 0 for _, count in buckets):
            return None
        total = None if self.sum is None or earlier.sum is None else self.sum - earlier.sum
        try:
            return Histogram(buckets=buckets, count=self.count - earlier.count, sum=total)
        except ValidationError:  # increases that are not cumulative: the pages do not belong together
            return None

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated linearly within its bucket as PromQL `histogram_quantile` does.

        None without observations or without a finite bucket. A quantile in the +Inf bucket is the
        highest finite bound. Over a page's cumulative histogram this is the quantile since the engine
        started; over `since`'s difference of two pages, the quantile of the window between them.
        """
        if not 0 <= q <= 1:
            raise ValueError("q must be within [0, 1]")
        if self.count == 0 or len(self.buckets) < 2:
            return None
        rank = q * self.count
        b = next(i for i, (_, c) in enumerate(self.buckets) if c >= rank or i == len(self.buckets) - 1)
        if b == len(self.buckets) - 1:
            return self.buckets[-2][0]
        end, in_bucket = self.buckets[b]
        if b == 0 and end <= 0:
            return end
        start = 0.0
        if b > 0:
            start, below = self.buckets[b - 1]
            in_bucket -= below
            rank -= below
        if in_bucket == 0:  # only when q == 0 and the first buckets are empty
            return start
        return start + (end - start) * (rank / in_bucket)


class EngineTelemetry(_Model):
    """What one replica's engine says about itself. None: the page does not carry that series."""

    engine: Literal["vllm", "sglang"]
    model_names: tuple[str, ...]
    requests_running: _Count
    requests_waiting: _Count | None = None
    kv_cache_usage: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    prompt_tokens_total: _Count | None = None
    generation_tokens_total: _Count | None = None
    request_success_total: _Count | None = None
    preemptions_total: _Count | None = None
    ttft: Histogram | None = None
    itl: Histogram | None = None
    e2e: Histogram | None = None


# Where each field comes from, per engine; where several names are listed, the first the page
# carries wins (the newer name first). A histogram field names a family: its _bucket, _count and _sum.
_SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": {
        "requests_running": ("vllm:num_requests_running",),
        "requests_waiting": ("vllm:num_requests_waiting",),
        "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "prompt_tokens_total": ("vllm:prompt_tokens_total",),
        "generation_tokens_total": ("vllm:generation_tokens_total",),
        "request_success_total": ("vllm:request_success_total",),
        "preemptions_total": ("vllm:num_preemptions_total",),
        "ttft": ("vllm:time_to_first_token_seconds",),
        "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        "e2e": ("vllm:e2e_request_latency_seconds",),
    },
    "sglang": {
        "requests_running": ("sglang:num_running_reqs",),
        "requests_waiting": ("sglang:num_queue_reqs",),
        "kv_cache_usage": ("sglang:token_usage",),
        "prompt_tokens_total": ("sglang:prompt_tokens_total",),
        "generation_tokens_total": ("sglang:generation_tokens_total",),
        "preemptions_total": ("sglang:num_retracted_requests_total",),
        "ttft": ("sglang:time_to_first_token_seconds",),
        "itl": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        "e2e": ("sglang:e2e_request_latency_seconds",),
    },
}
# vLLM V0 only: requests preempted to CPU. Admitted but not running, so they count as waiting.
_VLLM_SWAPPED = "vllm:num_requests_swapped"
_HISTOGRAMS = frozenset({"ttft", "itl", "e2e"})
_READABLE = frozenset(EngineTelemetry.model_fields) - {"engine", "model_names"}


def _sample_names(field: str, family: str) -> tuple[str, ...]:
    return tuple(family + s for s in ("_bucket", "_count", "_sum")) if field in _HISTOGRAMS else (family,)


_KNOWN = frozenset(
    [_VLLM_SWAPPED]
    + [n for fields in _SOURCES.values() for f, fams in fields.items() for fam in fams for n in _sample_names(f, fam)]
)
_RANK_LABELS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank"})

# A sample line: a metric name, optional labels, blanks, then something that starts like a number
# (NaN and Inf included). Only its shape: the Prometheus parser reads the lines that pass.
_SAMPLE_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{.*\})?[ \t]+[-+]?(?:[0-9.]|nan|inf)", re.IGNORECASE)

_Labels = Mapping[str, str]
_Series = list[tuple[_Labels, float]]


def parse_engine_metrics(
    text: str, *, fields: Iterable[str] | None = None, require: Iterable[str] = ()
) -> EngineTelemetry:
    """Parse one vLLM (V0 or V1) or SGLang `/metrics` page.

    `fields` limits the work to the EngineTelemetry fields a caller reads (default: all; the others
    come back None); the Prometheus parser is slow enough per line for that to matter across a fleet.
    `requests_running` is always read and required; `require` names further fields the caller cannot
    do without. Raises TelemetryError, and nothing else, for anything it cannot trust.
    """
    wanted = {"requests_running", *(_READABLE if fields is None else fields)}
    required = {"requests_running", *require}
    if not required <= wanted <= _READABLE:
        raise ValueError(f"require must be within fields, fields within {sorted(_READABLE)}")
    try:
        engine, lines = _sample_lines(text)
        families = {f: _family(engine, f, lines) for f in wanted}
        read = [n for f, fam in families.items() if fam for n in _sample_names(f, fam)]
        if families.get("requests_waiting") == "vllm:num_requests_waiting":
            read.append(_VLLM_SWAPPED)
        series = _parse([line for name in read for line in lines.get(name, ())])
        values: dict[str, object] = {f: _aggregate(f, fam, series) for f, fam in families.items() if fam}
        if _VLLM_SWAPPED in series:
            swapped = _sum_partitions_max_ranks("requests_waiting", series[_VLLM_SWAPPED])
            values["requests_waiting"] = float(values["requests_waiting"]) + swapped  # type: ignore[arg-type]
        model_names = tuple(sorted({lb["model_name"] for ss in series.values() for lb, _ in ss if "model_name" in lb}))
    except TelemetryError:
        raise
    except Exception as exc:  # the parser's and our arithmetic's errors all mean the same thing
        raise TelemetryError(MALFORMED, f"{type(exc).__name__}: {exc}"[:200]) from exc
    for field in sorted(required):
        if values.get(field) is None:
            raise TelemetryError(missing(field), f"no {engine} series for {field}")
    try:
        return EngineTelemetry(engine=engine, model_names=model_names, **values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TelemetryError(MALFORMED, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _sample_lines(text: str) -> tuple[Literal["vllm", "sglang"], dict[str, list[str]]]:
    """The page's engine, and its sample lines this module may read, by metric name.

    Comments, blank lines and lines that are neither comments nor samples ("..." elisions) are
    skipped here, before the Prometheus parser sees anything.
    """
    lines: dict[str, list[str]] = defaultdict(list)
    prefixes: set[str] = set()
    any_sample = False
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        match = _SAMPLE_LINE.match(line)
        if match is None:
            continue
        any_sample = True
        name = match.group(1)
        prefixes.add(name.partition(":")[0])
        if name in _KNOWN:
            lines[name].append(line)
    if not any_sample:
        raise TelemetryError(MALFORMED, "no sample lines")
    engines = prefixes & {"vllm", "sglang"}
    if not engines:
        raise TelemetryError(UNRECOGNIZED, "no vllm: or sglang: series")
    if len(engines) > 1:
        raise TelemetryError(MALFORMED, "both vllm: and sglang: series on one page")
    return ("vllm" if "vllm" in engines else "sglang"), lines


def _family(engine: str, field: str, lines: Mapping[str, list[str]]) -> str | None:
    """The first of the field's families that the page carries."""
    families = _SOURCES[engine].get(field, ())
    return next((fam for fam in families if any(n in lines for n in _sample_names(field, fam))), None)


def _parse(lines: list[str]) -> dict[str, _Series]:
    series: dict[str, _Series] = defaultdict(list)
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            series[sample.name].append((sample.labels, float(sample.value)))
    return series


def _aggregate(field: str, family: str, series: dict[str, _Series]) -> float | Histogram:
    if field in _HISTOGRAMS:
        return _histogram(field, family, series)
    if field == "kv_cache_usage":
        return max(_finite(field, v) for _, v in series[family])
    return _sum_partitions_max_ranks(field, series[family])


def _split(labels: _Labels) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """(partition, rank): the labels that tell requests apart, and the parallel ranks that do not."""
    partition = tuple(sorted((k, v) for k, v in labels.items() if k not in _RANK_LABELS and k != "le"))
    rank = tuple(sorted((k, v) for k, v in labels.items() if k in _RANK_LABELS))
    return partition, rank


def _finite(field: str, value: float) -> float:
    if not math.isfinite(value):
        raise TelemetryError(MALFORMED, f"{field} is {value}")
    return value


def _sum_partitions_max_ranks(field: str, samples: _Series) -> float:
    per_partition: dict[object, float] = {}
    for labels, value in samples:
        partition, _ = _split(labels)
        per_partition[partition] = max(per_partition.get(partition, -math.inf), _finite(field, value))
    return sum(per_partition.values())


def _histogram(field: str, name: str, series: dict[str, _Series]) -> Histogram:
    # (partition, rank) -> buckets, count, sum
    buckets: dict[tuple, dict[float, float]] = defaultdict(dict)
    counts: dict[tuple, float] = {}
    sums: dict[tuple, float] = {}
    for labels, value in series.get(name + "_bucket", ()):
        if "le" not in labels:
            raise TelemetryError(MALFORMED, f"{field} bucket without le")
        buckets[_split(labels)][float(labels["le"])] = _finite(field, value)
    for labels, value in series.get(name + "_count", ()):
        counts[_split(labels)] = _finite(field, value)
    for labels, value in series.get(name + "_sum", ()):
        sums[_split(labels)] = _finite(field, value)
    # One histogram per (partition, rank); +Inf comes from _count when the page has no +Inf bucket.
    per_series: dict[tuple, Histogram] = {}
    for key in buckets.keys() | counts.keys():
        b = buckets.get(key, {})
        count = counts.get(key, b.get(math.inf))
        if count is None:
            raise TelemetryError(MALFORMED, f"{field} has neither a +Inf bucket nor a count")
        b.setdefault(math.inf, count)
        per_series[key] = _checked(field, tuple(sorted(b.items())), count, sums.get(key))
    # Per partition, one rank: the one that observed most (often only rank 0 observes at all).
    chosen: dict[tuple, Histogram] = {}
    for (partition, _), h in sorted(per_series.items()):
        if partition not in chosen or h.count > chosen[partition].count:
            chosen[partition] = h
    parts = list(chosen.values())
    if not parts:
        raise TelemetryError(MALFORMED, f"{field} has only a sum")
    bounds = [le for le, _ in parts[0].buckets]
    if any([le for le, _ in h.buckets] != bounds for h in parts[1:]):
        raise TelemetryError(MALFORMED, f"{field} bucket bounds differ across engines")
    total_sum = None if any(h.sum is None for h in parts) else sum(h.sum for h in parts)  # type: ignore[misc]
    return _checked(
        field,
        tuple((le, sum(h.buckets[i][1] for h in parts)) for i, le in enumerate(bounds)),
        sum(h.count for h in parts),
        total_sum,
    )


def _checked(field: str, buckets: tuple[tuple[float, float], ...], count: float, total: float | None) -> Histogram:
    try:
        return Histogram(buckets=buckets, count=count, sum=total)
    except ValidationError as exc:
        raise TelemetryError(MALFORMED, f"{field}: {exc.errors()[0]['msg']}") from None
