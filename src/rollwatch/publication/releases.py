"""Releases as immutable folders: the archive half of ``rollwatch publish export``.

An export directory holds one folder per release period (a calendar month, UTC)::

    releases.json                  the index: every folder, its state, its manifest's SHA-256
    releases.json.sig              a note signed by the log's key: the checkpoint the export was
                                   cut at and the SHA-256 of releases.json (what audit checks
                                   the archive's completeness by)
    superseded.jsonl               released results a re-score later found failing (issue 17)
    LICENSE                        CC BY 4.0, for every file of the export
    releases/2026-11/MANIFEST.json every file of the folder with its SHA-256 and size, the
                                   signed checkpoint the folder was cut at, its state
    releases/2026-11/LICENSE
    releases/2026-11/results-0001.jsonl   the results one export added (with proof bundles)
    releases/2026-11/rollouts/ID.json     one result (what the feeds' links point at)

A result belongs to the month of its public date (its ``not_before``: when its embargo
ended). A folder is *closed* by the first export after its month has ended and never
written again; a result that turns up for a closed month (released late, or visible
only now) goes into the folder of the export's own month, which is still open. An
open folder grows by one ``results-NNNN.jsonl`` per export that adds to it (files are
never rewritten: each chunk's proofs are against the checkpoint of its own export),
so an export costs in proportion to what is new, not to the archive.

A closed folder's bytes never change, so a re-score that supersedes one of its results
is marked elsewhere: in ``superseded.jsonl`` and in the top-level copy of the result
(``rollouts/ID.json``, which the live ``/public/rollouts/ID.json`` matches).

Crash safety: every file is written to a temporary name and renamed; a folder's
files are in place before its manifest lists them, the manifests before the index.
``releases.json`` names only closed folders' manifest hashes (an open folder's
manifest changes with each export), so an export killed at any point leaves the
previous export whole; the next one removes what the killed one left unlisted.

Every file is reached relative to a descriptor of its folder, opened ``O_NOFOLLOW`` when the
export checks DIR and held to its end (:class:`Dir`): a folder swapped for a symbolic link
meanwhile is never followed out of DIR.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote

from rollwatch.errors import UsageError
from rollwatch.integrity.audit import EXPORT_MARK

FORMAT = "rollwatch-releases/1"
MANIFEST_FORMAT = "rollwatch-release/1"
INDEX = "releases.json"
INDEX_SIG = "releases.json.sig"
MANIFEST = "MANIFEST.json"
RESULTS = "results.jsonl"
SUPERSEDED = "superseded.jsonl"
LICENSE = "LICENSE"

LICENCE = {
    "id": "CC-BY-4.0",
    "name": "Creative Commons Attribution 4.0 International",
    "url": "https://creativecommons.org/licenses/by/4.0/",
    "file": LICENSE,
}
LICENCE_TEXT = """\
The results in this directory (every file of it) are licensed under the
Creative Commons Attribution 4.0 International licence (CC BY 4.0):
https://creativecommons.org/licenses/by/4.0/legalcode

You may share and adapt them for any purpose, even commercially, if you give
appropriate credit (name this release and link to it), link to the licence,
and indicate if changes were made.

