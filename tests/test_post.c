/*
 * Waking and posting across threads (v2, issue 11): px_loop_wake and
 * px_loop_post.
 *
 * The contract (API.md "v2", pollux.h): px_loop_wake ends the loop's current
 * wait or makes the next one return at once; wakes made before the loop
 * notices them merge into one, with no system call while one is pending.
 * px_loop_post runs cb exactly once in the loop's thread, in a later
 * iteration (never inside px_loop_post; from a callback: the next
 * iteration), posts of one thread in order; unrun posts keep PX_RUN_DEFAULT
 * running and are dropped by px_loop_free without being called.  No lost
 * wake-ups.  The wake-up fd is close-on-exec and not counted as an event.
 *
 * Every run is bounded by a guard timer (or, where a timer would keep the
 * run alive, by a watchdog thread that posts a stop: v2test.h), and every
 * outcome is checked by counts, never by how long something took.
 * Threads never assert (cmocka is not thread-safe): they record errors and
 * the main thread checks them after joining.  Counts shrink under valgrind.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "portable.h" /* config.h first */
#include "testutil.h"
#include "v2test.h"
#include "interpose.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */

/* A socketpair whose sv[0] is watched for reading and never becomes
 * readable: a PX_RUN_ONCE on the loop would wait for ever without a timer. */
static void never_ready(px_loop *l, int sv[2])
{
	tu_socketpair(sv);
	assert_int_equal(px_io_add(l, sv[0], PX_READ, tu_never_cb, NULL), 0);
}

static void never_ready_end(px_loop *l, int sv[2])
{
	assert_int_equal(px_io_del(l, sv[0]), 0);
	tu_close_pair(sv);
}

/* Write system calls of the process so far (/proc/self/io syscw), or -1
 * where that is not available, or under valgrind (whose scheduler writes a
 * pipe of its own). */
