/* producer_consumer.c: a benchmark workload for benches/preload.py. Two threads: the
 * producer allocates messages of 32 B - 1 KiB, fills them, and passes them through a
 * bounded single-producer single-consumer queue; the consumer checks and frees them. Every
 * block is freed by a thread other than the one that allocated it, the case thread caches
 * find hardest. Given a largest size past 1 KiB, the messages are 16 B up to that size
 * instead, log-uniform (as many of 16-32 B as in the top doubling), in rpmalloc's style.
 *
 * Usage: producer_consumer [messages] [largest message]   (default 3000000 and 1024).
 * Prints the consumer's checksum, which must equal the producer's.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct message {
    uint32_t len; /* payload bytes */
    uint32_t seq;
    uint64_t sum; /* of the payload bytes */
    unsigned char payload[];
};

enum { SLOTS = 1024 };
static struct message *ring[SLOTS];
static _Atomic size_t head, tail; /* head: next to write; tail: next to read */
static long total;
static uint32_t largest = 1024;
static uint64_t produced_sum, consumed_sum;

static void *producer(void *arg) {
    (void)arg;
    uint64_t rng = 0x9E3779B97F4A7C15ull, sum = 0;
    for (long i = 0; i < total; i++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        uint32_t len;
        if (largest <= 1024) {
            /* mostly small, sometimes up to 1 KiB, as log messages and requests are */
            len = (rng & 3) ? 32 + (uint32_t)(rng >> 8) % 224 : 32 + (uint32_t)(rng >> 8) % 992;
        } else {
            /* a doubling from 16 B up, picked uniformly, then a size uniform inside it */
            unsigned doublings = 0;
            while ((16u << (doublings + 1)) <= largest) doublings++;
            unsigned shift = 4 + (unsigned)((rng >> 8) % doublings);
            len = (1u << shift) + (uint32_t)((rng >> 24) % (1u << shift));
        }
        len -= (uint32_t)sizeof(struct message) > len ? 0 : (uint32_t)sizeof(struct message);
        struct message *m = malloc(sizeof *m + len);
        if (!m) { fputs("out of memory\n", stderr); exit(1); }
        m->len = len;
        m->seq = (uint32_t)i;
        uint64_t s = 0;
        for (uint32_t j = 0; j < len; j += 8) { m->payload[j] = (unsigned char)(i + j); s += (unsigned char)(i + j); }
        m->sum = s;
        sum += s;
        size_t h = atomic_load_explicit(&head, memory_order_relaxed);
        while (h - atomic_load_explicit(&tail, memory_order_acquire) == SLOTS) sched_yield();
        ring[h % SLOTS] = m;
        atomic_store_explicit(&head, h + 1, memory_order_release);
    }
    produced_sum = sum;
    return NULL;
}

static void *consumer(void *arg) {
    (void)arg;
    uint64_t sum = 0;
    for (long i = 0; i < total; i++) {
        size_t t = atomic_load_explicit(&tail, memory_order_relaxed);
        while (atomic_load_explicit(&head, memory_order_acquire) == t) sched_yield();
        struct message *m = ring[t % SLOTS];
        atomic_store_explicit(&tail, t + 1, memory_order_release);
        uint64_t s = 0;
        for (uint32_t j = 0; j < m->len; j += 8) s += m->payload[j];
        if (s != m->sum || m->seq != (uint32_t)i) { fprintf(stderr, "message %ld corrupted\n", i); exit(1); }
        sum += s;
        free(m);
    }
    consumed_sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    total = argc > 1 ? atol(argv[1]) : 3000000;
    if (argc > 2) largest = (uint32_t)atol(argv[2]);
    if (largest < 32) { fputs("the largest message is at least 32 bytes\n", stderr); return 1; }
    pthread_t p, c;
    pthread_create(&c, NULL, consumer, NULL);
    pthread_create(&p, NULL, producer, NULL);
    pthread_join(p, NULL);
    pthread_join(c, NULL);
    if (produced_sum != consumed_sum) { fputs("checksums differ\n", stderr); return 1; }
    printf("producer_consumer: %ld messages, checksum %llu\n", total, (unsigned long long)consumed_sum);
    return 0;
}
