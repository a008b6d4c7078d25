/* Loop life cycle, backend selection and run modes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <unistd.h>

/* ---- environment save/restore ------------------------------------------ */

static char *saved_env;
static int saved_env_set;

static void env_save(void)
{
	const char *v = getenv("POLLUX_BACKEND");
	saved_env_set = v != NULL;
	saved_env = v ? strdup(v) : NULL;
}

static void env_restore(void)
{
	if (saved_env_set)
		setenv("POLLUX_BACKEND", saved_env, 1);
	else
		unsetenv("POLLUX_BACKEND");
	free(saved_env);
	saved_env = NULL;
}

static int known_name(const char *n)
{
	return !strcmp(n, "select") || !strcmp(n, "poll") || !strcmp(n, "epoll");
}

static int rank(const char *n)
{
	return !strcmp(n, "epoll") ? 0 : !strcmp(n, "poll") ? 1 : 2;
}

/* Built into this configuration (config.h), not "listed by px_backends()":
 * the expectations must not come from the library under test. */
static int available(const char *name)
{
	return tu_configured(name);
}

static const char *const known_names[] = {"epoll", "poll", "select"};

/* ---- backend selection ------------------------------------------------- */

static void test_backend_bogus_name(void **state)
{
	(void)state;
	static const char *bad[] = {"bogus", "selec", "epoll ", " poll", "poll2", "kqueue",
	                            "io_uring", "e"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		errno = 0;
		px_loop *l = px_loop_new_backend(bad[i]);
		if (l)
			fail_msg("px_loop_new_backend(\"%s\") succeeded (%s)", bad[i],
			         px_loop_backend(l));
		assert_int_equal(errno, EINVAL);
	}
}

static void test_backend_env_bogus(void **state)
{
	(void)state;
	env_save();
	setenv("POLLUX_BACKEND", "bogus", 1);
	errno = 0;
	px_loop *l = px_loop_new();
	int e = errno;
	env_restore();
	if (l) {
		px_loop_free(l);
		fail_msg("POLLUX_BACKEND=bogus: px_loop_new succeeded");
	}
	assert_int_equal(e, EINVAL);
}

/* POLLUX_BACKEND is read by every px_loop_new call, case-insensitively. */
static void test_backend_env_read_every_call(void **state)
{
	(void)state;
	const char *const *b = tu_configured_backends();
	env_save();
	for (int i = 0; b[i] && i < 8; i++) {
		char up[32];
		size_t k;
		for (k = 0; b[i][k] && k < sizeof up - 1; k++)
			up[k] = (char)(k % 2 ? b[i][k] - 32 : b[i][k]); /* "pOlL" */
		up[k] = 0;
		setenv("POLLUX_BACKEND", up, 1);
		px_loop *l = px_loop_new();
		if (!l) {
			env_restore();
			fail_msg("POLLUX_BACKEND=%s: %s", up, strerror(errno));
		}
		int ok = strcmp(px_loop_backend(l), b[i]) == 0;
		px_loop_free(l);
		if (!ok) {
			env_restore();
			fail_msg("POLLUX_BACKEND=%s gave another backend", up);
		}
	}
	/* empty means best */
	setenv("POLLUX_BACKEND", "", 1);
	px_loop *l = px_loop_new();
	int ok = l && strcmp(px_loop_backend(l), b[0]) == 0;
	px_loop_free(l);
	unsetenv("POLLUX_BACKEND");
	px_loop *l2 = px_loop_new();
	int ok2 = l2 && strcmp(px_loop_backend(l2), b[0]) == 0;
	px_loop_free(l2);
	env_restore();
	assert_true(ok);
	assert_true(ok2);
}

/* Each of the three known names: a configured backend is created by name
 * and through POLLUX_BACKEND; one this build does not have (--disable-epoll,
 * --disable-poll) is NULL with errno ENOSYS both ways, never EINVAL and never
 * a silent fallback to another backend. */
static void test_backend_known_names(void **state)
{
	(void)state;
	int made = 0, refused = 0;
	env_save();
	for (size_t i = 0; i < sizeof known_names / sizeof known_names[0]; i++) {
		const char *name = known_names[i];
		errno = 0;
		px_loop *l = px_loop_new_backend(name);
		int e1 = errno;
		setenv("POLLUX_BACKEND", name, 1);
		errno = 0;
		px_loop *l2 = px_loop_new();
		int e2 = errno;
		const char *got1 = l ? px_loop_backend(l) : "(NULL)";
		const char *got2 = l2 ? px_loop_backend(l2) : "(NULL)";
		int ok;
		if (available(name)) {
			ok = l && l2 && !strcmp(got1, name) && !strcmp(got2, name);
			made++;
		} else {
			ok = !l && !l2 && e1 == ENOSYS && e2 == ENOSYS;
			refused++;
		}
		px_loop_free(l);
		px_loop_free(l2);
		if (!ok) {
			env_restore();
			fail_msg("backend \"%s\" (%s in this build): px_loop_new_backend -> %s "
			         "(errno %d), POLLUX_BACKEND -> %s (errno %d)",
			         name, available(name) ? "configured" : "not configured", got1, e1,
			         got2, e2);
		}
	}
	env_restore();
	assert_int_equal(made, tu_configured_count());
	assert_int_equal(made + refused, 3);
	print_message("configured: %d backend(s), %d known name(s) give ENOSYS\n", made, refused);
}

static void test_backend_case_insensitive(void **state)
{
	(void)state;
	static const char *names[][2] = {{"EPoll", "epoll"}, {"EPOLL", "epoll"},
	                                 {"Poll", "poll"},   {"POLL", "poll"},
	                                 {"SeLeCt", "select"}, {"SELECT", "select"}};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		errno = 0;
		px_loop *l = px_loop_new_backend(names[i][0]);
		if (!available(names[i][1])) {
			assert_null(l);
			assert_int_equal(errno, ENOSYS);
			continue;
		}
		if (!l)
			fail_msg("px_loop_new_backend(\"%s\"): %s", names[i][0], strerror(errno));
		assert_string_equal(px_loop_backend(l), names[i][1]);
		px_loop_free(l);
	}
}

