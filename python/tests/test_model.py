"""A property test: programs of malloc, free, write, attach and detach, run by
hypothesis against a model of the live blocks (offset -> size, block size, contents).

After every step: no two live blocks overlap, every block holds what was last written to
it, the heap's figures match the model's, and memory objects of freed blocks or of
detached handles raise instead of reading memory."""

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import stratalloc_py as sp
from stratalloc_py import Heap
from conftest import fill, pattern

MAX, MIN = 14, 5  # a 16 KiB heap of blocks from 32 bytes up: small, so it fills up


class HeapModel(RuleBasedStateMachine):
    @initialize()
    def make(self):
        self.memory = bytearray(Heap.size(MAX, MIN, 64))
        self.first = Heap.init(MAX, MIN, 64, self.memory)
        self.handles = [self.first]
        self.live = {}  # offset -> [Memory, size, tag]
        self.stale = []  # memory objects that must raise
        self.views = {}  # offset -> memoryviews alive over the block (each pins it)
        self.next_tag = 1

    def teardown(self):
        if not hasattr(self, "first"):
            return
        for views in self.views.values():
            for view in views:
                view.release()
        for mem, size, tag in list(self.live.values()):
            self.first.free(self.first.block(mem.offset))
        for handle in self.handles[1:]:
            handle.detach()
        self.first.destroy()

    @rule(size=st.integers(0, 1 << MAX), which=st.integers(0, 7))
    def malloc(self, size, which):
        handle = self.handles[which % len(self.handles)]
        try:
            mem = handle.malloc(size)
        except sp.OutOfMemoryError:
            # A buddy heap may be too fragmented; but an empty heap always has room.
            assert self.live, f"an empty heap refused {size} bytes"
            return
        expected = max(1 << MIN, 1 << max(size - 1, 0).bit_length())
        assert (len(mem), mem.block_size) == (size, expected)
        assert mem.offset % expected == 0 and mem.offset + expected <= 1 << MAX
        for other, _, _ in self.live.values():
            assert (
                mem.offset + mem.block_size <= other.offset
                or other.offset + other.block_size <= mem.offset
            ), f"{mem!r} overlaps {other!r}"
        tag = self.next_tag
        self.next_tag += 1
        fill(mem, tag)
        self.live[mem.offset] = [mem, size, tag]

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 1 << 30), which=st.integers(0, 7))
    def free(self, pick, which):
        offset = sorted(self.live)[pick % len(self.live)]
        mem, size, tag = self.live[offset]
        assert mem[0:size] == pattern(tag, size)
        handle = self.handles[which % len(self.handles)]
        if self.views.get(offset):
            with pytest.raises(sp.BusyError, match="is pinned by"):
                handle.free(mem)
            assert not mem.freed
            return
        del self.live[offset]
        handle.free(mem)
        assert mem.freed
        self.stale.append(mem)

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 1 << 30))
    def view(self, pick):
        # Through a second object over the block, of the first handle (never detached).
        offset = sorted(self.live)[pick % len(self.live)]
        self.views.setdefault(offset, []).append(memoryview(self.first.block(offset)))

    @precondition(lambda self: any(self.views.values()))
    @rule(pick=st.integers(0, 1 << 30))
    def release(self, pick):
        offsets = sorted(o for o, views in self.views.items() if views)
        self.views[offsets[pick % len(offsets)]].pop().release()

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 1 << 30))
    def write(self, pick):
        entry = self.live[sorted(self.live)[pick % len(self.live)]]
        entry[2] = self.next_tag
        self.next_tag += 1
        entry[0][0 : entry[1]] = pattern(entry[2], entry[1])

    @precondition(lambda self: self.stale)
    @rule(pick=st.integers(0, 1 << 30))
    def stale_objects_raise(self, pick):
        mem = self.stale[pick % len(self.stale)]
        with pytest.raises(sp.InvalidMemoryError):
            mem[0:1]
        with pytest.raises(sp.InvalidMemoryError):
            memoryview(mem)
        if mem.freed:
            with pytest.raises(sp.InvalidMemoryError, match="was freed"):
                self.first.free(mem)

    @precondition(lambda self: len(self.handles) < 4)
    @rule()
    def attach(self):
        self.handles.append(Heap.attach(self.memory))

    @precondition(lambda self: len(self.handles) > 1)
    @rule(pick=st.integers(0, 7))
    def detach(self, pick):
        handle = self.handles.pop(1 + pick % (len(self.handles) - 1))
        handle.detach()
        # Its memory objects outlived it: reach their blocks again through the first handle.
        for entry in self.live.values():
            if entry[0].heap is handle:
                self.stale.append(entry[0])
                entry[0] = self.first.block(entry[0].offset)

    @invariant()
    def figures_and_contents_match_the_model(self):
        if not hasattr(self, "first"):
            return
        stats = self.first.get_stats()
        assert stats.live_blocks == len(self.live)
        assert stats.allocated_bytes == sum(m.block_size for m, _, _ in self.live.values())
        assert stats.handles == len(self.handles)
        assert not stats.recovery_needed
        for mem, size, tag in self.live.values():
            assert mem[0:size] == pattern(tag, size)
            for view in self.views.get(mem.offset, []):
                assert bytes(view[0:size]) == pattern(tag, size)


HeapModel.TestCase.settings = settings(
    max_examples=400, stateful_step_count=60, deadline=None
)
TestHeapModel = HeapModel.TestCase
