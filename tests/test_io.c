/* I/O watchers: errors, readiness, PX_ET, PX_ONESHOT, hang-ups, stale events,
 * changes from callbacks, closed fds and many fds.  Runs on the backend named
 * by $POLLUX_BACKEND. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "portable.h" /* config.h first */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

static struct tu_rec *rec_new(void)
{
	struct tu_rec *r = calloc(1, sizeof *r);
	assert_non_null(r);
	return r;
}

/* Hang-ups are visible as PX_HUP on poll and epoll; select only reports
 * readiness. */
static unsigned hup(px_loop *loop)
{
	return tu_is(loop, "select") ? 0 : PX_HUP;
}

/* ---- errors ------------------------------------------------------------ */

static void test_io_add_errors(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, -1, PX_READ, tu_rec_cb, r), -EBADF);
	assert_int_equal(px_io_add(loop, -100, PX_READ, tu_rec_cb, r), -EBADF);
	assert_int_equal(px_io_add(loop, INT_MIN, PX_READ, tu_rec_cb, r), -EBADF);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, NULL, r), -EINVAL);
	static const unsigned bad[] = {0x40, PX_HUP, PX_ERR, PX_READ | PX_HUP, PX_WRITE | PX_ERR,
	                               0x80, 0x100, 0x80000000u, ~0u};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int rc = px_io_add(loop, sv[0], bad[i], tu_rec_cb, r);
		if (rc != -EINVAL)
			fail_msg("px_io_add events 0x%x: %d, want -EINVAL", bad[i], rc);
	}
	/* nothing was registered by the failed calls */
	assert_int_equal(px_io_del(loop, sv[0]), -ENOENT);
	assert_int_equal(px_io_mod(loop, sv[0], PX_READ), -ENOENT);

	/* double add: -EEXIST, and the first registration stays as it was */
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, tu_rec_cb, r), 0);
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, tu_never_cb, NULL), -EEXIST);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, tu_never_cb, NULL), -EEXIST);
	assert_int_equal(px_io_add(loop, sv[0], 0x40, tu_never_cb, NULL), -EINVAL);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->fd[0], sv[0]);
	assert_int_equal(r->rev[0], PX_WRITE);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	assert_int_equal(px_io_del(loop, sv[0]), -ENOENT);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

static void test_io_mod_del_errors(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_mod(loop, sv[0], PX_READ), -ENOENT);
	assert_int_equal(px_io_del(loop, sv[0]), -ENOENT);
	assert_int_equal(px_io_mod(loop, -1, PX_READ), -EBADF);
	assert_int_equal(px_io_del(loop, -1), -EBADF);
	assert_int_equal(px_io_mod(loop, INT_MIN, PX_READ), -EBADF);
	assert_int_equal(px_io_del(loop, INT_MIN), -EBADF);
	assert_int_equal(px_io_mod(loop, 0, PX_READ), -ENOENT); /* stdin, not registered */
	assert_int_equal(px_io_del(loop, 0), -ENOENT);
	/* bad bits in px_io_mod: -EINVAL, the old mask stays */
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, tu_rec_cb, r), 0);
	assert_int_equal(px_io_mod(loop, sv[0], PX_HUP), -EINVAL);
	assert_int_equal(px_io_mod(loop, sv[0], PX_WRITE | PX_ERR), -EINVAL);
	assert_int_equal(px_io_mod(loop, sv[0], 0x40), -EINVAL);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->rev[0], PX_WRITE);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	assert_int_equal(px_io_mod(loop, sv[0], PX_READ), -ENOENT);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

static void test_io_huge_fd(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	static const int huge[] = {1 << 30, INT_MAX, INT_MAX - 1, 1 << 24};
	for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
		int rc = px_io_add(loop, huge[i], PX_READ, tu_rec_cb, r);
		if (rc != -EBADF)
			fail_msg("px_io_add(%d) = %d, want -EBADF", huge[i], rc);
		rc = px_io_mod(loop, huge[i], PX_READ);
		if (rc != -ENOENT)
			fail_msg("px_io_mod(%d) = %d, want -ENOENT", huge[i], rc);
		rc = px_io_del(loop, huge[i]);
		if (rc != -ENOENT)
			fail_msg("px_io_del(%d) = %d, want -ENOENT", huge[i], rc);
	}
	/* the loop is unharmed */
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, tu_rec_cb, r), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

/* Regular files: always ready on select and poll, -EPERM on epoll. */
static void test_io_regular_file(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	char path[] = "/tmp/pollux_test_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(write(fd, "hello", 5), 5);
	int rc = px_io_add(loop, fd, PX_READ | PX_WRITE, tu_rec_cb, r);
	if (tu_is(loop, "epoll")) {
		assert_int_equal(rc, -EPERM);
		assert_int_equal(px_io_del(loop, fd), -ENOENT); /* nothing registered */
		assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
		assert_int_equal(r->n, 0);
	} else {
		assert_int_equal(rc, 0);
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
		assert_int_equal(r->n, 1);
		assert_int_equal(r->rev[0], PX_READ | PX_WRITE);
		assert_int_equal(px_io_mod(loop, fd, PX_READ), 0);
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
		assert_int_equal(r->n, 2);
		assert_int_equal(r->rev[1], PX_READ);
		assert_int_equal(px_io_del(loop, fd), 0);
	}
	close(fd);
	px_loop_free(loop);
	free(r);
}

/* An fd above FD_SETSIZE is watched and reported by every backend: select
 * sizes its sets to the highest fd, so it never returns -ERANGE (pollux.h,
 * px_io_add), except where select() cannot take larger sets
 * (--enable-select-limit): there exactly -ERANGE, and nothing registered. */
