"""One replica's `/metrics`: vLLM V1 Prometheus names and labels (`model_name`), real exposition format.

A custom collector over plain counters: cheap on the hot path, and no `_created` series (vLLM's sample has none).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# vLLM V1's bucket boundaries (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)
FINISHED_REASONS = ("stop", "length", "abort")


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """`n` observations of `value` (a chunk of n tokens shares one inter-token latency)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def cumulative(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            acc += count
            out.append((floatToGoString(bound), float(acc)))
        return out


class VllmMetrics:
    """Counters the engine bumps; gauges read live at scrape time."""

    def __init__(self, model_name: str, gauges: Callable[[], tuple[int, int, float]]) -> None:
        self.model_name = model_name
        self._gauges = gauges  # -> (running, waiting, kv_cache_usage_perc)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.success = dict.fromkeys(FINISHED_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        label = [self.model_name]
        running, waiting, kv = self._gauges()
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv),
        ):
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(label, float(value))
            yield g
        for name, doc, value in (
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens),
            ("vllm:generation_tokens", "Number of generation tokens processed.", self.generation_tokens),
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.", self.preemptions),
        ):
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(label, float(value))
            yield c
        s = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                labels=["finished_reason", "model_name"])
        for reason, value in self.success.items():
            s.add_metric([reason, self.model_name], float(value))
        yield s
        for name, doc, hist in (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft),
            ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", self.itl),
            ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.e2e),
        ):
            h = HistogramMetricFamily(name, doc, labels=["model_name"])
            h.add_metric(label, hist.cumulative(), hist.sum)
            yield h
