/* test_alloc: every allocation the library makes fails in turn.
 *
 * The library's allocation sites (src/ when this test was written; the test
 * finds them by counting, so it follows refactors without edits):
 *   src/core/loop.c         loop_create       calloc   the loop
 *   src/backend/select.c    sel_create        calloc   backend state
 *   src/backend/select.c    sel_grow          realloc  x4 per growth: interest and result
 *                                                      sets (first fd, then fd >= 1024)
 *   src/backend/poll.c      pl_create         calloc   backend state
 *   src/backend/poll.c      pl_grow           realloc  pollfd array
 *   src/backend/poll.c      pl_grow           realloc  fd -> index table
 *   src/backend/epoll.c     ep_create         calloc   backend state (also from backend_rebuild)
 *   src/core/io.c           tab_reserve       realloc  fd table (px_io_add, connect, acceptor)
 *   src/core/io.c           vec_push          realloc  int lists, reached from six places:
 *                             chg    mark_dirty (px_io_mod, px_io_del, library write
 *                                    interest, one-shot disarm, px_loop_free)
 *                             fresh  io_add (px_io_add from a callback)
 *                             failed pxi_io_prepare, backend_rebuild (a refused change;
 *                                    only after a second failure: not reachable here)
 *                             etlist disarm_after, pxi_io_et_check (ET emulation; the
 *                                    latter re-fills a list just emptied: never grows)
 *   src/core/io.c           pxi_io_set_sendq  realloc  fd -> send queue side table
 *   src/core/io.c           pxi_io_prepare    realloc  event array (px_loop_run)
 *   src/core/io.c           pxi_io_et_check   realloc  pollfd scratch (ET emulation)
 *   src/core/timer.c        heap_push         realloc  heap (px_timer_add; re-push of a
 *                                                      repeating timer in pxi_timers_run)
 *   src/core/timer.c        slot_alloc        realloc  timer slots
 *   src/core/timer.c        due_push          realloc  due list (pxi_timers_run)
 *   src/core/send.c         chunk_new         malloc   queue chunk (px_send, queue_append)
 *   src/core/send.c         px_send           realloc  shrinks a reserved chunk (a failure
 *                                                      keeps the big one)
 *   src/core/send.c         queue_get         calloc   send queue (px_send, px_send_notify)
 *   src/core/sock_connect.c px_connect        calloc   pending connect
 *   src/core/sock_accept.c  px_acceptor_add   calloc   acceptor
 *   src/core/sock_tcp.c     resolve           getaddrinfo allocates inside libc: not
 *                                                      counted, not injected (allocinj.h)
 * That is 20 allocation calls in 19 functions, 25 sites counting vec_push's
 * callers, plus getaddrinfo.  Each backend reaches its own subset (sel_* on
 * select, pl_* on poll, etpfd/etlist only where ET is emulated, rebuild only
 * on epoll); the program ends with the count of distinct sites it reached.
 *
 * Method.  allocinj.c interposes malloc, calloc, realloc and free and counts
 * the calls whose return address lies in libpollux (never the test's, libc's
 * or cmocka's).  Each scenario (table at the end) drives public API paths
 * from px_loop_new to px_loop_free; the runner
 *   1. runs it once, counting: K library allocations;
 *   2. for N = 1..K runs it afresh with the N-th allocation failing (ENOMEM);
 *   3. runs it once more without failure.
 * The call that saw the failure must return the documented error (-ENOMEM;
 * NULL + ENOMEM for px_loop_new) with nothing changed (not registered, not
 * queued, old mask in force), after which it is retried once and must
 * succeed; or it succeeds (the library may absorb a failure).  Inside
 * px_loop_run a failure gives -ENOMEM from px_loop_run (documented: "the
 * loop's event buffer could not get memory"), or is absorbed, or reaches the
 * watcher whose kernel change it refused as PX_ERR once and disarms it (the
 * test re-arms it).  px_send may also take the header's one exception to
 * all-or-nothing (part sent, then a sticky error): allowed, and checked byte
 * for byte.  Then the scenario's end state is checked in full: every watcher
 * fires, every byte px_send accepted arrives once and in order, every timer
 * fires and repeating ones keep firing, every connect and accept completes.
 * After px_loop_free no block the library allocated may be left (allocinj's
 * own tracking, in every build) and no fd; LeakSanitizer (ASan build) and
 * memcheck (valgrind) check the whole program on top.
 *
 * valgrind replaces malloc in the executable too, so nothing can be injected
 * under it: each scenario then runs once (for memcheck) and is skipped with
 * a "# ..." line saying so.  (valgrind --soname-synonyms=somalloc=
 * nouserintercepts leaves allocinj in place: then the failures are injected
 * under memcheck as well.)
 *
 * Output: per scenario, the number of failure points and, per allocation
 * site (libpollux.so+offset: addr2line -f -e .libs/libpollux.so.1 OFFSET-1),
 * what its failures led to; "# FAIL" lines for each point that broke the
 * contract.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "portable.h" /* config.h first */
#include "testutil.h"
#include "allocinj.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 4096
#define MAXKEEP 2048

/* ---- one run of a scenario -------------------------------------------------- */

struct run {
	px_loop *loop;
	jmp_buf jb;
	int cbdepth;
	bool any_cb; /* a callback ran in the last iteration */
	bool failed;
	char msg[1024];
	/* where the injected failure surfaced */
	bool hit;
	char hit_what[64];
	long hit_rc;
	int errs; /* PX_ERR reports of refused changes */
	bool torn; /* px_send took the header's documented exception */
	const char *note; /* a scenario's remark on this run */
	int keep[MAXKEEP]; /* fds to close at the end */
	int nkeep;
};

static struct run run_state;
static struct run *const R = &run_state;

static void failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void failf(const char *fmt, ...)
{
	if (!R->failed) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(R->msg, sizeof R->msg, fmt, ap);
		va_end(ap);
		R->failed = true;
	}
	if (R->cbdepth == 0)
		longjmp(R->jb, 1);
	if (R->loop)
		px_loop_stop(R->loop);
}

#define CB_ENTER() (R->cbdepth++, R->any_cb = true)
#define CB_LEAVE() (R->cbdepth--)

static void note_hit(const char *what, long rc)
{
	if (R->hit)
		return;
	R->hit = true;
	snprintf(R->hit_what, sizeof R->hit_what, "%s", what);
	R->hit_rc = rc;
}

/* After a library call: did the injected failure happen inside it?  Returns
 * true when it did and the call returned -ENOMEM: the caller checks that
 * nothing changed and retries once. */
static bool hit(long f0, long rc, const char *what)
{
	if (ai_faults() == f0) {
		if (rc == -ENOMEM)
			failf("%s returned -ENOMEM but no allocation failed", what);
		return false;
	}
	note_hit(what, rc);
	if (rc == -ENOMEM)
		return true;
	if (rc >= 0)
		return false; /* absorbed: the end state tells whether that was right */
	failf("%s returned %ld (%s) when an allocation inside it failed; documented: -ENOMEM",
	      what, rc, strerror((int)-rc));
	return false;
}

/* rc = expr, retried once after an injected -ENOMEM. */
#define LIB(rc, what, expr)                                    \
	do {                                                   \
		long f0_ = ai_faults();                        \
		(rc) = (expr);                                 \
		if (hit(f0_, (long)(rc), (what))) {            \
			f0_ = ai_faults();                     \
			(rc) = (expr);                         \
			(void)hit(f0_, (long)(rc), (what));    \
		}                                              \
	} while (0)

static void keep(int fd)
{
	if (R->nkeep >= MAXKEEP)
		failf("too many fds kept");
	R->keep[R->nkeep++] = fd;
}

static void forget(int fd)
{
	for (int i = 0; i < R->nkeep; i++)
		if (R->keep[i] == fd)
			R->keep[i] = -1;
}

static int pair_at(int sv[2], int at)
{
	if (at >= 0)
		tu_socketpair_at(sv, at);
	else
		tu_socketpair(sv);
	keep(sv[0]);
	keep(sv[1]);
	return sv[0];
}

