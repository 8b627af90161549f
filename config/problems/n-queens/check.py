"""Checker: runs the solution (argv[1]) for several N and verifies every placement.

Prints one JSON line: {"passed": bool, "score": fraction of N passed, "reason": ...}.
"""

import json
import subprocess
import sys

solution = sys.argv[1]
sizes = [4, 5, 8, 13, 50, 200]
ok = 0
reason = ""
for n in sizes:
    try:
        r = subprocess.run([sys.executable, solution], input=f"{n}\n", capture_output=True, text=True, timeout=3)
        cols = [int(t) for t in r.stdout.split()]
    except (subprocess.TimeoutExpired, ValueError) as e:
        reason = reason or f"N={n}: {type(e).__name__}"
        continue
    valid = (
        len(cols) == n
        and sorted(cols) == list(range(n))
        and len({c - i for i, c in enumerate(cols)}) == n
        and len({c + i for i, c in enumerate(cols)}) == n
    )
    if valid:
        ok += 1
    else:
        reason = reason or f"N={n}: not a valid placement"
print(json.dumps({"passed": ok == len(sizes), "score": ok / len(sizes), "reason": reason}))
