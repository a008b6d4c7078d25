/* px_accept's retries and px_acceptor, with fault injection.
 *
 * This program defines accept4() and accept() itself.  libpollux calls them
 * through its PLT, and the executable's definitions take precedence over
 * libc's (the same holds when the library's objects are linked in directly),
 * so every accept of the library goes through the interposer below, which
 * fails calls from a test-controlled script of errnos, or fails every call
 * while `inj.all` is set, and otherwise forwards to libc's accept4 found with
 * dlsym(RTLD_NEXT).  Each test asserts that the interposer's call counter
 * moved, so a broken interposition fails instead of silently testing
 * nothing. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "portable.h" /* config.h first */
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "interpose.h"
#include "socktest.h"

/* ------------------------------------------------------------------------ */
/* The interposer                                                             */

static struct {
	int script[16]; /* errnos for the next calls, in order */
	int nscript, pos;
	int all;    /* nonzero: every call fails with this errno */
	long calls; /* calls seen (failed or forwarded) */
	long injected;
} inj;

typedef int accept4_fn(int, struct sockaddr *, socklen_t *, int);
typedef int accept_fn(int, struct sockaddr *, socklen_t *);

static void inj_script(int n, const int *errs)
{
	assert_true(n <= 16);
	memcpy(inj.script, errs, (size_t)n * sizeof(int));
	inj.nscript = n;
	inj.pos = 0;
}

static void inj_reset(void)
{
	memset(&inj, 0, sizeof(inj));
}

static int inj_next(void)
{
	inj.calls++;
	int err = 0;
	if (inj.all)
		err = inj.all;
	else if (inj.pos < inj.nscript)
		err = inj.script[inj.pos++];
	if (err)
		inj.injected++;
	return err;
}

/* accept4 only where the library calls it (HAVE_ACCEPT4); each forwards to
 * the next definition of its own symbol (interpose.h). */
#ifdef HAVE_ACCEPT4
int accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	IP_REAL(accept4_fn *, accept4);
	int err = inj_next();
	if (err) {
		errno = err;
		return -1;
	}
	return real_accept4(fd, sa, len, flags);
}
#endif

int accept(int fd, struct sockaddr *sa, socklen_t *len)
{
	IP_REAL(accept_fn *, accept);
	int err = inj_next();
	if (err) {
		errno = err;
		return -1;
	}
	return real_accept(fd, sa, len);
}

static int setup(void **state)
{
	inj_reset();
	return tu_setup(state);
}

#define TEST(f) cmocka_unit_test_setup(f, setup)

/* Waits until listener l has a connection in its queue (readable). */
static void wait_pending(int l)
{
	struct pollfd p = { .fd = l, .events = POLLIN };
	assert_int_equal(poll(&p, 1, 5000), 1);
}

/* ------------------------------------------------------------------------ */
/* px_accept                                                                  */

static void test_accept_retries(void **state)
{
	(void)state;
	struct sockaddr_in a;
	int l = st_listener(8, true, &a);
	int c = st_connect_nb(&a);
	wait_pending(l);

	/* Connections that died in the queue, and EINTR, are retried. */
	int errs[] = { EINTR, ECONNABORTED, EPROTO, ENETDOWN, ENOPROTOOPT, EHOSTDOWN,
#ifdef ENONET
	               ENONET,
#endif
	               EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH };
	int n = (int)(sizeof(errs) / sizeof(errs[0]));
	inj_script(n, errs);
	struct sockaddr_in peer;
	socklen_t plen = sizeof(peer);
	int s = px_accept(l, (struct sockaddr *)&peer, &plen);
	assert_int_equal(inj.calls, n + 1); /* the interposer really ran */
	assert_int_equal(inj.injected, n);
	assert_true(s >= 0);
	assert_int_equal(plen, sizeof(peer));
	assert_int_equal(ntohs(peer.sin_port), st_port(c));
	assert_true(st_nonblocking(s) && st_cloexec(s));
	close(s);
	close(c);

	/* Resource errors are returned; the connection stays queued. */
	c = st_connect_nb(&a);
	wait_pending(l);
	int emfile[] = { EINTR, EMFILE };
	inj_script(2, emfile);
	inj.calls = 0;
	assert_int_equal(px_accept(l, NULL, NULL), -EMFILE);
	assert_int_equal(inj.calls, 2);
	int others[] = { ENFILE, ENOBUFS, ENOMEM };
	for (int i = 0; i < 3; i++) {
		inj_script(1, &others[i]);
		assert_int_equal(px_accept(l, NULL, NULL), -others[i]);
	}
	s = px_accept(l, NULL, NULL);
	assert_true(s >= 0);
	close(s);
	close(c);

	/* EAGAIN, however spelled, is -EAGAIN. */
	int again[] = { EWOULDBLOCK };
	inj_script(1, again);
	assert_int_equal(px_accept(l, NULL, NULL), -EAGAIN);
	assert_int_equal(px_accept(l, NULL, NULL), -EAGAIN); /* really empty */

	/* An endless stream of dead connections does not hang px_accept. */
	inj.all = ECONNABORTED;
	inj.calls = 0;
	assert_int_equal(px_accept(l, NULL, NULL), -EAGAIN);
	assert_true(inj.calls > 1 && inj.calls <= 100000);
	inj.all = 0;
	close(l);
}

