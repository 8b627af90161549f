"""``rollwatch subscribers`` and ``rollwatch publish export`` as real subprocesses."""

from __future__ import annotations

import hashlib
import json
import re
from functools import partial
from pathlib import Path

import anyio
import pytest

from tests.helpers import make_log, rollwatch
from tests.publication.helpers import add_subscriber, bearer, serving

pytestmark = pytest.mark.anyio


def config_file(tmp_path: Path) -> Path:
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n[publication]\nembargo = "2s"\n')
    return cfg


def all_bytes(root: Path) -> bytes:
    """Every byte of every file under ``root`` (the log, its WAL, the projections)."""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


class TestSubscribersCommand:
    async def test_add_prints_key_once_and_stores_only_its_hash(self, tmp_path: Path) -> None:
        """``subscribers add`` prints the key once on stdout; no file holds the key, the log holds
        its SHA-256; the key works on a running server, and ``revoke`` locks it out from the next request on."""
        cfg = str(config_file(tmp_path))
        run = partial(rollwatch, "--config", cfg)
        p = await anyio.to_thread.run_sync(lambda: run("subscribers", "add", "alice", "--expires", "30d"))
        assert p.returncode == 0, p.stderr
        keys = re.findall(r"rw_[A-Za-z0-9_-]{43}", p.stdout + p.stderr)
        assert len(keys) == 1
        assert p.stdout.strip() == keys[0]
        key = keys[0]
        assert "shown only now" in p.stderr
        data = all_bytes(tmp_path)
        assert key.encode() not in data
        assert key[10:].encode() not in data
        assert hashlib.sha256(key.encode()).hexdigest().encode() in data

        p = await anyio.to_thread.run_sync(lambda: run("subscribers", "list", "--json"))
        assert p.returncode == 0, p.stderr
        rows = json.loads(p.stdout)
        assert [(r["name"], r["state"], r["scopes"]) for r in rows] == [
            ("alice", "active", ["feed", "rollouts", "report"])
        ]
        assert key not in p.stdout
        assert rows[0]["key"].startswith(key[:10])

        async with serving(tmp_path) as env:
            assert (await env.client.get("/v1/feed", headers=bearer(key))).status_code == 200
            p = await anyio.to_thread.run_sync(
                lambda: run("subscribers", "revoke", "alice", "--note", "left")
            )
            assert p.returncode == 0, p.stderr
            assert "refuses its key from the next request on" in p.stdout + p.stderr
            # The very next request: the server checks the key against the log's head.
            assert (await env.client.get("/v1/feed", headers=bearer(key))).status_code == 401

        p = await anyio.to_thread.run_sync(lambda: run("subscribers", "list"))
        assert p.returncode == 0
        assert "revoked" in p.stdout
        assert "left" in p.stdout
        p = await anyio.to_thread.run_sync(lambda: run("subscribers", "revoke", "alice"))
        assert p.returncode == 0
        assert "already revoked" in p.stdout
        assert key.encode() not in all_bytes(tmp_path)

    @pytest.mark.parametrize(
        ("flags", "scopes"),
        [
            (["--scope", "feed,rollouts"], ["feed", "rollouts"]),
            (["--scope", "rollouts feed"], ["feed", "rollouts"]),
            (["--scope", "feed,", "--scope", "report"], ["feed", "report"]),
            (["--scope", "feed", "--scope", "ops,feed"], ["feed", "ops"]),
        ],
    )
    def test_scopes_are_taken_as_list_prints_them(
        self, tmp_path: Path, flags: list[str], scopes: list[str]
    ) -> None:
        """``--scope`` takes what ``subscribers list`` prints (``feed,rollouts``), spaces too, and
        repeats; the key gets exactly those scopes, in the canonical order."""
        cfg = str(config_file(tmp_path))
        p = rollwatch("--config", cfg, "subscribers", "add", "dora", *flags)
        assert p.returncode == 0, p.stderr
        p = rollwatch("--config", cfg, "subscribers", "list", "--json")
        assert [r["scopes"] for r in json.loads(p.stdout)] == [scopes]
        listed = rollwatch("--config", cfg, "subscribers", "list").stdout
        assert ",".join(scopes) in listed

    @pytest.mark.parametrize("bad", ["feed,admin", ",", " "])
    def test_a_bad_scope_list_exits_2(self, tmp_path: Path, bad: str) -> None:
        """An unknown scope inside a list, or a list of nothing, is bad usage (exit 2), no key."""
        p = rollwatch("--config", str(config_file(tmp_path)), "subscribers", "add", "erin", "--scope", bad)
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert "rw_" not in p.stdout

    async def test_a_key_works_the_moment_add_returns(self, tmp_path: Path) -> None:
        """20 times: while another subscriber polls the server (so its directory is always
        fresh, never older than 0.5 s), ``subscribers add`` runs and its key is used at once:
        never a 401."""
        cfg = str(config_file(tmp_path))
        async with serving(tmp_path) as env:
            busy = await add_subscriber(env.store, "poller")
            statuses: list[int] = []

            async def poll() -> None:
                while True:
                    statuses.append((await env.client.get("/v1/report", headers=bearer(busy))).status_code)
                    await anyio.sleep(0.05)  # pacing: 20 a second keeps it under the rate limit

            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                for i in range(20):
                    p = await anyio.to_thread.run_sync(
                        lambda i=i: rollwatch("--config", cfg, "subscribers", "add", f"new{i}")
                    )
                    assert p.returncode == 0, p.stderr
                    r = await env.client.get("/v1/feed", headers=bearer(p.stdout.strip()))
                    assert r.status_code == 200, (i, r.text)
                tg.cancel_scope.cancel()
            assert len(statuses) > 20
            assert set(statuses) == {200}

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["add", "bob", "--scope", "admin"], "'admin' is not one of"),
            (["add", "bob", "--expires", "2001-01-01"], "in the past"),
            (["add", "bad name"], "subscriber name"),
            (["revoke", "nobody"], "no subscriber 'nobody'"),
        ],
    )
    def test_bad_usage_exits_2(self, tmp_path: Path, args: list[str], message: str) -> None:
        """Bad scopes, past expiry, bad names and unknown subscribers exit 2 with a clear message."""
        make_log(tmp_path / "events.db")
        p = rollwatch("--config", str(config_file(tmp_path)), "subscribers", *args)
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert message in p.stderr

    def test_names_are_unique(self, tmp_path: Path) -> None:
        """A second ``add`` of the same name fails (exit 2) and prints no key."""
        cfg = str(config_file(tmp_path))
        assert rollwatch("--config", cfg, "subscribers", "add", "carol").returncode == 0
        p = rollwatch("--config", cfg, "subscribers", "add", "carol")
        assert p.returncode == 2
        assert "exists already" in p.stderr
        assert "rw_" not in p.stdout


class TestExportCommand:
    def test_export_writes_the_four_files(self, tmp_path: Path) -> None:
        """``publish export DIR`` writes index.html, feed.json, feed.atom and results.jsonl."""
        out = tmp_path / "site"
        make_log(tmp_path / "events.db")
        p = rollwatch(
            "--config",
            str(config_file(tmp_path)),
            "publish",
            "export",
            str(out),
            "--base-url",
            "https://example.org/rollwatch/",
        )
        assert p.returncode == 0, p.stderr
        for name in ("index.html", "feed.json", "feed.atom", "results.jsonl"):
            assert (out / name).is_file(), name
        feed = json.loads((out / "feed.json").read_text())
        assert feed["feed_url"] == "https://example.org/rollwatch/feed.json"
        assert feed["items"] == []
