"""Dagster for real, on this machine: a gRPC code server, the daemon and the webserver as subprocesses.

Used by `overseer demo`, the end-to-end tests and `overseer bench dispatch`:

    with Deployment(root, env=overseer_env) as dagster:      # code server + daemon, ready
        dagster.start_schedule("overseer_tick_schedule")     # as the UI's toggle does
        dagster.start_webserver()                            # optional

Each process starts with default SIGINT/SIGTERM handling in its own session (a terminal's Ctrl-C
does not reach it; we stop it deliberately) and is stopped by its own PID: SIGTERM, then SIGKILL
after a timeout. Everything listens on 127.0.0.1 on free ports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
LOCATION = "overseer_dagster"
MODULE = "overseer_dagster.definitions"
# The daemons the autonomous loop needs (the sensor, the tick schedule, the run queue).
REQUIRED_DAEMONS = ("SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR")
# Launching a run waits for its worker to load the code (seconds); launched one by one, a burst of
# dispatch runs would queue behind each other. Threads launch them side by side.
INSTANCE_YAML = """\
run_queue:
  dequeue_use_threads: true
  dequeue_num_workers: 8
  dequeue_interval_seconds: 2
"""


# Dagster's storage on PostgreSQL (dagster-postgres), as in dagster.postgres.yaml at the project root.
# Connection values come from the environment; a password from libpq's PGPASSWORD or ~/.pgpass, never a file.
POSTGRES_STORAGE_YAML = """\
storage:
  postgres:
    postgres_db:
      username: {env: DAGSTER_PG_USERNAME}
      hostname: {env: DAGSTER_PG_HOST}
      db_name: {env: DAGSTER_PG_DB}
      port: {env: DAGSTER_PG_PORT}
      # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; dagster-postgres brings psycopg2.
      scheme: postgresql+psycopg2
"""


def postgres_storage_env(url: str) -> dict[str, str]:
    """The variables POSTGRES_STORAGE_YAML reads, from a `postgresql://user[:password]@host[:port]/db` URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not (parsed.username and parsed.host and parsed.database):
        raise ValueError("Dagster's storage URL must be postgresql://USER@HOST[:PORT]/DATABASE")
    if parsed.query:
        raise ValueError("Dagster's storage URL takes no query parameters (dagster.postgres.yaml has none)")
    env = {"DAGSTER_PG_USERNAME": parsed.username, "DAGSTER_PG_HOST": parsed.host,
           "DAGSTER_PG_DB": parsed.database, "DAGSTER_PG_PORT": str(parsed.port or 5432)}
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    return env


def _resolve_env(config: object, env: Mapping[str, str], key: str = "") -> object:
    """`config` with every `{env: NAME}` replaced by env[NAME], as Dagster resolves it in a process with `env`
    (a `port` is an IntSource: a number)."""
    if isinstance(config, dict):
        if set(config) == {"env"}:
            value = env[config["env"]]
            return int(value) if key == "port" else value
        return {k: _resolve_env(v, env, k) for k, v in config.items()}
    return config


class DeployError(RuntimeError):
    """A process did not start or become ready; the message names it and its log file."""


