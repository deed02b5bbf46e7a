"""Python allocating and freeing 64-byte to 64 KiB blocks: stratalloc_py's Heap in a
SharedMemory segment against the obvious alternatives on the same work, a bytearray per
object and a SharedMemory segment per object.

The work: 64 objects live at a time; each operation frees one of them (picked at random)
and allocates a replacement of a size drawn log-uniformly from 64 B to 64 KiB, then writes
its first and last byte. The same sequence of sizes and picks is replayed for every
contender. Prints, per contender, the median of `--runs` runs in operations (one free
plus one allocation) per second, and the ratio to the Heap.

The same work is then run with every block of one size (64 B, 4 KiB, 64 KiB), where a
bytearray's cost grows with the size (it zeroes the bytes) and the heap's does not.

Run: python bench/bench_heap.py [--runs 5]
"""

import argparse
import math
import random
import statistics
import time
from multiprocessing import shared_memory

from stratalloc_py import Heap

LIVE = 64


def workload(ops, fixed=None, seed=22):
    rng = random.Random(seed)
    sizes = [
        fixed or int(math.exp(rng.uniform(math.log(64), math.log(65536))))
        for _ in range(LIVE + ops)
    ]
    picks = [rng.randrange(LIVE) for _ in range(ops)]
    return sizes, picks


def run_heap(sizes, picks):
    shm = shared_memory.SharedMemory(create=True, size=Heap.size(24, 6, 64))
    heap = Heap.init(24, 6, 64, shm.buf)
    malloc, free = heap.malloc, heap.free
    live = []
    for size in sizes[:LIVE]:
        m = malloc(size)
        m[0] = m[size - 1] = 1
        live.append(m)
    started = time.perf_counter()
    for i, pick in enumerate(picks):
        free(live[pick])
        size = sizes[LIVE + i]
        m = malloc(size)
        m[0] = m[size - 1] = 1
        live[pick] = m
    elapsed = time.perf_counter() - started
    for m in live:
        free(m)
    del live, m
    heap.destroy()
    shm.close()
    shm.unlink()
    return elapsed


def run_bytearray(sizes, picks):
    live = []
    for size in sizes[:LIVE]:
        b = bytearray(size)
        b[0] = b[size - 1] = 1
        live.append(b)
    started = time.perf_counter()
    for i, pick in enumerate(picks):
        live[pick] = None  # the free
        size = sizes[LIVE + i]
        b = bytearray(size)
        b[0] = b[size - 1] = 1
        live[pick] = b
    return time.perf_counter() - started


def run_shared_memory(sizes, picks):
    SharedMemory = shared_memory.SharedMemory

    def release(segment):
        segment.close()
        segment.unlink()

    live = []
    for size in sizes[:LIVE]:
        s = SharedMemory(create=True, size=size)
        s.buf[0] = s.buf[size - 1] = 1
        live.append(s)
    started = time.perf_counter()
    for i, pick in enumerate(picks):
        release(live[pick])
        size = sizes[LIVE + i]
        s = SharedMemory(create=True, size=size)
        s.buf[0] = s.buf[size - 1] = 1
        live[pick] = s
    elapsed = time.perf_counter() - started
    for s in live:
        release(s)
    return elapsed


CONTENDERS = [
    ("Heap in one SharedMemory segment (malloc/free)", run_heap, 200_000),
    ("bytearray per object", run_bytearray, 200_000),
    ("SharedMemory segment per object (create/close+unlink)", run_shared_memory, 5_000),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'work':15} {'contender':56} {'median ops/s':>13} {'min..max':>21} {'vs Heap':>8}")
    for work, fixed in [("64 B-64 KiB", None), ("64 B", 64), ("4 KiB", 4096), ("64 KiB", 65536)]:
        results = []
        for name, run, ops in CONTENDERS:
            sizes, picks = workload(ops, fixed)
            rates = [ops / run(sizes, picks) for _ in range(args.runs)]
            results.append((name, statistics.median(rates), min(rates), max(rates)))
        heap_rate = results[0][1]
        for name, median, low, high in results:
            print(
                f"{work:15} {name:56} {median:13,.0f} {low:>10,.0f}..{high:<10,.0f} "
                f"{median / heap_rate:7.3f}x"
            )


if __name__ == "__main__":
    main()