static long write_syscalls(void)
{
	FILE *f = tu_valgrind() ? NULL : fopen("/proc/self/io", "r");
	char line[128];
	long v = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "syscw: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* ---- px_loop_wake ------------------------------------------------------------- */

struct waker {
	px_loop *loop;
	unsigned delay_ms;
	int rc;
};

static void *waker_main(void *arg)
{
	struct waker *w = arg;
	if (w->delay_ms)
		tu_sleep_ms(w->delay_ms);
	w->rc = px_loop_wake(w->loop);
	return NULL;
}

/* A wake from another thread ends a PX_RUN_ONCE that would otherwise wait
 * for its guard timer (its only watcher never fires).  The wake-up fd is no
 * event and no io callback. */
static void test_wake_other_thread_ends_run_once(void **state)
{
	(void)state;
	static const unsigned delays[] = {50, 0, 5, 20};
	px_loop *l = tu_loop();
	int sv[2];
	never_ready(l, sv);
	for (size_t k = 0; k < sizeof delays / sizeof delays[0]; k++) {
		struct v2_guard g;
		struct waker w = {l, delays[k], 1};
		pthread_t t;
		struct px_loop_stats s0 = v2_stats(l), s1;
		v2_guard_begin(l, &g, v2_guard_ms());
		th_start(&t, waker_main, &w);
		int rc = px_loop_run(l, PX_RUN_ONCE);
		th_join(t);
		assert_int_equal(rc, 0);
		assert_int_equal(w.rc, 0);
		if (g.fired)
			fail_msg("delay %u ms: the wake did not end PX_RUN_ONCE (the guard did)",
			         delays[k]);
		v2_guard_end(l, &g);
		s1 = v2_stats(l);
		assert_int_equal(s1.iterations - s0.iterations, 1);
		assert_int_equal(s1.events - s0.events, 0);
		assert_int_equal(s1.io_callbacks - s0.io_callbacks, 0);
		assert_int_equal(s1.timer_callbacks - s0.timer_callbacks, 0);
		assert_int_equal(s1.posts - s0.posts, 0);
		assert_int_equal(s1.signals - s0.signals, 0);
		assert_true(s1.empty_wakeups - s0.empty_wakeups <= 1);
	}
	never_ready_end(l, sv);
	px_loop_free(l);
}

/* A wake made before px_loop_run makes the next wait return at once; the
 * wake is then used up: the following PX_RUN_ONCE waits for its timer. */
static void test_wake_before_run(void **state)
{
	(void)state;
	px_loop *l = tu_loop();
	int sv[2];
	struct v2_guard g;
	never_ready(l, sv);
	for (int round = 0; round < 3; round++) {
		assert_int_equal(px_loop_wake(l), 0);
		v2_guard_begin(l, &g, v2_guard_ms());
		assert_int_equal(px_loop_run(l, PX_RUN_ONCE), 0);
		if (g.fired)
			fail_msg("round %d: a wake made before the run did not end its wait", round);
		v2_guard_end(l, &g);

		v2_guard_begin(l, &g, 30);
		assert_int_equal(px_loop_run(l, PX_RUN_ONCE), 0);
		if (!g.fired)
			fail_msg("round %d: PX_RUN_ONCE returned without its timer: the wake was "
			         "not used up",
			         round);
		v2_guard_end(l, &g);
	}
	never_ready_end(l, sv);
	px_loop_free(l);
}

/* Many wakes before the loop notices them are one wake-up, made with at
 * most one system call (/proc/self/io counts the process's writes where
 * the kernel has it). */
static void test_wake_merges(void **state)
{
	(void)state;
	px_loop *l = tu_loop();
	int sv[2];
	struct v2_guard g;
	never_ready(l, sv);
	for (int round = 0; round < 3; round++) {
		long w0 = write_syscalls();
		for (int i = 0; i < 1000; i++)
			assert_int_equal(px_loop_wake(l), 0);
		long w1 = write_syscalls();
		if (w0 >= 0 && w1 >= 0 && w1 - w0 > 1)
			fail_msg("1000 px_loop_wake calls made %ld write system calls (at most 1: "
			         "no system call while a wake is pending)",
			         w1 - w0);
		struct px_loop_stats s0 = v2_stats(l), s1;
		v2_guard_begin(l, &g, v2_guard_ms());
		assert_int_equal(px_loop_run(l, PX_RUN_ONCE), 0);
		assert_int_equal(g.fired, 0);
		v2_guard_end(l, &g);
		s1 = v2_stats(l);
		assert_int_equal(s1.iterations - s0.iterations, 1);
		assert_int_equal(s1.events - s0.events, 0);
		assert_int_equal(s1.io_callbacks - s0.io_callbacks, 0);
		/* one wake-up for the thousand: the next run waits for its timer */
		v2_guard_begin(l, &g, 30);
		assert_int_equal(px_loop_run(l, PX_RUN_ONCE), 0);
		if (!g.fired)
			fail_msg("round %d: 1000 wakes before the run woke the loop more than once",
			         round);
		v2_guard_end(l, &g);
	}
	if (write_syscalls() < 0)
		print_message("# /proc/self/io is not readable here (or valgrind writes too): the "
		              "system-call count of merged wakes was not checked\n");
	never_ready_end(l, sv);
	px_loop_free(l);
}

/* px_loop_wake keeps errno, and is usable from a signal handler. */
static px_loop *handler_loop;
static atomic_int handler_rc = 1;

static void wake_handler(int signo)
{
	(void)signo;
	atomic_store(&handler_rc, px_loop_wake(handler_loop));
}

static void test_wake_errno_and_signal_handler(void **state)
{
	(void)state;
	px_loop *l = tu_loop();
	int sv[2];
	struct v2_guard g;
	struct sigaction sa, old;
	never_ready(l, sv);

	for (int i = 0; i < 3; i++) { /* not pending, pending, pending */
		errno = EDOM;
		assert_int_equal(px_loop_wake(l), 0);
		assert_int_equal(errno, EDOM);
	}
	v2_guard_begin(l, &g, v2_guard_ms());
	assert_int_equal(px_loop_run(l, PX_RUN_ONCE), 0);
	assert_int_equal(g.fired, 0);
	v2_guard_end(l, &g);

	handler_loop = l;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = wake_handler;
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
	atomic_store(&handler_rc, 1);
	assert_int_equal(raise(SIGUSR1), 0);
	int hrc = atomic_load(&handler_rc);
	v2_guard_begin(l, &g, v2_guard_ms());
	int rc = px_loop_run(l, PX_RUN_ONCE);
	assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
	assert_int_equal(rc, 0);
	assert_int_equal(hrc, 0);
	if (g.fired)
		fail_msg("px_loop_wake from a signal handler did not wake the loop");
	v2_guard_end(l, &g);
	handler_loop = NULL;
	never_ready_end(l, sv);
	px_loop_free(l);
}

/* ---- px_loop_post: once, later, in order -------------------------------------- */

struct counter {
	px_loop *loop;
	int n;
	int inside_post; /* set around px_loop_post: cb must not run then */
};

static void count_post_cb(px_loop *l, void *arg)
{
	struct counter *c = arg;
	assert_ptr_equal(l, c->loop);
	if (c->inside_post)
		fail_msg("a posted callback ran inside px_loop_post");
	c->n++;
}

/* Runs exactly once, never inside px_loop_post, counted in stats.posts. */
static void test_post_runs_exactly_once(void **state)
{
	(void)state;
	px_loop *l = tu_loop();
	int sv[2];
	struct counter c = {l, 0, 0};
	never_ready(l, sv);
	struct px_loop_stats s0 = v2_stats(l), s1;

	c.inside_post = 1;
	assert_int_equal(px_loop_post(l, count_post_cb, &c), 0);
	c.inside_post = 0;
	assert_int_equal(c.n, 0);
	v2_run_until(l, &c.n, 1, "one post");
	tu_nowait(l, 3);
	assert_int_equal(c.n, 1);
	s1 = v2_stats(l);
	assert_int_equal(s1.posts - s0.posts, 1);
	assert_int_equal(s1.events - s0.events, 0);
	assert_int_equal(s1.io_callbacks - s0.io_callbacks, 0);
	/* a wait that ended with a post to run is no empty wake-up */
	assert_int_equal(s1.empty_wakeups - s0.empty_wakeups, 0);

	/* the same cb and arg twice: two runs (posts are not merged) */
	c.inside_post = 1;
	assert_int_equal(px_loop_post(l, count_post_cb, &c), 0);
	assert_int_equal(px_loop_post(l, count_post_cb, &c), 0);
	c.inside_post = 0;
	v2_run_until(l, &c.n, 3, "two posts");
	tu_nowait(l, 3);
	assert_int_equal(c.n, 3);
	s1 = v2_stats(l);
	assert_int_equal(s1.posts - s0.posts, 3);

	never_ready_end(l, sv);
	px_loop_free(l);
}

/* A post wakes the loop: a PX_RUN_ONCE that waits (its only watcher never
 * fires) runs a post made from another thread during the wait. */
struct poster1 {
	px_loop *loop;
	struct counter *c;
	unsigned delay_ms;
	int rc;
};

static void *poster1_main(void *arg)
{
	struct poster1 *p = arg;
	tu_sleep_ms(p->delay_ms);
	p->rc = px_loop_post(p->loop, count_post_cb, p->c);
	return NULL;
}

static void test_post_wakes_waiting_loop(void **state)
{
	(void)state;
	px_loop *l = tu_loop();
	int sv[2];
	struct counter c = {l, 0, 0};
	never_ready(l, sv);
	for (int round = 0; round < 3; round++) {
		struct poster1 p = {l, &c, round == 0 ? 50 : 10, 1};
		pthread_t t;
		struct px_loop_stats s0 = v2_stats(l), s1;
		char why[256];
		th_start(&t, poster1_main, &p);
		bool ok = v2_run_until_ok(l, &c.n, round + 1, "a post from another thread", why,
		                          sizeof why);
		th_join(t);
		if (!ok)
			fail_msg("%s", why);
		assert_int_equal(p.rc, 0);
		s1 = v2_stats(l);
		assert_int_equal(s1.posts - s0.posts, 1);
		assert_int_equal(s1.events - s0.events, 0);
		assert_int_equal(s1.io_callbacks - s0.io_callbacks, 0);
	}
	assert_int_equal(c.n, 3);
	never_ready_end(l, sv);
	px_loop_free(l);
}

static uint64_t iterations(const px_loop *l)
{
	return v2_stats(l).iterations;
}

/* A chain of posts, each made from the previous one's callback: each runs
 * in the iteration after the one that posted it, never recursively. */
#define CHAIN 12
struct chain {
	int n, max;
	int in_cb;
	uint64_t iter[CHAIN];
};

static void chain_cb(px_loop *l, void *arg)
{
	struct chain *c = arg;
	if (c->in_cb)
		fail_msg("posted callback %d ran inside another one (recursively)", c->n);
	c->in_cb = 1;
	c->iter[c->n++] = iterations(l);
	if (c->n < c->max) {
		int before = c->n;
		assert_int_equal(px_loop_post(l, chain_cb, c), 0);
		assert_int_equal(c->n, before);
	}
	c->in_cb = 0;
}

/* Only posts registered: PX_RUN_DEFAULT runs the whole chain, then returns
 * by itself (posts keep it running, nothing else does). */
static void test_post_from_callback_next_iteration(void **state)
{
	(void)state;
	px_loop *l = tu_loop();
	struct chain c = {0, CHAIN, 0, {0}};
	static struct th_watchdog w; /* its thread may outlive a failed test */
	assert_int_equal(px_loop_post(l, chain_cb, &c), 0);
	th_watchdog_begin(&w, l, v2_guard_ms());
	int rc = px_loop_run(l, PX_RUN_DEFAULT);
	if (th_watchdog_end(&w))
		fail_msg("PX_RUN_DEFAULT with only posts did not return by itself (%d of %d ran)",
		         c.n, CHAIN);
	assert_int_equal(rc, 0);
	assert_int_equal(w.post_rc, 0);
	assert_int_equal(c.n, CHAIN);
	for (int i = 1; i < CHAIN; i++)
		if (c.iter[i] != c.iter[i - 1] + 1)
			fail_msg("post %d ran at iteration %llu, the one that posted it at %llu "
			         "(want the next iteration)",
			         i, (unsigned long long)c.iter[i], (unsigned long long)c.iter[i - 1]);
	px_loop_free(l);
}

/* Posts made from a timer callback and from an io callback run in the next
 * iteration, after the callback returned. */
struct from_cb {
	px_loop *loop;
	struct counter c;
	uint64_t posted_at, ran_at;
	int ran;
};

static void from_cb_post_cb(px_loop *l, void *arg)
{
	struct from_cb *f = arg;
	f->ran++;
	f->ran_at = iterations(l);
}

static void from_cb_timer(px_loop *l, int64_t id, void *arg)
{
	(void)id;
	struct from_cb *f = arg;
	f->posted_at = iterations(l);
	assert_int_equal(px_loop_post(l, from_cb_post_cb, f), 0);
	assert_int_equal(f->ran, 0);
}

static void from_cb_io(px_loop *l, int fd, unsigned revents, void *arg)
{
	(void)revents;
	struct from_cb *f = arg;
	tu_drain(fd);
	assert_int_equal(px_io_del(l, fd), 0);
	f->posted_at = iterations(l);
	assert_int_equal(px_loop_post(l, from_cb_post_cb, f), 0);
	assert_int_equal(f->ran, 0);
}

static void test_post_from_timer_and_io(void **state)
{
	(void)state;
	px_loop *l = tu_loop();
	struct from_cb f;
	int sv[2];

	memset(&f, 0, sizeof f);
	assert_true(px_timer_add(l, 0, 0, from_cb_timer, &f) > 0);
	v2_run_until(l, &f.ran, 1, "post from a timer callback");
	assert_int_equal(f.ran_at, f.posted_at + 1);

	memset(&f, 0, sizeof f);
	tu_socketpair(sv);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(l, sv[0], PX_READ, from_cb_io, &f), 0);
	v2_run_until(l, &f.ran, 1, "post from an io callback");
	assert_int_equal(f.ran_at, f.posted_at + 1);
	tu_nowait(l, 2);
	assert_int_equal(f.ran, 1);
	tu_close_pair(sv);
	px_loop_free(l);
}

