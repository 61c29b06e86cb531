"""The Dagster UI in a real browser: headless Chromium (Debian's package) driven by Playwright.

A code server and `dagster-webserver` (overseer_dagster.deploy); the test opens the tick's asset
graph and the approval job's Launchpad the way an operator would, checks what they show, and saves
screenshots to test-artifacts/ (gitignored). Skipped where Chromium is not installed
(`.ci/run` installs it: `apt-get install chromium`). Playwright never downloads a browser here:
it drives the system's Chromium.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster_api import DagsterAPI

from overseer_dagster.deploy import Deployment
from overseer_dagster.defs.assets import TICK_GROUP

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(300)]

CHROMIUM = Path(os.environ.get("OVERSEER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LOCATION = "overseer_dagster"  # the repository is `__repository__`: UI paths name the location alone
TICK_ASSETS = ("fleet_state", "external_demand", "fleet_throughput", "overseer_decision", "fleet_health")
UI_TIMEOUT_MS = 90_000  # a cold UI on a busy 2-core machine


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (.ci/run does) "
                    "or point OVERSEER_TEST_CHROMIUM at one")
    root = tmp_path_factory.mktemp("browser")
    deployment = Deployment(root, env={"OVERSEER_HOME": str(root / "home"), "OVERSEER_FLEET_SOURCE": "sample",
                                       "OVERSEER_DATABASE_URL": f"sqlite:///{root / 'store.db'}"})
    try:
        deployment.start_code_server()  # no daemon: nothing here runs
        deployment.start_webserver()
        assert deployment.webserver_url
        yield deployment.webserver_url
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def browser(webserver: str) -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is in the dev extra: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, webserver: str):  # noqa: ANN001, ANN201 - playwright types
    context = browser.new_context(base_url=webserver, viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    yield page
    context.close()


def _screenshot(page, name: str) -> Path:  # noqa: ANN001
    # A fresh browser profile gets Dagster's "Join the Dagster community" dialog once; an operator skips it.
    skip = page.get_by_role("dialog").get_by_role("button", name="Skip")
    try:
        skip.click(timeout=5_000)
        skip.wait_for(state="hidden")
    except Exception:  # noqa: BLE001 - no dialog this time
        pass
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_the_asset_graph_shows_the_tick(page) -> None:  # noqa: ANN001
    page.goto(f"/locations/{LOCATION}/asset-groups/{TICK_GROUP}")
    for asset in TICK_ASSETS:
        page.get_by_text(asset, exact=True).first.wait_for(state="visible")
    page.wait_for_load_state("networkidle")
    assert _screenshot(page, "asset-graph-overseer_tick").stat().st_size > 10_000


def test_the_launchpad_of_the_approval_job(page, webserver: str) -> None:  # noqa: ANN001
    api = DagsterAPI(webserver)
    try:
        jobs = api.job_names()
    finally:
        api.close()
    # The operator's job; the dispatch job where the approval gates are not in this code location.
    job = "approve_action" if "approve_action" in jobs else "dispatch_action"
    page.goto(f"/locations/{LOCATION}/jobs/{job}/playground")
    page.get_by_role("button", name="Launch Run").first.wait_for(state="visible")
    page.locator(".CodeMirror, .cm-editor").first.wait_for(state="visible")
    page.wait_for_load_state("networkidle")
    assert _screenshot(page, f"launchpad-{job}").stat().st_size > 10_000
