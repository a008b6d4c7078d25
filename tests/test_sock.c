/* Socket helpers: px_set_nonblock, px_accept, px_connect_timeout, px_connect,
 * px_listen_tcp / px_connect_tcp, readiness of a full send buffer, UDP.
 * Each pitfall is made deterministic on loopback:
 *  - timeouts: a listener that never accepts, its accept queue filled first,
 *    so the kernel drops the SYN of the connect under test;
 *  - refused: a port that was bound and closed;
 *  - EINTR: a repeating SIGALRM (no SA_RESTART) during the wait. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "portable.h" /* config.h first */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "socktest.h"

#define MAXFILL 64

/* ------------------------------------------------------------------------ */

static void test_set_nonblock(void **state)
{
	(void)state;
	int p[2];
	assert_int_equal(pipe(p), 0);
	assert_false(st_nonblocking(p[0]));
	assert_int_equal(px_set_nonblock(p[0], 1), 0);
	assert_true(st_nonblocking(p[0]));
	assert_int_equal(px_set_nonblock(p[0], 1), 0);
	assert_true(st_nonblocking(p[0]));
	assert_int_equal(px_set_nonblock(p[0], 0), 0);
	assert_false(st_nonblocking(p[0]));
	/* Other status flags survive. */
	assert_int_equal(fcntl(p[1], F_SETFL, O_APPEND), 0);
	assert_int_equal(px_set_nonblock(p[1], 1), 0);
	assert_true(st_flags(p[1]) & O_APPEND);
	close(p[0]);
	close(p[1]);
	assert_int_equal(px_set_nonblock(-1, 1), -EBADF);
	assert_int_equal(px_set_nonblock(p[0], 1), -EBADF); /* closed */
}

/* ------------------------------------------------------------------------ */
/* px_accept                                                                  */

static void test_accept_empty_and_flags(void **state)
{
	(void)state;
	struct sockaddr_in a;
	int l = st_listener(8, true, &a);

	assert_int_equal(px_accept(l, NULL, NULL), -EAGAIN);

	int c = st_tcp(false);
	assert_int_equal(connect(c, (struct sockaddr *)&a, sizeof(a)), 0);
	struct sockaddr_storage peer;
	socklen_t plen = sizeof(peer);
	int s = -EAGAIN;
	for (int i = 0; i < 100 && s == -EAGAIN; i++) {
		s = px_accept(l, (struct sockaddr *)&peer, &plen);
		if (s == -EAGAIN)
			tu_sleep_ms(10);
	}
	assert_true(s >= 0);
	assert_true(st_nonblocking(s));
	assert_true(st_cloexec(s));
	assert_int_equal(plen, sizeof(struct sockaddr_in));
	assert_int_equal(peer.ss_family, AF_INET);
	assert_int_equal(ntohs(((struct sockaddr_in *)&peer)->sin_port), st_port(c));
	/* Empty again. */
	assert_int_equal(px_accept(l, NULL, NULL), -EAGAIN);
	close(s);
	close(c);
	close(l);
}

static void test_accept_bad_input(void **state)
{
	(void)state;
	int before = tu_count_fds();
	int p[2];
	assert_int_equal(pipe(p), 0);
	assert_int_equal(px_accept(-1, NULL, NULL), -EBADF);
	assert_int_equal(px_accept(p[0], NULL, NULL), -ENOTSOCK);
	int s = st_tcp(true); /* not listening */
	assert_int_equal(px_accept(s, NULL, NULL), -EINVAL);
	struct sockaddr_storage ss;
	assert_int_equal(px_accept(s, (struct sockaddr *)&ss, NULL), -EINVAL);
	close(s);
	close(p[0]);
	close(p[1]);
	assert_int_equal(px_accept(p[0], NULL, NULL), -EBADF); /* closed */
	assert_int_equal(tu_count_fds(), before);
}

/* A client that resets its connection before the server accepts: px_accept
 * either skips it or returns it (and reading it gives ECONNRESET or EOF);
 * nothing blocks, nothing fails, and the next good connection is accepted. */
