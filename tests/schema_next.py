"""The next schema of ``RolloutScored``, as a test plays a schema change (``test_upcasting``).

Today's schema is played "old", written in another shape (``ok``, ``points``); the next
schema is today's shape with an upcaster from the old. :func:`register` makes it what this
process reads. A daemon's worker processes (the scrub, ``verify``'s content check) read the
log too and must know the same schemas, as a real release ships them to every process:
:func:`register_in_children` has every Python started with this environment register it
at start (``sitecustomize``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rollwatch import events as ev_mod
from rollwatch.events import Event, RolloutScored

#: The schema the test plays "old": today's, written in another shape, with a next
#: schema registered (so the test holds whatever schema is current).
OLD = RolloutScored.SCHEMA


@dataclass(frozen=True, kw_only=True)
class LegacyScored(Event, register=False):
    """``RolloutScored`` as an older version wrote it (``ok``, ``points``)."""

    TYPE: ClassVar[str] = "RolloutScored"
    SCHEMA: ClassVar[int] = OLD
    rollout_id: str
    ok: bool
    points: float
    scorer: str


@dataclass(frozen=True, kw_only=True)
class ScoredV2(RolloutScored, register=False):
    """The current shape of ``RolloutScored``, as the next schema."""

    SCHEMA: ClassVar[int] = OLD + 1


def _upcast_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k not in ("ok", "points")}
    return {**out, "passed": data["ok"], "score": data["points"]}


def register() -> type[Event] | None:
    """Make the next schema what this process reads; the class it replaces."""
    previous = ev_mod.register(ScoredV2)
    ev_mod.upcaster("RolloutScored", OLD)(_upcast_1_to_2)
    return previous


def unregister(previous: type[Event] | None) -> None:
    ev_mod.unregister_upcaster("RolloutScored", OLD)
    assert previous is not None
    ev_mod.register(previous)


def register_in_children(folder: Path) -> str:
    """A ``PYTHONPATH`` whose ``sitecustomize`` (written into ``folder``) registers the next
    schema in every Python started with it."""
    root = Path(__file__).resolve().parents[1]
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(root)!r})\nfrom tests.schema_next import register\nregister()\n"
    )
    return str(folder)
