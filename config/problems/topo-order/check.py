"""Checker for topo-order: generates graphs, runs the solution, verifies each order.

Trusted; runs on the host. The solution (argv[1]) only ever runs through
$ROLLWATCH_RUN, in a fresh sandbox each time. No JSON: exit status 0 when every
case passes, else 1 with the reason as the last line.
"""

import os
import random
import subprocess
import sys

solution = sys.argv[1]
run = os.environ["ROLLWATCH_RUN"]
rng = random.Random(4)


def graph(n: int, m: int, cyclic: bool) -> list[tuple[int, int]]:
    """``m`` distinct edges that all agree with one hidden order (a shuffled 1..n), in
    random order; ``cyclic`` adds the first edge reversed. Two ``randrange`` calls an edge
    (``rng.sample`` and a sort of the whole set took 3 s of the 200,000-edge case)."""
    perm = list(range(1, n + 1))
    rng.shuffle(perm)
    seen: set[tuple[int, int]] = set()
    out = []
    while len(out) < m:
        i, j = rng.randrange(n), rng.randrange(n)
        if i == j:
            continue
        edge = (perm[i], perm[j]) if i < j else (perm[j], perm[i])
        if edge not in seen:
            seen.add(edge)
            out.append(edge)
    if cyclic:
        a, b = out[0]
        out.append((b, a))
    return out


CASES = [(1, 0, False), (3, 2, False), (5, 4, True), (1000, 3000, False), (100_000, 200_000, False), (2000, 5000, True)]
for n, m, cyclic in CASES:
    edges = graph(n, min(m, n * (n - 1) // 2), cyclic)
    data = f"{n} {len(edges)}\n" + "".join(f"{a} {b}\n" for a, b in edges)
    r = subprocess.run([run, solution], input=data, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"n={n}: " + (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1])
        sys.exit(1)
    out = r.stdout.split()
    if cyclic:
        if out != ["IMPOSSIBLE"]:
            print(f"n={n}: the prerequisites have a cycle, expected IMPOSSIBLE")
            sys.exit(1)
        continue
    try:
        order = [int(x) for x in out]
    except ValueError:
        print(f"n={n}: the output is not course numbers")
        sys.exit(1)
    if sorted(order) != list(range(1, n + 1)):
        print(f"n={n}: not every course exactly once")
        sys.exit(1)
    pos = [0] * (n + 1)
    for i, c in enumerate(order):
        pos[c] = i
    bad = next(((a, b) for a, b in edges if pos[a] >= pos[b]), None)
    if bad:
        print(f"n={n}: course {bad[0]} must come before {bad[1]}")
        sys.exit(1)
sys.exit(0)
