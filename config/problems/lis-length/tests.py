import random


def check(candidate):
    assert candidate([10, 9, 2, 5, 3, 7, 101, 18]) == 4
    assert candidate([]) == 0
    assert candidate([5, 5, 5]) == 1
    assert candidate(list(range(1000))) == 1000
    rng = random.Random(5)
    xs = [rng.randint(0, 10**9) for _ in range(200_000)]
    # The expected length by patience sorting, O(n log n) like the answer must be.
    import bisect

    tails = []
    for x in xs:
        i = bisect.bisect_left(tails, x)
        tails[i:i + 1] = [x]
    assert candidate(xs) == len(tails)
