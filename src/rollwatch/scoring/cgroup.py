"""A cgroup v2 per sandbox slot: memory, swap and processes counted for the whole sample.

rlimits are per process: six processes under ``RLIMIT_AS = 1 GB`` hold 6 GB, and
the files a sample writes to its tmpfs count against none of them. A cgroup counts
everything the slot's processes hold (anonymous memory, tmpfs pages, kernel memory
such as inodes) and every process and thread they start. A slot runs one sample at
a time, so its cgroup is that sample plus the resident zygote (a constant
``ZYGOTE_MB`` of headroom).

Where it comes from: the cgroup v2 hierarchy (``cgroup2`` in /proc/self/mountinfo),
at the cgroup this process is in (/proc/self/cgroup ``0::``). Under systemd the
unit asks for ``Delegate=yes``, so that cgroup is ours; because a cgroup with
processes in it cannot hand controllers to children, the daemon first moves itself
into a leaf (``daemon``) when it is alone there. Each process then makes
``rollwatch-<pid>/slot-<n>`` with ``memory.max``, ``memory.swap.max = 0`` and
``pids.max``; the sandbox's launcher joins it before anything else starts
(``SlotCgroup.argv``), as do the one-shot sandboxes a ``command`` checker starts
for that slot, and ``cgroup.kill`` takes the whole slot down when its sandbox goes.

Where the hierarchy is missing, read-only, or lacks the memory or pids controller
(a host that binds them to cgroup v1), what is missing is said once at start
(``scoring_cgroups`` in the log) and the rlimits remain: see ``Cgroups.enforced``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from rollwatch.log import get_logger

log = get_logger(__name__)

WANTED = ("memory", "pids")
ZYGOTE_MB = 64
"""Memory the resident zygote holds on top of the sample's limit (its heap and preloads)."""
EXTRA_PIDS = 4
"""Processes of the sandbox itself in a slot's cgroup: the launcher, bwrap or unshare, their init, the zygote."""


def _cgroup2_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            found.append(Path(left.split()[4]))
    # A pure cgroup v2 host mounts it at /sys/fs/cgroup; a hybrid one at .../unified.
    found.sort(key=lambda p: (p != Path("/sys/fs/cgroup"), len(str(p))))
    return found[0] if found else None


def _own_cgroup() -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:].strip() or "/"
    except OSError:
        pass
    return None


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


@dataclass
class Cgroups:
    """This process's place for slot cgroups, and which limits they enforce."""

    root: Path | None
    """``<our cgroup>/rollwatch-<pid>``, or None: no usable cgroup v2 here."""
    controllers: frozenset[str] = frozenset()
    why_not: str = ""
    """What is missing, when not every wanted controller is there."""
    _names: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def enforced(self) -> list[str]:
        """The per-sample limits a slot cgroup adds to the rlimits."""
        out = []
        if self.root is not None:
            out.append("cgroup.kill")
        if "memory" in self.controllers:
            out += ["memory.max (whole sample)", "memory.swap.max"]
        if "pids" in self.controllers:
            out.append("pids.max (whole sample)")
        return out

    def tidy(self) -> None:
        """Remove this process's folder once no slot is left in it (another pool may still use it)."""
        if self.root is not None:
            with contextlib.suppress(OSError):
                self.root.rmdir()

    def new_slot(self, memory_mb: int, processes: int, name: str | None = None) -> SlotCgroup | None:
        """A cgroup for one sandbox (``name``, again, or a fresh one), limits set; None without cgroups."""
        if self.root is None:
            return None
        path = self.root / (name or f"slot-{next(self._names)}")
        try:
            try:
                self.root.mkdir()  # again, after tidy() removed it
                if self.controllers:
                    _write(self.root / "cgroup.subtree_control", " ".join("+" + c for c in self.controllers))
            except FileExistsError:
                pass
            path.mkdir(exist_ok=name is not None)
            if "memory" in self.controllers:
                _write(path / "memory.max", str((memory_mb + ZYGOTE_MB) * 1024 * 1024))
                with contextlib.suppress(FileNotFoundError):  # no swap accounting in this kernel
                    _write(path / "memory.swap.max", "0")
            if "pids" in self.controllers:
                _write(path / "pids.max", str(processes + EXTRA_PIDS))
        except OSError as e:
            log.warning("cgroup_slot_failed", path=str(path), error=str(e))
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return SlotCgroup(path)


