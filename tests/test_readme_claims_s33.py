"""README promises checked in session 33's README audit that no other test showed.

In-process and fast: the README's text is read and compared with the command line's own
definitions (click) and the configuration's own defaults (pydantic).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
import pytest
from pydantic import BaseModel

from rollwatch.cli import cli
from rollwatch.config import Config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
SPEC_KEYS = {  # the keys of SPEC §3's example (SPEC.md is not part of the checkout)
    "store.url",
    "server.listen",
    "publication.embargo",
    "publication.positive",
    "problem_sets.name",
    "problem_sets.path",
    "problem_sets.format",
    "providers.name",
    "providers.kind",
    "providers.base_url",
    "providers.api_key_env",
    "providers.api_key_file",
    "providers.max_concurrency",
    "providers.requests_per_minute",
    "providers.timeout",
    "providers.prices",
    "schedules.name",
    "schedules.provider",
    "schedules.models",
    "schedules.problem_set",
    "schedules.rollouts",
    "schedules.every",
    "schedules.cron",
    "schedules.jitter",
    "schedules.budget_usd",
    "schedules.params",
}


def _commands_table() -> list[str]:
    """The first cell of each row of the README's Commands table."""
    table = README.split("## Commands", 1)[1].strip().split("\n\n", 1)[0]
    return [re.split(r"(?<!\\)\|", line)[1] for line in table.splitlines()[2:]]


def _command(words: list[str]) -> click.Command:
    ctx = click.Context(cli)
    cmd: click.Command = cli
    for w in words:
        assert isinstance(cmd, click.Group), words
        sub = cmd.get_command(ctx, w)
        assert sub is not None, f"README names `rollwatch {' '.join(words)}`, the CLI has no {w!r}"
        cmd = sub
    return cmd


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def test_every_command_and_option_the_readme_table_names_exists() -> None:
    """README (Commands): each `rollwatch …` row names commands and options the CLI has: every
    subcommand in an `a\\|b` list, and every `--option` on the command it is written after."""
    rows = _commands_table()
    assert len(rows) >= 15
    checked = 0
    for cell in rows:
        for part in re.findall(r"`([^`]+)`", cell):
            part = part.replace("\\|", "|")
            words = part.split()
            if words[0] != "rollwatch":  # `list`, `revoke NAME` after `subscribers add`
                words = ["rollwatch", "subscribers", *words]
            path: list[str] = []
            rest = words[1:]
            while rest and re.fullmatch(r"[a-z]+", rest[0]):
                path.append(rest.pop(0))
            if rest and re.match(r"[a-z]+\|", rest[0]):  # `list|pause NAME [--note]|resume NAME`
                alternatives = [a.split() for a in " ".join(rest).split("|")]
            else:
                alternatives = [[path.pop(), *rest]] if path else [rest]
            for alt in alternatives:
                sub = [w for w in alt[:1] if re.fullmatch(r"[a-z]+", w)]
                options = [w.strip("[]").split("=")[0] for w in alt if w.strip("[").startswith("-")]
                cmd = _command([*path, *sub])
                for o in options:
                    on = cmd if o not in ("--config", "--log-level") else cli
                    assert o in _options(on), f"README: `{part}`: {o} is not an option of {path + sub}"
                checked += 1
    assert checked >= 20


def test_options_every_command_takes() -> None:
    """README: "Every command takes `--config PATH` … and `--log-level`" (on the group, before the
    command, and on each command, after it)."""
    assert {"--config", "--log-level"} <= _options(cli)
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        assert cmd is not None
        leaves = (
            [cmd]
            if not isinstance(cmd, click.Group)
            else [cmd.get_command(ctx, n) for n in cmd.list_commands(ctx)]
        )
        for leaf in leaves:
            assert leaf is not None
            assert {"--config", "--log-level"} <= _options(leaf), (name, leaf.name)


