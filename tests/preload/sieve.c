/* sieve.c: the small program that tests/all/preload.rs compiles with gcc, with and without
 * the preloaded malloc, and runs: the two binaries must print the same. It has one unused
 * variable on purpose, so that gcc -Wall writes a warning to stderr that is compared too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct prime {
    unsigned value;
    struct prime *next;
};

int main(int argc, char **argv) {
    unsigned limit = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 2000000;
    int unused_on_purpose;
    char *composite = calloc(limit + 1, 1);
    if (!composite) return 1;
    struct prime *head = NULL;
    unsigned count = 0;
    unsigned long long sum = 0;
    for (unsigned i = 2; i <= limit; i++) {
        if (composite[i]) continue;
        struct prime *p = malloc(sizeof *p);
        if (!p) return 1;
        p->value = i;
        p->next = head;
        head = p;
        count++;
        sum += i;
        for (unsigned long long j = (unsigned long long)i * i; j <= limit; j += i)
            composite[j] = 1;
    }
    printf("primes up to %u: %u, sum %llu, largest %u\n", limit, count, sum, head ? head->value : 0);
    while (head) {
        struct prime *next = head->next;
        free(head);
        head = next;
    }
    free(composite);
    return 0;
}
