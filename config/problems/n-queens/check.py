"""Checker for n-queens: runs the solution once on many N and verifies every placement.

Trusted; runs on the host. The solution (argv[1]) only ever runs through
$ROLLWATCH_RUN, in a fresh sandbox. Prints one JSON line:
{"passed": bool, "score": share of the N placed correctly, "reason": the first failure}.
"""

import json
import os
import subprocess
import sys

solution = sys.argv[1]
# Every residue of N mod 6 (2 and 3 are the classic traps), small and large.
sizes = [4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 20, 21, 1000, 100_000]


def placement_error(n: int, line: str) -> str | None:
    try:
        cols = [int(t) for t in line.split()]
    except ValueError:
        return "the output is not integers"
    if len(cols) != n:
        return f"{len(cols)} columns, expected {n}"
    if sorted(cols) != list(range(n)):
        return "two queens share a column (or a column is out of range)"
    if len({c - i for i, c in enumerate(cols)}) != n or len({c + i for i, c in enumerate(cols)}) != n:
        return "two queens share a diagonal"
    return None


data = f"{len(sizes)}\n" + "".join(f"{n}\n" for n in sizes)
r = subprocess.run([os.environ["ROLLWATCH_RUN"], solution], input=data, capture_output=True, text=True)
if r.returncode != 0:
    why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    print(json.dumps({"passed": False, "score": 0.0, "reason": why}))
    sys.exit(0)
lines = r.stdout.splitlines()
ok, reason = 0, ""
for i, n in enumerate(sizes):
    why = placement_error(n, lines[i]) if i < len(lines) else "no line of output"
    if why is None:
        ok += 1
    elif not reason:
        reason = f"N={n}: {why}"
print(json.dumps({"passed": ok == len(sizes), "score": ok / len(sizes), "reason": reason}))