static void test_io_fd_above_setsize(void **state)
{
	(void)state;
	const int num = 1500;
	assert_true(num >= FD_SETSIZE);
	long lim = tu_raise_nofile();
	if (lim <= num) {
		printf("# skipped: RLIMIT_NOFILE hard limit %ld is too low for fd %d\n", lim, num);
		skip();
	}
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair_at(sv, num);
	assert_int_equal(sv[0], num);
	if (tu_select_limited(loop)) {
		assert_int_equal(px_io_add(loop, num, PX_READ, tu_rec_cb, r), -ERANGE);
		assert_int_equal(px_io_del(loop, num), -ENOENT);
		px_loop_free(loop);
		tu_close_pair(sv);
		free(r);
		return;
	}
	assert_int_equal(px_io_add(loop, num, PX_READ, tu_rec_cb, r), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(r->n, 0); /* not readable yet */
	tu_send1(sv[1]);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->fd[0], num);
	assert_int_equal(r->rev[0], PX_READ);
	assert_int_equal(px_io_mod(loop, num, PX_READ | PX_WRITE), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 2);
	assert_int_equal(r->rev[1], PX_READ | PX_WRITE);
	assert_int_equal(px_io_del(loop, num), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

/* ---- readiness ------------------------------------------------------------ */

static void test_io_read_ready(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, tu_rec_cb, r), 0);
	tu_nowait(loop, 3);
	assert_int_equal(r->n, 0);
	tu_send1(sv[1]);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->fd[0], sv[0]);
	assert_int_equal(r->rev[0], PX_READ);
	/* level-triggered: still readable, reported again */
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 2);
	assert_int_equal(r->rev[1], PX_READ);
	assert_int_equal(tu_drain(sv[0]), 1);
	tu_nowait(loop, 3);
	assert_int_equal(r->n, 2);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

static void test_io_write_ready(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair(sv);
	tu_send1(sv[1]); /* readable too, but only PX_WRITE is armed */
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, tu_rec_cb, r), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->rev[0], PX_WRITE);
	/* full: not writable */
	assert_true(tu_fill(sv[0]) > 0);
	tu_nowait(loop, 3);
	assert_int_equal(r->n, 1);
	/* the peer reads: writable again */
	assert_true(tu_drain(sv[1]) > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 2);
	assert_int_equal(r->rev[1], PX_WRITE);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

/* One callback per fd per iteration, with both bits. */
static void test_io_read_write_one_callback(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair(sv);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_WRITE, tu_rec_cb, r), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->rev[0], PX_READ | PX_WRITE);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

static void test_io_disarmed_then_mod(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair(sv);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(loop, sv[0], 0, tu_rec_cb, r), 0);
	tu_nowait(loop, 3);
	assert_int_equal(r->n, 0);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, tu_rec_cb, r), -EEXIST);
	assert_int_equal(px_io_mod(loop, sv[0], PX_READ), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->rev[0], PX_READ);
	/* disarm again: nothing, even though readable and writable */
	assert_int_equal(px_io_mod(loop, sv[0], 0), 0);
	tu_nowait(loop, 3);
	assert_int_equal(r->n, 1);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

static void test_io_mod_mask(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, tu_rec_cb, r), 0);
	tu_nowait(loop, 2);
	assert_int_equal(r->n, 0);
	assert_int_equal(px_io_mod(loop, sv[0], PX_WRITE), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->rev[0], PX_WRITE);
	tu_send1(sv[1]);
	assert_int_equal(px_io_mod(loop, sv[0], PX_READ), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 2);
	assert_int_equal(r->rev[1], PX_READ);
	assert_int_equal(px_io_mod(loop, sv[0], PX_READ | PX_WRITE), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 3);
	assert_int_equal(r->rev[2], PX_READ | PX_WRITE);
	/* a repeated mod with the same mask is fine */
	assert_int_equal(px_io_mod(loop, sv[0], PX_READ | PX_WRITE), 0);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

/* The callback gets the loop, fd and arg it was registered with. */
struct argcheck {
	px_loop *loop;
	int fd;
	int calls;
};

static void argcheck_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct argcheck *a = arg;
	assert_ptr_equal(loop, a->loop);
	assert_int_equal(fd, a->fd);
	assert_int_equal(revents, PX_WRITE);
	a->calls++;
}

static void test_io_callback_args(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int sv[2];
	tu_socketpair(sv);
	struct argcheck a = {loop, sv[0], 0}, b = {loop, sv[1], 0};
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, argcheck_cb, &a), 0);
	assert_int_equal(px_io_add(loop, sv[1], PX_WRITE, argcheck_cb, &b), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(a.calls, 1);
	assert_int_equal(b.calls, 1);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	assert_int_equal(px_io_del(loop, sv[1]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* ---- PX_ET ----------------------------------------------------------------- */

struct etctx {
	int calls;
	unsigned rev[64];
	size_t bytes[64];
	int peer;
	int64_t drain_timer;
	int drained;
	size_t filled;
};

static void et_read_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	struct etctx *c = arg;
	assert_true(c->calls < 64);
	c->rev[c->calls] = revents;
	c->bytes[c->calls] = tu_drain(fd); /* drain until EAGAIN */
	c->calls++;
}

static void et_writer_timer(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	struct etctx *c = arg;
	tu_send(c->peer, "0123456789", 10);
}

/* Draining until EAGAIN: exactly one callback per batch of new data. */
static void test_et_read_drain(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct etctx c = {0};
	int sv[2];
	tu_socketpair(sv);
	c.peer = sv[1];
	char buf[100] = {0};
	tu_send(sv[1], buf, sizeof buf);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_ET, et_read_cb, &c), 0);
	struct tu_idle idle;
	tu_idle_begin(&idle);
	assert_true(tu_run_for(loop, 150));
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.rev[0], PX_READ);
	assert_int_equal(c.bytes[0], 100);
	/* new data while the loop runs: one callback per batch */
	assert_true(px_timer_add(loop, 30, 0, et_writer_timer, &c) > 0);
	assert_true(px_timer_add(loop, 90, 0, et_writer_timer, &c) > 0);
	assert_true(tu_run_for(loop, 200));
	tu_idle_end(&idle);
	assert_int_equal(c.calls, 3);
	for (int i = 1; i < 3; i++) {
		assert_int_equal(c.rev[i], PX_READ);
		assert_int_equal(c.bytes[i], 10);
	}
	tu_idle_check(&idle, TU_IDLE_MAX_WAITS, true, "ET read watcher");
	/* new data written outside the loop: notified again */
	tu_send1(sv[1]);
	assert_true(tu_run_for(loop, 50));
	assert_int_equal(c.calls, 4);
	assert_int_equal(c.bytes[3], 1);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* ET and the peer's close: one notification for the end of file, no spin. */
