/* Timers: errors, never early, order, after_ms == 0, repeats without drift,
 * missed periods, deletion from callbacks, ids. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MS 1000000ull /* ns */

static void never_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)arg;
	fail_msg("timer %lld must not fire", (long long)id);
}

/* ---- errors ------------------------------------------------------------ */

static void test_timer_errors(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int fired = 0;
	assert_int_equal(px_timer_add(loop, 0, 0, NULL, NULL), -EINVAL);
	assert_int_equal(px_timer_add(loop, 10, 10, NULL, &fired), -EINVAL);
	assert_int_equal(px_timer_add(NULL, 10, 0, tu_count_timer_cb, &fired), -EINVAL);
	assert_int_equal(px_timer_del(loop, 12345), -ENOENT);
	assert_int_equal(px_timer_del(loop, 0), -ENOENT);
	assert_int_equal(px_timer_del(loop, -1), -ENOENT);
	assert_int_equal(px_timer_del(loop, INT64_MAX), -ENOENT);
	assert_int_equal(px_timer_del(loop, INT64_MIN), -ENOENT);
	assert_int_equal(px_timer_del(NULL, 1), -EINVAL);
	/* a failed add registered nothing: the loop is empty */
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);

	/* pending: 0, then -ENOENT */
	int64_t id = px_timer_add(loop, 1000, 0, never_cb, NULL);
	assert_true(id > 0);
	assert_int_equal(px_timer_del(loop, id), 0);
	assert_int_equal(px_timer_del(loop, id), -ENOENT);
	/* a one-shot that fired: -ENOENT */
	id = px_timer_add(loop, 0, 0, tu_count_timer_cb, &fired);
	assert_true(id > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(fired, 1);
	assert_int_equal(px_timer_del(loop, id), -ENOENT);
	/* a repeating timer that fired is still pending: 0 */
	id = px_timer_add(loop, 0, 1000, tu_count_timer_cb, &fired);
	assert_true(id > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(fired, 2);
	assert_int_equal(px_timer_del(loop, id), 0);
	assert_int_equal(px_timer_del(loop, id), -ENOENT);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0); /* empty again */
	px_loop_free(loop);
}

/* ---- never early --------------------------------------------------------- */

#define NEARLY 14
static const uint64_t early_after[NEARLY] = {0, 1, 2, 3, 5, 7, 10, 11, 15, 20, 33, 50, 99, 150};

struct early {
	int *left;
	uint64_t t0;    /* CLOCK_MONOTONIC read before px_timer_add */
	uint64_t after; /* ms */
	uint64_t fired; /* ns */
	int calls;
	int64_t id;
};

static void early_cb(px_loop *loop, int64_t id, void *arg)
{
	struct early *e = arg;
	e->fired = tu_now_ns();
	e->calls++;
	assert_int_equal(id, e->id);
	if (--*e->left == 0)
		px_loop_stop(loop);
}

static void test_timer_never_early(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct early e[NEARLY];
	int left = NEARLY;
	for (int round = 0; round < 3; round++) {
		left = NEARLY;
		for (int i = 0; i < NEARLY; i++) {
			e[i] = (struct early){.left = &left, .after = early_after[i]};
			e[i].t0 = tu_now_ns();
			e[i].id = px_timer_add(loop, early_after[i], 0, early_cb, &e[i]);
			assert_true(e[i].id > 0);
			if (round == 1)
				tu_sleep_ms(1); /* spread the due times */
		}
		assert_false(tu_run_for(loop, 5000));
		for (int i = 0; i < NEARLY; i++) {
			assert_int_equal(e[i].calls, 1);
			if (e[i].fired < e[i].t0 + e[i].after * MS)
				fail_msg("timer after %llu ms fired %.3f ms early",
				         (unsigned long long)e[i].after,
				         (double)(e[i].t0 + e[i].after * MS - e[i].fired) / 1e6);
		}
	}
	px_loop_free(loop);
}

/* Added from a callback: never early either (the clock is read inside
 * px_timer_add, not the iteration's cached time). */
struct late_add {
	uint64_t t0, fired;
	int calls;
};

static void late_add_fire_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct late_add *l = arg;
	l->fired = tu_now_ns();
	l->calls++;
	px_loop_stop(loop);
}

static void late_add_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct late_add *l = arg;
	tu_sleep_ms(30); /* the cached loop time is now 30 ms old */
	l->t0 = tu_now_ns();
	assert_true(px_timer_add(loop, 20, 0, late_add_fire_cb, l) > 0);
}