static void test_accept_reset_before_accept(void **state)
{
	(void)state;
	struct sockaddr_in a;
	int before = tu_count_fds();
	int l = st_listener(8, true, &a);

	int bad = st_tcp(false);
	assert_int_equal(connect(bad, (struct sockaddr *)&a, sizeof(a)), 0);
	uint16_t bad_port = st_port(bad);
	st_linger0(bad);
	close(bad);
	tu_sleep_ms(20); /* let the RST arrive */

	int good = st_tcp(false);
	assert_int_equal(connect(good, (struct sockaddr *)&a, sizeof(a)), 0);
	uint16_t good_port = st_port(good);
	assert_int_equal(tp_send(good, "G", 1, 0), 1);

	bool got_good = false;
	double t0 = tu_now_ms();
	while (!got_good && tu_now_ms() - t0 < 5000) {
		struct sockaddr_in peer;
		socklen_t plen = sizeof(peer);
		int s = px_accept(l, (struct sockaddr *)&peer, &plen);
		if (s == -EAGAIN) {
			tu_sleep_ms(5);
			continue;
		}
		assert_true(s >= 0);
		uint16_t port = ntohs(peer.sin_port);
		char ch;
		if (port == bad_port) {
			ssize_t r = recv(s, &ch, 1, 0);
			assert_true(r == 0 || (r < 0 && (errno == ECONNRESET || errno == EAGAIN)));
		} else {
			assert_int_equal(port, good_port);
			struct pollfd pf = { .fd = s, .events = POLLIN };
			assert_int_equal(poll(&pf, 1, 2000), 1);
			assert_int_equal(recv(s, &ch, 1, 0), 1);
			assert_int_equal(ch, 'G');
			got_good = true;
		}
		close(s);
	}
	assert_true(got_good);
	close(good);
	close(l);
	assert_int_equal(tu_count_fds(), before);
}

/* ------------------------------------------------------------------------ */
/* px_connect_timeout                                                         */

static void test_connect_timeout_success(void **state)
{
	(void)state;
	struct sockaddr_in a;
	int l = st_listener(8, true, &a);

	for (int nb = 0; nb < 2; nb++) {
		int c = st_tcp(nb);
		assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a), 2000), 0);
		assert_int_equal(st_nonblocking(c), nb);
		/* It is connected: the peer sees it. */
		assert_int_equal(tp_send(c, "x", 1, 0), 1);
		close(c);
	}
	/* No limit. */
	int c = st_tcp(false);
	assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a), -1), 0);
	assert_false(st_nonblocking(c));
	/* Already connected: -EISCONN.  (Linux completes the state change of
	 * a connect that finished asynchronously in the next connect() call,
	 * which returns 0 once; the call after that sees EISCONN.) */
	int rc = px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a), 100);
	if (rc == 0)
		rc = px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a), 100);
	assert_int_equal(rc, -EISCONN);
	assert_false(st_nonblocking(c));
	close(c);
	close(l);
}

static void test_connect_timeout_refused(void **state)
{
	(void)state;
	struct sockaddr_in a = st_closed_port();

	for (int nb = 0; nb < 2; nb++) {
		int c = st_tcp(nb);
		assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a), 2000),
		                 -ECONNREFUSED);
		assert_int_equal(st_nonblocking(c), nb);
		close(c);
	}
}

static void test_connect_timeout_times_out(void **state)
{
	(void)state;
	struct sockaddr_in a;
	int fill[MAXFILL];
	int before = tu_count_fds();
	int l = st_listener(0, true, &a);
	int n = st_fill_accept_queue(&a, fill, MAXFILL);

	for (int nb = 0; nb < 2; nb++) {
		int c = st_tcp(nb);
		double t0 = tu_now_ms();
		assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a), 200),
		                 -ETIMEDOUT);
		double el = tu_now_ms() - t0;
		assert_true(el >= 199.0);
		assert_true(el < 200.0 + st_slack_ms());
		assert_int_equal(st_nonblocking(c), nb);
		close(c);
	}
	/* timeout 0: nothing to wait for. */
	int c = st_tcp(false);
	double t0 = tu_now_ms();
	assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a), 0), -ETIMEDOUT);
	assert_true(tu_now_ms() - t0 < st_slack_ms());
	assert_false(st_nonblocking(c));
	close(c);

	st_close_all(fill, n);
	close(l);
	assert_int_equal(tu_count_fds(), before);
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	(void)sig;
	if (++alarms > 400) {
		/* The wait ignored its deadline: die like the watchdog would. */
		struct sigaction sa = { .sa_handler = SIG_DFL };
		sigaction(SIGALRM, &sa, NULL);
		raise(SIGALRM);
	}
}

