"""The README's Configuration and Upgrades sections, as an operator who has only the README
follows them: each case runs the real ``rollwatch`` on a real SQLite log."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

import anyio
import pytest
from pydantic import BaseModel

from rollwatch.config import parse_duration
from rollwatch.events import RolloutScored, SchedulePaused, SubscriberAdded, subscriber_stream
from rollwatch.publication.keys import hash_key, key_prefix, new_key
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import make_log, rollwatch, write_config
from tests.test_daemon import free_port


def _lines(proc: subprocess.CompletedProcess[str], code: int) -> list[str]:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if line and not line.startswith("{")]


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("[::1", "an IPv6 address in brackets"),
        ("256.1.1.1:8080", "'256.1.1.1' is not an IPv4 address"),
        ("::1:8080", "an IPv6 address goes in brackets"),
        ("http://127.0.0.1:8080", "without a scheme or a path"),
        ("a b:8080", "'a b' is not a host name or IP address"),
    ],
)
def test_a_listen_address_no_url_can_carry_is_a_config_error(tmp_path: Path, listen: str, why: str) -> None:
    """``server.listen`` is what links are made of (``http://HOST:PORT``): a host no URL can
    carry is a config error naming the key, exit 2, before anything starts. Before, "[::1" and
    "256.1.1.1" were an httpx traceback in every command that reads the config's URL
    (``schedules list``), and the others passed the check and failed at ``serve`` only."""
    config = write_config(tmp_path, f'[server]\nlisten = "{listen}"\n')
    make_log(tmp_path / "events.db")
    lines = _lines(rollwatch("--config", str(config), "schedules", "list"), 2)
    assert lines[0] == f"error: {config}: invalid configuration:", lines
    assert any(line.strip().startswith("server.listen:") and why in line for line in lines), lines


@pytest.mark.parametrize(
    "listen", ["[::1]:8080", "localhost:8080", "0.0.0.0:0", "rollwatch-1.example.org:80"]
)
def test_listen_addresses_that_work_still_pass(tmp_path: Path, listen: str) -> None:
    config = write_config(tmp_path, f'[server]\nlisten = "{listen}"\n')
    make_log(tmp_path / "events.db")
    _lines(rollwatch("--config", str(config), "schedules", "list"), 0)


def test_witness_listen_is_checked_the_same_way(tmp_path: Path) -> None:
    p = rollwatch("witness", "serve", "--listen", "[::1", "--log", "x", "--key", str(tmp_path / "w.key"))
    lines = _lines(p, 2)
    assert lines == [
        "error: --listen '[::1': an IPv6 address in brackets, e.g. [::1]:8080, needs a valid address inside them"
    ]


@dataclass(frozen=True, kw_only=True)
class _ScoredNext(RolloutScored, register=False):
    """``RolloutScored`` as the next version of rollwatch writes it (a schema this one lacks)."""

    SCHEMA: ClassVar[int] = RolloutScored.SCHEMA + 1


def _log_a_newer_rollwatch_wrote(db: Path) -> int:
    """A log some events long whose last event a newer rollwatch wrote; its head."""

    async def write() -> int:
        async with SQLiteEventStore(db) as store:
            await store.append("schedule-s", [SchedulePaused(schedule="s")])
            (rec,) = await store.append(
                "rollout-x", [_ScoredNext(rollout_id="x", passed=True, score=1.0, scorer="python-function")]
            )
            return rec.seq

    return anyio.run(write)


def test_serve_refuses_a_log_a_newer_rollwatch_wrote(tmp_path: Path) -> None:
    """A downgrade (the Upgrades steps run backwards, or an old node on a shared log): ``serve``
    stops, exit 2 (which the shipped unit does not restart: no retry reads the log), naming the
    event and that rollwatch must be upgraded, and appends nothing.
    Before, it retried building its read models forever (a WARNING every 30 s) while
    ``/healthz`` said 200 ok and every other route 503."""
    config = write_config(tmp_path, f'[server]\nlisten = "127.0.0.1:{free_port()}"\n')
    head = _log_a_newer_rollwatch_wrote(tmp_path / "events.db")
    p = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = _lines(p, 2)
    assert lines[-1] == (
        f"error: event {head}: RolloutScored schema {_ScoredNext.SCHEMA} is newer than this version "
        f"reads ({RolloutScored.SCHEMA}); upgrade rollwatch"
    ), lines
    con = sqlite3.connect(tmp_path / "events.db")
    try:
        assert con.execute("SELECT MAX(seq) FROM events").fetchone()[0] == head
    finally:
        con.close()


def _schema_raised_by_hand(db: Path, *, subscriber: bool = False) -> int:
    """A log whose event 2's schema column was raised by hand (hash not recomputed): it
    reads as a newer release's event (``subscriber``: a SubscriberAdded). That event's seq."""

    async def write() -> int:
        async with SQLiteEventStore(db) as store:
            await store.append("schedule-s", [SchedulePaused(schedule="s")])
            if subscriber:
                key = new_key()
                added = SubscriberAdded(
                    name="s", key_hash=hash_key(key), key_prefix=key_prefix(key), scopes=["feed"]
                )
                (rec,) = await store.append(subscriber_stream("s"), [added])
            else:
                (rec,) = await store.append(
                    "rollout-x",
                    [RolloutScored(rollout_id="x", passed=False, score=0.0, scorer="python-function")],
                )
            await store.append("schedule-s", [SchedulePaused(schedule="s")])
            return rec.seq

    seq = anyio.run(write)
    con = sqlite3.connect(db)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_update")  # as someone holding the file may
        con.execute("UPDATE events SET schema = 99 WHERE seq = ?", (seq,))
        con.commit()
    finally:
        con.close()
    return seq


@pytest.mark.parametrize(
    ("command", "subscriber"),
    [(["serve"], False), (["report"], False), (["rebuild"], False), (["serve"], True)],
    ids=["serve", "report", "rebuild", "serve-a-subscriber-event"],
)
def test_a_schema_raised_by_hand_is_tampering_not_a_newer_release(
    tmp_path: Path, command: list[str], subscriber: bool
) -> None:
    """Someone holding the file raises an event's schema column: every command that reads it
    names the edit (exit 1, the integrity check's words), not "upgrade rollwatch" (exit 2,
    which sent the operator to install a release that does not exist, and which the unit
    does not restart). Before, ``serve`` stopped on the read models' "schema 99 is newer"
    before its integrity check at start could name the row. A subscriber event so edited is
    read at start for the keys too: that read logs its failure and leaves the naming to the
    integrity check (it ended the daemon with "upgrade rollwatch")."""
    # serve on a port of its own: two of these at once on xdist workers both took 8080.
    config = write_config(tmp_path, f'[server]\nlisten = "127.0.0.1:{free_port()}"\n')
    seq = _schema_raised_by_hand(tmp_path / "events.db", subscriber=subscriber)
    p = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(config), *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = _lines(p, 1)
    assert lines[-1].startswith(f"error: event log integrity check failed at seq {seq}: "), lines
    assert "edited" in lines[-1], lines
    assert "upgrade" not in lines[-1], lines


@pytest.mark.parametrize("command", [["report"], ["rebuild"], ["schedules", "list"]])
def test_commands_refuse_a_log_a_newer_rollwatch_wrote(tmp_path: Path, command: list[str]) -> None:
    config = write_config(tmp_path)
    head = _log_a_newer_rollwatch_wrote(tmp_path / "events.db")
    lines = _lines(rollwatch("--config", str(config), *command), 2)
    assert lines[-1].startswith(f"error: event {head}: RolloutScored schema"), lines
    assert lines[-1].endswith("upgrade rollwatch"), lines


# -- the table of keys beyond SPEC §3 ----------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"

#: Defaults the table states in words: the value the model holds for each (the words are
#: made concrete at run time: the host's name, the cores, the state folder's files).
_DEFAULTS_IN_WORDS = {
    "node": ("host name and pid", None),
    "store.projections": ("`NAME.projections.db` next to a SQLite log `NAME.db`", None),
    "server.base_url": ("the address the server listens on", None),
    "scoring.workers": ("cores", None),
    "providers.stream": ("auto", None),
    "schedules.batch": ("the provider's", None),
    "integrity.origin": ("`HOST/rollwatch-RANDOM`", "rollwatch.example/log"),
    "integrity.key_name": ("the origin", None),
    "integrity.key_file": ("`<state dir>/checkpoint.key`", None),
    "integrity.tree": ("`merkle.db` next to the projections", None),
}


def _key_table() -> list[tuple[list[str], list[str]]]:
    """The rows of the README's "Keys beyond SPEC §3" table: (key paths, defaults)."""
    text = README.read_text(encoding="utf-8")
    table = text.split("Keys beyond SPEC §3:", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        names = re.findall(r"`([^`]+)`", cells[0])
        keys: list[str] = []
        for name in names:
            name = name.replace("[]", "")
            if "." not in name and keys:  # `max_rollout_time` after `providers[].max_attempts`
                name = keys[0].rsplit(".", 1)[0] + "." + name
            keys.append(name)
        rows.append((keys, [cells[1]] if len(keys) == 1 else cells[1].split(", ")))
    return rows


def _field(path: str) -> Any:
    """The pydantic field of a dotted key path (``providers.max_attempts``)."""
    from rollwatch.config import Config

    model: Any = Config
    field = None
    for part in path.split("."):
        if part.startswith('"'):  # a table's own key (`prices."model"`)
            return field
        field = model.model_fields[part]
        inner = field.annotation
        while get_args(inner) and get_origin(inner) is not Literal:
            inner = next(
                (a for a in get_args(inner) if isinstance(a, type) and issubclass(a, BaseModel)), None
            )
            if inner is None:
                break
        model = inner
    return field


def _stated(text: str) -> object:
    """The value a default cell of the table states."""
    text = text.strip().strip("`")
    if text in ("none", "unlimited", "—"):
        return None
    if text in ("true", "false"):
        return text == "true"
    with contextlib.suppress(ValueError):
        return json.loads(text)
    with contextlib.suppress(ValueError):
        return parse_duration(text)
    return text


def test_every_key_in_the_readme_table_is_taken_with_its_stated_default() -> None:
    """Each key of the README's table is one the configuration takes, and its default is
    the one the table states (in words where it is made at run time, listed above)."""
    rows = _key_table()
    assert len(rows) > 30
    checked = set()
    for keys, defaults in rows:
        assert len(defaults) in (1, len(keys)), (keys, defaults)
        for key, stated in zip(keys, defaults * len(keys) if len(defaults) == 1 else defaults, strict=True):
            field = _field(key)
            assert field is not None, key
            if '"' in key:  # `providers[].prices."model"`: a table of the operator's names
                continue
            actual = field.get_default(call_default_factory=False)
            if key in _DEFAULTS_IN_WORDS:
                words, value = _DEFAULTS_IN_WORDS[key]
                assert stated.startswith(words), (key, stated)
                assert actual == value or field.default_factory is not None, (key, actual)
            elif isinstance(_stated(stated), float | int) and not isinstance(actual, bool):
                assert actual == pytest.approx(_stated(stated)), (key, stated, actual)
            elif _stated(stated) is None:
                assert actual in (None, 0.0), (key, stated, actual)
            else:
                assert actual == _stated(stated) or field.get_default(call_default_factory=True) == _stated(
                    stated
                ), (key, stated, actual)
            checked.add(key)
    assert {"scoring.isolation", "providers.batch_max_time", "schedules.catch_up"} <= checked


def test_a_bad_value_of_every_key_in_the_table_names_the_key() -> None:
    """A value of the wrong kind for any key of the table is a ConfigError naming the file
    and that key (SPEC §2: the CLI turns it into exit 2, ``test_config.py``)."""
    from rollwatch.config import parse_config
    from rollwatch.errors import ConfigError

    base = {
        "problem_sets": [{"name": "p", "path": "config/problems"}],
        "providers": [{"name": "o", "kind": "openai"}],
        "schedules": [{"name": "s", "provider": "o", "models": ["m"], "problem_set": "p", "every": "1h"}],
    }
    for keys, _ in _key_table():
        for key in keys:
            if '"' in key:
                continue
            data = json.loads(json.dumps(base))
            *tables, name = key.split(".")
            where = data
            for t in tables:
                where = where[t][0] if isinstance(where.get(t), list) else where.setdefault(t, {})
            where[name] = {"not": "a value"}
            with pytest.raises(ConfigError) as e:
                parse_config(data, "rw.toml")
            shown = key if not tables or tables[0] not in base else f"{tables[0]}[0].{name}"
            assert str(e.value).startswith("rw.toml: invalid configuration:"), key
            assert any(p.startswith(f"{shown}:") for p in e.value.problems), (key, e.value.problems)
