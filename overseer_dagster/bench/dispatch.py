"""Decision to outcome through the real Dagster daemon: `overseer bench dispatch [--actions N]`.

A gRPC code server and `dagster-daemon run` over a temporary DAGSTER_HOME and a SQLite store
(overseer_dagster.deploy); the tick schedule is switched on as the UI does (the loop's enable flag).
Then N `stop_stress` decisions are written to the store exactly as a tick writes them (queued action
+ decision row), `spacing_s` apart. Latency is the journal's decision row to the action's
`succeeded` row: the sensor's interval, the run queue, the run worker's start and the dispatch itself.
The tick schedule runs too (the sample fleet), so its own runs compete, as they would in production.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

GOAL_P95_S = 15.0


def _enqueue_stop_stress(engine) -> str:  # noqa: ANN001
    from overseer_dagster.store import actions, journal, write_tx

    action_id = str(uuid.uuid4())
    text = json.dumps({"kind": "stop_stress", "reason": "bench"}, sort_keys=True, separators=(",", ":"))
    now = datetime.now(UTC)
    with write_tx(engine) as conn:
        actions.enqueue(conn, action_id=action_id, tick_id=None, kind="stop_stress", authority="autonomous",
                        action_json=text, now=now)
        journal.append(conn, [journal.Entry(phase="decision", state="queued", created_at=now, kind="stop_stress",
                                            authority="autonomous", action_id=action_id, action_json=text)])
    return action_id


def _rows(engine, action_ids: set[str]) -> dict[str, dict[str, datetime]]:  # noqa: ANN001
    from sqlalchemy import select

    from overseer_dagster.store.tables import decisions

    out: dict[str, dict[str, datetime]] = {}
    with engine.connect() as conn:
        rows = conn.execute(select(decisions.c.action_id, decisions.c.state, decisions.c.created_at)
                            .where(decisions.c.action_id.in_(action_ids))).all()
    for action_id, state, created_at in rows:
        out.setdefault(action_id, {})[state] = created_at
    return out


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run(actions: int = 20, spacing_s: float = 3.0, timeout_s: float = 180.0) -> dict:
    from overseer_dagster.deploy import Deployment
    from overseer_dagster.store import connect

    with tempfile.TemporaryDirectory(prefix="overseer-bench-") as tmp:
        root = Path(tmp)
        store_url = f"sqlite:///{root / 'store.db'}"
        env = {"OVERSEER_DATABASE_URL": store_url, "OVERSEER_HOME": str(root / "home"),
               "OVERSEER_FLEET_SOURCE": "sample", "OVERSEER_ENABLED": "on", "OVERSEER_MODE": "autonomous"}
        engine = connect(store_url)
        load_start = os.getloadavg()[0]
        started = time.monotonic()
        with Deployment(root, env=env) as dagster:
            ready_s = time.monotonic() - started
            dagster.start_schedule("overseer_tick_schedule")
            ids = []
            for _ in range(actions):
                ids.append(_enqueue_stop_stress(engine))
                time.sleep(spacing_s)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                rows = _rows(engine, set(ids))
                if all(set(rows.get(i, {})) & {"succeeded", "failed", "precondition_failed", "blocked", "advisory"}
                       for i in ids):
                    break
                time.sleep(0.5)
            rows = _rows(engine, set(ids))
            load_end = os.getloadavg()[0]
        engine.dispose()
    latencies = [(r["succeeded"] - r["queued"]).total_seconds() for r in rows.values() if "succeeded" in r]
    result = {
        "actions": actions,
        "succeeded": len(latencies),
        "spacing_s": spacing_s,
        "median_s": round(statistics.median(latencies), 2) if latencies else None,
        "p95_s": round(_p(latencies, 0.95), 2) if latencies else None,
        "max_s": round(max(latencies), 2) if latencies else None,
        "goal_p95_s": GOAL_P95_S,
        "deployment_ready_s": round(ready_s, 1),
        # Each dispatch is a run worker process: the figures depend on free CPU more than on anything else.
        "cpus": os.cpu_count(),
        "load_avg_1m_start": round(load_start, 2),
        "load_avg_1m_end": round(load_end, 2),
    }
    result["meets_goal"] = result["succeeded"] == actions and (result["p95_s"] or 1e9) <= GOAL_P95_S
    return result


if __name__ == "__main__":
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 20)))