static void test_backend_best(void **state)
{
	(void)state;
	const char *const *b = px_backends();
	px_loop *l = px_loop_new_backend(NULL);
	assert_non_null(l);
	assert_string_equal(px_loop_backend(l), b[0]);
	px_loop_free(l);
	l = px_loop_new_backend("");
	assert_non_null(l);
	assert_string_equal(px_loop_backend(l), b[0]);
	px_loop_free(l);
	/* the best backend this build was configured with (epoll unless
	 * --disable-epoll, then poll unless --disable-poll, else select) */
	assert_string_equal(b[0], tu_configured_backends()[0]);
}

static void test_backends_list(void **state)
{
	(void)state;
	const char *const *b = px_backends();
	int n = 0;
	assert_non_null(b);
	while (n < 8 && b[n])
		n++;
	assert_true(n >= 1);
	assert_true(n <= 3); /* NULL-terminated within the 3 known names */
	assert_null(b[n]);
	for (int i = 0; i < n; i++) {
		assert_true(known_name(b[i]));
		for (int j = 0; j < i; j++) {
			assert_string_not_equal(b[i], b[j]);
			assert_true(rank(b[j]) < rank(b[i])); /* best first */
		}
		px_loop *l = px_loop_new_backend(b[i]);
		if (!l)
			fail_msg("listed backend %s: %s", b[i], strerror(errno));
		assert_string_equal(px_loop_backend(l), b[i]);
		/* a usable loop: a 0 ms timer fires */
		int fired = 0;
		assert_true(px_timer_add(l, 0, 0, tu_count_timer_cb, &fired) > 0);
		assert_int_equal(px_loop_run(l, PX_RUN_ONCE), 0);
		assert_int_equal(fired, 1);
		px_loop_free(l);
	}
	/* exactly the configured backends, in the same order */
	const char *const *want = tu_configured_backends();
	assert_int_equal(n, tu_configured_count());
	for (int i = 0; i < n; i++)
		assert_string_equal(b[i], want[i]);
	/* the same list on every call */
	assert_ptr_equal(px_backends()[0], b[0]);
}

/* px_loop_new_backend ignores POLLUX_BACKEND: every configured backend by
 * name, and NULL (best), while the environment names a bogus backend, then
 * while it names each other known backend. */
static void test_new_backend_ignores_env(void **state)
{
	(void)state;
	const char *const *want = tu_configured_backends();
	static const char *envs[] = {"bogus", "epoll", "poll", "select"};
	env_save();
	for (size_t e = 0; e < sizeof envs / sizeof envs[0]; e++) {
		setenv("POLLUX_BACKEND", envs[e], 1);
		for (int i = 0; want[i]; i++) {
			px_loop *l = px_loop_new_backend(want[i]);
			int ok = l && !strcmp(px_loop_backend(l), want[i]);
			px_loop_free(l);
			if (!ok) {
				env_restore();
				fail_msg("POLLUX_BACKEND=%s: px_loop_new_backend(\"%s\") failed or "
				         "gave another backend", envs[e], want[i]);
			}
		}
		px_loop *l2 = px_loop_new_backend(NULL);
		int ok2 = l2 && !strcmp(px_loop_backend(l2), want[0]);
		px_loop_free(l2);
		if (!ok2) {
			env_restore();
			fail_msg("POLLUX_BACKEND=%s: px_loop_new_backend(NULL) is not %s", envs[e],
			         want[0]);
		}
	}
	env_restore();
}

static void test_null_arguments(void **state)
{
	(void)state;
	px_loop_free(NULL);
	px_loop_stop(NULL);
	assert_int_equal(px_loop_now(NULL), 0);
	assert_int_equal(px_loop_run(NULL, PX_RUN_NOWAIT), -EINVAL);
	assert_int_equal(px_io_add(NULL, 0, PX_READ, tu_rec_cb, NULL), -EINVAL);
	assert_int_equal(px_io_mod(NULL, 0, PX_READ), -EINVAL);
	assert_int_equal(px_io_del(NULL, 0), -EINVAL);
	assert_int_equal(px_timer_add(NULL, 0, 0, tu_count_timer_cb, NULL), -EINVAL);
	assert_int_equal(px_timer_del(NULL, 1), -EINVAL);
}

static void test_version(void **state)
{
	(void)state;
	const char *v = px_version();
	assert_non_null(v);
	assert_true(strlen(v) > 0);
	assert_true(v[0] >= '0' && v[0] <= '9');
}

/* ---- px_loop_run argument checks and re-entrancy --------------------- */

static void test_run_bad_mode(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int fired = 0;
	assert_true(px_timer_add(loop, 0, 0, tu_count_timer_cb, &fired) > 0);
	assert_int_equal(px_loop_run(loop, 3), -EINVAL);
	assert_int_equal(px_loop_run(loop, -1), -EINVAL);
	assert_int_equal(px_loop_run(loop, 1000), -EINVAL);
	assert_int_equal(fired, 0); /* nothing ran */
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(fired, 1);
	px_loop_free(loop);
}

struct reent {
	int calls;
	int rc[3];
};

static void reent_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct reent *r = arg;
	r->calls++;
	r->rc[0] = px_loop_run(loop, PX_RUN_DEFAULT);
	r->rc[1] = px_loop_run(loop, PX_RUN_ONCE);
	r->rc[2] = px_loop_run(loop, PX_RUN_NOWAIT);
}

static void reent_io_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)fd;
	(void)revents;
	reent_timer_cb(loop, 0, arg);
}