static double slow(void)
{
#ifdef __SANITIZE_ADDRESS__
	return 4.0;
#else
	return tu_valgrind() ? 20.0 : 1.0;
#endif
}

/* ---- per-fd records ----------------------------------------------------------- */

struct fdst {
	bool watched;
	unsigned events;  /* the mask the test registered */
	int calls, wcalls, errs;
	size_t bytes;
	unsigned revor;
};

static struct fdst fst[MAXFD];

static struct fdst *st_of(int fd)
{
	static struct fdst spare;

	if (fd < 0 || fd >= MAXFD) {
		failf("fd %d beyond the test's table", fd);
		return &spare;
	}
	return &fst[fd];
}

/* Registers fd; after an injected -ENOMEM nothing may be registered. */
static void watch(int fd, unsigned events, px_io_cb *cb, void *arg)
{
	struct fdst *s = st_of(fd);
	long f0 = ai_faults();
	int rc = px_io_add(R->loop, fd, events, cb, arg);

	if (hit(f0, rc, "px_io_add")) {
		int m = px_io_mod(R->loop, fd, events ^ PX_READ);
		if (m != -ENOENT)
			failf("px_io_add(%d) returned -ENOMEM but the fd is registered (px_io_mod -> %d)",
			      fd, m);
		f0 = ai_faults();
		rc = px_io_add(R->loop, fd, events, cb, arg);
		(void)hit(f0, rc, "px_io_add");
	}
	if (rc != 0)
		failf("px_io_add(%d, %#x) = %d (%s)", fd, events, rc, strerror(-rc));
	memset(s, 0, sizeof *s);
	s->watched = true;
	s->events = events;
}

static void mod(int fd, unsigned events)
{
	int rc;

	LIB(rc, "px_io_mod", px_io_mod(R->loop, fd, events));
	if (rc != 0)
		failf("px_io_mod(%d, %#x) = %d (%s)", fd, events, rc, strerror(-rc));
	st_of(fd)->events = events;
}

static void unwatch(int fd)
{
	int rc;

	LIB(rc, "px_io_del", px_io_del(R->loop, fd));
	if (rc != 0)
		failf("px_io_del(%d) = %d", fd, rc);
	st_of(fd)->watched = false;
}

/* A watcher told PX_ERR for a change the backend refused: documented as once,
 * then disarmed.  Only an injected failure may cause it here; re-arm. */
static void refused(int fd, unsigned rev)
{
	struct fdst *s = st_of(fd);

	if (ai_faults() == 0) {
		failf("fd %d: PX_ERR (revents %#x) but no allocation failed", fd, rev);
		return;
	}
	if (s->errs++ > 0) {
		failf("fd %d: PX_ERR a second time for one failure", fd);
		return;
	}
	R->errs++;
	note_hit("PX_ERR to the watcher", 0);
	int rc;
	LIB(rc, "px_io_mod (re-arm after PX_ERR)", px_io_mod(R->loop, fd, s->events));
	if (rc != 0)
		failf("px_io_mod(%d) re-arming after PX_ERR = %d", fd, rc);
}

static void (*first_cb_hook)(void);

/* The generic watcher: counts, drains reads. */
static void rd_cb(px_loop *loop, int fd, unsigned rev, void *arg)
{
	struct fdst *s = st_of(fd);

	(void)loop;
	(void)arg;
	CB_ENTER();
	if (!s->watched)
		failf("callback for fd %d, which is not registered", fd);
	s->calls++;
	s->revor |= rev;
	if ((rev & (PX_READ | PX_WRITE)) & ~s->events)
		failf("fd %d: revents %#x outside the mask %#x", fd, rev, s->events);
	if (rev & PX_ERR)
		refused(fd, rev);
	if (rev & PX_READ)
		s->bytes += tu_drain(fd); /* asserts nothing: callbacks must not jump */
	if (rev & PX_WRITE)
		s->wcalls++;
	if (first_cb_hook) {
		void (*h)(void) = first_cb_hook;
		first_cb_hook = NULL;
		h();
	}
	CB_LEAVE();
}

/* ---- running the loop ----------------------------------------------------------- */

static void iter(int mode)
{
	long f0 = ai_faults();
	bool hit0 = R->hit;

	R->any_cb = false;
	int rc = px_loop_run(R->loop, mode);
	if (R->failed)
		longjmp(R->jb, 1);
	bool fault = ai_faults() != f0 && !hit0 && !R->hit;
	if (rc == 0) {
		if (fault)
			note_hit("px_loop_run (absorbed)", 0);
		return;
	}
	if (rc == -ENOMEM && fault) {
		note_hit("px_loop_run", rc);
		return; /* the caller runs it again */
	}
	failf("px_loop_run = %d (%s)%s", rc, strerror(-rc),
	      ai_faults() != f0 ? " after an allocation failed" : "");
}

typedef bool cond_fn(void);

static void until(cond_fn *cond, const char *what, int ms)
{
	double end = tu_now_ms() + ms * slow();

	while (!cond()) {
		if (tu_now_ms() > end)
			failf("%s: not within %d ms", what, ms);
		iter(PX_RUN_NOWAIT);
		if (!R->any_cb) {
			struct timespec ts = { 0, 100000 };
			nanosleep(&ts, NULL);
		}
	}
}

/* Runs NOWAIT until an iteration makes no callback; false if that does not
 * happen within max iterations. */
static bool settle(int max)
{
	for (int i = 0; i < max; i++) {
		iter(PX_RUN_NOWAIT);
		if (!R->any_cb)
			return true;
	}
	return false;
}

static px_loop *new_loop(const char *name)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		long f0 = ai_faults();
		errno = 0;
		px_loop *l = name ? px_loop_new_backend(name) : px_loop_new();
		bool fault = ai_faults() != f0;
		const char *what = name ? "px_loop_new_backend" : "px_loop_new";
		if (l) {
			if (fault)
				note_hit(what, 0);
			return l;
		}
		int e = errno;
		if (!fault)
			failf("%s(%s): NULL, errno %s, and no allocation failed", what,
			      name ? name : "", tp_errname(e));
		note_hit(what, -e);
		if (e != ENOMEM)
			failf("%s(%s): NULL with errno %s when an allocation failed; documented: ENOMEM",
			      what, name ? name : "", tp_errname(e));
	}
	failf("px_loop_new failed twice");
	return NULL;
}

static void finish(void)
{
	long f0 = ai_faults();

	px_loop_free(R->loop);
	R->loop = NULL;
	if (ai_faults() != f0)
		note_hit("px_loop_free (absorbed)", 0); /* it allocates: see io_drop */
	for (int i = 0; i < R->nkeep; i++)
		if (R->keep[i] >= 0)
			close(R->keep[i]);
	R->nkeep = 0;
}

/* ---- scenarios ------------------------------------------------------------------- */

static long nofile;

/* A fd number for a "high" pair: above select's FD_SETSIZE when the limit
 * allows, so that every table grows; -1 when the limit is too low. */
static int high_fd(int want)
{
	if (nofile > want + 64)
		return want;
	return -1;
}

/* -- loop creation -- */

/* Frees l; fails when its backend is not want. */
static void loop_is(px_loop *l, const char *want, const char *how)
{
	char got[16];

	snprintf(got, sizeof got, "%s", px_loop_backend(l));
	px_loop_free(l);
	if (strcasecmp(got, want) != 0)
		failf("%s made a %s loop, not %s", how, got, want);
}

static void sc_loop_new(int v)
{
	(void)v;
	const char *env = getenv("POLLUX_BACKEND");

	loop_is(new_loop(NULL), env && *env ? env : px_backends()[0], "px_loop_new");
	for (const char *const *b = px_backends(); *b; b++)
		loop_is(new_loop(*b), *b, "px_loop_new_backend");
	/* Best available: the first of px_backends(), or NULL + ENOMEM. */
	loop_is(new_loop(""), px_backends()[0], "px_loop_new_backend(\"\") (best available)");
}

