import random
from itertools import combinations


def _brute(jobs):
    best = 0
    for r in range(len(jobs) + 1):
        for chosen in combinations(sorted(jobs, key=lambda j: j[0]), r):
            if all(a[1] <= b[0] for a, b in zip(chosen, chosen[1:])):
                best = max(best, sum(j[2] for j in chosen))
    return best


def _fast(jobs):
    import bisect

    jobs = sorted(jobs, key=lambda j: j[1])
    ends = [e for _, e, _ in jobs]
    best = [0]
    for i, (s, _, w) in enumerate(jobs):
        best.append(max(best[-1], best[bisect.bisect_right(ends, s, 0, i)] + w))
    return best[-1]


def check(candidate):
    assert candidate([]) == 0
    assert candidate([(1, 3, 5), (2, 5, 6), (4, 6, 5), (6, 7, 4), (5, 8, 11), (7, 9, 2)]) == 17
    assert candidate([(1, 2, 10), (2, 3, 10)]) == 20, "a job ending at t fits one starting at t"
    assert candidate([(1, 10, 5), (1, 10, 7)]) == 7
    assert candidate([(0, 100, 50), (0, 1, 20), (1, 2, 20), (2, 3, 20)]) == 60
    rng = random.Random(21)
    for _ in range(300):
        jobs = []
        for _ in range(rng.randint(0, 9)):
            s = rng.randint(0, 20)
            jobs.append((s, s + rng.randint(1, 8), rng.randint(1, 30)))
        assert candidate(list(jobs)) == _brute(jobs), jobs
    jobs = []
    for _ in range(100_000):
        s = rng.randint(0, 10**9 - 1)
        jobs.append((s, rng.randint(s + 1, min(10**9, s + 10**6)), rng.randint(1, 10**9)))
    assert candidate(list(jobs)) == _fast(jobs)
