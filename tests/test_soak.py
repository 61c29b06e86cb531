"""The chaos soak, short: one minute of injected faults against the whole system, every check passing.

`overseer bench soak --minutes N` runs the lab, the stress harness and Dagster (code server, daemon,
webserver) as separate processes, launches ticks, and injects replica kills, hangs, slowdowns and
flapping, a scripted mind answering garbage (some with planted secrets) and timing out, a competing
writer on the store, a SIGKILLed daemon and a doubly submitted approval (overseer_dagster/bench/soak.py).
The longer run and its figures are in BENCHMARKS.md.
"""

from __future__ import annotations

import pytest

from overseer_dagster.bench import soak

pytestmark = [pytest.mark.daemon, pytest.mark.lab, pytest.mark.timeout(600),
              # dagster-graphql's client calls gql the old way; nothing of ours.
              pytest.mark.filterwarnings("ignore::DeprecationWarning:gql")]


def test_one_minute_of_faults_breaks_no_invariant() -> None:
    result = soak.run(1.0, seed=0)
    failed = {name: check for name, check in result["checks"].items() if not check["ok"]}
    assert "error" not in result, soak.format_result(result)
    assert result["checks"] and not failed, soak.format_result(result)
    faults = result["faults"]
    # Every kind of fault was injected at least once.
    for kind in ("replica_kill", "replica_hang", "replica_slow", "replica_flap", "db_lock", "daemon_kill"):
        assert faults.get(kind, 0) >= 1, (kind, faults)
    assert faults["mind_garbage"] >= 1 and faults["mind_timeout"] >= 1, faults
    assert result["passed"]
