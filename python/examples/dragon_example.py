"""The Dragon heap manager seed's example (`Example usage`), as it is written there.

Its typos are fixed, and each fix is marked with a comment: the seed passes the class
`bytearray` to `Heap.init` and `attach` where it means the memory object it made, calls
`HeapHandle.attach` for `Heap.attach`, writes through `tmp` for `tmp_mem`, and puts the
11 bytes of b'Hello world' into a 10-byte slice (a memory object, like a memoryview,
keeps its size). The import names this package instead of `dragon.malloc.heapmanager`.

Run: python examples/dragon_example.py [max_sz_pwr]  (32 by default: the seed's 4 GiB
heap in a 4 GiB bytearray; give a smaller power for a quick run).
"""

import sys

from stratalloc_py import Heap

max_sz_pwr = int(sys.argv[1]) if len(sys.argv) > 1 else 32

# Get a 4GB Heap with 4k minimum segment sizes
heap_size = Heap.size(max_sz_pwr, 12, 4096)
# Allocate a memory object
memobj = bytearray(heap_size)
# Initialize the handle
heap_handle = Heap.init(max_sz_pwr, 12, 4096, memobj)  # seed: `bytearray` for `memobj`
# Attach another handle
heap_handle_2 = Heap.attach(memobj)  # seed: `HeapHandle.attach(bytearray)`

# Get some memory from the heap
tmp_mem = heap_handle.malloc(32)
# Do some stuff with the memory...
tmp_mem[0:11] = b'Hello world'  # seed: `tmp[0:10]`

# Free the memory
# When recovery is needed, runtime exception will be thrown
try:
    heap_handle.free(tmp_mem)
except:  # noqa: E722 (the seed's bare except)
    heap_handle.recover()
    heap_handle.free(tmp_mem)

# Detach the other handle
heap_handle_2.detach()

# Dump heap info
heap_handle.dump("Heap info")

# Destroy the handle
heap_handle.destroy()