/* A signal every 20 ms interrupts poll(): the deadline does not move. */
static void test_connect_timeout_eintr(void **state)
{
	(void)state;
	struct sockaddr_in a;
	int fill[MAXFILL];
	int l = st_listener(0, true, &a);
	int n = st_fill_accept_queue(&a, fill, MAXFILL);

	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART */
	assert_int_equal(sigaction(SIGALRM, &sa, &old), 0);
	alarms = 0;
	/* setitimer replaces the watchdog's alarm(); on_alarm bounds the test. */
	struct itimerval it = { .it_interval = { 0, 20000 }, .it_value = { 0, 20000 } };
	assert_int_equal(setitimer(ITIMER_REAL, &it, NULL), 0);

	int c = st_tcp(false);
	double t0 = tu_now_ms();
	int rc = px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a), 300);
	double el = tu_now_ms() - t0;

	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &off, NULL);
	sigaction(SIGALRM, &old, NULL);
	alarm(TU_WATCHDOG_S);

	assert_int_equal(rc, -ETIMEDOUT);
	assert_true(alarms >= 3); /* the wait really was interrupted */
	assert_true(el >= 299.0);
	assert_true(el < 300.0 + st_slack_ms());
	assert_false(st_nonblocking(c));
	close(c);
	st_close_all(fill, n);
	close(l);
}

static void test_connect_timeout_bad_input(void **state)
{
	(void)state;
	int before = tu_count_fds();
	struct sockaddr_in a;
	int l = st_listener(8, true, &a);
	int c = st_tcp(false);
	int p[2];
	assert_int_equal(pipe(p), 0);

	assert_int_equal(px_connect_timeout(c, NULL, sizeof(a), 100), -EINVAL);
	assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a, 0, 100), -EINVAL);
	assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a, 1, 100), -EINVAL);
	assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a) - 1, 100), -EINVAL);
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a6, sizeof(struct sockaddr_in), 100),
	                 -EINVAL);
	assert_int_equal(px_connect_timeout(-1, (struct sockaddr *)&a, sizeof(a), 100), -EBADF);
	assert_int_equal(px_connect_timeout(p[0], (struct sockaddr *)&a, sizeof(a), 100), -ENOTSOCK);
	assert_false(st_nonblocking(p[0]));
	int rc = px_connect_timeout(l, (struct sockaddr *)&a, sizeof(a), 100);
	assert_true(rc == -EINVAL || rc == -EOPNOTSUPP || rc == -EISCONN);
	assert_true(st_nonblocking(l)); /* untouched */
	/* Still usable after all that. */
	assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a), 2000), 0);
	close(c);
	close(p[0]);
	close(p[1]);
	assert_int_equal(px_connect_timeout(c, (struct sockaddr *)&a, sizeof(a), 100), -EBADF);
	close(l);
	assert_int_equal(tu_count_fds(), before);
}

/* ------------------------------------------------------------------------ */
/* px_connect in the loop                                                     */

struct cstate {
	int calls;
	int status;
	int fd;
	bool inside; /* set while px_connect runs */
	bool called_inside;
	bool readd; /* px_io_add the fd from the callback */
	int readd_rc;
	double at_ms;
	bool stop;
};

static void conn_cb(px_loop *loop, int fd, int status, void *arg)
{
	struct cstate *s = arg;
	s->calls++;
	s->status = status;
	s->fd = fd;
	s->at_ms = tu_now_ms();
	if (s->inside)
		s->called_inside = true;
	if (s->readd) {
		s->readd_rc = px_io_add(loop, fd, PX_READ, tu_never_cb, NULL);
		if (s->readd_rc == 0)
			assert_int_equal(px_io_del(loop, fd), 0);
	}
	if (s->stop)
		px_loop_stop(loop);
}

static int start_connect(px_loop *loop, int fd, const struct sockaddr_in *a, int timeout_ms,
                         struct cstate *s)
{
	s->inside = true;
	int rc = px_connect(loop, fd, (const struct sockaddr *)a, sizeof(*a), timeout_ms, conn_cb, s);
	s->inside = false;
	return rc;
}

static void test_connect_async_success(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int l = st_listener(8, true, &a);

	for (int nb = 0; nb < 2; nb++) {
		struct cstate s = { .readd = true };
		int c = st_tcp(nb);
		assert_int_equal(start_connect(loop, c, &a, 2000, &s), 0);
		assert_int_equal(s.calls, 0);
		assert_true(st_nonblocking(c)); /* left non-blocking */
		/* Registered while pending. */
		assert_int_equal(px_io_add(loop, c, PX_READ, tu_never_cb, NULL), -EEXIST);
		assert_int_equal(start_connect(loop, c, &a, 2000, &s), -EEXIST);
		assert_int_equal(px_acceptor_del(loop, c), -ENOENT);
		/* Nothing else is registered: the pending connect alone keeps
		 * px_loop_run going until it is reported. */
		assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
		assert_int_equal(s.calls, 1);
		assert_false(s.called_inside);
		assert_int_equal(s.status, 0);
		assert_int_equal(s.fd, c);
		assert_int_equal(s.readd_rc, 0);
		/* Exactly once. */
		tu_run_for(loop, 50);
		assert_int_equal(s.calls, 1);
		assert_int_equal(px_io_del(loop, c), -ENOENT);
		assert_int_equal(tp_send(c, "x", 1, 0), 1);
		close(c);
	}
	px_loop_free(loop);
	close(l);
}

