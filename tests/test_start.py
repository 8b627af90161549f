"""A warm ``rollwatch serve`` answers /healthz fast (issue 21: 0.7 s from process start).

It listens having imported only the command line, the configuration, the HTTP server and
/healthz; what the other routes, the runs and the scoring need is imported and opened
once it answers (``rollwatch.daemon.LATER``), and requests for them wait until then
(``rollwatch.web.app.Starting``). ``bench/bench_start.py`` measures the time.
"""

from __future__ import annotations

import importlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from rollwatch.daemon import LATER
from rollwatch.metrics import Metrics
from rollwatch.web.app import Starting, build_app
from rollwatch.web.server import HTTPServer

HEAVY = (
    "jinja2",
    "httpx",
    "cryptography",
    "prometheus_client",
    "rollwatch.events",
    "rollwatch.store",
    "rollwatch.projections",
    "rollwatch.readmodels",
    "rollwatch.scoring",
    "rollwatch.providers",
    "rollwatch.runs",
    "rollwatch.scheduler",
    "rollwatch.integrity",
    "rollwatch.publication",
    "rollwatch.report",
    "rollwatch.web.console",
    "rollwatch.web.render",
)
"""What the first /healthz does not need, and what takes the time to import."""


def test_serve_listens_with_only_what_healthz_needs() -> None:
    """Everything ``serve`` imports before it listens (the command, the daemon module, the
    HTTP server and the app with /healthz) leaves the heavy modules out: an import of one
    of them at the top of any of those modules fails this."""
    code = f"""
import sys
import rollwatch.cli, rollwatch.cli.daemon, rollwatch.daemon, rollwatch.web.app, rollwatch.web.server
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_what_serve_imports_later_is_there() -> None:
    """``LATER`` names modules (a typo would only show when serve starts)."""
    for name in LATER:
        importlib.import_module(name)
    assert {"rollwatch.integrity.service", "rollwatch.scoring", "rollwatch.web.console"} <= set(LATER)


@pytest.mark.anyio
async def test_healthz_answers_at_once_and_other_requests_wait_for_the_whole_app() -> None:
    """Before the whole app is handed over, /healthz answers from the early one and a request
    for any other route waits (it is not refused); once handed over, both go to the whole app."""

    async def other(_: Request) -> Response:
        return PlainTextResponse("whole")

    gate = Starting(build_app(Metrics(), status=lambda: {"projections": {"state": "building"}}))
    server = HTTPServer(gate, "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as c:
                early = await c.get("/healthz")
                assert early.status_code == 200
                assert early.json() == {"status": "ok", "projections": {"state": "building"}}

                answered: list[httpx.Response] = []
                asked = anyio.Event()

                async def ask() -> None:
                    asked.set()
                    answered.append(await c.get("/other"))

                async with anyio.create_task_group() as waiting:
                    waiting.start_soon(ask)
                    await asked.wait()
                    # /healthz still answers while the other request waits for the whole app.
                    for _ in range(3):
                        assert (await c.get("/healthz")).status_code == 200
                    assert answered == []
                    gate.open(build_app(Metrics(), [Route("/other", other)], status=lambda: {"whole": True}))
                assert answered[0].status_code == 200
                assert answered[0].text == "whole"
                assert (await c.get("/healthz")).json() == {"status": "ok", "whole": True}
        finally:
            server.stop()


def test_serve_answers_every_route_once_healthz_answers(tmp_path: Path) -> None:
    """A real ``serve``: right after its first /healthz, a request for another route is
    answered (it may wait for the rest to open, it is never refused); SIGTERM exits 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
    )
    err = (tmp_path / "serve.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, (tmp_path / "serve.err").read_text()
                assert time.monotonic() < deadline, "no /healthz within 60 s"
                try:
                    first = c.get("/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.01)
            assert first.status_code == 200, first.text
            assert first.json()["projections"]["state"] in ("building", "current")
            metrics = c.get("/metrics")
            assert metrics.status_code == 200, metrics.text
            assert "rollwatch_runs_started" in metrics.text
            assert c.get("/public/key").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        err.close()
    assert "Traceback" not in (tmp_path / "serve.err").read_text()
