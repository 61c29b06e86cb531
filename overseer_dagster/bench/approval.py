"""Approval to execution through the real Dagster daemon: `overseer bench approval [--gates N]`.

A gRPC code server, `dagster-daemon run` and the webserver over a temporary DAGSTER_HOME and a SQLite
store (overseer_dagster.deploy), the lab's wallet on loopback, and a demo operator key generated for
the run. The tick schedule stays STOPPED: approved gates run while the autonomous loop is off.

N `wallet_spend` gates are opened exactly as a tick opens them (gate + gated action + decision row);
one at a time, as an operator would, each is approved with `overseer approve`'s own path (sign, submit
`approve_action` through Dagster's GraphQL API) and seen through before the next. Latency: from the
approval run's end (SUCCESS) to the action's `succeeded` journal row (the `approved_dispatch` sensor's
interval, the run queue, the dispatch run's start, the claim and the wallet call); also reported from
the `approved` journal row the approval run writes.
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

GOAL_P95_S = 10.0


def _open_wallet_gate(engine, amount_sats: int) -> dict:  # noqa: ANN001
    """One gated wallet_spend, written as a tick writes it."""
    from overseer_dagster.core.decide import rows_for
    from overseer_dagster.core.limits import Limits
    from overseer_dagster.core.proposal import decide_text
    from overseer_dagster.store import actions, gates, journal, write_tx

    raw = json.dumps({"actions": [{"kind": "wallet_spend", "amount_sats": amount_sats, "purpose": "provider_invoice",
                                   "payee_ref": "payee-lab"}]})
    verdict = decide_text(raw, None, Limits(payee_refs=frozenset({"payee-lab"})))
    now = datetime.now(UTC)
    [row] = rows_for(verdict, None, now=now, mode="autonomous", autonomous_today=0, daily_bound=1)
    action_id = str(uuid.uuid4())
    with write_tx(engine) as conn:
        gate_id, _ = gates.open_gate(conn, row.gate, action_id=action_id, action_json=row.action_json, now=now)
        actions.enqueue(conn, action_id=action_id, tick_id=None, kind=row.kind, authority="gated",
                        action_json=row.action_json, now=now, status="gated", gate_id=gate_id)
        journal.append(conn, [journal.Entry(phase="decision", state="pending_approval", created_at=now,
                                            kind=row.kind, authority="gated", action_id=action_id, gate_id=gate_id,
                                            action_json=row.action_json)])
    return gates.get(engine, gate_id)


def _outcomes(engine, action_ids: set[str]) -> dict[str, tuple[str, datetime]]:  # noqa: ANN001
    from sqlalchemy import select

    from overseer_dagster.store.tables import decisions

    terminal = ("succeeded", "failed", "precondition_failed", "blocked")
    with engine.connect() as conn:
        rows = conn.execute(select(decisions.c.action_id, decisions.c.state, decisions.c.created_at).where(
            decisions.c.action_id.in_(action_ids), decisions.c.phase == "outcome",
            decisions.c.state.in_(terminal))).all()
    return {a: (s, t) for a, s, t in rows}


def _submit(submit, url: str, job: str, config: dict, attempts: int = 3) -> str:  # noqa: ANN001
    """Submit a run; a busy webserver that times out is asked again (a duplicate approval is refused)."""
    from overseer_dagster.operator_cli import CommandError

    for attempt in range(attempts):
        try:
            return submit(url, job, config, wait=False)[0]
        except CommandError:
            if attempt == attempts - 1:
                raise
            time.sleep(2.0)
    raise AssertionError("unreachable")


def _approved_rows(engine, action_ids: set[str]) -> dict[str, datetime]:  # noqa: ANN001
    from sqlalchemy import select

    from overseer_dagster.store.tables import decisions

    with engine.connect() as conn:
        rows = conn.execute(select(decisions.c.action_id, decisions.c.created_at).where(
            decisions.c.action_id.in_(action_ids), decisions.c.state == "approved")).all()
    return dict(rows)


def _dispatch_runs(instance, gates: list[dict]) -> dict[str, tuple[float, float | None]]:  # noqa: ANN001
    """action id -> (dispatch run created, started), epoch seconds."""
    import dagster as dg

    out = {}
    for gate in gates:
        records = instance.get_run_records(filters=dg.RunsFilter(tags={"overseer/gate_id": gate["gate_id"]}))
        if records:
            out[gate["action_id"]] = (records[0].create_timestamp.timestamp(), records[0].start_time)
    return out


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run(gates: int = 12, spacing_s: float = 2.0, per_gate_timeout_s: float = 120.0) -> dict:
    from overseer_dagster.deploy import Deployment
    from overseer_dagster.lab.runtime import BackgroundLab, fast_lab_config
    from overseer_dagster.operator_cli import run_config_for, signed_config, submit
    from overseer_dagster.receipts import add_to_registry, generate_key, registry_entry, write_private_key
    from overseer_dagster.store import connect

    with tempfile.TemporaryDirectory(prefix="overseer-bench-") as tmp, BackgroundLab(fast_lab_config(1)) as lab:
        root = Path(tmp)
        key_path = root / "operator" / "bench.pem"
        key = generate_key()
        write_private_key(key, key_path)
        add_to_registry(root / "operators.json", registry_entry("bench", key))
        store_url = f"sqlite:///{root / 'store.db'}"
        env = {"OVERSEER_DATABASE_URL": store_url, "OVERSEER_HOME": str(root / "home"),
               "OVERSEER_OPERATORS": str(root / "operators.json"), "OVERSEER_WALLET_URL": lab.gateway_url,
               "OVERSEER_FLEET_SOURCE": "sample", "OVERSEER_ENABLED": "on", "OVERSEER_MODE": "autonomous"}
        engine = connect(store_url)
        load_start = os.getloadavg()[0]
        started = time.monotonic()
        with Deployment(root, env=env) as dagster:
            dagster.start_webserver()
            ready_s = time.monotonic() - started
            submitted: list[tuple[dict, str]] = []
            for i in range(gates):
                # As an operator does: approve one gate, see it through, then the next.
                gate = _open_wallet_gate(engine, 1000 + i)
                job, config = run_config_for("approve", signed_config(gate=gate, decision="approve", operator="bench",
                                                                      key_path=key_path, note="bench"))
                run_id = _submit(submit, dagster.webserver_url, job, config)
                submitted.append((gate, run_id))
                deadline = time.monotonic() + per_gate_timeout_s
                while time.monotonic() < deadline and not _outcomes(engine, {gate["action_id"]}):
                    time.sleep(0.25)
                time.sleep(spacing_s)
            ids = {g["action_id"] for g, _ in submitted}
            outcomes = _outcomes(engine, ids)
            with dagster.instance() as instance:
                approved_at = {g["action_id"]: (instance.get_run_record_by_id(run_id).end_time, instance.get_run_by_id(
                    run_id).status.value) for g, run_id in submitted}
                launched = _dispatch_runs(instance, [g for g, _ in submitted])
            approved_rows = _approved_rows(engine, ids)
            load_end = os.getloadavg()[0]
        paid = len(lab.wallet.payments)
        engine.dispose()
    latencies = [t.timestamp() - approved_at[a][0] for a, (state, t) in outcomes.items()
                 if state == "succeeded" and approved_at[a][0] is not None]
    from_row = [(t - approved_rows[a]).total_seconds() for a, (state, t) in outcomes.items()
                if state == "succeeded" and a in approved_rows]
    # Where the time goes: the sensor noticing (approval run end -> dispatch run created), the queue and
    # the run worker's start (created -> started), the dispatch itself (started -> outcome row).
    parts = {"sensor": [], "queue_and_start": [], "dispatch": []}
    for a, (state, t) in outcomes.items():
        if state != "succeeded" or a not in launched or approved_at[a][0] is None or launched[a][1] is None:
            continue
        created, started = launched[a]
        parts["sensor"].append(created - approved_at[a][0])
        parts["queue_and_start"].append(started - created)
        parts["dispatch"].append(t.timestamp() - started)
    result = {
        "gates": gates,
        "approval_runs_succeeded": sum(1 for _, status in approved_at.values() if status == "SUCCESS"),
        "executed": sum(1 for state, _ in outcomes.values() if state == "succeeded"),
        "wallet_payments": paid,
        "spacing_s": spacing_s,
        "median_from_approved_row_s": round(statistics.median(from_row), 2) if from_row else None,
        "median_s": round(statistics.median(latencies), 2) if latencies else None,
        "p95_s": round(_p(latencies, 0.95), 2) if latencies else None,
        "max_s": round(max(latencies), 2) if latencies else None,
        "goal_p95_s": GOAL_P95_S,
        **{f"median_{k}_s": round(statistics.median(v), 2) if v else None for k, v in parts.items()},
        "deployment_ready_s": round(ready_s, 1),
        "cpus": os.cpu_count(),
        "load_avg_1m_start": round(load_start, 2),
        "load_avg_1m_end": round(load_end, 2),
    }
    result["meets_goal"] = (result["executed"] == gates == paid and (result["p95_s"] or 1e9) <= GOAL_P95_S)
    return result


if __name__ == "__main__":
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 12)))
