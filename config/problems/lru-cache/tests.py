import random
from collections import OrderedDict


def _model(capacity, ops):
    d, out = OrderedDict(), []
    for op in ops:
        if op[0] == "get":
            if op[1] in d:
                d.move_to_end(op[1])
                out.append(d[op[1]])
            else:
                out.append(-1)
        else:
            d[op[1]] = op[2]
            d.move_to_end(op[1])
            if len(d) > capacity:
                d.popitem(last=False)
    return out


def check(candidate):
    assert candidate(2, [("put", 1, 1), ("put", 2, 2), ("get", 1), ("put", 3, 3), ("get", 2)]) == [1, -1]
    rng = random.Random(9)
    for cap in (1, 2, 3, 10):
        ops = []
        for _ in range(500):
            k = rng.randint(0, 15)
            ops.append(("get", k) if rng.random() < 0.5 else ("put", k, rng.randint(0, 99)))
        assert candidate(cap, ops) == _model(cap, ops)
    ops = [("put", i % 5000, i) if i % 3 else ("get", i % 7000) for i in range(200_000)]
    assert candidate(1000, ops) == _model(1000, ops)
