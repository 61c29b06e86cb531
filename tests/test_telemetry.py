"""parse_engine_metrics on the real vLLM and SGLang samples, on pages written here, and on nonsense."""

from __future__ import annotations

import itertools
import math
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overseer_dagster.core.telemetry import Histogram, TelemetryError, parse_engine_metrics

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def reason(text: str, **kwargs: object) -> str:
    with pytest.raises(TelemetryError) as caught:
        parse_engine_metrics(text, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason_code


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*metrics*.txt")), ids=lambda p: p.name)
def test_every_fixture_parses(path: Path) -> None:
    telemetry = parse_engine_metrics(path.read_text())
    assert telemetry.engine in ("vllm", "sglang")
    assert telemetry.model_names


# --- the real samples, figure by figure -------------------------------------------------------------


def test_vllm_v0_sample() -> None:
    t = parse_engine_metrics(fixture("vllm-metrics-sample-1.txt"))
    assert t.engine == "vllm"
    assert t.model_names == ("Qwen/Qwen2.5-Coder-1.5B-Instruct",)
    assert (t.requests_running, t.requests_waiting) == (0.0, 0.0)
    assert t.kv_cache_usage == 0.0  # from the V0 name, vllm:gpu_cache_usage_perc
    assert (t.prompt_tokens_total, t.generation_tokens_total) == (148.0, 955.0)
    assert t.request_success_total == 4.0
    assert t.preemptions_total == 0.0
    # The sample's only histogram is iteration_tokens_total: no latency histograms.
    assert (t.ttft, t.itl, t.e2e) == (None, None, None)


def test_vllm_v1_sample_elided() -> None:
    t = parse_engine_metrics(fixture("vllm-metrics-sample-2.txt"))
    assert t.engine == "vllm"
    assert t.model_names == (LLAMA,)
    assert t.requests_running == 8.0
    # Elided from the document: present in a real page, absent here, so None rather than 0.
    assert (t.requests_waiting, t.kv_cache_usage, t.prompt_tokens_total, t.preemptions_total) == (None,) * 4
    assert t.generation_tokens_total == 27453.0
    assert t.request_success_total == 132.0  # stop 1 + length 131 + abort 0
    assert t.ttft == Histogram(
        buckets=(
            (0.001, 0.0), (0.005, 0.0), (0.01, 0.0), (0.02, 13.0), (0.04, 97.0),
            (0.06, 123.0), (0.08, 138.0), (0.1, 140.0), (math.inf, 140.0),
        ),
        count=140.0,
        sum=None,  # elided too
    )  # fmt: skip
    assert t.ttft.quantile(0.5) == pytest.approx(0.02 + 0.02 * (70 - 13) / (97 - 13))
    assert t.ttft.quantile(0.9) == pytest.approx(0.064)
    assert t.ttft.quantile(0.99) == pytest.approx(0.086)
    assert (t.itl, t.e2e) == (None, None)


def test_sglang_sample() -> None:
    t = parse_engine_metrics(fixture("sglang-metrics-sample-1.txt"))
    assert t.engine == "sglang"
    assert t.model_names == (LLAMA,)
    assert (t.requests_running, t.requests_waiting) == (162.0, 2826.0)
    assert t.kv_cache_usage == 0.28
    assert (t.prompt_tokens_total, t.generation_tokens_total) == (8128902.0, 7557572.0)
    assert (t.request_success_total, t.preemptions_total) == (None, None)

    assert t.ttft is not None and t.itl is not None and t.e2e is not None
    assert (t.ttft.count, t.ttft.sum, len(t.ttft.buckets)) == (11008.0, 2351897.9474117756, 21)
    assert t.ttft.buckets[-2:] == ((30.0, 2513.0), (math.inf, 11008.0))
    assert t.ttft.quantile(0.1) == pytest.approx(7.5 + 2.5 * (1100.8 - 941) / (1330 - 941))
    # Most first tokens took longer than the highest finite bound: PromQL answers that bound.
    assert t.ttft.quantile(0.5) == 30.0
    # ITL from the older name, sglang:time_per_output_token_seconds.
    assert (t.itl.count, t.itl.sum) == (7400757.0, 866964.5791549598)
    rank = 0.5 * 7400757
    assert t.itl.quantile(0.5) == pytest.approx(0.075 + 0.025 * (rank - 433413) / (4950195 - 433413))
    assert (t.e2e.count, t.e2e.sum) == (11228.0, 3116093.850019932)
    assert t.e2e.quantile(0.99) == 60.0


def test_fields_limits_what_is_read() -> None:
    t = parse_engine_metrics(fixture("sglang-metrics-sample-1.txt"), fields=("requests_waiting", "ttft"))
    assert (t.requests_running, t.requests_waiting, t.ttft is not None) == (162.0, 2826.0, True)
    assert (t.kv_cache_usage, t.itl, t.e2e, t.prompt_tokens_total) == (None, None, None, None)


def test_require_names_what_the_caller_cannot_do_without() -> None:
    assert reason(fixture("vllm-metrics-sample-2.txt"), require=("requests_waiting",)) == (
        "metrics_missing:requests_waiting"
    )
    with pytest.raises(ValueError):
        parse_engine_metrics("", fields=("ttft",), require=("itl",))
    with pytest.raises(ValueError):
        parse_engine_metrics("", fields=("no_such_field",))


# --- V0 and V1 names ------------------------------------------------------------------------------


def test_newer_names_win_where_a_page_carries_both() -> None:
    page = """
vllm:num_requests_running{model_name="m"} 1
vllm:kv_cache_usage_perc{model_name="m"} 0.5
vllm:gpu_cache_usage_perc{model_name="m"} 0.9
vllm:inter_token_latency_seconds_bucket{le="0.1",model_name="m"} 4
vllm:inter_token_latency_seconds_bucket{le="+Inf",model_name="m"} 4
vllm:inter_token_latency_seconds_count{model_name="m"} 4
vllm:time_per_output_token_seconds_bucket{le="0.1",model_name="m"} 9
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 9
vllm:time_per_output_token_seconds_count{model_name="m"} 9
"""
    t = parse_engine_metrics(page)
    assert t.kv_cache_usage == 0.5
    assert t.itl is not None and t.itl.count == 4


def test_v0_swapped_requests_count_as_waiting() -> None:
    page = """
vllm:num_requests_running{model_name="m"} 4
vllm:num_requests_waiting{model_name="m"} 2
vllm:num_requests_swapped{model_name="m"} 3
"""
    assert parse_engine_metrics(page).requests_waiting == 5.0


def test_sglang_newer_itl_and_retractions() -> None:
    page = """
sglang:num_running_reqs{model_name="m",tp_rank="0"} 2
sglang:num_retracted_requests_total{model_name="m",tp_rank="0"} 7
sglang:inter_token_latency_seconds_bucket{le="0.02",model_name="m"} 1
sglang:inter_token_latency_seconds_bucket{le="+Inf",model_name="m"} 1
sglang:inter_token_latency_seconds_count{model_name="m"} 1
sglang:time_per_output_token_seconds_bucket{le="0.5",model_name="m"} 3
sglang:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 3
sglang:time_per_output_token_seconds_count{model_name="m"} 3
"""
    t = parse_engine_metrics(page)
    assert t.preemptions_total == 7.0
    assert t.itl is not None and t.itl.buckets == ((0.02, 1.0), (math.inf, 1.0))


# --- aggregation across engines and ranks ---------------------------------------------------------

V1_TWO_ENGINES = """
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 5.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:prompt_tokens_total{engine="0",model_name="m"} 100.0
vllm:prompt_tokens_total{engine="1",model_name="m"} 50.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.1",model_name="m"} 5.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.5",model_name="m"} 5.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf",model_name="m"} 6.0
vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 6.0
vllm:time_to_first_token_seconds_sum{engine="1",model_name="m"} 3.5
"""


def test_v1_data_parallel_engines_add_up_and_the_fullest_cache_binds() -> None:
    t = parse_engine_metrics(V1_TWO_ENGINES)
    assert (t.requests_running, t.requests_waiting) == (8.0, 3.0)
    assert t.kv_cache_usage == 0.75
    assert t.prompt_tokens_total == 150.0
    assert t.ttft == Histogram(buckets=((0.1, 6.0), (0.5, 8.0), (math.inf, 10.0)), count=10.0, sum=5.5)


SGLANG_RANKS = """
sglang:num_running_reqs{dp_rank="0",model_name="m",pp_rank="0",tp_rank="0"} 10
sglang:num_running_reqs{dp_rank="0",model_name="m",pp_rank="0",tp_rank="1"} 10
sglang:num_running_reqs{dp_rank="0",model_name="m",pp_rank="1",tp_rank="0"} 9
sglang:num_running_reqs{dp_rank="1",model_name="m",pp_rank="0",tp_rank="0"} 4
sglang:num_running_reqs{dp_rank="1",model_name="m",pp_rank="0",tp_rank="1"} 4
sglang:num_queue_reqs{dp_rank="0",model_name="m",priority="0",tp_rank="0"} 2
sglang:num_queue_reqs{dp_rank="0",model_name="m",priority="1",tp_rank="0"} 3
sglang:num_queue_reqs{dp_rank="0",model_name="m",priority="1",tp_rank="1"} 3
sglang:token_usage{dp_rank="0",model_name="m",tp_rank="0"} 0.4
sglang:token_usage{dp_rank="1",model_name="m",tp_rank="1"} 0.9
sglang:generation_tokens_total{dp_rank="0",model_name="m",tp_rank="0"} 70
sglang:generation_tokens_total{dp_rank="0",model_name="m",tp_rank="1"} 70
sglang:generation_tokens_total{dp_rank="1",model_name="m",tp_rank="0"} 30
sglang:time_to_first_token_seconds_bucket{dp_rank="0",le="1.0",model_name="m",tp_rank="0"} 2
sglang:time_to_first_token_seconds_bucket{dp_rank="0",le="+Inf",model_name="m",tp_rank="0"} 3
sglang:time_to_first_token_seconds_count{dp_rank="0",model_name="m",tp_rank="0"} 3
sglang:time_to_first_token_seconds_bucket{dp_rank="0",le="1.0",model_name="m",tp_rank="1"} 0
sglang:time_to_first_token_seconds_bucket{dp_rank="0",le="+Inf",model_name="m",tp_rank="1"} 0
sglang:time_to_first_token_seconds_count{dp_rank="0",model_name="m",tp_rank="1"} 0
sglang:time_to_first_token_seconds_bucket{dp_rank="1",le="1.0",model_name="m",tp_rank="0"} 1
sglang:time_to_first_token_seconds_bucket{dp_rank="1",le="+Inf",model_name="m",tp_rank="0"} 1
sglang:time_to_first_token_seconds_count{dp_rank="1",model_name="m",tp_rank="0"} 1
"""


def test_sglang_ranks_of_one_engine_are_not_added() -> None:
    t = parse_engine_metrics(SGLANG_RANKS)
    # dp 0: max over its tp/pp ranks (10), dp 1: 4. Tensor-parallel ranks see the same requests.
    assert t.requests_running == 14.0
    # Priorities are different requests: 2 + 3, the tp ranks of priority 1 once.
    assert t.requests_waiting == 5.0
    assert t.kv_cache_usage == 0.9
    assert t.generation_tokens_total == 100.0
    # dp 0 from the rank that observed (3, not 0), plus dp 1.
    assert t.ttft == Histogram(buckets=((1.0, 3.0), (math.inf, 4.0)), count=4.0)


# --- what cannot be trusted -----------------------------------------------------------------------

RUNNING = 'vllm:num_requests_running{model_name="m"} 1\n'


@pytest.mark.parametrize(
    ("page", "code"),
    [
        ("", "metrics_malformed"),
        ("<html><body>502 Bad Gateway</body></html>", "metrics_malformed"),
        ("Internal Server Error", "metrics_malformed"),
        ("...\n# HELP only comments\n", "metrics_malformed"),
        ('vllm:num_requests_running{model_name="m} 1\n', "metrics_malformed"),  # unterminated quote
        ('vllm:num_requests_running{model_name=m} 1\n', "metrics_malformed"),  # unquoted label value
        ('vllm:num_requests_running{model_name="m"} 1x\n', "metrics_malformed"),
        ('vllm:num_requests_running{model_name="m"} NaN\n', "metrics_malformed"),
        ('vllm:num_requests_running{model_name="m"} -1\n', "metrics_malformed"),
        (RUNNING + 'vllm:kv_cache_usage_perc{model_name="m"} 1.5\n', "metrics_malformed"),
        (RUNNING + 'sglang:num_running_reqs{model_name="m"} 1\n', "metrics_malformed"),
        ("process_cpu_seconds_total 1.5\npython_info 1\n", "metrics_unrecognized"),
        ('vllm:num_requests_waiting{model_name="m"} 1\n', "metrics_missing:requests_running"),
        ('sglang:num_queue_reqs{model_name="m"} 1\n', "metrics_missing:requests_running"),
    ],
)
def test_untrustworthy_pages_raise_one_typed_error(page: str, code: str) -> None:
    assert reason(page) == code


@pytest.mark.parametrize(
    "histogram",
    [
        # Cumulative counts that decrease.
        'h_bucket{le="0.1"} 5\nh_bucket{le="0.2"} 3\nh_bucket{le="+Inf"} 5\nh_count 5\n',
        # Neither a +Inf bucket nor a count: how many observations lie above 0.1 is unknown.
        'h_bucket{le="0.1"} 5\n',
        # The count disagrees with the +Inf bucket.
        'h_bucket{le="0.1"} 5\nh_bucket{le="+Inf"} 6\nh_count 7\n',
        # A bucket bound that is not a number.
        'h_bucket{le="soon"} 5\nh_count 5\n',
        # Engines with different bounds cannot be added bucket by bucket.
        'h_bucket{engine="0",le="0.1"} 1\nh_count{engine="0"} 1\n'
        'h_bucket{engine="1",le="0.2"} 1\nh_count{engine="1"} 1\n',
    ],
)
def test_inconsistent_histograms_are_malformed(histogram: str) -> None:
    page = RUNNING + histogram.replace("h_", "vllm:time_to_first_token_seconds_")
    assert reason(page) == "metrics_malformed"


def test_a_page_cut_short_is_not_trusted() -> None:
    text = fixture("vllm-metrics-sample-1.txt")
    line = 'vllm:num_requests_running{model_name="Qwen/Qwen2.5-Coder-1.5B-Instruct"} 0.0'
    # Cut within the line: no longer a sample, so skipped, so the page lacks its running count.
    for keep in (len("vllm:num_requests_running{model_name="), len(line) - len(" 0.0")):
        cut = text.index(line) + keep
        assert reason(text[:cut]) == "metrics_missing:requests_running"


def test_telemetry_error_carries_its_reason_and_pickles() -> None:
    error = TelemetryError("metrics_missing:requests_running", "no vllm series")
    assert str(error) == "metrics_missing:requests_running: no vllm series"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason_code, copy.message) == (error.reason_code, error.message)


