"""Several processes sharing one heap in a SharedMemory segment: allocating and freeing at
once, freeing each other's blocks with every block's bytes verified; and a process killed
with SIGKILL while it holds the heap's lock, after which the parent recovers and loses no
live block.

Children are forked and open the segment by name themselves, so each maps it at an
address of its own: blocks travel between processes as offsets."""

import mmap
import multiprocessing
import os
import queue
import random
import signal
import subprocess
import sys
import time
from multiprocessing import shared_memory

import pytest

import stratalloc_py as sp
from stratalloc_py import Heap
from conftest import fill, pattern

CTX = multiprocessing.get_context("fork")
MAX, MIN = 22, 6  # a 4 MiB heap of blocks from 64 bytes up


@pytest.fixture
def shared_heap():
    shm = shared_memory.SharedMemory(create=True, size=Heap.size(MAX, MIN, 64))
    heap = Heap.init(MAX, MIN, 64, shm.buf)
    yield heap, shm
    if heap.attached:
        heap.detach()
    shm.close()
    shm.unlink()


def _attach(name):
    shm = shared_memory.SharedMemory(name=name)
    return shm, Heap.attach(shm.buf)


def _worker(name, me, inbox, outbox, rounds, seed, results):
    """Allocates blocks, fills them with its pattern, passes half of them on to the next
    worker and frees the rest itself; verifies and frees what the previous worker passes
    on. Ends by draining its inbox up to the previous worker's end mark."""
    shm, heap = _attach(name)
    rng = random.Random(seed)
    mine = []
    seq = 0

    previous_done = False
    counts = {"mine": 0, "theirs": 0}

    def take(message):
        nonlocal previous_done
        if message is None:  # the previous worker's end mark
            previous_done = True
            return
        offset, size, tag = message
        counts["theirs"] += 1
        block = heap.block(offset)
        got = block[0:size]
        assert got == pattern(tag, size), f"worker {me}: block {offset:#x} of tag {tag:#x} changed"
        heap.free(block)

    def drain():
        try:
            while not previous_done:
                take(inbox.get_nowait())
        except queue.Empty:
            pass

    def allocate(size):
        # The heap may be full of blocks passed on to a worker that is itself waiting for
        # memory: free what was passed here while waiting, or every worker waits for good.
        deadline = time.monotonic() + 30
        while True:
            try:
                return heap.malloc(size, timeout=0.05)
            except sp.OutOfMemoryError:
                if time.monotonic() > deadline:
                    raise
                drain()

    for _ in range(rounds):
        for _ in range(rng.randint(1, 4)):
            size = rng.choice([64, 100, 500, 1000, 4096, 10000])
            block = allocate(size)
            tag = me << 48 | seq
            seq += 1
            counts["mine"] += 1
            fill(block, tag)
            if rng.random() < 0.5:
                outbox.put((block.offset, size, tag))
            else:
                mine.append((block, tag))
        while len(mine) > 8:
            block, tag = mine.pop(rng.randrange(len(mine)))
            assert block.tobytes() == pattern(tag, len(block)), f"worker {me}: own block changed"
            heap.free(block)
        drain()
    for block, tag in mine:
        assert block.tobytes() == pattern(tag, len(block)), f"worker {me}: own block changed"
        heap.free(block)
    outbox.put(None)
    while not previous_done:
        take(inbox.get(timeout=30))
    heap.detach()
    shm.close()
    results.put((me, counts["mine"], counts["theirs"]))


