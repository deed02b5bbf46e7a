/* random_sizes.c: a benchmark workload for benches/preload.py. Random sizes in a tight
 * loop: each thread keeps a window of 2048 slots and, each step, frees a random slot's block
 * and allocates one of a random size in its place, 8 B - 32 KiB log-uniform (as many of
 * 8-16 B as of 16-32 KiB, with an odd remainder), writing its first and last byte. The
 * threads share nothing.
 *
 * Usage: random_sizes [threads] [steps per thread]   (default 1 and 10000000). Prints the
 * bytes allocated and a checksum of what was read back.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define SLOTS 2048

static long steps;

struct result { unsigned long long allocated, checksum; int bad; };

static void *worker(void *arg) {
    uint64_t rng = 0x2545F4914F6CDD1Dull * ((uint64_t)(uintptr_t)arg + 1);
    struct result *res = calloc(1, sizeof *res);
    unsigned char **p = calloc(SLOTS, sizeof *p);
    size_t *len = calloc(SLOTS, sizeof *len);
    if (!res || !p || !len) return NULL;
    for (long i = 0; i < steps; i++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        size_t s = rng % SLOTS;
        if (p[s]) {
            unsigned char tag = (unsigned char)(len[s] | 1);
            if (p[s][0] != tag || p[s][len[s] - 1] != tag) res->bad = 1;
            res->checksum += len[s];
            free(p[s]);
        }
        unsigned shift = 3 + (unsigned)((rng >> 16) % 12);
        size_t n = ((size_t)1 << shift) + (size_t)((rng >> 24) % ((size_t)1 << shift));
        p[s] = malloc(n);
        if (!p[s]) { res->bad = 1; return res; }
        len[s] = n;
        p[s][0] = p[s][n - 1] = (unsigned char)(n | 1);
        res->allocated += n;
    }
    for (size_t s = 0; s < SLOTS; s++) free(p[s]);
    free(p); free(len);
    return res;
}

int main(int argc, char **argv) {
    size_t nthreads = (size_t)(argc > 1 ? atol(argv[1]) : 1);
    steps = argc > 2 ? atol(argv[2]) : 10000000;
    pthread_t *threads = calloc(nthreads, sizeof *threads);
    if (!threads) return 1;
    for (size_t t = 0; t < nthreads; t++)
        if (pthread_create(&threads[t], NULL, worker, (void *)(uintptr_t)t)) return 1;
    unsigned long long allocated = 0, checksum = 0;
    int bad = 0;
    for (size_t t = 0; t < nthreads; t++) {
        struct result *res;
        pthread_join(threads[t], (void **)&res);
        if (!res) return 1;
        allocated += res->allocated; checksum += res->checksum; bad |= res->bad;
        free(res);
    }
    free(threads);
    if (bad) { fputs("random_sizes: a block was corrupted\n", stderr); return 1; }
    printf("random_sizes: %zu threads, %llu MiB allocated, checksum %llu\n", nthreads,
           allocated >> 20, checksum);
    return 0;
}