/* Only one post registered: PX_RUN_DEFAULT runs it, then returns. */
static void test_post_keeps_run_default_alive(void **state)
{
	(void)state;
	px_loop *l = tu_loop();
	struct counter c = {l, 0, 0};
	static struct th_watchdog w; /* its thread may outlive a failed test */
	for (int round = 1; round <= 3; round++) {
		assert_int_equal(px_loop_post(l, count_post_cb, &c), 0);
		th_watchdog_begin(&w, l, v2_guard_ms());
		int rc = px_loop_run(l, PX_RUN_DEFAULT);
		if (th_watchdog_end(&w))
			fail_msg("PX_RUN_DEFAULT with one post did not return by itself");
		assert_int_equal(rc, 0);
		assert_int_equal(c.n, round);
	}
	/* nothing registered any more: it returns at once */
	th_watchdog_begin(&w, l, v2_guard_ms());
	int rc = px_loop_run(l, PX_RUN_DEFAULT);
	if (th_watchdog_end(&w))
		fail_msg("PX_RUN_DEFAULT with nothing registered did not return");
	assert_int_equal(rc, 0);
	assert_int_equal(c.n, 3);
	px_loop_free(l);
}

/* px_loop_free drops unrun posts without calling them (and frees them:
 * ASan and valgrind check the leak), from this thread and another. */
