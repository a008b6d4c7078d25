/* diffops: the operation language of the differential tester.
 *
 * A program is a sequence of operations over a small pool of "slots".  Slot
 * i's watched end `a` is pinned at fd DO_FD_BASE + 2i and its peer `b` at
 * DO_FD_BASE + 2i + 1 (dup2), so fd numbers are the same on every run and
 * close/reuse of a number is part of the language.  A slot starts as an
 * AF_UNIX SOCK_STREAM socketpair; `reuse` puts another kind of file at a's
 * number (see below).  The interpreter runs one program against one backend
 * (a fresh loop and fresh files per run) and records a trace; do_compare()
 * decides whether two traces are equivalent under the contract (see
 * diffops.c for the relation and the reasons), and the interpreter itself
 * checks the contract's per-backend invariants and records violations
 * (R_ERR), which fail a program whatever the comparison says.
 *
 * Programs are decoded from bytes (do_decode), so the seeded tester (bytes
 * from a PRNG, do_generate) and the libFuzzer target share one language.
 *
 * Operations (top level; most can also be a timer callback's scripted action):
 *   add s mask        px_io_add(a_s, mask, io_cb, token)
 *   mod s mask        px_io_mod(a_s, mask)
 *   del s             px_io_del(a_s)
 *   pwrite s n        the peer writes up to n bytes (n = 0: until EAGAIN):
 *                     socket/pipe: b_s; UDP: one datagram from b_s; eventfd:
 *                     adds n to the counter; regular file: no-op (skipped)
 *   pread s n         the peer reads up to n bytes (socket, UDP; else skipped)
 *   awrite s n        a_s writes up to n bytes (socket, UDP), outside callbacks
 *   aread s n         a_s reads up to n bytes (not a regular file)
 *   shut s            shutdown(b_s, SHUT_WR) (pipe: close of its write end)
 *   pclose s          close(b_s)
 *   aclose s          close(a_s) (while registered: the slot is "tainted")
 *   reopen s          new socketpair dup2'ed onto a_s and b_s (while a_s is
 *                     registered: close+reuse of a registered number, tainted)
 *   conf s r w n act  level callback behaviour of slot s: read mode r (drain,
 *                     partial n, none), write mode w (none, fill, some n), and
 *                     a one-shot action for its next callback (del self, mod
 *                     self, del+add self, add a timer, del+close+reopen+add,
 *                     del+close, mod 0, del+close+reuse(kind)+add, dup+del+
 *                     close+reopen+add)
 *   tadd after rep A  px_timer_add(after 0 or 1 hour, repeat 0 or 1 hour)
 *                     whose callback runs the scripted action A (any op but a
 *                     nested tadd-with-action and many; "run" from a callback
 *                     checks -EBUSY)
 *   tdel t            px_timer_del of the t-th timer created (mod count)
 *   run k             k iterations of px_loop_run(PX_RUN_NOWAIT)
 *  Operations that model other holders of a file (processes, copies):
 *   dup s             a copy of a_s at the first free copy number of slot s
 *                     (DO_COPY_BASE + DO_NCOPY*s + k), kept until dupclose
 *                     or the end of the program
 *   dup2 s k          dup2(a_s, copy number k of s) (replaces that copy)
 *   dupclose s k      closes the k-th (mod count) open copy of slot s
 *   fork spawn|end    a child process holding copies of every fd (it blocks
 *                     reading a pipe, exits when told, at the end of the
 *                     program, when the parent dies, or after 120 s; it is
 *                     reaped with waitpid); at most DO_MAXCHILD at a time
 *   scm s recv|fly|drain
 *                     sends a_s over an AF_UNIX socket with SCM_RIGHTS and
 *                     keeps the received copy (as a copy of s), or leaves it
 *                     in flight in the socket buffer; drain receives and
 *                     closes every copy in flight
 *   reuse s kind mask px_io_del(a_s), close(a_s) and b_s, another kind of file
 *                     at a_s's number, px_io_add(a_s, mask).  Kinds: socket
 *                     pair, pipe (read end at a, write end at b), regular
 *                     file (contract: -EPERM on epoll; always ready on select
 *                     and poll), UDP socket bound to 127.0.0.1:0 (b: a UDP
 *                     socket connected to it), with or without a datagram
 *                     queued, eventfd with or without a count
 *   refuse s mask     a change the kernel refuses at the flush: a_s
 *                     registered (px_io_add(READ) first if needed), a regular
 *                     file dup2'ed onto its number, px_io_mod(a_s, mask) with
 *                     another mask (epoll: PX_ERR once in the next iteration,
 *                     then disarmed; select/poll: a regular file, always ready)
 *   many k            more than 2,048 extra socketpairs above the pinned range
 *                     (made once per process and kept: they are left empty),
 *                     registered PX_READ level-triggered, thousands ready at
 *                     once; optionally with a refused change in the same flush.
 *                     Callback counts are recorded in aggregate.  At most one
 *                     per program, rare in generated programs (do_many_gate).
 *
 * The io callback of a slot records (iteration, slot, revents), checks the
 * contract's invariants (see diffops.c) and then:
 *   PX_ET watchers:   PX_READ -> read until EAGAIN/EOF/error,
 *                     PX_WRITE -> write until EAGAIN/error (the only defined
 *                     behaviour for ET, and it keeps epoll's "any event
 *                     re-reports EPOLLOUT" out of the picture: a filled
 *                     socket is not writable);
 *   level watchers:   as configured by conf;
 *   (writes happen only on socketpairs, only when the socket polled writable
 *   before the wait and still does: see rule 6 in diffops.c)
 *   then the pending one-shot action, if any.
 */