def _walk(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, field in model.model_fields.items():
        key = prefix + name
        out.append((key, field))
        stack, inner = [field.annotation], None
        while stack:
            a = stack.pop()
            if isinstance(a, type) and issubclass(a, BaseModel):
                inner = a
                break
            if get_origin(a) is not Literal:
                stack.extend(get_args(a))
        if inner is not None and name != "prices":
            out += _walk(inner, key + ".")
    return out


def _readme_name(key: str) -> str:
    """``providers.timeout`` as the README writes it: ``providers[].timeout``."""
    head, _, rest = key.partition(".")
    if head in ("providers", "schedules", "problem_sets") and rest:
        return f"{head}[].{rest}"
    return key


def test_every_configuration_key_is_spec_s3s_or_in_the_readme() -> None:
    """Each key the configuration takes is either one of SPEC §3's or has a row, with its
    default, in a table of the README: `server.feed_rate_per_minute` and
    `publication.release_check` had none before session 33."""
    missing = []
    for key, _ in _walk(Config):
        if key in SPEC_KEYS:
            continue
        if "." not in key:  # a table (`[store]`), or `node`, a row of its own
            assert key != "node" or "| `node` |" in README
            continue
        leaf = key.rsplit(".", 1)[1]
        if key.startswith("integrity.witnesses."):
            continue  # `{ url = …, key = … }` in the `integrity.witnesses` row
        if key.startswith("providers.prices."):
            continue
        table = re.escape(_readme_name(key).rsplit(".", 1)[0])
        if not re.search(rf"^\|[^|]*`{table}\.[^|]*\b{leaf}\b[^|]*\| [^|]+ \|", README, re.M):
            missing.append(key)
    assert missing == [], missing


@pytest.mark.parametrize(
    ("key", "default"),
    [
        ("server.listen", "127.0.0.1:8080"),
        ("publication.embargo", 90 * 86400.0),
        ("publication.positive", "passed"),
        ("providers.max_concurrency", 8),
        ("providers.requests_per_minute", None),
        ("providers.timeout", 600.0),
        ("schedules.rollouts", 1),
        ("schedules.jitter", 0.0),
        ("schedules.budget_usd", None),
    ],
)
def test_spec_s3_keys_take_the_defaults_the_readme_states(key: str, default: object) -> None:
    """README (Configuration): "SPEC §3's own keys, left out, take these defaults"; the sentence
    names each of these with its value."""
    fields = dict(_walk(Config))
    assert fields[key].get_default(call_default_factory=True) == default
    sentence = README.split("SPEC §3's own keys, left out", 1)[1].split("\n\n", 1)[0]
    shown = {None: "none", 0.0: "none", 90 * 86400.0: "`90d`", 600.0: "`600s`"}.get(default, f"`{default}`")  # type: ignore[call-overload]
    assert re.search(rf"`{re.escape(_readme_name(key))}` {re.escape(shown)}", sentence.replace("\n", " ")), (
        key
    )


def _reference_config(tmp_path: Path, extra: str = "") -> Path:
    from tests.test_daemon import daemon_toml
    from tests.web.opsd import write_problems

    cfg = tmp_path / "rw.toml"
    cfg.write_text(
        daemon_toml(tmp_path, write_problems(tmp_path / "problems"))
        + f"""
[[providers]]
name = "reference"
kind = "reference"
[[schedules]]
name = "ref"
provider = "reference"
models = ["reference"]
problem_set = "favorites"
rollouts = 1
every = "1h"
{extra}
"""
    )
    return cfg


def test_a_runs_log_lines_carry_its_keys_and_model_only_where_stated(tmp_path: Path) -> None:
    """README (Logs): every line a run logs carries `run_id`, `schedule` and `provider`; `model`
    is on the lines about one model (`budget_unenforceable`: the reference provider has no
    prices); every line has `event`, `level`, `logger` and a UTC ISO 8601 `timestamp`. A real
    `rollwatch run`, its stderr off a terminal."""
    import json
    from datetime import datetime

    from tests.helpers import rollwatch

    cfg = _reference_config(tmp_path, "budget_usd = 1.0")
    r = rollwatch("--config", str(cfg), "run", "ref", timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(ln) for ln in r.stderr.splitlines() if ln.strip()]
    for o in lines:
        assert {"event", "level", "logger", "timestamp"} <= o.keys(), o
        assert o["timestamp"].endswith("Z"), o
        assert datetime.fromisoformat(o["timestamp"]).utcoffset() is not None, o
    run = [o for o in lines if o["logger"].startswith("rollwatch.runs")]
    assert {o["event"] for o in run} >= {"run_started", "run_finished", "budget_unenforceable"}
    run_ids = {o.get("run_id") for o in run}
    assert len(run_ids) == 1, run
    assert None not in run_ids, run
    assert all((o.get("schedule"), o.get("provider")) == ("ref", "reference") for o in run), run
    assert [o["event"] for o in lines if "model" in o] == ["budget_unenforceable"]
    assert next(o for o in run if o["event"] == "budget_unenforceable")["model"] == "reference"


def test_the_config_is_found_as_the_readme_says(tmp_path: Path) -> None:
    """README (Commands): `--config PATH` (before or after the command), else
    `$ROLLWATCH_CONFIG`, else `./config/rollwatch.toml`, else `/etc/rollwatch/rollwatch.toml`.
    Each config names a log that does not exist; the exit-2 line says which one was read (and
    no log is made: a read-only command)."""
    import os
    import subprocess
    import sys

    (tmp_path / "config").mkdir()
    for name in "ABC":
        (tmp_path / f"{name}.toml").write_text(f'[store]\nurl = "sqlite:{tmp_path / name}.db"\n')
    (tmp_path / "config" / "rollwatch.toml").write_text((tmp_path / "A.toml").read_text())
    base = {k: v for k, v in os.environ.items() if k != "ROLLWATCH_CONFIG"}

    def used(env: dict[str, str], *args: str, cwd: Path = tmp_path) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "rollwatch", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=cwd,
        )
        assert r.returncode == 2, r.stderr
        return r.stderr

    env_b = {**base, "ROLLWATCH_CONFIG": str(tmp_path / "B.toml")}
    assert f"no event log at {tmp_path}/A.db" in used(base, "events", "tail")
    assert f"no event log at {tmp_path}/B.db" in used(env_b, "events", "tail")
    assert f"no event log at {tmp_path}/C.db" in used(env_b, "--config", "C.toml", "events", "tail")
    assert f"no event log at {tmp_path}/C.db" in used(env_b, "events", "tail", "--config", "C.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if not Path("/etc/rollwatch/rollwatch.toml").exists():
        assert "/etc/rollwatch/rollwatch.toml" in used(base, "events", "tail", cwd=elsewhere)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.toml", "B.toml", "C.toml", "config", "elsewhere"]


def test_a_real_serve_answers_healthz_report_by_run_and_rollout_records_as_the_readme_shows(
    tmp_path: Path,
) -> None:
    """README (Health): a real `serve` with nothing wrong answers `/healthz` 200 with exactly
    `{"status":"ok","projections":{"state":"current"}}` once its read models are built (before,
    the README showed `{"status":"ok"}`), and `GET /` redirects to `/public/` (SPEC §7).
    README (feed API): `/v1/report?by=run` has a row per run, another `by` is a 400 naming it;
    `/v1/rollouts/{id}` holds the request as sent, every attempt, the answer, the score and the
    publication state. On a log a real `rollwatch run` wrote."""
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.helpers import rollwatch

    cfg = _reference_config(tmp_path)
    assert rollwatch("--config", str(cfg), "run", "ref", timeout=120).returncode == 0
    key = rollwatch("--config", str(cfg), "subscribers", "add", "reader").stdout.split()[0]
    bearer = {"Authorization": f"Bearer {key}"}
    listen = cfg.read_text().split('listen = "')[1].split('"')[0]
    url = f"http://{listen}"
    err = tmp_path / "serve.err"
    with err.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=f,
        )
    try:
        deadline = time.monotonic() + 60
        body: object = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"{url}/healthz", timeout=5)
            except httpx.TransportError:
                continue
            body = (r.status_code, r.json())
            if body[1].get("projections", {}).get("state") == "current":
                break
        assert body == (200, {"status": "ok", "projections": {"state": "current"}}), (
            body,
            err.read_text()[-2000:],
        )
        r = httpx.get(f"{url}/", timeout=5)
        assert (r.status_code, r.headers["location"]) == (302, "/public/")

        rows = httpx.get(f"{url}/v1/report?by=run", headers=bearer, timeout=10).json()
        assert len(rows) == 1, rows
        assert rows[0]["run_id"]
        assert rows[0]["rollouts"] == rows[0]["passed"] > 0
        r = httpx.get(f"{url}/v1/report?by=nope", headers=bearer, timeout=10)
        assert r.status_code == 400
        assert r.json()["error"] == "bad_request"
        assert r.json()["message"].startswith("by:")

        items = httpx.get(f"{url}/v1/feed?limit=1000", headers=bearer, timeout=10).json()["items"]
        rid = next(i["rollout_id"] for i in items if i["type"] == "RolloutScored")
        record = httpx.get(f"{url}/v1/rollouts/{rid}", headers=bearer, timeout=10).json()
        assert record["attempts"][0]["request"]["model"] == "reference"
        assert record["attempts"][0]["outcome"] == "responded"
        assert record["answer"]["text"] == record["attempts"][-1]["response"]["text"]
        assert record["score"]["passed"] is True
        assert record["publication"], record
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err.read_text()[-3000:]