/* -- px_io_add growing the fd table and the backend's sets -- */

#define NADD 40
static int add_fd[NADD + 1];
static int nadd;

static bool all_read_once(void)
{
	for (int i = 0; i < nadd; i++)
		if (fst[add_fd[i]].bytes < 1)
			return false;
	return true;
}

static void sc_io_add(int v)
{
	(void)v;
	int sv[2];

	R->loop = new_loop(NULL);
	nadd = 0;
	for (int i = 0; i < NADD; i++) {
		add_fd[nadd++] = pair_at(sv, -1);
		watch(sv[0], PX_READ, rd_cb, NULL);
		tu_send1(sv[1]);
	}
	int h = high_fd(1100);
	if (h >= 0) {
		add_fd[nadd++] = pair_at(sv, h);
		watch(sv[0], PX_READ, rd_cb, NULL);
		tu_send1(sv[1]);
	}
	until(all_read_once, "every watcher added reports its byte", 2000);
	for (int i = 0; i < nadd; i++)
		if (fst[add_fd[i]].bytes != 1)
			failf("fd %d: %zu bytes read, 1 sent", add_fd[i], fst[add_fd[i]].bytes);
	for (int i = 0; i < nadd; i += 2)
		unwatch(add_fd[i]);
	finish();
}

/* -- px_io_mod: deferred changes (change list growth) -- */

#define NMOD 80
#define NDIS 12 /* of which registered disarmed, with a byte waiting */
static int mod_fd[NMOD], mod_peer[NMOD];
static size_t mod_want[NMOD];

static bool all_written(void)
{
	for (int i = 0; i < NMOD; i++)
		if (fst[mod_fd[i]].wcalls < 1)
			return false;
	return true;
}

static bool all_read_want(void)
{
	for (int i = 0; i < NMOD; i++)
		if (fst[mod_fd[i]].bytes < mod_want[i])
			return false;
	return true;
}

/* Arms a disarmed watcher (on poll/select a new entry in the backend's set).
 * Documented: on error the old mask stays in force, so the byte waiting on
 * it must not be reported. */
static void arm_checked(int fd)
{
	long f0 = ai_faults();
	int rc = px_io_mod(R->loop, fd, PX_READ | PX_WRITE);

	if (hit(f0, rc, "px_io_mod")) {
		iter(PX_RUN_NOWAIT);
		if (fst[fd].calls != 0)
			failf("px_io_mod(%d) returned -ENOMEM, yet the watcher was armed (%d callbacks)",
			      fd, fst[fd].calls);
		f0 = ai_faults();
		rc = px_io_mod(R->loop, fd, PX_READ | PX_WRITE);
		(void)hit(f0, rc, "px_io_mod");
	}
	if (rc != 0)
		failf("px_io_mod(%d) = %d (%s)", fd, rc, strerror(-rc));
	fst[fd].events = PX_READ | PX_WRITE;
}

static void sc_io_mod(int v)
{
	(void)v;
	int sv[2];

	R->loop = new_loop(NULL);
	/* Disarmed ones first: arming them makes the backend's first entries
	 * (poll, select: its set is allocated then). */
	for (int i = 0; i < NDIS; i++) {
		mod_fd[i] = pair_at(sv, -1);
		mod_peer[i] = sv[1];
		watch(sv[0], 0, rd_cb, NULL);
		mod_want[i] = 2;
		tu_send1(sv[1]);
	}
	iter(PX_RUN_NOWAIT);
	for (int i = 0; i < NDIS; i++) {
		if (fst[mod_fd[i]].calls != 0)
			failf("disarmed watcher %d got a callback", mod_fd[i]);
		arm_checked(mod_fd[i]);
	}
	for (int i = NDIS; i < NMOD; i++) {
		mod_fd[i] = pair_at(sv, -1);
		mod_peer[i] = sv[1];
		watch(sv[0], PX_READ, rd_cb, NULL);
		mod_want[i] = 1;
	}
	iter(PX_RUN_NOWAIT);
	for (int i = NDIS; i < NMOD; i++)
		mod(mod_fd[i], PX_READ | PX_WRITE);
	until(all_written, "every watcher modified to PX_WRITE reports writable", 2000);
	for (int i = 0; i < NMOD; i++)
		mod(mod_fd[i], PX_READ);
	iter(PX_RUN_NOWAIT); /* may still hold write events from before the change */
	int w0 = 0, w1 = 0;
	for (int i = 0; i < NMOD; i++)
		w0 += fst[mod_fd[i]].wcalls;
	for (int i = 0; i < NMOD; i++)
		tu_send1(mod_peer[i]);
	until(all_read_want, "every watcher modified back to PX_READ reports its byte", 2000);
	if (!settle(10))
		failf("watchers modified back to PX_READ keep reporting");
	for (int i = 0; i < NMOD; i++) {
		w1 += fst[mod_fd[i]].wcalls;
		if (fst[mod_fd[i]].bytes != mod_want[i])
			failf("fd %d: %zu bytes read, %zu sent", mod_fd[i], fst[mod_fd[i]].bytes,
			      mod_want[i]);
	}
	if (w1 != w0)
		failf("%d PX_WRITE callbacks after the mask dropped PX_WRITE", w1 - w0);
	/* Deletions go through the change list too. */
	for (int i = 0; i < NMOD; i++)
		unwatch(mod_fd[i]);
	for (int i = 0; i < NMOD; i++)
		tu_send1(mod_peer[i]);
	iter(PX_RUN_NOWAIT);
	finish();
}

/* -- many watchers, one px_loop_run: event array, fresh list, deletions from
 *    a callback -- */

#define NRUN 150
#define NFRESH 40
static int run_fd[NRUN], run_peer[NRUN], fresh_fd[NFRESH];

static void add_fresh_hook(void)
{
	/* From inside dispatch: these are fresh (no stale events) and must
	 * report in a later iteration. */
	for (int i = 0; i < NFRESH; i++)
		watch(fresh_fd[i], PX_READ, rd_cb, NULL);
}

static bool run_all_read(void)
{
	for (int i = 0; i < NRUN; i++)
		if (fst[run_fd[i]].bytes < 1)
			return false;
	for (int i = 0; i < NFRESH; i++)
		if (fst[fresh_fd[i]].bytes < 1)
			return false;
	return true;
}

static void del_half_hook(void)
{
	for (int i = 1; i < NRUN; i += 2)
		unwatch(run_fd[i]);
}

static void sc_run_events(int v)
{
	(void)v;
	int sv[2];

	R->loop = new_loop(NULL);
	for (int i = 0; i < NRUN; i++) {
		run_fd[i] = pair_at(sv, -1);
		run_peer[i] = sv[1];
		watch(sv[0], PX_READ, rd_cb, NULL);
		tu_send1(sv[1]);
	}
	for (int i = 0; i < NFRESH; i++) {
		fresh_fd[i] = pair_at(sv, -1);
		st_of(sv[0])->watched = false;
		tu_send1(sv[1]);
	}
	first_cb_hook = add_fresh_hook;
	until(run_all_read, "every watcher (and every one added from a callback) reports", 2000);
	for (int i = 0; i < NRUN; i++)
		if (fst[run_fd[i]].bytes != 1)
			failf("fd %d: %zu bytes read, 1 sent", run_fd[i], fst[run_fd[i]].bytes);
	/* Deletions from a callback. */
	for (int i = 0; i < NRUN; i++)
		tu_send1(run_peer[i]);
	first_cb_hook = del_half_hook;
	for (int k = 0; k < 50 && first_cb_hook; k++)
		iter(PX_RUN_NOWAIT);
	if (first_cb_hook)
		failf("no callback after new data");
	for (int k = 0; k < 5; k++)
		iter(PX_RUN_NOWAIT);
	for (int i = 0; i < NRUN; i += 2)
		if (fst[run_fd[i]].bytes != 2)
			failf("fd %d (kept): %zu bytes read, 2 sent", run_fd[i],
			      fst[run_fd[i]].bytes);
	first_cb_hook = NULL;
	finish();
}