/* ------------------------------------------------------------------------ */
/* Acceptors                                                                  */

#define MAXCONN 256

struct acc {
	int ok;        /* client fds received */
	int fails;     /* negative client fds received */
	int last_err;
	int fds[MAXCONN];
	uint16_t ports[MAXCONN];
	int stop_at;   /* px_loop_stop when ok reaches this (0: never) */
	bool close_fds;
	int del_after; /* px_acceptor_del (1) / px_io_del (2) from the callback */
	bool peer_null_on_fail;
	double fail_at_ms;
	double ok_at_ms;
};

static void acc_cb(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                   socklen_t peerlen, void *arg)
{
	struct acc *s = arg;
	if (cfd < 0) {
		s->fails++;
		s->last_err = cfd;
		s->peer_null_on_fail = peer == NULL && peerlen == 0;
		s->fail_at_ms = tu_now_ms();
		return;
	}
	assert_non_null(peer);
	assert_int_equal(peer->sa_family, AF_INET);
	assert_int_equal(peerlen, sizeof(struct sockaddr_in));
	assert_true(st_nonblocking(cfd));
	assert_true(st_cloexec(cfd));
	assert_true(s->ok < MAXCONN);
	s->ports[s->ok] = ntohs(((const struct sockaddr_in *)peer)->sin_port);
	s->ok_at_ms = tu_now_ms();
	if (s->close_fds) {
		close(cfd);
		s->fds[s->ok++] = -1;
	} else {
		s->fds[s->ok++] = cfd;
	}
	if (s->del_after == 1)
		assert_int_equal(px_acceptor_del(loop, lfd), 0);
	else if (s->del_after == 2)
		assert_int_equal(px_io_del(loop, lfd), 0);
	if (s->stop_at && s->ok >= s->stop_at)
		px_loop_stop(loop);
}

static void test_acceptor_basic(void **state)
{
	(void)state;
	int before = tu_count_fds();
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int l = st_listener(16, false, &a); /* blocking: the acceptor fixes that */
	struct acc s = { .stop_at = 3, .close_fds = true };

	assert_int_equal(px_acceptor_add(loop, l, acc_cb, &s), 0);
	assert_true(st_nonblocking(l));
	assert_int_equal(px_acceptor_add(loop, l, acc_cb, &s), -EEXIST);
	assert_int_equal(px_io_add(loop, l, PX_READ, tu_never_cb, NULL), -EEXIST);

	int c[3];
	for (int i = 0; i < 3; i++)
		c[i] = st_connect_nb(&a);
	assert_false(tu_run_for(loop, 5000));
	assert_int_equal(s.ok, 3);
	assert_int_equal(s.fails, 0);
	assert_true(inj.calls >= 3); /* accepts went through the interposer */
	struct px_loop_stats st;
	assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
	assert_int_equal(st.accepted, 3);
	assert_int_equal(st.accept_backoffs, 0);
	/* Idle: no spurious callbacks. */
	tu_run_for(loop, 50);
	assert_int_equal(s.ok, 3);

	assert_int_equal(px_acceptor_del(loop, l), 0);
	assert_int_equal(px_acceptor_del(loop, l), -ENOENT);
	assert_int_equal(px_io_del(loop, l), -ENOENT);
	/* Not closed by the library. */
	assert_true(fcntl(l, F_GETFD) >= 0);
	st_close_all(c, 3);

	/* px_io_del removes an acceptor too; px_loop_free frees a live one. */
	assert_int_equal(px_acceptor_add(loop, l, acc_cb, &s), 0);
	assert_int_equal(px_io_del(loop, l), 0);
	assert_int_equal(px_acceptor_add(loop, l, acc_cb, &s), 0);
	px_loop_free(loop);
	assert_true(fcntl(l, F_GETFD) >= 0);
	close(l);
	assert_int_equal(tu_count_fds(), before);
}