def test_report_problem_version_takes_a_hash_or_4_of_its_hex_digits(tmp_path: Path) -> None:
    """README (Commands): `report --problem-version H`, H a hash or a prefix of 4+ characters.
    On a real run's log: the whole hash, 4 digits with or without `sha256:` name the version;
    3 digits are refused (exit 2) with `sha256:` before them too, and so is `sha2`, a prefix of
    the text every hash starts with (both named a version before session 33)."""
    import json

    from tests.helpers import rollwatch

    cfg = _reference_config(tmp_path)
    assert rollwatch("--config", str(cfg), "run", "ref", timeout=120).returncode == 0
    tail = rollwatch("--config", str(cfg), "events", "tail", "--type", "RolloutScored", "--json")
    hashes = sorted({json.loads(ln)["data"]["problem_hash"] for ln in tail.stdout.splitlines()})
    assert len(hashes) >= 2
    assert all(h.startswith("sha256:") for h in hashes)
    # A hash whose first 4 digits no other version shares.
    full = next(h for h in hashes if sum(o[7:11] == h[7:11] for o in hashes) == 1)

    def report(version: str) -> tuple[int, object]:
        r = rollwatch(
            "--config",
            str(cfg),
            "report",
            "--format",
            "json",
            "--by",
            "problem",
            "--problem-version",
            version,
        )
        return r.returncode, json.loads(r.stdout) if r.returncode == 0 else r.stderr

    named = report(full)
    assert named[0] == 0, named
    assert report(full[7:11]) == named
    assert report(full[:11]) == named
    for short in (full[7:10], full[:10], "sha2", "sha256:"):
        code, err = report(short)
        assert code == 2, (short, err)
        assert "no problem version" in str(err), (short, err)