static void test_timer_never_early_from_callback(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct late_add l = {0};
	assert_true(px_timer_add(loop, 0, 0, late_add_cb, &l) > 0);
	assert_false(tu_run_for(loop, 5000));
	assert_int_equal(l.calls, 1);
	if (l.fired < l.t0 + 20 * MS)
		fail_msg("timer added from a callback fired %.3f ms early",
		         (double)(l.t0 + 20 * MS - l.fired) / 1e6);
	px_loop_free(loop);
}

/* ---- order ------------------------------------------------------------ */

struct order {
	char seq[64];
	int n;
	int want;
};

struct tag {
	struct order *o;
	char c;
};

static void order_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct tag *t = arg;
	assert_true(t->o->n < 63);
	t->o->seq[t->o->n++] = t->c;
	if (t->o->n == t->o->want)
		px_loop_stop(loop);
}

static void block_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	tu_sleep_ms((unsigned)(uintptr_t)arg);
}

/* Everything becomes due together (a first timer blocks the loop): the
 * timers fire by due time, ties (equal after_ms) in creation order. */
static void test_timer_order_blocked(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	static const struct {
		uint64_t after;
		char c;
	} spec[] = {{50, 'A'}, {30, 'B'}, {10, 'C'}, {30, 'D'}, {20, 'E'},
	            {30, 'F'}, {30, 'G'}, {5, 'H'},  {30, 'I'}, {0, 'J'}};
	const char *want = "JHCEBDFGIA";
	enum { N = sizeof spec / sizeof spec[0] };
	struct order o = {.want = N};
	struct tag tags[N];
	assert_true(px_timer_add(loop, 0, 0, block_cb, (void *)(uintptr_t)100) > 0);
	for (int i = 0; i < N; i++) {
		tags[i] = (struct tag){&o, spec[i].c};
		assert_true(px_timer_add(loop, spec[i].after, 0, order_cb, &tags[i]) > 0);
	}
	assert_false(tu_run_for(loop, 5000));
	o.seq[o.n] = 0;
	assert_string_equal(o.seq, want);
	px_loop_free(loop);
}

/* Many timers with the same after_ms: creation order. */
static void test_timer_ties_creation_order(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	enum { N = 40 };
	struct order o = {.want = N};
	struct tag tags[N];
	for (int i = 0; i < N; i++) {
		tags[i] = (struct tag){&o, (char)('0' + i)};
		assert_true(px_timer_add(loop, 15, 0, order_cb, &tags[i]) > 0);
	}
	assert_false(tu_run_for(loop, 5000));
	assert_int_equal(o.n, N);
	for (int i = 0; i < N; i++)
		assert_int_equal(o.seq[i], '0' + i);
	px_loop_free(loop);
}

/* Spread due times, created out of order: fire by due time. */
static void test_timer_order_spread(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	static const struct {
		uint64_t after;
		char c;
	} spec[] = {{60, 'd'}, {15, 'a'}, {45, 'c'}, {30, 'b'}, {75, 'e'}};
	enum { N = sizeof spec / sizeof spec[0] };
	struct order o = {.want = N};
	struct tag tags[N];
	for (int i = 0; i < N; i++) {
		tags[i] = (struct tag){&o, spec[i].c};
		assert_true(px_timer_add(loop, spec[i].after, 0, order_cb, &tags[i]) > 0);
	}
	assert_false(tu_run_for(loop, 5000));
	o.seq[o.n] = 0;
	assert_string_equal(o.seq, "abcde");
	px_loop_free(loop);
}

/* ---- after_ms == 0 --------------------------------------------------------- */

static void test_timer_zero_not_synchronous(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int fired = 0;
	assert_true(px_timer_add(loop, 0, 0, tu_count_timer_cb, &fired) > 0);
	assert_int_equal(fired, 0); /* not from inside px_timer_add */
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(fired, 1);
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(fired, 1);
	px_loop_free(loop);
}

struct zctx {
	int outer, inner;
	int inner_at_outer_return;
};

static void zero_inner_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	((struct zctx *)arg)->inner++;
}

static void zero_outer_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct zctx *z = arg;
	z->outer++;
	assert_true(px_timer_add(loop, 0, 0, zero_inner_cb, z) > 0);
	z->inner_at_outer_return = z->inner;
}

