"""Checker for n-queens: runs the solution for several N and verifies each placement.

Trusted; runs on the host. The solution (argv[1]) only ever runs through
$ROLLWATCH_RUN, in a fresh sandbox each time. Prints one JSON line:
{"passed": bool, "score": share of the N that passed, "reason": the first failure}.
"""

import json
import os
import subprocess
import sys

solution = sys.argv[1]
run = os.environ["ROLLWATCH_RUN"]
sizes = [4, 5, 6, 7, 8, 9, 14, 15, 20, 21, 1000, 100_000]


def placement_error(n: int, out: str) -> str | None:
    try:
        cols = [int(t) for t in out.split()]
    except ValueError:
        return "the output is not integers"
    if len(cols) != n:
        return f"{len(cols)} columns, expected {n}"
    if sorted(cols) != list(range(n)):
        return "two queens share a column (or a column is out of range)"
    if len({c - i for i, c in enumerate(cols)}) != n or len({c + i for i, c in enumerate(cols)}) != n:
        return "two queens share a diagonal"
    return None


ok = 0
reason = ""
for n in sizes:
    r = subprocess.run([run, solution], input=f"{n}\n", capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    else:
        why = placement_error(n, r.stdout)
    if why is None:
        ok += 1
    elif not reason:
        reason = f"N={n}: {why}"
print(json.dumps({"passed": ok == len(sizes), "score": ok / len(sizes), "reason": reason}))
