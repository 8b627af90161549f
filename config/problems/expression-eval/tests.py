import random


def _gen(rng, depth):
    if depth == 0 or rng.random() < 0.3:
        return str(rng.randint(0, 20))
    op = rng.choice("+-*")
    left, right = _gen(rng, depth - 1), _gen(rng, depth - 1)
    e = f"{left} {op} {right}"
    if rng.random() < 0.3:
        e = f"({e})"
    if rng.random() < 0.1:
        e = f"-({e})"
    return e


def check(candidate):
    assert candidate("2 * (3 + 4) - -1") == 15
    assert candidate("10 - 4 - 3") == 3
    assert candidate("  7  ") == 7
    assert candidate("-(2*3)*-2") == 12
    assert candidate("2*3+4*5") == 26
    rng = random.Random(11)
    for _ in range(300):
        e = _gen(rng, 5)
        assert candidate(e) == eval(e), e