/* A 0 ms timer added from a timer callback fires in the next iteration, not
 * in the current one. */
static void test_timer_zero_from_callback_next_iteration(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct zctx z = {0};
	assert_true(px_timer_add(loop, 0, 0, zero_outer_cb, &z) > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(z.outer, 1);
	assert_int_equal(z.inner_at_outer_return, 0);
	assert_int_equal(z.inner, 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(z.inner, 1);
	px_loop_free(loop);
}

/* A 0 ms timer that re-adds itself fires once per iteration, and io
 * watchers still get their turn (no starvation, no endless round). */
struct readd0 {
	int fired;
};

static void readd0_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct readd0 *r = arg;
	r->fired++;
	assert_true(px_timer_add(loop, 0, 0, readd0_cb, r) > 0);
}

static void io_count_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	(void)fd;
	assert_int_equal(revents, PX_WRITE);
	(*(int *)arg)++;
}

static void test_timer_zero_readd_no_starvation(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct readd0 r = {0};
	int io = 0, sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, io_count_cb, &io), 0);
	assert_true(px_timer_add(loop, 0, 0, readd0_cb, &r) > 0);
	for (int i = 1; i <= 10; i++) {
		assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
		assert_int_equal(r.fired, i);
		assert_int_equal(io, i);
	}
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* A repeating timer with repeat_ms fires once per iteration at most even
 * when its period is shorter than the iteration. */
static void test_timer_repeat_tiny_period(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int fired = 0;
	assert_true(px_timer_add(loop, 0, 1, tu_count_timer_cb, &fired) > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(fired, 1);
	tu_sleep_ms(20); /* 20 periods pass */
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(fired, 2); /* one firing for all of them */
	px_loop_free(loop);
}

/* ---- repeats ------------------------------------------------------------ */

struct rep {
	uint64_t t[128];
	int n;
	int stop_at;
	unsigned sleep_ms;
	unsigned sleep_at; /* sleep in this firing (1-based), 0: none */
	int64_t id;
	int del_rc;
};

static void rep_cb(px_loop *loop, int64_t id, void *arg)
{
	struct rep *r = arg;
	assert_int_equal(id, r->id);
	assert_true(r->n < 128);
	r->t[r->n++] = tu_now_ns();
	if (r->n == r->stop_at) {
		r->del_rc = px_timer_del(loop, id);
		px_loop_stop(loop);
		return;
	}
	if (r->sleep_ms && (r->sleep_at == 0 || (unsigned)r->n == r->sleep_at))
		tu_sleep_ms(r->sleep_ms);
}

/* repeat 10 ms, 50 firings: the n-th at >= start + after + (n-1) * repeat,
 * and no drift: the total is about 50 periods even though every callback
 * takes 7 ms. */
static void test_timer_repeat_no_drift(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct rep *r = calloc(1, sizeof *r);
	r->stop_at = 50;
	r->sleep_ms = 7;
	uint64_t t0 = tu_now_ns();
	r->id = px_timer_add(loop, 10, 10, rep_cb, r);
	assert_true(r->id > 0);
	assert_false(tu_run_for(loop, 20000));
	assert_int_equal(r->n, 50);
	assert_int_equal(r->del_rc, 0);
	for (int i = 0; i < r->n; i++) {
		uint64_t lo = t0 + (10 + (uint64_t)i * 10) * MS;
		if (r->t[i] < lo)
			fail_msg("firing %d came %.3f ms early", i + 1, (double)(lo - r->t[i]) / 1e6);
	}
	double total = (double)(r->t[49] - t0) / 1e6;
	double bound = 10 + 49 * 10 + (tu_valgrind() ? 5000 : 300);
	if (total > bound)
		fail_msg("50 firings of a 10 ms timer took %.1f ms (drift?), bound %.0f", total,
		         bound);
	/* deleted from its own callback: no more firings */
	assert_true(tu_run_for(loop, 50));
	assert_int_equal(r->n, 50);
	assert_int_equal(px_timer_del(loop, r->id), -ENOENT);
	px_loop_free(loop);
	free(r);
}

/* Missed periods: the loop is blocked for 3.5 periods inside the first
 * firing; exactly one catch-up firing follows, and the next one comes about
 * a period after the last missed due time (never a burst of replays). */
static void test_timer_missed_periods_collapse(void **state)
{
	(void)state;
	const uint64_t P = 60;
	px_loop *loop = tu_loop();
	struct rep *r = calloc(1, sizeof *r);
	r->stop_at = 5;
	r->sleep_ms = (unsigned)(P * 7 / 2); /* 3.5 periods */
	r->sleep_at = 1;
	uint64_t t0 = tu_now_ns();
	r->id = px_timer_add(loop, P, P, rep_cb, r);
	assert_true(r->id > 0);
	assert_false(tu_run_for(loop, 10000));
	assert_int_equal(r->n, 5);
	uint64_t d1 = t0 + P * MS; /* lower bound of the first due time */
	char trace[256];
	snprintf(trace, sizeof trace, "firings at +%.1f +%.1f +%.1f +%.1f +%.1f ms (P=%llu)",
	         (double)(r->t[0] - t0) / 1e6, (double)(r->t[1] - t0) / 1e6,
	         (double)(r->t[2] - t0) / 1e6, (double)(r->t[3] - t0) / 1e6,
	         (double)(r->t[4] - t0) / 1e6, (unsigned long long)P);
	assert_true(r->t[0] >= d1);
	/* the catch-up firing: after the block */
	assert_true(r->t[1] >= r->t[0] + r->sleep_ms * MS);
	/* exactly one firing stands for the missed due times d1+P .. d1+3P:
	 * the next comes at d1+4P at the earliest, i.e. about half a period
	 * after the catch-up firing (a period if the library counts from the
	 * firing itself), never right after it */
	/* (Only when the catch-up came well before d1+4P: on a loaded
	 * machine it may itself run late, close to the next due time, and
	 * that firing then rightly follows it closely.) */
	if (r->t[1] + P * MS / 2 <= d1 + 4 * P * MS && r->t[2] < r->t[1] + P * MS / 4)
		fail_msg("more than one catch-up firing for the missed periods: %s", trace);
	if (r->t[2] < d1 + 4 * P * MS)
		fail_msg("missed periods replayed: %s", trace);
	if (r->t[3] < d1 + 5 * P * MS || r->t[4] < d1 + 6 * P * MS)
		fail_msg("early firing after the catch-up: %s", trace);
	px_loop_free(loop);
	free(r);
}

/* A timer that became due while a callback blocked the loop fires as soon as
 * that callback returns: the wait after a slow callback must be computed
 * from the current time, not from the time cached before the callbacks. */
struct slow {
	uint64_t cb_end, fired;
	int calls;
};

static void slow_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	struct slow *s = arg;
	tu_sleep_ms(300);
	s->cb_end = tu_now_ns();
}

