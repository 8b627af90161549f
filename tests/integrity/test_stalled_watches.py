"""A watch that cannot do its work shows in ``/healthz``, not in the logs alone.

The scrub re-reads the whole log, the signer signs what was appended. Each failure
that is not a finding (a pass that could not run, a checkpoint that could not be
written) used to be a WARNING or an ERROR in the journal while ``/healthz`` said ok:
someone who stopped the scrub's process, or made the signer's folder unwritable, stopped
every later check or signature with nothing for a monitor to see. Now ``/healthz`` is
503 ``degraded``, naming the watch, until it works again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.integrity.served import Site, _poll, _stop, serving, stall_signer, unhealthy


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _is_scrub(pid: int) -> bool:
    try:
        return b"rollwatch.integrity.scrub" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@contextmanager
def scrubs_stopped(daemon: int) -> Iterator[list[int]]:
    """SIGSTOP every scrub process ``daemon`` starts, for as long as this is entered (the
    pids it stopped: each is left stopped, for the daemon to deal with)."""
    stopped: list[int] = []
    done = threading.Event()

    def stopper() -> None:
        while not done.wait(0.02):
            for pid in _children(daemon):
                if pid not in stopped and _is_scrub(pid):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)

    t = threading.Thread(target=stopper, daemon=True)
    t.start()
    try:
        yield stopped
    finally:
        done.set()
        t.join()


def _with(site: Site, line: str) -> Site:
    text = site.config.read_text()
    site.config.write_text(text.replace("[integrity]\n", f"[integrity]\n{line}\n", 1))
    return site


def test_a_stopped_scrub_is_killed_and_named_in_healthz(stopped_site: Site) -> None:
    """Every scrub process SIGSTOPped as it starts: before, the daemon waited on the first
    for good, checked nothing more and said ok. Now a pass that outlasts
    ``integrity.scrub_timeout`` is killed and ``/healthz`` says the log is not being
    re-checked, until a pass passes again."""
    s = _with(stopped_site, 'scrub_timeout = "2s"')
    with serving(s) as proc:
        with scrubs_stopped(proc.pid) as stopped:
            r = unhealthy(s.url, "/healthz to name the stopped scrub", timeout=60)
            body = r.json()
            assert body["status"] == "degraded", body
            assert any("not being re-checked" in x and "scrub_timeout" in x for x in body["reasons"]), body
            assert stopped
        # Each one stopped was killed, not left behind.
        _poll(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in stopped), 30, "the stopped passes to go"
        )
        ok = _poll(
            lambda: (r := s.healthz()) is not None and r.status_code == 200 and r,
            60,
            "/healthz to be ok once a pass passes",
        )
        assert isinstance(ok, httpx.Response)
        assert ok.json()["status"] == "ok", ok.json()
        err = _stop(proc)
    assert proc.returncode == 0, err[-3000:]
    assert "scrub_failed" in err, err[-3000:]
    assert "scrub_timeout" in err, err[-3000:]
    assert "Traceback" not in err


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Folders made immutable (``chattr +i``: nothing created or renamed in them, root
    included), made mutable again afterwards."""
    made: list[Path] = []
    yield made
    for d in made:
        subprocess.run(["chattr", "-i", str(d)], check=False)


def test_a_signer_that_cannot_write_is_named_in_healthz(
    site: tuple[Site, subprocess.Popen[str]], immutable: list[Path]
) -> None:
    """The signer's folder made immutable under a live daemon: the witness file cannot be
    written, so nothing more is signed (everything appended since open to a consistent
    rewrite). Before, an ERROR ``checkpoint_failed`` every 5 s and ``/healthz`` ok. Now
    ``/healthz`` is degraded naming it, and ok again once a checkpoint is signed."""
    s, proc = site
    signed = len(s.checkpoints())
    stall_signer(s, immutable, "late")
    r = unhealthy(s.url, "/healthz to name the signer", timeout=60)
    body = r.json()
    assert body["status"] == "degraded", body
    assert any("no checkpoint can be signed" in x for x in body["reasons"]), body
    assert len(s.checkpoints()) == signed
    subprocess.run(["chattr", "-i", str(s.dir)], check=True)
    _poll(lambda: len(s.checkpoints()) > signed, 60, "a checkpoint once the folder is writable")
    ok = _poll(lambda: (r := s.healthz()) is not None and r.status_code == 200 and r, 30, "/healthz ok again")
    assert isinstance(ok, httpx.Response)
    assert ok.json()["status"] == "ok", ok.json()
    err = _stop(proc)
    assert proc.returncode == 0, err[-3000:]
    assert "checkpoint_failed" in err, err[-3000:]


def test_a_signer_left_with_a_retired_key_is_named_in_healthz(stopped_site: Site) -> None:
    """The key was rotated, then the new key lost and the retired one put back (a restore from
    an old backup, say): the daemon can sign nothing. Before, one ERROR
    ``checkpoint_key_retired`` at the first checkpoint and ``/healthz`` ok for good."""
    from tests.helpers import rollwatch
    from tests.integrity.test_rotation import _served_key_from_file

    s = stopped_site
    old_key = _served_key_from_file(s)
    r = rollwatch("--config", str(s.config), "key", "rotate")
    assert r.returncode == 0, r.stderr
    key_file = s.dir / "checkpoint.key"
    key_file.unlink()
    (s.dir / f"checkpoint.key.retired-{old_key.split('+')[1]}").rename(key_file)
    signed = len(s.checkpoints())
    proc = s.serve()
    try:
        got = _poll(
            lambda: (h := s.healthz()) is not None and h.status_code == 503 and h,
            60,
            "/healthz to name the key",
        )
        assert isinstance(got, httpx.Response)
        body = got.json()
        assert body["status"] == "degraded", body
        assert any("signs with a retired one" in x for x in body["reasons"]), body
        assert len(s.checkpoints()) == signed
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err[-3000:]
    assert "checkpoint_key_retired" in err
