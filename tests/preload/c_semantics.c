/* c_semantics.c: checks the C semantics of the allocation API of whatever malloc the
 * process runs with (glibc's, or one put in front of it with LD_PRELOAD).
 *
 * Run by tests/all/preload.rs under LD_PRELOAD=libstratalloc.so; it must also pass
 * under plain glibc, which is how we know the checks themselves are right.
 *
 * Build: gcc -O2 -fno-builtin -pthread tests/preload/c_semantics.c -o c_semantics
 * (-fno-builtin: so that the compiler neither folds nor drops malloc/free pairs.)
 *
 * On success it prints "c_semantics: N checks passed" on stdout and exits 0. On the first
 * failed check it prints "FAIL <check>: <what>" on stderr and exits 1; a crash, abort or
 * hang (alarm) inside a check is reported the same way by a signal handler, naming the
 * check that was running. With -k it reports a failure and goes on with the next group of
 * checks (to survey an allocator), and exits 1 at the end if any failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------- reporting */

static const char *volatile current_check = "startup";
static unsigned checks_run, checks_failed;
static int keep_going;     /* -k: after a failure, go on with the next group of checks */
static jmp_buf next_group; /* where a failure goes with -k */

static void begin(const char *name) {
    current_check = name;
    checks_run++;
}

static void fail(const char *what, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *what, ...) {
    va_list ap;
    fprintf(stderr, "FAIL %s: ", current_check);
    va_start(ap, what);
    vfprintf(stderr, what, ap);
    va_end(ap);
    fputc('\n', stderr);
    checks_failed++;
    if (keep_going) longjmp(next_group, 1);
    exit(1);
}

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) fail(__VA_ARGS__);                                                    \
    } while (0)

/* Async-signal-safe report for a crash, an abort or the alarm inside a check. */
static void on_signal(int sig) {
    const char *name = current_check;
    char num[16];
    int n = 0, s = sig;
    do { num[n++] = (char)('0' + s % 10); s /= 10; } while (s);
    (void)!write(2, "FAIL ", 5);
    (void)!write(2, name, strlen(name));
    (void)!write(2, ": killed by signal ", 19);
    while (n) (void)!write(2, &num[--n], 1);
    (void)!write(2, sig == SIGALRM ? " (alarm: a hang)\n" : "\n", sig == SIGALRM ? 17 : 1);
    _exit(1);
}

/* ---------------------------------------------------------------- helpers */

/* A byte pattern that depends on the position and a seed, so that a block's contents
 * showing up in another block, or shifted, is caught. */
static inline unsigned char pat(size_t i, unsigned seed) {
    return (unsigned char)(seed * 167u + i * 131u + (i >> 9));
}

static void fill(void *p, size_t n, unsigned seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) b[i] = pat(i, seed);
}

/* The index of the first byte that is not the pattern, or n. */
static size_t verify(const void *p, size_t n, unsigned seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != pat(i, seed)) return i;
    return n;
}

static int aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* A little xorshift, so that runs are the same every time. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Sizes from 1 B to 4 MiB: every size up to 256, then steps of about 1/8. */
static size_t sizes[512];
static size_t nsizes;
static void make_sizes(void) {
    for (size_t s = 1; s <= 256; s++) sizes[nsizes++] = s;
    for (size_t s = 257; s <= (4u << 20); s += s / 8 + 3) sizes[nsizes++] = s;
    sizes[nsizes++] = 4u << 20;
}

/* Opaque to the compiler, so that huge requests are not folded at build time. */
static volatile size_t volatile_size_max = SIZE_MAX;

/* ---------------------------------------------------------------- single-thread checks */

static void check_malloc_zero(void) {
    begin("malloc(0)");
    void *a = malloc(0), *b = malloc(0);
    if (a && b) CHECK(a != b, "two live malloc(0) blocks share the address %p", a);
    free(a);
    free(b);
}

static void check_free_null(void) {
    begin("free(NULL)");
    free(NULL);
}