static void slow_victim_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct slow *s = arg;
	s->fired = tu_now_ns();
	s->calls++;
	px_loop_stop(loop);
}

static void slow_io_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)revents;
	assert_int_equal(px_io_del(loop, fd), 0);
	slow_cb(loop, 0, arg);
}

static void test_timer_not_late_after_slow_callback(void **state)
{
	(void)state;
	for (int variant = 0; variant < 2; variant++) {
		px_loop *loop = tu_loop();
		struct slow s = {0};
		int sv[2] = {-1, -1};
		if (variant == 0) {
			assert_true(px_timer_add(loop, 0, 0, slow_cb, &s) > 0);
		} else {
			tu_socketpair(sv);
			assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, slow_io_cb, &s), 0);
		}
		/* due while the callback sleeps */
		assert_true(px_timer_add(loop, 250, 0, slow_victim_cb, &s) > 0);
		assert_false(tu_run_for(loop, 5000));
		assert_int_equal(s.calls, 1);
		assert_true(s.cb_end > 0);
		double late = (double)(s.fired - s.cb_end) / 1e6;
		if (late > 100)
			fail_msg("%s callback blocked 300 ms; a timer due at 250 ms fired %.1f ms "
			         "after it returned (timeout computed from a stale cached time?)",
			         variant ? "io" : "timer", late);
		px_loop_free(loop);
		tu_close_pair(sv);
	}
}

/* ---- deletion ------------------------------------------------------------- */

struct selfdel {
	int calls;
	int rc;
	int64_t id;
};

static void selfdel_cb(px_loop *loop, int64_t id, void *arg)
{
	struct selfdel *s = arg;
	assert_int_equal(id, s->id);
	s->calls++;
	s->rc = px_timer_del(loop, id);
}