static void test_run_reentrant_busy(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct reent rt = {0}, ri = {0};
	int sv[2];
	tu_socketpair(sv);
	assert_true(px_timer_add(loop, 0, 0, reent_timer_cb, &rt) > 0);
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, reent_io_cb, &ri), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(rt.calls, 1);
	assert_int_equal(ri.calls, 1);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(rt.rc[i], -EBUSY);
		assert_int_equal(ri.rc[i], -EBUSY);
	}
	/* the loop still works afterwards */
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(ri.calls, 2);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* A second loop may be run from a callback of the first: -EBUSY is per loop. */
static void other_loop_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	px_loop *other = arg;
	int fired = 0;
	assert_true(px_timer_add(other, 0, 0, tu_count_timer_cb, &fired) > 0);
	assert_int_equal(px_loop_run(other, PX_RUN_ONCE), 0);
	assert_int_equal(fired, 1);
}

static void test_run_other_loop_from_callback(void **state)
{
	(void)state;
	px_loop *a = tu_loop(), *b = tu_loop();
	assert_true(px_timer_add(a, 0, 0, other_loop_cb, b) > 0);
	assert_int_equal(px_loop_run(a, PX_RUN_ONCE), 0);
	px_loop_free(a);
	px_loop_free(b);
}

static void free_self_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	(*(int *)arg)++;
	px_loop_free(loop); /* documented: does nothing from a callback */
}

static void test_free_from_callback_ignored(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int n = 0, m = 0;
	assert_true(px_timer_add(loop, 0, 0, free_self_cb, &n) > 0);
	assert_true(px_timer_add(loop, 0, 0, tu_count_timer_cb, &m) > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(n, 1);
	assert_int_equal(m, 1);
	/* still usable */
	assert_true(px_timer_add(loop, 0, 0, tu_count_timer_cb, &m) > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(m, 2);
	px_loop_free(loop);
}

static void never_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)arg;
	fail_msg("timer %lld must not fire", (long long)id);
}

static void test_free_with_watchers(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int sv[2], sv2[2];
	tu_socketpair(sv);
	tu_socketpair(sv2);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_WRITE, tu_never_cb, NULL), 0);
	assert_int_equal(px_io_add(loop, sv[1], 0, tu_never_cb, NULL), 0);
	assert_int_equal(px_io_add(loop, sv2[0], PX_READ | PX_ONESHOT, tu_never_cb, NULL), 0);
	assert_true(px_timer_add(loop, 0, 0, never_timer_cb, NULL) > 0);
	assert_true(px_timer_add(loop, 10, 10, never_timer_cb, NULL) > 0);
	px_loop_free(loop); /* no callback, closes no user fd */
	for (int i = 0; i < 2; i++) {
		assert_int_not_equal(fcntl(sv[i], F_GETFD), -1);
		assert_int_not_equal(fcntl(sv2[i], F_GETFD), -1);
	}
	assert_int_equal(tu_pending(sv[0]), 1);
	/* the fds can be registered with a new loop */
	loop = tu_loop();
	struct tu_rec *r = calloc(1, sizeof *r);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, tu_rec_cb, r), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->rev[0], PX_READ);
	px_loop_free(loop);
	free(r);
	tu_close_pair(sv);
	tu_close_pair(sv2);
}

/* ---- run modes ------------------------------------------------------- */

static void test_run_default_empty(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	/* nothing registered: returns at once (the watchdog catches a hang) */
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	px_loop_free(loop);
}

static void test_run_default_until_last_timer(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int a = 0, b = 0;
	/* No stop timer here on purpose: it would keep the loop running.  The
	 * watchdog bounds the test. */
	uint64_t t0 = tu_now_ns();
	assert_true(px_timer_add(loop, 20, 0, tu_count_timer_cb, &a) > 0);
	assert_true(px_timer_add(loop, 40, 0, tu_count_timer_cb, &b) > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	assert_int_equal(a, 1);
	assert_int_equal(b, 1);
	assert_true(tu_now_ns() >= t0 + 40 * 1000000ull);
	/* a deleted timer does not keep it running */
	int64_t id = px_timer_add(loop, 10000, 0, never_timer_cb, NULL);
	assert_true(id > 0);
	assert_int_equal(px_timer_del(loop, id), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	px_loop_free(loop);
}

struct selfdel {
	int calls;
	int64_t id;
	int at;
};

static void repeat_selfdel_cb(px_loop *loop, int64_t id, void *arg)
{
	struct selfdel *s = arg;
	assert_int_equal(id, s->id);
	if (++s->calls == s->at)
		assert_int_equal(px_timer_del(loop, id), 0);
}

static void test_run_default_until_repeat_deleted(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct selfdel s = {.at = 3};
	s.id = px_timer_add(loop, 1, 5, repeat_selfdel_cb, &s);
	assert_true(s.id > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0); /* watchdog-bounded */
	assert_int_equal(s.calls, 3);
	px_loop_free(loop);
}

static void io_selfdel_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(*(int *)arg)++;
	assert_int_equal(revents, PX_WRITE);
	assert_int_equal(px_io_del(loop, fd), 0);
}

static void test_run_default_until_last_io_del(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int sv[2], n = 0;
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, io_selfdel_cb, &n), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0); /* watchdog-bounded */
	assert_int_equal(n, 1);
	px_loop_free(loop);
	tu_close_pair(sv);
}

static void test_run_default_disarmed_keeps_running(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int sv[2];
	tu_socketpair(sv);
	tu_send1(sv[1]); /* readable, but the watcher is disarmed */
	assert_int_equal(px_io_add(loop, sv[0], 0, tu_never_cb, NULL), 0);
	double t0 = tu_now_ms();
	assert_true(tu_run_for(loop, 100)); /* only the stop timer ends it */
	assert_true(tu_now_ms() - t0 >= 100);
	/* a fired oneshot keeps it running too */
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	struct tu_rec *r = calloc(1, sizeof *r);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_ONESHOT, tu_rec_cb, r), 0);
	assert_true(tu_run_for(loop, 100));
	assert_int_equal(r->n, 1);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	free(r);
	tu_close_pair(sv);
}