static void test_connect_async_refused(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct sockaddr_in a = st_closed_port();
	struct cstate s = { 0 };
	int c = st_tcp(true);

	int rc = start_connect(loop, c, &a, 2000, &s);
	if (rc == 0) {
		assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
		assert_int_equal(s.calls, 1);
		assert_int_equal(s.status, -ECONNREFUSED);
	} else {
		assert_int_equal(rc, -ECONNREFUSED);
		tu_run_for(loop, 50);
		assert_int_equal(s.calls, 0);
	}
	assert_false(s.called_inside);
	tu_run_for(loop, 50);
	assert_int_equal(s.calls, rc == 0 ? 1 : 0);
	assert_int_equal(px_io_del(loop, c), -ENOENT);
	close(c);
	px_loop_free(loop);
}

static void test_connect_async_timeout(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int fill[MAXFILL];
	int l = st_listener(0, true, &a);
	int n = st_fill_accept_queue(&a, fill, MAXFILL);
	struct cstate s = { .readd = true };
	int c = st_tcp(false);

	double t0 = tu_now_ms();
	assert_int_equal(start_connect(loop, c, &a, 200, &s), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	assert_int_equal(s.calls, 1);
	assert_false(s.called_inside);
	assert_int_equal(s.status, -ETIMEDOUT);
	assert_int_equal(s.readd_rc, 0);
	double el = s.at_ms - t0;
	assert_true(el >= 199.0);
	assert_true(el < 200.0 + st_slack_ms());
	tu_run_for(loop, 50);
	assert_int_equal(s.calls, 1);
	close(c);
	st_close_all(fill, n);
	close(l);
	px_loop_free(loop);
}

/* px_io_del cancels a pending connect: no callback, and the fd is free. */
static void test_connect_async_cancel(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int fill[MAXFILL];
	int l = st_listener(0, true, &a);
	int n = st_fill_accept_queue(&a, fill, MAXFILL);

	/* In progress (stuck), with and without a deadline. */
	for (int t = 0; t < 2; t++) {
		struct cstate s = { 0 };
		int c = st_tcp(true);
		assert_int_equal(start_connect(loop, c, &a, t ? 100 : -1, &s), 0);
		tu_run_for(loop, 20);
		assert_int_equal(px_io_del(loop, c), 0);
		assert_int_equal(px_io_del(loop, c), -ENOENT);
		tu_run_for(loop, 250);
		assert_int_equal(s.calls, 0);
		assert_int_equal(px_io_add(loop, c, 0, tu_never_cb, NULL), 0);
		assert_int_equal(px_io_del(loop, c), 0);
		close(c);
	}
	st_close_all(fill, n);
	close(l);

	/* Finished at once but not reported yet (deferred): cancelled too. */
	l = st_listener(8, true, &a);
	struct cstate s = { 0 };
	int c = st_tcp(true);
	assert_int_equal(start_connect(loop, c, &a, 1000, &s), 0);
	assert_int_equal(px_io_del(loop, c), 0);
	tu_run_for(loop, 100);
	assert_int_equal(s.calls, 0);
	close(c);
	close(l);

	/* Nothing left: the loop returns at once. */
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	px_loop_free(loop);
}

/* px_loop_free with pending connects frees them without a callback (ASan /
 * valgrind check for leaks), and closes none of the fds. */
static void test_connect_async_free(void **state)
{
	(void)state;
	struct sockaddr_in a, a2;
	int fill[MAXFILL];
	int before = tu_count_fds();
	int l = st_listener(0, true, &a);
	int n = st_fill_accept_queue(&a, fill, MAXFILL);
	int l2 = st_listener(8, true, &a2);
	struct sockaddr_in closed = st_closed_port();
	struct cstate s = { 0 };

	px_loop *loop = tu_loop();
	int c1 = st_tcp(true), c2 = st_tcp(true), c3 = st_tcp(true), c4 = st_tcp(true);
	assert_int_equal(start_connect(loop, c1, &a, 5000, &s), 0);
	assert_int_equal(start_connect(loop, c2, &a, -1, &s), 0);
	assert_int_equal(start_connect(loop, c3, &a2, 5000, &s), 0);
	int rc = start_connect(loop, c4, &closed, 5000, &s);
	assert_true(rc == 0 || rc == -ECONNREFUSED);
	assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	px_loop_free(loop);
	assert_int_equal(s.calls <= 2, 1); /* c3/c4 may have finished in NOWAIT */
	int calls = s.calls;
	tu_sleep_ms(20);
	assert_int_equal(s.calls, calls);
	/* Nothing was closed by the library. */
	assert_true(fcntl(c1, F_GETFD) >= 0 && fcntl(c2, F_GETFD) >= 0);
	assert_true(fcntl(c3, F_GETFD) >= 0 && fcntl(c4, F_GETFD) >= 0);

	/* And without any iteration at all: no callback. */
	loop = tu_loop();
	struct cstate s2 = { 0 };
	int c5 = st_tcp(true);
	assert_int_equal(start_connect(loop, c5, &a2, 5000, &s2), 0);
	px_loop_free(loop);
	assert_int_equal(s2.calls, 0);

	close(c1);
	close(c2);
	close(c3);
	close(c4);
	close(c5);
	st_close_all(fill, n);
	close(l);
	close(l2);
	assert_int_equal(tu_count_fds(), before);
}

static void test_connect_async_bad_input(void **state)
{
	(void)state;
	int before = tu_count_fds();
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int l = st_listener(8, true, &a);
	int c = st_tcp(true);
	int p[2];
	struct cstate s = { 0 };
	const struct sockaddr *sa = (struct sockaddr *)&a;

	assert_int_equal(pipe(p), 0);
	assert_int_equal(px_connect(NULL, c, sa, sizeof(a), 100, conn_cb, &s), -EINVAL);
	assert_int_equal(px_connect(loop, c, sa, sizeof(a), 100, NULL, &s), -EINVAL);
	assert_int_equal(px_connect(loop, c, NULL, sizeof(a), 100, conn_cb, &s), -EINVAL);
	assert_int_equal(px_connect(loop, c, sa, 1, 100, conn_cb, &s), -EINVAL);
	assert_int_equal(px_connect(loop, c, sa, sizeof(a) - 2, 100, conn_cb, &s), -EINVAL);
	assert_int_equal(px_connect(loop, -1, sa, sizeof(a), 100, conn_cb, &s), -EBADF);
	assert_int_equal(px_connect(loop, p[0], sa, sizeof(a), 100, conn_cb, &s), -ENOTSOCK);
	int rc = px_connect(loop, l, sa, sizeof(a), 100, conn_cb, &s);
	assert_true(rc == -EINVAL || rc == -EOPNOTSUPP || rc == -EISCONN);
	/* An fd already watched. */
	assert_int_equal(px_io_add(loop, c, PX_READ, tu_never_cb, NULL), 0);
	assert_int_equal(px_connect(loop, c, sa, sizeof(a), 100, conn_cb, &s), -EEXIST);
	assert_int_equal(px_io_del(loop, c), 0);
	/* Nothing stayed registered. */
	assert_int_equal(px_io_del(loop, p[0]), -ENOENT);
	assert_int_equal(px_io_del(loop, l), -ENOENT);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	assert_int_equal(s.calls, 0);
	px_loop_free(loop);
	close(c);
	close(l);
	close(p[0]);
	close(p[1]);
	assert_int_equal(tu_count_fds(), before);
}

/* ------------------------------------------------------------------------ */
/* px_listen_tcp / px_connect_tcp                                             */

/* Connects with px_connect_tcp, accepts, and checks both ends talk. */
static void check_roundtrip(int l, const char *host)
{
	int c = px_connect_tcp(host, st_port(l), 2000);
	if (c < 0)
		fail_msg("px_connect_tcp(%s, %u): %s", host, st_port(l), strerror(-c));
	assert_false(st_nonblocking(c));
	assert_true(st_cloexec(c));
	int s = -EAGAIN;
	for (int i = 0; i < 200 && s == -EAGAIN; i++) {
		s = px_accept(l, NULL, NULL);
		if (s == -EAGAIN)
			tu_sleep_ms(5);
	}
	assert_true(s >= 0);
	assert_int_equal(tp_send(c, "hi", 2, 0), 2);
	char buf[2];
	struct pollfd pf = { .fd = s, .events = POLLIN };
	assert_int_equal(poll(&pf, 1, 2000), 1);
	assert_int_equal(recv(s, buf, 2, 0), 2);
	assert_memory_equal(buf, "hi", 2);
	close(s);
	close(c);
}

static void check_listener(int l)
{
	assert_true(l >= 0);
	assert_true(st_nonblocking(l));
	assert_true(st_cloexec(l));
	int v = 0;
	socklen_t len = sizeof(v);
	assert_int_equal(getsockopt(l, SOL_SOCKET, SO_REUSEADDR, &v, &len), 0);
	assert_true(v != 0);
	assert_true(st_port(l) != 0);
}

static bool have_ipv6(void)
{
	int fd = tp_socket(AF_INET6, SOCK_STREAM, 0, TP_CLOEXEC);
	if (fd < 0)
		return false;
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	close(fd);
	return ok;
}

static void test_listen_connect_tcp(void **state)
{
	(void)state;
	int before = tu_count_fds();

	/* Any address: reachable on 127.0.0.1 (and ::1 when dual-stack). */
	int l = px_listen_tcp(NULL, 0, 0);
	check_listener(l);
	check_roundtrip(l, "127.0.0.1");
	check_roundtrip(l, "localhost");
	if (have_ipv6()) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		assert_int_equal(getsockname(l, (struct sockaddr *)&ss, &len), 0);
		if (ss.ss_family == AF_INET6)
			check_roundtrip(l, "::1");
	}
	/* The same port again: in use. */
	assert_int_equal(px_listen_tcp("127.0.0.1", st_port(l), 0), -EADDRINUSE);
	close(l);

	l = px_listen_tcp("127.0.0.1", 0, 16);
	check_listener(l);
	check_roundtrip(l, "127.0.0.1");
	close(l);

	l = px_listen_tcp("localhost", 0, -1);
	check_listener(l);
	check_roundtrip(l, "localhost");
	close(l);

	if (have_ipv6()) {
		l = px_listen_tcp("::1", 0, 0);
		check_listener(l);
		check_roundtrip(l, "::1");
		close(l);
	}

	assert_int_equal(px_listen_tcp("no-such-host.invalid", 0, 0), -ENOENT);
	assert_int_equal(px_connect_tcp("no-such-host.invalid", 80, 1000), -ENOENT);
	assert_int_equal(px_connect_tcp(NULL, 80, 1000), -EINVAL);
	struct sockaddr_in closed = st_closed_port();
	assert_int_equal(px_connect_tcp("127.0.0.1", ntohs(closed.sin_port), 1000), -ECONNREFUSED);
	assert_int_equal(tu_count_fds(), before);
}

