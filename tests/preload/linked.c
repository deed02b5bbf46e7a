/* A C program that links the malloc replacement (shared or static) instead of preloading
 * it, and asks for the heap summary on its own: counting on, three blocks allocated, one
 * freed, the summary on stdout (stratalloc_summary) and on stderr (malloc_stats). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stratalloc.h"

int main(void) {
    stratalloc_set_counting(1);
    char *a = malloc(40);
    char *b = malloc(3000);
    char *c = malloc(100);
    if (!a || !b || !c) {
        return 1;
    }
    memset(a, 1, 40);
    memset(b, 2, 3000);
    memset(c, 3, 100);
    free(c);
    fflush(stdout);
    if (stratalloc_summary(1) != 0) {
        return 2;
    }
    malloc_stats();
    if (stratalloc_summary(-1) != -1) {
        return 3;
    }
    free(a);
    free(b);
    printf("linked: done\n");
    return 0;
}