static void test_run_once_empty(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0); /* watchdog-bounded */
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	px_loop_free(loop);
}

static void test_run_once_waits_for_timer(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int fired = 0, later = 0;
	uint64_t t0 = tu_now_ns();
	assert_true(px_timer_add(loop, 50, 0, tu_count_timer_cb, &fired) > 0);
	assert_true(px_timer_add(loop, 5000, 0, tu_count_timer_cb, &later) > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(fired, 1);
	assert_int_equal(later, 0);
	assert_true(tu_now_ns() >= t0 + 50 * 1000000ull);
	px_loop_free(loop);
}

static void test_run_nowait_does_not_block(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int sv[2], fired = 0;
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, tu_never_cb, NULL), 0);
	assert_true(px_timer_add(loop, 10000, 0, tu_count_timer_cb, &fired) > 0);
	double t0 = tu_now_ms();
	for (int i = 0; i < 5; i++)
		assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	double dt = tu_now_ms() - t0;
	assert_int_equal(fired, 0);
	if (dt > 5000)
		fail_msg("5 x PX_RUN_NOWAIT took %.0f ms", dt);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* An idle loop (armed watcher that is never ready, a far timer) sleeps:
 * one wait until the stop timer, a few at most. */
static void test_idle_no_spin(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, tu_never_cb, NULL), 0);
	struct tu_idle c;
	tu_idle_begin(&c);
	assert_true(tu_run_for(loop, 600));
	tu_idle_end(&c);
	tu_idle_check(&c, 5, true, "idle loop");
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

static void busy_io_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	(void)fd;
	(void)revents;
	(*(long *)arg)++;
}

/* The measure of the idle checks can fail: a loop that really is busy (a
 * level-triggered watcher on an always-writable socket, whose callback does
 * nothing, is reported in every iteration) makes far more wait calls than
 * any idle window may, however loaded the machine is.  Its CPU share is
 * printed, not asserted: on a loaded machine it gets less than a core. */
static void test_idle_check_sees_spin(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int sv[2];
	long calls = 0;
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, busy_io_cb, &calls), 0);
	struct tu_idle c;
	tu_idle_begin(&c);
	assert_true(tu_run_for(loop, 300));
	tu_idle_end(&c);
	print_message("busy loop: %ld wait calls, %ld callbacks, CPU %.1f ms in %.0f ms\n",
	              c.waits, calls, c.cpu_ms, c.wall_ms);
	/* one wait per iteration, one callback per iteration */
	assert_true(c.waits >= calls);
	if (c.waits <= 4 * TU_IDLE_MAX_WAITS)
		fail_msg("a busy loop made only %ld wait calls in %.0f ms: the idle checks "
		         "could not tell it from an idle one", c.waits, c.wall_ms);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* ---- px_loop_stop ------------------------------------------------------ */

struct stopctx {
	int timer_calls;
	int io_calls;
	int stop_at;
};

static void stop_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct stopctx *s = arg;
	s->timer_calls++;
	px_loop_stop(loop);
}

static void count_io_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)fd;
	(void)revents;
	struct stopctx *s = arg;
	if (++s->io_calls == s->stop_at)
		px_loop_stop(loop);
}

/* px_loop_stop from a timer: the current iteration completes (its io
 * callbacks still run), then px_loop_run returns. */
static void test_stop_from_timer(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct stopctx s = {0};
	int sv[2];
	tu_socketpair(sv);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, count_io_cb, &s), 0);
	assert_true(px_timer_add(loop, 0, 0, stop_timer_cb, &s) > 0);
	assert_false(tu_run_for(loop, 5000));
	assert_int_equal(s.timer_calls, 1);
	assert_int_equal(s.io_calls, 1); /* level-triggered: one per iteration */
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

static void test_stop_from_io(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct stopctx s = {.stop_at = 3};
	int sv[2];
	tu_socketpair(sv);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, count_io_cb, &s), 0);
	assert_false(tu_run_for(loop, 5000));
	assert_int_equal(s.io_calls, 3);
	/* the request was cleared: the next run goes on until its stop timer */
	s.stop_at = -1;
	assert_true(tu_run_for(loop, 50));
	assert_true(s.io_calls > 3);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

static void test_stop_before_run(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct stopctx s = {.stop_at = -1};
	int sv[2];
	tu_socketpair(sv);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, count_io_cb, &s), 0);
	px_loop_stop(loop);
	assert_false(tu_run_for(loop, 5000)); /* one iteration */
	assert_int_equal(s.io_calls, 1);
	/* cleared: this run lasts until its stop timer */
	assert_true(tu_run_for(loop, 50));
	assert_true(s.io_calls > 1);
	/* a stop request before PX_RUN_NOWAIT/ONCE is cleared by that run too */
	px_loop_stop(loop);
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	int before = s.io_calls;
	assert_true(tu_run_for(loop, 50));
	assert_true(s.io_calls > before + 1);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* ---- px_loop_now ----------------------------------------------------------- */

struct nowctx {
	int n;
	uint64_t loopnow[16];
	double real[16];
};

static void now_cb(px_loop *loop, int64_t id, void *arg)
{
	struct nowctx *c = arg;
	c->loopnow[c->n] = px_loop_now(loop);
	c->real[c->n] = tu_now_ms();
	if (++c->n == 10) {
		assert_int_equal(px_timer_del(loop, id), 0);
		px_loop_stop(loop);
	}
}

