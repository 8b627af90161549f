import math
import sys


def closest(pts):
    pts.sort()
    best = math.inf
    strip = []  # points within best of the sweep line, kept sorted by y
    import bisect

    left = 0
    for x, y in pts:
        while left < len(pts) and pts[left][0] < x - best:
            px, py = pts[left]
            i = bisect.bisect_left(strip, (py, px))
            if i < len(strip) and strip[i] == (py, px):
                strip.pop(i)
            left += 1
        lo = bisect.bisect_left(strip, (y - best, -math.inf))
        hi = bisect.bisect_right(strip, (y + best, math.inf))
        for sy, sx in strip[lo:hi]:
            best = min(best, math.hypot(x - sx, y - sy))
        bisect.insort(strip, (y, x))
    return best


def main():
    data = sys.stdin.read().split()
    n = int(data[0])
    pts = [(float(data[1 + 2 * i]), float(data[2 + 2 * i])) for i in range(n)]
    print(f"{closest(pts):.9f}")


main()