static void test_timer_del_self(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct selfdel rep = {0}, one = {0};
	rep.id = px_timer_add(loop, 5, 5, selfdel_cb, &rep);
	one.id = px_timer_add(loop, 5, 0, selfdel_cb, &one);
	assert_true(rep.id > 0 && one.id > 0 && rep.id != one.id);
	assert_true(tu_run_for(loop, 100));
	assert_int_equal(rep.calls, 1);
	assert_int_equal(rep.rc, 0);
	assert_int_equal(one.calls, 1);
	assert_int_equal(one.rc, -ENOENT);
	assert_int_equal(px_timer_del(loop, rep.id), -ENOENT);
	assert_int_equal(px_timer_del(loop, one.id), -ENOENT);
	px_loop_free(loop);
}

struct delother {
	int64_t victims[2];
	int rc[2];
	int calls;
};

static void delother_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct delother *d = arg;
	d->calls++;
	d->rc[0] = px_timer_del(loop, d->victims[0]);
	d->rc[1] = px_timer_del(loop, d->victims[1]);
}

/* A timer deletes others that are due in the same iteration: they do not
 * fire. */
static void test_timer_del_other_due_same_iteration(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct delother d = {0};
	assert_true(px_timer_add(loop, 0, 0, block_cb, (void *)(uintptr_t)60) > 0);
	assert_true(px_timer_add(loop, 10, 0, delother_cb, &d) > 0);
	d.victims[0] = px_timer_add(loop, 10, 0, never_cb, NULL);
	d.victims[1] = px_timer_add(loop, 20, 20, never_cb, NULL);
	assert_true(d.victims[0] > 0 && d.victims[1] > 0);
	assert_true(tu_run_for(loop, 150));
	assert_int_equal(d.calls, 1);
	assert_int_equal(d.rc[0], 0);
	assert_int_equal(d.rc[1], 0);
	px_loop_free(loop);
}

/* Deleting a pending timer (one-shot or repeating) before it is due. */
static void test_timer_del_pending(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int fired = 0;
	int64_t a = px_timer_add(loop, 20, 0, never_cb, NULL);
	int64_t b = px_timer_add(loop, 20, 10, never_cb, NULL);
	int64_t c = px_timer_add(loop, 30, 0, tu_count_timer_cb, &fired);
	assert_int_equal(px_timer_del(loop, a), 0);
	assert_int_equal(px_timer_del(loop, b), 0);
	assert_true(tu_run_for(loop, 100));
	assert_int_equal(fired, 1);
	assert_int_equal(px_timer_del(loop, c), -ENOENT);
	px_loop_free(loop);
}

/* ---- ids ----------------------------------------------------------------- */

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

static void test_timer_ids_unique(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	enum { N = 20000 };
	int64_t *ids = malloc(N * sizeof *ids);
	int fired = 0, k = 0;
	for (int i = 0; i < N / 2; i++) {
		ids[k] = px_timer_add(loop, 1000, i % 3 ? 0 : 5, never_cb, NULL);
		assert_true(ids[k] > 0);
		assert_int_equal(px_timer_del(loop, ids[k]), 0);
		k++;
	}
	/* some that fire, interleaved with pending ones */
	for (int round = 0; round < 10; round++) {
		for (int i = 0; i < 100; i++) {
			ids[k] = px_timer_add(loop, 0, 0, tu_count_timer_cb, &fired);
			assert_true(ids[k] > 0);
			k++;
		}
		assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
		assert_int_equal(fired, (round + 1) * 100);
	}
	while (k < N) {
		ids[k] = px_timer_add(loop, 1000, 0, never_cb, NULL);
		assert_true(ids[k] > 0);
		k++;
	}
	qsort(ids, N, sizeof *ids, cmp64);
	for (int i = 1; i < N; i++)
		if (ids[i] == ids[i - 1])
			fail_msg("timer id %lld reused", (long long)ids[i]);
	free(ids);
	px_loop_free(loop); /* frees the pending ones without calling them */
}

/* ---- misc ------------------------------------------------------------------ */

/* Huge after_ms values must not overflow into "due now". */
static void test_timer_huge_after(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	static const uint64_t huge[] = {UINT64_MAX, UINT64_MAX - 1, INT64_MAX,
	                                (uint64_t)INT64_MAX + 1, 1ull << 40, 1ull << 32,
	                                (1ull << 31) + 5};
	int64_t ids[sizeof huge / sizeof huge[0]];
	for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
		ids[i] = px_timer_add(loop, huge[i], huge[i], never_cb, NULL);
		assert_true(ids[i] > 0);
	}
	tu_nowait(loop, 3);
	int fired = 0;
	uint64_t t0 = tu_now_ns();
	assert_true(px_timer_add(loop, 20, 0, tu_count_timer_cb, &fired) > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(fired, 1);
	assert_true(tu_now_ns() >= t0 + 20 * MS);
	assert_true(tu_run_for(loop, 30));
	for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++)
		assert_int_equal(px_timer_del(loop, ids[i]), 0);
	px_loop_free(loop);
}

