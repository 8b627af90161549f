"""``make install``: the service as systemd runs it, apart from the checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_install_is_a_real_install_without_dev_tools(tmp_path: Path) -> None:
    """The package lands in PREFIX/venv, built from the checkout but not linked to it,
    with its runtime dependencies only; the command works from there."""
    prefix = tmp_path / "opt"
    subprocess.run(
        ["make", "-s", "install", f"PREFIX={prefix}", f"PY={sys.executable}"],
        cwd=ROOT,
        check=True,
        timeout=600,
        capture_output=True,
    )
    bin_ = prefix / "venv" / "bin"
    assert not [p.name for p in bin_.iterdir() if p.name in ("pytest", "ruff", "mypy")]
    where = subprocess.run(
        [str(bin_ / "python"), "-c", "import rollwatch.daemon as d; print(d.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert where.startswith(str(prefix)), where
    out = subprocess.run([str(bin_ / "rollwatch"), "--help"], check=True, capture_output=True, text=True)
    assert "serve" in out.stdout
    assert (prefix / "rollwatch.service").is_file()
    assert (prefix / "README.md").is_file()
    # The console's templates and assets ship inside the package (package data).
    subprocess.run(
        [
            str(bin_ / "python"),
            "-c",
            "from importlib.resources import files; from rollwatch.web.render import templates;"
            " [templates().get_template(t) for t in ('ops/runs.html', 'ops/rollout.html', 'public/index.html')];"
            " assert (files('rollwatch.web') / 'static' / 'console.js').is_file()",
        ],
        cwd=tmp_path,
        check=True,
    )