static void check_huge_requests(void) {
    size_t max = volatile_size_max;

    begin("malloc(SIZE_MAX - 100)");
    errno = 0;
    void *p = malloc(max - 100);
    CHECK(p == NULL, "returned %p", p);
    CHECK(errno == ENOMEM, "errno %d, not ENOMEM", errno);

    begin("malloc(SIZE_MAX / 2 + 1)");
    errno = 0;
    p = malloc(max / 2 + 1);
    CHECK(p == NULL, "returned %p", p);
    CHECK(errno == ENOMEM, "errno %d, not ENOMEM", errno);

    begin("calloc(SIZE_MAX / 2, 3) overflow");
    errno = 0;
    p = calloc(max / 2, 3);
    CHECK(p == NULL, "returned %p for a product that overflows", p);
    CHECK(errno == ENOMEM, "errno %d, not ENOMEM", errno);

    begin("calloc(3, SIZE_MAX / 2) overflow");
    errno = 0;
    p = calloc(3, max / 2);
    CHECK(p == NULL, "returned %p for a product that overflows", p);
    CHECK(errno == ENOMEM, "errno %d, not ENOMEM", errno);

    begin("calloc((SIZE_MAX >> 16) + 2, 1 << 16) overflow");
    errno = 0;
    p = calloc((max >> 16) + 2, (size_t)1 << 16);
    CHECK(p == NULL, "returned %p for a product that overflows", p);
    CHECK(errno == ENOMEM, "errno %d, not ENOMEM", errno);

    begin("reallocarray(NULL, SIZE_MAX / 2, 3) overflow");
    errno = 0;
    p = reallocarray(NULL, max / 2, 3);
    CHECK(p == NULL, "returned %p for a product that overflows", p);
    CHECK(errno == ENOMEM, "errno %d, not ENOMEM", errno);

    begin("reallocarray(p, SIZE_MAX / 4, 8) overflow keeps p");
    void *q = malloc(100);
    CHECK(q != NULL, "malloc(100) failed");
    fill(q, 100, 7);
    errno = 0;
    p = reallocarray(q, max / 4, 8);
    CHECK(p == NULL, "returned %p for a product that overflows", p);
    CHECK(errno == ENOMEM, "errno %d, not ENOMEM", errno);
    CHECK(verify(q, 100, 7) == 100, "the old block changed after a failed reallocarray");
    begin("reallocarray(p, 10, 30) grows");
    p = reallocarray(q, 10, 30);
    CHECK(p != NULL, "failed");
    CHECK(verify(p, 100, 7) == 100, "contents lost");
    CHECK(malloc_usable_size(p) >= 300, "usable size %zu < 300", malloc_usable_size(p));
    free(p);

    begin("realloc(p, SIZE_MAX - 100) keeps p");
    q = malloc(64);
    CHECK(q != NULL, "malloc(64) failed");
    fill(q, 64, 9);
    errno = 0;
    p = realloc(q, max - 100);
    CHECK(p == NULL, "returned %p", p);
    CHECK(errno == ENOMEM, "errno %d, not ENOMEM", errno);
    CHECK(verify(q, 64, 9) == 64, "the old block changed after a failed realloc");
    free(q);
}

static void check_calloc_zeroes(void) {
    begin("calloc zeroes");
    /* Dirty blocks first and free them, so that calloc is likely to get them back. */
    for (size_t k = 0; k < nsizes; k += 3) {
        size_t n = sizes[k];
        void *dirty[4];
        for (int j = 0; j < 4; j++) {
            dirty[j] = malloc(n);
            CHECK(dirty[j] != NULL, "malloc(%zu) failed", n);
            memset(dirty[j], 0xA5, n);
        }
        for (int j = 0; j < 4; j++) free(dirty[j]);
        for (int j = 0; j < 4; j++) {
            size_t count = (j & 1) ? n : 1, each = (j & 1) ? 1 : n;
            unsigned char *c = calloc(count, each);
            CHECK(c != NULL, "calloc(%zu, %zu) failed", count, each);
            for (size_t i = 0; i < n; i++)
                CHECK(c[i] == 0, "calloc(%zu, %zu): byte %zu is 0x%02x", count, each, i, c[i]);
            dirty[j] = c;
        }
        for (int j = 0; j < 4; j++) free(dirty[j]);
    }
    begin("calloc(0, n) and calloc(n, 0)");
    void *a = calloc(0, 16), *b = calloc(16, 0);
    free(a);
    free(b);
}

