/* diffops: the operation language of the differential tester.
 *
 * A program is a sequence of operations over a small pool of AF_UNIX
 * SOCK_STREAM socketpairs ("slots").  Slot i's watched end `a` is pinned at fd
 * DO_FD_BASE + 2i and its peer `b` at DO_FD_BASE + 2i + 1 (dup2), so fd
 * numbers are the same on every run and close/reuse of a number is part of
 * the language.  The interpreter runs one program against one backend (a
 * fresh loop and fresh sockets per run) and records a trace; do_compare()
 * decides whether two traces are equivalent under the contract (see
 * diffops.c for the relation and the reasons).
 *
 * Programs are decoded from bytes (do_decode), so the seeded tester (bytes
 * from a PRNG, do_generate) and the libFuzzer target share one language.
 *
 * Operations (top level; most can also be a timer callback's scripted action):
 *   add s mask        px_io_add(a_s, mask, io_cb, slot)
 *   mod s mask        px_io_mod(a_s, mask)
 *   del s             px_io_del(a_s)
 *   pwrite s n        peer b_s writes up to n bytes (n = 0: until EAGAIN)
 *   pread s n         peer b_s reads up to n bytes  (n = 0: until EAGAIN)
 *   awrite s n        a_s writes up to n bytes, outside any callback
 *   aread s n         a_s reads up to n bytes, outside any callback
 *   shut s            shutdown(b_s, SHUT_WR)
 *   pclose s          close(b_s)
 *   aclose s          close(a_s) (while registered: the slot is "tainted")
 *   reopen s          new socketpair dup2'ed onto a_s and b_s (while a_s is
 *                     registered: close+reuse of a registered number, tainted)
 *   conf s r w n act  level callback behaviour of slot s: read mode r (drain,
 *                     partial n, none), write mode w (none, fill, some n), and
 *                     a one-shot action for its next callback (del self, mod
 *                     self, del+add self, add a timer, del+close+reopen+add,
 *                     del+close)
 *   tadd after rep A  px_timer_add(after 0 or 1 hour, repeat 0 or 1 hour)
 *                     whose callback runs the scripted action A (any op but a
 *                     nested tadd-with-action; "run" from a callback checks
 *                     -EBUSY)
 *   tdel t            px_timer_del of the t-th timer created (mod count)
 *   run k             k iterations of px_loop_run(PX_RUN_NOWAIT)
 *
 * The io callback of a slot records (iteration, slot, revents) and then:
 *   PX_ET watchers:   PX_READ -> read until EAGAIN/EOF/error,
 *                     PX_WRITE -> write until EAGAIN/error (the only defined
 *                     behaviour for ET, and it keeps epoll's "any event
 *                     re-reports EPOLLOUT" out of the picture: a filled
 *                     socket is not writable);
 *   level watchers:   as configured by conf;
 *   (writes happen only when the socket polled writable before the wait and
 *   still does: see rule 6 in diffops.c)
 *   then the pending one-shot action, if any.
 */
#ifndef PX_DIFFOPS_H
#define PX_DIFFOPS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "pollux.h"

#define DO_NSLOTS  6
#define DO_FD_BASE 600
#define DO_MAXOPS  4096
#define DO_MAXTIMERS 512

enum do_kind {
	DO_ADD,
	DO_MOD,
	DO_DEL,
	DO_PWRITE,
	DO_PREAD,
	DO_AWRITE,
	DO_AREAD,
	DO_SHUT,
	DO_PCLOSE,
	DO_ACLOSE,
	DO_REOPEN,
	DO_CONF,
	DO_TADD,
	DO_TDEL,
	DO_RUN,
	DO_NKINDS
};

/* conf: read modes, write modes, one-shot callback actions */
enum { DO_R_DRAIN, DO_R_PARTIAL, DO_R_NONE };
enum { DO_W_NONE, DO_W_FILL, DO_W_SOME };
enum {
	DO_A_NONE,
	DO_A_DEL,       /* px_io_del(self) */
	DO_A_MOD,       /* px_io_mod(self, mask) */
	DO_A_READD,     /* px_io_del + px_io_add(self, mask) */
	DO_A_TADD,      /* px_timer_add(0, 0) */
	DO_A_REOPEN,    /* px_io_del, close, reopen, px_io_add(mask) */
	DO_A_DELCLOSE,  /* px_io_del, close(a) */
	DO_A_MOD0,      /* px_io_mod(self, 0) */
	DO_A_N
};