/* -- PX_ET: native on epoll, emulated (list, pollfd scratch) on poll/select -- */

#define NET 50
static int et_fd[NET], et_peer[NET];

static bool et_all_written(void)
{
	for (int i = 0; i < NET; i++)
		if (fst[et_fd[i]].wcalls < 1)
			return false;
	return true;
}

static bool et_all_read(void)
{
	for (int i = 0; i < NET; i++)
		if (fst[et_fd[i]].bytes < 100)
			return false;
	return true;
}

static void sc_et(int v)
{
	(void)v;
	int sv[2];
	static char data[100];

	R->loop = new_loop(NULL);
	for (int i = 0; i < NET; i++) {
		et_fd[i] = pair_at(sv, -1);
		et_peer[i] = sv[1];
		watch(sv[0], PX_READ | PX_WRITE | PX_ET, rd_cb, NULL);
	}
	until(et_all_written, "every PX_ET watcher reports writable", 2000);
	if (!settle(20))
		failf("idle writable PX_ET watchers keep reporting (spin)");
	for (int i = 0; i < NET; i++)
		tu_send(et_peer[i], data, sizeof data);
	until(et_all_read, "every PX_ET watcher gets its 100 bytes", 2000);
	if (!settle(20))
		failf("drained PX_ET watchers keep reporting (spin)");
	for (int i = 0; i < NET; i++)
		if (fst[et_fd[i]].bytes != 100)
			failf("fd %d: %zu bytes, 100 sent", et_fd[i], fst[et_fd[i]].bytes);
	finish();
}

/* -- ET emulation: a quiet writer that must come back into a full set -- */

static int etw_fd, etw_peer, etw_w0;

static bool etw_once(void)
{
	return fst[etw_fd].wcalls >= 1;
}

static bool etw_again(void)
{
	return fst[etw_fd].wcalls > etw_w0;
}

static int et2_hp;

static bool hp_once(void)
{
	return fst[et2_hp].bytes >= 1;
}

static void sc_et_rearm(int v)
{
	(void)v;
	int sv[2], hp_peer;
	int h = high_fd(1000);

	if (h < 0) {
		R->note = "RLIMIT_NOFILE too low for this scenario";
		return;
	}
	R->loop = new_loop(NULL);
	/* A high fd first: the fd table (and poll's index) cover every fd
	 * used below, so only the backend's set itself can become full. */
	et2_hp = pair_at(sv, h);
	hp_peer = sv[1];
	watch(et2_hp, PX_READ, rd_cb, NULL);
	etw_fd = pair_at(sv, -1);
	etw_peer = sv[1];
	watch(etw_fd, PX_WRITE | PX_ET, rd_cb, NULL);
	until(etw_once, "the PX_ET writer reports writable", 2000);
	if (!settle(20))
		failf("the idle PX_ET writer keeps reporting");
	/* Fill the backend's set to the brim: add watchers for as long as an
	 * add needs no memory (every library allocation fails meanwhile). */
	bool full = false;
	while (!full) {
		int p[2];
		if (R->nkeep + 2 >= MAXKEEP)
			break;
		tu_socketpair(p);
		if (p[0] >= h - 8 || p[1] >= h - 8) {
			close(p[0]);
			close(p[1]);
			break;
		}
		ai_fail_all(true);
		int rc = px_io_add(R->loop, p[0], PX_READ, rd_cb, NULL);
		ai_fail_all(false);
		if (rc == -ENOMEM) {
			close(p[0]);
			close(p[1]);
			full = true;
			break;
		}
		if (rc != 0)
			failf("px_io_add(%d) = %d", p[0], rc);
		keep(p[0]);
		keep(p[1]);
		memset(st_of(p[0]), 0, sizeof(struct fdst));
		st_of(p[0])->watched = true;
		st_of(p[0])->events = PX_READ;
	}
	if (!full)
		R->note = "the backend's set never needed memory here (nothing to fill)";
	/* The writer fills its socket: after the next round of callbacks the
	 * emulation sees it not writable and puts it back into the set, which
	 * has to grow now. */
	tu_fill(etw_fd);
	etw_w0 = fst[etw_fd].wcalls;
	tu_send1(hp_peer);
	until(hp_once, "a round of callbacks", 2000);
	iter(PX_RUN_NOWAIT);
	/* The reader makes room: the writer's next edge must be reported. */
	tu_drain(etw_peer);
	until(etw_again, "the PX_ET writer reports writable again after its socket drained", 1000);
	finish();
}

/* -- timers: many adds (slots, heap), deletions, firing -- */

#define NTIM 100
static int64_t tid[NTIM];
static int tfired[NTIM];
static bool tdeleted[NTIM], trepeat[NTIM];
static int torder[NTIM], ntorder;

static void t_cb(px_loop *loop, int64_t id, void *arg)
{
	int i = (int)(intptr_t)arg;

	(void)loop;
	CB_ENTER();
	if (id != tid[i])
		failf("timer %d: callback with id %lld, added as %lld", i, (long long)id,
		      (long long)tid[i]);
	if (tdeleted[i])
		failf("timer %d fired after px_timer_del", i);
	tfired[i]++;
	if (!trepeat[i] && tfired[i] > 1)
		failf("one-shot timer %d fired %d times", i, tfired[i]);
	if (!trepeat[i] && ntorder < NTIM)
		torder[ntorder++] = i;
	CB_LEAVE();
}

static int64_t add_timer(uint64_t after, uint64_t repeat, px_timer_cb *cb, void *arg)
{
	int64_t id;

	LIB(id, "px_timer_add", px_timer_add(R->loop, after, repeat, cb, arg));
	if (id <= 0)
		failf("px_timer_add = %lld", (long long)id);
	return id;
}

static void del_timer(int64_t id)
{
	int rc;

	LIB(rc, "px_timer_del", px_timer_del(R->loop, id));
	if (rc != 0)
		failf("px_timer_del(%lld) = %d", (long long)id, rc);
}

static bool timers_done(void)
{
	for (int i = 0; i < NTIM; i++) {
		if (tdeleted[i])
			continue;
		if (tfired[i] < (trepeat[i] ? 3 : 1))
			return false;
	}
	return true;
}

static void sc_timers(int v)
{
	(void)v;
	R->loop = new_loop(NULL);
	memset(tfired, 0, sizeof tfired);
	memset(tdeleted, 0, sizeof tdeleted);
	ntorder = 0;
	for (int i = 0; i < NTIM; i++) {
		trepeat[i] = i % 10 == 0;
		tid[i] = add_timer(0, trepeat[i] ? 1 : 0, t_cb, (void *)(intptr_t)i);
		for (int j = 0; j < i; j++)
			if (tid[j] == tid[i])
				failf("timers %d and %d have the same id", j, i);
	}
	for (int i = 3; i < NTIM; i += 7) {
		if (trepeat[i])
			continue;
		del_timer(tid[i]);
		tdeleted[i] = true;
	}
	until(timers_done, "every timer fires (repeating ones 3 times)", 2000);
	/* One-shots with the same after_ms fire in order of creation. */
	for (int k = 1; k < ntorder; k++)
		if (torder[k] < torder[k - 1])
			failf("one-shot %d fired before %d", torder[k], torder[k - 1]);
	for (int i = 0; i < NTIM; i++)
		if (trepeat[i])
			del_timer(tid[i]);
	finish();
}

/* -- timers: a repeating timer's re-push while the heap is full.  F_i
 * (one-shot) and R_i (repeating) are due together, F_i first; each F_i adds
 * FADD far timers from its callback, so the heap outgrows its size during
 * the round; with P pending far timers beforehand (variant P = 0..FADD), one
 * of the variants has the growth fall on an R_i's re-push. */

#define NPAIR 12
#define FADD 4
#define NFAR (NPAIR * FADD + FADD + 1)
static int64_t far_id[NFAR];
static int nfar;
static int64_t rp_r[NPAIR];
static int rp_rfired[NPAIR], rp_ffired[NPAIR];

