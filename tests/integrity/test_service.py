"""The daemon-facing bundle: [integrity] configuration, open_integrity, Integrity.run and final_checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from pydantic import ValidationError

from rollwatch.config import IntegrityConfig, StoreConfig
from rollwatch.errors import IntegrityError
from rollwatch.integrity.service import open_integrity
from rollwatch.metrics import Metrics
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.app import build_app
from tests.integrity.conftest import append_n, rewrite_event


class TestConfig:
    def test_defaults_and_durations(self) -> None:
        """Defaults are usable as they are; the interval takes the config's duration syntax."""
        cfg = IntegrityConfig()
        assert (cfg.checkpoint_every, cfg.checkpoint_interval, cfg.name) == (
            1000,
            600.0,
            "rollwatch.example/log",
        )
        assert IntegrityConfig.model_validate({"checkpoint_interval": "30s"}).checkpoint_interval == 30.0

    @pytest.mark.parametrize(
        "bad",
        [
            {"origin": "has space"},
            {"origin": "a+b"},
            {"origin": ""},
            {"key_name": "x y"},
            {"checkpoint_every": 0},
            {"checkpoint_interval": "0s"},
            {"checkpoint_interval": "soon"},
            {"unknown": 1},
        ],
        ids=["space", "plus", "empty", "key-name", "every-0", "interval-0", "interval-text", "unknown-key"],
    )
    def test_invalid_values_are_rejected(self, bad: dict[str, object]) -> None:
        """Invalid origins, key names, counts, durations and unknown keys fail validation."""
        with pytest.raises(ValidationError):
            IntegrityConfig.model_validate(bad)

    def test_state_directory_from_systemd(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """$STATE_DIRECTORY decides where the key and the witness live; the tree stays by the projections."""
        monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
        store = StoreConfig(url="sqlite:/srv/x/events.db")
        cfg = IntegrityConfig()
        assert cfg.key_path(store) == tmp_path / "state" / "checkpoint.key"
        assert cfg.witness_path(store) == tmp_path / "state" / "checkpoint.last"
        assert cfg.tree_path(store) == Path("/srv/x/merkle.db")

    def test_importing_the_config_loads_nothing_else(self) -> None:
        """IntegrityConfig lives in rollwatch.config with the other config types: importing
        it loads no other part of rollwatch (no cycle) and nothing heavy."""
        code = (
            "import sys; from rollwatch.config import IntegrityConfig; "
            "print(sorted(m for m in sys.modules if m.startswith(('rollwatch', 'starlette', 'cryptography'))))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "['rollwatch', 'rollwatch.config', 'rollwatch.errors']"


class TestIntegrityRun:
    @pytest.mark.anyio
    async def test_run_signs_follows_and_signs_at_stop(self, tmp_path: Path, store: SQLiteEventStore) -> None:
        """run() reports started after the first checkpoint, keeps the routes current, and signs once more at stop."""
        store_cfg = StoreConfig(url=f"sqlite:{tmp_path / 'events.db'}")
        cfg = IntegrityConfig(origin="rollwatch.test/log", checkpoint_every=5)
        await append_n(store, 3)
        stop = anyio.Event()
        async with open_integrity(cfg, store_cfg, store) as integ:
            app = build_app(Metrics(), integ.routes())
            async with (
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
                anyio.create_task_group() as tg,
            ):
                await tg.start(integ.run, stop)
                first = integ.signer.verifier().open_checkpoint((await c.get("/public/checkpoint")).text)
                assert first.size == 3
                await append_n(store, 6, per_call=1)
                # Head 10 (3 + the checkpoint + 6) passed covered 3 + every 5: one more checkpoint.
                with anyio.fail_after(10):
                    while (
                        integ.signer.verifier().open_checkpoint((await c.get("/public/checkpoint")).text).size
                        < 8
                    ):
                        await store.wait_for_new(await store.head(), timeout=0.5)
                await append_n(store, 1)
                stop.set()
            last = integ.signer.verifier().open_checkpoint((await integ.tree.latest_checkpoint()).note)  # type: ignore[union-attr]
            assert last.size == await store.head() - 1
            assert await integ.final_checkpoint() is None
        assert (tmp_path / "checkpoint.key").exists()
        assert (tmp_path / "checkpoint.last").exists()

    @pytest.mark.anyio
    async def test_run_raises_the_refusal_itself(self, tmp_path: Path, store: SQLiteEventStore) -> None:
        """On a rewritten log, run() ends with IntegrityError (not an ExceptionGroup), so the daemon can report it."""
        store_cfg = StoreConfig(url=f"sqlite:{tmp_path / 'events.db'}")
        cfg = IntegrityConfig(origin="rollwatch.test/log")
        await append_n(store, 8)
        async with open_integrity(cfg, store_cfg, store) as integ:
            await integ.final_checkpoint()
            rewrite_event(tmp_path / "events.db", 2, '{"note":"","schedule":"rewritten"}')
            await integ.tree.rebuild()
            with pytest.raises(IntegrityError):
                await integ.run(anyio.Event())

    @pytest.mark.anyio
    async def test_run_refuses_a_rewritten_tail_before_starting(
        self, tmp_path: Path, store: SQLiteEventStore
    ) -> None:
        """If the last event the tree absorbed was rewritten, run() raises IntegrityError before reporting started."""
        store_cfg = StoreConfig(url=f"sqlite:{tmp_path / 'events.db'}")
        cfg = IntegrityConfig(origin="rollwatch.test/log")
        await append_n(store, 8)
        async with open_integrity(cfg, store_cfg, store) as integ:
            await integ.tree.catch_up(store)
            rewrite_event(tmp_path / "events.db", 8, '{"note":"","schedule":"rewritten"}')
            started: list[object] = []

            class Status:
                def started(self, value: object = None) -> None:
                    started.append(value)

            with pytest.raises(IntegrityError) as e:
                await integ.run(anyio.Event(), task_status=Status())
            assert e.value.seq == 8
            assert started == []
