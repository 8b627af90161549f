import random


def check(candidate):
    assert candidate([]) == []
    assert candidate([[1, 3], [2, 6], [8, 10], [15, 18]]) == [[1, 6], [8, 10], [15, 18]]
    assert candidate([[1, 4], [4, 5]]) == [[1, 5]]
    assert candidate([[5, 7], [1, 2]]) == [[1, 2], [5, 7]]
    assert candidate([[1, 10], [2, 3], [4, 5]]) == [[1, 10]]
    rng = random.Random(7)
    for _ in range(200):
        xs = [sorted([rng.randint(0, 50), rng.randint(0, 50)]) for _ in range(rng.randint(0, 12))]
        covered = set()
        for a, b in xs:
            covered.update(range(2 * a, 2 * b + 1))
        got = candidate([list(x) for x in xs])
        back = set()
        for a, b in got:
            back.update(range(2 * a, 2 * b + 1))
        assert back == covered
        assert all(got[i][1] < got[i + 1][0] for i in range(len(got) - 1))