/* px_listen_tcp_opts: flags checked; REUSEPORT shares a port. */
static void test_listen_opts_flags(void **state)
{
	(void)state;
	int before = tu_count_fds();

	assert_int_equal(px_listen_tcp_opts(NULL, 0, 0, 0x04u), -EINVAL);
	assert_int_equal(px_listen_tcp_opts("127.0.0.1", 0, 0, 0x80000000u), -EINVAL);
	assert_int_equal(px_listen_tcp_opts("127.0.0.1", 0, 0, ~0u), -EINVAL);

	/* flags 0 is px_listen_tcp. */
	int l = px_listen_tcp_opts("127.0.0.1", 0, 0, 0);
	check_listener(l);
	check_roundtrip(l, "127.0.0.1");
	close(l);

	int l1 = px_listen_tcp_opts("127.0.0.1", 0, 0, PX_LISTEN_REUSEPORT);
#ifndef SO_REUSEPORT
	assert_int_equal(l1, -ENOTSUP);
	printf("skipped: REUSEPORT sharing, the system has no SO_REUSEPORT\n");
#else
	check_listener(l1);
	int v = 0;
	socklen_t len = sizeof(v);
	assert_int_equal(getsockopt(l1, SOL_SOCKET, SO_REUSEPORT, &v, &len), 0);
	assert_true(v != 0);
	uint16_t port = st_port(l1);
	int l2 = px_listen_tcp_opts("127.0.0.1", port, 0, PX_LISTEN_REUSEPORT);
	check_listener(l2);
	assert_int_equal(st_port(l2), port);
	/* Without the flag the port is taken. */
	assert_int_equal(px_listen_tcp_opts("127.0.0.1", port, 0, 0), -EADDRINUSE);
	assert_int_equal(px_listen_tcp("127.0.0.1", port, 0), -EADDRINUSE);

	/* Connections land on one listener or the other; all are accepted. */
	enum { NCONN = 8 };
	int c[NCONN], got = 0, on1 = 0, on2 = 0;
	for (int i = 0; i < NCONN; i++) {
		c[i] = px_connect_tcp("127.0.0.1", port, 2000);
		assert_true(c[i] >= 0);
	}
	for (int tries = 0; got < NCONN && tries < 400; tries++) {
		struct pollfd pf[2] = { { .fd = l1, .events = POLLIN }, { .fd = l2, .events = POLLIN } };
		if (poll(pf, 2, 10) <= 0)
			continue;
		for (int k = 0; k < 2; k++) {
			int s;
			while ((s = px_accept(pf[k].fd, NULL, NULL)) >= 0) {
				close(s);
				got++;
				*(k ? &on2 : &on1) += 1;
			}
			assert_int_equal(s, -EAGAIN);
		}
	}
	assert_int_equal(got, NCONN);
	assert_int_equal(on1 + on2, NCONN);
	st_close_all(c, NCONN);
	close(l2);
#endif
	if (l1 >= 0)
		close(l1);
	assert_int_equal(tu_count_fds(), before);
}