struct bulk_poster {
	px_loop *loop;
	struct counter *c;
	long n;
	long failed;
};

static void *bulk_poster_main(void *arg)
{
	struct bulk_poster *p = arg;
	for (long i = 0; i < p->n; i++)
		if (px_loop_post(p->loop, count_post_cb, p->c) != 0)
			p->failed++;
	return NULL;
}

static void test_post_free_drops_unrun(void **state)
{
	(void)state;
	for (int round = 0; round < 3; round++) {
		px_loop *l = tu_loop();
		struct counter c = {l, 0, 0};
		struct bulk_poster p = {l, &c, 1000, 0};
		pthread_t t;
		for (int i = 0; i < 1000; i++)
			assert_int_equal(px_loop_post(l, count_post_cb, &c), 0);
		th_start(&t, bulk_poster_main, &p);
		th_join(t);
		assert_int_equal(p.failed, 0);
		if (round == 1) { /* some have run, the rest are dropped */
			assert_int_equal(px_loop_run(l, PX_RUN_NOWAIT), 0);
			assert_true(c.n > 0);
		}
		int ran = c.n;
		px_loop_free(l);
		assert_int_equal(c.n, ran); /* px_loop_free called none */
	}
}

static void test_post_bad_arguments(void **state)
{
	(void)state;
	px_loop *l = tu_loop();
	struct counter c = {l, 0, 0};
	static struct th_watchdog w; /* its thread may outlive a failed test */
	assert_int_equal(px_loop_post(NULL, count_post_cb, &c), -EINVAL);
	assert_int_equal(px_loop_post(l, NULL, &c), -EINVAL);
	assert_int_equal(px_loop_post(NULL, NULL, NULL), -EINVAL);
	assert_int_equal(px_loop_wake(NULL), -EINVAL);
	/* nothing was queued: the run has nothing to keep it going */
	th_watchdog_begin(&w, l, v2_guard_ms());
	int rc = px_loop_run(l, PX_RUN_DEFAULT);
	if (th_watchdog_end(&w))
		fail_msg("a refused post kept PX_RUN_DEFAULT running");
	assert_int_equal(rc, 0);
	assert_int_equal(c.n, 0);
	assert_int_equal(v2_stats(l).posts, 0);
	px_loop_free(l);
}

/* ---- 4 threads x 100,000 posts, exactly once and in order, with echo ---------- */

#define NPOSTERS 4

struct order {
	px_loop *loop;
	long per_thread;
	long next[NPOSTERS]; /* next sequence number expected from each poster */
	long bad;            /* posts out of order or repeated */
	long first_bad_id, first_bad_seq, first_bad_want;
	long total;
	int echo_closed;
	/* echo server (loop thread) */
	int srv_fd;
	long echoed;
	int srv_err;
	/* the threads */
	atomic_int posters_running;
	struct th_gate start;
};

static struct order *the_order; /* the posted callback's context */

static void order_done_check(px_loop *l, struct order *o)
{
	if (o->total == NPOSTERS * o->per_thread && o->echo_closed)
		px_loop_stop(l);
}

static void order_cb(px_loop *l, void *arg)
{
	struct order *o = the_order;
	uintptr_t v = (uintptr_t)arg;
	long id = (long)(v % NPOSTERS), seq = (long)(v / NPOSTERS);
	if (seq != o->next[id]) {
		if (!o->bad++) {
			o->first_bad_id = id;
			o->first_bad_seq = seq;
			o->first_bad_want = o->next[id];
		}
	}
	o->next[id] = seq + 1;
	o->total++;
	order_done_check(l, o);
}

struct order_poster {
	struct order *o;
	int id;
	long failed, first_rc;
};

