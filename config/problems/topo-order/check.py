"""Checker: generates graphs, runs the solution (argv[1]), verifies each order.
Exit status 0 when every case passes, 1 otherwise (no JSON: exit status decides)."""

import random
import subprocess
import sys

solution = sys.argv[1]
rng = random.Random(4)


def case(n, m, cyclic):
    perm = list(range(1, n + 1))
    rng.shuffle(perm)
    edges = set()
    while len(edges) < m:
        i, j = sorted(rng.sample(range(n), 2))
        edges.add((perm[i], perm[j]))
    edges = list(edges)
    if cyclic:
        a, b = edges[0]
        edges.append((b, a))
    return n, edges


for n, m, cyclic in [(3, 2, False), (5, 4, True), (1000, 3000, False), (50000, 150000, False), (2000, 5000, True)]:
    n, edges = case(n, min(m, n * (n - 1) // 2), cyclic)
    inp = f"{n} {len(edges)}\n" + "\n".join(f"{a} {b}" for a, b in edges) + "\n"
    r = subprocess.run([sys.executable, solution], input=inp, capture_output=True, text=True, timeout=5)
    out = r.stdout.split()
    if cyclic:
        if out != ["IMPOSSIBLE"]:
            print(f"n={n}: expected IMPOSSIBLE")
            sys.exit(1)
        continue
    try:
        order = [int(x) for x in out]
    except ValueError:
        print(f"n={n}: not numbers")
        sys.exit(1)
    pos = {c: i for i, c in enumerate(order)}
    if sorted(order) != list(range(1, n + 1)) or any(pos[a] >= pos[b] for a, b in edges):
        print(f"n={n}: not a valid order")
        sys.exit(1)
sys.exit(0)