/* px_listen_tcp_opts(PX_LISTEN_V6ONLY): IPv6 only, IPv4 refused. */
static void test_listen_opts_v6only(void **state)
{
	(void)state;
	int before = tu_count_fds();

	/* An IPv4 host has no IPv6 address to listen on. */
	assert_int_equal(px_listen_tcp_opts("127.0.0.1", 0, 0, PX_LISTEN_V6ONLY), -EINVAL);
	if (!have_ipv6()) {
		printf("skipped: V6ONLY listeners, the machine has no IPv6 loopback (::1)\n");
		assert_int_equal(tu_count_fds(), before);
		return;
	}

	const char *hosts[] = { NULL, "::1" };
	for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
		int l = px_listen_tcp_opts(hosts[i], 0, 0, PX_LISTEN_V6ONLY);
		check_listener(l);
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		assert_int_equal(getsockname(l, (struct sockaddr *)&ss, &len), 0);
		assert_int_equal(ss.ss_family, AF_INET6);
		int v = 0;
		len = sizeof(v);
		assert_int_equal(getsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &v, &len), 0);
		assert_int_equal(v, 1);
		check_roundtrip(l, "::1");
		assert_int_equal(px_connect_tcp("127.0.0.1", st_port(l), 1000), -ECONNREFUSED);
		assert_int_equal(px_accept(l, NULL, NULL), -EAGAIN);
		close(l);
	}

	/* Without the flag, host NULL stays dual-stack. */
	int l = px_listen_tcp_opts(NULL, 0, 0, 0);
	check_listener(l);
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	assert_int_equal(getsockname(l, (struct sockaddr *)&ss, &len), 0);
	if (ss.ss_family == AF_INET6) {
		int v = 1;
		len = sizeof(v);
		assert_int_equal(getsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &v, &len), 0);
		assert_int_equal(v, 0);
	}
	check_roundtrip(l, "127.0.0.1");
	close(l);
	assert_int_equal(tu_count_fds(), before);
}

