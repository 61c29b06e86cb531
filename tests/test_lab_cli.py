"""`lab up` in a subprocess (ready line, serves, exit 0 on SIGTERM, ledger rows) and `bench lab`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from overseer_dagster.lab.bench import bench_lab, format_result
from overseer_dagster.lab.cli import add_bench_commands, add_lab_commands

pytestmark = pytest.mark.lab


def _lab_up(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OVERSEER_HOME": str(tmp_path / "home")}
    return subprocess.Popen([sys.executable, "-m", "overseer_dagster.lab.cli", "lab", "up", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _first_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines:
        proc.kill()
        raise AssertionError(f"no ready line; stderr: {proc.stderr.read()[-2000:]}")
    return lines[0]


def test_lab_up_prints_ready_line_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    proc = _lab_up(tmp_path, "--replicas", "2", "--slots", "2", "--database-url", f"sqlite:///{db}")
    try:
        line = _first_line(proc)
        assert line.startswith("lab ready {") and line.endswith("\n")
        info = json.loads(line[len("lab ready "):])
        assert set(info) == {"gateway", "replicas"} and sorted(info["replicas"]) == ["replica-00", "replica-01"]
        urls = [info["gateway"], *info["replicas"].values()]
        assert all(u.startswith("http://127.0.0.1:") for u in urls) and len(set(urls)) == 3
        with httpx.Client(timeout=10) as client:
            resp = client.post(info["gateway"] + "/v1/chat/completions", headers={"X-Demand-Kind": "external"},
                               json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            assert resp.status_code == 200
            assert client.get(info["replicas"]["replica-01"] + "/health").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    from overseer_dagster.store import connect
    from overseer_dagster.store.ledger import last_row_at

    assert last_row_at(connect(f"sqlite:///{db}")) is not None  # the served request reached the ledger


def test_lab_up_refuses_a_bad_scenario_before_start(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.json"
    scenario.write_text(json.dumps({"faults": [{"at_s": 1, "replica": "replica-00", "kind": "explode"}]}))
    proc = _lab_up(tmp_path, "--no-ledger", "--scenario", str(scenario))
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and out == ""
    assert "bad.json: faults[0].kind: 'explode' is not one of kill" in err


def test_commands_register_with_argparse() -> None:
    parser = argparse.ArgumentParser(prog="overseer")
    sub = parser.add_subparsers(dest="command", required=True)
    add_lab_commands(sub)
    bench = sub.add_parser("bench")
    add_bench_commands(bench.add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(["lab", "up", "--replicas", "3", "--slots", "8", "--singleflight", "--gateway-port",
                              "0", "--traffic", "steady:rate=2", "--auto-readmit", "--database-url", "sqlite://"])
    assert (args.replicas, args.slots, args.singleflight, args.auto_readmit) == (3, 8, True, True)
    assert callable(args.handler)
    args = parser.parse_args(["bench", "lab", "--seconds", "2", "--json"])
    assert args.seconds == 2 and args.json and callable(args.handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["lab", "up", "--replicas", "0"])


def test_bench_lab_reports_rates_and_cpu() -> None:
    result = asyncio.run(bench_lab(1.5, replicas=2, slots=4, warmup_s=0.5, max_tokens=64))
    assert result["configured_tokens_per_s"] > 0 and result["cpu_cores"] >= 0
    assert 0.8 < result["ratio"] < 1.2
    text = format_result(result)
    assert "configured token rate" in text and "achieved token rate" in text and "CPU" in text


# -- `overseer lab fault` ---------------------------------------------------------------------------------------


def _fault(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from overseer_dagster.cli import main as overseer

    code = overseer(["lab", "fault", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_lab_fault_kills_a_replica_and_takes_the_gateway_down_in_a_running_lab(
        capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from overseer_dagster.lab.runtime import BackgroundLab, fast_lab_config

    with BackgroundLab(fast_lab_config(2, slots=2)) as lab:
        gateway = lab.gateway_url
        code, out, err = _fault(capsys, "replica-01", '{"kind": "kill", "duration_s": 0.5}', "--gateway", gateway)
        assert code == 0 and err == ""
        printed = json.loads(out)
        assert printed["applied"] == {"kind": "kill", "duration_s": 0.5} and printed["state"]["killed"] is True

        code, out, err = _fault(capsys, "gateway", '{"kind": "outage", "duration_s": 1.0}', "--gateway", gateway)
        assert code == 0 and json.loads(out)["applied"] == {"kind": "outage", "duration_s": 1.0}
        deadline = time.monotonic() + 2
        while not lab.gateway_down and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(httpx.ConnectError):
            httpx.get(gateway + "/fleet/state", timeout=2)
        # While the gateway is down the lab cannot be reached: said so, exit 1.
        code, out, err = _fault(capsys, "replica-00", '{"kind": "slow", "factor": 2}', "--gateway", gateway)
        assert code == 1 and out == "" and "did not answer" in err and "outage" in err

        deadline = time.monotonic() + 5
        while lab.gateway_down and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(gateway + "/fleet/state", timeout=2).status_code == 200
        assert not lab.replicas["replica-01"].killed  # its own duration ran out too

        # Refused by the lab (an unknown replica): named, exit 2.
        code, out, err = _fault(capsys, "replica-09", '{"kind": "kill"}', "--gateway", gateway)
        assert code == 2 and out == "" and "'replica-09' is not a replica of this lab" in err


@pytest.mark.parametrize("target, fault, message", [
    ("replica-01", '{"kind": "kill", "duration_s": 90', "lab fault: replica-01: not JSON: "),
    ("replica-01", '{"kind": "explode"}',
     "lab fault: replica-01: kind: 'explode' is not one of kill, hang, slow, error_burst, flap, engine_dead, recover"),
    ("gateway", '{"kind": "outage"}', "lab fault: gateway: duration_s: required"),
    ("gateway", '{"kind": "kill", "duration_s": 30}', "lab fault: gateway: kind: 'kill' is a replica fault"),
])
def test_lab_fault_refuses_bad_json_and_unknown_kinds_before_sending_anything(
        capsys: pytest.CaptureFixture[str], target: str, fault: str, message: str) -> None:
    # A port nothing listens on: a fault that got this far would fail with exit 1, not 2.
    code, out, err = _fault(capsys, target, fault, "--gateway", "http://127.0.0.1:9")
    assert code == 2 and out == ""
    assert err.startswith(message), err