@pytest.mark.parametrize("workers", [2, 4])
def test_processes_allocate_and_free_each_others_blocks(shared_heap, workers):
    heap, shm = shared_heap
    queues = [CTX.Queue() for _ in range(workers)]
    results = CTX.Queue()
    procs = [
        CTX.Process(
            target=_worker,
            args=(shm.name, i, queues[i], queues[(i + 1) % workers], 2000, 1000 * workers + i, results),
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * workers
    counts = sorted(results.get(timeout=5) for _ in range(workers))
    # Every worker allocated thousands of blocks and freed hundreds of its neighbour's.
    for me, mine, theirs in counts:
        assert mine > 2000 and theirs > 500, counts
    stats = heap.get_stats()
    assert (stats.live_blocks, stats.allocated_bytes, stats.handles) == (0, 0, 1)
    assert stats.free_blocks == {64 << i: int(i == MAX - MIN) for i in range(MAX - MIN + 1)}
    assert not stats.recovery_needed


def _free_and_take_over(name, offset, conn):
    """Frees the parent's block at `offset` (reached by offset), allocates the same place
    for its own data, and reports what its block holds once the parent has tried to write."""
    shm, heap = _attach(name)
    heap.free(heap.block(offset))
    mine = heap.malloc(64)
    mine[0:8] = b"CHILDDAT"
    conn.send(mine.offset)
    conn.recv()
    conn.send(mine.tobytes()[:8])
    heap.free(mine)
    heap.detach()
    shm.close()


def test_a_block_freed_by_another_process_raises_here(shared_heap):
    heap, shm = shared_heap
    mem = heap.malloc(64)
    ours, theirs = CTX.Pipe()
    child = CTX.Process(target=_free_and_take_over, args=(shm.name, mem.offset, theirs))
    child.start()
    assert ours.recv() == mem.offset  # the child's new block is at the same place
    assert mem.freed
    for use in (
        lambda: mem.__setitem__(slice(0, 8), b"PARENT!!"),
        lambda: mem[0],
        lambda: mem.tobytes(),
        lambda: memoryview(mem),
        lambda: heap.free(mem),
    ):
        with pytest.raises(sp.InvalidMemoryError, match="was freed"):
            use()
    ours.send(None)
    assert ours.recv() == b"CHILDDAT"  # untouched by the stale object
    child.join(30)
    assert child.exitcode == 0


def _try_to_free(name, offset, conn):
    shm, heap = _attach(name)
    try:
        heap.free(heap.block(offset))
        conn.send("freed")
    except sp.BusyError as error:
        conn.send(str(error))
    heap.detach()
    shm.close()


def test_a_view_in_one_process_keeps_every_other_from_freeing_the_block(shared_heap):
    heap, shm = shared_heap
    mem = heap.malloc(64)
    view = memoryview(mem)

    def child_free():
        ours, theirs = CTX.Pipe()
        child = CTX.Process(target=_try_to_free, args=(shm.name, mem.offset, theirs))
        child.start()
        answer = ours.recv()
        child.join(30)
        assert child.exitcode == 0
        return answer

    assert "is pinned by 1 view(s)" in child_free()
    view[0:4] = b"safe"  # the block is still this allocation
    view.release()
    assert child_free() == "freed"
    assert mem.freed


def _attach_and_wait(name, conn):
    shm, heap = _attach(name)
    conn.send("attached")
    conn.recv()
    heap.detach()
    shm.close()


def test_init_refuses_memory_whose_heap_another_process_is_attached_to(shared_heap):
    heap, shm = shared_heap
    heap.detach()
    ours, theirs = CTX.Pipe()
    child = CTX.Process(target=_attach_and_wait, args=(shm.name, theirs))
    child.start()
    assert ours.recv() == "attached"
    with pytest.raises(sp.StillAttachedError, match="with 1 handle\\(s\\) attached, in other"):
        Heap.init(MAX, MIN, 64, shm.buf)
    ours.send(None)
    child.join(30)
    assert child.exitcode == 0
    fresh = Heap.init(MAX, MIN, 64, shm.buf)  # nobody attached now
    assert fresh.get_stats().live_blocks == 0
    fresh.destroy()


def test_a_forked_child_dropping_an_inherited_handle_leaves_the_count(shared_heap):
    heap, shm = shared_heap
    mem = heap.malloc(64)
    pid = os.fork()
    if pid == 0:
        # The child inherited the handle (never counted for it) and lets go of it.
        code = 1
        try:
            del mem
            heap.detach()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # Still counted once (a fresh init elsewhere stays refused); the object still works.
    assert heap.get_stats().handles == 1
    mem[0:4] = b"mine"
    assert mem.tobytes()[:4] == b"mine"
    heap.free(mem)


def test_a_child_forked_inside_with_lock_does_not_hold_or_release_the_lock(shared_heap):
    heap, shm = shared_heap
    heap.lock_patience = 0.05

    def inside():
        pid = os.fork()
        if pid == 0:
            return "child"  # the child's copy of the guard ends here: it must not unlock
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The lock still names this thread: another handle of it is refused at once (had
        # the child let go of it, the handle would take it).
        second = Heap.attach(shm.buf)
        try:
            with pytest.raises(sp.LockError, match="already holds the heap's lock"):
                second.malloc(1)
        finally:
            second.detach()
        return "parent"

    if heap.with_lock(inside) == "child":
        code = 1
        try:
            # The lock names the parent's thread, which is alive: no way in.
            with pytest.raises(sp.LockError, match="still held the heap's lock"):
                heap.malloc(1)
            code = 0
        finally:
            os._exit(code)
    assert heap.recovery_reason is None
    heap.free(heap.malloc(1))


def _allocate_then_die_holding_the_lock(name, count, report):
    shm, heap = _attach(name)
    blocks = []
    for i in range(count):
        block = heap.malloc(64 + 97 * i)
        tag = 0xC0DE << 32 | i
        fill(block, tag)
        blocks.append((block.offset, len(block), tag))
    report.send(blocks)
    heap.with_lock(lambda: os.kill(os.getpid(), signal.SIGKILL))
    raise AssertionError("unreachable: the process was killed")


def test_a_process_killed_holding_the_lock_is_recovered_from(shared_heap):
    heap, shm = shared_heap
    parents = []
    for i in range(20):
        block = heap.malloc(1000 + 31 * i)
        fill(block, i)
        parents.append((block, i))
    receive, send = CTX.Pipe(duplex=False)
    child = CTX.Process(target=_allocate_then_die_holding_the_lock, args=(shm.name, 30, send))
    child.start()
    childs = receive.recv()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    # The lock's holder died: reading recovery_needed takes the lock and finds that out.
    assert heap.recovery_needed is True
    assert "died holding the heap's lock" in heap.recovery_reason
    with pytest.raises(sp.RecoveryNeededError):
        heap.malloc(64)
    # The seed's pattern: free raises while recovery is needed; recover; free again.
    block, tag = parents.pop()
    try:
        heap.free(block)
    except RuntimeError:
        heap.recover()
        heap.free(block)
    assert heap.recovery_needed is False
    # No live block was lost: the parent's and the dead child's are all live and intact.
    stats = heap.get_stats()
    assert stats.live_blocks == len(parents) + len(childs)
    for block, tag in parents:
        assert block.tobytes() == pattern(tag, len(block))
        heap.free(block)
    for offset, size, tag in childs:
        block = heap.block(offset)
        assert block[0:size] == pattern(tag, size)
        heap.free(block)
    stats = heap.get_stats()
    assert (stats.live_blocks, stats.allocated_bytes) == (0, 0)
    assert stats.free_blocks[1 << MAX] == 1
    # The dead child's handle is never subtracted, so the heap cannot be destroyed.
    assert stats.handles == 2
    with pytest.raises(sp.StillAttachedError):
        heap.destroy()


def _churn(name, ready):
    shm, heap = _attach(name)
    rng = random.Random(os.getpid())
    live = []
    ready.set()
    while True:
        if len(live) < 30 and rng.random() < 0.6:
            try:
                live.append(heap.malloc(rng.choice([64, 200, 3000, 8000])))
            except sp.OutOfMemoryError:
                pass  # the blocks of the children killed before stay live
        elif live:
            heap.free(live.pop(rng.randrange(len(live))))


def test_processes_killed_at_random_moments_lose_no_live_block(shared_heap):
    """Children churning malloc/free are killed at random moments, some of them inside
    the lock in the middle of an allocation or a free: after each, the parent recovers
    when the heap asks for it, its own blocks are intact, and the heap stays usable."""
    heap, shm = shared_heap
    rng = random.Random(22)
    parents = []
    for i in range(10):
        block = heap.malloc(rng.choice([64, 1000, 30000]))
        fill(block, 0xAA00 + i)
        parents.append((block, 0xAA00 + i))
    recovered = 0
    for _ in range(8):
        ready = CTX.Event()
        child = CTX.Process(target=_churn, args=(shm.name, ready))
        child.start()
        assert ready.wait(30)
        time.sleep(rng.uniform(0.005, 0.05))
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        assert child.exitcode == -signal.SIGKILL
        if heap.recovery_needed:
            heap.recover()
            recovered += 1
        for block, tag in parents:
            assert block.tobytes() == pattern(tag, len(block))
    # The heap still hands out only memory that no live block uses: fill every free
    # smallest block, then check the parent's blocks again.
    taken = []
    while True:
        try:
            taken.append(heap.malloc(64))
        except sp.OutOfMemoryError:
            break
    for block in taken:
        fill(block, 0x55)
    for block, tag in parents:
        assert block.tobytes() == pattern(tag, len(block))
    offsets = [b.offset for b in taken] + [b.offset for b, _ in parents]
    assert len(set(offsets)) == len(offsets)
    for block in taken:
        heap.free(block)
    for block, _ in parents:
        heap.free(block)
    print(f"{recovered} of 8 kills needed recovery")


_OTHER_NAMESPACE = """
import mmap, sys
import stratalloc_py as sp
from stratalloc_py import Heap
path, offset = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
try:
    Heap.attach(m)
    sys.exit("attached from another PID namespace")
except sp.HeapError as error:
    assert "PID namespace" in str(error), str(error)
heap = Heap.attach(m, claim_pid_namespace=True)
assert heap.block(offset).tobytes()[:8] == b"PARENT!!"
heap.detach()
print("claimed")
"""


def test_a_process_of_another_pid_namespace_must_claim_the_heap(tmp_path):
    """The heap records the PID namespace of the process that made it: a process of another
    (a child under `unshare`) is refused, naming both, until it claims the heap; then the
    first namespace is refused in turn, until it claims the heap back."""
    path = tmp_path / "heap"
    path.write_bytes(bytes(Heap.size(16, 6, 64)))
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
    heap = Heap.init(16, 6, 64, m)
    mem = heap.malloc(64)
    mem[0:8] = b"PARENT!!"
    offset = mem.offset
    heap.detach()
    child = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--pid", "--fork",
         sys.executable, "-c", _OTHER_NAMESPACE, str(path), str(offset)],
        capture_output=True, text=True, timeout=60,
    )
    assert child.returncode == 0 and "claimed" in child.stdout, child.stderr
    with pytest.raises(sp.HeapError, match=r"PID namespace pid:\[\d+\], and this one is in"):
        Heap.attach(m)
    heap = Heap.attach(m, claim_pid_namespace=True)
    block = heap.block(offset)
    assert block.tobytes()[:8] == b"PARENT!!"
    heap.free(block)
    heap.detach()
    m.close()