def test_events_tail_after_prints_every_event_after_seq(tmp_path: Path) -> None:
    """README (Commands): `events tail` prints the last 20 events, "or those after SEQ": all of
    them, oldest first, not only 20; with `--type` only that type's; `--json` one envelope a line."""
    import json

    from tests.helpers import rollwatch
    from tests.test_cli_usage import _log

    cfg = _log(tmp_path)  # 5 SubscriberRevoked, then 40 SchedulePaused
    r = rollwatch("--config", str(cfg), "events", "tail", "--after", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(ln)["seq"] for ln in r.stdout.splitlines()] == list(range(4, 46))
    r = rollwatch("--config", str(cfg), "events", "tail", "--after", "3", "--type", "SubscriberRevoked")
    assert r.returncode == 0, r.stderr
    assert [int(ln.split()[0]) for ln in r.stdout.splitlines()] == [4, 5]


def test_the_shipped_unit_has_the_settings_the_readme_names() -> None:
    """README (systemd, Health): the unit is `Type=notify` with a `WatchdogSec`, restarts a
    `serve` that exits 1 after 5 s but not one that exits 2, ships `KillMode=mixed`, runs as a
    `DynamicUser` with `StateDirectory=rollwatch`, and runs the installed command on
    `/etc/rollwatch/rollwatch.toml` (the paths of `make install` and the set-up steps)."""
    from tests.test_systemd_unit import unit_lines

    assert unit_lines("Type") == ["notify"]
    assert len(unit_lines("WatchdogSec")) == 1
    assert unit_lines("Restart") == ["on-failure"]
    assert unit_lines("RestartSec") == ["5s"]
    assert unit_lines("RestartPreventExitStatus") == ["2"]
    assert unit_lines("KillMode") == ["mixed"]
    assert unit_lines("TimeoutStopSec") == ["60s"]
    grace = next(p for p in _command(["serve"]).params if p.name == "grace")
    assert grace.default == 30.0  # README (Commands): `serve --grace S`, default 30
    assert unit_lines("DynamicUser") == ["yes"]
    assert unit_lines("StateDirectory") == ["rollwatch"]
    assert unit_lines("ExecStart") == [
        "/opt/rollwatch/venv/bin/rollwatch --config /etc/rollwatch/rollwatch.toml serve"
    ]


def test_the_readme_config_error_example_is_what_the_command_prints(tmp_path: Path) -> None:
    """README (Configuration): the example of every mistake reported at once is, word for word
    and in order, what a command prints for a config with those two mistakes, exit 2 (the
    README's block lacked the `error: ` prefix and had the two lines the other way round)."""
    import os
    import subprocess
    import sys

    block = README.split("Every mistake is reported at once", 1)[1].split("```\n", 2)[1]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "rollwatch.toml").write_text(
        f'[store]\nurl = "sqlite:{tmp_path}/e.db"\n'
        '[[providers]]\nname = "reference"\nkind = "reference"\n'
        '[[providers]]\nname = "o"\nkind = "opena"\n'
        '[publication]\nembarg = "90d"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "ROLLWATCH_CONFIG"}
    r = subprocess.run(
        [sys.executable, "-m", "rollwatch", "events", "tail"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr == block