static void far_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)arg;
	(void)id;
	failf("a far timer fired");
}

static void rp_f_cb(px_loop *loop, int64_t id, void *arg)
{
	int i = (int)(intptr_t)arg;

	(void)loop;
	(void)id;
	CB_ENTER();
	rp_ffired[i]++;
	for (int k = 0; k < FADD && nfar < NFAR; k++)
		far_id[nfar++] = add_timer(600000, 0, far_cb, NULL);
	CB_LEAVE();
}

static void rp_r_cb(px_loop *loop, int64_t id, void *arg)
{
	int i = (int)(intptr_t)arg;

	(void)loop;
	CB_ENTER();
	if (id != rp_r[i])
		failf("R%d: id %lld", i, (long long)id);
	rp_rfired[i]++;
	CB_LEAVE();
}

static bool rp_done(void)
{
	for (int i = 0; i < NPAIR; i++)
		if (rp_rfired[i] < 4 || rp_ffired[i] < 1)
			return false;
	return true;
}

static char rp_msg[128];

static void sc_timer_repush(int v)
{
	R->loop = new_loop(NULL);
	nfar = 0;
	memset(rp_rfired, 0, sizeof rp_rfired);
	memset(rp_ffired, 0, sizeof rp_ffired);
	for (int k = 0; k < v; k++)
		far_id[nfar++] = add_timer(600000, 0, far_cb, NULL);
	for (int i = 0; i < NPAIR; i++) {
		(void)add_timer(0, 0, rp_f_cb, (void *)(intptr_t)i);
		rp_r[i] = add_timer(0, 2, rp_r_cb, (void *)(intptr_t)i);
	}
	double end = tu_now_ms() + 1000 * slow();
	while (!rp_done()) {
		if (tu_now_ms() > end) {
			size_t len = 0;
			rp_msg[0] = '\0';
			for (int i = 0; i < NPAIR; i++)
				if (rp_rfired[i] < 4)
					len += (size_t)snprintf(rp_msg + len, sizeof rp_msg - len,
					                        " R%d:%d", i, rp_rfired[i]);
			failf("repeating timers stopped firing (fired counts:%s; others >= 4 in 1 s)",
			      rp_msg);
		}
		iter(PX_RUN_NOWAIT);
		if (!R->any_cb) {
			struct timespec ts = { 0, 200000 };
			nanosleep(&ts, NULL);
		}
	}
	for (int i = 0; i < nfar; i++)
		del_timer(far_id[i]);
	for (int i = 0; i < NPAIR; i++)
		del_timer(rp_r[i]);
	finish();
}

/* -- px_send: queue chunks, the side table, notify -- */

struct stream {
	int wfd, rfd;
	size_t accepted; /* bytes px_send accepted */
	size_t recvd;
	size_t total;    /* bytes to produce */
	int nmsg;        /* messages produced */
	bool torn;       /* the documented exception: part of a refused buffer went out */
	size_t torn_len;
	int drains;      /* drain callbacks */
};

#define NSTREAM 2
static struct stream strm[NSTREAM];
static int nstrm;

static unsigned char pat(size_t off)
{
	return (unsigned char)(off % 251u);
}

static const size_t msg_sizes[] = { 70000, 1, 700, 5000, 17000, 3, 16384, 40000, 2, 9000 };
#define NSIZES (sizeof msg_sizes / sizeof msg_sizes[0])

static unsigned char sbuf[70000];

/* px_send of the stream's next message: all or nothing (or the header's
 * documented exception).  Returns false when the stream stopped. */
static bool send_next(struct stream *s)
{
	if (s->torn || s->accepted >= s->total)
		return false;
	size_t len = msg_sizes[s->nmsg % NSIZES];
	if (len > s->total - s->accepted)
		len = s->total - s->accepted;
	for (size_t i = 0; i < len; i++)
		sbuf[i] = pat(s->accepted + i);
	size_t pend0 = px_send_pending(R->loop, s->wfd);
	long f0 = ai_faults();
	int rc = px_send(R->loop, s->wfd, sbuf, len);
	if (rc == -ENOMEM && ai_faults() != f0) {
		note_hit("px_send", rc);
		size_t pend1 = px_send_pending(R->loop, s->wfd);
		if (pend1 != pend0)
			failf("px_send -ENOMEM, but the queue changed from %zu to %zu bytes", pend0,
			      pend1);
		f0 = ai_faults();
		rc = px_send(R->loop, s->wfd, sbuf, len);
		if (rc == -ENOMEM && ai_faults() == f0) {
			/* Sticky: the header's one exception to all or nothing
			 * (part of buf went out, the backend refused the write
			 * interest for the rest).  Nothing more may arrive than
			 * a prefix of this buffer. */
			s->torn = true;
			s->torn_len = len;
			R->torn = true;
			if (px_send_pending(R->loop, s->wfd) != 0)
				failf("sticky px_send error with %zu bytes still queued",
				      px_send_pending(R->loop, s->wfd));
			return false;
		}
	} else if (ai_faults() != f0) {
		note_hit("px_send", rc);
	}
	if (rc != 0) {
		failf("px_send(%d, %zu) = %d (%s)", s->wfd, len, rc, strerror(-rc));
		return false;
	}
	s->accepted += len;
	s->nmsg++;
	return true;
}