static void test_et_read_eof(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct etctx c = {0};
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_ET, et_read_cb, &c), 0);
	close(sv[1]);
	sv[1] = -1;
	struct tu_idle idle;
	tu_idle_begin(&idle);
	assert_true(tu_run_for(loop, 500));
	tu_idle_end(&idle);
	/* select cannot see the hang-up: it reports the end of file once more
	 * before treating the read side as finished (an end of file that came
	 * after a callback's EAGAIN must not be missed). */
	if (tu_is(loop, "select"))
		assert_true(c.calls == 1 || c.calls == 2);
	else
		assert_int_equal(c.calls, 1);
	for (int i = 0; i < c.calls; i++) {
		assert_int_equal(c.rev[i], PX_READ | hup(loop));
		assert_int_equal(c.bytes[i], 0);
	}
	tu_idle_check(&idle, TU_IDLE_MAX_WAITS, true, "ET watcher at EOF");
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

static void et_rec_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	struct etctx *c = arg;
	assert_true(c->calls < 64);
	c->rev[c->calls] = revents;
	c->bytes[c->calls] = (revents & PX_READ) ? tu_drain(fd) : 0;
	c->calls++;
}

/* An ET READ|WRITE watcher on an idle, writable socketpair: exactly one
 * PX_WRITE notification, and the loop does not spin. */
static void test_et_idle_writable_no_spin(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct etctx c = {0};
	int sv[2];
	tu_socketpair(sv);
	c.peer = sv[1];
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_WRITE | PX_ET, et_rec_cb, &c), 0);
	struct tu_idle idle;
	tu_idle_begin(&idle);
	assert_true(tu_run_for(loop, 800));
	tu_idle_end(&idle);
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.rev[0], PX_WRITE);
	tu_idle_check(&idle, TU_IDLE_MAX_WAITS, true, "idle ET READ|WRITE watcher");
	/* data arrives: one more notification, with PX_READ (PX_WRITE may come
	 * along on epoll, which reports the whole ready mask on a new edge) */
	assert_true(px_timer_add(loop, 20, 0, et_writer_timer, &c) > 0);
	tu_idle_begin(&idle);
	assert_true(tu_run_for(loop, 300));
	tu_idle_end(&idle);
	assert_int_equal(c.calls, 2);
	assert_true(c.rev[1] & PX_READ);
	assert_int_equal(c.rev[1] & ~(PX_READ | PX_WRITE), 0);
	assert_int_equal(c.bytes[1], 10);
	tu_idle_check(&idle, TU_IDLE_MAX_WAITS, true, "ET READ|WRITE watcher after a read");
	/* px_io_mod to another ET mask resets the ET state (epoll: EPOLL_CTL_MOD
	 * re-checks readiness): one new WRITE notification, then quiet again */
	assert_int_equal(px_io_mod(loop, sv[0], PX_WRITE | PX_ET), 0);
	tu_idle_begin(&idle);
	assert_true(tu_run_for(loop, 300));
	tu_idle_end(&idle);
	assert_int_equal(c.calls, 3);
	assert_int_equal(c.rev[2], PX_WRITE);
	tu_idle_check(&idle, TU_IDLE_MAX_WAITS, true, "ET WRITE watcher after px_io_mod");
	/* the same mask again is a no-op on every backend (no system call on
	 * epoll, no reset of the emulation on select and poll): nothing new */
	assert_int_equal(px_io_mod(loop, sv[0], PX_WRITE | PX_ET), 0);
	assert_true(tu_run_for(loop, 100));
	assert_int_equal(c.calls, 3);
	assert_int_equal(c.rev[c.calls - 1], PX_WRITE);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

static void et_drain_peer_timer(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	struct etctx *c = arg;
	c->drained += (int)(tu_drain(c->peer) > 0);
}

static void et_write_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct etctx *c = arg;
	assert_true(c->calls < 64);
	c->rev[c->calls] = revents;
	if (c->calls == 0) {
		/* write until EAGAIN, then let the peer read a bit later */
		c->filled = tu_fill(fd);
		c->bytes[0] = c->filled;
		assert_true(px_timer_add(loop, 50, 0, et_drain_peer_timer, c) > 0);
	}
	c->calls++;
}

/* ET write: fill until EAGAIN in the callback; the peer reads from a timer;
 * a new PX_WRITE notification arrives; then the idle watcher stays quiet. */
static void test_et_write_refill(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct etctx c = {0};
	int sv[2];
	tu_socketpair(sv);
	c.peer = sv[1];
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE | PX_ET, et_write_cb, &c), 0);
	struct tu_idle idle;
	tu_idle_begin(&idle);
	assert_true(tu_run_for(loop, 500));
	tu_idle_end(&idle);
	assert_true(c.filled > 0);
	assert_int_equal(c.drained, 1);
	assert_int_equal(c.calls, 2);
	assert_int_equal(c.rev[0], PX_WRITE);
	assert_int_equal(c.rev[1], PX_WRITE);
	tu_idle_check(&idle, TU_IDLE_MAX_WAITS, true, "ET write watcher");
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* ---- PX_ONESHOT ------------------------------------------------------------ */

static void test_oneshot(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair(sv);
	tu_send1(sv[1]); /* stays readable: never drained */
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_ONESHOT, tu_rec_cb, r), 0);
	assert_true(tu_run_for(loop, 100));
	assert_int_equal(r->n, 1);
	assert_int_equal(r->rev[0], PX_READ);
	/* still registered, disarmed */
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, tu_rec_cb, r), -EEXIST);
	assert_true(tu_run_for(loop, 50));
	assert_int_equal(r->n, 1);
	/* re-armed by px_io_mod */
	assert_int_equal(px_io_mod(loop, sv[0], PX_READ | PX_ONESHOT), 0);
	assert_true(tu_run_for(loop, 100));
	assert_int_equal(r->n, 2);
	assert_int_equal(r->rev[1], PX_READ);
	/* READ|WRITE oneshot: one callback with both */
	assert_int_equal(px_io_mod(loop, sv[0], PX_READ | PX_WRITE | PX_ONESHOT), 0);
	assert_true(tu_run_for(loop, 100));
	assert_int_equal(r->n, 3);
	assert_int_equal(r->rev[2], PX_READ | PX_WRITE);
	/* ET|ONESHOT */
	assert_int_equal(px_io_mod(loop, sv[0], PX_WRITE | PX_ET | PX_ONESHOT), 0);
	assert_true(tu_run_for(loop, 100));
	assert_int_equal(r->n, 4);
	assert_int_equal(r->rev[3], PX_WRITE);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	assert_int_equal(px_io_del(loop, sv[0]), -ENOENT);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

