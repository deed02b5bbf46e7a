"""BitSet: every method and attribute of the seed's class, and each documented error."""

import multiprocessing
from multiprocessing import shared_memory

import pytest

import stratalloc_py as sp
from stratalloc_py import BitSet


def test_size_is_header_and_bits():
    # Three words of header, then a word per 64 bits.
    assert BitSet.size(0) == 24
    assert BitSet.size(1) == 32
    assert BitSet.size(64) == 32
    assert BitSet.size(65) == 40
    assert BitSet.size(1000) == 24 + 16 * 8


def test_init_get_set_reset():
    space = bytearray(BitSet.size(100))
    bits = BitSet.init(100, space)
    assert bits._attach is False
    assert bits.get_num_bits() == 100
    assert bits.get_count() == 0
    assert all(bits.get_bit(i) == 0 for i in range(100))
    bits.set_bit(3)
    bits.set_bit(3)
    bits.set_bit(99)
    assert (bits.get_bit(3), bits.get_bit(4), bits.get_bit(99)) == (1, 0, 1)
    assert bits.get_count() == 2
    bits.reset_bit(3)
    bits.reset_bit(3)
    assert bits.get_bit(3) == 0 and bits.get_count() == 1
    assert "100 bits, 1 set, by init" in repr(bits)
    bits.destroy()


def test_right_zeroes_counts_clear_bits_after_the_index():
    bits = BitSet.init(200, bytearray(BitSet.size(200)))
    bits.set_bit(10)
    bits.set_bit(150)
    assert bits.right_zeroes(10) == 139  # 11..=149
    assert bits.right_zeroes(0) == 9  # 1..=9; bit 0 itself is not counted
    assert bits.right_zeroes(150) == 49  # to the end
    assert bits.right_zeroes(199) == 0
    bits.destroy()


@pytest.mark.parametrize("call", ["get_bit", "set_bit", "reset_bit", "right_zeroes"])
@pytest.mark.parametrize("idx", [100, 1000, -1, 2**63, -(2**63) - 1, 2**100])
def test_out_of_range_indices_raise(call, idx):
    bits = BitSet.init(100, bytearray(BitSet.size(100)))
    with pytest.raises(sp.BitIndexError, match=f"bit index {idx} is out of range for a bitmap of 100 bits"):
        getattr(bits, call)(idx)
    with pytest.raises(RuntimeError):  # the seed's exception
        getattr(bits, call)(idx)
    bits.destroy()


def test_attach_sees_the_same_set():
    space = bytearray(BitSet.size(70))
    made = BitSet.init(70, space)
    made.set_bit(69)
    joined = BitSet.attach(space)
    assert joined._attach is True
    assert joined.get_num_bits() == 70 and joined.get_bit(69) == 1
    joined.set_bit(0)
    assert made.get_bit(0) == 1
    # A view of the same memory is the same set.
    assert BitSet.attach(memoryview(space)).get_count() == 2
    joined.detach()
    made.destroy()


def test_init_and_attach_errors():
    with pytest.raises(sp.BitSetError, match="needs 4 words of memory, 3 were given"):
        BitSet.init(64, bytearray(24))
    with pytest.raises(sp.NotABitSetError, match="holds no bitmap"):
        BitSet.attach(bytearray(64))
    with pytest.raises(sp.BitSetError, match="needs 3 words"):
        BitSet.attach(bytearray(8))
    with pytest.raises(sp.BitSetError, match="read-only"):
        BitSet.init(8, bytes(64))
    with pytest.raises(sp.BitSetError, match="not on an 8-byte boundary"):
        BitSet.init(8, memoryview(bytearray(80))[3:])
    with pytest.raises(TypeError):
        BitSet.init(8, 42)
    with pytest.raises(OverflowError):
        BitSet.init(-1, bytearray(64))


def test_detach_and_destroy_follow_how_the_handle_was_made():
    space = bytearray(BitSet.size(10))
    made = BitSet.init(10, space)
    joined = BitSet.attach(space)
    with pytest.raises(sp.BitSetError, match="made by init: destroy"):
        made.detach()
    with pytest.raises(sp.BitSetError, match="made by attach: detach"):
        joined.destroy()
    joined.detach()
    with pytest.raises(sp.BitSetError, match="detached already"):
        joined.detach()
    with pytest.raises(sp.BitSetError, match="detached or destroyed"):
        joined.get_bit(0)
    assert "detached" in repr(joined)
    made.destroy()
    with pytest.raises(sp.BitSetError, match="detached or destroyed"):
        made.destroy()
    for call in ("get_num_bits", "get_count"):
        with pytest.raises(sp.BitSetError):
            getattr(made, call)()
    # Destroyed: the memory no longer holds a set.
    with pytest.raises(sp.NotABitSetError):
        BitSet.attach(space)


def test_the_memory_stays_pinned_while_a_handle_exists():
    space = bytearray(BitSet.size(10))
    bits = BitSet.init(10, space)
    with pytest.raises(BufferError):
        space.append(0)
    bits.destroy()
    space.append(0)
    joined = BitSet.init(10, space)
    del joined  # garbage collection lets go too
    space.append(0)


def test_dumps(capsys):
    bits = BitSet.init(130, bytearray(BitSet.size(130)))
    for i in (0, 2, 64, 129):
        bits.set_bit(i)
    text = bits.dump_to_str("my set", "> ")
    lines = text.splitlines()
    assert lines[0] == "> my set"
    assert lines[1] == "> bits: 130, set: 4, bytes in memory: 48"
    assert lines[2].startswith(">          0: 1.1.....")
    assert all(line.startswith("> ") for line in lines)
    bits.dump("printed", "  ")
    assert capsys.readouterr().out == bits.dump_to_str("printed", "  ")
    assert bits.dump_to_str("no indent").startswith("no indent\n")
    bits.destroy()


def _child_sets_bits(name, bits):
    shm = shared_memory.SharedMemory(name=name)
    try:
        joined = BitSet.attach(shm.buf)
        for i in bits:
            joined.set_bit(i)
        joined.detach()
    finally:
        shm.close()


def test_a_set_in_shared_memory_is_seen_by_another_process():
    shm = shared_memory.SharedMemory(create=True, size=BitSet.size(1000))
    try:
        made = BitSet.init(1000, shm.buf)
        child = multiprocessing.get_context("fork").Process(
            target=_child_sets_bits, args=(shm.name, [1, 500, 999])
        )
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert [i for i in range(1000) if made.get_bit(i)] == [1, 500, 999]
        made.destroy()
    finally:
        shm.close()
        shm.unlink()
