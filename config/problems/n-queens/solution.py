import sys


def queens(n):
    # The classic explicit construction (Hoffman, Loessi & Moore).
    if n % 6 not in (2, 3):
        evens = list(range(2, n + 1, 2))
        odds = list(range(1, n + 1, 2))
        rows = evens + odds
    else:
        evens = list(range(2, n + 1, 2))
        odds = list(range(1, n + 1, 2))
        if n % 6 == 2:
            odds = [3, 1] + list(range(7, n + 1, 2)) + [5]
        else:
            evens = list(range(4, n + 1, 2)) + [2]
            odds = list(range(5, n + 1, 2)) + [1, 3]
        rows = evens + odds
    return [r - 1 for r in rows]


print(" ".join(map(str, queens(int(sys.stdin.read())))))
