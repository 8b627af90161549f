"""The systemd unit: it parses, loads one folder of credentials, and rollwatch finds each
key of that folder under the name systemd gives it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rollwatch.config import CREDENTIAL_PREFIX, credential_file
from rollwatch.integrity.keys import credential_path
from tests.helpers import make_log, rollwatch

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "rollwatch.service"


def unit_lines(key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines() if ln.startswith(f"{key}=")]


class TestUnitFile:
    def test_systemd_analyze_verify_accepts_it(self, tmp_path: Path) -> None:
        """``systemd-analyze verify`` passes the unit with nothing to say about it (an unknown or
        misspelt key is reported there), ExecStart pointed at this checkout's command."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.skip("systemd-analyze is not installed here")
        command = Path(sys.executable).parent / "rollwatch"
        assert command.is_file()
        unit = tmp_path / "rollwatch.service"
        unit.write_text(UNIT.read_text().replace("/opt/rollwatch/venv/bin/rollwatch", str(command)))
        p = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert [ln for ln in (p.stdout + p.stderr).splitlines() if "rollwatch.service" in ln] == []

    def test_verify_would_catch_a_misspelt_key(self, tmp_path: Path) -> None:
        """The control for the check above: a misspelt directive is reported on the unit's name."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.skip("systemd-analyze is not installed here")
        unit = tmp_path / "rollwatch.service"
        unit.write_text(
            "[Service]\nExecStart=/bin/true\nLoadCredentials=rollwatch:/etc/rollwatch/credentials\n"
        )
        p = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert "rollwatch.service" in p.stdout + p.stderr

    def test_systemd_analyze_security_rates_it_ok(self) -> None:
        """``systemd-analyze security --offline=yes`` rates the unit's exposure at most 2.5 ("OK"),
        the figure the README gives; the namespaces the unit allows are those the README lists."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.skip("systemd-analyze is not installed here")
        p = subprocess.run(
            [analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"Overall exposure level for rollwatch\.service: ([0-9.]+)", p.stdout)
        assert found, p.stdout + p.stderr
        assert float(found.group(1)) <= 2.5, found.group(0)
        assert unit_lines("RestrictNamespaces") == ["user mnt pid net ipc uts cgroup"]

    def test_the_system_call_filter_allows_what_the_scoring_sandbox_calls(self) -> None:
        """Every system call the sandbox makes (bubblewrap's namespaces and mounts, the
        zygote's uids, limits and IPC cleanup, the samples' own seccomp filter) passes the
        unit's ``SystemCallFilter=`` lines, groups expanded by ``systemd-analyze``. ``seccomp``
        was missing: the filter then went on through ``prctl``, which turns on the
        speculative-store-bypass mitigation that slows CPU-bound samples."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.skip("systemd-analyze is not installed here")
        known: dict[str, frozenset[str]] = {}

        def expand(token: str) -> frozenset[str]:
            if not token.startswith("@"):
                return frozenset([token])
            if token not in known:
                out = subprocess.run(
                    [analyze, "syscall-filter", token], capture_output=True, text=True, timeout=60
                ).stdout
                names: set[str] = set()
                for line in out.splitlines()[1:]:
                    name = line.strip()
                    if name and not name.startswith("#"):
                        names |= expand(name)
                known[token] = frozenset(names)
            return known[token]

        allowed: set[str] = set()
        denied: set[str] = set()
        for value in unit_lines("SystemCallFilter"):
            if value.startswith("~"):
                denied.update(*(expand(t) for t in value[1:].split()))
            else:
                allowed.update(*(expand(t) for t in value.split()))
        # The groups were expanded.
        assert "read" in allowed
        assert "reboot" in denied
        needed = [
            *("seccomp", "prctl", "unshare", "clone", "clone3", "mount", "umount2", "pivot_root"),
            *("chroot", "sethostname", "capset", "setresuid", "setresgid", "setgroups"),
            *("sched_setaffinity", "pidfd_open", "prlimit64", "setrlimit", "shmctl", "semctl"),
            *("msgctl", "kill", "execve", "wait4"),
        ]
        assert [n for n in needed if n not in allowed or n in denied] == []

    def test_bad_configuration_is_not_restarted(self) -> None:
        """Exit 2 (bad configuration) needs the operator: the unit does not restart it every 5 s."""
        assert unit_lines("Restart") == ["on-failure"]
        assert unit_lines("RestartPreventExitStatus") == ["2"]

    def test_one_folder_of_credentials(self) -> None:
        """The unit loads the credentials folder as a whole, under the ID whose prefix rollwatch
        looks for, and names no single key file (a missing one would keep the unit from starting)."""
        assert unit_lines("LoadCredential") == ["rollwatch:/etc/rollwatch/credentials"]
        assert CREDENTIAL_PREFIX == "rollwatch_"


class TestCredentialLookup:
    def test_keys_of_the_loaded_folder_are_found(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``$CREDENTIALS_DIRECTORY/rollwatch_openai`` (what systemd makes of the folder's ``openai``)
        is the key of ``api_key_file = "openai"``; a credential loaded by its own line
        (``LoadCredential=openai:...``) wins; the checkpoint key is found the same way."""
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "rollwatch_openai").write_text("sk-from-folder\n")
        (creds / "rollwatch_checkpoint-key").write_bytes(b"\x01" * 32)
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        assert credential_file("openai") == creds / "rollwatch_openai"
        assert credential_path() == creds / "rollwatch_checkpoint-key"
        (creds / "openai").write_text("sk-own-line")
        assert credential_file("openai") == creds / "openai"
        assert credential_file("gemini") is None

    @pytest.mark.parametrize("name", ["../creds/rollwatch_openai", "", ".", "..", "x/../openai"])
    def test_names_never_leave_the_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
    ) -> None:
        """A credential name with a slash, or a dot name, is never looked up in the folder."""
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "rollwatch_openai").write_text("sk")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        assert credential_file(name) is None

    def test_a_service_reads_keys_from_the_folder(self, tmp_path: Path) -> None:
        """A real ``rollwatch`` process with CREDENTIALS_DIRECTORY as systemd sets it: the provider
        whose key is in the folder can run its schedule; the one whose key is not cannot, and
        the reason names where the key was looked for; the key never appears in the output."""
        creds = tmp_path / "creds"
        creds.mkdir(mode=0o700)
        (creds / "rollwatch_openai").write_text("sk-test-folder-key-0123456789\n")
        cfg = tmp_path / "rollwatch.toml"
        cfg.write_text(
            f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n'
            f'[[problem_sets]]\nname = "favorites"\npath = "{ROOT / "config" / "problems"}"\n'
            '[[providers]]\nname = "openai"\nkind = "openai"\napi_key_file = "openai"\n'
            '[[providers]]\nname = "gemini"\nkind = "gemini"\napi_key_file = "gemini"\n'
            '[[schedules]]\nname = "o"\nprovider = "openai"\nmodels = ["m"]\nproblem_set = "favorites"\nevery = "24h"\n'
            '[[schedules]]\nname = "g"\nprovider = "gemini"\nmodels = ["m"]\nproblem_set = "favorites"\nevery = "24h"\n'
        )
        make_log(tmp_path / "events.db")
        p = rollwatch(
            "--config", str(cfg), "schedules", "list", "--json", env={"CREDENTIALS_DIRECTORY": str(creds)}
        )
        assert p.returncode == 0, p.stderr
        rows = {r["schedule"]: r for r in json.loads(p.stdout)}
        assert rows["o"]["state"] == "active", rows["o"]
        assert rows["g"]["state"] == "cannot run"
        assert str(creds / "gemini") in rows["g"]["why"]
        assert "sk-test-folder-key" not in p.stdout + p.stderr