static void *order_poster_main(void *arg)
{
	struct order_poster *p = arg;
	struct order *o = p->o;
	if (!th_gate_wait(&o->start, 60000)) {
		p->failed = -1;
		atomic_fetch_sub(&o->posters_running, 1);
		return NULL;
	}
	for (long i = 0; i < o->per_thread; i++) {
		int rc = px_loop_post(o->loop, order_cb, (void *)(uintptr_t)(i * NPOSTERS + p->id));
		if (rc != 0 && !p->failed++)
			p->first_rc = rc;
	}
	atomic_fetch_sub(&o->posters_running, 1);
	return NULL;
}

/* The loop's side of the echo: reads what arrives and sends it back
 * (px_send queues what the socket does not take at once). */
static void order_echo_cb(px_loop *l, int fd, unsigned revents, void *arg)
{
	struct order *o = arg;
	char buf[16384];
	(void)revents;
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (n > 0) {
			int rc = px_send(l, fd, buf, (size_t)n);
			if (rc != 0 && !o->srv_err)
				o->srv_err = rc;
			o->echoed += n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		/* end of file (the client is done) or an error */
		if (n < 0 && !o->srv_err)
			o->srv_err = -errno;
		int rc = px_io_del(l, fd);
		if (rc != 0 && !o->srv_err)
			o->srv_err = rc;
		close(fd);
		o->srv_fd = -1;
		o->echo_closed = 1;
		order_done_check(l, o);
		return;
	}
}

struct echo_client {
	struct order *o;
	int fd;
	long rounds_min, rounds_max;
	long rounds, bytes;
	uint32_t seed;
	struct th_err err;
};

static unsigned char pattern_byte(uint32_t key, long i)
{
	uint32_t x = key ^ (uint32_t)i * 2654435761u;
	x ^= x >> 15;
	return (unsigned char)(x * 2246822519u >> 24);
}

static bool write_all(int fd, const unsigned char *p, size_t len, struct th_err *e)
{
	while (len > 0) {
		ssize_t n = tp_send(fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			th_fail(e, "send: %s", n < 0 ? strerror(errno) : "0");
			return false;
		}
		p += n;
		len -= (size_t)n;
	}
	return true;
}

static bool read_all(int fd, unsigned char *p, size_t len, struct th_err *e)
{
	while (len > 0) {
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			th_fail(e, "recv: %s", n < 0 ? strerror(errno) : "end of file");
			return false;
		}
		p += n;
		len -= (size_t)n;
	}
	return true;
}

/* Writes a random-sized patterned block, reads it back, compares every
 * byte; at least rounds_min rounds and on until the posters are done. */
static void *echo_client_main(void *arg)
{
	struct echo_client *c = arg;
	static unsigned char out[16384], in[16384]; /* one client per program */
	if (px_set_nonblock(c->fd, 0) != 0) {
		th_fail(&c->err, "px_set_nonblock");
		close(c->fd);
		return NULL;
	}
	while (c->rounds < c->rounds_max &&
	       (c->rounds < c->rounds_min || atomic_load(&c->o->posters_running) > 0)) {
		size_t len = 1 + th_rand(&c->seed) % sizeof out;
		uint32_t key = th_rand(&c->seed);
		for (size_t i = 0; i < len; i++)
			out[i] = pattern_byte(key, (long)i);
		if (!write_all(c->fd, out, len, &c->err) || !read_all(c->fd, in, len, &c->err))
			break;
		if (memcmp(in, out, len) != 0) {
			size_t i = 0;
			while (in[i] == out[i])
				i++;
			th_fail(&c->err, "round %ld: echoed byte %zu of %zu differs", c->rounds, i,
			        len);
			break;
		}
		c->rounds++;
		c->bytes += (long)len;
	}
	close(c->fd); /* the server sees end of file */
	return NULL;
}