static void test_loop_now(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct nowctx c = {0};
	assert_true(px_timer_add(loop, 10, 20, now_cb, &c) > 0);
	assert_false(tu_run_for(loop, 10000));
	assert_int_equal(c.n, 10);
	double lo = 1e300, hi = -1e300;
	for (int i = 0; i < c.n; i++) {
		if (i)
			assert_true(c.loopnow[i] >= c.loopnow[i - 1]);
		double off = c.real[i] - (double)c.loopnow[i];
		lo = off < lo ? off : lo;
		hi = off > hi ? off : hi;
	}
	/* the cached clock follows the monotonic clock (arbitrary epoch):
	 * the offset real - cached stays within a small window */
	double tol = tu_valgrind() ? 500 : 50;
	if (hi - lo > tol)
		fail_msg("px_loop_now drifts from CLOCK_MONOTONIC: offsets %.1f..%.1f ms", lo, hi);
	/* and it advanced by about as much as real time did */
	double dl = (double)(c.loopnow[9] - c.loopnow[0]), dr = c.real[9] - c.real[0];
	if (dl < dr - 2 - tol || dl > dr + 2 + tol)
		fail_msg("px_loop_now advanced %.0f ms while CLOCK_MONOTONIC advanced %.1f ms", dl, dr);
	/* outside a run it keeps the last iteration's value (cached) */
	uint64_t a = px_loop_now(loop);
	assert_true(a >= c.loopnow[9]);
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_true(px_loop_now(loop) >= a);
	px_loop_free(loop);
}

/* ---- resources ---------------------------------------------------------- */

static void test_no_fd_leak(void **state)
{
	(void)state;
	int before = tu_count_fds();
	for (int i = 0; i < 100; i++) {
		px_loop *loop = tu_loop();
		if (i % 10 == 0) {
			int fired = 0;
			assert_true(px_timer_add(loop, 0, 0, tu_count_timer_cb, &fired) > 0);
			assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
			assert_int_equal(fired, 1);
		}
		px_loop_free(loop);
	}
	assert_int_equal(tu_count_fds(), before);
	/* every backend by name */
	const char *const *b = tu_configured_backends();
	for (int k = 0; b[k] && k < 8; k++) {
		for (int i = 0; i < 100; i++) {
			px_loop *loop = px_loop_new_backend(b[k]);
			assert_non_null(loop);
			px_loop_free(loop);
		}
		assert_int_equal(tu_count_fds(), before);
	}
}

static void check_cloexec_new_fds(const int *before, int nb, const char *be, int *seen)
{
	int after[256];
	int na = tu_list_fds(after, 256);
	assert_true(na <= 256);
	for (int i = 0; i < na; i++) {
		int old = 0;
		for (int j = 0; j < nb; j++)
			old |= before[j] == after[i];
		if (old)
			continue;
		(*seen)++;
		int fl = fcntl(after[i], F_GETFD);
		assert_int_not_equal(fl, -1);
		if (!(fl & FD_CLOEXEC))
			fail_msg("%s loop: fd %d is not close-on-exec", be, after[i]);
	}
}

static void test_cloexec(void **state)
{
	(void)state;
	const char *const *b = tu_configured_backends();
	int before[256];
	int nb = tu_list_fds(before, 256);
	assert_true(nb <= 256);
	for (int k = 0; b[k] && k < 8; k++) {
		int seen = 0;
		px_loop *loop = px_loop_new_backend(b[k]);
		assert_non_null(loop);
		check_cloexec_new_fds(before, nb, b[k], &seen);
		/* fds created lazily by the first iteration too */
		int fired = 0;
		assert_true(px_timer_add(loop, 0, 0, tu_count_timer_cb, &fired) > 0);
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
		check_cloexec_new_fds(before, nb, b[k], &seen);
		if (!strcmp(b[k], "epoll"))
			assert_true(seen >= 1); /* the epoll fd */
		px_loop_free(loop);
		assert_int_equal(tu_count_fds(), nb);
	}
}

/* Two loops share nothing: running one does not run the other's timers or
 * watchers. */
static void test_two_loops_independent(void **state)
{
	(void)state;
	px_loop *a = tu_loop(), *b = tu_loop();
	int fa = 0, fb = 0, sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(b, sv[0], PX_WRITE, tu_never_cb, NULL), 0);
	assert_true(px_timer_add(a, 0, 0, tu_count_timer_cb, &fa) > 0);
	assert_true(px_timer_add(b, 0, 0, tu_count_timer_cb, &fb) > 0);
	assert_int_equal(px_loop_run(a, PX_RUN_ONCE), 0);
	assert_int_equal(fa, 1);
	assert_int_equal(fb, 0);
	/* the same fd may be registered in both loops */
	struct tu_rec *r = calloc(1, sizeof *r);
	assert_int_equal(px_io_add(a, sv[0], PX_WRITE, tu_rec_cb, r), 0);
	assert_int_equal(px_loop_run(a, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(px_io_del(a, sv[0]), 0);
	assert_int_equal(px_io_del(b, sv[0]), 0);
	px_loop_free(a);
	px_loop_free(b);
	free(r);
	tu_close_pair(sv);
}

/* ---- px_loop_stats ------------------------------------------------------ */

static void stats_count_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	(void)fd;
	assert_int_equal(revents, PX_READ);
	(*(int *)arg)++;
}

struct readd {
	int fd;
	int *count;
};

/* Timers run before io dispatch: deleting and re-adding fd here makes its
 * event of this iteration stale. */
static void stats_readd_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	struct readd *r = arg;
	(void)id;
	assert_int_equal(px_io_del(loop, r->fd), 0);
	assert_int_equal(px_io_add(loop, r->fd, PX_READ, stats_count_cb, r->count), 0);
}

static void check_stats_zero_from(const struct px_loop_stats *st, size_t from)
{
	const unsigned char *p = (const unsigned char *)st;
	for (size_t i = from; i < sizeof(*st); i++)
		if (p[i] != 0)
			fail_msg("byte %zu of px_loop_stats is %u", i, p[i]);
}

/* A deterministic scenario, the same counts on every backend: 3 readable
 * fds (never drained) and 2 timers due at once, over 4 NOWAIT iterations. */