# What the gRPC server and uvicorn print when their port was taken between `free_port()` and their bind.
PORT_TAKEN = ("Failed to bind to address", "address already in use")
PORT_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _default_signals() -> None:
    # Popen children inherit ignored signals; reset so SIGTERM and SIGINT act as usual.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def console_script(name: str) -> str:
    """A console script of this environment (beside the running interpreter), else from PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name




@dataclass
class Service:
    """One subprocess we started, with its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM this process (by its PID), SIGKILL it if still alive after `timeout_s`; its exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return self.process.returncode

    def lost_its_port(self) -> bool:
        """Exited because another process took its port first (it was free when picked)."""
        return not self.alive() and any(m in self.log_tail(50) for m in PORT_TAKEN)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(name: str, argv: Sequence[str], *, env: Mapping[str, str], log_dir: Path,
          cwd: Path | None = None) -> Service:
    """Start `argv` with default signal handling in a new session; stdout and stderr go to `log_dir/name.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_default_signals, start_new_session=True,  # noqa: PLW1509 - resets signals only
        )
    return Service(name, process, log_path)


def wait_until(ready: Callable[[], bool], *, service: Service, what: str, timeout_s: float,
               interval_s: float = 0.25) -> None:
    """Poll `ready` until it holds; fail early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            raise DeployError(f"{service.name} exited ({service.process.returncode}) before {what}; "
                              f"log {service.log_path}:\n{service.log_tail()}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            pass
        time.sleep(interval_s)
    raise DeployError(f"{service.name}: not {what} after {timeout_s:.0f} s; log {service.log_path}:\n{service.log_tail()}")


def write_instance(home: Path, *, grpc_port: int, location: str = LOCATION,
                   instance_yaml: str = "") -> Path:
    """A DAGSTER_HOME with dagster.yaml (storage: SQLite under it, unless `instance_yaml` says otherwise) and
    workspace.yaml (the gRPC server)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + instance_yaml)
    workspace = home / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - grpc_server:\n"
        f"      host: {HOST}\n"
        f"      port: {grpc_port}\n"
        f"      location_name: {location}\n"
    )
    return workspace


@dataclass
class Deployment:
    """A code server and the daemon (and, on request, the webserver) over one DAGSTER_HOME under `root`.

    Dagster's storage is SQLite under that home, or, given `dagster_database_url`
    (`postgresql://USER@HOST:PORT/DB`, an existing database), PostgreSQL through POSTGRES_STORAGE_YAML
    with its variables in the processes' environment.
    """

    root: Path
    env: Mapping[str, str] = field(default_factory=dict)
    module: str = MODULE
    location: str = LOCATION
    instance_yaml: str = INSTANCE_YAML
    dagster_database_url: str | None = None
    ready_timeout_s: float = 120.0
    services: list[Service] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home = self.root / "dagster_home"
        self.logs = self.root / "logs"
        self.grpc_port = free_port()
        storage_env: dict[str, str] = {}
        self._instance_yaml = self.instance_yaml
        if self.dagster_database_url:
            storage_env = postgres_storage_env(self.dagster_database_url)
            self._instance_yaml += POSTGRES_STORAGE_YAML
        self.workspace = write_instance(self.home, grpc_port=self.grpc_port, location=self.location,
                                        instance_yaml=self._instance_yaml)
        self.process_env = {**os.environ, **self.env, **storage_env, "DAGSTER_HOME": str(self.home)}
        self.webserver_url: str | None = None

    # --- processes ---

    def _on_a_free_port(self, start: Callable[[], Service], repick: Callable[[], None] = lambda: None) -> Service:
        """`start()`, again (after `repick()`) while the process exits because the port picked free for it was
        taken before it bound it; at most PORT_ATTEMPTS tries."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return start()
            except DeployError:
                if attempt == PORT_ATTEMPTS or not self.services[-1].lost_its_port():
                    raise
                self.services.pop()  # exited, nothing to stop
                repick()
        raise AssertionError("unreachable")

    def start_code_server(self) -> Service:
        def repick() -> None:
            self.grpc_port = free_port()
            self.workspace = write_instance(self.home, grpc_port=self.grpc_port, location=self.location,
                                            instance_yaml=self._instance_yaml)

        return self._on_a_free_port(self._start_code_server, repick)

    def _start_code_server(self) -> Service:
        from dagster._grpc.client import DagsterGrpcClient  # the daemon's own client

        service = self._spawn("code-server", [
            console_script("dagster"), "api", "grpc", "-m", self.module, "-h", HOST, "-p", str(self.grpc_port),
            "--location-name", self.location,
        ])
        client = DagsterGrpcClient(port=self.grpc_port, host=HOST)
        wait_until(lambda: client.ping("ready")["echo"] == "ready", service=service, what="serving gRPC",
                   timeout_s=self.ready_timeout_s)
        return service

    def start_daemon(self) -> Service:
        started = time.time()
        service = self._spawn("daemon", [console_script("dagster-daemon"), "run", "-w", str(self.workspace)])
        with self.instance() as instance:
            def beating() -> bool:
                beats = instance.get_daemon_heartbeats()
                return all(d in beats and beats[d].timestamp >= started for d in REQUIRED_DAEMONS)

            wait_until(beating, service=service, what="heartbeating", timeout_s=self.ready_timeout_s)
        return service

    def start_webserver(self, port: int | None = None) -> Service:
        """On `port` (a port the caller chose fails as it is), else on a free one."""
        if port:
            return self._start_webserver(port)
        return self._on_a_free_port(lambda: self._start_webserver(free_port()))

    def _start_webserver(self, port: int) -> Service:
        service = self._spawn("webserver", [
            console_script("dagster-webserver"), "-h", HOST, "-p", str(port), "-w", str(self.workspace),
        ])
        url = f"http://{HOST}:{port}"
        wait_until(lambda: urllib.request.urlopen(f"{url}/server_info", timeout=2).status == 200,  # noqa: S310
                   service=service, what="answering HTTP", timeout_s=self.ready_timeout_s)
        self.webserver_url = url
        return service

    def _spawn(self, name: str, argv: Sequence[str]) -> Service:
        service = spawn(name, argv, env=self.process_env, log_dir=self.logs, cwd=self.root)
        self.services.append(service)
        return service

    # --- instance operations ---

    def instance(self):  # noqa: ANN201 - a DagsterInstance (a context manager)
        """The deployment's instance, as its processes see it (their `env:` values, not this process's)."""
        import dagster as dg
        import yaml
        from dagster._core.instance.ref import InstanceRef

        config = yaml.safe_load((self.home / "dagster.yaml").read_text()) or {}
        overrides = {"storage": _resolve_env(config["storage"], self.process_env)} if "storage" in config else None
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home), overrides=overrides))

    def start_schedule(self, name: str) -> None:
        """Turn a schedule on, exactly as the UI's toggle does (`dagster schedule start`)."""
        result = subprocess.run(
            [console_script("dagster"), "schedule", "start", name, "-w", str(self.workspace), "-l", self.location],
            env=self.process_env, cwd=self.root, capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise DeployError(f"dagster schedule start {name} failed: {result.stderr.strip()[-2000:]}")

    # --- lifetime ---

    def start(self) -> Deployment:
        try:
            self.start_code_server()
            self.start_daemon()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop every process we started, newest first, each by its own PID."""
        while self.services:
            self.services.pop().stop(timeout_s)

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