/* A fired ONESHOT gets no callback, even for a hang-up or a closed fd. */
static void test_oneshot_no_cb_after_fire(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2], sv2[2];
	tu_socketpair(sv);
	tu_socketpair(sv2);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_ONESHOT, tu_rec_cb, r), 0);
	assert_int_equal(px_io_add(loop, sv2[0], PX_WRITE | PX_ONESHOT, tu_rec_cb, r), 0);
	assert_true(tu_run_for(loop, 100));
	assert_int_equal(r->n, 2);
	/* hang-up on a fired oneshot */
	close(sv[1]);
	sv[1] = -1;
	/* the fd of a fired oneshot closed without px_io_del */
	close(sv2[0]);
	assert_true(tu_run_for(loop, 200));
	assert_int_equal(r->n, 2);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	assert_int_equal(px_io_del(loop, sv2[0]), 0);
	sv2[0] = -1;
	px_loop_free(loop);
	tu_close_pair(sv);
	tu_close_pair(sv2);
	free(r);
}

/* ---- hang-up and error ------------------------------------------------- */

struct hupctx {
	int calls;
	unsigned rev;
	ssize_t rc;
	int err;
};

static void hup_read_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct hupctx *h = arg;
	char b[16];
	h->calls++;
	h->rev = revents;
	errno = 0;
	h->rc = recv(fd, b, sizeof b, 0);
	h->err = errno;
	assert_int_equal(px_io_del(loop, fd), 0);
}

static void test_hup_read_close(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct hupctx h = {0};
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, hup_read_cb, &h), 0);
	tu_nowait(loop, 2);
	assert_int_equal(h.calls, 0);
	close(sv[1]);
	sv[1] = -1;
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(h.calls, 1);
	assert_int_equal(h.rev, PX_READ | hup(loop));
	assert_int_equal(h.rc, 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* The peer's shutdown(SHUT_WR): PX_READ, and PX_HUP (RDHUP) on poll/epoll
 * where the system has POLLRDHUP. */
static void test_hup_read_shutdown(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct hupctx h = {0};
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, hup_read_cb, &h), 0);
	assert_int_equal(shutdown(sv[1], SHUT_WR), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(h.calls, 1);
	assert_int_equal(h.rev, PX_READ | (tu_sees_rdhup(loop) ? PX_HUP : 0u));
	assert_int_equal(h.rc, 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

static void hup_write_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct hupctx *h = arg;
	h->calls++;
	h->rev = revents;
	errno = 0;
	h->rc = tp_send(fd, "x", 1, 0);
	h->err = errno;
	px_loop_stop(loop);
}

/* A WRITE-only watcher after the peer closes: PX_WRITE (+HUP where the
 * backend can see it), and send() fails with EPIPE. */
static void test_hup_write_only(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct hupctx h = {0};
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, hup_write_cb, &h), 0);
	assert_false(tu_run_for(loop, 5000));
	assert_int_equal(h.calls, 1);
	assert_int_equal(h.rev, PX_WRITE);
	assert_int_equal(h.rc, 1);
	tu_drain(sv[1]);
	close(sv[1]);
	sv[1] = -1;
	assert_false(tu_run_for(loop, 5000));
	assert_int_equal(h.calls, 2);
	assert_int_equal(h.rev, PX_WRITE | hup(loop));
	assert_int_equal(h.rc, -1);
	assert_int_equal(h.err, EPIPE);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* The same with a full socket: not writable until the peer goes away; it
 * must wake up then. */
static void test_hup_write_only_full(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct hupctx h = {0};
	int sv[2];
	tu_socketpair(sv);
	assert_true(tu_fill(sv[0]) > 0);
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE, hup_write_cb, &h), 0);
	tu_nowait(loop, 3);
	assert_int_equal(h.calls, 0);
	close(sv[1]); /* with unread data: the kernel may also flag an error */
	sv[1] = -1;
	assert_false(tu_run_for(loop, 5000));
	assert_int_equal(h.calls, 1);
	assert_true(h.rev & PX_WRITE);
	assert_int_equal(h.rev & ~(PX_WRITE | PX_HUP | PX_ERR), 0);
	if (!tu_is(loop, "select"))
		assert_true(h.rev & (PX_HUP | PX_ERR));
	else
		assert_int_equal(h.rev, PX_WRITE);
	assert_int_equal(h.rc, -1);
	if (h.err != EPIPE && h.err != ECONNRESET)
		fail_msg("send after peer close: %s", strerror(h.err));
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* ---- stale events ------------------------------------------------------ */

enum { ACT_DEL, ACT_DEL_CLOSE_REUSE, ACT_MOD_WRITE, ACT_DEL_READD_SELF };

struct stale {
	px_loop *loop;
	int act;
	int a, b;   /* watched fds */
	int first;  /* fd of the first callback, -1 before */
	int other;  /* the one the first callback acted on */
	int newpeer; /* ACT_DEL_CLOSE_REUSE: peer of the new socket at `other` */
	int oldpeer_other;
	struct tu_rec rec;
};

static void stale_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct stale *s = arg;
	tu_rec_add(&s->rec, fd, revents);
	if (revents & PX_READ)
		tu_drain(fd);
	if (s->first != -1)
		return;
	s->first = fd;
	s->other = fd == s->a ? s->b : s->a;
	switch (s->act) {
	case ACT_DEL:
		assert_int_equal(px_io_del(loop, s->other), 0);
		break;
	case ACT_DEL_CLOSE_REUSE: {
		int sv[2];
		assert_int_equal(px_io_del(loop, s->other), 0);
		close(s->other);
		tu_socketpair_at(sv, s->other); /* a new socket, same number */
		assert_int_equal(sv[0], s->other);
		s->newpeer = sv[1];
		assert_int_equal(px_io_add(loop, s->other, PX_READ, stale_cb, s), 0);
		break;
	}
	case ACT_MOD_WRITE:
		assert_int_equal(px_io_mod(loop, s->other, PX_WRITE), 0);
		break;
	}
}

static void stale_setup(struct stale *s, int act, int p1[2], int p2[2], unsigned events)
{
	memset(s, 0, sizeof *s);
	s->loop = tu_loop();
	s->act = act;
	s->first = -1;
	s->newpeer = -1;
	tu_socketpair(p1);
	tu_socketpair(p2);
	s->a = p1[0];
	s->b = p2[0];
	tu_send1(p1[1]);
	tu_send1(p2[1]);
	assert_int_equal(px_io_add(s->loop, s->a, events, stale_cb, s), 0);
	assert_int_equal(px_io_add(s->loop, s->b, events, stale_cb, s), 0);
}