static void stream_read(struct stream *s)
{
	static unsigned char buf[65536];

	for (;;) {
		ssize_t n = recv(s->rfd, buf, sizeof buf, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		for (ssize_t i = 0; i < n; i++) {
			size_t pos = s->recvd + (size_t)i;
			size_t limit = s->accepted + (s->torn ? s->torn_len : 0);
			if (pos >= limit)
				failf("fd %d: byte %zu arrived, only %zu were accepted", s->wfd, pos,
				      s->accepted);
			if (buf[i] != pat(pos))
				failf("fd %d: byte %zu is %u, sent %u (reordered or duplicated)",
				      s->wfd, pos, buf[i], pat(pos));
		}
		s->recvd += (size_t)n;
	}
}

static bool streams_done(void)
{
	bool done = true;

	for (int i = 0; i < nstrm; i++) {
		struct stream *s = &strm[i];
		stream_read(s);
		if (s->torn)
			continue; /* checked by settling below */
		if (s->recvd < s->total || s->accepted < s->total)
			done = false;
	}
	return done;
}

#define LOW_WATER 20000

/* Back-pressure: produce while the queue is at or below the low water mark;
 * the drain callback asks for more once it falls back there. */
static void produce(struct stream *s)
{
	while (px_send_pending(R->loop, s->wfd) <= LOW_WATER && send_next(s))
		;
}

static void drain_cb(px_loop *loop, int fd, int status, void *arg)
{
	struct stream *s = arg;

	(void)loop;
	CB_ENTER();
	if (status != 0)
		failf("fd %d: drain callback with status %d", fd, status);
	s->drains++;
	produce(s);
	CB_LEAVE();
}

static void set_sndbuf(int fd, int size)
{
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

/* Variant 0: watchers armed for PX_READ, everything produced at once (a long
 * queue), on a low fd and a high one (the side table grows twice).
 * Variant 1: the only watcher is disarmed (events 0): the library's write
 * interest is the backend's first registration.
 * Variant 2: produced from the drain callback (px_send_notify). */
static void sc_send(int v)
{
	int sv[2];

	R->loop = new_loop(NULL);
	nstrm = v == 1 ? 1 : 2;
	for (int i = 0; i < nstrm; i++) {
		struct stream *s = &strm[i];
		memset(s, 0, sizeof *s);
		int h = i == 1 ? high_fd(700) : -1;
		s->wfd = pair_at(sv, h);
		s->rfd = sv[1];
		s->total = 300000;
		set_sndbuf(s->wfd, 4096);
		watch(s->wfd, v == 1 ? 0 : PX_READ, rd_cb, NULL);
	}
	for (int i = 0; i < nstrm; i++) {
		struct stream *s = &strm[i];
		if (v == 2) {
			int rc;
			LIB(rc, "px_send_notify",
			    px_send_notify(R->loop, s->wfd, LOW_WATER, drain_cb, s));
			if (rc != 0)
				failf("px_send_notify = %d", rc);
			produce(s);
		} else {
			while (send_next(s))
				;
		}
	}
	until(streams_done, "every byte px_send accepted arrives", 5000);
	for (int i = 0; i < nstrm; i++) {
		struct stream *s = &strm[i];
		if (!s->torn)
			continue;
		/* The exception: nothing queued, the prefix of the refused
		 * buffer may have arrived, and later sends give the error. */
		for (int k = 0; k < 5; k++) {
			iter(PX_RUN_NOWAIT);
			stream_read(s);
		}
		if (s->recvd < s->accepted)
			failf("fd %d: %zu of %zu accepted bytes arrived before the sticky error",
			      s->wfd, s->recvd, s->accepted);
		int rc = px_send(R->loop, s->wfd, "x", 1);
		if (rc != -ENOMEM)
			failf("fd %d: px_send after the sticky error = %d", s->wfd, rc);
	}
	if (v == 2)
		for (int i = 0; i < nstrm; i++)
			if (!strm[i].torn && strm[i].drains < 1)
				failf("fd %d: no drain callback", strm[i].wfd);
	finish();
}

/* -- px_connect -- */

#define NCONN 16
struct conn_slot {
	int fd;
	int calls;
	int status;
};
static struct conn_slot cslot[NCONN];
static int tcp_lfd, unix_lfd;
static struct sockaddr_in tcp_addr;
static struct sockaddr_un unix_addr;
static socklen_t unix_len;
static int srv_fd[4 * NCONN], nsrv;

static void conn_cb(px_loop *loop, int fd, int status, void *arg)
{
	struct conn_slot *c = arg;

	(void)loop;
	CB_ENTER();
	c->calls++;
	c->status = status;
	if (fd != c->fd)
		failf("connect callback for fd %d, started on %d", fd, c->fd);
	if (c->calls > 1)
		failf("connect callback %d times for fd %d", c->calls, fd);
	if (status != 0)
		failf("connect of fd %d: status %d (%s)", fd, status, strerror(-status));
	/* Unregistered before the callback: it may px_io_add the fd. */
	watch(fd, PX_READ, rd_cb, NULL);
	CB_LEAVE();
}

static void start_connect(struct conn_slot *c, bool tcp)
{
	int fam = tcp ? AF_INET : AF_UNIX;
	const struct sockaddr *sa = tcp ? (const struct sockaddr *)&tcp_addr
	                                : (const struct sockaddr *)&unix_addr;
	socklen_t len = tcp ? (socklen_t)sizeof tcp_addr : unix_len;

	for (int attempt = 0; attempt < 2; attempt++) {
		c->fd = tp_socket(fam, SOCK_STREAM, 0, TP_CLOEXEC);
		if (c->fd < 0)
			failf("socket: %s", strerror(errno));
		keep(c->fd);
		st_of(c->fd)->watched = false;
		long f0 = ai_faults();
		int rc = px_connect(R->loop, c->fd, sa, len, tcp ? 10000 : -1, conn_cb, c);
		if (rc == 0) {
			if (ai_faults() != f0)
				note_hit("px_connect", 0);
			return;
		}
		if (!hit(f0, rc, "px_connect"))
			failf("px_connect = %d (%s)", rc, strerror(-rc));
		/* -ENOMEM: nothing registered, no callback will come. */
		int d = px_io_del(R->loop, c->fd);
		if (d != -ENOENT)
			failf("px_connect -ENOMEM left fd %d registered (px_io_del -> %d)", c->fd,
			      d);
		/* The connect may have been started already (the failure came
		 * after connect()): then the same fd cannot be retried. */
		f0 = ai_faults();
		rc = px_connect(R->loop, c->fd, sa, len, tcp ? 10000 : -1, conn_cb, c);
		if (rc == 0)
			return;
		if (rc != -EALREADY && rc != -EISCONN)
			failf("px_connect retried on fd %d after -ENOMEM = %d (%s)", c->fd, rc,
			      strerror(-rc));
		R->note = rc == -EALREADY
		                  ? "px_connect -ENOMEM after connect() had started: a retry on the "
		                    "same fd gives -EALREADY (header silent on the fd's state)"
		                  : "px_connect -ENOMEM after connect() had started: a retry on the "
		                    "same fd gives -EISCONN (header silent on the fd's state)";
		forget(c->fd);
		close(c->fd);
	}
	failf("px_connect failed twice");
}

static void accept_all(void)
{
	for (int l = 0; l < 2; l++) {
		for (;;) {
			int fd = tp_accept(l ? unix_lfd : tcp_lfd, NULL, NULL, TP_NONBLOCK | TP_CLOEXEC);
			if (fd < 0)
				break;
			keep(fd);
			if (nsrv < (int)(sizeof srv_fd / sizeof srv_fd[0]))
				srv_fd[nsrv++] = fd;
			/* One byte for the client's watcher (abandoned
			 * sockets just get closed at the end). */
			(void)tp_send(fd, "s", 1, MSG_DONTWAIT);
		}
	}
}

static bool conns_done(void)
{
	accept_all();
	for (int i = 0; i < NCONN; i++)
		if (cslot[i].calls < 1 || fst[cslot[i].fd].bytes < 1)
			return false;
	return true;
}

static int listen_tcp_local(struct sockaddr_in *sa)
{
	int fd = tp_socket(AF_INET, SOCK_STREAM, 0, TP_NONBLOCK | TP_CLOEXEC);
	int one = 1;
	socklen_t len = sizeof *sa;

	if (fd < 0)
		failf("socket: %s", strerror(errno));
	keep(fd);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	memset(sa, 0, sizeof *sa);
	sa->sin_family = AF_INET;
	sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)sa, sizeof *sa) < 0 || listen(fd, 256) < 0 ||
	    getsockname(fd, (struct sockaddr *)sa, &len) < 0)
		failf("listen on 127.0.0.1: %s", strerror(errno));
	return fd;
}

#ifndef __linux__
static void unix_path_unlink(void)
{
	if (unix_addr.sun_path[0])
		unlink(unix_addr.sun_path);
}
#endif

static void sc_connect(int v)
{
	(void)v;
	R->loop = new_loop(NULL);
	tcp_lfd = listen_tcp_local(&tcp_addr);
	unix_lfd = tp_socket(AF_UNIX, SOCK_STREAM, 0, TP_NONBLOCK | TP_CLOEXEC);
	if (unix_lfd < 0)
		failf("socket: %s", strerror(errno));
	keep(unix_lfd);
	memset(&unix_addr, 0, sizeof unix_addr);
	unix_addr.sun_family = AF_UNIX;
#ifdef __linux__
	/* Abstract namespace: nothing on disk. */
	int n = snprintf(unix_addr.sun_path + 1, sizeof unix_addr.sun_path - 1,
	                 "pollux-test-alloc-%d", (int)getpid());
	unix_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
#else
	/* Linux's abstract namespace is not elsewhere: a path, removed at exit
	 * (and before each bind: the scenario runs many times). */
	const char *dir = getenv("TMPDIR");
	int n = snprintf(unix_addr.sun_path, sizeof unix_addr.sun_path, "%s/pxalloc-%d.sock",
	                 dir && *dir && strlen(dir) < 64 ? dir : "/tmp", (int)getpid());
	unix_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
	static bool at;
	if (!at && atexit(unix_path_unlink) == 0)
		at = true;
	unlink(unix_addr.sun_path);
#endif
	if (bind(unix_lfd, (struct sockaddr *)&unix_addr, unix_len) < 0 || listen(unix_lfd, 64) < 0)
		failf("listen on a unix socket: %s", strerror(errno));
	nsrv = 0;
	memset(cslot, 0, sizeof cslot);
	/* TCP connects are pending (deadline timer); unix ones finish at once
	 * (deferred report through a timer). */
	for (int i = 0; i < NCONN; i++)
		start_connect(&cslot[i], i % 4 != 3);
	until(conns_done, "every px_connect reports success and its socket works", 3000);
	if (!settle(5))
		failf("callbacks keep coming after every connect completed");
	for (int i = 0; i < NCONN; i++)
		if (cslot[i].calls != 1)
			failf("connect %d: %d callbacks", i, cslot[i].calls);
	finish();
}

