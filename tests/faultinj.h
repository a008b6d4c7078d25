/* faultinj: a syscall fault injector for the pollux test programs.
 *
 * faultinj.c defines epoll_wait and epoll_ctl (where <sys/epoll.h> is), poll
 * (and glibc's __poll_chk), select, accept4 (where the library calls it:
 * HAVE_ACCEPT4), accept, sendmsg, send and writev in the test executable;
 * realloc is interposed by allocinj.c (link both), which applies the
 * FI_REALLOC plan through fi_realloc_fault.  On 32-bit glibc, select and
 * sendmsg are defined under both of glibc's names (select and __select64,
 * sendmsg and __sendmsg64: tests/interpose.h), whichever _TIME_BITS the
 * library was built with.
 * The executable's definitions take precedence over libc's for every object
 * of the process, libpollux.so included (it calls them through its PLT), and
 * the same holds when libpollux is linked statically into the test.  Each
 * wrapper consults the fault plan of its call and otherwise forwards to the
 * real function: dlsym(RTLD_NEXT) of the symbol the wrapper is, which is not
 * always its C name (interpose.h).  Tests should check fi_calls() > 0 to
 * prove that the interposition took effect; tu_init (testutil.c) checks the
 * waits of every program at start-up.
 *
 * A plan: of the calls that match the plan's predicate (all calls when the
 * predicate is NULL), the first `skip` go through, the next `count` fail with
 * `err` (count < 0: every one from then on), the rest go through again.
 * Special err values:
 *   FI_SHORT  send/sendmsg/writev only: do the real call with at most 1 byte
 *             (a short write, not an error).
 * For the waits (epoll_wait, poll, select) an injected failure first sleeps
 * min(delay_us, the call's timeout): a signal that arrived after part of the
 * timeout had passed, with nothing ready.
 *
 * Not thread-safe: the pollux tests are single-threaded (fork is fine: the
 * child gets a copy of the plans and counters).
 */
#ifndef PX_FAULTINJ_H
#define PX_FAULTINJ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum fi_call {
	FI_EPOLL_WAIT,
	FI_EPOLL_CTL,
	FI_POLL, /* poll() and __poll_chk() */
	FI_SELECT,
	FI_ACCEPT4,
	FI_ACCEPT,
	FI_SENDMSG,
	FI_SEND,
	FI_WRITEV,
	FI_REALLOC, /* only faulted under an explicit plan; err is ignored (ENOMEM) */
	FI_NCALLS
};

#define FI_SHORT (-1)

/* What a predicate sees of a call. */
struct fi_args {
	enum fi_call call;
	int fd;         /* epoll_ctl: the target fd; accept*, send*, writev: the socket;
	                   epoll_wait: the epoll fd; otherwise -1 */
	int op;         /* epoll_ctl: EPOLL_CTL_ADD/MOD/DEL; otherwise 0 */
	int timeout_ms; /* waits: the timeout (-1 infinite); otherwise 0 */
	size_t n;       /* poll/select: nfds; send*: bytes; realloc: size */
};
typedef bool fi_pred(const struct fi_args *a, void *arg);

/* Plans (one per call; a new plan replaces the old one). */
void fi_plan(enum fi_call c, long skip, long count, int err);
void fi_plan_ex(enum fi_call c, long skip, long count, int err, fi_pred *pred, void *parg,
                unsigned delay_us);
void fi_clear(enum fi_call c);
/* Faults of the current plan still to come (-1: unlimited). */
long fi_left(enum fi_call c);

/* Whether realloc is really interposed (false under valgrind, which
 * replaces the executable's allocator functions with its own). */
bool fi_realloc_active(void);
/* For allocinj.c's realloc: whether the FI_REALLOC plan fails this call. */
bool fi_realloc_fault(size_t n);

/* Ready-made predicates. */
bool fi_pred_fd(const struct fi_args *a, void *arg);       /* a->fd == *(int *)arg */
bool fi_pred_blocking(const struct fi_args *a, void *arg); /* a wait with timeout != 0 */
bool fi_pred_probe(const struct fi_args *a, void *arg);    /* a wait with timeout == 0 */
bool fi_pred_op(const struct fi_args *a, void *arg);       /* epoll_ctl op == *(int *)arg */

/* Clears every plan and the per-case counters (not the per-program totals). */
void fi_reset(void);

/* Per case (since fi_reset). */
long fi_calls(enum fi_call c);  /* calls that reached the wrapper */
long fi_faults(enum fi_call c); /* faults injected */
long fi_real_eintr(enum fi_call c); /* real EINTRs (signals) seen by the wait wrappers */
/* The timeouts (ms, -1 infinite) of the last wait calls of kind c, oldest
 * first; returns how many were stored (at most cap, at most 256 kept). */
int fi_wait_log(enum fi_call c, int *out, int cap);

/* Per program: faults injected of call c with error err. */
long fi_total(enum fi_call c, int err);
const char *fi_call_name(enum fi_call c);
/* "epoll_wait EINTR=3, epoll_ctl ENOMEM=2" for the faults since fi_reset
 * (per_case) or since the start; "none" when there were none. */
const char *fi_summary(bool per_case);

#endif