/* Both ready in one iteration; the first callback deletes the second. */
static void test_stale_del_other(void **state)
{
	(void)state;
	struct stale *s = malloc(sizeof *s);
	int p1[2], p2[2];
	stale_setup(s, ACT_DEL, p1, p2, PX_READ);
	assert_int_equal(px_loop_run(s->loop, PX_RUN_ONCE), 0);
	assert_int_equal(s->rec.n, 1);
	assert_int_equal(s->rec.fd[0], s->first);
	assert_int_equal(s->rec.rev[0], PX_READ);
	assert_int_equal(px_io_del(s->loop, s->other), -ENOENT);
	tu_nowait(s->loop, 3);
	assert_int_equal(s->rec.n, 1);
	assert_int_equal(px_io_del(s->loop, s->first), 0);
	px_loop_free(s->loop);
	tu_close_pair(p1);
	tu_close_pair(p2);
	free(s);
}

/* The first callback deletes and closes the second, opens a new socket at the
 * same number and registers it: no stale callback for it. */
static void test_stale_del_close_reuse(void **state)
{
	(void)state;
	struct stale *s = malloc(sizeof *s);
	int p1[2], p2[2];
	stale_setup(s, ACT_DEL_CLOSE_REUSE, p1, p2, PX_READ);
	s->rec.iter = 1;
	assert_int_equal(px_loop_run(s->loop, PX_RUN_ONCE), 0);
	assert_int_equal(s->rec.n, 1);
	assert_int_equal(s->rec.fd[0], s->first);
	assert_true(s->newpeer >= 0);
	/* the new socket is not readable: nothing in later iterations either */
	for (s->rec.iter = 2; s->rec.iter < 5; s->rec.iter++)
		assert_int_equal(px_loop_run(s->loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(s->rec.n, 1);
	/* once it really is readable, it is reported */
	tu_send1(s->newpeer);
	assert_int_equal(px_loop_run(s->loop, PX_RUN_ONCE), 0);
	assert_int_equal(s->rec.n, 2);
	assert_int_equal(s->rec.fd[1], s->other);
	assert_int_equal(s->rec.rev[1], PX_READ);
	assert_int_equal(px_io_del(s->loop, s->a), 0);
	assert_int_equal(px_io_del(s->loop, s->b), 0);
	px_loop_free(s->loop);
	tu_close_pair(p1); /* p1[0] / p2[0]: whichever was replaced is the new socket */
	tu_close_pair(p2);
	close(s->newpeer);
	free(s);
}

/* The same, but the new socket is ready at once: not in the iteration that
 * re-registered it (its results are stale), only in a later one. */
static void stale_reuse_ready_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct stale *s = arg;
	stale_cb(loop, fd, revents, arg);
	if (s->newpeer >= 0 && s->rec.n == 1)
		tu_send1(s->newpeer);
}

static void test_stale_reuse_ready(void **state)
{
	(void)state;
	struct stale *s = malloc(sizeof *s);
	int p1[2], p2[2];
	memset(s, 0, sizeof *s);
	s->loop = tu_loop();
	s->act = ACT_DEL_CLOSE_REUSE;
	s->first = -1;
	s->newpeer = -1;
	tu_socketpair(p1);
	tu_socketpair(p2);
	s->a = p1[0];
	s->b = p2[0];
	tu_send1(p1[1]);
	tu_send1(p2[1]);
	assert_int_equal(px_io_add(s->loop, s->a, PX_READ, stale_reuse_ready_cb, s), 0);
	assert_int_equal(px_io_add(s->loop, s->b, PX_READ, stale_reuse_ready_cb, s), 0);
	s->rec.iter = 1;
	assert_int_equal(px_loop_run(s->loop, PX_RUN_ONCE), 0);
	assert_int_equal(s->rec.n, 1);
	s->rec.iter = 2;
	assert_int_equal(px_loop_run(s->loop, PX_RUN_ONCE), 0);
	assert_int_equal(s->rec.n, 2);
	assert_int_equal(s->rec.fd[1], s->other);
	assert_int_equal(s->rec.rev[1], PX_READ);
	assert_int_equal(s->rec.at[1], 2);
	assert_int_equal(px_io_del(s->loop, s->a), 0);
	assert_int_equal(px_io_del(s->loop, s->b), 0);
	px_loop_free(s->loop);
	tu_close_pair(p1);
	tu_close_pair(p2);
	close(s->newpeer);
	free(s);
}

/* The first callback changes the second's mask from READ to WRITE while the
 * second is only readable: no callback with PX_READ. */
static void test_stale_mod_read_to_write(void **state)
{
	(void)state;
	struct stale *s = malloc(sizeof *s);
	int p1[2], p2[2];
	memset(s, 0, sizeof *s);
	s->loop = tu_loop();
	s->act = ACT_MOD_WRITE;
	s->first = -1;
	tu_socketpair(p1);
	tu_socketpair(p2);
	s->a = p1[0];
	s->b = p2[0];
	/* only readable: full send buffers */
	assert_true(tu_fill(s->a) > 0);
	assert_true(tu_fill(s->b) > 0);
	tu_send1(p1[1]);
	tu_send1(p2[1]);
	assert_int_equal(px_io_add(s->loop, s->a, PX_READ, stale_cb, s), 0);
	assert_int_equal(px_io_add(s->loop, s->b, PX_READ, stale_cb, s), 0);
	assert_int_equal(px_loop_run(s->loop, PX_RUN_ONCE), 0);
	tu_nowait(s->loop, 3);
	assert_int_equal(s->rec.n, 1);
	assert_int_equal(s->rec.fd[0], s->first);
	assert_int_equal(s->rec.rev[0], PX_READ);
	assert_int_equal(px_io_del(s->loop, s->a), 0);
	assert_int_equal(px_io_del(s->loop, s->b), 0);
	px_loop_free(s->loop);
	tu_close_pair(p1);
	tu_close_pair(p2);
	free(s);
}

/* READ|WRITE -> WRITE on a second fd that is readable and writable: it may
 * get PX_WRITE in that iteration, never PX_READ. */
static void test_stale_mod_rw_to_write(void **state)
{
	(void)state;
	struct stale *s = malloc(sizeof *s);
	int p1[2], p2[2];
	stale_setup(s, ACT_MOD_WRITE, p1, p2, PX_READ | PX_WRITE);
	assert_int_equal(px_loop_run(s->loop, PX_RUN_ONCE), 0);
	assert_true(s->rec.n >= 1 && s->rec.n <= 2);
	assert_int_equal(s->rec.fd[0], s->first);
	assert_int_equal(s->rec.rev[0], PX_READ | PX_WRITE);
	if (s->rec.n == 2) {
		assert_int_equal(s->rec.fd[1], s->other);
		assert_int_equal(s->rec.rev[1], PX_WRITE);
	}
	tu_send1(s->other == s->a ? p1[1] : p2[1]); /* readable again */
	assert_int_equal(px_loop_run(s->loop, PX_RUN_ONCE), 0);
	for (int i = 0; i < s->rec.n; i++)
		if (s->rec.fd[i] == s->other)
			assert_int_equal(s->rec.rev[i], PX_WRITE);
	assert_int_equal(px_io_del(s->loop, s->a), 0);
	assert_int_equal(px_io_del(s->loop, s->b), 0);
	px_loop_free(s->loop);
	tu_close_pair(p1);
	tu_close_pair(p2);
	free(s);
}

/* A callback deletes its own watcher and re-adds it (another callback). */
struct readd {
	struct tu_rec rec1, rec2;
};

static void readd2_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	struct readd *d = arg;
	tu_rec_add(&d->rec2, fd, revents);
}