# --- quantiles as PromQL's histogram_quantile ------------------------------------------------------


def test_quantile_edges() -> None:
    empty = Histogram(buckets=((1.0, 0.0), (math.inf, 0.0)), count=0.0)
    assert empty.quantile(0.5) is None
    assert Histogram(buckets=((math.inf, 3.0),), count=3.0).quantile(0.5) is None
    h = Histogram(buckets=((1.0, 0.0), (2.0, 4.0), (math.inf, 4.0)), count=4.0)
    assert h.quantile(0.0) == 0.0
    assert h.quantile(0.5) == 1.5
    assert h.quantile(1.0) == 2.0
    negative = Histogram(buckets=((-1.0, 2.0), (0.0, 2.0), (math.inf, 2.0)), count=2.0)
    assert negative.quantile(0.5) == -1.0
    with pytest.raises(ValueError):
        h.quantile(1.5)


def _page(*counts: float, bounds: tuple[float, ...] = (0.01, 0.05, math.inf), total: float | None = None) -> Histogram:
    return Histogram(buckets=tuple(zip(bounds, counts)), count=counts[-1], sum=total)


def test_the_window_between_two_pages_is_what_happened_between_them() -> None:
    # 1,000 fast tokens since the engine started, then 20 slow ones: the page's p90 still says fast.
    before = _page(1000, 1000, 1000, total=5.0)
    after = _page(1000, 1000, 1020, total=7.0)
    assert after.quantile(0.9) <= 0.01
    window = after.since(before)
    assert window == _page(0, 0, 20, total=2.0)
    assert window.quantile(0.9) == 0.05  # in the +Inf bucket: the highest finite bound, as PromQL says
    assert after.since(after) == _page(0, 0, 0, total=0.0) and after.since(after).quantile(0.9) is None


