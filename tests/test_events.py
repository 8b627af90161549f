"""Typed events: decoding stored data back into the classes, as every reader does."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rollwatch.errors import UnknownEventType
from rollwatch.events import (
    RolloutScored,
    RunFinished,
    RunStarted,
    SchedulePaused,
    decode,
    event_types,
)


class TestDecode:
    def test_round_trip_equals_the_constructed_event(self) -> None:
        """``decode(to_data())`` gives an event equal to the one built by its constructor."""
        evs = [
            RunStarted(
                run_id="r", schedule="s", provider="p", models=["m"], problem_set="ps", node="n", rollouts=3
            ),
            RolloutScored(rollout_id="x", passed=True, score=1.0, scorer="f", detail={"a": [1]}),
            RunFinished(run_id="r", status="completed", rollouts=1, passed=1, cost_usd=0.5),
        ]
        for ev in evs:
            back = decode(ev.TYPE, ev.SCHEMA, ev.to_data())
            assert back == ev
            assert type(back) is type(ev)

    def test_complete_data_decodes_as_the_general_path_does(self) -> None:
        """Data with every field (what ``to_data`` writes) becomes the event without a copy:
        equal to what the general path makes of the same data with a key more, and two
        decodes of one stored text share nothing (a read model may keep one of them)."""
        ev = RolloutScored(rollout_id="x", passed=True, score=1.0, scorer="f", detail={"a": [1]})
        text = json.dumps(ev.to_data())
        complete = decode(ev.TYPE, ev.SCHEMA, json.loads(text))
        general = decode(ev.TYPE, ev.SCHEMA, {**json.loads(text), "added_later": 1})
        assert complete == general == ev
        assert type(complete) is type(general) is RolloutScored
        again = decode(ev.TYPE, ev.SCHEMA, json.loads(text))
        assert again is not complete
        assert again.detail is not complete.detail
        with pytest.raises(dataclasses.FrozenInstanceError):
            complete.passed = False  # type: ignore[misc]

    def test_missing_optional_fields_get_their_defaults_fresh_each_time(self) -> None:
        """Fields an older writer left out take their defaults; mutable defaults are not shared."""
        a = decode("RolloutScored", 1, {"rollout_id": "x", "passed": False, "score": 0.0, "scorer": "f"})
        b = decode("RolloutScored", 1, {"rollout_id": "y", "passed": False, "score": 0.0, "scorer": "f"})
        assert isinstance(a, RolloutScored)
        assert isinstance(b, RolloutScored)
        assert a.reason == ""
        assert a.detail == {}
        assert a.detail is not b.detail

    def test_unknown_keys_are_left_out(self) -> None:
        """A newer writer's extra field does not stop an older reader."""
        ev = decode("SchedulePaused", 1, {"schedule": "s", "note": "", "added_later": 1})
        assert ev == SchedulePaused(schedule="s")

    def test_a_missing_required_field_is_an_error_naming_it(self) -> None:
        """Data without a required field is refused, naming the field, never half-built."""
        with pytest.raises(UnknownEventType, match="RolloutScored data lacks required field"):
            decode("RolloutScored", 1, {"rollout_id": "x", "score": 0.0, "scorer": "f"})

    def test_data_that_is_not_an_object_is_an_error_naming_it(self) -> None:
        """A row whose data is not a JSON object (only an edited file holds one) is refused
        with a named error, not an AttributeError deep in a read model."""
        with pytest.raises(UnknownEventType, match="SchedulePaused data is a JSON list"):
            decode("SchedulePaused", 1, [])  # type: ignore[arg-type]

    def test_unknown_type_and_newer_schema_are_errors(self) -> None:
        """A type this version does not know, or a schema newer than it reads, is refused."""
        with pytest.raises(UnknownEventType, match="unknown"):
            decode("NoSuchEvent", 1, {})
        with pytest.raises(UnknownEventType, match="upgrade rollwatch"):
            decode("SchedulePaused", 99, {"schedule": "s"})

    def test_every_spec_event_type_is_registered(self) -> None:
        """SPEC §4's event names are all known to the decoder."""
        spec = {
            "RunStarted", "RolloutRequested", "RolloutResponded", "RolloutFailed", "RolloutScored",
            "PublicationDecided", "PublicReleased", "RunFinished", "SchedulePaused", "ScheduleResumed",
            "SubscriberAdded", "SubscriberRevoked", "CheckpointSigned",
        }  # fmt: skip
        assert spec <= set(event_types())