#ifndef PX_DIFFOPS_H
#define PX_DIFFOPS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "pollux.h"

#define DO_NSLOTS    6
#define DO_FD_BASE   600  /* slot i: a at 600 + 2i, b at 601 + 2i */
#define DO_NCOPY     4
#define DO_COPY_BASE 640  /* copy k of slot i at 640 + 4i + k */
#define DO_COURIER   690  /* SCM_RIGHTS: 690/691 left in flight, 692/693 received at once */
#define DO_MANY_BASE 1000 /* many: pair j at 1000 + 2j / 1001 + 2j; refused fd at 998 */
#define DO_MAXCHILD  2
#define DO_MAXOPS    4096
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
	DO_DUP,
	DO_DUP2,
	DO_DUPCLOSE,
	DO_FORK,
	DO_SCM,
	DO_REUSE,
	DO_REFUSE,
	DO_MANY,
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
	DO_A_REUSE,     /* px_io_del, close, another kind of file, px_io_add(mask) */
	DO_A_DUPREOPEN, /* dup(a), px_io_del, close, reopen, px_io_add(mask) */
	DO_A_N
};

/* reuse: the kinds of file put at a slot's number */
enum {
	DO_K_SOCK,  /* AF_UNIX socketpair */
	DO_K_PIPE,  /* pipe: read end at a, write end at b */
	DO_K_FILE,  /* regular (temporary) file, no peer */
	DO_K_UDP,   /* UDP socket on 127.0.0.1, b connected to it */
	DO_K_UDPQ,  /* the same with a datagram queued */
	DO_K_EVFD,  /* eventfd, count 0, no peer */
	DO_K_EVFDC, /* eventfd with a count */
	DO_K_N
};

