"""Dagster's GraphQL API, the few calls an operator's tooling (and our end-to-end tests) make.

Everything goes through `POST {webserver}/graphql`, as the UI's own requests do: turn a schedule
on, read a sensor's state, launch a job with a run config, list runs by job and tag, read an
asset's materializations. Errors come back as `DagsterAPIError` carrying the server's message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

LOCATION = "overseer_dagster"
REPOSITORY = "__repository__"  # the name Dagster gives the repository of a `Definitions`
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")


class DagsterAPIError(RuntimeError):
    pass


class DagsterAPI:
    def __init__(self, webserver_url: str, *, location: str = LOCATION, repository: str = REPOSITORY,
                 timeout_s: float = 30.0) -> None:
        self.url = f"{webserver_url}/graphql"
        self.location = location
        self.repository = repository
        self._client = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def query(self, document: str, **variables: Any) -> dict[str, Any]:  # noqa: ANN401
        response = self._client.post(self.url, json={"query": document, "variables": variables})
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise DagsterAPIError("; ".join(e.get("message", str(e)) for e in body["errors"]))
        return body["data"]

    # --- selectors ---

    def _repo(self) -> dict[str, str]:
        return {"repositoryLocationName": self.location, "repositoryName": self.repository}

    @staticmethod
    def _ok(result: dict[str, Any], typename: str) -> dict[str, Any]:
        if result["__typename"] != typename:
            detail = result.get("message") or result.get("errors") or ""
            raise DagsterAPIError(f"{result['__typename']}: {detail}")
        return result

    # --- schedules and sensors ---

    def start_schedule(self, name: str) -> str:
        """Turn a schedule on (the UI's toggle); its status afterwards."""
        data = self.query("""
            mutation($selector: ScheduleSelector!) {
              startSchedule(scheduleSelector: $selector) {
                __typename
                ... on ScheduleStateResult { scheduleState { status } }
                ... on PythonError { message }
                ... on UnauthorizedError { message }
                ... on ScheduleNotFoundError { message }
              }
            }""", selector={**self._repo(), "scheduleName": name})
        return self._ok(data["startSchedule"], "ScheduleStateResult")["scheduleState"]["status"]

    def schedule_status(self, name: str) -> str:
        data = self.query("""
            query($selector: ScheduleSelector!) {
              scheduleOrError(scheduleSelector: $selector) {
                __typename
                ... on Schedule { scheduleState { status } }
                ... on PythonError { message }
                ... on ScheduleNotFoundError { message }
              }
            }""", selector={**self._repo(), "scheduleName": name})
        return self._ok(data["scheduleOrError"], "Schedule")["scheduleState"]["status"]

    def sensor(self, name: str, ticks: int = 10) -> dict[str, Any]:
        """{"status": RUNNING|STOPPED, "ticks": [{"status", "timestamp", "skipReason", "runKeys"}, ...]}."""
        data = self.query("""
            query($selector: SensorSelector!, $ticks: Int) {
              sensorOrError(sensorSelector: $selector) {
                __typename
                ... on Sensor { sensorState { status ticks(limit: $ticks) { status timestamp skipReason runKeys } } }
                ... on PythonError { message }
                ... on SensorNotFoundError { message }
                ... on UnauthorizedError { message }
              }
            }""", selector={**self._repo(), "sensorName": name}, ticks=ticks)
        return self._ok(data["sensorOrError"], "Sensor")["sensorState"]

    # --- jobs and runs ---

    def job_names(self) -> set[str]:
        data = self.query("""
            query($selector: RepositorySelector!) {
              repositoryOrError(repositorySelector: $selector) {
                __typename
                ... on Repository { jobs { name } }
                ... on PythonError { message }
                ... on RepositoryNotFoundError { message }
              }
            }""", selector=self._repo())
        return {j["name"] for j in self._ok(data["repositoryOrError"], "Repository")["jobs"]}

    def op_config_fields(self, job: str) -> dict[str, list[str]]:
        """Each op of `job` that takes config: the names of its config fields."""
        data = self.query("""
            query($selector: PipelineSelector!) {
              pipelineOrError(params: $selector) {
                __typename
                ... on Pipeline {
                  solidHandles { handleID solid { definition { ... on SolidDefinition {
                    configField { configType { ... on CompositeConfigType { fields { name } } } } } } } }
                }
                ... on PipelineNotFoundError { message }
                ... on PythonError { message }
              }
            }""", selector={**self._repo(), "pipelineName": job})
        out: dict[str, list[str]] = {}
        for handle in self._ok(data["pipelineOrError"], "Pipeline")["solidHandles"]:
            field = handle["solid"]["definition"].get("configField")
            if field and field["configType"].get("fields"):
                out[handle["handleID"]] = [f["name"] for f in field["configType"]["fields"]]
        return out

    def launch_run(self, job: str, run_config: Mapping[str, Any] | None = None,
                   tags: Mapping[str, str] | None = None) -> str:
        """Launch `job` (queued like any run); its run id."""
        data = self.query("""
            mutation($params: ExecutionParams!) {
              launchRun(executionParams: $params) {
                __typename
                ... on LaunchRunSuccess { run { runId } }
                ... on RunConfigValidationInvalid { errors { message } }
                ... on PipelineNotFoundError { message }
                ... on RunConflict { message }
                ... on PythonError { message }
                ... on UnauthorizedError { message }
                ... on InvalidSubsetError { message }
              }
            }""", params={
                "selector": {**self._repo(), "jobName": job},
                "runConfigData": dict(run_config or {}),
                "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
            })
        return self._ok(data["launchRun"], "LaunchRunSuccess")["run"]["runId"]

    def runs(self, job: str | None = None, *, tags: Mapping[str, str] | None = None,
             statuses: Sequence[str] | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Runs, newest first: {"runId", "jobName", "status", "tags": {key: value}}."""
        run_filter: dict[str, Any] = {}
        if job:
            run_filter["pipelineName"] = job
        if tags:
            run_filter["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        if statuses:
            run_filter["statuses"] = list(statuses)
        data = self.query("""
            query($filter: RunsFilter, $limit: Int) {
              runsOrError(filter: $filter, limit: $limit) {
                __typename
                ... on Runs { results { runId jobName status tags { key value } } }
                ... on InvalidPipelineRunsFilterError { message }
                ... on PythonError { message }
              }
            }""", filter=run_filter, limit=limit)
        results = self._ok(data["runsOrError"], "Runs")["results"]
        return [{**r, "tags": {t["key"]: t["value"] for t in r["tags"]}} for r in results]

    def run_status(self, run_id: str) -> str:
        data = self.query("""
            query($runId: ID!) {
              runOrError(runId: $runId) {
                __typename
                ... on Run { status }
                ... on RunNotFoundError { message }
                ... on PythonError { message }
              }
            }""", runId=run_id)
        return self._ok(data["runOrError"], "Run")["status"]

    # --- assets ---

    def materializations(self, asset: str, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first: {"runId", "timestamp", "metadata": {label: value}} (numbers, text, JSON as text)."""
        data = self.query("""
            query($key: AssetKeyInput!, $limit: Int) {
              assetOrError(assetKey: $key) {
                __typename
                ... on Asset { assetMaterializations(limit: $limit) {
                  runId timestamp
                  metadataEntries {
                    label
                    ... on IntMetadataEntry { intValue }
                    ... on FloatMetadataEntry { floatValue }
                    ... on TextMetadataEntry { text }
                    ... on JsonMetadataEntry { jsonString }
                  }
                } }
                ... on AssetNotFoundError { message }
              }
            }""", key={"path": [asset]}, limit=limit)
        out = []
        for m in self._ok(data["assetOrError"], "Asset")["assetMaterializations"]:
            metadata = {e["label"]: next((v for k, v in e.items() if k != "label"), None)
                        for e in m["metadataEntries"]}
            out.append({"runId": m["runId"], "timestamp": m["timestamp"], "metadata": metadata})
        return out