static void check_realloc(void) {
    begin("realloc(NULL, n) acts as malloc");
    for (size_t k = 0; k < nsizes; k += 7) {
        size_t n = sizes[k];
        void *p = realloc(NULL, n);
        CHECK(p != NULL, "realloc(NULL, %zu) failed", n);
        CHECK(malloc_usable_size(p) >= n, "usable size %zu < %zu", malloc_usable_size(p), n);
        fill(p, n, 3);
        CHECK(verify(p, n, 3) == n, "block of %zu does not hold a pattern", n);
        free(p);
    }

    begin("realloc(p, 0) frees");
    for (int j = 0; j < 1000; j++) {
        void *p = malloc(32 + j);
        CHECK(p != NULL, "malloc failed");
        void *q = realloc(p, 0);
        free(q); /* NULL (glibc: p was freed) or a freeable pointer */
    }

    /* Two strings grown in turn, so that growth in place and moves both happen; then the
     * same sizes shrinking. */
    begin("realloc keeps contents while growing");
    unsigned char *s[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    unsigned seed = 1;
    for (size_t k = 0; k < nsizes; k++) {
        for (int w = 0; w < 2; w++) {
            size_t n = sizes[k];
            unsigned char *p = realloc(s[w], n);
            CHECK(p != NULL, "realloc(%p, %zu) failed", (void *)s[w], n);
            size_t bad = verify(p, len[w], seed + w);
            CHECK(bad == len[w], "grow %zu -> %zu: byte %zu lost", len[w], n, bad);
            s[w] = p;
            len[w] = n;
        }
        seed++;
        fill(s[0], len[0], seed);
        fill(s[1], len[1], seed + 1);
        /* an unrelated block between the two, now and then */
        if (k % 16 == 0) free(malloc(sizes[k] / 2 + 1));
    }
    begin("realloc keeps contents while shrinking");
    for (size_t k = nsizes; k-- > 0;) {
        for (int w = 0; w < 2; w++) {
            size_t n = sizes[k] - (sizes[k] > 1 ? w : 0);
            unsigned char *p = realloc(s[w], n);
            CHECK(p != NULL, "realloc(%p, %zu) failed", (void *)s[w], n);
            size_t keep = n < len[w] ? n : len[w];
            size_t bad = verify(p, keep, seed + w);
            CHECK(bad == keep, "shrink %zu -> %zu: byte %zu lost", len[w], n, bad);
            s[w] = p;
            len[w] = n;
        }
        seed++;
        fill(s[0], len[0], seed);
        fill(s[1], len[1], seed + 1);
    }
    free(s[0]);
    free(s[1]);

    begin("realloc to the same size keeps contents");
    for (size_t k = 0; k < nsizes; k += 11) {
        size_t n = sizes[k];
        void *p = malloc(n);
        CHECK(p != NULL, "malloc(%zu) failed", n);
        fill(p, n, 77);
        p = realloc(p, n);
        CHECK(p != NULL, "realloc(p, %zu) failed", n);
        CHECK(verify(p, n, 77) == n, "contents of %zu bytes changed", n);
        free(p);
    }
}

static void check_posix_memalign(void) {
    begin("posix_memalign rejects bad alignments with EINVAL");
    size_t bad[] = {0, 1, 3, sizeof(void *) / 2, sizeof(void *) + 1, sizeof(void *) * 3,
                    24, 48, 96, 100, 4095, 4097, ((size_t)1 << 20) + sizeof(void *)};
    for (size_t j = 0; j < sizeof bad / sizeof bad[0]; j++) {
        void *p = (void *)0x1;
        int rc = posix_memalign(&p, bad[j], 64);
        CHECK(rc == EINVAL, "alignment %zu: returned %d, not EINVAL", bad[j], rc);
    }

    begin("posix_memalign with a huge size returns ENOMEM");
    void *h = NULL;
    int rc = posix_memalign(&h, 64, volatile_size_max - 100);
    CHECK(rc == ENOMEM, "returned %d, not ENOMEM", rc);

    begin("posix_memalign honours alignments 8 B .. 1 MiB");
    for (size_t a = sizeof(void *); a <= ((size_t)1 << 20); a <<= 1) {
        size_t want[] = {1, 8, 24, a - 1, a, a + 1, 3 * a, 100, 5000};
        void *live[9];
        for (int j = 0; j < 9; j++) {
            size_t n = want[j] ? want[j] : 1;
            void *p = NULL;
            rc = posix_memalign(&p, a, n);
            CHECK(rc == 0, "posix_memalign(%zu, %zu) returned %d", a, n, rc);
            CHECK(p != NULL, "posix_memalign(%zu, %zu) gave NULL", a, n);
            CHECK(aligned(p, a), "posix_memalign(%zu, %zu) gave %p", a, n, p);
            CHECK(malloc_usable_size(p) >= n, "usable size %zu < %zu", malloc_usable_size(p), n);
            fill(p, n, (unsigned)(a + j));
            live[j] = p;
        }
        /* all nine live at once: none overlaps another */
        for (int j = 0; j < 9; j++) {
            size_t n = want[j] ? want[j] : 1;
            CHECK(verify(live[j], n, (unsigned)(a + j)) == n,
                  "alignment %zu: block of %zu was overwritten", a, n);
            free(live[j]);
        }
    }
}

static void check_other_aligned(void) {
    long page = sysconf(_SC_PAGESIZE);

    begin("aligned_alloc honours alignment");
    for (size_t a = 1; a <= ((size_t)1 << 20); a <<= 1) {
        for (size_t m = 1; m <= 3; m++) {
            size_t n = a * m;
            void *p = aligned_alloc(a, n);
            CHECK(p != NULL, "aligned_alloc(%zu, %zu) failed", a, n);
            CHECK(aligned(p, a), "aligned_alloc(%zu, %zu) gave %p", a, n, p);
            CHECK(malloc_usable_size(p) >= n, "usable size %zu < %zu", malloc_usable_size(p), n);
            fill(p, n, 5);
            CHECK(verify(p, n, 5) == n, "block does not hold a pattern");
            free(p);
        }
    }

    begin("memalign honours alignment");
    for (size_t a = 1; a <= ((size_t)1 << 20); a <<= 1) {
        size_t want[] = {1, a - 1 ? a - 1 : 1, a + 1, 1000};
        for (int j = 0; j < 4; j++) {
            void *p = memalign(a, want[j]);
            CHECK(p != NULL, "memalign(%zu, %zu) failed", a, want[j]);
            CHECK(aligned(p, a), "memalign(%zu, %zu) gave %p", a, want[j], p);
            memset(p, 0x5A, want[j]);
            free(p);
        }
    }

    begin("valloc is page-aligned");
    for (size_t k = 0; k < nsizes; k += 13) {
        size_t n = sizes[k];
        void *p = valloc(n);
        CHECK(p != NULL, "valloc(%zu) failed", n);
        CHECK(aligned(p, (size_t)page), "valloc(%zu) gave %p", n, p);
        CHECK(malloc_usable_size(p) >= n, "usable size %zu < %zu", malloc_usable_size(p), n);
        memset(p, 0x5A, n);
        free(p);
    }

    begin("pvalloc is page-aligned, its size rounded up to pages");
    for (size_t k = 0; k < nsizes; k += 13) {
        size_t n = sizes[k];
        size_t rounded = (n + (size_t)page - 1) / (size_t)page * (size_t)page;
        void *p = pvalloc(n);
        CHECK(p != NULL, "pvalloc(%zu) failed", n);
        CHECK(aligned(p, (size_t)page), "pvalloc(%zu) gave %p", n, p);
        CHECK(malloc_usable_size(p) >= rounded, "pvalloc(%zu): usable size %zu < %zu pages' %zu",
              n, malloc_usable_size(p), rounded / (size_t)page, rounded);
        memset(p, 0x5A, rounded); /* the whole rounded size is ours */
        free(p);
    }
}

static void check_usable_size(void) {
    begin("malloc_usable_size(NULL) == 0");
    CHECK(malloc_usable_size(NULL) == 0, "returned %zu", malloc_usable_size(NULL));

    /* Blocks of every size live at once, each filled over its whole usable size: a usable
     * size that overstates what the block owns overwrites a neighbour, which shows. */
    begin("malloc_usable_size >= requested and all of it is writable");
    enum { LIVE = 64 };
    void *live[LIVE];
    size_t usable[LIVE];
    for (size_t k0 = 0; k0 < nsizes; k0 += LIVE) {
        size_t m = 0;
        for (size_t k = k0; k < nsizes && m < LIVE; k++, m++) {
            size_t n = sizes[k];
            live[m] = malloc(n);
            CHECK(live[m] != NULL, "malloc(%zu) failed", n);
            usable[m] = malloc_usable_size(live[m]);
            CHECK(usable[m] >= n, "malloc(%zu): usable size %zu", n, usable[m]);
            fill(live[m], usable[m], (unsigned)k);
        }
        for (size_t j = 0; j < m; j++) {
            size_t bad = verify(live[j], usable[j], (unsigned)(k0 + j));
            CHECK(bad == usable[j],
                  "block of %zu (usable %zu): byte %zu overwritten by a neighbour",
                  sizes[k0 + j], usable[j], bad);
        }
        for (size_t j = 0; j < m; j++) {
            /* still the same usable size, and free takes it back */
            CHECK(malloc_usable_size(live[j]) == usable[j], "usable size changed");
            free(live[j]);
        }
    }
}

/* ---------------------------------------------------------------- threads */

enum { THREADS = 4, ROUNDS = 60, BATCH = 400 };

/* Round r: thread t allocates batch[t][r % 2] while it frees (or reallocs, then frees)
 * batch[t + 1][(r - 1) % 2], which its neighbour allocated the round before. */
struct block {
    unsigned char *p;
    size_t n;
    unsigned seed;
};
static struct block batch[THREADS][2][BATCH];
static pthread_barrier_t round_barrier;
static volatile int thread_failed;
static char thread_failure[256];
static pthread_mutex_t failure_lock = PTHREAD_MUTEX_INITIALIZER;

static void thread_fail(const char *msg, size_t a, size_t b) {
    pthread_mutex_lock(&failure_lock);
    if (!thread_failed)
        snprintf(thread_failure, sizeof thread_failure, "%s (%zu, %zu)", msg, a, b);
    thread_failed = 1;
    pthread_mutex_unlock(&failure_lock);
}

static void *cross_thread_worker(void *arg) {
    unsigned t = (unsigned)(uintptr_t)arg;
    uint64_t rng = 0x9E3779B97F4A7C15ull * (t + 1);
    for (unsigned r = 0; r <= ROUNDS; r++) {
        if (r < ROUNDS) {
            struct block *mine = batch[t][r % 2];
            for (int i = 0; i < BATCH; i++) {
                uint64_t x = rng_next(&rng);
                size_t n = (x % 64 == 0) ? 16384 + x % 300000 : 1 + x % 2048;
                mine[i].p = (x & 1) ? malloc(n) : calloc(1, n);
                if (!mine[i].p) { thread_fail("allocation failed", t, n); continue; }
                mine[i].n = n;
                mine[i].seed = (unsigned)(t * 1000003u + r * 1009u + (unsigned)i);
                fill(mine[i].p, n, mine[i].seed);
            }
        }
        if (r > 0) {
            struct block *theirs = batch[(t + 1) % THREADS][(r - 1) % 2];
            for (int i = 0; i < BATCH; i++) {
                struct block *b = &theirs[i];
                if (!b->p) continue;
                if (verify(b->p, b->n, b->seed) != b->n)
                    thread_fail("block from another thread corrupted", b->n, i);
                if (i % 5 == 0) {
                    size_t n = b->n * 2 + 1;
                    unsigned char *q = realloc(b->p, n);
                    if (!q) { thread_fail("realloc failed", b->n, n); continue; }
                    if (verify(q, b->n, b->seed) != b->n)
                        thread_fail("realloc of another thread's block lost contents", b->n, n);
                    b->p = q;
                }
                free(b->p);
                b->p = NULL;
            }
        }
        pthread_barrier_wait(&round_barrier);
    }
    return NULL;
}

static void check_cross_thread(void) {
    begin("4 threads: blocks allocated in one thread, freed in another");
    pthread_t th[THREADS];
    pthread_barrier_init(&round_barrier, NULL, THREADS);
    for (unsigned t = 0; t < THREADS; t++)
        CHECK(pthread_create(&th[t], NULL, cross_thread_worker, (void *)(uintptr_t)t) == 0,
              "pthread_create failed");
    for (unsigned t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    pthread_barrier_destroy(&round_barrier);
    CHECK(!thread_failed, "%s", thread_failure);
}

/* ---------------------------------------------------------------- fork */

static volatile int stop_churn;

static void *churn(void *arg) {
    uint64_t rng = (uintptr_t)arg * 7919 + 1;
    void *held[64] = {0};
    while (!stop_churn) {
        uint64_t x = rng_next(&rng);
        int slot = (int)(x % 64);
        free(held[slot]);
        held[slot] = malloc(1 + (x >> 8) % 8192);
        if (held[slot]) memset(held[slot], 1, 1);
    }
    for (int i = 0; i < 64; i++) free(held[i]);
    return NULL;
}

/* In the child: allocate a little of everything, then exit through exit(). */
static int child_allocates(void) {
    alarm(10); /* a child stuck on a lock that a parent thread held at fork dies here */
    void *p[200];
    for (int i = 0; i < 200; i++) {
        p[i] = (i % 3) ? malloc((size_t)(i * 37 + 1)) : calloc(1, (size_t)(i * 1000 + 1));
        if (!p[i]) return 2;
        fill(p[i], (size_t)(i % 3 ? i * 37 + 1 : i * 1000 + 1), (unsigned)i);
    }
    for (int i = 0; i < 200; i += 2) {
        p[i] = realloc(p[i], (size_t)(i * 91 + 5));
        if (!p[i]) return 3;
    }
    for (int i = 0; i < 200; i++) free(p[i]);
    void *big = malloc(8u << 20);
    if (!big) return 4;
    memset(big, 7, 8u << 20);
    free(big);
    return 0;
}

static int fork_status;
static const char *fork_failure;

static void *forker(void *arg) {
    (void)arg;
    for (int i = 0; i < 25; i++) {
        pid_t pid = fork();
        if (pid < 0) { fork_failure = "fork failed"; return NULL; }
        if (pid == 0) exit(child_allocates());
        int status;
        if (waitpid(pid, &status, 0) != pid) { fork_failure = "waitpid failed"; return NULL; }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fork_status = status;
            fork_failure = "child did not exit cleanly";
            return NULL;
        }
        void *p = malloc(100); /* the parent's thread still allocates after the fork */
        free(p);
    }
    return NULL;
}

static void check_fork(void) {
    begin("fork from a thread while other threads allocate");
    fflush(NULL);
    pthread_t churners[3], f;
    for (uintptr_t t = 0; t < 3; t++)
        CHECK(pthread_create(&churners[t], NULL, churn, (void *)t) == 0, "pthread_create failed");
    CHECK(pthread_create(&f, NULL, forker, NULL) == 0, "pthread_create failed");
    pthread_join(f, NULL);
    stop_churn = 1;
    for (int t = 0; t < 3; t++) pthread_join(churners[t], NULL);
    if (fork_failure && WIFSIGNALED(fork_status))
        fail("%s: killed by signal %d%s", fork_failure, WTERMSIG(fork_status),
             WTERMSIG(fork_status) == SIGALRM ? " (alarm: it hung)" : "");
    CHECK(!fork_failure, "%s (status 0x%x)", fork_failure ? fork_failure : "", fork_status);
}

/* ---------------------------------------------------------------- main */

static void (*const groups[])(void) = {
    check_free_null,      check_malloc_zero,   check_huge_requests, check_calloc_zeroes,
    check_realloc,        check_posix_memalign, check_other_aligned, check_usable_size,
    check_cross_thread,   check_fork,
};

int main(int argc, char **argv) {
    keep_going = argc > 1 && strcmp(argv[1], "-k") == 0;
    int sigs[] = {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL, SIGALRM};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], on_signal);
    alarm(120);
    make_sizes();

    for (volatile size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
        if (setjmp(next_group) == 0) groups[g]();

    if (checks_failed) {
        fprintf(stderr, "c_semantics: %u of %u checks failed\n", checks_failed, checks_run);
        return 1;
    }
    printf("c_semantics: %u checks passed\n", checks_run);
    return 0;
}
