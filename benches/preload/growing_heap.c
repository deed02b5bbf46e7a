/* growing_heap.c: a benchmark workload for benches/preload.py. A long-lived heap that grows
 * to a few hundred MB of mixed sizes, with churn: an in-memory cache (a hash table with an
 * LRU list) asked for keys with a skewed popularity; a miss allocates the value (64 B -
 * 64 KiB, most of them small) and inserts it, and once the values pass the cache's budget
 * the least recently used entries are evicted (freed) until they fit again.
 *
 * Usage: growing_heap [requests] [budget MiB]   (default 700000 and 300). Prints hits,
 * misses, evictions and a checksum of the values read.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    uint64_t key;
    struct entry *chain;      /* hash bucket */
    struct entry *prev, *next; /* LRU list, most recent at the head */
    size_t len;
    unsigned char *value;
};

static struct entry **buckets;
static size_t nbuckets;
static struct entry lru = {.prev = &lru, .next = &lru};
static size_t bytes, budget, entries;

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) { fputs("out of memory\n", stderr); exit(1); }
    return p;
}

static uint64_t rng = 0x853c49e6748fea9bull;
static uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static void unlink_lru(struct entry *e) { e->prev->next = e->next; e->next->prev = e->prev; }
static void push_lru(struct entry *e) {
    e->next = lru.next; e->prev = &lru; lru.next->prev = e; lru.next = e;
}
static size_t bucket(uint64_t key) { return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) % nbuckets; }

static void grow_table(void) {
    size_t old = nbuckets;
    struct entry **was = buckets;
    nbuckets = old ? old * 2 : 1024;
    buckets = calloc(nbuckets, sizeof *buckets);
    if (!buckets) exit(1);
    for (size_t i = 0; i < old; i++)
        for (struct entry *e = was[i], *n; e; e = n) {
            n = e->chain;
            size_t b = bucket(e->key);
            e->chain = buckets[b];
            buckets[b] = e;
        }
    free(was);
}

static void evict(void) {
    struct entry *e = lru.prev;
    unlink_lru(e);
    struct entry **p = &buckets[bucket(e->key)];
    while (*p != e) p = &(*p)->chain;
    *p = e->chain;
    bytes -= e->len;
    entries--;
    free(e->value);
    free(e);
}

int main(int argc, char **argv) {
    long requests = argc > 1 ? atol(argv[1]) : 700000;
    budget = (size_t)(argc > 2 ? atol(argv[2]) : 300) << 20;
    long hits = 0, misses = 0, evictions = 0;
    uint64_t checksum = 0;
    grow_table();
    for (long i = 0; i < requests; i++) {
        /* popularity: a product of two uniforms, so low keys are asked for far more often */
        uint64_t r = next();
        uint64_t key = ((r & 0xFFFFF) * ((r >> 20) & 0xFFFFF)) >> 20;
        struct entry *e = buckets[bucket(key)];
        while (e && e->key != key) e = e->chain;
        if (e) {
            hits++;
            unlink_lru(e);
            push_lru(e);
            checksum += e->value[key % e->len] + e->len;
            continue;
        }
        misses++;
        uint64_t s = next();
        size_t len = (s & 7) ? 64 + s % 960 : (s & 0x38) ? 1024 + (s >> 8) % 7168 : 8192 + (s >> 8) % 57344;
        e = xmalloc(sizeof *e);
        e->key = key;
        e->len = len;
        e->value = xmalloc(len);
        memset(e->value, (int)(key & 0xFF), len);
        size_t b = bucket(key);
        e->chain = buckets[b];
        buckets[b] = e;
        push_lru(e);
        bytes += len;
        if (++entries > nbuckets) grow_table();
        while (bytes > budget) { evict(); evictions++; }
    }
    printf("growing_heap: %ld requests, %ld hits, %ld misses, %ld evictions, %zu entries, %zu MiB live, checksum %llu\n",
           requests, hits, misses, evictions, entries, bytes >> 20, (unsigned long long)checksum);
    while (lru.next != &lru) evict();
    free(buckets);
    return 0;
}