/* One basic operation (also a timer's scripted action). */
struct do_act {
	uint8_t kind;
	uint8_t slot;
	uint8_t mask;   /* add/mod: events; conf: r | w << 2 | act << 4 */
	uint8_t flags;  /* tadd: 1 = after 1 hour, 2 = repeat 1 hour; conf: action mask */
	uint32_t n;     /* bytes, iterations, timer index, conf size */
};

struct do_op {
	struct do_act a;
	struct do_act sub; /* tadd: the callback's action (kind DO_NKINDS: none) */
};

struct do_prog {
	int nops;
	struct do_op ops[DO_MAXOPS];
};

/* Decodes bytes into a program (at most max_ops operations, and DO_MAXOPS).
 * Every byte string is a valid program. */
void do_decode(struct do_prog *p, const uint8_t *buf, size_t len, int max_ops);
/* A random program of nops operations from a seed. */
void do_generate(struct do_prog *p, uint64_t seed, int nops);

/* Trace records. */
enum { R_RC, R_IO, R_TIMER, R_SNAP };
#define RF_TAINT  0x01u /* io callback of a tainted slot / rc of an undefined call */
#define RF_INIO   0x02u /* recorded inside an io callback */
#define RF_IOTIMER 0x04u /* timer created from an io callback */
#define RF_SKIP   0x08u /* op not applicable (fd closed...): nothing was done */
#define RF_ETEOF  0x10u /* io: ET watcher whose read side was seen at EOF, or
                         * whose write side failed (EPIPE...), before */

struct do_rec {
	uint8_t type;
	uint8_t flags;
	uint8_t slot;
	uint8_t kind;    /* R_RC: the op kind; R_IO: the armed mask */
	int32_t op;      /* top-level op index */
	int32_t iter;    /* loop iteration (counted by the interpreter) */
	int64_t val;     /* rc, revents, timer index, snapshot */
};

struct do_trace {
	const char *backend;
	int n, cap;
	struct do_rec *r;
	int overflow;
};

void do_trace_free(struct do_trace *t);

/* Runs program p on a fresh loop of the named backend; fills t.
 * Returns 0, or -errno when the loop or the sockets could not be made. */
int do_run(const struct do_prog *p, const char *backend, struct do_trace *t);

/* Equivalence of two traces of the same program (see diffops.c).  Returns
 * 1 when equivalent; else 0, and describes the first difference on out
 * (when out is not NULL), with the program listing up to that op. */
int do_compare(const struct do_prog *p, const struct do_trace *x, const struct do_trace *y,
               FILE *out);

/* Runs p on every backend of px_backends() and compares each pair.
 * Returns the number of differing pairs (0: all equivalent); describes them
 * on out.  Negative: a run could not be set up. */
int do_check_all(const struct do_prog *p, FILE *out);

/* Writes a readable listing of ops [from, to) to out. */
void do_print_prog(const struct do_prog *p, int from, int to, FILE *out);
void do_print_trace(const struct do_trace *t, FILE *out);

/* Relaxations of the equivalence (bit set, default DO_RELAX_DEFAULT;
 * $PX_DIFF_RELAX overrides it with a number). */
#define DO_RELAX_ETEOF 0x01u /* ET callbacks after the read side hit EOF or a
                               * write failed: not compared, no actions (epoll
                               * re-reports on any later wake-up, hang-up
                               * included; select/poll stay silent) */
#define DO_RELAX_LATEHUP 0x02u /* timer callbacks do not px_io_mod a slot with a
                                * pending hang-up/error (poll/epoll deliver the
                                * new directions in the same iteration from
                                * the HUP seen by the wait; select one later) */
#define DO_RELAX_DEFAULT (DO_RELAX_LATEHUP | DO_RELAX_ETEOF)
extern unsigned do_relax;

#endif