/* A huge repeat fires once and then waits (no overflow into a tight repeat). */
static void test_timer_huge_repeat(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int fired = 0;
	int64_t id = px_timer_add(loop, 0, UINT64_MAX, tu_count_timer_cb, &fired);
	assert_true(id > 0);
	assert_true(tu_run_for(loop, 50));
	assert_int_equal(fired, 1);
	assert_int_equal(px_timer_del(loop, id), 0);
	px_loop_free(loop);
}

/* The callback gets its id and arg; many timers with deletions: each fires
 * exactly once, never early, the deleted ones never. */
struct many {
	uint64_t t0, after, fired_at;
	int calls;
	int64_t id;
	int deleted;
	int *left;
};

static void many_cb(px_loop *loop, int64_t id, void *arg)
{
	struct many *m = arg;
	assert_int_equal(id, m->id);
	assert_false(m->deleted);
	m->calls++;
	m->fired_at = tu_now_ns();
	if (--*m->left == 0)
		px_loop_stop(loop);
}

static void test_timer_many(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	enum { N = 1000 };
	struct many *m = calloc(N, sizeof *m);
	int left = 0;
	unsigned seed = 12345;
	for (int i = 0; i < N; i++) {
		seed = seed * 1103515245u + 12345u;
		m[i].after = (seed >> 16) % 120;
		m[i].left = &left;
		m[i].t0 = tu_now_ns();
		m[i].id = px_timer_add(loop, m[i].after, 0, many_cb, &m[i]);
		assert_true(m[i].id > 0);
	}
	for (int i = 0; i < N; i += 3) {
		assert_int_equal(px_timer_del(loop, m[i].id), 0);
		m[i].deleted = 1;
	}
	for (int i = 0; i < N; i++)
		left += !m[i].deleted;
	assert_false(tu_run_for(loop, 10000));
	for (int i = 0; i < N; i++) {
		assert_int_equal(m[i].calls, m[i].deleted ? 0 : 1);
		if (!m[i].deleted && m[i].fired_at < m[i].t0 + m[i].after * MS)
			fail_msg("timer %d (after %llu) fired early", i,
			         (unsigned long long)m[i].after);
	}
	free(m);
	px_loop_free(loop);
}

/* PX_RUN_ONCE with only a repeating timer: each run is one firing. */
static void test_timer_run_once_repeat(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int fired = 0;
	uint64_t t0 = tu_now_ns();
	int64_t id = px_timer_add(loop, 10, 10, tu_count_timer_cb, &fired);
	for (int i = 1; i <= 5; i++) {
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
		assert_int_equal(fired, i);
		assert_true(tu_now_ns() >= t0 + (uint64_t)(10 * i) * MS);
	}
	assert_int_equal(px_timer_del(loop, id), 0);
	px_loop_free(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_timer_errors),
		TU_TEST(test_timer_never_early),
		TU_TEST(test_timer_never_early_from_callback),
		TU_TEST(test_timer_order_blocked),
		TU_TEST(test_timer_ties_creation_order),
		TU_TEST(test_timer_order_spread),
		TU_TEST(test_timer_zero_not_synchronous),
		TU_TEST(test_timer_zero_from_callback_next_iteration),
		TU_TEST(test_timer_zero_readd_no_starvation),
		TU_TEST(test_timer_repeat_tiny_period),
		TU_TEST(test_timer_repeat_no_drift),
		TU_TEST(test_timer_missed_periods_collapse),
		TU_TEST(test_timer_not_late_after_slow_callback),
		TU_TEST(test_timer_del_self),
		TU_TEST(test_timer_del_other_due_same_iteration),
		TU_TEST(test_timer_del_pending),
		TU_TEST(test_timer_ids_unique),
		TU_TEST(test_timer_huge_after),
		TU_TEST(test_timer_huge_repeat),
		TU_TEST(test_timer_many),
		TU_TEST(test_timer_run_once_repeat),
	};
	return TU_RUN("test_timer", tests);
}