@dataclass
class SlotCgroup:
    """One sandbox's cgroup."""

    path: Path

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` started inside this cgroup: a shell joins it, then becomes ``argv``."""
        return ["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, wherever it moved to inside the sandbox."""
        try:
            _write(self.path / "cgroup.kill", "1")
        except FileNotFoundError:  # before Linux 5.14: one by one
            for _ in range(100):
                pids = self.pids()
                if not pids:
                    return
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
        except OSError:
            pass

    def cpu_starved_us(self) -> int | None:
        """Microseconds (since the cgroup was made) during which the slot had work ready to
        run and none of it ran: its CPU was busy with processes outside it (pressure stall
        information, ``cpu.pressure``'s ``full`` line); None where the kernel has no PSI.

        Contention among the slot's own processes (a sample's busy children) is never
        counted: one of them is running then. A pseudo-file the kernel answers at once.
        """
        try:
            with open(self.path / "cpu.pressure", "rb") as f:
                text = f.read()
        except OSError:  # no PSI (psi=0, an older kernel), or the cgroup is gone
            return None
        for line in text.splitlines():
            if line.startswith(b"full "):
                for field in line.split():
                    if field.startswith(b"total="):
                        return int(field[6:])
        return None

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def empty(self, within: float = 5.0) -> None:
        """Kill every process in it and wait until they are gone (blocking: a worker thread's job)."""
        self.kill()
        deadline = time.monotonic() + within
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.01)

    def remove(self, within: float = 5.0) -> None:
        """Kill what is left and remove the cgroup (blocking: a worker thread's job)."""
        self.kill()
        deadline = time.monotonic() + within
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    log.warning("cgroup_not_removed", path=str(self.path))
                    return
                time.sleep(0.01)


_detected: Cgroups | None = None


def cgroups() -> Cgroups:
    """This process's slot cgroups (found once, then cached); logs what they enforce."""
    global _detected
    if _detected is None:
        _detected = _detect()
        log.info(
            "scoring_cgroups",
            root=str(_detected.root) if _detected.root else None,
            enforced=_detected.enforced,
            missing=_detected.why_not or None,
        )
    return _detected


def _detect() -> Cgroups:
    mount = _cgroup2_mount()
    own = _own_cgroup()
    if mount is None or own is None:
        return Cgroups(None, why_not="no cgroup v2 hierarchy is mounted")
    here = mount / own.lstrip("/")
    if not os.access(here, os.W_OK) or not os.access(here / "cgroup.procs", os.W_OK):
        return Cgroups(None, why_not=f"{here} is not writable (under systemd: Delegate=yes)")
    try:
        available = set((here / "cgroup.controllers").read_text().split())
    except OSError as e:
        return Cgroups(None, why_not=f"cannot read {here}/cgroup.controllers: {e.strerror}")
    wanted = [c for c in WANTED if c in available]
    missing = [c for c in WANTED if c not in available]
    why = f"no {' or '.join(missing)} controller in the cgroup v2 hierarchy at {here}" if missing else ""
    try:
        if wanted:
            _enable(here, wanted)
    except OSError as e:
        return Cgroups(None, why_not=f"cannot set up cgroups under {here}: {e}")
    _sweep(here)
    # The folder itself is made with the first slot (new_slot), and goes with the last.
    return Cgroups(here / f"rollwatch-{os.getpid()}", frozenset(wanted), why)


def _sweep(here: Path) -> None:
    """Remove the empty cgroups of rollwatch processes that died without tidying up (SIGKILL)."""
    for d in here.glob("rollwatch-*"):
        pid = d.name.removeprefix("rollwatch-")
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or its pid reused): not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        # rmdir refuses a cgroup with processes in it: only empty ones go.
        for slot in d.glob("slot-*"):
            with contextlib.suppress(OSError):
                slot.rmdir()
        with contextlib.suppress(OSError):
            d.rmdir()


def _enable(here: Path, wanted: list[str]) -> None:
    """Hand ``wanted`` to ``here``'s children, moving this process to a leaf if it must."""
    control = here / "cgroup.subtree_control"
    enable = " ".join("+" + c for c in wanted)
    try:
        _write(control, enable)
        return
    except OSError as e:
        if e.errno != 16:  # EBUSY: processes in here ("no internal processes")
            raise
    others = [int(p) for p in (here / "cgroup.procs").read_text().split() if int(p) != os.getpid()]
    if others:
        raise OSError(16, f"{here} holds other processes ({len(others)}); give rollwatch a delegated cgroup")
    leaf = here / "daemon"
    leaf.mkdir(exist_ok=True)
    _write(leaf / "cgroup.procs", "0")
    _write(control, enable)
