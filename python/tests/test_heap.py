"""Heap and its memory objects in one process: every method and attribute of the seed's
Heap, each documented error, pinning of the buffer and the lifetime rules."""

import gc
import io
import mmap
import struct
import threading
import time
from multiprocessing import shared_memory

import pytest

import stratalloc_py as sp
from stratalloc_py import Heap, Memory, MemStat
from conftest import address, fill, holds, pattern


# ---- size, init, attach ------------------------------------------------------------------


def test_size_covers_header_data_and_alignment_slack():
    # 64 KiB of data, plus header, bitmaps and an 8-byte stamp per 64-byte segment (8 KiB),
    # plus at most 63 bytes to align the start.
    size = Heap.size(16, 6, 64)
    assert isinstance(size, int)
    assert 65536 + 8192 < size < 65536 + 8192 + 4096
    # A page-aligned heap asks for room to align to the page.
    assert Heap.size(16, 6, 4096) >= Heap.size(16, 6, 64) + 4096 - 64
    # The seed's example: 4 GiB with 4 KiB segments.
    assert Heap.size(32, 12, 4096) > 2**32


@pytest.mark.parametrize(
    "args, words",
    [
        ((6, 16, 64), "above the heap's order"),  # min above max
        ((16, 4, 64), "outside 5..="),  # smallest block below 32 bytes
        ((60, 10, 64), "outside 5..="),  # larger than the largest heap
        ((40, 5, 64), "orders from smallest to largest"),  # too many orders
        ((16, 6, 24), "not a power of two"),  # alignment
        ((16, 6, 4), "not a power of two of at least 8"),
        ((10, 6, 2048), "above the heap's size, 1024 bytes"),  # alignment above the heap
    ],
)
def test_bad_geometry_raises_geometry_error(args, words):
    with pytest.raises(sp.GeometryError, match=words):
        Heap.size(*args)
    with pytest.raises(sp.GeometryError, match=words):
        Heap.init(*args, bytearray(4096))


def test_errors_are_runtime_errors_as_in_the_seed():
    for name in [
        "HeapError", "GeometryError", "BufferUnusableError", "NotAHeapError",
        "OutOfMemoryError", "InvalidMemoryError", "RecoveryNeededError",
        "NoRecoveryNeededError", "LockError", "StillAttachedError", "DetachedError",
        "BusyError",
    ]:
        assert issubclass(getattr(sp, name), sp.HeapError), name
    assert issubclass(sp.HeapError, RuntimeError)
    assert issubclass(sp.BitSetError, RuntimeError)


def test_init_over_every_kind_of_memory_aligns_blocks(any_memory):
    heap = Heap.init(20, 6, 4096, any_memory)
    assert heap.init_handle
    block = heap.malloc(5000)
    assert block.block_size == 8192
    # Alignment up to the page size holds in absolute terms, whatever the buffer's start.
    assert address(block) % 4096 == 0
    start, end = address(any_memory), address(any_memory) + len(any_memory)
    assert start <= address(block) and address(block) + 8192 <= end
    fill(block, 7)
    other = Heap.attach(any_memory)
    assert not other.init_handle
    assert other.block(block.offset)[0:5000] == pattern(7, 5000)
    other.free(block)
    other.detach()
    heap.destroy()


def test_init_refuses_memory_it_cannot_use():
    with pytest.raises(sp.BufferUnusableError, match="read-only bytes buffer"):
        Heap.init(16, 6, 64, bytes(Heap.size(16, 6, 64)))
    with pytest.raises(sp.BufferUnusableError, match=r"mem_addr has 1000 bytes.*Heap.size\(16, 6, 64\)"):
        Heap.init(16, 6, 64, bytearray(1000))
    with pytest.raises(sp.BufferUnusableError, match="not contiguous"):
        Heap.init(16, 6, 64, memoryview(bytearray(2 * Heap.size(16, 6, 64)))[::2])
    with pytest.raises(TypeError):
        Heap.init(16, 6, 64, 12345)