static void readd1_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct readd *d = arg;
	tu_rec_add(&d->rec1, fd, revents);
	assert_int_equal(px_io_del(loop, fd), 0);
	assert_int_equal(px_io_del(loop, fd), -ENOENT);
	assert_int_equal(px_io_add(loop, fd, PX_READ, readd2_cb, d), 0);
	assert_int_equal(px_io_add(loop, fd, PX_READ, readd2_cb, d), -EEXIST);
}

static void test_self_del_readd(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct readd *d = calloc(1, sizeof *d);
	int sv[2];
	tu_socketpair(sv);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_WRITE, readd1_cb, d), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(d->rec1.n, 1);
	assert_int_equal(d->rec1.rev[0], PX_READ | PX_WRITE);
	assert_int_equal(d->rec2.n, 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(d->rec1.n, 1);
	assert_int_equal(d->rec2.n, 1);
	assert_int_equal(d->rec2.rev[0], PX_READ);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(d);
}

/* ---- changing watchers and timers from callbacks ---------------------- */

struct chg {
	px_loop *loop;
	int fd_a, fd_b;
	int calls_a;
	struct tu_rec rec; /* for b */
	int64_t tid;
	int tfired;
	int tnever;
	int del_rc;
};

static void add_other_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct chg *c = arg;
	assert_int_equal(revents, PX_WRITE);
	c->calls_a++;
	assert_int_equal(px_io_add(loop, c->fd_b, PX_READ, tu_rec_cb, &c->rec), 0);
	assert_int_equal(px_io_del(loop, fd), 0);
}

/* A watcher added from a callback gets events from a later iteration. */
static void test_cb_adds_watcher(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct chg *c = calloc(1, sizeof *c);
	int p1[2], p2[2];
	tu_socketpair(p1);
	tu_socketpair(p2);
	c->fd_a = p1[0];
	c->fd_b = p2[0];
	tu_send1(p2[1]);
	assert_int_equal(px_io_add(loop, c->fd_a, PX_WRITE, add_other_cb, c), 0);
	c->rec.iter = 1;
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(c->calls_a, 1);
	assert_int_equal(c->rec.n, 0);
	c->rec.iter = 2;
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(c->calls_a, 1);
	assert_int_equal(c->rec.n, 1);
	assert_int_equal(c->rec.fd[0], c->fd_b);
	assert_int_equal(c->rec.rev[0], PX_READ);
	assert_int_equal(px_io_del(loop, c->fd_b), 0);
	assert_int_equal(px_io_del(loop, c->fd_a), -ENOENT);
	px_loop_free(loop);
	tu_close_pair(p1);
	tu_close_pair(p2);
	free(c);
}

static void mod_self_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct tu_rec *r = arg;
	tu_rec_add(r, fd, revents);
	switch (r->n) {
	case 1: assert_int_equal(px_io_mod(loop, fd, PX_READ), 0); break;
	case 2: assert_int_equal(px_io_mod(loop, fd, PX_WRITE), 0); break;
	case 3: assert_int_equal(px_io_mod(loop, fd, 0), 0); break;
	}
}

static void test_cb_mods_own_mask(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair(sv);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_WRITE, mod_self_cb, r), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	tu_nowait(loop, 3);
	assert_int_equal(r->n, 3);
	assert_int_equal(r->rev[0], PX_READ | PX_WRITE);
	assert_int_equal(r->rev[1], PX_READ);
	assert_int_equal(r->rev[2], PX_WRITE);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

static void del_self_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(*(int *)arg)++;
	assert_int_equal(revents, PX_READ | PX_WRITE);
	assert_int_equal(px_io_del(loop, fd), 0);
}

static void test_cb_dels_own(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int sv[2], n = 0;
	tu_socketpair(sv);
	tu_send1(sv[1]);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_WRITE, del_self_cb, &n), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	tu_nowait(loop, 3);
	assert_int_equal(n, 1);
	assert_int_equal(px_io_del(loop, sv[0]), -ENOENT);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* Many watchers delete each other: whichever runs first deletes all the
 * others, which then get no callback. */
struct massdel {
	int fds[16];
	int n;
	int calls;
};

static void massdel_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)revents;
	struct massdel *m = arg;
	m->calls++;
	for (int i = 0; i < m->n; i++)
		if (m->fds[i] != fd)
			assert_int_equal(px_io_del(loop, m->fds[i]), 0);
	assert_int_equal(px_io_del(loop, fd), 0);
}

static void test_cb_dels_others(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct massdel m = {.n = 16};
	int pairs[16][2];
	for (int i = 0; i < 16; i++) {
		tu_socketpair(pairs[i]);
		m.fds[i] = pairs[i][0];
		assert_int_equal(px_io_add(loop, m.fds[i], PX_WRITE, massdel_cb, &m), 0);
	}
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(m.calls, 1);
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	assert_int_equal(m.calls, 1);
	px_loop_free(loop);
	for (int i = 0; i < 16; i++)
		tu_close_pair(pairs[i]);
}