The answers quoted in the results were produced by the models named in them;
their providers' terms may apply to those texts as well.
"""


def period_of(ts: float) -> str:
    """The release period (``YYYY-MM``, UTC) of a public date given as epoch seconds."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def period_end(period: str) -> datetime:
    """When ``period`` (``YYYY-MM``) ends: the first instant of the next month, UTC."""
    year, month = (int(x) for x in period.split("-"))
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MB blocks."""
    with path.open("rb") as f:
        return _sha256(f)


def _sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while block := f.read(1 << 20):
        h.update(block)
    return h.hexdigest()


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class Dir:
    """A folder of the export held open by a descriptor, from the export's check of DIR to its end.

    Every file an export reads, creates, replaces, links or removes is reached by one name
    relative to one of these (``os.open(name, dir_fd=...)``, ``os.replace(...,
    src_dir_fd=..., dst_dir_fd=...)``), and each folder is opened once, ``O_NOFOLLOW``, from
    its parent's descriptor, then kept (:meth:`sub`). Someone who may write in DIR and swaps
    a folder for a symbolic link afterwards (the real one renamed away) is not followed: the
    export goes on in the folder it opened. ``path`` is for messages; nothing is opened by it.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self._subs: dict[str, Dir] = {}

    @classmethod
    def of(cls, path: Path) -> Dir:
        """DIR itself, as its owner names it (a link given as DIR is followed, once); made when missing."""
        path.mkdir(parents=True, exist_ok=True)
        return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY), path)

    def close(self) -> None:
        """Close this folder's descriptor and every one held under it."""
        for d in self._subs.values():
            d.close()
        self._subs.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @contextmanager
    def _named(self, name: str) -> Iterator[None]:
        """An error names the file by its path (one line of the CLI says which), not by ``name``."""
        try:
            yield
        except OSError as e:
            e.filename = str(self.path / name)
            raise

    def sub(self, rel: str, *, create: bool = False) -> Dir:
        """The folder ``rel`` (``a`` or ``a/b/c``) under this one, held from its first use on;
        made first when ``create``. FileNotFoundError when it is not there; a symbolic link
        there is refused, a file there is a NotADirectoryError."""
        name, _, rest = rel.partition("/")
        d = self._subs.get(name)
        if d is None:
            if name in ("", ".", ".."):
                raise UsageError(f"{self.path / rel}: not a name inside the export")
            with self._named(name):
                if create:
                    with suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=self.fd)
                try:
                    fd = os.open(name, _FOLDER, dir_fd=self.fd)
                except OSError as e:
                    if e.errno in (errno.ENOTDIR, errno.ELOOP) and self.is_link(name):
                        raise UsageError(
                            f"{self.path / name}: a symbolic link in the export; an export writes"
                            " only inside its folder, remove it"
                        ) from None
                    raise
            d = self._subs[name] = Dir(fd, self.path / name)
        return d.sub(rest, create=create) if rest else d

    def find(self, name: str) -> Dir | None:
        """The folder ``name`` here held (see :meth:`sub`), or None when there is none."""
        try:
            return self.sub(name)
        except FileNotFoundError:
            return None

    def drop(self, name: str) -> None:
        """Stop holding the folder ``name`` (a closed release's: only ever read again)."""
        d = self._subs.pop(name, None)
        if d is not None:
            d.close()

    def split(self, rel: str, *, create: bool = False) -> tuple[Dir, str]:
        """The folder holding ``rel`` (``rollouts/ID.json``, ``tile/0/000``) and the file's own name."""
        head, _, name = rel.rpartition("/")
        return (self.sub(head, create=create) if head else self), name

    def names(self) -> list[str]:
        """The names of this folder's entries, sorted."""
        return sorted(os.listdir(self.fd))

    def folders(self) -> list[str]:
        """The entries that are folders, or symbolic links to one (which :meth:`sub` refuses)."""
        with os.scandir(self.fd) as it:
            return sorted(e.name for e in it if e.is_dir())

    def links(self) -> list[str]:
        """The entries that are symbolic links."""
        with os.scandir(self.fd) as it:
            return sorted(e.name for e in it if e.is_symlink())

    def lstat(self, name: str) -> os.stat_result:
        with self._named(name):
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def exists(self, name: str) -> bool:
        try:
            self.lstat(name)
        except FileNotFoundError:
            return False
        return True

    def is_link(self, name: str) -> bool:
        try:
            return stat.S_ISLNK(self.lstat(name).st_mode)
        except OSError:
            return False

    def open(self, name: str, flags: int, mode: int = 0o644) -> int:
        """``os.open`` of ``name`` here, never through a symbolic link at ``name``."""
        with self._named(name):
            return os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=self.fd)

    def reader(self, name: str) -> BinaryIO:
        return os.fdopen(self.open(name, os.O_RDONLY), "rb")

    def read(self, name: str) -> bytes:
        with self.reader(name) as f:
            return f.read()

    def sha256(self, name: str) -> str:
        with self.reader(name) as f:
            return _sha256(f)

    def create(self, name: str) -> BinaryIO:
        """A new file ``name``: what is there (a link planted at the name) is removed, never
        written through, and the file made with ``O_EXCL``."""
        self.unlink(name)
        return os.fdopen(self.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")

    def write_atomic(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``name`` through a temporary name, so no reader sees half a file."""
        with self.create(name + ".tmp") as f:
            f.write(data)
        self.replace(name + ".tmp", name)  # replaces a symbolic link at ``name`` itself, not its target

    def replace(self, src: str, dst: str) -> None:
        with self._named(dst):
            os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str, *, missing_ok: bool = True) -> None:
        try:
            with self._named(name):
                os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def link(self, name: str, dst: Dir, dst_name: str) -> None:
        """``dst_name`` in ``dst`` a hard link to ``name`` here (one copy on disk for both names),
        else a copy; atomically."""
        tmp = dst_name + ".tmp"
        dst.unlink(tmp)
        try:
            os.link(name, tmp, src_dir_fd=self.fd, dst_dir_fd=dst.fd, follow_symlinks=False)
        except OSError:
            with self.reader(name) as src, dst.create(tmp) as out:
                shutil.copyfileobj(src, out, 1 << 20)
        dst.replace(tmp, dst_name)

    def files(self, prefix: str = "") -> Iterator[tuple[Dir, str, str]]:
        """Every entry under this folder that is not a folder (links not followed): the folder
        it is in, its name, its path from here."""
        with os.scandir(self.fd) as it:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
        for name, is_dir in entries:
            if is_dir:
                yield from self.sub(name).files(f"{prefix}{name}/")
            else:
                yield self, name, prefix + name


def _json(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def rollout_file(rollout_id: str) -> str:
    """The path of a result's file, relative to a folder (or to the export)."""
    return f"rollouts/{quote(rollout_id, safe='')}.json"


@dataclass
class Folder:
    """One release period's folder and its manifest, as loaded and as being extended."""

    top: Dir
    """DIR, held (the folder is ``releases/PERIOD`` under it)."""
    period: str
    state: str = "open"
    results: int = 0
    checkpoint: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What this export adds: the chunk being written, its hash so far, its results.
    _chunk: Any = None
    _chunk_name: str = ""
    _chunk_hash: Any = None
    _chunk_bytes: int = 0
    _chunk_results: int = 0
    manifest_sha256: str | None = None
    """A closed folder's, as the index names it (read once, when it closed)."""
    manifest_size: int | None = None
    """A closed folder's manifest's size, as the index names it (None: an older index)."""
    changed: bool = False
    wrote: int = 0
    """Files this export wrote here."""
    new_chunk: str | None = None
    """The chunk this export put in place here (appended to the top-level results.jsonl)."""

    @property
    def path(self) -> Path:
        """For messages: the folder is reached by :meth:`dir`."""
        return self.top.path / "releases" / self.period

    def dir(self, *, create: bool = False) -> Dir:
        """The folder, held open (made first when ``create``)."""
        return self.top.sub(f"releases/{self.period}", create=create)

    @classmethod
    def load(cls, top: Dir, period: str) -> Folder:
        """The folder as its manifest describes it (a new, empty one when there is none)."""
        f = cls(top, period)
        try:
            m = json.loads(f.dir().read(MANIFEST))
        except FileNotFoundError:
            return f
        except ValueError as e:
            raise UsageError(
                f"{f.path / MANIFEST}: not a release manifest ({e}); restore it from a copy"
            ) from None
        try:
            f.state, f.results, f.checkpoint = m["state"], int(m["results"]), m.get("checkpoint")
            f.chunks, f.files = list(m["chunks"]), dict(m["files"])
        except (TypeError, KeyError, ValueError) as e:
            raise UsageError(
                f"{f.path / MANIFEST}: not a release manifest (bad or missing {e}); restore it from a copy"
            ) from None
        _check_names(f.path / MANIFEST, m)
        return f

    def check_files(self) -> None:
        """Refuse an open folder whose listed files are gone or changed in size (someone edited
        the export): a later export would list them in its manifest as if they were intact."""
        d = self.dir()
        for rel, meta in self.files.items():
            p = self.path / rel
            try:
                where, name = d.split(rel)
                st = where.lstat(name)
            except FileNotFoundError:
                raise UsageError(
                    f"{p}: missing, but its folder's {MANIFEST} lists it; restore it from a copy"
                ) from None
            if not stat.S_ISREG(st.st_mode) or st.st_size != meta["bytes"]:
                raise UsageError(
                    f"{p}: not the file its folder's {MANIFEST} lists (edited or replaced); restore it from a copy"
                )

    def add(self, rollout_id: str, record: bytes, line: bytes) -> tuple[Dir, str]:
        """Write one result's file and append its line to this export's chunk; return the file
        (its folder, its name)."""
        assert self.state == "open", f"release {self.period} is closed"
        d = self.dir(create=True)
        if self._chunk is None:
            d.sub("rollouts", create=True)
            if LICENSE not in self.files:
                d.write_atomic(LICENSE, LICENCE_TEXT.encode())
                self._listed(LICENSE, LICENCE_TEXT.encode())
                self.wrote += 1
            self._chunk_name = f"results-{len(self.chunks) + 1:04d}.jsonl"
            # Made as every file is: a link planted at this name since DIR was checked (its
            # name is told by the public manifest) is removed, never written through.
            self._chunk = d.create(self._chunk_name + ".tmp")
            self._chunk_hash = hashlib.sha256()
            self.changed = True
        rel = rollout_file(rollout_id)
        where, name = d.split(rel)
        where.write_atomic(name, record)
        self._listed(rel, record)
        self.wrote += 1
        self._chunk.write(line)
        self._chunk_hash.update(line)
        self._chunk_bytes += len(line)
        self._chunk_results += 1
        return where, name

    def _listed(self, rel: str, data: bytes) -> None:
        self.files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    def finish(self, checkpoint: dict[str, Any] | None, close: bool, through_seq: int) -> None:
        """Put this export's chunk in place, close the folder when asked, then write the manifest."""
        if self._chunk is not None:
            self._chunk.close()
            self.dir().replace(self._chunk_name + ".tmp", self._chunk_name)
            self.files[self._chunk_name] = {
                "sha256": self._chunk_hash.hexdigest(),
                "bytes": self._chunk_bytes,
            }
            self.chunks.append(
                {
                    "file": self._chunk_name,
                    "results": self._chunk_results,
                    "through_seq": through_seq,
                    "checkpoint": checkpoint,
                }
            )
            self.results += self._chunk_results
            self.checkpoint = checkpoint
            self.new_chunk = self._chunk_name
            self._chunk = None
            self.wrote += 1
        if close and self.state == "open":
            self.state = "closed"
            self.changed = True
        if self.changed:
            self.dir().write_atomic(MANIFEST, self.manifest_bytes())
            self.wrote += 1

    def abandon(self) -> None:
        """Drop this export's unfinished chunk (an error stopped the export)."""
        if self._chunk is not None:
            self._chunk.close()
            self.dir().unlink(self._chunk_name + ".tmp")
            self._chunk = None

    def manifest_bytes(self) -> bytes:
        return (
            json.dumps(
                {
                    "format": MANIFEST_FORMAT,
                    "period": self.period,
                    "state": self.state,
                    "licence": LICENCE,
                    "results": self.results,
                    "checkpoint": self.checkpoint,
                    "chunks": self.chunks,
                    "files": dict(sorted(self.files.items())),
                },
                ensure_ascii=False,
                indent=1,
            ).encode()
            + b"\n"
        )

    def roll_back(self, exported_seq: int) -> None:
        """Forget what an export killed before writing the index added here (its chunks cut
        after ``exported_seq``, the results in them, a close): the next export redoes it."""
        keep = [c for c in self.chunks if c["through_seq"] <= exported_seq]
        for c in self.chunks[len(keep) :]:
            try:
                lines = self.dir().read(c["file"]).splitlines()
            except FileNotFoundError:
                lines = []
            for line in lines:
                self.files.pop(rollout_file(json.loads(line)["rollout_id"]), None)
            self.files.pop(c["file"], None)
        if keep != self.chunks or self.state != "open":
            self.changed = True
        self.chunks, self.state = keep, "open"
        self.results = sum(c["results"] for c in keep)
        self.checkpoint = keep[-1]["checkpoint"] if keep else None

    def sweep(self) -> int:
        """Remove files a killed export left here that the manifest does not list; return how many."""
        removed = 0
        try:
            d = self.dir()
        except FileNotFoundError:
            return 0
        for where, name, rel in d.files():
            if rel != MANIFEST and rel not in self.files:
                where.unlink(name)
                removed += 1
        return removed


@dataclass
class Archive:
    """The release folders of one export directory and the index that points at them."""

    root: Path
    top: Dir
    """DIR, held open for the whole export; every file is reached through it (see :class:`Dir`).
    It holds the directory's export lock too (see :meth:`open`, :meth:`close`)."""
    folders: dict[str, Folder] = field(default_factory=dict)
    exported_seq: int = 0
    """Every result released at or before this seq (and public at ``exported_at``) is in a folder."""
    exported_at: float = 0.0
    held_from: int | None = None
    """The lowest released seq that was not yet public at the last export (a release ahead
    of its ``not_before`` by this clock): the next export looks again from there."""
    superseded: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: str | None = None
    """The hash of the first event of the log the last export was of (None: an older index)."""
    results_bytes: int | None = None
    """The length of the top-level results.jsonl the last complete export left (None: an
    index that does not say, so the file is made again from every chunk)."""

    @classmethod
    def open(cls, root: Path) -> Archive:
        """The archive as the last complete export left it; cleans up after a killed one.

        Holds an exclusive lock on the directory until :meth:`close`: a second export of the
        same directory at the same time is refused (it would take the first one's unfinished
        files for a killed export's and remove them)."""
        a = cls(root, Dir.of(root))
        try:
            fcntl.flock(a.top.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the lock is on the directory itself
        except BlockingIOError:
            a.close()
            raise UsageError(
                f"{root}: another export is writing this folder; wait for it to finish"
            ) from None
        try:
            a._load()
        except BaseException:
            a.close()
            raise
        return a

    def close(self) -> None:
        """Let the next export in (every folder's descriptor closed, the lock with DIR's)."""
        self.top.close()

    def _load(self) -> None:
        a, root, top = self, self.root, self.top
        _hold_folders(top)
        try:
            index = json.loads(top.read(INDEX))
        except FileNotFoundError:
            index = None
        except ValueError as e:
            raise UsageError(
                f"{root / INDEX}: not a rollwatch release index ({e}); export to another folder"
            ) from None
        closed: dict[str, tuple[int, str | None, int | None]] = {}
        # No export made a folder without an index and no export in progress: its files (an
        # index.html, a LICENSE, a feed.json, anything.tmp of someone else's) would be
        # overwritten or swept.
        others = top.names()
        if index is None and others and not top.exists(EXPORT_MARK):
            raise UsageError(
                f"{root}: not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) and"
                f" no export made it (no {INDEX}); export into an empty folder or one an export made"
            )
        if index is not None:
            if not isinstance(index, dict) or index.get("format") != FORMAT:
                raise UsageError(
                    f"{root / INDEX}: not a rollwatch release index (format {FORMAT!r}); export to another folder"
                )
            try:
                a.exported_seq = int(index["exported_seq"])
                a.exported_at = float(index["exported_at"])
                a.held_from = index.get("held_from")
                a.log = index.get("log")
                a.results_bytes = index.get("results_jsonl_bytes")
                closed = {
                    str(e["period"]): (int(e["results"]), e.get("manifest_sha256"), e.get("manifest_bytes"))
                    for e in index["releases"]
                    if e["state"] == "closed"
                }
            except (KeyError, TypeError, ValueError) as e:
                raise UsageError(
                    f"{root / INDEX}: not a rollwatch release index (bad or missing {e}); restore it from a copy"
                ) from None
        # A closed folder is never read again (the index has what we need of it); the
        # others as their manifests say, less what an export killed before the index
        # was written added to them.
        killed = index is None or top.exists(EXPORT_MARK)
        base = top.find("releases")
        if base is not None:
            for name in base.folders():
                if not _PERIOD.fullmatch(name):
                    # A copy of a folder (``2026-10.bak``) was listed in the index as a release of
                    # its own, every result in it twice.
                    raise UsageError(
                        f"{base.path / name}: not a release folder (their names are YYYY-MM); move it out of the export"
                    )
                if name in closed:
                    n, sha, size = closed[name]
                    a.folders[name] = Folder(
                        top, name, state="closed", results=n, manifest_sha256=sha, manifest_size=size
                    )
                    continue
                f = a.folders[name] = Folder.load(top, name)
                if killed or any(c["through_seq"] > a.exported_seq for c in f.chunks) or f.state == "closed":
                    # Killed, or an index older than its folders (restored from a backup): what
                    # the index does not cover is filed again, so it was filed twice.
                    f.roll_back(a.exported_seq)
                f.sweep()  # what a killed export (or anyone) left here unlisted is not served
                f.check_files()
        # Closed folders are not read, but one gone or with another manifest is not built on
        # (a stat each: a later folder would be added beside a hole, or the index drop it).
        for period in closed:
            kept = a.folders.get(period)
            manifest = root / "releases" / period / MANIFEST
            try:
                size = top.sub(f"releases/{period}").lstat(MANIFEST).st_size
            except FileNotFoundError:
                raise UsageError(
                    f"{manifest}: missing, but {INDEX} lists release {period} as closed; restore it from a copy"
                ) from None
            if kept is None or (kept.manifest_size is not None and size != kept.manifest_size):
                raise UsageError(
                    f"{manifest}: not the manifest {INDEX} names for release {period} (edited); restore it from a copy"
                )
            # Only read from now on, and opened again then (O_NOFOLLOW again): a descriptor less each.
            top.sub("releases").drop(period)
        for name in top.names():
            if name.endswith(".tmp"):
                top.unlink(name)
        top.create(EXPORT_MARK).close()  # a hard link there is removed, not truncated through
        try:
            for line in top.read(SUPERSEDED).splitlines():
                row = json.loads(line)
                a.superseded[row["rollout_id"]] = row
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, KeyError):
            a.superseded = {}  # rewritten whole by this export, every mark counted as changed

    def folder_for(self, not_before_ts: float, now: datetime) -> Folder:
        """The open folder a result public from ``not_before_ts`` goes in."""
        period = period_of(not_before_ts)
        f = self.folders.get(period) or self.folders.setdefault(period, Folder(self.top, period))
        if f.state == "closed":
            period = now.strftime("%Y-%m")
            f = self.folders.get(period) or self.folders.setdefault(period, Folder(self.top, period))
        return f

    def add(self, rollout_id: str, not_before_ts: float, now: datetime, record: bytes, line: bytes) -> None:
        """File one new result in its folder, and link it at the top (``rollouts/ID.json``)."""
        where, name = self.folder_for(not_before_ts, now).add(rollout_id, record, line)
        where.link(name, self.top.sub("rollouts", create=True), name)

    def write(self, rel: str, data: bytes) -> None:
        """Write (replace) the file ``rel`` of DIR (``feed.json``, ``rollouts/ID.json``, ``tile/0/000``),
        its folders made as needed; through DIR's descriptor, see :class:`Dir`."""
        where, name = self.top.split(rel, create=True)
        where.write_atomic(name, data)

    def relink_missing(self) -> list[str]:
        """Put back the top-level copies (``rollouts/ID.json``) someone deleted: linked again to
        their folder's copy. Only when ``rollouts/`` holds fewer files than the archive has
        results (a listing, no read, when nothing is missing); returns the ids put back."""
        top = self.top.find("rollouts")
        have = {n for n in top.names() if not n.endswith(".tmp")} if top is not None else set()
        if len(have) >= sum(f.results for f in self.folders.values()):
            return []
        back = []
        for f in self.folders.values():
            files = f.files if f.state == "open" else _closed_manifest(f)["files"]
            for rel in files:
                name = rel.removeprefix("rollouts/")
                if name != rel and name not in have:
                    f.dir().sub("rollouts").link(name, self.top.sub("rollouts", create=True), name)
                    back.append(unquote(name.removesuffix(".json")))
        return back

    def finish(self, now: datetime, checkpoint: dict[str, Any] | None, through_seq: int) -> list[Folder]:
        """Put every chunk in place and close the folders whose month has ended; return the open ones."""
        for f in self.folders.values():
            if f.state == "open":
                f.finish(checkpoint, close=period_end(f.period) <= now, through_seq=through_seq)
        return [f for f in self.folders.values() if f.state == "open"]

    def abandon(self) -> None:
        for f in self.folders.values():
            f.abandon()

    def append_results(self, out: str = RESULTS) -> int:
        """Append this export's chunks to DIR's ``out`` (every filed result, one line each, in
        the order exports filed them); return its size. The file only grows: what a killed
        export appended past the length the index records is cut off first, so each
        export costs what it adds, not the archive."""
        top = self.top
        try:
            st: os.stat_result | None = top.lstat(out)
        except FileNotFoundError:
            st = None
        if (
            self.results_bytes is None
            or st is None
            or not stat.S_ISREG(st.st_mode)
            or st.st_size < self.results_bytes
        ):
            # Made again from every folder's chunks, as their manifests list them (not a file
            # someone put beside them): an old index, or a results.jsonl deleted or cut short.
            start = 0
            sources = []
            for f in sorted(self.folders.values(), key=lambda f: f.period):
                chunks = f.chunks
                if f.state == "closed":
                    chunks = _closed_manifest(f)["chunks"]
                sources += [(f.dir(), c["file"]) for c in chunks]
        else:
            start = self.results_bytes
            sources = [
                (f.dir(), f.new_chunk)
                for f in sorted(self.folders.values(), key=lambda f: f.period)
                if f.new_chunk is not None
            ]
        fd = top.open(out, os.O_RDWR | os.O_CREAT)
        if os.fstat(fd).st_nlink > 1:
            # A hard link to a file outside DIR too (a ``cp -al`` backup of DIR, a link planted
            # there): appended to in place, that file grew with this export. A copy of our own first.
            os.close(fd)
            with top.reader(out) as src, top.create(out + ".tmp") as copy:
                shutil.copyfileobj(src, copy, 1 << 20)
            top.replace(out + ".tmp", out)
            fd = top.open(out, os.O_RDWR)
        with os.fdopen(fd, "r+b") as dst:
            dst.truncate(start)
            dst.seek(start)
            for d, chunk in sources:
                with d.reader(chunk) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
            size = dst.tell()
            dst.flush()
            os.fsync(dst.fileno())
        self.results_bytes = size
        return size

    def write_index(
        self,
        *,
        now: datetime,
        exported_seq: int,
        held_from: int | None,
        tree_size: int,
        log: str | None = None,
        sign: Callable[[str], str] | None = None,
    ) -> None:
        """The top-level index, written last; then the export is complete.

        ``sign``: the signed note of the index's SHA-256 (see
        :func:`rollwatch.integrity.checkpoint.release_statement`), written beside it as
        ``releases.json.sig``; without it (no key or no checkpoint at hand) an older one is
        removed, so the index is plainly unsigned rather than signed as something else."""
        releases = []
        for f in sorted(self.folders.values(), key=lambda f: f.period):
            if not f.results:
                continue
            entry: dict[str, Any] = {
                "period": f.period,
                "path": f"releases/{f.period}/",
                "state": f.state,
                "results": f.results,
                "manifest": f"releases/{f.period}/{MANIFEST}",
            }
            if f.state == "closed":
                f.manifest_sha256 = f.manifest_sha256 or f.dir().sha256(MANIFEST)
                entry["manifest_sha256"] = f.manifest_sha256
                if f.manifest_size is None:
                    f.manifest_size = f.dir().lstat(MANIFEST).st_size
                entry["manifest_bytes"] = f.manifest_size
            else:
                # The open folder's manifest as this export left it: signed with the index, its
                # chunks (and so every line) are committed to until the next export.
                entry["manifest_sha256"] = f.dir().sha256(MANIFEST)
                entry["manifest_bytes"] = f.dir().lstat(MANIFEST).st_size
            releases.append(entry)
        superseded = self.top.sha256(SUPERSEDED) if self.top.exists(SUPERSEDED) else None
        index = {
            "format": FORMAT,
            "generated_at": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "period": "month",
            "licence": LICENCE,
            "tree_size": tree_size,
            "results": sum(r["results"] for r in releases),
            "open_results": "results.jsonl",
            "superseded": SUPERSEDED,
            # Signed with the index: a mark removed on the host makes a re-scored pass a pass again.
            "superseded_sha256": superseded,
            "releases": releases,
            "exported_seq": exported_seq,
            "exported_at": now.timestamp(),
            "held_from": held_from,
            "results_jsonl_bytes": self.results_bytes,
            # The log exported (its first event's hash): an export of another log is refused.
            "log": log,
        }
        top = self.top
        top.write_atomic(LICENSE, LICENCE_TEXT.encode())
        body = json.dumps(index, ensure_ascii=False, indent=1).encode() + b"\n"
        top.write_atomic(INDEX, body)
        if sign is not None:
            top.write_atomic(INDEX_SIG, sign(hashlib.sha256(body).hexdigest()).encode())
        else:
            top.unlink(INDEX_SIG)
        top.unlink(EXPORT_MARK)

    def write_superseded(self, rows: Iterable[dict[str, Any]]) -> set[str]:
        """Write ``superseded.jsonl``; return the ids whose mark changed since the last export."""
        now = {r["rollout_id"]: r for r in rows}
        changed = {
            rid for rid in now.keys() | self.superseded.keys() if now.get(rid) != self.superseded.get(rid)
        }
        if changed or not self.top.exists(SUPERSEDED):
            self.top.write_atomic(SUPERSEDED, b"".join(_json(r) + b"\n" for r in now.values()))
        self.superseded = now
        return changed


_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
_CHUNK = re.compile(r"results-[0-9]{4,}\.jsonl")
_RESULT = re.compile(r"rollouts/[^/\\\x00]+\.json")


def _check_names(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse a manifest naming a file an export never writes (``../../events.db``, a path out of
    its folder): its chunks are copied into the public ``results.jsonl`` and its results linked
    at the top, so a name edited into it would publish, or overwrite, a file outside DIR."""
    names = [c.get("file") if isinstance(c, dict) else c for c in manifest["chunks"]]
    for c, name in zip(manifest["chunks"], names, strict=True):
        if (
            not isinstance(c, dict)
            or not isinstance(name, str)
            or not _CHUNK.fullmatch(name)
            or not isinstance(c.get("through_seq"), int)
            or not isinstance(c.get("results"), int)
        ):
            raise UsageError(
                f"{path}: not a release manifest (chunk {name!r} is not a results-NNNN.jsonl of its folder);"
                " restore it from a copy"
            )
    for name in manifest["files"]:
        if not (name == LICENSE or name in names or _RESULT.fullmatch(name)):
            raise UsageError(
                f"{path}: not a release manifest (file {name!r} is not one an export writes in its folder);"
                " restore it from a copy"
            )


def _closed_manifest(folder: Folder) -> dict[str, Any]:
    """A closed folder's manifest, its names checked (see :func:`_check_names`)."""
    path = folder.path / MANIFEST
    try:
        m = json.loads(folder.dir().read(MANIFEST))
        _check_names(path, m)
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise UsageError(f"{path}: not a release manifest ({e}); restore it from a copy") from None
    return m  # type: ignore[no-any-return]


def _hold_folders(top: Dir) -> None:
    """Open every folder an export writes in, and hold it for the whole export (see :class:`Dir`):
    ``releases/``, each release folder and its ``rollouts/``, ``rollouts/``, ``tile/`` and every
    folder under it. Each is opened ``O_NOFOLLOW`` from its parent's descriptor, so a symbolic
    link there (it could point outside DIR) is refused, and one swapped in later is never
    followed. A symbolic link among the entries of DIR, ``releases/`` or a release folder is
    refused too. (Files an export writes are replaced, never written through, wherever they are.)"""
    listed = [top]  # folders whose every entry is checked: a few entries each
    top.find("rollouts")
    if (tile := top.find("tile")) is not None:
        _hold_all(tile)
    if (releases := top.find("releases")) is not None:
        listed.append(releases)
        for name in releases.folders():
            folder = releases.sub(name)
            listed.append(folder)
            folder.find("rollouts")
    for d in listed:
        if links := d.links():
            raise UsageError(
                f"{d.path / links[0]}: a symbolic link in the export; an export writes only inside its folder,"
                " remove it"
            )


def _hold_all(d: Dir) -> None:
    for name in d.folders():
        _hold_all(d.sub(name))


@dataclass(frozen=True)
class Problem:
    """One thing :func:`check_export` found wrong."""

    path: str
    what: str


def check_export(root: Path) -> list[Problem]:
    """Check an export directory as a mirror or an auditor would: every manifest's files are
    there with their SHA-256, every closed folder's manifest has the hash the index names,
    and no closed folder holds a file its manifest does not list."""
    out: list[Problem] = []
    try:
        index = json.loads((root / INDEX).read_bytes())
    except (OSError, ValueError) as e:
        return [Problem(INDEX, f"unreadable: {e}")]
    for entry in index["releases"]:
        folder = root / entry["path"]
        mpath = root / entry["manifest"]
        try:
            raw = mpath.read_bytes()
            manifest = json.loads(raw)
        except (OSError, ValueError) as e:
            out.append(Problem(entry["manifest"], f"unreadable: {e}"))
            continue
        # An open folder's manifest hash holds until the next export rewrites the manifest (a
        # killed one leaves it ahead of the index until the one after): only closed ones here.
        want = entry.get("manifest_sha256") if entry.get("state") == "closed" else None
        if want is not None and hashlib.sha256(raw).hexdigest() != want:
            out.append(Problem(entry["manifest"], "SHA-256 differs from the index's"))
        for rel, meta in manifest["files"].items():
            p = folder / rel
            if not p.is_file():
                out.append(Problem(entry["path"] + rel, "listed but missing"))
            elif sha256_file(p) != meta["sha256"]:
                out.append(Problem(entry["path"] + rel, "SHA-256 differs from the manifest's"))
        if manifest["state"] == "closed":
            for p in folder.rglob("*"):
                rel = p.relative_to(folder).as_posix()
                if p.is_file() and rel != MANIFEST and rel not in manifest["files"]:
                    out.append(Problem(entry["path"] + rel, "in a closed folder but not in its manifest"))
    return out
