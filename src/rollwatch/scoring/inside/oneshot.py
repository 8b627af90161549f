"""Run one program in a fresh sandbox: the helper a ``command`` checker calls.

A checker is the operator's program and runs on the host; the candidate's program
must not. So the checker gets ``$ROLLWATCH_RUN``, a small executable, and runs the
candidate through it as if it were the program itself::

    out = subprocess.run([os.environ["ROLLWATCH_RUN"], solution_path],
                         input=data, capture_output=True).stdout

stdin is given to the program, its stdout (capped) comes back on stdout, the tail
of its stderr on stderr. Exit status: the program's own; 124 on timeout, 125 over
the output limit, 128+N when killed by signal N, 126 when the sandbox could not
run it. The timeout is ``$ROLLWATCH_TIMEOUT`` seconds (the problem's).

Standard library only; started as ``python -I -B oneshot.py SPEC SOLUTION`` where
SPEC is a JSON file the scoring pool wrote: the sandbox's argv, environment and
limits.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import subprocess
import sys
import tempfile

# The framing is the zygote's own (a sibling file: -I keeps the script's folder off sys.path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
_zygote = importlib.import_module("zygote")
read_frame, write_frame = _zygote.read_frame, _zygote.write_frame
read_exact, write_all = _zygote.read_exact, _zygote.write_all


MAX_STDIN = 64 * 1024 * 1024


def log_run_time(resp: dict[str, object]) -> None:
    """Add this run's seconds to ``$ROLLWATCH_RUN_TIMES`` (a file of the scorer's): a checker
    that runs out of time is then known to have spent it waiting on the program, or not."""
    path = os.environ.get("ROLLWATCH_RUN_TIMES")
    wall = resp.get("wall_ms")
    if path and isinstance(wall, int | float):
        try:
            with open(path, "a", encoding="ascii") as f:
                f.write(f"{wall / 1000:.3f}\n")
        except OSError:
            pass


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: $ROLLWATCH_RUN SOLUTION < input > output", file=sys.stderr)
        return 126
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    try:
        with open(sys.argv[2], encoding="utf-8") as f:
            code = f.read()
    except (OSError, UnicodeDecodeError) as e:
        print(f"rollwatch: cannot read the solution: {e}", file=sys.stderr)
        return 126
    data = sys.stdin.buffer.read(MAX_STDIN + 1)
    if len(data) > MAX_STDIN:
        print("rollwatch: more than 64 MiB of input", file=sys.stderr)
        return 126
    timeout = float(os.environ.get("ROLLWATCH_TIMEOUT") or spec["timeout"])
    with tempfile.TemporaryFile() as errors:
        # bwrap --die-with-parent / setpriv --pdeathsig: killing us kills the sandbox.
        proc = subprocess.Popen(
            spec["argv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, env=spec["env"]
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            if read_frame(proc.stdout.fileno()) is None:
                raise EOFError
            source = code.encode("utf-8", "surrogatepass")
            write_frame(
                proc.stdin.fileno(),
                {
                    "mode": "program",
                    "code_bytes": len(source),
                    "stdin": base64.b64encode(data).decode(),
                    "timeout": timeout,
                    "limits": {**spec["limits"], "cpu_s": max(1, int(timeout) + 1)},
                    "output_limit": spec["output_limit"],
                    "keep_stdout": True,
                },
            )
            write_all(proc.stdin.fileno(), source)  # the code follows the frame as raw bytes
            resp = read_frame(proc.stdout.fileno())
            if resp is None:
                raise EOFError
            # stdout, the tail of stderr and the verdict channel follow the response as raw bytes.
            out, err, _ = [
                (read_exact(proc.stdout.fileno(), n) if n else b"") or b""
                for n in resp.get("raw") or (0, 0, 0)
            ]
        except (EOFError, OSError):
            errors.seek(0)
            print(
                f"rollwatch: the sandbox failed: {errors.read()[-2000:].decode(errors='replace')}",
                file=sys.stderr,
            )
            proc.kill()
            proc.wait()
            return 126
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if resp.get("outcome") == "error":
        print(f"rollwatch: the sandbox failed: {resp.get('error')}", file=sys.stderr)
        return 126
    log_run_time(resp)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.write(err.decode("utf-8", "replace"))
    if resp["outcome"] == "timeout":
        print("rollwatch: timeout", file=sys.stderr)
        return 124
    if resp["outcome"] == "output_limit":
        print("rollwatch: output limit", file=sys.stderr)
        return 125
    if resp.get("signal") is not None:
        print(f"rollwatch: killed by signal {resp['signal']}", file=sys.stderr)
        return 128 + int(resp["signal"])
    return int(resp.get("exit_code") or 0)


if __name__ == "__main__":
    sys.exit(main())