static void test_acceptor_bad_input(void **state)
{
	(void)state;
	int before = tu_count_fds();
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int l = st_listener(4, true, &a);
	int s = st_tcp(true);
	int p[2];
	struct acc st = { 0 };
	assert_int_equal(pipe(p), 0);

	assert_int_equal(px_acceptor_add(NULL, l, acc_cb, &st), -EINVAL);
	assert_int_equal(px_acceptor_add(loop, l, NULL, &st), -EINVAL);
	assert_int_equal(px_acceptor_add(loop, -1, acc_cb, &st), -EBADF);
	assert_int_equal(px_acceptor_add(loop, s, acc_cb, &st), -EINVAL); /* not listening */
	assert_int_equal(px_acceptor_add(loop, p[0], acc_cb, &st), -ENOTSOCK);
	assert_false(st_nonblocking(p[0]));
	int udp = tp_socket(AF_INET, SOCK_DGRAM, 0, TP_CLOEXEC);
	assert_int_equal(px_acceptor_add(loop, udp, acc_cb, &st), -EINVAL);
	close(udp);

	/* A plain watcher is not an acceptor. */
	assert_int_equal(px_io_add(loop, l, PX_READ, tu_never_cb, NULL), 0);
	assert_int_equal(px_acceptor_add(loop, l, acc_cb, &st), -EEXIST);
	assert_int_equal(px_acceptor_del(loop, l), -ENOENT);
	assert_int_equal(px_io_del(loop, l), 0);
	assert_int_equal(px_acceptor_del(loop, l), -ENOENT);
	assert_int_equal(px_acceptor_del(loop, -1), -EBADF);
	assert_int_equal(px_acceptor_del(NULL, l), -EINVAL);

	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0); /* nothing left */
	px_loop_free(loop);
	close(l);
	close(s);
	close(p[0]);
	close(p[1]);
	assert_int_equal(tu_count_fds(), before);
}

/* Deleting the acceptor from its callback stops the batch at once. */
static void test_acceptor_del_from_callback(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int l = st_listener(16, true, &a);
	int c[5];
	for (int i = 0; i < 5; i++) {
		c[i] = st_connect_nb(&a);
		assert_true(st_connected_within(c[i], 2000));
	}
	tu_sleep_ms(20);

	for (int how = 1; how <= 2; how++) {
		struct acc s = { .close_fds = true, .del_after = how };
		assert_int_equal(px_acceptor_add(loop, l, acc_cb, &s), 0);
		/* The loop ends by itself: nothing is registered after the del. */
		assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
		assert_int_equal(s.ok, 1);
		assert_int_equal(px_acceptor_del(loop, l), -ENOENT);
	}
	/* The other three are still queued. */
	struct acc s = { .close_fds = true, .stop_at = 3 };
	assert_int_equal(px_acceptor_add(loop, l, acc_cb, &s), 0);
	assert_false(tu_run_for(loop, 5000));
	assert_int_equal(s.ok, 3);
	st_close_all(c, 5);
	px_loop_free(loop);
	close(l);
}

