"""Dagster's storage for a deployment: SQLite by default, PostgreSQL through dagster.postgres.yaml.

The PostgreSQL cases load an instance from the shipped file (and from a Deployment) on a fresh
database and run a job on it: what the webserver, daemon and code server would do at start.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.instance.ref import InstanceRef
from postgres_fixtures import base_url_or_skip, fresh_database

from overseer_dagster import deploy
from overseer_dagster.deploy import POSTGRES_STORAGE_YAML, Deployment, postgres_storage_env

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_postgres_instance_is_the_local_one_on_postgres_storage() -> None:
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    production = yaml.safe_load((ROOT / "dagster.postgres.yaml").read_text())
    assert production["storage"] == yaml.safe_load(POSTGRES_STORAGE_YAML)["storage"]
    assert {k: v for k, v in production.items() if k in local and k != "run_queue"} == {
        k: v for k, v in local.items() if k != "run_queue"}
    assert production["run_queue"]["max_concurrent_runs"] == local["run_queue"]["max_concurrent_runs"]


def test_storage_variables_come_from_a_postgres_url() -> None:
    assert postgres_storage_env("postgresql://dagster@db.internal/dagster") == {
        "DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_HOST": "db.internal", "DAGSTER_PG_DB": "dagster",
        "DAGSTER_PG_PORT": "5432"}
    # The password goes to libpq's own variable, never into a file.
    assert postgres_storage_env("postgresql://u:s3cret@h:6543/d")["PGPASSWORD"] == "s3cret"
    for bad in ("sqlite:///x.db", "postgresql://h/d", "postgresql://u@h/d?sslmode=require"):
        with pytest.raises(ValueError, match="Dagster's storage URL"):
            postgres_storage_env(bad)


def test_a_deployment_defaults_to_sqlite_under_its_home(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    assert "storage" not in yaml.safe_load((deployment.home / "dagster.yaml").read_text())
    with deployment.instance() as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"


@pytest.mark.daemon
def test_a_port_taken_between_its_pick_and_the_bind_is_replaced(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process binds the port picked for the code server and the webserver before they do: each
    starts on a fresh port instead of failing the deployment."""
    with socket.socket() as taken:
        taken.bind((deploy.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks, real = iter([port, port]), deploy.free_port
        monkeypatch.setattr(deploy, "free_port", lambda: next(picks, None) or real())
        dagster = Deployment(tmp_path, env={"OVERSEER_HOME": str(tmp_path / "home"), "OVERSEER_FLEET_SOURCE": "sample",
                                            "OVERSEER_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"})
        try:
            assert dagster.grpc_port == port
            code_server = dagster.start_code_server()
            webserver = dagster.start_webserver()
            assert dagster.grpc_port != port and f"port: {dagster.grpc_port}" in dagster.workspace.read_text()
            assert dagster.webserver_url and f":{port}" not in dagster.webserver_url
            assert dagster.services == [code_server, webserver] and code_server.alive() and webserver.alive()
        finally:
            dagster.stop()


@dg.op
def _hello() -> int:
    return 1


@dg.job
def _hello_job() -> None:
    _hello()


def _run_a_job_on(instance: dg.DagsterInstance) -> None:
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert _hello_job.execute_in_process(instance=instance).success
    assert [r.status for r in instance.get_runs()] == [dg.DagsterRunStatus.SUCCESS]


@pytest.mark.postgres
def test_the_shipped_postgres_instance_runs_a_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_database(base_url_or_skip(), "dagster_test") as url:
        for name, value in postgres_storage_env(url).items():
            monkeypatch.setenv(name, value)
        shutil.copy(ROOT / "dagster.postgres.yaml", tmp_path / "dagster.yaml")
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as instance:
            _run_a_job_on(instance)


@pytest.mark.postgres
def test_a_deployment_on_postgres_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DAGSTER_PG_USERNAME", "DAGSTER_PG_HOST", "DAGSTER_PG_DB", "DAGSTER_PG_PORT"):
        monkeypatch.delenv(name, raising=False)  # the deployment's processes get them; this one need not
    with fresh_database(base_url_or_skip(), "dagster_test") as url:
        deployment = Deployment(tmp_path, dagster_database_url=url)
        assert yaml.safe_load((deployment.home / "dagster.yaml").read_text())["storage"] == yaml.safe_load(
            POSTGRES_STORAGE_YAML)["storage"]
        assert deployment.process_env["DAGSTER_PG_DB"] == url.rsplit("/", 1)[1]
        with deployment.instance() as instance:
            _run_a_job_on(instance)
