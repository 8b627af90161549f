"""``rollwatch serve`` as a user runs it, against an address another process holds."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def test_a_busy_port_is_one_line_naming_the_address_and_exit_2(tmp_path: Path) -> None:
    """With something already listening on server.listen, serve prints one error line naming
    the address, no traceback, and exits 2 (bad configuration), promptly."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "rollwatch.toml"
        config.write_text(
            f'[store]\nurl = "sqlite:///{tmp_path}/events.db"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        )
        p = subprocess.run(
            [sys.executable, "-m", "rollwatch", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: 127.0.0.1:{port} is already in use; stop whatever listens there "
        "(another `rollwatch serve`?) or set server.listen to another address"
    ]
    # Reported before anything is opened: no log, no key, no tree made for nothing.
    assert sorted(q.name for q in tmp_path.iterdir()) == ["rollwatch.toml"]