/* One basic operation (also a timer's scripted action). */
struct do_act {
	uint8_t kind;
	uint8_t slot;
	uint8_t mask;   /* add/mod/reuse/refuse: events; conf: r | w << 2 | act << 4 */
	uint8_t flags;  /* tadd: 1 = after 1 hour, 2 = repeat 1 hour; conf: action mask;
	                 * fork: 1 = end a child; scm: 0 recv, 1 in flight, 2 drain */
	uint32_t n;     /* bytes, iterations, timer index, conf size, reuse kind, many shape */
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

/* A "many" operation is decoded only when its third byte is below this
 * (0..256; default 8: about one program in twenty of 200 operations has one,
 * seven of test_diff's 200 seeds); otherwise it is "run 1".  0 turns "many"
 * off. */
extern unsigned do_many_gate;

/* Trace records. */
enum { R_RC, R_IO, R_TIMER, R_SNAP, R_ERR, R_MANY };
#define RF_TAINT  0x01u /* io callback of a tainted slot / rc of an undefined call */
#define RF_INIO   0x02u /* recorded inside an io callback */
#define RF_IOTIMER 0x04u /* timer created from an io callback */
#define RF_SKIP   0x08u /* op not applicable (fd closed...): nothing was done */
#define RF_ETEOF  0x10u /* io: ET watcher whose read side was seen at EOF, or
                         * whose write side failed (EPIPE...), before */
#define RF_FILE   0x20u /* a regular file's registration: the backends differ by
                         * contract (epoll -EPERM / PX_ERR; select, poll always
                         * ready); checked per backend, compared only between
                         * backends of the same side */
#define RF_NOCMP  0x40u /* informational (aggregate counts): never compared */

/* Contract violations found by the interpreter (R_ERR records, kind). */
enum do_viol {
	V_NONE,
	V_DEAD,         /* callback of a registration that px_io_del removed */
	V_STALE,        /* callback, in the same iteration, of a registration made
	                 * during that iteration (stale result) */
	V_TWICE,        /* two callbacks for one fd in one iteration */
	V_MASK,         /* revents outside the armed mask, or a disarmed watcher called */
	V_STRAY,        /* revents the fd's current file does not justify (not
	                 * readable / writable / hung up / in error) */
	V_EPERM,        /* epoll: px_io_add of a regular file did not give -EPERM */
	V_NOERR,        /* epoll: a refused change did not come back as PX_ERR once */
	V_FILECB,       /* epoll: a callback for a regular file that is not the
	                 * PX_ERR of a refused change */
	V_ETSPIN,       /* select/poll: an ET read side at end of file reported again
	                 * and again (the header: idle for good) */
	V_FD,           /* the callback's fd is not the registered one */
	V_MANY_DEAD,    /* many: callback after px_io_del */
	V_MANY_TWICE,   /* many: an fd called twice in one iteration */
	V_MANY_NOTREADY,/* many: an fd called while not ready */
	V_MANY_REV,     /* many: revents other than PX_READ */
	V_MANY_STARVED, /* many: a ready fd not called within the bound */
	V_MANY_REFUSE,  /* many: the refused fd broke its backend's rule */
	V_MANY_RC,      /* many: px_io_add / px_io_del of an extra fd failed */
	V_FILEQUIET,    /* select/poll: an armed level watcher of a regular file
	                 * (always ready) not called in an iteration */
	V_N
};
const char *do_viol_name(int v);
/* A mask of violations (1 << v) from a list of their names ("stray,twice") */
unsigned do_viol_parse(const char *list);
/* Violations that do not fail a program ($PX_DIFF_IGNORE: a list of names),
 * e.g. to look past a known library bug for the next one.  They are still
 * recorded, and the traces still compared. */
extern unsigned do_viol_ignore;

struct do_rec {
	uint8_t type;
	uint8_t flags;
	uint8_t slot;
	uint8_t kind;    /* R_RC: the op kind; R_IO: the armed mask; R_ERR: enum do_viol */
	int32_t op;      /* top-level op index */
	int32_t iter;    /* loop iteration (counted by the interpreter) */
	int64_t val;     /* rc, revents, timer index, snapshot, count */
};

struct do_trace {
	const char *backend;
	int n, cap;
	struct do_rec *r;
	int overflow;
	unsigned viol;   /* bit v: a violation v was recorded */
};

void do_trace_free(struct do_trace *t);

/* Runs program p on a fresh loop of the named backend; fills t.
 * Returns 0, or -errno when the loop or the files could not be made. */
int do_run(const struct do_prog *p, const char *backend, struct do_trace *t);

/* Equivalence of two traces of the same program (see diffops.c).  Returns
 * 1 when equivalent; else 0, and describes the first difference on out
 * (when out is not NULL), with the program listing up to that op. */
int do_compare(const struct do_prog *p, const struct do_trace *x, const struct do_trace *y,
               FILE *out);

/* Runs p on every backend of px_backends(), reports the contract violations
 * each run recorded and compares each pair.  Returns the number of runs with
 * violations plus the number of differing pairs (0: all good); describes
 * them on out.  Negative: a run could not be set up.  do_last_viol gets the
 * violations' bits (1 << enum do_viol) and bit 0 for a difference. */
int do_check_all(const struct do_prog *p, FILE *out);
extern unsigned do_last_viol;

/* Children ("fork") still running at the end of a run are told to exit and
 * reaped at the start of a later run; this waits for the last of them. */
void do_reap_children(void);

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