def test_attach_refuses_memory_without_a_heap():
    with pytest.raises(sp.NotAHeapError, match="holds no heap"):
        Heap.attach(bytearray(Heap.size(16, 6, 64)))
    for length in (0, 10, 100, 1000):
        for start in range(0, 64, 8):  # whatever the buffer's alignment
            with pytest.raises(sp.NotAHeapError, match="holds no heap"):
                Heap.attach(memoryview(bytearray(length + 64))[start : start + length])
    with pytest.raises(sp.BufferUnusableError, match="read-only"):
        Heap.attach(b"x" * 100)


def test_attach_to_a_truncated_heap_says_it_is_too_small():
    memory = bytearray(Heap.size(16, 6, 64))
    Heap.init(16, 6, 64, memory).detach()
    with pytest.raises(sp.BufferUnusableError, match="the heap needs"):
        Heap.attach(memoryview(memory)[: len(memory) // 2])


# ---- attributes ---------------------------------------------------------------------------


def test_attributes(small_heap):
    heap, memory = small_heap
    assert heap.num_segments == 2**10
    assert heap.segment_size == 64
    assert heap.num_freelists == 11
    assert heap.recovery_needed is False
    assert heap.recovery_reason is None
    assert heap.init_handle is True
    assert (heap.max_sz_pwr, heap.min_sz_pwr, heap.alignment) == (16, 6, 64)
    assert heap.attached is True
    assert heap.memory_object is memory
    # The lock lies in the heap's header, inside the buffer.
    assert address(memory) <= heap.exclusive_access < address(memory) + 4096
    assert heap.lock_patience == 0.5
    heap.lock_patience = 0.1
    assert heap.lock_patience == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lock_patience"):
        heap.lock_patience = -1.0
    assert "by init, attached" in repr(heap)


def test_get_stats_counts_blocks_and_free_lists(small_heap):
    heap, _ = small_heap
    stats = heap.get_stats()
    assert isinstance(stats, MemStat)
    assert (stats.num_segments, stats.segment_size, stats.total_size) == (1024, 64, 65536)
    assert (stats.total_free_space, stats.allocated_bytes, stats.live_blocks) == (65536, 0, 0)
    assert stats.utilization_pct == 0.0
    assert stats.num_block_sizes == 11
    assert stats.free_blocks == {64 << i: int(i == 10) for i in range(11)}
    assert (stats.handles, stats.recovery_needed, stats.recovery_reason) == (1, False, None)
    a, b = heap.malloc(100), heap.malloc(64)
    stats = heap.get_stats()
    assert (stats.allocated_bytes, stats.live_blocks) == (192, 2)
    assert stats.total_free_space == 65536 - 192
    assert stats.utilization_pct == pytest.approx(192 * 100 / 65536)
    assert stats.free_blocks[64] == 1 and stats.free_blocks[128] == 0
    heap.free(a)
    heap.free(b)
    assert heap.get_stats().free_blocks[65536] == 1


def test_dumps(small_heap, capsys):
    heap, _ = small_heap
    heap.malloc(1000)
    text = heap.dump_to_str("my heap")
    assert text.startswith("my heap\n")
    assert "1024 bytes in 1 block(s)" in text
    heap.dump("printed")
    assert capsys.readouterr().out == heap.dump_to_str("printed")
    out = io.StringIO()
    heap.dump_to_file("to a file", out)
    assert out.getvalue() == heap.dump_to_str("to a file")


# ---- malloc and free ----------------------------------------------------------------------


def test_malloc_returns_a_writable_buffer_over_a_block(small_heap):
    heap, _ = small_heap
    mem = heap.malloc(100)
    assert isinstance(mem, Memory)
    assert (len(mem), mem.size, mem.block_size, mem.freed) == (100, 100, 128, False)
    assert mem.offset % 128 == 0
    assert mem.heap is heap
    mem[0:11] = b"Hello world"
    assert mem[0:5] == b"Hello" and mem[0] == ord("H") and mem[-1] == 0
    mem[-1] = 255
    assert mem[99] == 255
    view = memoryview(mem)
    assert (view.readonly, view.nbytes, view.format) == (False, 100, "B")
    view[1:3] = b"EL"
    assert bytes(mem)[:5] == b"HELlo"
    # Strided slices read and write like a bytearray's.
    mem[0:6:2] = b"abc"
    assert mem[0:6:2] == b"abc" and mem[0:6] == b"aEblc "
    # Copying from a view of the same block (overlapping) works as memmove.
    mem[1:11] = view[0:10]
    assert mem[0:11] == b"aaEblc worl"
    view.release()
    assert "100 bytes at offset" in repr(mem)
    heap.free(mem)
    assert mem.freed and "freed" in repr(mem)


def test_memory_object_errors(small_heap):
    heap, _ = small_heap
    mem = heap.malloc(10)
    with pytest.raises(IndexError, match="index 10 is out of range"):
        mem[10]
    with pytest.raises(IndexError):
        mem[-11] = 1
    with pytest.raises(ValueError, match="a slice of 3 bytes cannot take 4 bytes"):
        mem[0:3] = b"abcd"
    with pytest.raises(ValueError, match="int in 0..=255"):
        mem[0] = 256
    with pytest.raises(TypeError):
        mem[0:2] = 12
    # As a bytearray: ints of any size are indices (out of range here), a byte is an int.
    for index in (2**63, -(2**63) - 1, 2**100):
        with pytest.raises(IndexError, match="is out of range"):
            mem[index]
        with pytest.raises(IndexError, match="is out of range"):
            mem[index] = 1
    with pytest.raises(ValueError, match="int in 0..=255"):
        mem[0] = 2**100
    with pytest.raises(TypeError, match="takes an int in 0..=255, not bytes"):
        mem[0] = b"a"
    heap.free(mem)


def test_malloc_sizes_and_exhaustion(small_heap):
    heap, _ = small_heap
    zero = heap.malloc(0)
    assert (len(zero), zero.block_size) == (0, 64)
    assert bytes(zero) == b""
    with pytest.raises(sp.OutOfMemoryError, match="65537 bytes asked for; the largest block is 65536"):
        heap.malloc(65537)
    blocks = [zero] + [heap.malloc(64) for _ in range(1023)]
    assert len({b.offset for b in blocks}) == 1024
    with pytest.raises(sp.OutOfMemoryError, match="no free block of 64 bytes"):
        heap.malloc(64)
    started = time.monotonic()
    with pytest.raises(sp.OutOfMemoryError, match="was freed within"):
        heap.malloc(64, timeout=0.05)
    assert time.monotonic() - started >= 0.05
    with pytest.raises(ValueError, match="timeout"):
        heap.malloc(64, timeout=-1)
    for block in blocks:
        heap.free(block)
    assert heap.get_stats().free_blocks[65536] == 1


def test_a_waiting_malloc_gets_a_block_freed_by_another_thread(small_heap):
    heap, _ = small_heap
    whole = heap.malloc(65536)
    threading.Timer(0.05, heap.free, (whole,)).start()
    block = heap.malloc(1000, timeout=5)
    assert block.block_size == 1024
    heap.free(block)


def test_free_errors(small_heap):
    heap, memory = small_heap
    mem = heap.malloc(64)
    heap.free(mem)
    with pytest.raises(sp.InvalidMemoryError, match="was freed .*; it cannot be used again"):
        heap.free(mem)
    with pytest.raises(TypeError):
        heap.free(memoryview(bytearray(8)))
    # A block of another heap.
    other_memory = bytearray(Heap.size(16, 6, 64))
    other = Heap.init(16, 6, 64, other_memory)
    foreign = other.malloc(64)
    with pytest.raises(sp.InvalidMemoryError, match="belongs to another heap"):
        heap.free(foreign)
    other.free(foreign)
    other.destroy()


def test_a_freed_memory_object_raises_instead_of_touching_the_block(small_heap):
    heap, _ = small_heap
    mem = heap.malloc(64)
    alias = heap.block(mem.offset)
    heap.free(mem)
    for obj in (mem, alias):
        assert obj.freed
        for use in (
            lambda: obj[0],
            lambda: obj.__setitem__(0, 1),
            lambda: obj[0:4],
            lambda: obj.tobytes(),
            lambda: memoryview(obj),
            lambda: bytes(obj),
        ):
            with pytest.raises(sp.InvalidMemoryError, match="was freed"):
                use()
    # The block handed out again is a new object; the old ones stay freed.
    again = heap.malloc(64)
    assert again.offset == mem.offset and not again.freed and mem.freed
    heap.free(again)


def test_a_free_through_another_handle_makes_every_object_of_the_allocation_stale(small_heap):
    # The block's generation moves on with the free, wherever it is made: the objects of
    # this handle see it, and cannot free the block's next allocation.
    heap, memory = small_heap
    mem = heap.malloc(64)
    other = Heap.attach(memory)
    other.free(other.block(mem.offset))
    assert mem.freed
    with pytest.raises(sp.InvalidMemoryError, match="was freed"):
        mem[0] = 1
    again = heap.malloc(64)
    assert again.offset == mem.offset and again.generation != mem.generation
    with pytest.raises(sp.InvalidMemoryError, match="was freed"):
        heap.free(mem)  # the stale object: the new allocation stays live
    assert not again.freed
    again[0:4] = b"live"
    assert heap.block(again.offset).tobytes()[:4] == b"live"
    heap.free(again)
    other.detach()


def test_two_mappings_in_one_process_share_pins_and_generations():
    # One SharedMemory mapped twice in this process: two addresses, one heap (one id). A
    # view through one mapping pins the block for the other; a free through one makes the
    # other's objects stale; objects of either mapping may be freed through the other.
    first_map = shared_memory.SharedMemory(create=True, size=Heap.size(16, 6, 64))
    second_map = shared_memory.SharedMemory(name=first_map.name)
    try:
        first = Heap.init(16, 6, 64, first_map.buf)
        second = Heap.attach(second_map.buf)
        mem = first.malloc(64)
        seen = second.block(mem.offset)
        view = memoryview(seen)
        with pytest.raises(sp.BusyError, match="is pinned by 1 view"):
            first.free(mem)
        view.release()
        second.free(mem)  # an object of the first mapping, freed through the second
        assert mem.freed and seen.freed
        with pytest.raises(sp.InvalidMemoryError, match="was freed"):
            seen[0:4] = b"late"
        stats = first.get_stats()
        assert (stats.live_blocks, stats.recovery_needed) == (0, False)
        del mem, seen, view
        second.detach()
        first.destroy()
    finally:
        second_map.close()
        first_map.close()
        first_map.unlink()


def test_free_refuses_while_a_buffer_is_exported(small_heap):
    heap, _ = small_heap
    mem = heap.malloc(64)
    view = memoryview(mem)
    with pytest.raises(sp.BusyError, match="is pinned by 1 view\\(s\\)"):
        heap.free(mem)
    alias = heap.block(mem.offset)
    with pytest.raises(sp.BusyError):
        heap.free(alias)
    view.release()
    heap.free(alias)
    assert mem.freed


def test_block_finds_live_blocks_by_offset(small_heap):
    heap, _ = small_heap
    mem = heap.malloc(300)
    fill(mem, 99)
    seen = heap.block(mem.offset)
    assert (seen.offset, len(seen), seen.block_size) == (mem.offset, 512, 512)
    assert seen.tobytes()[:300] == pattern(99, 300)
    with pytest.raises(sp.InvalidMemoryError, match="is not a live block"):
        heap.block(mem.offset + 64)
    with pytest.raises(sp.InvalidMemoryError, match="is outside the heap"):
        heap.block(1 << 20)
    heap.free(seen)
    assert mem.freed


# ---- handles: attach, detach, destroy, pinning ----------------------------------------------


def test_handles_share_one_heap(small_heap):
    heap, memory = small_heap
    second = Heap.attach(memory)
    assert (second.max_sz_pwr, second.min_sz_pwr, second.alignment) == (16, 6, 64)
    assert heap.get_stats().handles == 2
    mem = heap.malloc(200)
    fill(mem, 5)
    assert second.block(mem.offset)[0:200] == pattern(5, 200)
    second.free(mem)  # freeing through another handle over the same memory
    assert mem.freed and heap.get_stats().live_blocks == 0
    assert second.exclusive_access == heap.exclusive_access
    second.detach()
    assert heap.get_stats().handles == 1


def test_detach_and_use_after(small_heap):
    heap, memory = small_heap
    second = Heap.attach(memory)
    mem = second.malloc(64)
    second.detach()
    assert not second.attached and "detached" in repr(second)
    with pytest.raises(sp.DetachedError, match="cannot detach: .* detached or destroyed already"):
        second.detach()
    for call in (
        lambda: second.malloc(1),
        lambda: second.free(mem),
        lambda: second.recover(),
        lambda: second.get_stats(),
        lambda: second.dump_to_str("x"),
        lambda: second.block(0),
        lambda: second.with_lock(lambda: None),
        lambda: second.recovery_needed,
        lambda: second.exclusive_access,
    ):
        with pytest.raises(sp.DetachedError):
            call()
    assert second.memory_object is None
    # The memory object outlived its handle: it raises rather than touching the memory.
    with pytest.raises(sp.InvalidMemoryError, match="outlived its Heap handle"):
        mem[0]
    with pytest.raises(sp.InvalidMemoryError, match="outlived its Heap handle"):
        memoryview(mem)
    # The block is still live in the heap: another handle frees it.
    heap.free(heap.block(mem.offset))


def test_detach_and_destroy_refuse_while_a_buffer_is_exported(small_heap):
    heap, _ = small_heap
    mem = heap.malloc(64)
    view = memoryview(mem)
    with pytest.raises(sp.BusyError, match="cannot detach: 1 buffer"):
        heap.detach()
    with pytest.raises(sp.BusyError, match="cannot destroy"):
        heap.destroy()
    view[0] = 1  # still valid memory
    assert mem[0] == 1
    view.release()
    heap.free(mem)


def test_destroy_with_other_handles_attached(small_heap):
    heap, memory = small_heap
    second = Heap.attach(memory)
    with pytest.raises(sp.StillAttachedError, match="2 handles are attached"):
        heap.destroy()
    assert heap.attached  # still usable
    heap.free(heap.malloc(1))
    second.detach()
    heap.destroy()
    assert not heap.attached
    with pytest.raises(sp.DetachedError):
        heap.destroy()
    with pytest.raises(sp.NotAHeapError, match="holds no heap"):
        Heap.attach(memory)


def test_destroy_seen_by_other_handles():
    memory = bytearray(Heap.size(16, 6, 64))
    heap = Heap.init(16, 6, 64, memory)
    second = Heap.attach(memory)
    second.detach()
    heap.destroy()
    with pytest.raises(sp.NotAHeapError):
        Heap.attach(memory)


def test_the_buffer_stays_pinned_while_a_handle_exists():
    memory = bytearray(Heap.size(16, 6, 64))
    heap = Heap.init(16, 6, 64, memory)
    with pytest.raises(BufferError):
        memory.append(0)
    heap.detach()
    memory.append(0)  # free to resize again

    m = mmap.mmap(-1, Heap.size(16, 6, 64))
    heap = Heap.init(16, 6, 64, m)
    with pytest.raises(BufferError):
        m.close()
    heap.destroy()
    m.close()

    shm = shared_memory.SharedMemory(create=True, size=Heap.size(16, 6, 64))
    try:
        heap = Heap.init(16, 6, 64, shm.buf)
        with pytest.raises(BufferError):
            shm.close()
        heap.destroy()
    finally:
        shm.close()
        shm.unlink()


def test_garbage_collection_detaches_and_memory_objects_keep_the_handle():
    memory = bytearray(Heap.size(16, 6, 64))
    heap = Heap.init(16, 6, 64, memory)
    mem = heap.malloc(64)
    mem[0] = 42
    del heap
    gc.collect()
    # The memory object keeps its handle (and so the buffer) alive.
    assert mem[0] == 42 and mem.heap.attached
    with pytest.raises(BufferError):
        memory.append(0)
    mem.heap.free(mem)
    del mem
    gc.collect()
    heap = Heap.attach(memory)
    assert heap.get_stats().handles == 1  # the collected handle was detached
    heap.destroy()
    memory.append(0)  # and nothing pins the buffer any more


# ---- recovery and the lock ----------------------------------------------------------------


def test_recover_raises_when_not_needed(small_heap):
    heap, _ = small_heap
    with pytest.raises(sp.NoRecoveryNeededError, match="does not need recovery"):
        heap.recover()


def test_damage_to_a_free_block_needs_recovery_and_recover_keeps_live_blocks(small_heap):
    heap, memory = small_heap
    keep = heap.malloc(64)
    fill(keep, 11)
    other = heap.malloc(64)  # offset 64; its buddy pair's parent split leaves 128.. free
    heap.free(other)  # merges back; now 64 is free and its links sit in its first bytes
    # A stray write through the raw buffer (not a memory object) over the free block at
    # offset 64: its link words no longer hold what the heap wrote.
    at = address(keep) - address(memory) + 64
    memory[at : at + 24] = b"\xab" * 24
    with pytest.raises(sp.RecoveryNeededError, match="overwritten"):
        heap.malloc(64)
    assert heap.recovery_needed is True
    assert "offset 0x40" in heap.recovery_reason
    assert heap.get_stats().recovery_needed
    # The seed's pattern: free raises while recovery is needed; recover, then free.
    try:
        heap.free(keep)
        raise AssertionError("free should have raised")
    except RuntimeError:
        assert not keep.freed  # the block stayed live
        assert holds(keep, 11)
        heap.recover()
    assert heap.recovery_needed is False
    assert heap.get_stats().live_blocks == 1
    assert holds(keep, 11)
    heap.free(keep)
    stats = heap.get_stats()
    assert (stats.live_blocks, stats.free_blocks[65536]) == (0, 1)


def test_with_lock_runs_code_under_the_lock(small_heap):
    heap, memory = small_heap
    assert heap.with_lock(lambda: 7) == 7

    def inside():
        with pytest.raises(sp.LockError, match="already holds the heap's lock"):
            heap.malloc(1)
        return "done"

    assert heap.with_lock(inside) == "done"
    with pytest.raises(ZeroDivisionError):
        heap.with_lock(lambda: 1 / 0)
    heap.free(heap.malloc(1))  # the lock was released after the exception


def test_lock_patience_bounds_the_wait_for_a_live_holder(small_heap):
    heap, memory = small_heap
    second = Heap.attach(memory)
    second.lock_patience = 0.05
    held = threading.Event()

    def hold():
        heap.with_lock(lambda: (held.set(), time.sleep(0.3)))

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    started = time.monotonic()
    with pytest.raises(sp.LockError, match="still held the heap's lock"):
        second.malloc(1)
    assert time.monotonic() - started >= 0.05
    holder.join()
    second.free(second.malloc(1))
    second.detach()


def test_break_lock_clears_a_lock_named_for_a_live_thread_that_does_not_hold_it(small_heap):
    heap, memory = small_heap
    heap.lock_patience = 0.05
    lock = heap.exclusive_access - address(memory)
    # A stray write (or a dead holder's thread id gone to a live thread): pid 1 is alive.
    struct.pack_into("<I", memory, lock, 1)
    with pytest.raises(sp.LockError, match="still held the heap's lock"):
        heap.malloc(64)
    heap.break_lock()
    assert heap.recovery_needed
    heap.recover()
    heap.free(heap.malloc(64))


def test_destroy_refuses_inside_with_lock(small_heap):
    heap, _ = small_heap
    with pytest.raises(sp.BusyError, match="in use"):
        heap.with_lock(heap.destroy)
    assert heap.attached


def test_threads_share_a_handle_and_never_get_the_same_block(small_heap):
    """Operations let go of the GIL while they wait for the heap's lock: threads of one
    process interleave inside the heap. Each fills its blocks and checks them before
    freeing; a block handed out twice would be overwritten by the other thread."""
    heap, _ = small_heap
    errors = []

    def churn(me):
        try:
            live = []
            for i in range(3000):
                if len(live) < 8 and i % 3 != 2:
                    mem = heap.malloc(64 + (me * 131 + i * 17) % 900)
                    fill(mem, me << 32 | i)
                    live.append((mem, me << 32 | i))
                elif live:
                    mem, tag = live.pop(0)
                    assert holds(mem, tag), f"thread {me}: block at {mem.offset:#x} changed"
                    heap.free(mem)
            for mem, tag in live:
                assert holds(mem, tag)
                heap.free(mem)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=churn, args=(me,)) for me in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = heap.get_stats()
    assert (stats.live_blocks, stats.free_blocks[65536]) == (0, 1)


def test_negative_sizes_and_offsets_are_refused(small_heap):
    heap, _ = small_heap
    with pytest.raises(OverflowError):
        heap.malloc(-1)
    with pytest.raises(sp.InvalidMemoryError, match="offset -64 is outside the heap"):
        heap.block(-64)
    with pytest.raises(sp.InvalidMemoryError, match="is outside the heap"):
        heap.block(2**64)
    with pytest.raises(OverflowError):
        Heap.size(-1, 6, 64)


def test_python_writing_into_the_heap_header_gets_errors_not_a_crash():
    """Python can write every byte of the buffer, the heap's header included. A thread
    scribbles over the lock and a list head while another allocates and frees: the
    allocator sees errors (the heap asks for recovery, or the lock stays busy), never an
    out-of-bounds write. (With a C library mutex in the lock's bytes, this crashed the
    interpreter within seconds.)"""
    buf = bytearray(Heap.size(16, 6, 64))
    heap = Heap.init(16, 6, 64, buf)
    heap.lock_patience = 0.05
    header = buf.find(b"stratBLB")
    assert header >= 0
    lock = heap.exclusive_access - address(buf)
    junk = bytes(range(1, 65))
    stop = False

    def scribble():
        while not stop:
            buf[lock:lock + 64] = junk
            buf[lock:lock + 64] = bytes(64)
            buf[header + 192:header + 200] = (1 << 40).to_bytes(8, "little")
            buf[header + 192:header + 200] = (2**64 - 1).to_bytes(8, "little")

    thread = threading.Thread(target=scribble, daemon=True)
    thread.start()
    errors = 0
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                heap.free(heap.malloc(64))
            except sp.RecoveryNeededError:
                errors += 1
                try:
                    heap.recover()
                except sp.HeapError:
                    pass
            except sp.HeapError:
                errors += 1
    finally:
        stop = True
        thread.join()
    assert errors > 0


def test_init_refuses_memory_of_an_attached_heap():
    """Heap.init over memory that an attached handle of this process uses would reset that
    heap under its handles: refused, naming both ranges; after detach it is allowed."""
    buf = bytearray(Heap.size(16, 6, 64))
    heap = Heap.init(16, 6, 64, buf)
    mem = heap.malloc(100)
    with pytest.raises(sp.BusyError, match="overlaps the memory of a heap"):
        Heap.init(16, 6, 64, buf)
    with pytest.raises(sp.BusyError, match="overlaps"):
        Heap.init(12, 6, 64, memoryview(buf)[4096:])
    assert not mem.freed
    heap.free(mem)
    heap.detach()
    again = Heap.init(16, 6, 64, buf)
    again.destroy()