static void test_post_threads_exactly_once_in_order(void **state)
{
	(void)state;
	px_loop *l = tu_loop();
	static struct order o; /* large enough to keep off the stack */
	struct order_poster p[NPOSTERS];
	struct echo_client c;
	pthread_t pt[NPOSTERS], ct;
	int sv[2];
	struct v2_guard g;

	memset(&o, 0, sizeof o);
	o.loop = l;
	o.per_thread = v2_scaled(100000);
	atomic_init(&o.posters_running, NPOSTERS);
	th_gate_init(&o.start);
	the_order = &o;
	tu_socketpair(sv);
	o.srv_fd = sv[0];
	assert_int_equal(px_io_add(l, sv[0], PX_READ, order_echo_cb, &o), 0);
	memset(&c, 0, sizeof c);
	c.o = &o;
	c.fd = sv[1];
	c.rounds_min = v2_scaled(200);
	c.rounds_max = 1000000;
	c.seed = 12345;
	struct px_loop_stats s0 = v2_stats(l), s1;

	for (int i = 0; i < NPOSTERS; i++) {
		p[i].o = &o;
		p[i].id = i;
		p[i].failed = p[i].first_rc = 0;
		th_start(&pt[i], order_poster_main, &p[i]);
	}
	th_start(&ct, echo_client_main, &c);
	for (int i = 0; i < NPOSTERS; i++)
		th_gate_post(&o.start);

	v2_guard_begin(l, &g, tu_valgrind() ? 300000 : 120000);
	int rc = px_loop_run(l, PX_RUN_DEFAULT);
	int fired = g.fired;
	if ((fired || rc != 0) && o.srv_fd >= 0) {
		/* let the client end: it waits for echoes that may never come */
		shutdown(o.srv_fd, SHUT_RDWR);
	}
	for (int i = 0; i < NPOSTERS; i++)
		th_join(pt[i]);
	th_join(ct);
	assert_int_equal(rc, 0);
	v2_guard_end(l, &g);
	th_gate_destroy(&o.start);
	s1 = v2_stats(l);
	print_message("# %d threads x %ld posts; %ld echo rounds, %ld bytes; %llu iterations\n",
	              NPOSTERS, o.per_thread, c.rounds, c.bytes,
	              (unsigned long long)(s1.iterations - s0.iterations));

	th_check(&c.err, "echo client");
	for (int i = 0; i < NPOSTERS; i++)
		if (p[i].failed)
			fail_msg("poster %d: %ld px_loop_post calls failed (first %d)", i, p[i].failed,
			         (int)p[i].first_rc);
	if (fired)
		fail_msg("the guard timer fired: %ld of %ld posts ran, echo %s", o.total,
		         NPOSTERS * o.per_thread, o.echo_closed ? "done" : "not done");
	if (o.bad)
		fail_msg("%ld posts out of order or repeated (first: poster %ld seq %ld, expected "
		         "%ld)",
		         o.bad, o.first_bad_id, o.first_bad_seq, o.first_bad_want);
	for (int i = 0; i < NPOSTERS; i++)
		assert_int_equal(o.next[i], o.per_thread);
	assert_int_equal(o.total, NPOSTERS * o.per_thread);
	assert_int_equal(s1.posts - s0.posts, (uint64_t)(NPOSTERS * o.per_thread));
	assert_int_equal(o.srv_err, 0);
	assert_true(o.echo_closed);
	assert_int_equal(o.echoed, c.bytes);
	assert_true(c.rounds >= c.rounds_min);
	tu_nowait(l, 2);
	assert_int_equal(o.total, NPOSTERS * o.per_thread); /* nothing ran twice */
	the_order = NULL;
	px_loop_free(l);
}

/* ---- no lost wake-up: a post or wake racing with the loop going to sleep ----- */

/* The race's window is where the loop, woken, reads its wake-up fd and
 * re-arms the wake: a waker that comes then must not be lost.  That window
 * is a few instructions wide; this read() interposer (the library's read
 * goes through it, like the waits through waitcount.c) widens it for the
 * loop's wake-up fd during the race tests, by a random spin before the
 * read.  Where it does not see the library's read (e.g. a _FORTIFY_SOURCE
 * build calling __read_chk) the test says so and runs unwidened. */
static atomic_int slow_fd = -1;
static atomic_long slow_reads;
static uint32_t slow_seed = 31337; /* the loop's thread only */

typedef ssize_t read_fn(int, void *, size_t);
ssize_t read(int fd, void *buf, size_t len)
{
	IP_REAL(read_fn *, read);
	if (fd >= 0 && fd == atomic_load_explicit(&slow_fd, memory_order_relaxed)) {
		atomic_fetch_add_explicit(&slow_reads, 1, memory_order_relaxed);
		uint32_t x = th_rand(&slow_seed);
		if (x & 1)
			th_spin(th_rand(&slow_seed) % (1u << (x >> 1) % 16));
	}
	return real_read(fd, buf, len);
}

/* Whether fd is an epoll instance (Linux: its /proc/self/fd link). */
static bool is_epoll_fd(int fd)
{
	char path[64], target[128];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, target, sizeof target - 1);
	if (n < 0)
		return false;
	target[n] = 0;
	return strstr(target, "eventpoll") != NULL;
}

/* A new loop, and the fd it reads its wake-ups from (-1: not found): the
 * new fd that is not epoll's and can be read (an eventfd, or a pipe's
 * read end). */
static px_loop *loop_and_wakefd(int *wakefd)
{
	int before[512], after[512];
	int nb = tu_list_fds(before, 512);
	px_loop *l = tu_loop();
	int na = tu_list_fds(after, 512);
	*wakefd = -1;
	for (int i = 0; i < na && na <= 512 && nb <= 512; i++) {
		int old = 0;
		for (int j = 0; j < nb; j++)
			old |= before[j] == after[i];
		int fl = fcntl(after[i], F_GETFL);
		if (!old && !is_epoll_fd(after[i]) && fl >= 0 && (fl & O_ACCMODE) != O_WRONLY)
			*wakefd = after[i];
	}
	return l;
}

enum race_mode { RACE_POST, RACE_WAKE };

struct racer {
	px_loop *loop;
	enum race_mode mode;
	long rounds;
	int k; /* posts or wakes in this round: set by the main thread before go */
	struct th_gate go, done;
	uint32_t seed;
	long failed, first_rc;
	int ran; /* loop thread only */
	struct th_err err;
};

static void race_post_cb(px_loop *l, void *arg)
{
	(void)l;
	((struct racer *)arg)->ran++;
}