/* -- acceptor -- */

#define NCLI 20
static int cli_fd[NCLI];
static int acc_lfd, nacc;
static size_t cli_got[NCLI];

static void acc_cb(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                   socklen_t plen, void *arg)
{
	(void)loop;
	(void)lfd;
	(void)peer;
	(void)plen;
	(void)arg;
	CB_ENTER();
	if (cfd < 0) {
		failf("acceptor callback with error %d (%s)", cfd, strerror(-cfd));
	} else {
		keep(cfd);
		nacc++;
		watch(cfd, PX_READ, rd_cb, NULL);
		struct stream s = { .wfd = cfd, .total = 3 };
		while (send_next(&s)) /* "\0\1\2", in messages of 1 and 2 bytes */
			;
		if (s.accepted != 3 && !s.torn)
			failf("greeting not accepted");
	}
	CB_LEAVE();
}

static bool clients_greeted(void)
{
	for (int i = 0; i < NCLI; i++) {
		unsigned char b[8];
		ssize_t n = recv(cli_fd[i], b, sizeof b, MSG_DONTWAIT);
		if (n > 0)
			cli_got[i] += (size_t)n;
		if (cli_got[i] < 3)
			return false;
	}
	return true;
}

static bool servers_read(void)
{
	int n = 0;

	for (int fd = 0; fd < MAXFD; fd++)
		if (fst[fd].watched && fd != acc_lfd && fst[fd].bytes >= 1)
			n++;
	return n >= NCLI;
}

static void sc_acceptor(int v)
{
	(void)v;
	struct sockaddr_in sa;
	int rc;

	R->loop = new_loop(NULL);
	acc_lfd = listen_tcp_local(&sa);
	nacc = 0;
	memset(cli_got, 0, sizeof cli_got);
	long f0 = ai_faults();
	rc = px_acceptor_add(R->loop, acc_lfd, acc_cb, NULL);
	if (hit(f0, rc, "px_acceptor_add")) {
		int d = px_acceptor_del(R->loop, acc_lfd);
		if (d != -ENOENT)
			failf("px_acceptor_add -ENOMEM left an acceptor (px_acceptor_del -> %d)", d);
		f0 = ai_faults();
		rc = px_acceptor_add(R->loop, acc_lfd, acc_cb, NULL);
		(void)hit(f0, rc, "px_acceptor_add");
	}
	if (rc != 0)
		failf("px_acceptor_add = %d", rc);
	for (int i = 0; i < NCLI; i++) {
		cli_fd[i] = tp_socket(AF_INET, SOCK_STREAM, 0, TP_CLOEXEC);
		if (cli_fd[i] < 0)
			failf("socket: %s", strerror(errno));
		keep(cli_fd[i]);
		if (connect(cli_fd[i], (struct sockaddr *)&sa, sizeof sa) < 0)
			failf("connect: %s", strerror(errno));
	}
	until(clients_greeted, "every client is accepted and gets its greeting", 3000);
	if (nacc != NCLI)
		failf("%d connections accepted, %d made", nacc, NCLI);
	for (int i = 0; i < NCLI; i++)
		tu_send1(cli_fd[i]);
	until(servers_read, "every accepted socket's watcher reports", 3000);
	LIB(rc, "px_acceptor_del", px_acceptor_del(R->loop, acc_lfd));
	if (rc != 0)
		failf("px_acceptor_del = %d", rc);
	finish();
}

/* -- epoll: a stray registration makes the loop rebuild its kernel set -- */

#define NREB 3
static int reb_fd[NREB], reb_peer[NREB];

static bool reb_read(void)
{
	for (int i = 0; i < NREB; i++)
		if (fst[reb_fd[i]].bytes < 2)
			return false;
	return true;
}

static bool reb_read1(void)
{
	for (int i = 0; i < NREB; i++)
		if (fst[reb_fd[i]].bytes < 1)
			return false;
	return true;
}

static void sc_rebuild(int v)
{
	(void)v;
	int sv[2], x[2];

	R->loop = new_loop(NULL);
	for (int i = 0; i < NREB; i++) {
		reb_fd[i] = pair_at(sv, -1);
		reb_peer[i] = sv[1];
		watch(sv[0], PX_READ, rd_cb, NULL);
		tu_send1(sv[1]);
	}
	until(reb_read1, "the watchers report", 2000);
	pair_at(x, -1);
	int d = dup(x[0]);
	if (d < 0)
		failf("dup: %s", strerror(errno));
	keep(d);
	watch(x[0], PX_READ, rd_cb, NULL);
	iter(PX_RUN_NOWAIT);
	/* Closed while a dup keeps the file open, then deleted: the kernel
	 * keeps reporting the number, and only a new kernel set drops it. */
	forget(x[0]);
	close(x[0]);
	unwatch(x[0]);
	tu_send1(x[1]);
	for (int k = 0; k < 6; k++)
		iter(PX_RUN_NOWAIT);
	for (int i = 0; i < NREB; i++)
		tu_send1(reb_peer[i]);
	until(reb_read, "the watchers report after the rebuild", 2000);
	finish();
}

/* ---- the runner --------------------------------------------------------------------- */

struct scenario {
	const char *name;
	void (*body)(int v);
	int nvariants;
	const char *only; /* NULL: every backend; else the one it is meant for */
	const char *what;
};

static const struct scenario scenarios[] = {
	{ "loop_new", sc_loop_new, 1, NULL,
	  "px_loop_new, px_loop_new_backend for each backend and for the best" },
	{ "io_add", sc_io_add, 1, NULL,
	  "px_io_add of 40 fds and a high one: fd table, backend sets" },
	{ "io_mod", sc_io_mod, 1, NULL,
	  "px_io_mod/px_io_del of 80 watchers: deferred changes, change list" },
	{ "run_events", sc_run_events, 1, NULL,
	  "150 ready watchers in one run (event array), 40 added and 75 deleted from callbacks" },
	{ "et", sc_et, 1, NULL, "50 PX_ET watchers: ET emulation list and scratch on poll/select" },
	{ "et_rearm", sc_et_rearm, 1, NULL,
	  "a quiet PX_ET writer re-entering a full backend set (poll)" },
	{ "timers", sc_timers, 1, NULL,
	  "100 timers (10 repeating), deletions, firing: slots, heap, due list" },
	{ "timer_repush", sc_timer_repush, FADD + 1, NULL,
	  "repeating timers re-armed while callbacks fill the heap" },
	{ "send", sc_send, 3, NULL,
	  "px_send queues (chunks, side table), a disarmed watcher, px_send_notify" },
	{ "connect", sc_connect, 1, NULL, "16 px_connect (TCP pending, unix at once)" },
	{ "acceptor", sc_acceptor, 1, NULL,
	  "px_acceptor_add, 20 connections accepted, watched and greeted from the callback" },
	{ "rebuild", sc_rebuild, 1, "epoll", "a stray kernel registration: the epoll set is rebuilt" },
};
#define NSCEN (sizeof scenarios / sizeof scenarios[0])

struct outcome {
	long count;   /* allocations counted */
	bool reached; /* the planned failure happened */
	bool failed;
	char msg[1024];
	struct ai_site site; /* the allocation that failed */
	char hit_what[64];
	long hit_rc;
	bool torn;
	int errs;
	const char *note;
};

