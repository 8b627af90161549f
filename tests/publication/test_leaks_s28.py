"""Session 28's attacks by an outsider on the HTTP port (helper s28-leak): what ``/healthz`` and the
checkpoint routes tell anyone, on a real ``rollwatch serve`` over real SQLite files (the signed
log of :mod:`tests.integrity.conftest`). The outsider is a remote peer, as the daemon sees it
through a loopback proxy's ``X-Forwarded-For``; the operator (the control) is the loopback peer
asking by IP address. Each test here failed before its fix."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch.integrity.health import TAMPERED_PUBLIC, WITHHELD
from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity import conftest as integrity
from tests.integrity.conftest import append_n
from tests.integrity.served import Site, _poll, stall_signer
from tests.integrity.test_tamper_s27 import forged_note, row_added, tree_rows, tree_sql

# The signed log's fixtures (a copy of it per test, served by a real daemon).
signed_log, stopped_site, site = integrity.signed_log, integrity.stopped_site, integrity.site

REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # the daemon believes a loopback proxy


def _health(s: Site, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(s.url + "/healthz", headers=headers or {}, timeout=10)


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Folders made immutable (``chattr +i``), made mutable again afterwards."""
    made: list[Path] = []
    yield made
    for d in made:
        subprocess.run(["chattr", "-i", str(d)], check=False)


class TestHealthzForOutsiders:
    """``/healthz`` gave anyone every reason word for word: the store's URL and files, the
    signer's and the scrub's errors (paths), a finding's seq and what differs. An outsider now
    reads the status and the kind of trouble; the operator keeps every word."""

    def test_a_stalled_signer_names_no_file_to_an_outsider(
        self, site: tuple[Site, subprocess.Popen[str]], immutable: list[Path]
    ) -> None:
        s, _ = site
        stall_signer(s, immutable, "s28")
        got = _poll(
            lambda: (r := _health(s)).status_code == 503 and "no checkpoint can be signed" in r.text and r,
            60,
            "the operator's /healthz to name the signer",
        )
        assert isinstance(got, httpx.Response)
        operator = got.json()
        assert str(s.dir) in got.text, operator  # the control: the operator reads the error's path
        outside = _health(s, REMOTE)
        assert outside.status_code == 503
        body = outside.json()
        assert body["status"] == "degraded", body
        assert body["reasons"] == ["no checkpoint can be signed"], body
        assert str(s.dir) not in outside.text, outside.text
        assert "Errno" not in outside.text, outside.text
        assert outside.headers["cache-control"] == "no-store"

    def test_a_finding_shows_an_outsider_its_kind_only(
        self, site: tuple[Site, subprocess.Popen[str]]
    ) -> None:
        """The witness file overwritten: the finding names the file's path and the seq; an
        outsider reads "tampered" and the kind (``rollwatch audit`` fails on the status alone)."""
        s, _ = site
        (s.dir / "checkpoint.last").write_text("not a checkpoint\n")
        got = _poll(
            lambda: (r := _health(s)).status_code == 503 and r.json()["status"] == "tampered" and r,
            60,
            "the finding",
        )
        assert isinstance(got, httpx.Response)
        assert str(s.dir) in got.text, got.text  # the operator's
        assert "first_bad_seq" in got.json(), got.text  # the operator's
        outside = _health(s, REMOTE)
        assert outside.status_code == 503
        body = outside.json()
        assert body == {
            "status": "tampered",
            "reasons": [TAMPERED_PUBLIC],
            "projections": {"state": "current"},
        }, body
        assert str(s.dir) not in outside.text


class TestCheckpointKnownBad:
    """After a check found ``merkle.db``'s copy of the checkpoints edited, ``/public/checkpoint``
    (and ``/checkpoint``) went on serving the edited note, pass after pass, while ``/healthz`` said
    tampered. A record that is neither the log's event nor a note of ours for its size and root is
    now a 503 from the first request, and ``/healthz`` says the checkpoint is withheld."""

    def test_a_forged_note_is_never_served(self, site: tuple[Site, subprocess.Popen[str]]) -> None:
        s, _ = site
        genuine = httpx.get(s.url + "/public/checkpoint", headers=REMOTE).text
        assert genuine.endswith("\n"), genuine
        seq = forged_note(s)
        forged = tree_rows(s)[-1][3]
        # The very next request: the record is checked against the log's event before it is served.
        for path in ("/public/checkpoint", "/checkpoint"):
            r = httpx.get(s.url + path, headers=REMOTE)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.text != forged, r.text
            assert "withheld" in r.json()["message"], r.text
            assert str(s.dir) not in r.text
        operator = _health(s)
        assert operator.status_code == 503
        assert operator.json()["first_bad_seq"] == seq, operator.json()
        assert WITHHELD in operator.json()["reasons"], operator.json()
        outside = _health(s, REMOTE).json()
        assert outside["status"] == "tampered", outside
        assert WITHHELD in outside["reasons"], outside
        # The proofs and hash tiles, cut at that record's size, are withheld too.
        for path in ("/public/proof/inclusion?seq=1&size=1", "/public/proof/consistency?from=1&to=2"):
            assert httpx.get(s.url + path, headers=REMOTE).status_code == 503, path

    def test_a_row_past_the_head_cuts_no_proof(self, site: tuple[Site, subprocess.Popen[str]]) -> None:
        """A row added past the log's head with the latest genuine note and one more event: the
        note verifies, but not for the record's size, at which the proofs and tiles were cut."""
        s, _ = site
        size = tree_rows(s)[-1][1]
        seq = row_added(s) - 1000
        for path in ("/public/checkpoint", "/checkpoint", f"/public/proof/inclusion?seq=1&size={size + 1}"):
            r = httpx.get(s.url + path, headers=REMOTE)
            assert r.status_code == 503, (path, r.status_code, r.text)
        body = _health(s).json()
        assert body["first_bad_seq"] == seq + 1000, body
        assert WITHHELD in body["reasons"], body

    def test_a_deleted_record_leaves_the_genuine_note_before_it(
        self, site: tuple[Site, subprocess.Popen[str]]
    ) -> None:
        """Held: the latest row deleted leaves the one before, the log's own signed note, which is
        served (what was public stays served) while the scrub names the deleted row."""
        s, _ = site
        before = len(tree_rows(s))

        async def more() -> None:
            async with SQLiteEventStore(s.db) as store:
                await append_n(store, 6, tag="s28-more")

        anyio.run(more)  # a checkpoint more, so that one is left once the latest row is gone
        _poll(lambda: len(tree_rows(s)) > max(before, 1), 60, "a checkpoint of the new events")
        rows = tree_rows(s)
        seq = rows[-1][0]
        tree_sql(s, "DELETE FROM tree_checkpoints WHERE seq = ?", (seq,))
        got = _poll(
            lambda: (r := _health(s)).status_code == 503 and r.json().get("first_bad_seq") == seq and r,
            60,
            "the scrub to name the deleted record",
        )
        assert isinstance(got, httpx.Response)
        assert any("merkle.db was edited" in why for why in got.json()["reasons"]), got.json()
        r = httpx.get(s.url + "/public/checkpoint", headers=REMOTE)
        assert r.status_code == 200, r.text
        con = sqlite3.connect(s.db)
        try:
            logged = [
                json.loads(d)["note"]
                for (d,) in con.execute("SELECT data FROM events WHERE type = 'CheckpointSigned'")
            ]
        finally:
            con.close()
        assert r.text in logged, (r.text, logged)
        assert r.text != rows[-1][3]
