/* small_objects.c: a benchmark workload for benches/preload.py. Many small, short-lived
 * objects, the way a compiler front end makes them: it generates a source text of
 * arithmetic expressions, tokenizes it into a linked list of tokens (each with a copy of
 * its text), parses the tokens into an AST of 16-128 B nodes, evaluates and frees it all,
 * and repeats.
 *
 * Usage: small_objects [rounds]   (default 8). Prints a checksum of the evaluations.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) { fputs("out of memory\n", stderr); exit(1); }
    return p;
}

/* ---- source generation: "let x12 = (3 + y4) * f(a, 7, b - 2);" lines ---- */

struct text { char *s; size_t len, cap; };
static void put(struct text *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        t->cap = (t->len + n + 1) * 2;
        t->s = realloc(t->s, t->cap);
        if (!t->s) exit(1);
    }
    memcpy(t->s + t->len, s, n);
    t->len += n;
    t->s[t->len] = 0;
}
static void puts_(struct text *t, const char *s) { put(t, s, strlen(s)); }

static void gen_expr(struct text *t, int depth) {
    char buf[32];
    uint64_t r = next();
    if (depth > 5 || r % 4 == 0) {
        if (r & 16) snprintf(buf, sizeof buf, "%u", (unsigned)(r >> 8) % 1000);
        else snprintf(buf, sizeof buf, "v%u", (unsigned)(r >> 8) % 64);
        puts_(t, buf);
        return;
    }
    switch ((r >> 3) % 4) {
    case 0: puts_(t, "("); gen_expr(t, depth + 1); puts_(t, " + "); gen_expr(t, depth + 1); puts_(t, ")"); break;
    case 1: gen_expr(t, depth + 1); puts_(t, " * "); gen_expr(t, depth + 1); break;
    case 2: puts_(t, "("); gen_expr(t, depth + 1); puts_(t, " - "); gen_expr(t, depth + 1); puts_(t, ")"); break;
    default: {
        int args = 1 + (int)((r >> 9) % 4);
        snprintf(buf, sizeof buf, "fn%u(", (unsigned)(r >> 12) % 16);
        puts_(t, buf);
        for (int i = 0; i < args; i++) { if (i) puts_(t, ", "); gen_expr(t, depth + 1); }
        puts_(t, ")");
    }
    }
}

/* ---- tokens: a linked list, each token with its own copy of its text ---- */

enum kind { NUM, NAME, OP, LPAREN, RPAREN, COMMA, SEMI, LET, EQ, END };
struct token { enum kind kind; char *text; struct token *next; };