def test_pages_that_do_not_line_up_have_no_window() -> None:
    assert _page(0, 5, 5).since(_page(3, 3, 3)) is None  # a count went down: the engine restarted
    assert _page(5, 5, 5).since(_page(1, 1, 1, bounds=(0.02, 0.05, math.inf))) is None  # other buckets
    # Every count grew, yet the increases are not cumulative: two pages of different engines.
    assert _page(10, 10, 10).since(_page(1, 8, 8)) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=6))
def test_a_window_is_the_difference_that_added_to_the_earlier_page_gives_the_later(
        steps: list[tuple[int, int]]) -> None:
    bounds = tuple(0.01 * (i + 1) for i in range(len(steps) - 1)) + (math.inf,)
    earlier_in = [a for a, _ in steps]
    later_in = [a + b for a, b in steps]
    def cumulative(counts: list[int]) -> tuple[float, ...]:
        return tuple(float(c) for c in itertools.accumulate(counts))

    earlier, later = _page(*cumulative(earlier_in), bounds=bounds), _page(*cumulative(later_in), bounds=bounds)
    window = later.since(earlier)
    assert window == _page(*cumulative([b for _, b in steps]), bounds=bounds)


# --- nothing but TelemetryError, whatever the text -------------------------------------------------

_REAL_LINES = [
    line
    for name in ("vllm-metrics-sample-1.txt", "vllm-metrics-sample-2.txt", "sglang-metrics-sample-1.txt")
    for line in fixture(name).splitlines()
]


@st.composite
def _damaged_line(draw: st.DrawFn) -> str:
    line = draw(st.sampled_from(_REAL_LINES))
    start = draw(st.integers(0, len(line)))
    end = draw(st.integers(start, len(line)))
    return line[:start] + draw(st.text(max_size=8)) + line[end:]


_pages = st.lists(
    st.one_of(st.sampled_from(_REAL_LINES), _damaged_line(), st.text(max_size=60)), max_size=40
).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _pages))
def test_arbitrary_text_raises_nothing_but_telemetry_error(text: str) -> None:
    try:
        telemetry = parse_engine_metrics(text)
    except TelemetryError as error:
        assert error.reason_code.startswith(("metrics_malformed", "metrics_missing:", "metrics_unrecognized"))
    else:
        assert telemetry.requests_running >= 0
