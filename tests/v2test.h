/* v2test.h: helpers of the test programs of the v2 loop services
 * (test_post, test_signal, test_threads): threads, gates, guard timers and
 * bounded runs.  Header-only (static inline); include after testutil.h.
 *
 * cmocka is not thread-safe: its assertions longjmp to the test's jmp_buf
 * of the main thread.  Code that runs in another thread never asserts; it
 * records what went wrong (th_err) and the main thread checks after
 * th_join.
 *
 * th_gate is a counting event made of a mutex and a condition variable
 * (unnamed POSIX semaphores are missing on macOS); every wait on it is
 * bounded. */
#ifndef PX_TEST_V2TEST_H
#define PX_TEST_V2TEST_H

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Starts a thread (asserts: main thread only). */
static inline void th_start(pthread_t *t, void *(*fn)(void *), void *arg)
{
	int rc = pthread_create(t, NULL, fn, arg);
	if (rc != 0)
		fail_msg("pthread_create: %s", strerror(rc));
}

static inline void th_join(pthread_t t)
{
	int rc = pthread_join(t, NULL);
	if (rc != 0)
		fail_msg("pthread_join: %s", strerror(rc));
}

/* The first error a thread saw, as text (empty: none). */
struct th_err {
	char msg[256];
};

#if defined(__GNUC__)
#define V2_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define V2_PRINTF(f, a)
#endif

static inline void th_fail(struct th_err *e, const char *fmt, ...) V2_PRINTF(2, 3);
static inline void th_fail(struct th_err *e, const char *fmt, ...)
{
	if (e->msg[0])
		return; /* keep the first */
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof e->msg, fmt, ap);
	va_end(ap);
	if (!e->msg[0])
		e->msg[0] = '?';
}

/* snprintf for messages that may be cut (no truncation warning). */
static inline void v2_fmt(char *buf, size_t len, const char *fmt, ...) V2_PRINTF(3, 4);
static inline void v2_fmt(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

/* Fails the test (main thread) if the thread recorded an error. */
static inline void th_check(const struct th_err *e, const char *who)
{
	if (e->msg[0])
		fail_msg("%s: %s", who, e->msg);
}

struct th_gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	long count;
};

static inline void th_gate_init(struct th_gate *g)
{
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
	g->count = 0;
}

static inline void th_gate_destroy(struct th_gate *g)
{
	pthread_cond_destroy(&g->cv);
	pthread_mutex_destroy(&g->mu);
}

static inline void th_gate_post(struct th_gate *g)
{
	pthread_mutex_lock(&g->mu);
	g->count++;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

/* Waits up to ms for a post and takes it; false on timeout. */
static inline bool th_gate_wait(struct th_gate *g, unsigned ms)
{
	struct timespec ts;
	bool ok = true;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&g->mu);
	while (g->count == 0) {
		int rc = pthread_cond_timedwait(&g->cv, &g->mu, &ts);
		if (rc == ETIMEDOUT && g->count == 0) {
			ok = false;
			break;
		}
	}
	if (ok)
		g->count--;
	pthread_mutex_unlock(&g->mu);
	return ok;
}

/* A tiny per-thread random generator (xorshift32; never 0). */
static inline uint32_t th_rand(uint32_t *s)
{
	uint32_t x = *s ? *s : 0x9e3779b9u;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *s = x;
}

/* Busy-waits n rounds of a volatile counter (a short, random delay). */
static inline void th_spin(uint32_t n)
{
	for (volatile uint32_t i = 0; i < n; i++)
		;
}

/* A run that must return by itself (PX_RUN_DEFAULT with nothing that keeps
 * it running) gets no timer as a guard (a timer would keep it running):
 * th_watchdog's thread posts a stop to the loop (px_loop_post) when the
 * run has not ended within ms.  th_watchdog_end tells whether it had to. */
struct th_watchdog {
	px_loop *loop;
	unsigned ms;
	struct th_gate done;
	pthread_t t;
	int posted; /* written by the watchdog thread, read after th_join */
	int post_rc;
};

static inline void th_watchdog_cb(px_loop *loop, void *arg)
{
	(void)arg;
	px_loop_stop(loop);
}

