"""Warm start: ``rollwatch serve`` with its read models already current, from process start
to the first ``/healthz`` answer (issue 21: within 0.7 s), against a baseline measured in
the same run.

Builds a small log through the store API with ``bench_scale``'s builder
(``BENCH_START_EVENTS`` events, default 5,000), makes the read models current with
``rollwatch rebuild``, starts ``serve`` once (so that the Merkle tree, the checkpoint key
and the locks are there as on any later start), then starts it ``BENCH_START_REPEAT``
(5) more times and reports the median and best time to the first ``/healthz`` answer.

The baseline: a bare Starlette app with one ``/healthz`` route, served by uvicorn on the
same machine, timed the same way (``python`` start to the first answer). It is the floor
for a Python process that imports an ASGI stack and listens. Also printed: the time
until /healthz says the read models are current (everything is open then), and the time
``python -c "import rollwatch.daemon"`` takes (median), against ``python -c "pass"``.
Both ways Python may find rollwatch's modules are measured: as this checkout has them
(``make bench`` compiles ``src/rollwatch`` first; run by hand on a machine that sets
PYTHONDONTWRITEBYTECODE, without ``make compile``, they are compiled at each start) and
with their bytecode cached in a folder of its own (as an installed package has it).

    python bench/bench_start.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import EVENTS_PER_ROLLOUT, Served, cli, free_port, grow, write_config  # noqa: E402
from rollwatch.publication.keys import new_key  # noqa: E402

TARGET_S = 0.7
"""Issue 21's warm start goal."""

_BARE_APP = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def healthz(request):
    return JSONResponse({"status": "ok"})

app = Starlette(routes=[Route("/healthz", healthz)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def first_answer(proc: subprocess.Popen[bytes], base: str, t0: float, deadline_s: float = 60) -> float:
    """Seconds from ``t0`` until ``base``/healthz answers (any status)."""
    end = time.monotonic() + deadline_s
    with httpx.Client(timeout=5) as c:
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
            try:
                c.get(base + "/healthz")
            except httpx.TransportError:
                time.sleep(0.005)
                continue
            return time.perf_counter() - t0
    raise RuntimeError(f"{proc.args!r} did not answer in time")


def bare_start(port: int) -> float:
    """A bare Starlette app on uvicorn: python start to the first /healthz answer."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _BARE_APP, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return first_answer(proc, f"http://127.0.0.1:{port}", t0)
    finally:
        proc.terminate()
        proc.wait()


def serve_start(cfg: Path, port: int, log: Path) -> tuple[float, float]:
    """``rollwatch serve`` on current read models: start to the first /healthz answer, and
    to the first that says the read models are current (everything is open by then)."""
    s = Served(cfg, port, log)
    try:
        took = first_answer(s.proc, s.base, s.t0)
        return took, s.poll_health(True, deadline_s=120)
    finally:
        s.stop()


def python_c(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


def main() -> None:
    size = int(os.environ.get("BENCH_START_EVENTS", "5000"))
    repeat = int(os.environ.get("BENCH_START_REPEAT", "5"))
    from rollwatch.log import configure_logging

    configure_logging("warning", stream=sys.stderr)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        d = Path(tmp)
        db = d / "events.db"
        port = free_port()
        cfg = write_config(d, db, port, configured=True)
        head = anyio.run(grow, db, 0, size // EVENTS_PER_ROLLOUT, new_key())
        cli(cfg, "rebuild")
        log = d / "serve.log"
        serve_start(cfg, port, log)  # the first start creates what later ones find
        # Two ways Python may find rollwatch's own modules: as this checkout has them
        # (compiled by `make compile`, or at every start where PYTHONDONTWRITEBYTECODE is
        # set and nothing compiled them), or compiled once and cached (an installed package:
        # pip writes the .pyc files). That cache goes to a temporary folder
        # (PYTHONPYCACHEPREFIX), never into src/.
        plain = dict(os.environ)
        cached = {k: v for k, v in plain.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = str(d / "pycache")
        figures = {}
        for name, env in (("bytecode cached, as installed", cached), ("as this checkout has it", plain)):
            os.environ.clear()
            os.environ.update(env)
            try:
                serve_start(cfg, port, log)  # fills the cache, when there is one
                figures[name] = measure(cfg, port, log, repeat)
            finally:
                os.environ.clear()
                os.environ.update(plain)

    for name, f in figures.items():
        w, b = f["warm"], f["bare"]
        print(
            f"warm start to first /healthz ({name}; {head:,} events, median of {repeat}): {w:.3f} s"
            f" (best {f['warm_best']:.3f} s; target {TARGET_S} s)"
        )
        print(
            f"  baseline, bare Starlette app on uvicorn: {b:.3f} s (best {f['bare_best']:.3f} s);"
            f" ratio {w / b:.1f}x"
        )
        print(f"  /healthz says the read models are current: {f['current']:.3f} s")
        print(f"  import rollwatch.daemon: {f['import']:.3f} s (python -c pass: {f['empty']:.3f} s)")
        if w > TARGET_S:
            print(f"  warm start over the {TARGET_S} s target")


def measure(cfg: Path, port: int, log: Path, repeat: int) -> dict[str, float]:
    """Medians (and bests) of ``repeat`` starts of the bare app and of serve, alternated."""
    bare, warm, current = [], [], []
    for _ in range(repeat):
        bare.append(bare_start(port))
        w, c = serve_start(cfg, port, log)
        warm.append(w)
        current.append(c)
    return {
        "bare": statistics.median(bare),
        "bare_best": min(bare),
        "warm": statistics.median(warm),
        "warm_best": min(warm),
        "current": statistics.median(current),
        "import": statistics.median(python_c("import rollwatch.daemon") for _ in range(repeat)),
        "empty": statistics.median(python_c("pass") for _ in range(repeat)),
    }


if __name__ == "__main__":
    main()
