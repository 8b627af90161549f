from collections import OrderedDict


def lru_run(capacity, ops):
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