/* A client resets its connection before the acceptor gets to it: nothing
 * blocks, nothing is reported as a failure, the next one is accepted. */
static void test_acceptor_reset_before_accept(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int l = st_listener(8, true, &a);

	int bad = st_tcp(false);
	assert_int_equal(connect(bad, (struct sockaddr *)&a, sizeof(a)), 0);
	uint16_t bad_port = st_port(bad);
	st_linger0(bad);
	close(bad);
	tu_sleep_ms(20);
	int good = st_tcp(false);
	assert_int_equal(connect(good, (struct sockaddr *)&a, sizeof(a)), 0);
	uint16_t good_port = st_port(good);

	struct acc s = { .stop_at = 0 };
	assert_int_equal(px_acceptor_add(loop, l, acc_cb, &s), 0);
	double t0 = tu_now_ms();
	bool got = false;
	while (!got && tu_now_ms() - t0 < 5000) {
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
		for (int i = 0; i < s.ok; i++)
			if (s.ports[i] == good_port)
				got = true;
	}
	assert_true(got);
	assert_int_equal(s.fails, 0);
	for (int i = 0; i < s.ok; i++) {
		if (s.ports[i] == bad_port) {
			char ch;
			ssize_t r = recv(s.fds[i], &ch, 1, 0);
			assert_true(r == 0 || (r < 0 && (errno == ECONNRESET || errno == EAGAIN)));
		}
		close(s.fds[i]);
	}
	close(good);
	px_loop_free(loop);
	close(l);
}

/* 200 near-simultaneous connects are all accepted; no fd leaks. */
static void test_acceptor_200(void **state)
{
	(void)state;
	enum { N = 200 };
	tu_raise_nofile();
	int before = tu_count_fds();
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int l = st_listener(256, true, &a);
	struct acc s = { .stop_at = N };
	int c[N];

	assert_int_equal(px_acceptor_add(loop, l, acc_cb, &s), 0);
	for (int i = 0; i < N; i++)
		c[i] = st_connect_nb(&a);
	assert_false(tu_run_for(loop, 20000));
	assert_int_equal(s.ok, N);
	assert_int_equal(s.fails, 0);
	/* Every client was accepted exactly once. */
	for (int i = 0; i < N; i++) {
		int seen = 0;
		for (int j = 0; j < N; j++)
			seen += s.ports[j] == st_port(c[i]);
		assert_int_equal(seen, 1);
	}
	st_close_all(s.fds, N);
	st_close_all(c, N);
	px_loop_free(loop);
	close(l);
	assert_int_equal(tu_count_fds(), before);
}

/* Sustained EMFILE (injected) for 1 s: the callback hears of it once, the
 * acceptor does not spin, and it resumes by itself once accept works: the
 * connection that was pending all along gets accepted. */
static void test_acceptor_emfile_injected(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int l = st_listener(8, true, &a);
	struct acc s = { .close_fds = true };
	assert_int_equal(px_acceptor_add(loop, l, acc_cb, &s), 0);

	for (int round = 0; round < 2; round++) {
		int c = st_connect_nb(&a);
		assert_true(st_connected_within(c, 2000));
		wait_pending(l);
		int ok0 = s.ok, fails0 = s.fails;
		inj.all = EMFILE;
		inj.calls = 0;

		struct tu_idle idle;
		tu_idle_begin(&idle);
		double t0 = tu_now_ms();
		tu_run_for(loop, 1000);
		tu_idle_end(&idle);
		assert_true(inj.calls >= 1); /* the interposer ran */
		assert_int_equal(s.fails, fails0 + 1);
		assert_int_equal(s.last_err, -EMFILE);
		assert_true(s.peer_null_on_fail);
		assert_int_equal(s.ok, ok0);
		/* Backing off: a handful of attempts, not a spin (of accept
		 * calls, nor of the loop around a listener left armed). */
		assert_true(inj.calls < 50);
		tu_idle_check(&idle, TU_IDLE_MAX_WAITS, !tu_valgrind(), "acceptor backing off");

		/* The shortage ends; accepting resumes within ~2 s. */
		inj.all = 0;
		double t1 = tu_now_ms();
		s.stop_at = ok0 + 1;
		assert_false(tu_run_for(loop, 3000));
		assert_int_equal(s.ok, ok0 + 1);
		assert_int_equal(s.ports[ok0], st_port(c)); /* the one that waited */
		assert_true(s.ok_at_ms - t1 < 2000);
		assert_int_equal(s.fails, fails0 + 1); /* one report per episode */
		(void)t0;
		struct px_loop_stats st;
		assert_int_equal(px_loop_stats(loop, &st, sizeof(st)), 0);
		assert_int_equal(st.accepted, (uint64_t)s.ok);
		assert_true(st.accept_backoffs >= (uint64_t)round + 1);
		close(c);
	}
	px_loop_free(loop);
	close(l);
}