static void test_stats_counts(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct px_loop_stats st;
	int sv[3][2], calls = 0, fired = 0;

	memset(&st, 0xAA, sizeof(st));
	assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
	check_stats_zero_from(&st, 0); /* a new loop counted nothing */

	for (int i = 0; i < 3; i++) {
		tu_socketpair(sv[i]);
		tu_send1(sv[i][1]);
		assert_int_equal(px_io_add(loop, sv[i][0], PX_READ, stats_count_cb, &calls), 0);
	}
	assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
	assert_int_equal(st.kernel_changes, 3);
	assert_int_equal(st.iterations, 0);

	struct readd r = { sv[1][0], &calls };
	assert_true(px_timer_add(loop, 0, 0, tu_count_timer_cb, &fired) > 0);
	assert_true(px_timer_add(loop, 0, 0, stats_readd_timer_cb, &r) > 0);
	tu_nowait(loop, 4);

	assert_int_equal(fired, 1);
	assert_int_equal(calls, 11); /* 3 x 4, less the stale one */
	assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
	assert_int_equal(st.iterations, 4);
	assert_int_equal(st.waits, 4);
	assert_int_equal(st.empty_wakeups, 0); /* timeout 0: never early */
	assert_int_equal(st.events, 12);
	assert_int_equal(st.io_callbacks, 11);
	assert_int_equal(st.timer_callbacks, 2);
	assert_int_equal(st.stale_dropped, 1);
	assert_int_equal(st.closed_fds, 0);
	assert_int_equal(st.kernel_changes, 5); /* 3 adds, a delete and an add */
	assert_int_equal(st.accepted, 0);
	assert_int_equal(st.accept_backoffs, 0);
	assert_int_equal(st.send_queued, 0);
	assert_int_equal(st.posts, 0);
	assert_int_equal(st.signals, 0);

	/* Deletions are kernel changes; nothing else moves without a run. */
	for (int i = 0; i < 3; i++)
		assert_int_equal(px_io_del(loop, sv[i][0]), 0);
	struct px_loop_stats st2;
	assert_int_equal(px_loop_stats(loop, &st2, sizeof(st2)), 0);
	assert_int_equal(st2.kernel_changes, 8);
	st2.kernel_changes = st.kernel_changes;
	assert_memory_equal(&st, &st2, sizeof(st));

	px_loop_free(loop);
	for (int i = 0; i < 3; i++)
		tu_close_pair(sv[i]);
}

/* send_queued follows the bytes px_send holds, over all fds. */
static void test_stats_send_queued(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct px_loop_stats st;
	int a[2], b[2];
	char buf[100];

	memset(buf, 'x', sizeof(buf));
	tu_socketpair(a);
	tu_socketpair(b);
	assert_int_equal(px_io_add(loop, a[0], PX_READ, tu_never_cb, NULL), 0);
	assert_int_equal(px_io_add(loop, b[0], PX_READ, tu_never_cb, NULL), 0);
	tu_fill(a[0]);
	tu_fill(b[0]);
	assert_int_equal(px_send(loop, a[0], buf, 100), 0);
	assert_int_equal(px_send(loop, a[0], buf, 30), 0);
	assert_int_equal(px_send(loop, b[0], buf, 7), 0);
	assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
	assert_int_equal(st.send_queued, 137);
	assert_int_equal(px_send_pending(loop, a[0]) + px_send_pending(loop, b[0]), 137);

	/* The peer reads everything: the queue drains. */
	for (int i = 0; i < 200 && px_send_pending(loop, a[0]) > 0; i++) {
		tu_drain(a[1]);
		tu_nowait(loop, 1);
	}
	assert_int_equal(px_send_pending(loop, a[0]), 0);
	assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
	assert_int_equal(st.send_queued, 7);

	/* A deleted watcher's queue goes with it. */
	assert_int_equal(px_io_del(loop, b[0]), 0);
	assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
	assert_int_equal(st.send_queued, 0);
	assert_int_equal(px_io_del(loop, a[0]), 0);
	px_loop_free(loop);
	tu_close_pair(a);
	tu_close_pair(b);
}

static void stats_alarm(int sig)
{
	(void)sig;
}

/* A wait that times out is not an empty wake-up; one interrupted is. */
static void test_stats_wakeups(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct px_loop_stats st;
	int fired = 0;

	assert_true(px_timer_add(loop, 20, 0, tu_count_timer_cb, &fired) > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	assert_int_equal(fired, 1);
	assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
	assert_true(st.waits >= 1);
	assert_int_equal(st.waits, st.iterations);
	assert_int_equal(st.empty_wakeups, 0);
	assert_int_equal(st.timer_callbacks, 1);
	assert_int_equal(st.events, 0);

	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = stats_alarm; /* no SA_RESTART */
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGALRM, &sa, &old), 0);
	struct itimerval it = { .it_value = { .tv_sec = 0, .tv_usec = 20000 } };
	assert_true(px_timer_add(loop, 300, 0, tu_count_timer_cb, &fired) > 0);
	assert_int_equal(setitimer(ITIMER_REAL, &it, NULL), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &off, NULL);
	assert_int_equal(sigaction(SIGALRM, &old, NULL), 0);
	assert_int_equal(fired, 2);
	struct px_loop_stats st2;
	assert_int_equal(px_loop_stats(loop, &st2, sizeof(st2)), 0);
	assert_true(st2.empty_wakeups >= 1);
	assert_true(st2.waits >= st.waits + 2);
	assert_int_equal(st2.timer_callbacks, 2);
	px_loop_free(loop);
}

