import heapq
import sys


def main():
    data = sys.stdin.buffer.read().split()
    n, m = int(data[0]), int(data[1])
    adj = [[] for _ in range(n + 1)]
    it = 2
    for _ in range(m):
        u, v, w = int(data[it]), int(data[it + 1]), int(data[it + 2])
        it += 3
        adj[u].append((v, w))
    dist = [-1] * (n + 1)
    best = [float("inf")] * (n + 1)
    best[1] = 0
    heap = [(0, 1)]
    while heap:
        d, u = heapq.heappop(heap)
        if dist[u] != -1:
            continue
        dist[u] = d
        for v, w in adj[u]:
            if dist[v] == -1 and d + w < best[v]:
                best[v] = d + w
                heapq.heappush(heap, (d + w, v))
    print(" ".join(map(str, dist[1:])))


main()