static void *racer_main(void *arg)
{
	struct racer *r = arg;
	for (long i = 0; i < r->rounds; i++) {
		if (!th_gate_wait(&r->go, 120000)) {
			th_fail(&r->err, "round %ld: no go from the main thread", i);
			return NULL;
		}
		for (int j = 0; j < r->k; j++) {
			/* a random short delay: none, or up to some 100 microseconds
			 * (log-uniform), so that the post lands before, during and after
			 * the loop's entry into its wait, and while it handles the
			 * previous wake-up */
			uint32_t x = th_rand(&r->seed);
			if (x & 3)
				th_spin(th_rand(&r->seed) % (1u << (x >> 2) % 17));
			int rc = r->mode == RACE_POST ? px_loop_post(r->loop, race_post_cb, r)
			                              : px_loop_wake(r->loop);
			if (rc != 0 && !r->failed++)
				r->first_rc = rc;
		}
		th_gate_post(&r->done);
	}
	return NULL;
}

static void race_rounds(enum race_mode mode, long rounds)
{
	int wakefd;
	px_loop *l = loop_and_wakefd(&wakefd);
	int sv[2];
	static struct racer r; /* the thread may outlive a failed test */
	pthread_t t;
	const char *what = mode == RACE_POST ? "post" : "wake";
	char why[256] = "";
	memset(&r, 0, sizeof r);
	r.loop = l;
	r.mode = mode;
	r.rounds = rounds;
	r.seed = mode == RACE_POST ? 777 : 4242;
	th_gate_init(&r.go);
	th_gate_init(&r.done);
	never_ready(l, sv);
	atomic_store(&slow_reads, 0);
	atomic_store(&slow_fd, wakefd);
	th_start(&t, racer_main, &r);
	long i;
	int iters_max = 0;
	uint32_t seed = 99;
	/* no assertion while the thread runs: the first problem ends the rounds */
	for (i = 0; i < rounds && !why[0]; i++) {
		struct v2_guard g = {0, 0};
		r.k = 1 + (int)(th_rand(&seed) % 3);
		int want = r.ran + r.k, k = 0, rc = 0;
		g.id = px_timer_add(l, tu_valgrind() ? 60000 : 10000, 0, v2_guard_cb, &g);
		if (g.id <= 0) {
			v2_fmt(why, sizeof why, "round %ld: px_timer_add(guard) = %lld", i,
			         (long long)g.id);
			break;
		}
		th_gate_post(&r.go);
		if (mode == RACE_POST) {
			/* more than one iteration passes before the post runs only if
			 * something else woke the loop: bounded all the same */
			for (k = 0; k < 1000 && r.ran < want && !g.fired && rc == 0; k++)
				rc = px_loop_run(l, PX_RUN_ONCE);
		} else {
			rc = px_loop_run(l, PX_RUN_ONCE);
			k = 1;
		}
		if (!g.fired)
			(void)px_timer_del(l, g.id);
		if (k > iters_max)
			iters_max = k;
		if (!th_gate_wait(&r.done, 120000))
			v2_fmt(why, sizeof why, "round %ld: the racing thread did not finish", i);
		else if (rc != 0)
			v2_fmt(why, sizeof why, "round %ld: px_loop_run = %d", i, rc);
		else if (g.fired)
			v2_fmt(why, sizeof why,
			         "round %ld: the %s was lost (the guard timer ended the wait)", i, what);
		else if (mode == RACE_POST && r.ran != want) /* ran exactly once each */
			v2_fmt(why, sizeof why, "round %ld: %d posts ran, %d expected", i, r.ran, want);
	}
	/* let the thread end: it waits for a go per remaining round */
	for (long j = i; j < rounds; j++)
		th_gate_post(&r.go);
	th_join(t);
	atomic_store(&slow_fd, -1);
	long slowed = atomic_load(&slow_reads);
	print_message("# %s race: %ld rounds, at most %d iteration(s) per round; %ld wake-up "
	              "read(s) slowed%s\n",
	              what, i, iters_max, slowed,
	              slowed ? "" : " (the interposer did not see the library's read: window not widened)");
	if (why[0])
		fail_msg("%s race: %s", what, why);
	th_check(&r.err, "racing thread");
	if (r.failed)
		fail_msg("%ld calls failed (first %d)", r.failed, (int)r.first_rc);
	never_ready_end(l, sv);
	px_loop_free(l);
	th_gate_destroy(&r.go);
	th_gate_destroy(&r.done);
}

static void test_post_race_no_lost_wakeup(void **state)
{
	(void)state;
	race_rounds(RACE_POST, v2_scaled(3000));
}

static void test_wake_race_no_lost_wakeup(void **state)
{
	(void)state;
	race_rounds(RACE_WAKE, v2_scaled(3000));
}

/* ---- the wake-up fd: close-on-exec, not the user's, not leaked ---------------- */

