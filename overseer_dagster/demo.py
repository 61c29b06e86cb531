"""`make demo`: the overseer running against the lab, as an operator would run it.

Starts, each as its own process on 127.0.0.1 with default signal handling: the lab (replicas,
gateway and external traffic with a spike), the stress harness, and Dagster (a gRPC code server,
the daemon and the webserver) with the overseer wired to the lab gateway and the tick schedule
turned on. Ctrl-C stops everything it started, each by its own PID.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from overseer_dagster.deploy import Deployment, DeployError, Service, console_script, spawn
from overseer_dagster.store import connect, overseer_home

READY = "lab ready "
# External traffic: a low base with a spike a few minutes in, so stress visibly yields and returns.
TRAFFIC = "step_spike:base=1.5,peak=12,at_s=180,hold_s=60"


def _wait_for_ready_line(lab: Service, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not lab.alive():
            raise DeployError(f"the lab exited before it was ready:\n{lab.log_tail()}")
        for line in lab.log_path.read_text(errors="replace").splitlines():
            if line.startswith(READY):
                return json.loads(line[len(READY):])
        time.sleep(0.2)
    raise DeployError(f"the lab was not ready after {timeout_s:.0f} s:\n{lab.log_tail()}")


def main(args: argparse.Namespace) -> int:
    root = overseer_home() / "demo"
    logs = root / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    connect()  # migrate the store once, before several processes open it
    overseer = console_script("overseer")
    services: list[Service] = []
    dagster = Deployment(root, env={})
    try:
        lab = spawn("lab", [overseer, "lab", "up", "--replicas", "4", "--slots", "8", "--singleflight",
                            "--traffic", TRAFFIC], env=dagster.process_env, log_dir=logs, cwd=root)
        services.append(lab)
        ready = _wait_for_ready_line(lab)
        gateway = ready["gateway"]
        ready_file = root / "lab-ready.json"
        ready_file.write_text(json.dumps(ready))
        services.append(spawn("stress", [overseer, "stress", "--replicas", str(ready_file)],
                              env=dagster.process_env, log_dir=logs, cwd=root))

        dagster.process_env.update({
            "OVERSEER_FLEET_SOURCE": f"snapshot:{gateway}/fleet/state",
            "OVERSEER_ROUTER_URL": gateway,
        })
        dagster.start()
        dagster.start_webserver(port=args.port)
        dagster.start_schedule("overseer_tick_schedule")
        print(
            f"\noverseer demo is running\n"
            f"  Dagster UI        {dagster.webserver_url}  (overseer_tick_schedule is ON: it is the enable flag)\n"
            f"  lab gateway       {gateway}/fleet/state\n"
            f"  store             {connect().url.render_as_string(hide_password=True)}\n"
            f"  logs              {logs}\n"
            f"  try               overseer audit tail | overseer gates | overseer health\n"
            f"Ctrl-C stops everything the demo started.\n",
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(s.alive() for s in services + dagster.services):
            time.sleep(1)
        dead = [s.name for s in services + dagster.services if not s.alive()]
        print(f"stopping: {', '.join(dead)} exited (see {logs})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the demo…", flush=True)
        return 0
    except DeployError as exc:
        print(f"overseer demo: {exc}", file=sys.stderr)
        return 1
    finally:
        dagster.stop()
        for service in reversed(services):
            service.stop()
