/* larson.c: a benchmark workload for benches/preload.py. A server simulation in the style
 * of Larson's benchmark: threads allocate blocks of 8-1000 bytes and free blocks that other
 * threads allocated. T threads share T partitions of S slots; in round r thread t works on
 * partition (t + r) % T, each step freeing a random slot's block (after checking the bytes
 * its writer left) and allocating a new one in its place. The threads meet at a barrier
 * between rounds and the partitions rotate, so most frees are of another thread's blocks.
 *
 * Usage: larson [threads] [rounds] [steps per round] [slots per thread]
 *        (default 4 40 200000 1000). Prints the bytes allocated and a checksum of what was
 *        read back, the same whatever the scheduling.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct slot { unsigned char *p; size_t len; };

static long rounds, steps;
static size_t nthreads, nslots;
static struct slot *slots;
static pthread_barrier_t barrier;

struct result { unsigned long long allocated, checksum; int bad; };

static uint64_t next(uint64_t *rng) {
    *rng ^= *rng << 13; *rng ^= *rng >> 7; *rng ^= *rng << 17;
    return *rng;
}

static void *worker(void *arg) {
    size_t t = (size_t)(uintptr_t)arg;
    struct result *res = calloc(1, sizeof *res);
    if (!res) return NULL;
    for (long r = 0; r < rounds; r++) {
        uint64_t rng = 0x9E3779B97F4A7C15ull * (t + 1) ^ (uint64_t)(r + 1) * 0xD1B54A32D192ED03ull;
        struct slot *part = &slots[((t + (size_t)r) % nthreads) * nslots];
        for (long i = 0; i < steps; i++) {
            uint64_t x = next(&rng);
            struct slot *s = &part[x % nslots];
            if (s->p) {
                unsigned char tag = (unsigned char)(s->len | 1);
                if (s->p[0] != tag || s->p[s->len - 1] != tag) res->bad = 1;
                res->checksum += s->p[s->len / 2] + s->len;
                free(s->p);
            }
            size_t len = 8 + (size_t)((x >> 20) % 993);
            s->p = malloc(len);
            if (!s->p) { res->bad = 1; return res; }
            s->len = len;
            unsigned char tag = (unsigned char)(len | 1);
            s->p[0] = tag; s->p[len / 2] = (unsigned char)x; s->p[len - 1] = tag;
            res->allocated += len;
        }
        pthread_barrier_wait(&barrier);
    }
    return res;
}

int main(int argc, char **argv) {
    nthreads = (size_t)(argc > 1 ? atol(argv[1]) : 4);
    rounds = argc > 2 ? atol(argv[2]) : 40;
    steps = argc > 3 ? atol(argv[3]) : 200000;
    nslots = (size_t)(argc > 4 ? atol(argv[4]) : 1000);
    slots = calloc(nthreads * nslots, sizeof *slots);
    pthread_t *threads = calloc(nthreads, sizeof *threads);
    if (!slots || !threads || pthread_barrier_init(&barrier, NULL, (unsigned)nthreads)) return 1;
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
    for (size_t i = 0; i < nthreads * nslots; i++) free(slots[i].p);
    free(slots); free(threads);
    if (bad) { fputs("larson: a block was corrupted\n", stderr); return 1; }
    printf("larson: %zu threads, %llu MiB allocated, checksum %llu\n", nthreads,
           allocated >> 20, checksum);
    return 0;
}