static void one_run(const struct scenario *sc, int v, long fail_at, struct outcome *o)
{
	int fds0 = tu_count_fds();

	memset(R, 0, sizeof *R);
	memset(fst, 0, sizeof fst);
	first_cb_hook = NULL;
	alarm(TU_WATCHDOG_S);
	ai_reset();
	ai_fail_at(fail_at);
	ai_arm();
	if (setjmp(R->jb) == 0)
		sc->body(v);
	ai_disarm();
	R->cbdepth = 0;
	finish();

	memset(o, 0, sizeof *o);
	o->count = ai_count();
	o->reached = ai_faults() > 0;
	o->failed = R->failed;
	snprintf(o->msg, sizeof o->msg, "%s", R->msg);
	snprintf(o->hit_what, sizeof o->hit_what, "%s", R->hit_what);
	o->hit_rc = R->hit_rc;
	o->torn = R->torn;
	o->errs = R->errs;
	o->note = R->note;
	(void)ai_fault_site(&o->site);
	if (!o->failed && ai_live() > 0) {
		char buf[600];
		o->failed = true;
		snprintf(o->msg, sizeof o->msg,
		         "leak: %ld block(s) the library allocated are left after px_loop_free: %s",
		         ai_live(), ai_live_str(buf, sizeof buf, 4));
	}
	int fds1 = tu_count_fds();
	if (!o->failed && fds1 != fds0) {
		o->failed = true;
		snprintf(o->msg, sizeof o->msg, "fd leak: %d open before, %d after", fds0, fds1);
	}
	ai_reset();
}

/* What the failure points of one site led to. */
#define MAXROWS 96
struct row {
	const void *caller;
	struct ai_site site;
	char what[160];
	int n;
};
static struct row rows[MAXROWS];
static int nrows;

static void tally(const struct ai_site *s, const char *what)
{
	int i;

	for (i = 0; i < nrows; i++)
		if (rows[i].caller == s->caller && strcmp(rows[i].what, what) == 0)
			break;
	if (i == nrows) {
		if (nrows == MAXROWS)
			return;
		rows[nrows].caller = s->caller;
		rows[nrows].site = *s;
		snprintf(rows[nrows].what, sizeof rows[nrows].what, "%s", what);
		rows[nrows].n = 0;
		nrows++;
	}
	rows[i].n++;
}

static void print_rows(void)
{
	char buf[160];
	bool *done = calloc((size_t)nrows + 1, 1);

	for (int i = 0; i < nrows; i++) {
		if (done[i])
			continue;
		ai_site_str(&rows[i].site, buf, sizeof buf);
		/* drop "(size)": sizes differ from point to point */
		char *paren = strchr(buf, '(');
		char *at = strstr(buf, " at ");
		if (paren && at && paren < at)
			memmove(paren, at, strlen(at) + 1);
		print_message("#     %s:", buf);
		for (int j = i; j < nrows; j++) {
			if (rows[j].caller != rows[i].caller)
				continue;
			done[j] = true;
			print_message(" %s x%d;", rows[j].what, rows[j].n);
		}
		print_message("\n");
	}
	free(done);
}

/* Distinct sites reached over the program. */
static const void *all_sites[128];
static int nall_sites;
static long total_points;

static void note_site(const void *caller)
{
	for (int i = 0; i < nall_sites; i++)
		if (all_sites[i] == caller)
			return;
	if (nall_sites < 128)
		all_sites[nall_sites++] = caller;
}

static void scenario_test(void **state)
{
	const struct scenario *sc = *state;
	char backend[16];
	int nfail = 0;

	{
		px_loop *l = px_loop_new();
		if (!l)
			fail_msg("px_loop_new: %s", strerror(errno));
		snprintf(backend, sizeof backend, "%s", px_loop_backend(l));
		px_loop_free(l);
	}
	if (sc->only && strcmp(sc->only, backend) != 0) {
		print_message("# %s: n/a on %s (%s)\n", sc->name, backend, sc->what);
		skip();
	}
	bool active = ai_active();

	for (int v = 0; v < sc->nvariants; v++) {
		struct outcome o;
		char name[64], what[160];
		snprintf(name, sizeof name, "%s[%d]", sc->name, v);

		if (!active) {
			/* valgrind: one plain run, for memcheck. */
			one_run(sc, v, 0, &o);
			if (o.failed)
				fail_msg("%s: %s", name, o.msg);
			continue;
		}
		one_run(sc, v, 0, &o);
		if (o.failed)
			fail_msg("%s, no failure injected: %s", name, o.msg);
		long K = o.count;
		if (o.note)
			print_message("# %s: %s\n", name, o.note);

		int failed = 0, not_reached = 0, torn = 0;
		const char *last_note = o.note;
		nrows = 0;
		for (long n = 1; n <= K; n++) {
			one_run(sc, v, n, &o);
			if (!o.reached) {
				not_reached++;
				continue;
			}
			note_site(o.site.caller);
			if (o.failed) {
				char site[160];
				failed++;
				tally(&o.site, "FAIL");
				if (nfail++ < 12)
					print_message("# FAIL %s[%s] N=%ld/%ld, %s failed (seen by %s, "
					              "-> %ld): %s\n",
					              name, backend, n, K,
					              ai_site_str(&o.site, site, sizeof site),
					              o.hit_what[0] ? o.hit_what : "nothing", o.hit_rc,
					              o.msg);
				continue;
			}
			if (o.note && (!last_note || strcmp(o.note, last_note) != 0)) {
				print_message("# %s[%s] N=%ld: %s\n", name, backend, n, o.note);
				last_note = o.note;
			}
			if (o.torn)
				torn++;
			if (o.errs)
				snprintf(what, sizeof what, "PX_ERR to the watcher");
			else if (o.hit_rc < 0)
				snprintf(what, sizeof what, "%s -> %s%s", o.hit_what,
				         tp_errname((int)-o.hit_rc),
				         o.torn ? " (sticky, part sent: the header's exception)" : "");
			else if (strstr(o.hit_what, "absorbed"))
				snprintf(what, sizeof what, "%s", o.hit_what);
			else
				snprintf(what, sizeof what, "%s absorbed", o.hit_what);
			tally(&o.site, what);
		}
		one_run(sc, v, 0, &o);
		if (o.failed)
			fail_msg("%s, final run without failure: %s", name, o.msg);
		print_message("# %s[%s] %s: %ld failure points (%d not reached, %d broke the "
		              "contract)%s\n",
		              name, backend, sc->what, K, not_reached, failed,
		              torn ? "; px_send's documented exception to all-or-nothing taken" : "");
		print_rows();
		total_points += K - not_reached;
	}
	if (!active) {
		print_message("# %s: allocation failures NOT injected: malloc is not interposable "
		              "here (valgrind replaces the allocator); ran once for memcheck only\n",
		              sc->name);
		skip();
	}
	if (nfail)
		fail_msg("%s: %d failure point(s) broke the contract (see # FAIL lines)", sc->name,
		         nfail);
}

int main(void)
{
	static struct CMUnitTest tests[NSCEN];

	ai_init((const void *)px_loop_new);
	nofile = tu_raise_nofile();
	for (size_t i = 0; i < NSCEN; i++) {
		tests[i] = (struct CMUnitTest){ scenarios[i].name, scenario_test, tu_setup, NULL,
			                        (void *)&scenarios[i] };
	}
	tu_init("test_alloc");
	if (!ai_active())
		print_message("# valgrind (or another allocator replacement): malloc, calloc and "
		              "realloc are not interposable; allocation failures cannot be "
		              "injected, each scenario runs once and is skipped (valgrind "
		              "--soname-synonyms=somalloc=nouserintercepts leaves the test's "
		              "interposer in place: then they are injected under memcheck too)\n");
	else if (!ai_strict())
		print_message("# libpollux is linked into the executable: every allocation while a "
		              "scenario runs counts\n");
	int rc = cmocka_run_group_tests_name(tu_group_name("test_alloc"), tests, NULL, NULL);
	if (ai_active())
		print_message("# allocation failures injected (%s): %ld, at %d distinct call sites "
		              "of the library\n",
		              getenv("POLLUX_BACKEND") ? getenv("POLLUX_BACKEND") : "default",
		              total_points, nall_sites);
	return rc;
}