static void test_connect_tcp_timeout(void **state)
{
	(void)state;
	struct sockaddr_in a;
	int fill[MAXFILL];
	int before = tu_count_fds();
	int l = st_listener(0, true, &a);
	int n = st_fill_accept_queue(&a, fill, MAXFILL);
	double t0 = tu_now_ms();
	assert_int_equal(px_connect_tcp("127.0.0.1", ntohs(a.sin_port), 200), -ETIMEDOUT);
	double el = tu_now_ms() - t0;
	assert_true(el >= 199.0 && el < 200.0 + st_slack_ms());
	st_close_all(fill, n);
	close(l);
	assert_int_equal(tu_count_fds(), before);
}

/* ------------------------------------------------------------------------ */
/* Send side: a full send buffer is not writable until the peer reads.       */

struct wstate {
	int fd;
	int calls;
	size_t off, limit;
	bool done;
};

static void writer_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct wstate *w = arg;
	assert_true(revents & PX_WRITE);
	w->calls++;
	st_write_pattern(fd, &w->off, w->limit);
	if (w->off == w->limit) {
		w->done = true;
		assert_int_equal(px_io_del(loop, fd), 0);
		assert_int_equal(shutdown(fd, SHUT_WR), 0);
	}
}

struct rstate {
	size_t off;
	bool eof;
};

static void reader_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct rstate *r = arg;
	(void)revents;
	if (st_read_pattern(fd, &r->off)) {
		r->eof = true;
		assert_int_equal(px_io_del(loop, fd), 0);
		px_loop_stop(loop);
	}
}

