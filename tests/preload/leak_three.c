/* leak_three.c: a program that leaks exactly three blocks (40, 3000 and 700000 bytes),
 * for the heap-summary test in tests/all/preload.rs.
 *
 * Before the leaks it allocates and frees an 8 MiB block and a 100-byte one, so a summary
 * must report at least 5 allocations, 2 frees and a peak of at least 8 MiB. It uses no
 * stdio (whose buffers glibc takes from malloc and never frees), so that the three blocks
 * are all that is live at exit. It exits 0 through return from main, so that exit-time
 * hooks run.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *volatile keep[3]; /* the leaks stay reachable until exit, as leaks do */

int main(void) {
    char *big = malloc(8u << 20);
    if (!big) return 2;
    memset(big, 1, 8u << 20);
    free(big);
    char *small = malloc(100);
    if (!small) return 2;
    memset(small, 2, 100);
    free(small);

    static const size_t leak[3] = {40, 3000, 700000};
    for (int i = 0; i < 3; i++) {
        keep[i] = malloc(leak[i]);
        if (!keep[i]) return 2;
        memset(keep[i], 3, leak[i]);
    }
    if (write(1, "leaked 3 blocks\n", 16) != 16) return 3;
    return 0;
}
