import random


def _slow(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def check(candidate):
    assert candidate("kitten", "sitting") == 3
    assert candidate("", "") == 0
    assert candidate("", "abc") == 3
    assert candidate("flaw", "lawn") == 2
    rng = random.Random(3)
    for _ in range(100):
        a = "".join(rng.choice("ab") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 12)))
        assert candidate(a, b) == _slow(a, b)
    a = "".join(rng.choice("acgt") for _ in range(1500))
    b = "".join(rng.choice("acgt") for _ in range(1500))
    # _slow(a, b), worked out once: the 2.25 million cells took as long as the answer
    # itself, out of the same time limit.
    assert candidate(a, b) == 780