static void never_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	(*(int *)arg)++;
}

static void io_timer_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)fd;
	(void)revents;
	struct chg *c = arg;
	c->calls_a++;
	assert_true(px_timer_add(loop, 0, 0, tu_count_timer_cb, &c->tfired) > 0);
	c->del_rc = px_timer_del(loop, c->tid);
}

/* An io callback adds a timer (fires in the next iteration) and deletes a
 * pending one (never fires). */
static void test_io_cb_adds_dels_timers(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct chg *c = calloc(1, sizeof *c);
	int sv[2];
	tu_socketpair(sv);
	c->tid = px_timer_add(loop, 30, 0, never_timer_cb, &c->tnever);
	assert_true(c->tid > 0);
	assert_int_equal(px_io_add(loop, sv[0], PX_WRITE | PX_ONESHOT, io_timer_cb, c), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(c->calls_a, 1);
	assert_int_equal(c->del_rc, 0);
	assert_int_equal(c->tfired, 0); /* not in the iteration that added it */
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(c->tfired, 1);
	assert_true(tu_run_for(loop, 100));
	assert_int_equal(c->tnever, 0);
	assert_int_equal(px_timer_del(loop, c->tid), -ENOENT);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(c);
}

static void timer_adds_io_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct chg *c = arg;
	c->tfired++;
	assert_int_equal(px_io_add(loop, c->fd_b, PX_READ, tu_rec_cb, &c->rec), 0);
}

static void test_timer_cb_adds_io(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct chg *c = calloc(1, sizeof *c);
	int sv[2];
	tu_socketpair(sv);
	c->fd_b = sv[0];
	tu_send1(sv[1]);
	assert_true(px_timer_add(loop, 0, 0, timer_adds_io_cb, c) > 0);
	c->rec.iter = 1;
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(c->tfired, 1);
	assert_int_equal(c->rec.n, 0);
	c->rec.iter = 2;
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(c->rec.n, 1);
	assert_int_equal(c->rec.rev[0], PX_READ);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
	free(c);
}

static void timer_dels_io_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct chg *c = arg;
	c->tfired++;
	assert_int_equal(px_io_del(loop, c->fd_a), 0);
	assert_int_equal(px_io_mod(loop, c->fd_b, PX_WRITE), 0);
}

/* A timer deletes a watcher that is ready in the same iteration (no
 * callback) and changes another's mask from READ|WRITE to WRITE (no
 * PX_READ). */
static void test_timer_cb_dels_mods_ready_io(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct chg *c = calloc(1, sizeof *c);
	int p1[2], p2[2];
	tu_socketpair(p1);
	tu_socketpair(p2);
	c->fd_a = p1[0];
	c->fd_b = p2[0];
	tu_send1(p1[1]);
	tu_send1(p2[1]);
	assert_int_equal(px_io_add(loop, c->fd_a, PX_READ | PX_WRITE, tu_never_cb, NULL), 0);
	assert_int_equal(px_io_add(loop, c->fd_b, PX_READ | PX_WRITE, tu_rec_cb, &c->rec), 0);
	assert_true(px_timer_add(loop, 0, 0, timer_dels_io_cb, c) > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(c->tfired, 1);
	assert_true(c->rec.n <= 1);
	if (c->rec.n == 1)
		assert_int_equal(c->rec.rev[0], PX_WRITE);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(c->rec.rev[c->rec.n - 1], PX_WRITE);
	assert_int_equal(px_io_del(loop, c->fd_b), 0);
	px_loop_free(loop);
	tu_close_pair(p1);
	tu_close_pair(p2);
	free(c);
}

/* ---- fds closed while registered -------------------------------------- */

static void closed_fd_case(unsigned events)
{
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], events, tu_rec_cb, r), 0);
	close(sv[0]); /* without px_io_del; nothing may reuse the number now */
	struct tu_idle idle;
	tu_idle_begin(&idle);
	assert_true(tu_run_for(loop, 600));
	tu_idle_end(&idle);
	if (tu_is(loop, "epoll")) {
		assert_int_equal(r->n, 0);
	} else {
		if (r->n != 1)
			fail_msg("closed fd (events 0x%x): %d callbacks, want 1", events, r->n);
		assert_int_equal(r->fd[0], sv[0]);
		assert_int_equal(r->rev[0], PX_ERR | (events & (PX_READ | PX_WRITE)));
	}
	tu_idle_check(&idle, TU_IDLE_MAX_WAITS, true, "closed registered fd");
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	assert_int_equal(px_io_del(loop, sv[0]), -ENOENT);
	sv[0] = -1;
	px_loop_free(loop);
	tu_close_pair(sv);
	free(r);
}

static void test_closed_fd_read(void **state)
{
	(void)state;
	closed_fd_case(PX_READ);
}

static void test_closed_fd_rw(void **state)
{
	(void)state;
	closed_fd_case(PX_READ | PX_WRITE);
}

static void test_closed_fd_write_et(void **state)
{
	(void)state;
	closed_fd_case(PX_WRITE | PX_ET);
}

/* Disarmed and closed: no callback at all. */
static void test_closed_fd_disarmed(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], 0, tu_never_cb, NULL), 0);
	close(sv[0]);
	assert_true(tu_run_for(loop, 200));
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	sv[0] = -1;
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* px_io_del right after close: 0 on every backend. */
static void test_closed_fd_del(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int sv[2];
	tu_socketpair(sv);
	assert_int_equal(px_io_add(loop, sv[0], PX_READ | PX_WRITE, tu_never_cb, NULL), 0);
	assert_int_equal(px_io_add(loop, sv[1], PX_READ, tu_never_cb, NULL), 0);
	close(sv[0]);
	assert_int_equal(px_io_del(loop, sv[0]), 0);
	assert_int_equal(px_io_del(loop, sv[0]), -ENOENT);
	sv[0] = -1;
	/* the peer sees the hang-up; nothing else is reported */
	assert_int_equal(px_io_del(loop, sv[1]), 0);
	px_loop_free(loop);
	tu_close_pair(sv);
}

/* A number closed while registered and then reused: -EEXIST until
 * px_io_del; then the new socket can be registered and works. */
