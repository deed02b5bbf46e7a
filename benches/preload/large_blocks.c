/* large_blocks.c: a benchmark workload for benches/preload.py. Large blocks, 16 KiB -
 * 4 MiB (log-uniform, so as many of 16-64 KiB as of 1-4 MiB), the way image, column and
 * I/O buffers come and go: a pool of slots, each step frees a random slot's block and
 * allocates a new one in it, writes every page of it and reads back a few words.
 *
 * Usage: large_blocks [steps] [slots]   (default 20000 and 48). Prints the bytes
 * allocated and a checksum of what was read back.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

struct slot { unsigned char *p; size_t len; unsigned char tag; };

int main(int argc, char **argv) {
    long steps = argc > 1 ? atol(argv[1]) : 20000;
    size_t nslots = (size_t)(argc > 2 ? atol(argv[2]) : 48);
    struct slot *slots = calloc(nslots, sizeof *slots);
    if (!slots) return 1;
    unsigned long long allocated = 0, checksum = 0;
    for (long i = 0; i < steps; i++) {
        uint64_t r = next();
        struct slot *s = &slots[r % nslots];
        if (s->p) {
            /* what was written is still there */
            if (s->p[0] != s->tag || s->p[s->len - 1] != s->tag) {
                fprintf(stderr, "block of %zu corrupted\n", s->len);
                return 1;
            }
            checksum += s->p[(s->len / 2) & ~(size_t)4095] + s->len; /* a written byte */
            free(s->p);
        }
        /* 2^14 .. 2^22 bytes, log-uniform, plus an odd remainder */
        unsigned shift = 14 + (unsigned)((r >> 16) % 8);
        size_t len = ((size_t)1 << shift) + (size_t)((r >> 24) % ((size_t)1 << shift));
        if (len > ((size_t)4 << 20)) len = (size_t)4 << 20;
        s->p = malloc(len);
        if (!s->p) { fputs("out of memory\n", stderr); return 1; }
        s->len = len;
        s->tag = (unsigned char)(i | 1);
        for (size_t off = 0; off < len; off += 4096) s->p[off] = s->tag;
        s->p[len - 1] = s->tag;
        allocated += len;
    }
    for (size_t i = 0; i < nslots; i++) free(slots[i].p);
    free(slots);
    printf("large_blocks: %ld steps, %llu MiB allocated, checksum %llu\n", steps, allocated >> 20,
           checksum);
    return 0;
}
