"""Session 36: ``rollwatch audit --item`` of a result served without its proof bundle.

A host (or a mirror) that rewrote a released result (its answer, its public date) could drop the
result's bundle, or answer 404 for it: ``audit --item`` then said "the service serves no proof
bundle (an older rollwatch): not checked" and ended with ``ok``, exit 0, having checked only that
the feed's item is a leaf of the signed tree (a leaf says nothing of the answer or the date). It
fails now (exit 1, FAILED bundle): rollwatch serves a bundle with every released result.

Real parts: a real ``publish export`` (the ``exported`` fixture) served by a hostile host on
loopback as a live service's public routes, and the real ``rollwatch audit`` command.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.publication.test_claim_attacks_s35 import (  # noqa: F401  (exported: a fixture)
    Exported,
    exported,
)


def _host(exported: Exported, tmp_path: Path) -> tuple[Path, str, dict[str, object]]:  # noqa: F811
    root = tmp_path / "host"
    shutil.copytree(exported.out, root / "public")
    path = f"/public/rollouts/{exported.rid}.json"
    return root, path, json.loads((root / path.lstrip("/")).read_text())


@pytest.mark.parametrize("how", ["proof dropped", "proof null", "404"])
def test_a_result_served_without_its_bundle_fails_the_audit(
    exported: Exported,  # noqa: F811
    tmp_path: Path,
    how: str,
) -> None:
    """The result rewritten (an earlier public date, another answer) and its bundle dropped,
    nulled, or the route answering 404: exit 1, FAILED bundle naming the item, never ``ok``."""
    from tests.integrity.test_audit_hostile import audit, body, failed, hostile

    root, path, record = _host(exported, tmp_path)
    record |= {"not_before": exported.first, "answer": "print('not the answer it scored')"}
    if how == "proof dropped":
        del record["proof"]
    elif how == "proof null":
        record["proof"] = None
    if how == "404":
        (root / path.lstrip("/")).unlink()
        overrides = {}
    else:
        overrides = {path: body(json.dumps(record))}
    with hostile(root, overrides) as s:
        p = audit(s.url, "--item", exported.rid, "--no-archive")
    failed(p, "bundle", exported.rid, "not proven")
    assert "\nok" not in p.stdout, p.stdout


def test_the_honest_host_still_passes(exported: Exported, tmp_path: Path) -> None:  # noqa: F811
    """The same host serving the export's record as it is: exit 0 with the bundle checked."""
    from tests.integrity.test_audit_hostile import audit, hostile

    root, _path, _record = _host(exported, tmp_path)
    with hostile(root, {}) as s:
        p = audit(s.url, "--item", exported.rid, "--no-archive")
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"bundle: item {exported.rid}" in p.stdout, p.stdout
    assert "not checked" not in p.stdout, p.stdout


def test_inclusion_only_says_what_it_left_unchecked(exported: Exported, tmp_path: Path) -> None:  # noqa: F811
    """``--inclusion-only`` (a service older than the bundles): the item's inclusion is checked
    and the line says its answer, verdict and date are NOT checked; exit 0 only then."""
    from tests.integrity.test_audit_hostile import audit, hostile

    root, path, _record = _host(exported, tmp_path)
    (root / path.lstrip("/")).unlink()
    with hostile(root, {}) as s:
        p = audit(s.url, "--item", exported.rid, "--no-archive", "--inclusion-only")
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"inclusion: item {exported.rid}" in p.stdout, p.stdout
    assert "its answer, verdict and public date are NOT checked" in p.stdout, p.stdout