static void test_wakeup_fd_cloexec_no_leak(void **state)
{
	(void)state;
	const char *const *b = tu_configured_backends();
	int before[512], after[512];
	int nb = tu_list_fds(before, 512);
	assert_true(nb < 512);
	for (int k = 0; b[k] && k < 8; k++) {
		px_loop *l = px_loop_new_backend(b[k]);
		assert_non_null(l);
		struct counter c = {l, 0, 0};
		/* used: a wake, a post, a run */
		assert_int_equal(px_loop_wake(l), 0);
		assert_int_equal(px_loop_post(l, count_post_cb, &c), 0);
		v2_run_until(l, &c.n, 1, b[k]);
		int na = tu_list_fds(after, 512), fresh = 0;
		assert_true(na < 512);
		for (int i = 0; i < na; i++) {
			int old = 0;
			for (int j = 0; j < nb; j++)
				old |= before[j] == after[i];
			if (old)
				continue;
			fresh++;
			int fl = fcntl(after[i], F_GETFD);
			assert_int_not_equal(fl, -1);
			if (!(fl & FD_CLOEXEC))
				fail_msg("%s: the loop's fd %d is not close-on-exec", b[k], after[i]);
			/* the loop's own: not a user's registration */
			assert_int_equal(px_io_del(l, after[i]), -ENOENT);
			assert_int_equal(px_io_mod(l, after[i], PX_READ), -ENOENT);
		}
		/* a wake-up fd at least (eventfd, or a pipe), and epoll's own */
		int want = strcmp(b[k], "epoll") == 0 ? 2 : 1;
		if (fresh < want)
			fail_msg("%s: %d new fd(s) after px_loop_new, at least %d expected (the "
			         "wake-up fd is made at px_loop_new)",
			         b[k], fresh, want);
		px_loop_free(l);
		na = tu_list_fds(after, 512);
		assert_int_equal(na, nb);
		for (int i = 0; i < na; i++)
			assert_int_equal(after[i], before[i]);
	}
	/* many loops with posts left unrun: no fd or memory left behind */
	for (int i = 0; i < 100; i++) {
		px_loop *l = tu_loop();
		struct counter c = {l, 0, 0};
		assert_int_equal(px_loop_post(l, count_post_cb, &c), 0);
		assert_int_equal(px_loop_wake(l), 0);
		px_loop_free(l);
		assert_int_equal(c.n, 0);
	}
	assert_int_equal(tu_count_fds(), nb);
}

/* pollux.h (px_loop_new): the loop's own fds are the caller's to leave
 * alone; the one the loop watches (the eventfd, or the pipe's read end) is
 * kept from px_io_* calls: px_io_mod/del/close -ENOENT, px_io_add -EEXIST.
 * The others (epoll's fd, the pipe's write end) are not registered: del and
 * close answer -ENOENT as for any unregistered fd and close nothing. */
static void test_loop_own_fds_refused(void **state)
{
	(void)state;
	int before[512], after[512];
	int nb = tu_list_fds(before, 512);
	assert_true(nb < 512);
	px_loop *l = tu_loop();
	int na = tu_list_fds(after, 512), watched = 0, bad = 0;
	char why[512] = "";
	assert_true(na < 512);
	for (int i = 0; i < na; i++) {
		int old = 0, fd = after[i];
		for (int j = 0; j < nb; j++)
			old |= before[j] == fd;
		if (old)
			continue;
		int fl = fcntl(fd, F_GETFL);
		bool epoll = is_epoll_fd(fd), wr = fl >= 0 && (fl & O_ACCMODE) == O_WRONLY;
		const char *kind = epoll ? "epoll fd" : wr ? "wake-up pipe's write end" : "wake-up fd";
		int del_rc = px_io_del(l, fd), close_rc = px_io_close(l, fd);
		int mod_rc = px_io_mod(l, fd, PX_READ), add_rc = -EEXIST;
		if (!epoll && !wr) {
			watched++;
			add_rc = px_io_add(l, fd, PX_READ, tu_never_cb, NULL);
		}
		if (del_rc != -ENOENT || close_rc != -ENOENT || mod_rc != -ENOENT ||
		    add_rc != -EEXIST) {
			size_t len = strlen(why);
			v2_fmt(why + len, sizeof why - len,
			       "%s%s %d: px_io_del %d, px_io_close %d, px_io_mod %d, px_io_add %d",
			       bad++ ? "; " : "", kind, fd, del_rc, close_rc, mod_rc, add_rc);
		}
	}
	const char *be = px_loop_backend(l); /* a static string */
	/* the loop still works: its fds were neither closed nor taken over */
	struct counter c = {l, 0, 0};
	assert_int_equal(px_loop_post(l, count_post_cb, &c), 0);
	v2_run_until(l, &c.n, 1, "a post after the refused calls");
	px_loop_free(l);
	assert_int_equal(tu_count_fds(), nb);
	if (bad)
		fail_msg("%s: %s", be, why);
	assert_int_equal(watched, 1);
}

int main(void)
{
	/* the tests' own sends never raise SIGPIPE; with the portable fallbacks
	 * tp_send toggles SIGPIPE around each call, which is only safe across
	 * threads when it is ignored for good */
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		TU_TEST(test_wake_other_thread_ends_run_once),
		TU_TEST(test_wake_before_run),
		TU_TEST(test_wake_merges),
		TU_TEST(test_wake_errno_and_signal_handler),
		TU_TEST(test_post_runs_exactly_once),
		TU_TEST(test_post_wakes_waiting_loop),
		TU_TEST(test_post_from_callback_next_iteration),
		TU_TEST(test_post_from_timer_and_io),
		TU_TEST(test_post_keeps_run_default_alive),
		TU_TEST(test_post_free_drops_unrun),
		TU_TEST(test_post_bad_arguments),
		TU_TEST(test_post_threads_exactly_once_in_order),
		TU_TEST(test_post_race_no_lost_wakeup),
		TU_TEST(test_wake_race_no_lost_wakeup),
		TU_TEST(test_wakeup_fd_cloexec_no_leak),
		TU_TEST(test_loop_own_fds_refused),
	};
	return TU_RUN("test_post", tests);
}