/* Only the first size bytes are written; bad input is -EINVAL. */
static void test_stats_size_and_bad_input(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	tu_nowait(loop, 0);
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, tu_never_cb, NULL), 0);
	tu_nowait(loop, 3);

	struct px_loop_stats st, full;
	assert_int_equal(px_loop_stats(loop, &full, sizeof(full)), 0);
	assert_int_equal(full.iterations, 3);

	/* An older program's struct with iterations alone. */
	memset(&st, 0xAA, sizeof(st));
	assert_int_equal(px_loop_stats(loop, &st, 8), 0);
	assert_int_equal(st.iterations, 3);
	const unsigned char *p = (const unsigned char *)&st;
	for (size_t i = 8; i < sizeof(st); i++)
		assert_int_equal(p[i], 0xAA);

	/* A newer program's bigger struct: what this library lacks is 0. */
	unsigned char big[sizeof(struct px_loop_stats) + 16];
	memset(big, 0xAA, sizeof(big));
	assert_int_equal(px_loop_stats(loop, (struct px_loop_stats *)(void *)big, sizeof(big)), 0);
	assert_memory_equal(big, &full, sizeof(full));
	for (size_t i = sizeof(full); i < sizeof(big); i++)
		assert_int_equal(big[i], 0);

	memset(&st, 0xAA, sizeof(st));
	assert_int_equal(px_loop_stats(NULL, &st, sizeof(st)), -EINVAL);
	assert_int_equal(px_loop_stats(loop, NULL, sizeof(st)), -EINVAL);
	assert_int_equal(px_loop_stats(loop, &st, 0), -EINVAL);
	for (size_t i = 0; i < sizeof(st); i++)
		assert_int_equal(p[i], 0xAA);

	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}


/* Posts and the iteration they run in (the threaded tests are in
 * test_post.c).  A post made by a callback runs in the next iteration even
 * when the loop's wake-up fd is reported later in the same round, which
 * happens when a wake was already pending at the wait. */
struct post_probe {
	px_loop *loop;
	uint64_t posted_in; /* iteration counter when posted */
	uint64_t ran_in;
	int ran;
	int sv[2];
	int io_seen;
};

static uint64_t iterations(px_loop *loop)
{
	struct px_loop_stats st;
	assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
	return st.iterations;
}

static void probe_post_cb(px_loop *loop, void *arg)
{
	struct post_probe *p = arg;
	p->ran++;
	p->ran_in = iterations(loop);
}

static void probe_io_posts(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct post_probe *p = arg;
	char c;
	(void)revents;
	if (read(fd, &c, 1) == 1)
		p->io_seen++;
	p->posted_in = iterations(loop);
	assert_int_equal(px_loop_post(loop, probe_post_cb, p), 0);
	assert_int_equal(p->ran, 0); /* never inside px_loop_post */
}

static void test_post_from_callback_next_iteration(void **state)
{
	(void)state;
	for (int prewake = 0; prewake < 2; prewake++) {
		px_loop *loop = tu_loop();
		struct post_probe p = { .loop = loop };
		tu_socketpair(p.sv);
		assert_int_equal(px_io_add(loop, p.sv[0], PX_READ, probe_io_posts, &p), 0);
		tu_send1(p.sv[1]);
		/* A pending wake: the wake-up fd is ready at the same wait as
		 * the socket, in whatever order the backend reports them. */
		if (prewake)
			assert_int_equal(px_loop_wake(loop), 0);
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
		assert_int_equal(p.io_seen, 1);
		assert_int_equal(p.ran, 0);
		/* The next iteration must not sleep: the post wakes it. */
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
		assert_int_equal(p.ran, 1);
		assert_int_equal(p.ran_in, p.posted_in + 1);
		assert_int_equal(px_io_del(loop, p.sv[0]), 0);
		px_loop_free(loop);
		tu_close_pair(p.sv);
	}
}

/* A post that adds a watcher: the watcher gets the readiness of later waits
 * like any other (no stale-event mark left behind). */
struct post_adds {
	int sv[2];
	struct post_probe io;
};

static void count_io(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct post_probe *p = arg;
	char c;
	(void)loop;
	(void)revents;
	if (read(fd, &c, 1) == 1)
		p->io_seen++;
}

static void post_add_watcher(px_loop *loop, void *arg)
{
	struct post_adds *a = arg;
	assert_int_equal(px_io_add(loop, a->sv[0], PX_READ, count_io, &a->io), 0);
}