static struct token *tokenize(const char *s) {
    struct token head = {0}, *tail = &head;
    while (*s) {
        if (*s == ' ' || *s == '\n') { s++; continue; }
        struct token *t = xmalloc(sizeof *t);
        const char *start = s;
        if (*s >= '0' && *s <= '9') { while (*s >= '0' && *s <= '9') s++; t->kind = NUM; }
        else if ((*s >= 'a' && *s <= 'z')) {
            while ((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')) s++;
            t->kind = (s - start == 3 && !memcmp(start, "let", 3)) ? LET : NAME;
        } else {
            switch (*s++) {
            case '(': t->kind = LPAREN; break;
            case ')': t->kind = RPAREN; break;
            case ',': t->kind = COMMA; break;
            case ';': t->kind = SEMI; break;
            case '=': t->kind = EQ; break;
            default: t->kind = OP;
            }
        }
        size_t n = (size_t)(s - start);
        t->text = xmalloc(n + 1 + (n & 7) * 4); /* names and numbers of 16..64 B buffers */
        memcpy(t->text, start, n);
        t->text[n] = 0;
        t->next = NULL;
        tail->next = t;
        tail = t;
    }
    struct token *end = xmalloc(sizeof *end);
    end->kind = END; end->text = NULL; end->next = NULL;
    tail->next = end;
    return head.next;
}

static void free_tokens(struct token *t) {
    while (t) { struct token *n = t->next; free(t->text); free(t); t = n; }
}

/* ---- AST: nodes of several sizes ---- */

struct node {
    char kind;      /* 'n' number, 'v' name, '+', '-', '*', 'c' call */
    int nargs;
    long value;
    char *name;
    struct node *kids[]; /* 2 for operators, nargs for calls */
};

static struct token *cur;

static struct node *parse_expr(void);
static struct node *parse_atom(void) {
    struct token *t = cur;
    cur = cur->next;
    if (t->kind == NUM) {
        struct node *n = xmalloc(sizeof *n);
        n->kind = 'n'; n->nargs = 0; n->value = atol(t->text); n->name = NULL;
        return n;
    }
    if (t->kind == LPAREN) {
        struct node *e = parse_expr();
        cur = cur->next; /* ) */
        return e;
    }
    /* a name, or a call */
    if (cur->kind == LPAREN) {
        struct node *args[8];
        int n = 0;
        cur = cur->next;
        while (cur->kind != RPAREN) {
            args[n++] = parse_expr();
            if (cur->kind == COMMA) cur = cur->next;
        }
        cur = cur->next;
        struct node *c = xmalloc(sizeof *c + (size_t)n * sizeof(struct node *));
        c->kind = 'c'; c->nargs = n; c->value = t->text[2] - '0';
        c->name = strdup(t->text);
        memcpy(c->kids, args, (size_t)n * sizeof args[0]);
        return c;
    }
    struct node *v = xmalloc(sizeof *v);
    v->kind = 'v'; v->nargs = 0; v->value = atol(t->text + 1);
    v->name = strdup(t->text);
    return v;
}

static struct node *binary(char op, struct node *l, struct node *r) {
    struct node *b = xmalloc(sizeof *b + 2 * sizeof(struct node *));
    b->kind = op; b->nargs = 2; b->value = 0; b->name = NULL;
    b->kids[0] = l; b->kids[1] = r;
    return b;
}

static struct node *parse_term(void) {
    struct node *l = parse_atom();
    while (cur->kind == OP && cur->text[0] == '*') { cur = cur->next; l = binary('*', l, parse_atom()); }
    return l;
}

static struct node *parse_expr(void) {
    struct node *l = parse_term();
    while (cur->kind == OP && (cur->text[0] == '+' || cur->text[0] == '-')) {
        char op = cur->text[0];
        cur = cur->next;
        l = binary(op, l, parse_term());
    }
    return l;
}

static long env[64];
static long eval(const struct node *n) {
    switch (n->kind) {
    case 'n': return n->value;
    case 'v': return env[n->value % 64];
    case '+': return eval(n->kids[0]) + eval(n->kids[1]);
    case '-': return eval(n->kids[0]) - eval(n->kids[1]);
    case '*': return (eval(n->kids[0]) * eval(n->kids[1])) % 1000003;
    default: {
        long acc = n->value;
        for (int i = 0; i < n->nargs; i++) acc = (acc * 31 + eval(n->kids[i])) % 1000003;
        return acc;
    }
    }
}

static void free_node(struct node *n) {
    if (n->kind != 'n' && n->kind != 'v')
        for (int i = 0; i < n->nargs; i++) free_node(n->kids[i]);
    free(n->name);
    free(n);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 8;
    unsigned long long checksum = 0, nodes = 0;
    for (int r = 0; r < rounds; r++) {
        struct text src = {0};
        for (int line = 0; line < 4000; line++) {
            char buf[32];
            snprintf(buf, sizeof buf, "let v%d = ", line % 64);
            puts_(&src, buf);
            gen_expr(&src, 0);
            puts_(&src, ";\n");
        }
        struct token *tokens = tokenize(src.s);
        /* statements: let NAME = expr ; */
        cur = tokens;
        struct node **stmts = NULL;
        size_t nstmts = 0, cap = 0;
        int targets[4096];
        while (cur->kind == LET) {
            cur = cur->next;
            int target = atoi(cur->text + 1);
            cur = cur->next->next; /* name, = */
            if (nstmts == cap) {
                cap = cap ? cap * 2 : 16;
                stmts = realloc(stmts, cap * sizeof *stmts);
                if (!stmts) return 1;
            }
            targets[nstmts % 4096] = target;
            stmts[nstmts++] = parse_expr();
            cur = cur->next; /* ; */
        }
        free_tokens(tokens);
        free(src.s);
        for (size_t i = 0; i < nstmts; i++) {
            long v = eval(stmts[i]);
            env[targets[i % 4096] % 64] = v;
            checksum = checksum * 1099511628211ull + (unsigned long long)v;
            free_node(stmts[i]);
        }
        nodes += nstmts;
        free(stmts);
    }
    printf("small_objects: %d rounds, %llu statements, checksum %016llx\n", rounds, nodes, checksum);
    return 0;
}
