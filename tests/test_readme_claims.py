"""README promises that no other test showed (see notes_readme_review.md).

Each test runs the real command or a real `rollwatch serve` on a real SQLite log and
asks over loopback HTTP, and fails if the README's sentence were false.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch.events import SchedulePaused
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import make_log, rollwatch, write_config
from tests.test_daemon import daemon_toml, events, wait_until
from tests.web.opsd import write_problems


@dataclass
class Served:
    url: str
    config: Path
    db: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return rollwatch("--config", str(self.config), *args)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A daemon with the reference provider, one schedule firing every 2 s and one
    ``enabled = false`` schedule that would fire every second."""
    tmp = tmp_path_factory.mktemp("readme")
    problems = write_problems(tmp / "problems")
    cfg = tmp / "rollwatch.toml"
    cfg.write_text(
        daemon_toml(tmp, problems)
        + """
[publication]
embargo = "1h"
[[providers]]
name = "reference"
kind = "reference"
[[schedules]]
name = "ref-often"
provider = "reference"
models = ["reference"]
problem_set = "favorites"
rollouts = 1
every = "2s"
[[schedules]]
name = "ref-off"
provider = "reference"
models = ["reference"]
problem_set = "favorites"
rollouts = 1
every = "1s"
enabled = false
"""
    )
    listen = cfg.read_text().split('listen = "')[1].split('"')[0]
    err = tmp / "serve.err"
    with err.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "5"],
            stdout=subprocess.DEVNULL,
            stderr=f,
        )
    s = Served(url=f"http://{listen}", config=cfg, db=tmp / "events.db")
    try:
        wait_until(lambda: len(events(s.db, "RunFinished")) >= 1, 90, "the first run")
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 0, err.read_text()[-3000:]


def test_a_subscriber_key_works_as_soon_as_add_returns_and_only_its_hash_is_stored(served: Served) -> None:
    """README (Commands): `subscribers add` keys are "shown once, stored as a hash; the key
    works as soon as `add` returns". The first request, sent the moment the command exits,
    is answered 200 (no retry), and the key's text is in no file of the log."""
    out = served.cli("subscribers", "add", "readme-at-once", "--scope", "feed")
    assert out.returncode == 0, out.stderr
    key = out.stdout.split()[0]
    r = httpx.get(served.url + "/v1/feed", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert "items" in r.json()
    for f in served.db.parent.glob("events.db*"):
        assert key.encode() not in f.read_bytes(), f


def test_a_disabled_schedule_never_fires_is_listed_disabled_and_trigger_refuses_it(served: Served) -> None:
    """README (Configuration): `schedules[].enabled = false`: "the schedule never fires
    (`schedules list` shows it `disabled`)"; and `trigger` on a schedule that cannot run is
    refused, exit 2, naming why."""

    # While the enabled schedule fires twice more (every 2 s), the disabled one (every 1 s) would have fired.
    def often() -> int:
        return sum(1 for _, _, d in events(served.db, "RunStarted") if d.get("schedule") == "ref-often")

    start = often()
    wait_until(lambda: often() >= start + 2, 60, "two more fires of the enabled schedule")
    assert not [d for _, _, d in events(served.db, "RunStarted") if d.get("schedule") == "ref-off"]
    out = served.cli("schedules", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["schedule"]: r for r in json.loads(out.stdout)}
    assert rows["ref-off"]["state"] == "disabled", rows["ref-off"]
    t = served.cli("schedules", "trigger", "ref-off")
    assert t.returncode == 2, (t.returncode, t.stdout, t.stderr)
    assert "disabled" in t.stderr, t.stderr
    assert not [d for _, _, d in events(served.db, "RunStarted") if d.get("schedule") == "ref-off"]


def test_schedule_and_subscriber_events_are_never_feed_items(served: Served) -> None:
    """README (The feed API): items are run, verdict, final failure, decision and release
    events; "subscriber and schedule events never are". A pause and a resume appended
    through the CLI, and the subscriber's own `SubscriberAdded`, are not items."""
    out = served.cli("subscribers", "add", "readme-types")
    assert out.returncode == 0, out.stderr
    key = out.stdout.split()[0]
    assert served.cli("schedules", "pause", "ref-often").returncode == 0
    assert served.cli("schedules", "resume", "ref-often").returncode == 0
    head = max(seq for seq, _, _ in events(served.db))
    allowed = {
        "RunStarted",
        "RunFinished",
        "RolloutScored",
        "RolloutRescored",
        "RolloutFailed",
        "PublicationDecided",
        "PublicReleased",
    }
    seen: list[str] = []
    after = 0
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        while after < head:
            body = c.get("/v1/feed", params={"after": after, "limit": 1000}).json()
            if not body["items"]:
                break
            seen += [i["type"] for i in body["items"]]
            after = body["next"]
    assert after >= head, (after, head)
    assert "RunStarted" in seen
    assert "RolloutScored" in seen
    assert set(seen) <= allowed, set(seen) - allowed


def test_events_tail_follow_prints_an_event_appended_after_it_started(tmp_path: Path) -> None:
    """README (Commands): `events tail ... -f` follows: an event appended by another process
    after the command started is printed, without restarting it."""
    db = make_log(tmp_path / "events.db")
    cfg = write_config(tmp_path)

    async def append(note: str) -> None:
        async with SQLiteEventStore(db) as store:
            await store.append("schedule-x", [SchedulePaused(schedule="x", note=note)])

    anyio.run(append, "before")
    out_file = tmp_path / "tail.out"
    with out_file.open("w") as out, (tmp_path / "tail.err").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "events", "tail", "-f", "--json"],
            stdout=out,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_until(lambda: "before" in out_file.read_text(), 30, "the existing event")
        anyio.run(append, "after-start")
        wait_until(lambda: "after-start" in out_file.read_text(), 30, "the appended event, followed")
        assert proc.poll() is None, "tail -f exited instead of following"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    lines = [json.loads(x) for x in out_file.read_text().splitlines() if x.strip()]
    assert [x["data"]["note"] for x in lines] == ["before", "after-start"], lines