static void test_post_adds_watcher(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct post_adds a = {0};
	tu_socketpair(a.sv);
	tu_send1(a.sv[1]);
	assert_int_equal(px_loop_post(loop, post_add_watcher, &a), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(a.io.io_seen, 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(a.io.io_seen, 1);
	assert_int_equal(px_io_del(loop, a.sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(a.sv);
}

/* Posts keep PX_RUN_DEFAULT running, and nothing else does here: the run
 * returns once the posts (and the posts they make) have run. */
static void repost_cb(px_loop *loop, void *arg)
{
	int *left = arg;
	if (--*left > 0)
		assert_int_equal(px_loop_post(loop, repost_cb, left), 0);
}

static void test_posts_keep_run_default(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int left = 5;
	assert_int_equal(px_loop_post(loop, repost_cb, &left), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	assert_int_equal(left, 0);
	struct px_loop_stats st;
	assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
	assert_int_equal(st.posts, 5);
	assert_true(st.iterations >= 5);
	/* The wake-up fd is the loop's own: no event, no io callback. */
	assert_int_equal(st.events, 0);
	assert_int_equal(st.io_callbacks, 0);
	px_loop_free(loop);
}

/* Counters read inside a signal or post callback: the loop's own wake-up
 * is neither an event nor an io callback, at any point of the iteration
 * (io_callbacks once wrapped below 0 when read from a signal callback). */
struct stats_seen {
	struct px_loop_stats st;
	int n;
};

static void stats_sig_cb(px_loop *loop, int signo, void *arg)
{
	struct stats_seen *s = arg;
	(void)signo;
	assert_int_equal(px_loop_stats(loop, &s->st, sizeof(s->st)), 0);
	s->n++;
}

static void stats_post_cb(px_loop *loop, void *arg)
{
	struct stats_seen *s = arg;
	assert_int_equal(px_loop_stats(loop, &s->st, sizeof(s->st)), 0);
	s->n++;
}

static void test_stats_inside_signal_and_post(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct stats_seen sig = {0}, post = {0};
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, tu_never_cb, NULL), 0);
	assert_int_equal(px_signal_add(loop, SIGUSR2, stats_sig_cb, &sig), 0);
	assert_int_equal(raise(SIGUSR2), 0);
	for (int i = 0; i < 10 && sig.n == 0; i++)
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(sig.n, 1);
	assert_int_equal(sig.st.io_callbacks, 0);
	assert_int_equal(sig.st.events, 0);
	assert_int_equal(sig.st.signals, 1);
	assert_int_equal(px_loop_post(loop, stats_post_cb, &post), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(post.n, 1);
	assert_int_equal(post.st.io_callbacks, 0);
	assert_int_equal(post.st.events, 0);
	assert_int_equal(post.st.posts, 1);
	assert_int_equal(px_signal_del(loop, SIGUSR2), 0);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* Post nodes are recycled: the loop publishes the nodes of the posts it
 * ran, and a posting thread takes that batch into a cache of its own.  The
 * cache outlives the loop the nodes came from and serves posts to any loop
 * (ASan and valgrind would see a node freed with its loop). */
static void count_post(px_loop *loop, void *arg)
{
	(void)loop;
	(*(int *)arg)++;
}

static void test_post_nodes_outlive_their_loop(void **state)
{
	(void)state;
	int ran_a = 0, ran_b = 0;
	px_loop *a = tu_loop();
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 100; i++)
			assert_int_equal(px_loop_post(a, count_post, &ran_a), 0);
		for (int i = 0; i < 10 && ran_a < 100 * (round + 1); i++)
			assert_int_equal(px_loop_run(a, PX_RUN_NOWAIT), 0);
		assert_int_equal(ran_a, 100 * (round + 1));
	}
	/* This thread's cache now holds nodes that came from a; a goes. */
	px_loop_free(a);
	px_loop *b = tu_loop();
	for (int i = 0; i < 300; i++)
		assert_int_equal(px_loop_post(b, count_post, &ran_b), 0);
	assert_int_equal(px_loop_run(b, PX_RUN_DEFAULT), 0);
	assert_int_equal(ran_b, 300);
	px_loop_free(b);
}

static void never_timer(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	(void)arg;
	fail_msg("the guard timer fired: the wake did not end the wait");
}

/* The wake-up fd is not the user's: px_io_* on its number say so. */
static void test_wakefd_not_users(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int found = 0;
	for (int fd = 0; fd < 64; fd++) {
		if (fcntl(fd, F_GETFD) < 0)
			continue;
		int rc = px_io_del(loop, fd);
		if (rc == -ENOENT && px_io_add(loop, fd, PX_READ, tu_never_cb, NULL) == -EEXIST) {
			found++;
			assert_int_equal(px_io_mod(loop, fd, PX_WRITE), -ENOENT);
			assert_int_equal(px_io_close(loop, fd), -ENOENT);
			assert_int_equal(px_send(loop, fd, "x", 1), -ENOENT);
			assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
		} else if (rc == 0) {
			fail_msg("fd %d was registered behind the test's back", fd);
		} else {
			px_io_del(loop, fd);
		}
	}
	assert_int_equal(found, 1);
	/* And the loop still wakes. */
	assert_int_equal(px_loop_wake(loop), 0);
	int64_t guard = px_timer_add(loop, 60000, 0, never_timer, NULL);
	assert_true(guard >= 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(px_timer_del(loop, guard), 0);
	px_loop_free(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_backend_bogus_name),
		TU_TEST(test_backend_env_bogus),
		TU_TEST(test_backend_env_read_every_call),
		TU_TEST(test_backend_known_names),
		TU_TEST(test_backend_case_insensitive),
		TU_TEST(test_backend_best),
		TU_TEST(test_backends_list),
		TU_TEST(test_new_backend_ignores_env),
		TU_TEST(test_null_arguments),
		TU_TEST(test_version),
		TU_TEST(test_run_bad_mode),
		TU_TEST(test_run_reentrant_busy),
		TU_TEST(test_run_other_loop_from_callback),
		TU_TEST(test_free_from_callback_ignored),
		TU_TEST(test_free_with_watchers),
		TU_TEST(test_run_default_empty),
		TU_TEST(test_run_default_until_last_timer),
		TU_TEST(test_run_default_until_repeat_deleted),
		TU_TEST(test_run_default_until_last_io_del),
		TU_TEST(test_run_default_disarmed_keeps_running),
		TU_TEST(test_run_once_empty),
		TU_TEST(test_run_once_waits_for_timer),
		TU_TEST(test_run_nowait_does_not_block),
		TU_TEST(test_idle_no_spin),
		TU_TEST(test_idle_check_sees_spin),
		TU_TEST(test_stop_from_timer),
		TU_TEST(test_stop_from_io),
		TU_TEST(test_stop_before_run),
		TU_TEST(test_loop_now),
		TU_TEST(test_no_fd_leak),
		TU_TEST(test_cloexec),
		TU_TEST(test_two_loops_independent),
		TU_TEST(test_stats_counts),
		TU_TEST(test_stats_send_queued),
		TU_TEST(test_stats_wakeups),
		TU_TEST(test_stats_size_and_bad_input),
		TU_TEST(test_post_from_callback_next_iteration),
		TU_TEST(test_post_adds_watcher),
		TU_TEST(test_posts_keep_run_default),
		TU_TEST(test_wakefd_not_users),
		TU_TEST(test_stats_inside_signal_and_post),
		TU_TEST(test_post_nodes_outlive_their_loop),
	};
	return TU_RUN("test_loop", tests);
}