static void test_send_eagain(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int c, s;
	st_tcp_pair(&c, &s);

	/* Fill until EAGAIN, and again until a fill after a pause takes
	 * nothing: both the send and the receive buffers are full. */
	struct wstate w = { .fd = c, .limit = SIZE_MAX };
	size_t got = st_write_pattern(c, &w.off, w.limit);
	assert_true(got > 0);
	for (int i = 0; i < 50; i++) {
		tu_sleep_ms(20);
		if (st_write_pattern(c, &w.off, w.limit) == 0)
			break;
	}
	size_t filled = w.off;

	assert_int_equal(px_io_add(loop, c, PX_WRITE, writer_cb, &w), 0);
	w.limit = filled; /* the callback must not write yet */
	/* ~200 ms of iterations while the peer does not read: no PX_WRITE. */
	tu_run_for(loop, 200);
	assert_int_equal(w.calls, 0);

	/* The peer reads everything; then the writer writes 256 KiB more. */
	struct rstate r = { 0 };
	w.limit = filled + 256 * 1024;
	assert_int_equal(px_io_add(loop, s, PX_READ, reader_cb, &r), 0);
	assert_false(tu_run_for(loop, 10000)); /* stopped by the reader's EOF */
	assert_true(w.calls >= 1);
	assert_true(w.done);
	assert_true(r.eof);
	/* Every byte arrived, in order (checked by the reader), none lost. */
	assert_int_equal(r.off, w.limit);
	close(c);
	close(s);
	px_loop_free(loop);
}

/* ------------------------------------------------------------------------ */
/* UDP                                                                        */

struct ustate {
	int calls;
	int second_errno;
	char buf[64];
	ssize_t len;
	struct sockaddr_in from;
};

static void udp_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct ustate *u = arg;
	assert_true(revents & PX_READ);
	u->calls++;
	socklen_t flen = sizeof(u->from);
	u->len = recvfrom(fd, u->buf, sizeof(u->buf), MSG_DONTWAIT, (struct sockaddr *)&u->from, &flen);
	char x;
	ssize_t r = recvfrom(fd, &x, 1, MSG_DONTWAIT, NULL, NULL);
	u->second_errno = r < 0 ? errno : 0;
	px_loop_stop(loop);
}

static void test_udp(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int r = tp_socket(AF_INET, SOCK_DGRAM, 0, TP_NONBLOCK | TP_CLOEXEC);
	int w = tp_socket(AF_INET, SOCK_DGRAM, 0, TP_CLOEXEC);
	assert_true(r >= 0 && w >= 0);
	struct sockaddr_in a = st_loopback4(0);
	assert_int_equal(bind(r, (struct sockaddr *)&a, sizeof(a)), 0);
	a = st_loopback4(st_port(r));
	struct sockaddr_in wa = st_loopback4(0);
	assert_int_equal(bind(w, (struct sockaddr *)&wa, sizeof(wa)), 0);

	struct ustate u = { 0 };
	assert_int_equal(px_io_add(loop, r, PX_READ, udp_cb, &u), 0);
	tu_run_for(loop, 50);
	assert_int_equal(u.calls, 0);
	assert_int_equal(sendto(w, "datagram", 8, 0, (struct sockaddr *)&a, sizeof(a)), 8);
	assert_false(tu_run_for(loop, 5000));
	assert_int_equal(u.calls, 1);
	assert_int_equal(u.len, 8);
	assert_memory_equal(u.buf, "datagram", 8);
	assert_int_equal(ntohs(u.from.sin_port), st_port(w));
	assert_true(u.second_errno == EAGAIN || u.second_errno == EWOULDBLOCK);
	/* Drained: no further callback. */
	tu_run_for(loop, 50);
	assert_int_equal(u.calls, 1);
	assert_int_equal(px_io_del(loop, r), 0);
	close(r);
	close(w);
	px_loop_free(loop);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		TU_TEST(test_set_nonblock),
		TU_TEST(test_accept_empty_and_flags),
		TU_TEST(test_accept_bad_input),
		TU_TEST(test_accept_reset_before_accept),
		TU_TEST(test_connect_timeout_success),
		TU_TEST(test_connect_timeout_refused),
		TU_TEST(test_connect_timeout_times_out),
		TU_TEST(test_connect_timeout_eintr),
		TU_TEST(test_connect_timeout_bad_input),
		TU_TEST(test_connect_async_success),
		TU_TEST(test_connect_async_refused),
		TU_TEST(test_connect_async_timeout),
		TU_TEST(test_connect_async_cancel),
		TU_TEST(test_connect_async_free),
		TU_TEST(test_connect_async_bad_input),
		TU_TEST(test_listen_connect_tcp),
		TU_TEST(test_listen_opts_flags),
		TU_TEST(test_listen_opts_v6only),
		TU_TEST(test_connect_tcp_timeout),
		TU_TEST(test_send_eagain),
		TU_TEST(test_udp),
	};
	return TU_RUN("test_sock", tests);
}
