import sys


def queens(n: int) -> list[int]:
    """The classic explicit construction (Hoffman, Loessi & Moore, 1969)."""
    evens = list(range(2, n + 1, 2))
    odds = list(range(1, n + 1, 2))
    if n % 6 == 2:
        odds = [3, 1, *range(7, n + 1, 2), 5]
    elif n % 6 == 3:
        evens = [*range(4, n + 1, 2), 2]
        odds = [*range(5, n + 1, 2), 1, 3]
    return [r - 1 for r in evens + odds]


data = sys.stdin.read().split()
out = [" ".join(map(str, queens(int(n)))) for n in data[1 : 1 + int(data[0])]]
sys.stdout.write("\n".join(out) + "\n")
