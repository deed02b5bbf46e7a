"""Helpers shared by the tests: memory for heaps, block patterns, block addresses."""

import ctypes
import mmap
from multiprocessing import shared_memory

import pytest

from stratalloc_py import Heap


def address(buffer) -> int:
    """The address of a writable buffer's first byte (bytearray, memoryview, Memory)."""
    view = memoryview(buffer)
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    finally:
        view.release()


def pattern(tag: int, length: int) -> bytes:
    """The bytes a block tagged `tag` holds: its tag's 8 bytes, repeated."""
    unit = (tag & (2**64 - 1)).to_bytes(8, "little")
    return (unit * (length // 8 + 1))[:length]


def fill(mem, tag: int) -> None:
    mem[0 : len(mem)] = pattern(tag, len(mem))


def holds(mem, tag: int) -> bool:
    return mem.tobytes() == pattern(tag, len(mem))


@pytest.fixture
def small_heap():
    """A 64 KiB heap of blocks from 64 bytes up in a bytearray, and its memory."""
    memory = bytearray(Heap.size(16, 6, 64))
    heap = Heap.init(16, 6, 64, memory)
    yield heap, memory
    if heap.attached:
        heap.detach()


@pytest.fixture(params=["bytearray", "mmap", "shared_memory", "unaligned_view"])
def any_memory(request):
    """Writable memory of each kind a heap may live in, 1 MiB + the slack Heap.size adds."""
    size = Heap.size(20, 6, 4096)
    if request.param == "bytearray":
        yield bytearray(size)
    elif request.param == "mmap":
        m = mmap.mmap(-1, size)
        yield m
        m.close()
    elif request.param == "shared_memory":
        shm = shared_memory.SharedMemory(create=True, size=size)
        yield shm.buf
        shm.close()
        shm.unlink()
    else:
        # A view that starts 3 bytes into a bytearray: the heap's start is aligned inside.
        yield memoryview(bytearray(size + 3))[3:]