static inline void *th_watchdog_main(void *arg)
{
	struct th_watchdog *w = arg;
	if (!th_gate_wait(&w->done, w->ms)) {
		w->posted = 1;
		w->post_rc = px_loop_post(w->loop, th_watchdog_cb, w);
	}
	return NULL;
}

static inline void th_watchdog_begin(struct th_watchdog *w, px_loop *loop, unsigned ms)
{
	w->loop = loop;
	w->ms = ms;
	w->posted = 0;
	w->post_rc = 0;
	th_gate_init(&w->done);
	th_start(&w->t, th_watchdog_main, w);
}

/* True when the watchdog had to post its stop (the run did not end by
 * itself).  A post it made that did not run yet stays queued: the caller
 * frees the loop (px_loop_free drops it) or fails anyway. */
static inline bool th_watchdog_end(struct th_watchdog *w)
{
	th_gate_post(&w->done);
	th_join(w->t);
	th_gate_destroy(&w->done);
	return w->posted != 0;
}

/* ---- bounded runs ---------------------------------------------------------- */

/* A guard timer's delay: long enough never to fire in a correct run, even
 * under valgrind or ThreadSanitizer on a loaded machine. */
static inline unsigned v2_guard_ms(void)
{
	return tu_valgrind() ? 60000 : 20000;
}

/* n, or a twentieth of it under valgrind (at least 1). */
static inline long v2_scaled(long n)
{
	long v = tu_valgrind() ? n / 20 : n;
	return v > 0 ? v : 1;
}

static inline struct px_loop_stats v2_stats(const px_loop *l)
{
	struct px_loop_stats s;
	memset(&s, 0, sizeof s);
	assert_int_equal(px_loop_stats(l, &s, sizeof s), 0);
	return s;
}

struct v2_guard {
	int64_t id;
	int fired;
};

static inline void v2_guard_cb(px_loop *l, int64_t id, void *arg)
{
	(void)id;
	((struct v2_guard *)arg)->fired++;
	px_loop_stop(l);
}

/* A timer that stops the loop after ms (and says so in g->fired). */
static inline void v2_guard_begin(px_loop *l, struct v2_guard *g, unsigned ms)
{
	g->fired = 0;
	g->id = px_timer_add(l, ms, 0, v2_guard_cb, g);
	assert_true(g->id > 0);
}

static inline void v2_guard_end(px_loop *l, struct v2_guard *g)
{
	assert_int_equal(px_timer_del(l, g->id), g->fired ? -ENOENT : 0);
}

/* Runs PX_RUN_ONCE until *count >= want, bounded by a guard timer and a
 * number of iterations.  Does not assert (usable while other threads still
 * use the test's data): false, with the reason in why, when the bound came
 * first or a run failed. */
static inline bool v2_run_until_ok(px_loop *l, const int *count, int want, const char *what,
                                   char *why, size_t whylen)
{
	struct v2_guard g = {0, 0};
	int rc = 0;
	g.id = px_timer_add(l, v2_guard_ms(), 0, v2_guard_cb, &g);
	if (g.id <= 0) {
		v2_fmt(why, whylen, "%s: px_timer_add(guard) = %lld", what, (long long)g.id);
		return false;
	}
	for (long i = 0; i < 1000000 && *count < want && !g.fired && rc == 0; i++)
		rc = px_loop_run(l, PX_RUN_ONCE);
	if (!g.fired)
		(void)px_timer_del(l, g.id);
	if (rc != 0) {
		v2_fmt(why, whylen, "%s: px_loop_run = %d", what, rc);
		return false;
	}
	if (*count < want) {
		v2_fmt(why, whylen, "%s: %d of %d callback(s) after %s", what, *count, want,
		         g.fired ? "the guard timer fired (lost wake-up?)" : "1000000 iterations");
		return false;
	}
	return true;
}

/* The same, failing the test at once. */
static inline void v2_run_until(px_loop *l, const int *count, int want, const char *what)
{
	char why[256];
	if (!v2_run_until_ok(l, count, want, what, why, sizeof why))
		fail_msg("%s", why);
}

#endif
