/* stratalloc.h: what the stratalloc malloc replacement exports beyond the C
 * library's allocation functions (malloc, free, calloc, realloc, reallocarray,
 * posix_memalign, aligned_alloc, memalign, valloc, pvalloc, malloc_usable_size, declared
 * by <stdlib.h> and <malloc.h>). Built from the package in malloc/:
 *
 *   cargo build --profile preload -p stratalloc-malloc
 *   gcc -I malloc prog.c -L target/preload -lstratalloc \
 *       -Wl,-rpath,$PWD/target/preload
 *   gcc -I malloc prog.c target/preload/libstratalloc.a
 *
 * or loaded into any program with LD_PRELOAD=.../libstratalloc.so.
 */
#ifndef STRATALLOC_MALLOC_H
#define STRATALLOC_MALLOC_H

#ifdef __cplusplus
extern "C" {
#endif

/* Counts allocations for the summary from now on (on != 0), or stops counting. Counting
 * is on from the start when the environment has STRATALLOC_SUMMARY set (not to "0") as
 * the library loads; then the summary is also printed to stderr at exit. */
void stratalloc_set_counting(int on);

/* Writes the heap summary (totals, the peak, live blocks by size, the blocks still live)
 * to the file descriptor fd, without allocating: 0 when all of it was written, -1 with
 * errno set by write(2) otherwise. */
int stratalloc_summary(int fd);

/* glibc's convention: the heap summary on stderr. */
void malloc_stats(void);

#ifdef __cplusplus
}
#endif

#endif /* STRATALLOC_MALLOC_H */
