from bisect import bisect_right


def max_weight_schedule(jobs: list[tuple[int, int, int]]) -> int:
    jobs = sorted(jobs, key=lambda j: j[1])
    ends = [e for _, e, _ in jobs]
    best = [0] * (len(jobs) + 1)  # best[i]: the best total over the first i jobs by end time
    for i, (s, _, w) in enumerate(jobs, 1):
        best[i] = max(best[i - 1], best[bisect_right(ends, s, 0, i - 1)] + w)
    return best[-1]