static void test_closed_fd_number_reused(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = rec_new();
	int sv[2], nv[2];
	tu_socketpair(sv);
	int num = sv[0];
	assert_int_equal(px_io_add(loop, num, PX_READ, tu_never_cb, NULL), 0);
	close(num);
	tu_socketpair_at(nv, num);
	assert_int_equal(nv[0], num);
	assert_int_equal(px_io_add(loop, num, PX_READ, tu_rec_cb, r), -EEXIST);
	assert_int_equal(px_io_del(loop, num), 0);
	assert_int_equal(px_io_add(loop, num, PX_READ, tu_rec_cb, r), 0);
	tu_nowait(loop, 2);
	assert_int_equal(r->n, 0);
	tu_send1(nv[1]);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->fd[0], num);
	assert_int_equal(r->rev[0], PX_READ);
	assert_int_equal(px_io_del(loop, num), 0);
	px_loop_free(loop);
	close(sv[1]);
	tu_close_pair(nv);
	free(r);
}

/* ---- many fds ----------------------------------------------------------- */

#define NPAIRS 2500

struct many {
	int *hits; /* by fd */
	int maxfd;
	int calls;
	int bad;
};

static void many_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	struct many *m = arg;
	m->calls++;
	if (fd < 0 || fd > m->maxfd || revents != PX_READ) {
		m->bad++;
		return;
	}
	m->hits[fd]++;
	char b[4];
	if (recv(fd, b, sizeof b, 0) != 1)
		m->bad++;
}

static void test_many_fds(void **state)
{
	(void)state;
	long lim = tu_raise_nofile();

	if (lim < 2 * NPAIRS + 64) {
		printf("# skipped: RLIMIT_NOFILE %ld is too low for %d fds\n", lim, 2 * NPAIRS);
		skip();
	}
	px_loop *loop = tu_loop();
	if (tu_select_limited(loop)) {
		px_loop_free(loop);
		printf("# n/a: this build's select refuses fds >= FD_SETSIZE (test_io_fd_above_setsize)\n");
		skip();
	}
	int (*pairs)[2] = calloc(NPAIRS, sizeof *pairs);
	assert_non_null(pairs);
	struct many m = {0};
	int expected = 0;
	for (int i = 0; i < NPAIRS; i++) {
		tu_socketpair(pairs[i]);
		for (int k = 0; k < 2; k++)
			if (pairs[i][k] > m.maxfd)
				m.maxfd = pairs[i][k];
	}
	/* the set spans FD_SETSIZE: select must grow its sets past it */
	assert_true(m.maxfd >= FD_SETSIZE);
	m.hits = calloc((size_t)m.maxfd + 1, sizeof *m.hits);
	assert_non_null(m.hits);
	/* every fd is watched, on every backend: no -ERANGE (pollux.h) */
	for (int i = 0; i < NPAIRS; i++)
		for (int k = 0; k < 2; k++)
			assert_int_equal(px_io_add(loop, pairs[i][k], PX_READ, many_cb, &m), 0);
	/* write 1 byte on every 10th pair: its other end becomes readable, and
	 * some of those ends are above FD_SETSIZE */
	int above = 0;
	for (int i = 0; i < NPAIRS; i += 10) {
		tu_send1(pairs[i][1]);
		expected++;
		above += pairs[i][0] >= FD_SETSIZE;
	}
	assert_true(above > 0);
	/* a repeating timer bounds each PX_RUN_ONCE */
	int ticks = 0;
	int64_t tick = px_timer_add(loop, 20, 20, tu_count_timer_cb, &ticks);
	assert_true(tick > 0);
	for (int it = 0; it < 500 && m.calls < expected; it++)
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	tu_nowait(loop, 3);
	assert_int_equal(m.bad, 0);
	assert_int_equal(m.calls, expected);
	for (int i = 0; i < NPAIRS; i++) {
		int want0 = i % 10 == 0;
		if (m.hits[pairs[i][0]] != want0 || m.hits[pairs[i][1]] != 0)
			fail_msg("pair %d (fds %d/%d): %d/%d callbacks, want %d/0", i, pairs[i][0],
			         pairs[i][1], m.hits[pairs[i][0]], m.hits[pairs[i][1]], want0);
	}
	assert_int_equal(px_timer_del(loop, tick), 0);
	for (int i = 0; i < NPAIRS; i++) {
		for (int k = 0; k < 2; k++)
			assert_int_equal(px_io_del(loop, pairs[i][k]), 0);
		tu_close_pair(pairs[i]);
	}
	px_loop_free(loop);
	free(m.hits);
	free(pairs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_io_add_errors),
		TU_TEST(test_io_mod_del_errors),
		TU_TEST(test_io_huge_fd),
		TU_TEST(test_io_regular_file),
		TU_TEST(test_io_fd_above_setsize),
		TU_TEST(test_io_read_ready),
		TU_TEST(test_io_write_ready),
		TU_TEST(test_io_read_write_one_callback),
		TU_TEST(test_io_disarmed_then_mod),
		TU_TEST(test_io_mod_mask),
		TU_TEST(test_io_callback_args),
		TU_TEST(test_et_read_drain),
		TU_TEST(test_et_read_eof),
		TU_TEST(test_et_idle_writable_no_spin),
		TU_TEST(test_et_write_refill),
		TU_TEST(test_oneshot),
		TU_TEST(test_oneshot_no_cb_after_fire),
		TU_TEST(test_hup_read_close),
		TU_TEST(test_hup_read_shutdown),
		TU_TEST(test_hup_write_only),
		TU_TEST(test_hup_write_only_full),
		TU_TEST(test_stale_del_other),
		TU_TEST(test_stale_del_close_reuse),
		TU_TEST(test_stale_reuse_ready),
		TU_TEST(test_stale_mod_read_to_write),
		TU_TEST(test_stale_mod_rw_to_write),
		TU_TEST(test_self_del_readd),
		TU_TEST(test_cb_adds_watcher),
		TU_TEST(test_cb_mods_own_mask),
		TU_TEST(test_cb_dels_own),
		TU_TEST(test_cb_dels_others),
		TU_TEST(test_io_cb_adds_dels_timers),
		TU_TEST(test_timer_cb_adds_io),
		TU_TEST(test_timer_cb_dels_mods_ready_io),
		TU_TEST(test_closed_fd_read),
		TU_TEST(test_closed_fd_rw),
		TU_TEST(test_closed_fd_write_et),
		TU_TEST(test_closed_fd_disarmed),
		TU_TEST(test_closed_fd_del),
		TU_TEST(test_closed_fd_number_reused),
		TU_TEST(test_many_fds),
	};
	return TU_RUN("test_io", tests);
}
