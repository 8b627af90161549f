"""SPEC conformance, session 26: checks an outside checker makes through the real command
and routes, each of which failed before its fix.

* SPEC §7 ``rollwatch verify``: "on a store that does not exist: exit 2, nothing created".
  On PostgreSQL, ``verify`` (and every command that only reads the log) made the log's
  tables in a database that held none and answered ``ok: 0 events``, exit 0; on a database
  that does not exist it was exit 1.
* SPEC §2 ``rollwatch audit``: "exit 1 naming any failure". On an honest daemon, every
  result released after the latest signed checkpoint (up to ``checkpoint_interval``, 10
  minutes by default, after each release) failed the check of ``/public/results.jsonl``
  ("not under its checkpoint yet"), exit 1, though nothing was wrong.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import httpx
import pytest

from tests.helpers import rollwatch, write_config
from tests.integrity.served import _poll
from tests.pg import ADMIN_URL, scratch_database
from tests.test_daemon import free_port

pytestmark = pytest.mark.anyio

READERS = (["verify"], ["events", "tail"], ["report", "--format", "json"], ["rebuild"])


def _pg_config(tmp_path: Path, url: str) -> Path:
    cfg = write_config(tmp_path)
    text = cfg.read_text().splitlines(keepends=True)
    text[1] = f'url = "{url}"\nprojections = "{tmp_path / "state" / "projections.db"}"\n'
    cfg.write_text("".join(text))
    return cfg


async def _tables(url: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        return sorted(r["tablename"] for r in rows)
    finally:
        await conn.close()


class TestReadersOnAPostgresqlDatabaseWithoutALog:
    async def test_verify_and_every_reader_exit_2_and_create_nothing(self, tmp_path: Path) -> None:
        async with scratch_database() as url:
            cfg = _pg_config(tmp_path, url)
            for args in READERS:
                r = await anyio.to_thread.run_sync(lambda a=args: rollwatch("--config", str(cfg), *a))
                assert r.returncode == 2, (args, r.returncode, r.stdout, r.stderr)
                assert "there is no event log" in r.stderr, (args, r.stderr)
                assert "Traceback" not in r.stderr
            assert await _tables(url) == []
            assert not (tmp_path / "state").exists()

    async def test_verify_on_a_database_that_does_not_exist_is_exit_2(self, tmp_path: Path) -> None:
        async with scratch_database():  # skips when the server is unreachable
            base, _, _ = ADMIN_URL.rpartition("/")
            cfg = _pg_config(tmp_path, f"{base}/rw_missing_{secrets.token_hex(6)}")
            r = await anyio.to_thread.run_sync(lambda: rollwatch("--config", str(cfg), "verify"))
            assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
            assert "does not exist" in r.stderr

    async def test_serve_still_makes_the_log_and_verify_then_reads_it(self, tmp_path: Path) -> None:
        async with scratch_database() as url:
            cfg = _pg_config(tmp_path, url)
            made = await anyio.to_thread.run_sync(
                lambda: rollwatch("--config", str(cfg), "subscribers", "add", "alice")
            )
            assert made.returncode == 0, made.stderr
            r = await anyio.to_thread.run_sync(lambda: rollwatch("--config", str(cfg), "verify"))
            assert r.returncode == 0, r.stderr
            assert r.stdout.startswith("ok: 1 events"), r.stdout


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real ``rollwatch serve`` on the log of one run, whose next checkpoint (after the one
    it signs at start) is a day away; embargo one second."""
    port = free_port()
    cfg = write_config(
        tmp_path,
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        '[publication]\nembargo = "1s"\nrelease_check = "200ms"\n'
        '[integrity]\ncheckpoint_interval = "1d"\ncheckpoint_every = 1000000\n'
        '[[schedules]]\nname = "ref"\nprovider = "reference"\nmodels = ["reference"]\n'
        'problem_set = "favorites"\nrollouts = 1\nevery = "1d"\n',
    )
    url = f"http://127.0.0.1:{port}"
    # A run before the daemon starts: its first checkpoint covers the run, the releases come after.
    run = rollwatch("--config", str(cfg), "run", "ref", timeout=180)
    assert run.returncode == 0, run.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def up() -> bool:
            try:
                return httpx.get(url + "/public/checkpoint", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        _poll(up, 60, "the daemon's first checkpoint")
        yield cfg, url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class TestAuditOfResultsReleasedBetweenCheckpoints:
    def test_an_honest_log_passes_audit_before_its_next_checkpoint(self, daemon: tuple[Path, str]) -> None:
        cfg, url = daemon

        def pending_lines() -> list[dict[str, object]]:
            r = httpx.get(url + "/public/results.jsonl", timeout=10)
            lines = [json.loads(x) for x in r.text.splitlines() if x.strip()] if r.status_code == 200 else []
            return [x for x in lines if x["proof"]["pending"]]  # type: ignore[index]

        released = _poll(pending_lines, 120, "results released after the checkpoint")
        assert isinstance(released, list)
        r = rollwatch("--config", str(cfg), "audit", "--url", url, "--keep", str(cfg.parent / "keep"))
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "await the next checkpoint: not checked yet" in r.stdout, r.stdout
        assert (cfg.parent / "keep").is_file()

    def test_a_line_left_pending_though_the_checkpoint_covers_it_fails(
        self, daemon: tuple[Path, str]
    ) -> None:
        """A service may not skip the check by calling proven events pending: a line whose
        pending events the signed checkpoint covers fails (a loopback proxy rewrites them)."""
        cfg, url = daemon
        _poll(lambda: httpx.get(url + "/public/results.jsonl", timeout=10).text.strip(), 120, "a release")

        class Rewriting(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                r = httpx.get(url + self.path, timeout=30)
                body = r.content
                if self.path.startswith("/public/results.jsonl"):
                    lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
                    for x in lines:
                        x["proof"]["pending"] = [1]
                    body = "".join(json.dumps(x) + "\n" for x in lines).encode()
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        proxy = ThreadingHTTPServer(("127.0.0.1", 0), Rewriting)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            r = rollwatch("--config", str(cfg), "audit", "--url", f"http://127.0.0.1:{proxy.server_port}")
        finally:
            proxy.shutdown()
            proxy.server_close()
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "leaves events [1] unproven, but the signed checkpoint" in r.stderr + r.stdout
