"""The scoring interfaces and their value types, with their contracts.

    ScoringPool ──leases──▶ Sandbox (one per worker slot: a zygote in bwrap/unshare/none)
        │                       ▲
        └──▶ Scorer (one per kind: function.py, stdio.py, command.py) ──runs samples in──┘

A :class:`Scorer` turns (problem, extracted code) into an :class:`Outcome`, running
the code only through the :class:`Sandbox` it is handed; the pool adds extraction,
timing and isolation and returns a :class:`Score`. Scorers never import each other
or a sandbox implementation.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from rollwatch.problems import Problem

_SCORER_VERSION: str | None = None


def scorer_version() -> str:
    """The version of the scoring code, recorded with every verdict: rollwatch's version
    and a hash of this package's sources (extraction, scorers, sandbox, judge), so two
    verdicts by the same code say so even between releases."""
    global _SCORER_VERSION
    if _SCORER_VERSION is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            release = version("rollwatch")
        except PackageNotFoundError:  # run from a checkout without an install
            release = "0"
        digest = hashlib.sha256()
        root = Path(__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
        _SCORER_VERSION = f"{release}+{digest.hexdigest()[:12]}"
    return _SCORER_VERSION


Isolation = Literal["bwrap", "unshare", "none"]
ISOLATIONS: tuple[Isolation, ...] = ("bwrap", "unshare", "none")


@dataclass(frozen=True, kw_only=True)
class ScoringSettings:
    """How scoring runs; the daemon fills it from the ``[scoring]`` table."""

    workers: int | None = None
    """Samples scored in parallel (one sandbox each); None: the number of cores."""
    require_isolation: bool = True
    """Refuse to score (IsolationUnavailable) without namespace isolation, even with isolation "none"."""
    memory_mb: int = 1024
    """Address-space limit of every sandboxed process."""
    timeout: float = 10.0
    """Seconds per sample when the problem sets none and has no reference solution to
    calibrate from (stdio, command: per run)."""
    time_limit_factor: float = 4.0
    """A problem without a timeout of its own gets this multiple of its reference
    solution's runtime on this machine (EvalPlus's ``gt_time_limit_factor``)..."""
    time_limit_floor: float = 1.0
    """...and at least this many seconds (EvalPlus's ``min_time_limit``)."""
    isolation: Literal["auto", "bwrap", "unshare", "none"] = "auto"
    """auto: bwrap, else unshare (as root); never none, which must be written out."""
    uid_base: int = 60000
    """As root, samples run as uids from ``uid_base``: each pool takes a free range of ``workers`` (see uids.py),
    and their tests (the judge) as those uids + 65536, locked with them."""
    uid_count: int = 1024
    """How many uids from ``uid_base`` rollwatch pools on this host may take."""
    cgroups: bool = True
    """A cgroup v2 per slot where one can be made (memory, swap, processes per sample): see cgroup.py."""
    output_limit_kb: int = 4096
    """Bytes a sample may write to stdout (and, separately, to stderr) before it is killed."""
    file_size_mb: int = 64
    """Largest file a sample may write (RLIMIT_FSIZE)."""
    tmp_size_mb: int = 256
    """Size of each private tmpfs (/tmp, /var/tmp, /dev/shm)."""
    processes: int = 64
    """Processes and threads a sample may have at once (RLIMIT_NPROC of its uid)."""
    open_files: int = 256
    """Open files per process (RLIMIT_NOFILE)."""
    start_timeout: float = 30.0
    """Seconds a sandbox may take to start."""

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 2

    def limits(self, timeout: float) -> dict[str, int]:
        """The rlimits of one sample with this wall-clock ``timeout``."""
        return {
            "memory_mb": self.memory_mb,
            # CPU seconds: the wall clock is the real limit; this one stops a spinning
            # process even if everything else failed.
            "cpu_s": max(1, int(timeout) + 1),
            "processes": self.processes,
            "file_size_mb": self.file_size_mb,
            "open_files": self.open_files,
        }


class _ScoringConfig(Protocol):
    workers: int | None
    require_isolation: bool
    memory_mb: int
    timeout: float


def settings_from_config(config: _ScoringConfig) -> ScoringSettings:
    """The ``[scoring]`` table as settings; keys the table does not have keep their defaults."""
    names = ScoringSettings.__dataclass_fields__
    values = {k: getattr(config, k) for k in names if getattr(config, k, None) is not None}
    values.setdefault("workers", None)
    return ScoringSettings(**values)


@dataclass(frozen=True, kw_only=True)
class Score:
    """The verdict on one answer; ``to_dict`` is what ``RolloutScored`` records, with
    :func:`recorded_detail` of its detail."""

    passed: bool
    score: float
    """0..1: 1.0 when passed; for stdio the share of cases passed; for command the checker's."""
    scorer: str
    reason: str
    """"passed", or why not: "timeout", "memory", "output limit", "wrong answer on case 3 (…)",
    "exception: AssertionError …", "no code found", "killed by signal SIGSEGV", …"""
    detail: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0
    extraction: str = ""
    """How the code was found: fenced-entry-point, fenced-last, whole-text or none."""
    isolation: str = ""
    problem_hash: str = ""
    time_limit_s: float | None = None
    """The time limit the answer ran under (see :class:`TimeLimit`)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "passed": self.passed,
            "score": self.score,
            "scorer": self.scorer,
            "reason": self.reason,
            "detail": self.detail,
            "duration_ms": self.duration_ms,
            "extraction": self.extraction,
            "isolation": self.isolation,
            "problem_hash": self.problem_hash,
            "time_limit_s": self.time_limit_s,
        }


OUTPUT_KEYS = ("stderr_tail", "checker_stdout_tail", "checker_stderr_tail", "checker")
"""The keys of a verdict's detail that carry what ran printed: the candidate's stderr, the
checker's streams, the checker's JSON verdict (which may echo the program's output)."""


def recorded_detail(passed: bool, detail: dict[str, Any]) -> dict[str, Any]:
    """The detail a verdict records in the log: a pass keeps no output (:data:`OUTPUT_KEYS`),
    only its figures and the names of the keys left out (``output_not_kept``).

    A released pass is public with its verdict's bytes (its proof bundle proves the pass by
    them), and what a passing run printed can be the hidden tests: tests that print their
    expected values, a checker that logs each case, a candidate that prints its arguments.
    A failure keeps its tails (what an operator needs to see why), and the public never
    sees a failing verdict's bytes (its proof bundle gives it by leaf hash alone)."""
    if not passed or not any(k in detail for k in OUTPUT_KEYS):
        return detail
    kept = {k: v for k, v in detail.items() if k not in OUTPUT_KEYS}
    kept["output_not_kept"] = [k for k in OUTPUT_KEYS if k in detail]
    return kept


@dataclass(frozen=True, kw_only=True)
class TimeLimit:
    """A problem's time limit on this machine, and where it comes from."""

    seconds: float
    source: Literal["problem", "calibrated", "default"]
    """problem: its own ``timeout``; calibrated: ``time_limit_factor`` times its reference
    solution's runtime measured here, at least ``time_limit_floor``; default:
    ``scoring.timeout`` (no reference, or the reference did not pass)."""
    reference_ms: float | None = None
    """The reference solution's runtime measured here (calibrated only)."""


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What a scorer found: the part of a :class:`Score` that depends on running the code."""

    passed: bool
    score: float
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    starved: bool = False
    """The code ran out of time because the host kept its CPU busy with other work (see
    :meth:`SampleResult.starved`): a sandbox error, which the pool judges again once."""


@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    """One run of candidate code in a sandbox."""

    mode: Literal["function", "program"]
    """function: HumanEval harness (prelude, code, tests, check); program: code as __main__."""
    code: str
    timeout: float
    limits: dict[str, int]
    output_limit: int
    tests: str = ""
    prelude: str = ""
    entry_point: str = ""
    stdin: bytes | None = None
    keep_stdout: bool = False
    """Return the whole stdout (up to ``output_limit``), not just its head."""

    def to_wire(self) -> bytes:
        """The request as the zygote reads it: a frame (4-byte big-endian length, JSON),
        then the code's UTF-8 bytes (``code_bytes`` of them) and the tests' (``tests_bytes``),
        which the zygote keeps out of every object a sample's process could find: a later
        sample is forked from it."""
        import base64
        import json
        import struct

        code = self.code.encode("utf-8", "surrogatepass")
        tests = self.tests.encode("utf-8", "surrogatepass")
        head = {
            "mode": self.mode,
            "code_bytes": len(code),
            "tests_bytes": len(tests),
            "prelude": self.prelude,
            "entry_point": self.entry_point,
            "stdin": base64.b64encode(self.stdin).decode() if self.stdin is not None else None,
            "timeout": self.timeout,
            "limits": self.limits,
            "output_limit": self.output_limit,
            "keep_stdout": self.keep_stdout,
        }
        body = json.dumps(head, separators=(",", ":")).encode()
        return struct.pack(">I", len(body)) + body + code + tests


_SIGNAL_REASONS = {
    "SIGXCPU": "timeout (CPU time limit)",
    "SIGXFSZ": "file size limit",
}


STARVED_SHARE = 0.75
"""A run that times out after its CPU went to processes outside its sandbox for more than
this share of its time is our failure (an overloaded host), not the model's timeout: it
ran at less than a quarter of its speed, and a time limit is four times (the default
``time_limit_factor``) what the reference solution takes on an idle CPU."""


VERDICT_KEYS = {"ok": bool, "kind": str, "reason": str, "stage": str, "test_line": int, "test_source": str}


# How each kind of failure a sample reports is worded (the harness's words; see
# inside/zygote.py). A reason comes from code the candidate can reach (a program's harness
# shares its process; a candidate sends the judge its own load failure or SystemExit), so
# it may say anything: worded as ours ("sandbox lost", "scorer error: …") a wrong answer
# would count as an infra failure, not the model's, and be judged again by `rescore`.
_REASON_WORDING: dict[str, tuple[str, ...]] = {
    "syntax": ("syntax error",),
    "exception": ("exception: ",),
    "entry_point": ("entry point ",),
    "exit": ("exited before the tests finished", "exception: "),
    "memory": (),
    "file_size": (),
    "tampered": ("tampered with ",),
    "unverifiable": ("unverifiable return value",),
}
_LIMIT_WORDS = {"memory": "memory", "file_size": "file size limit"}


def _worded(kind: str, reason: str) -> str:
    """``reason`` as a failure of this ``kind`` is worded: a limit's fixed words, else the
    kind's opening put before a reason that does not start with it."""
    if kind in _LIMIT_WORDS:
        return _LIMIT_WORDS[kind]
    openings = _REASON_WORDING[kind]
    if reason.startswith(openings):
        return reason
    return openings[0].rstrip(": ") + ": " + reason


def clean_verdict(text: str) -> dict[str, Any] | None:
    """The verdict line's object with only the keys and types a verdict has; None if it is not one.

    In program mode the harness shares the candidate's process, so the line may be
    anything: deeply nested, not an object, lone surrogates. Nothing of that leaves here.
    """
    import json

    try:
        obj = json.loads(text)
    except (ValueError, RecursionError, MemoryError):
        return None
    if type(obj) is not dict:
        return None
    out: dict[str, Any] = {}
    for key, want in VERDICT_KEYS.items():
        value = obj.get(key)
        if type(value) is want:
            out[key] = (
                value[:1000].encode("utf-8", "replace").decode("utf-8") if isinstance(value, str) else value
            )
    if out.get("kind") in _REASON_WORDING and "reason" in out:
        out["reason"] = _worded(out["kind"], out["reason"])
    return out


def read_verdict(channel: bytes, nonce: str) -> tuple[dict[str, Any] | None, bool]:
    """The verdict in what the verdict channel carried, and whether something else wrote there.

    The harness writes exactly one line tagged with the sample's nonce. Anything else on
    the channel is noted; more than one tagged line means someone else had the nonce: no verdict.
    """
    forged, authentic = False, []
    for line in channel.decode("utf-8", "replace").splitlines():
        tag, _, body = line.partition(" ")
        if nonce and tag == nonce:
            authentic.append(body)
        else:
            forged = True
    verdict = None
    if len(authentic) == 1:
        verdict = clean_verdict(authentic[0])
        forged = forged or verdict is None
    elif authentic:
        forged = True
    return verdict, forged


@dataclass(frozen=True, kw_only=True)
class SampleResult:
    """How one run ended, as the zygote saw it from outside the candidate."""

    outcome: Literal["exited", "timeout", "output_limit", "lost", "error"]
    """lost: the sandbox itself died during the run; error: it failed on this sample (and restarts)."""
    exit_code: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stdout_bytes: int = 0
    stderr: str = ""
    stderr_bytes: int = 0
    verdict: dict[str, Any] | None = None
    """The harness's nonce-tagged report (None when it never wrote one): in function mode
    the judge's, in program mode the program's harness's (which can only report a failure)."""
    judge_exit: int | None = None
    """Function mode: the judge's exit status (negative: killed by that signal)."""
    error: str = ""
    """Why the sandbox failed on this sample (outcome "error")."""
    verdict_forged: bool = False
    """Something else wrote on the verdict channel."""
    wall_ms: float = 0.0
    cpu_ms: float | None = None
    cpu_starved_ms: float | None = None
    """How long, during the run, the sandbox had work ready and its CPU ran other processes
    of the host instead (measured by the host from the slot's cgroup; None where it cannot
    be: no cgroup v2, no pressure stall information)."""
    maxrss_kb: int | None = None

    @classmethod
    def from_wire(
        cls, d: dict[str, Any], stdout: bytes = b"", stderr: bytes = b"", channel: bytes = b""
    ) -> SampleResult:
        """The zygote's response frame ``d`` and the raw parts that followed it: the
        sample's stdout, the tail of its stderr and what its verdict channel carried."""
        verdict, forged = read_verdict(channel, str(d.get("nonce") or ""))
        return cls(
            outcome=d["outcome"],
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            stdout=stdout,
            stdout_bytes=int(d.get("stdout_bytes") or 0),
            stderr=stderr.decode("utf-8", "replace"),
            stderr_bytes=int(d.get("stderr_bytes") or 0),
            verdict=verdict,
            verdict_forged=forged,
            judge_exit=d.get("judge_exit") if isinstance(d.get("judge_exit"), int) else None,
            error=str(d.get("error") or d.get("restart") or ""),
            wall_ms=float(d.get("wall_ms") or 0.0),
            cpu_ms=d.get("cpu_ms"),
            maxrss_kb=d.get("maxrss_kb"),
        )

    def starved_timeout(self) -> bool:
        """A timeout the host's other work caused (see :meth:`abnormal`), not the code."""
        return self.outcome == "timeout" and self.starved()

    def starved(self) -> bool:
        """Whether the host kept the CPU from the sandbox for more than ``STARVED_SHARE`` of the run."""
        return self.cpu_starved_ms is not None and self.cpu_starved_ms > STARVED_SHARE * self.wall_ms

    def abnormal(self) -> str | None:
        """Why the run ended other than by the program exiting by itself, if it did."""
        if self.outcome == "timeout" and self.starved():
            # Not the model's timeout: the sample was starved by processes outside its
            # sandbox (another pool's sample on the same CPU, a loaded host). Ours, and
            # judged again by `rescore`.
            return (
                f"sandbox error: the host ran other work on the sample's CPU for "
                f"{(self.cpu_starved_ms or 0) / 1000:.1f}s of its {self.wall_ms / 1000:.1f}s "
                "(an overloaded machine, not the model's timeout)"
            )
        if self.outcome == "timeout":
            return "timeout"
        if self.outcome == "output_limit":
            return "output limit"
        if self.outcome == "lost":
            return "sandbox lost"
        if self.outcome == "error":
            return f"sandbox error: {self.error or 'the sandbox failed on this sample'}"
        if self.signal is not None:
            import signal as _signal

            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return _SIGNAL_REASONS.get(name, f"killed by signal {name}")
        if self.verdict and self.verdict.get("kind") in ("memory", "file_size"):
            return str(self.verdict.get("reason"))
        return None

    def detail(self) -> dict[str, Any]:
        """What an operator looks at when a verdict surprises: figures and output tails."""
        d: dict[str, Any] = {"wall_ms": self.wall_ms}
        for key in ("exit_code", "signal", "cpu_ms", "maxrss_kb"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        if self.stderr:
            d["stderr_tail"] = self.stderr[-2000:]
        d["stdout_bytes"] = self.stdout_bytes
        if self.verdict_forged:
            d["verdict_forged"] = True
        if self.cpu_starved_ms:
            d["cpu_starved_ms"] = self.cpu_starved_ms
        if self.judge_exit is not None:
            d["judge_exit"] = self.judge_exit
        return d


class Sandbox(ABC):
    """One worker slot: runs one sample at a time, isolated, and cleans up after it.

    Contract (pinned by ``tests/scoring/test_sandbox.py`` for every isolation level):

    * ``run`` executes the request's code in a process of its own that cannot reach the
      network, the host's files (bar a read-only view of what Python needs), the
      environment of the daemon or any process outside the sandbox.
    * The run ends at its timeout at the latest; then, or as soon as the sample's
      first process exits, every process it started is killed, wherever it moved.
    * Output beyond ``output_limit`` ends the run ("output_limit"); memory is bounded.
    * ``run`` never raises for anything the candidate does; a sandbox that dies under
      it yields ``outcome="lost"`` and is restarted on the next run. It raises
      SandboxError only when the sandbox cannot be (re)started at all.
    * The verdict channel carries only what the judge wrote after ``check()``
      returned; the judge is a process of its own that the candidate's code cannot
      reach, and it sees the candidate only through plain data. Nothing the
      candidate prints, exits with or writes anywhere can pass for a verdict.
    * A sample the zygote fails on ends as ``outcome="error"`` (a failed sample) and
      the slot's sandbox restarts.
    """

    isolation: ClassVar[str]
    uid: int | None
    """The uid samples run as (None: the daemon's own, unprivileged)."""

    @abstractmethod
    async def start(self) -> None:
        """Start the sandbox now (``run`` starts it when needed)."""

    @abstractmethod
    async def run(self, request: SampleRequest) -> SampleResult:
        """Run one sample; see the class contract."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop the sandbox and everything in it."""

    @abstractmethod
    def oneshot_argv(self) -> list[str]:
        """argv of a fresh sandbox of the same kind serving one request (command checkers)."""


class Scorer(ABC):
    """One scorer kind.

    Contract: ``score`` runs untrusted code only through ``sandbox.run``; it decides
    from what the sandbox observed from outside (exit, signal, the nonce verdict, the
    captured output compared here), never from what the program claims; it never
    raises for anything the candidate does.
    """

    kind: ClassVar[str]

    def __init__(self, settings: ScoringSettings, helper_dir: str) -> None:
        self.settings = settings
        self.helper_dir = helper_dir

    def timeout(self, problem: Problem) -> float:
        return problem.timeout or self.settings.timeout

    def request(
        self, problem: Problem, mode: Literal["function", "program"], code: str, **kw: Any
    ) -> SampleRequest:
        timeout = self.timeout(problem)
        return SampleRequest(
            mode=mode,
            code=code,
            timeout=timeout,
            limits=self.settings.limits(timeout),
            output_limit=self.settings.output_limit_kb * 1024,
            **kw,
        )

    @abstractmethod
    async def score(self, problem: Problem, code: str, sandbox: Sandbox) -> Outcome:
        """Judge ``code`` (already extracted) for ``problem``."""
