"""Session 26 (black-box helper): bugs found from outside, against the real command and daemon.

* ``subscribers add --expires`` with a moment whose offset puts it outside the years 1-9999 in
  UTC (``9999-12-31T23:59:59-01:00``, ``0001-01-01T00:30:00+01:00``) was a traceback
  (``OverflowError: date value out of range``), exit 1; now one line, exit 2, nothing added.
* A note (``schedules pause --note``, ``subscribers revoke --note``, or the console's Pause
  form, which a key of scope ``ops`` may use) was printed as it is by ``schedules list`` and
  ``subscribers list``: a line break forged a row of the table, an escape sequence reached
  the operator's terminal. Every cell of those tables now shows such characters escaped.
* ``/v1/feed?after=N`` with N past the log's head (a cursor no page of this log gave: a typo,
  another daemon's log, this log restored from an earlier backup) answered an empty page
  with ``next`` = N, and a long poll waited in silence: the client then skipped every event up
  to N as they came. Now a 400 naming the head.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rollwatch.integrity.checkpoint import NoteSigner
from rollwatch.integrity.witness import Cosigner
from tests.helpers import rollwatch, write_config
from tests.integrity.served import _poll, _stop
from tests.integrity.test_witness import witness_serve
from tests.publication.helpers import add_rollout, add_subscriber, bearer, serving, start_run
from tests.test_daemon import free_port


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n')
    return cfg


SCHEDULE = (
    '[[schedules]]\nname = "ref"\nprovider = "reference"\nmodels = ["reference"]\n'
    'problem_set = "favorites"\nrollouts = 1\nevery = "24h"\n'
)
FORGED = "hi\nref       active  every 60s  forged\x1b]0;owned\x07\x1b[31m"
"""A note with a line break (a forged row) and escape sequences (the terminal's title, red)."""


class TestExpiresAtTheCalendarsEnds:
    @pytest.mark.parametrize("when", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00"])
    def test_a_moment_outside_the_calendar_in_utc_is_one_line_exit_2(self, tmp_path: Path, when: str) -> None:
        cfg = str(_config(tmp_path))
        p = rollwatch("--config", cfg, "subscribers", "add", "bob", "--expires", when)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr
        assert f"--expires {when!r}" in p.stderr
        assert "years 1-9999" in p.stderr
        listed = rollwatch("--config", cfg, "subscribers", "list")
        assert "bob" not in listed.stdout

    def test_the_last_moment_of_the_calendar_still_works(self, tmp_path: Path) -> None:
        cfg = str(_config(tmp_path))
        p = rollwatch("--config", cfg, "subscribers", "add", "bob", "--expires", "9999-12-31T23:59:59Z")
        assert p.returncode == 0, p.stderr
        listed = rollwatch("--config", cfg, "subscribers", "list")
        assert "9999-12-31T23:59:59" in listed.stdout


class TestNotesInTables:
    def test_schedules_list_shows_a_note_on_its_own_row(self, tmp_path: Path) -> None:
        cfg = str(write_config(tmp_path, SCHEDULE))
        # `schedules pause --note` refuses such a note now (tests/test_inputs_s26.py); the
        # console's Pause form (any ops key), or an earlier release, writes it to the log.
        # A note already in the log is still shown on its own row.
        from rollwatch.events import SchedulePaused, schedule_stream
        from rollwatch.store.sqlite import SQLiteEventStore

        async def pause() -> None:
            async with SQLiteEventStore(tmp_path / "events.db") as store:
                await store.append(schedule_stream("ref"), [SchedulePaused(schedule="ref", note=FORGED)])

        anyio.run(pause)
        listed = rollwatch("--config", cfg, "schedules", "list")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert len(lines) == 2, listed.stdout  # the header and the one schedule
        assert "\x1b" not in listed.stdout
        assert "\x07" not in listed.stdout
        assert "hi\\nref" in lines[1]
        assert "\\x1b]0;owned\\x07" in lines[1]
        # --json keeps the note as it was written.
        as_json = rollwatch("--config", cfg, "schedules", "list", "--json")
        assert json.loads(as_json.stdout)[0]["note"] == FORGED

    def test_subscribers_list_shows_a_note_on_its_own_row(self, tmp_path: Path) -> None:
        cfg = str(_config(tmp_path))
        for args in (["add", "alice"], ["add", "bob"], ["revoke", "alice", "--note", FORGED]):
            p = rollwatch("--config", cfg, "subscribers", *args)
            assert p.returncode == 0, p.stderr
        listed = rollwatch("--config", cfg, "subscribers", "list")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert len(lines) == 3, listed.stdout  # the header, alice and bob
        assert "\x1b" not in listed.stdout
        assert lines[1].startswith("alice")
        assert lines[1].endswith("\\x1b[31m")
        assert lines[2].startswith("bob")


class TestFeedCursorPastTheHead:
    @pytest.mark.anyio
    async def test_a_cursor_past_the_head_is_a_400_naming_it(self, tmp_path: Path) -> None:
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "alice", scopes=["feed"])
            await start_run(env.store, "r1")
            await add_rollout(env.store, "r1", passed=True)
            head = await env.store.head()
            for query in (f"after={head + 1}", f"after={head + 50}&wait=0.2", "after=4611686018427387903"):
                r = await env.client.get(f"/v1/feed?{query}", headers=bearer(key))
                assert r.status_code == 400, (query, r.text)
                assert r.json()["error"] == "bad_request"
                assert f"past the log's head ({head})" in r.json()["message"]
            # The head itself is a cursor: an empty page, then a long poll gets what comes.
            r = await env.client.get(f"/v1/feed?after={head}", headers=bearer(key))
            assert r.status_code == 200
            assert r.json() == {"items": [], "next": head}
            async with anyio.create_task_group() as tg:

                async def more() -> None:
                    await anyio.sleep(0.3)
                    await add_rollout(env.store, "r1", passed=False, sample=1)

                tg.start_soon(more)
                r = await env.client.get(f"/v1/feed?after={head}&wait=10", headers=bearer(key))
            assert r.status_code == 200
            page = r.json()
            assert page["items"]
            assert all(item["seq"] > head for item in page["items"])


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _post_huge(port: int, *, chunked: bool, mib: int) -> bytes:
    """A POST /add-checkpoint of ``mib`` MiB; the witness's answer (what it sent before closing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        if chunked:
            s.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n")
            piece = b"100000\r\n" + b"a" * (1 << 20) + b"\r\n"
        else:
            head = b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: %d\r\n\r\n"
            s.sendall(head % (mib << 20))
            piece = b"a" * (1 << 20)
        try:
            for _ in range(mib):
                s.sendall(piece)
        except OSError:
            pass  # refused and closed before the whole body was sent
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.endswith(b"bytes"):
                got = s.recv(4096)
                if not got:
                    break
                answer += got
        except OSError:
            pass
        return answer


class TestWitnessBodyBound:
    @pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
    def test_a_huge_submission_is_refused_without_being_held(self, tmp_path: Path, chunked: bool) -> None:
        log_vkey = NoteSigner("witness.test/log", Ed25519PrivateKey.generate()).vkey
        with witness_serve(tmp_path, "w", log_vkey) as w:
            before = _peak_rss_kib(w.proc.pid)
            answer = _post_huge(w.port, chunked=chunked, mib=300)
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
            assert answer.endswith(b"the body is larger than 65536 bytes"), answer[-200:]
            # Held whole, the body took 300 MiB more; refused as it came, a few MiB at most.
            assert _peak_rss_kib(w.proc.pid) - before < 64 * 1024
            # Still up, and answering.
            with socket.create_connection(("127.0.0.1", w.port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.1 200")


_FLOOD_CAP = 768 << 20
"""What the flooding witness sends at most (so that the daemon before the fix was not killed)."""


@contextmanager
def _hostile_witness(mode: str) -> Iterator[int]:
    """A witness answering every add-checkpoint with 200 and a body without end: "flood" (as
    fast as the daemon reads, up to ``_FLOOD_CAP``) or "trickle" (a byte a second). Its port."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            sent = 0
            try:
                while not stop.is_set() and sent < _FLOOD_CAP:
                    if mode == "flood":
                        self.wfile.write(b"a" * (1 << 20))
                        sent += 1 << 20
                    else:
                        self.wfile.write(b"a")
                        self.wfile.flush()
                        stop.wait(1.0)
            except OSError:
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def _serve_witnessed(tmp_path: Path, wport: int, extra: str = "") -> tuple[int, subprocess.Popen[str]]:
    """``rollwatch serve`` signing every second and submitting to the witness on ``wport``
    (under a key of its own: what the witness answers is the test); its port and process."""
    vkey = Cosigner("witness.test/hostile", Ed25519PrivateKey.generate()).vkey
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[integrity]\ncheckpoint_interval = "1s"\n{extra}'
        f'witnesses = [{{ url = "http://127.0.0.1:{wport}", key = "{vkey}" }}]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return port, proc


class TestHostileWitnessAnswer:
    @pytest.mark.parametrize(
        ("mode", "said"),
        [("flood", "its answer is larger than 65536 bytes"), ("trickle", "no whole answer within 2 s")],
    )
    def test_an_endless_answer_is_cut_and_named(self, tmp_path: Path, mode: str, said: str) -> None:
        with _hostile_witness(mode) as wport:
            port, proc = _serve_witnessed(tmp_path, wport, 'witness_timeout = "2s"\n')
            try:
                url = f"http://127.0.0.1:{port}"

                def named() -> bool:
                    try:
                        r = httpx.get(url + "/healthz", timeout=5)
                    except httpx.HTTPError:
                        return False
                    return said in r.text

                start = time.monotonic()
                _poll(named, 40, f"/healthz naming the witness's answer ({said})")
                # Cut at 64 KiB (flood) or at the timeout (trickle): the daemon never held the
                # hundreds of MiB the flood offers, and answered meanwhile.
                assert _peak_rss_kib(proc.pid) < 400 * 1024
                assert time.monotonic() - start < 30
                assert proc.poll() is None
            finally:
                err = _stop(proc)
            assert "Traceback" not in err


HOSTILE_401 = "Incorrect API key\x1b]0;owned\x07\x1b[2J"
"""A provider's 401 message with escape sequences: the terminal's title, the screen cleared."""


@contextmanager
def _rejecting_provider() -> Iterator[str]:
    """An OpenAI-compatible provider serving the model ``m1`` and refusing every key with
    ``HOSTILE_401``; its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, obj: object) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(200, {"object": "list", "data": [{"id": "m1", "object": "model"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            error = {"message": HOSTILE_401, "type": "invalid_request_error", "code": "invalid_api_key"}
            self._send(401, {"error": error})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


class TestProviderWordsOnTheTerminal:
    def test_schedules_trigger_escapes_a_disabled_providers_message(self, tmp_path: Path) -> None:
        from tests.test_schedules_over_time import serving as daemon
        from tests.test_schedules_over_time import write_config as daemon_config

        with _rejecting_provider() as base_url:
            key = tmp_path / "key"
            key.write_text("sk-some-key\n")
            cfg = daemon_config(
                tmp_path,
                '[[schedules]]\nname = "often"\nprovider = "fake"\nmodels = ["m1"]\n'
                'problem_set = "favorites"\nrollouts = 1\nevery = "24h"\n',
                extra=(
                    f'[[providers]]\nname = "fake"\nkind = "openai"\nbase_url = "{base_url}"\n'
                    f'api_key_file = "{key}"\nmax_attempts = 1\n'
                ),
            ).resolve()

            def trigger() -> subprocess.CompletedProcess[str]:
                command = [
                    sys.executable,
                    "-m",
                    "rollwatch",
                    "--config",
                    str(cfg),
                    "schedules",
                    "trigger",
                    "often",
                ]
                return subprocess.run(command, capture_output=True, text=True, timeout=120)

            with daemon(cfg) as d:
                d.until(lambda: d.events("RunFinished"), "the first fire's run to end")

                def disabled() -> bool:
                    p = rollwatch("--config", str(cfg), "schedules", "list", "--json")
                    return p.returncode == 0 and json.loads(p.stdout)[0]["state"] == "cannot run"

                _poll(disabled, 60, "the provider to be disabled")
                again = trigger()
            assert again.returncode == 1, (again.stdout, again.stderr)
            assert "still disabled" in again.stderr
            out = again.stdout + again.stderr
            assert "\x1b" not in out
            assert "\x07" not in out
            assert "Incorrect API key\\x1b]0;owned\\x07" in again.stderr
            assert "Incorrect API key\\x1b]0;owned\\x07" in again.stdout  # the reason it was disabled


class TestWitnessSizesPastUint64:
    def test_a_size_of_thousands_of_digits_is_a_400(self, tmp_path: Path) -> None:
        signer = NoteSigner("witness.test/log", Ed25519PrivateKey.generate())
        huge = "1" + "0" * 5000
        root = "A" * 43 + "="
        with witness_serve(tmp_path, "w", signer.vkey) as w:
            url = w.url + "/add-checkpoint"
            note = f"witness.test/log\n{huge}\n{root}\n\n\u2014 witness.test/log AAAAAAAA\n"
            for body, said in (
                (f"old {huge}\n\n{note}", "the first line must be 'old <size>'"),
                (f"old 0\n\n{note}", "is not a decimal number below 2^64"),
                (f"old 18446744073709551616\n\n{note}", "the first line must be 'old <size>'"),
            ):
                r = httpx.post(url, content=body.encode(), timeout=10)
                assert r.status_code == 400, (r.status_code, r.text[:200])
                assert said in r.text
            assert httpx.get(w.url + "/", timeout=10).status_code == 200


@contextmanager
def _witness_answering_409(size: str) -> Iterator[int]:
    """A witness answering every add-checkpoint with 409 ``text/x.tlog.size`` and ``size``; its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = size.encode() + b"\n"
            self.send_response(409)
            self.send_header("Content-Type", "text/x.tlog.size")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class TestWitnessSizeThatIsNoNumber:
    @pytest.mark.parametrize("size", ["\u00b2", "1" + "0" * 5000], ids=["superscript-two", "5000-digits"])
    def test_the_daemon_stays_up_and_names_the_answer(self, tmp_path: Path, size: str) -> None:
        with _witness_answering_409(size) as wport:
            port, proc = _serve_witnessed(tmp_path, wport)
            try:

                def named() -> bool:
                    assert proc.poll() is None, "the daemon ended"
                    try:
                        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                    except httpx.HTTPError:
                        return False
                    return "409 with a malformed size" in r.text

                _poll(named, 40, "/healthz naming the witness's 409")
                assert proc.poll() is None
            finally:
                err = _stop(proc)
            assert "Traceback" not in err
            assert "ValueError" not in err


@pytest.mark.parametrize(
    "port", ["\u00b2", "1" + "0" * 5000, "８０８０"], ids=["superscript-two", "5000-digits", "fullwidth"]
)
def test_a_listen_port_of_other_digits_is_named_in_our_words(tmp_path: Path, port: str) -> None:
    """``server.listen`` with a port of non-ASCII digits or thousands of them: exit 2 with the
    key and the expected form, not Python's ``int`` message."""
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
    )
    p = rollwatch("--config", str(cfg), "verify")
    assert p.returncode == 2, p.stderr
    assert "expected HOST:PORT" in p.stderr, p.stderr
    assert "invalid literal" not in p.stderr
    assert "4300" not in p.stderr