/* Real EMFILE: RLIMIT_NOFILE lowered so that accept fails.  One report, no
 * spin; the clients that waited through 800 ms of it are not left waiting:
 * their connections are closed (with the reserve descriptor) once the
 * shortage has lasted 250 ms; after the limit is raised again, new
 * connections are accepted. */
static void test_acceptor_emfile_real(void **state)
{
	(void)state;
	/* valgrind keeps its own descriptor limit and refuses to lower it. */
	if (tu_valgrind())
		skip();
	int before = tu_count_fds();
	px_loop *loop = tu_loop();
	struct sockaddr_in a;
	int l = st_listener(16, true, &a);
	struct acc s = { .close_fds = true };
	assert_int_equal(px_acceptor_add(loop, l, acc_cb, &s), 0);
	int c[4];
	for (int i = 0; i < 4; i++)
		c[i] = st_connect_nb(&a);
	wait_pending(l);

	struct rlimit old, low;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	/* Highest open fd + 1: no new descriptor can be made. */
	int fds[1024];
	int n = tu_list_fds(fds, 1024);
	assert_true(n > 0 && n < 1024);
	low = old;
	low.rlim_cur = (rlim_t)fds[n - 1] + 1;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	/* Fill the holes below it. */
	int holes[1024], nholes = 0;
	for (;;) {
		int h = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (h < 0) {
			assert_int_equal(errno, EMFILE);
			break;
		}
		assert_true(nholes < 1024);
		holes[nholes++] = h;
	}

	struct tu_idle idle;
	tu_idle_begin(&idle);
	tu_run_for(loop, 800);
	tu_idle_end(&idle);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	st_close_all(holes, nholes);
	assert_int_equal(s.ok, 0);
	assert_int_equal(s.fails, 1);
	assert_int_equal(s.last_err, -EMFILE);
	tu_idle_check(&idle, TU_IDLE_MAX_WAITS, !tu_valgrind(), "acceptor at EMFILE");
	for (int i = 0; i < 4; i++) {
		char b;
		ssize_t r = recv(c[i], &b, 1, MSG_DONTWAIT);
		if (!(r == 0 || (r < 0 && errno == ECONNRESET)))
			fail_msg("client %d still waits in the queue (recv %zd, %s)", i, r,
			         r < 0 ? strerror(errno) : "data");
	}

	/* Resumes: a new client gets through within ~2 s. */
	int late = st_connect_nb(&a);
	s.stop_at = 0;
	double t0 = tu_now_ms();
	bool got = false;
	while (!got && tu_now_ms() - t0 < 3000) {
		tu_run_for(loop, 100);
		for (int i = 0; i < s.ok; i++)
			if (s.ports[i] == st_port(late))
				got = true;
	}
	assert_true(got);
	assert_int_equal(s.fails, 1);
	st_close_all(c, 4);
	close(late);
	px_loop_free(loop);
	close(l);
	assert_int_equal(tu_count_fds(), before);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		TEST(test_accept_retries),
		TEST(test_acceptor_basic),
		TEST(test_acceptor_bad_input),
		TEST(test_acceptor_del_from_callback),
		TEST(test_acceptor_reset_before_accept),
		TEST(test_acceptor_200),
		TEST(test_acceptor_emfile_injected),
		TEST(test_acceptor_emfile_real),
	};
	return TU_RUN("test_acceptor", tests);
}
