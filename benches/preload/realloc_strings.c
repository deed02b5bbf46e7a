/* realloc_strings.c: a benchmark workload for benches/preload.py. Realloc-heavy string
 * building, the way naive C code builds output: many strings, each grown by appending a
 * piece (a word, a number, a separator) at a time with realloc to the exact new length;
 * a string that reaches its limit is written out (folded into a checksum) and started
 * again.
 *
 * Usage: realloc_strings [appends] [strings]   (default 3000000 and 20000). Prints the
 * bytes appended, the strings finished and a checksum of their contents.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct str { char *s; size_t len, limit; };

static uint64_t rng = 0xda942042e4dd58b5ull;
static uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static const char *const words[] = {
    "alloc", "free", "heap", "layer", "chunk", "segregate", "fallback", "region", "arena",
    "bitmap", "page", "span", "slab", "size-class", "remote", "thread", "cache", "batch",
};

static uint64_t fold(uint64_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

int main(int argc, char **argv) {
    long appends = argc > 1 ? atol(argv[1]) : 3000000;
    size_t nstr = (size_t)(argc > 2 ? atol(argv[2]) : 20000);
    struct str *strs = calloc(nstr, sizeof *strs);
    if (!strs) return 1;
    for (size_t i = 0; i < nstr; i++) {
        uint64_t r = next();
        /* most strings short lines, some long documents */
        strs[i].limit = (r & 15) ? 64 + r % 2000 : 16384 + (r >> 8) % 250000;
    }
    uint64_t checksum = 14695981039346656037ull;
    unsigned long long total = 0, finished = 0;
    for (long a = 0; a < appends; a++) {
        uint64_t r = next();
        struct str *s = &strs[(r >> 32) % nstr];
        char piece[32];
        size_t n;
        switch (r & 3) {
        case 0: n = (size_t)snprintf(piece, sizeof piece, "%u", (unsigned)(r >> 12) % 100000); break;
        case 1: n = 1; piece[0] = (r & 4) ? ' ' : ','; break;
        default: {
            const char *w = words[(r >> 8) % (sizeof words / sizeof words[0])];
            n = strlen(w);
            memcpy(piece, w, n);
        }
        }
        char *grown = realloc(s->s, s->len + n + 1);
        if (!grown) { fputs("out of memory\n", stderr); return 1; }
        memcpy(grown + s->len, piece, n);
        s->len += n;
        grown[s->len] = 0;
        s->s = grown;
        total += n;
        if (s->len >= s->limit) {
            checksum = fold(checksum, s->s, s->len);
            finished++;
            free(s->s);
            s->s = NULL;
            s->len = 0;
        }
    }
    for (size_t i = 0; i < nstr; i++) {
        if (strs[i].s) checksum = fold(checksum, strs[i].s, strs[i].len);
        free(strs[i].s);
    }
    free(strs);
    printf("realloc_strings: %ld appends, %llu bytes, %llu strings finished, checksum %016llx\n",
           appends, total, finished, (unsigned long long)checksum);
    return 0;
}
