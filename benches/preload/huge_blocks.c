/* huge_blocks.c: a benchmark workload for benches/preload.py. Very large blocks, 5-25 MiB,
 * each written whole (as a program zeroes a fresh buffer) and a few of them live: a pool of
 * slots, each step frees a random slot's block and allocates a new one in its place. Most
 * of the time goes to the kernel's page faults, so it shows whether an allocator keeps and
 * reuses the pages of freed blocks or maps fresh ones.
 *
 * Usage: huge_blocks [blocks] [slots]   (default 600 and 4). Prints the bytes allocated and
 * a checksum of what was read back.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    long blocks = argc > 1 ? atol(argv[1]) : 600;
    size_t nslots = (size_t)(argc > 2 ? atol(argv[2]) : 4);
    unsigned char **p = calloc(nslots, sizeof *p);
    size_t *len = calloc(nslots, sizeof *len);
    if (!p || !len) return 1;
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    unsigned long long allocated = 0, checksum = 0;
    for (long i = 0; i < blocks; i++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        size_t s = rng % nslots;
        if (p[s]) {
            unsigned char tag = (unsigned char)(len[s] | 1);
            if (p[s][0] != tag || p[s][len[s] / 2] != tag || p[s][len[s] - 1] != tag) {
                fputs("huge_blocks: a block was corrupted\n", stderr);
                return 1;
            }
            checksum += len[s];
            free(p[s]);
        }
        size_t n = ((size_t)5 << 20) + (size_t)((rng >> 16) % ((size_t)20 << 20));
        p[s] = malloc(n);
        if (!p[s]) { fputs("huge_blocks: out of memory\n", stderr); return 1; }
        len[s] = n;
        memset(p[s], (int)(n | 1), n);
        allocated += n;
    }
    for (size_t s = 0; s < nslots; s++) free(p[s]);
    free(p); free(len);
    printf("huge_blocks: %ld blocks, %llu MiB allocated, checksum %llu\n", blocks,
           allocated >> 20, checksum);
    return 0;
}
