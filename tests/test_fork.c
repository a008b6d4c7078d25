/*
 * Fork
 * ----
 * A loop belongs to the process that created it.  After fork() the child
 * has a copy of every loop of the parent (same watchers, timers, send
 * queues, acceptors, and the same backend fds: with epoll, the child's epoll
 * fd is the SAME kernel object as the parent's, so its interest set is
 * shared).  In the child:
 *
 *  - It MAY create, run and free loops of its own (px_loop_new /
 *    px_loop_new_backend): they share nothing with the parent's loops.
 *  - It MAY px_loop_free an inherited loop, and should, to release its
 *    memory.  px_loop_free makes no system call that changes the kernel's
 *    state (no epoll_ctl: it only closes the child's copy of the epoll fd
 *    and frees memory; queued px_send data of the child's copy is discarded,
 *    never sent; callbacks are not called).  The parent's loop is not
 *    disturbed.
 *  - It MUST NOT do anything else with an inherited loop: no px_loop_run,
 *    px_io_add/mod/del, px_timer_*, px_send*, px_connect, px_acceptor_*.
 *    With epoll these edit or consume the parent's kernel interest set:
 *    px_io_del in the child removes the parent's registration, px_io_add or
 *    px_io_mod changes what the parent is told, and a child's px_loop_run
 *    steals edge-triggered and one-shot notifications from the parent.  With
 *    poll and select they act on the child's copy only, but both processes
 *    would then read, accept on and write to the same sockets.
 *  - Closing the child's copies of the watched fds (or exiting) does not
 *    affect the parent's watchers: the kernel keeps an epoll registration
 *    while any process holds the file open.
 *  - The loop's own fds are close-on-exec: after exec nothing of the loop
 *    remains.
 * The parent may go on using its loops as if fork had not happened.  The
 * same rules apply to a parent that wants to keep using a loop while a child
 * it forked from a callback runs (fork from a callback is allowed; the child
 * must not return into the loop: it should _exit or exec).
 *
 * Tests (per backend): a child creates and runs its own loop (timer and
 * socketpair io) while the parent's loop runs; a child frees the inherited
 * loop (no epoll_ctl, checked by the interposer) and the parent's level,
 * edge-triggered and one-shot watchers, timers, pending send queue and
 * acceptor all keep working after the child has exited.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "portable.h" /* config.h first */
#include "testutil.h"
#include "faultinj.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- children ------------------------------------------------------------------ */

/* Waits for pid up to timeout_ms; kills it (only this pid) if it is still
 * running.  Returns its exit status, or -1 if it was killed or died of a
 * signal. */
static int reap(pid_t pid, unsigned timeout_ms)
{
	int st;
	double end = tu_now_ms() + timeout_ms;

	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			fail_msg("waitpid(%d): %s", (int)pid, strerror(errno));
		if (tu_now_ms() > end) {
			kill(pid, SIGKILL);
			while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
				;
			fail_msg("child %d did not finish within %u ms (killed)", (int)pid,
			         timeout_ms);
		}
		tu_sleep_ms(5);
	}
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	print_message("child %d died of signal %d\n", (int)pid, WTERMSIG(st));
	return -1;
}

/* Child-side checks: no cmocka in the child, an exit code per failure. */
#define CHECK(cond, code)                                                       \
	do {                                                                    \
		if (!(cond)) {                                                  \
			dprintf(2, "child: %s failed (line %d)\n", #cond, __LINE__); \
			_exit(code);                                            \
		}                                                               \
	} while (0)

static pid_t spawn(int (*fn)(void *), void *arg)
{
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0)
		fail_msg("fork: %s", strerror(errno));
	if (pid == 0) {
		alarm(20);
		_exit(fn(arg));
	}
	return pid;
}

/* ---- a child's own loop ------------------------------------------------------- */

struct child_io {
	int n;
	size_t bytes;
};

static void child_io_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct child_io *c = arg;
	(void)revents;
	c->n++;
	c->bytes += tu_drain(fd);
	px_loop_stop(loop);
}

static void child_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	int *sv = arg;
	sv[2]++;
	/* The timer writes; the io watcher reads and stops the loop. */
	(void)tp_send(sv[1], "ping", 4, 0);
	(void)loop;
}

/* Creates, runs and frees a loop of its own: a timer, then socketpair io. */
static int child_own_loop(const char *want_backend)
{
	px_loop *l = px_loop_new();
	CHECK(l != NULL, 10);
	CHECK(strcmp(px_loop_backend(l), want_backend) == 0, 11);
	int sv[3] = { -1, -1, 0 };
	CHECK(tp_socketpair(AF_UNIX, SOCK_STREAM, 0, TP_NONBLOCK | TP_CLOEXEC, sv) == 0, 12);
	struct child_io c = {0};
	CHECK(px_io_add(l, sv[0], PX_READ, child_io_cb, &c) == 0, 13);
	double t0 = tu_now_ms();
	CHECK(px_timer_add(l, 30, 0, child_timer_cb, sv) > 0, 14);
	CHECK(px_loop_run(l, PX_RUN_DEFAULT) == 0, 15);
	CHECK(sv[2] == 1, 16);
	CHECK(c.n == 1 && c.bytes == 4, 17);
	CHECK(tu_now_ms() - t0 >= 30, 18);
	CHECK(px_io_del(l, sv[0]) == 0, 19);
	px_loop_free(l);
	close(sv[0]);
	close(sv[1]);
	return 0;
}

/* ---- the parent's side ----------------------------------------------------------- */

struct parent {
	int done_fd;   /* read end of the child's "finished" pipe */
	int status;    /* byte the child wrote, -1 none */
	int ticks;     /* repeating timer */
	struct tu_rec rec;
};

static void done_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct parent *p = arg;
	char b;
	(void)revents;
	if (read(fd, &b, 1) == 1)
		p->status = (unsigned char)b;
	px_io_del(loop, fd);
	px_loop_stop(loop);
}

/* Records the callback and drains the fd (level-triggered safe). */
static size_t drained_bytes;
static void rec_drain_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	tu_rec_cb(loop, fd, revents, arg);
	drained_bytes += tu_drain(fd);
}

static void tick_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	((struct parent *)arg)->ticks++;
}

struct own_args {
	const char *backend;
	int done_w;
	px_loop *inherited;
	bool free_inherited_first;
};

static int child_main_own(void *arg)
{
	struct own_args *a = arg;
	if (a->free_inherited_first) {
		long ctl = fi_calls(FI_EPOLL_CTL);
		px_loop_free(a->inherited);
		CHECK(fi_calls(FI_EPOLL_CTL) == ctl, 20);
	}
	int rc = child_own_loop(a->backend);
	char b = (char)rc;
	CHECK(write(a->done_w, &b, 1) == 1, 21);
	return rc;
}

/* A child runs a loop of its own while the parent's loop runs; afterwards
 * the parent's watchers and timers still work.  Twice: once with the child
 * leaving the inherited loop alone, once freeing it first. */
static void own_loop_case(bool free_inherited)
{
	px_loop *loop = tu_loop();
	int sv[2], done[2];
	struct parent p = { .status = -1 };

	drained_bytes = 0;
	tu_socketpair(sv);
	assert_int_equal(tp_pipe(done, TP_NONBLOCK | TP_CLOEXEC), 0);
	p.done_fd = done[0];
	assert_int_equal(px_io_add(loop, sv[0], PX_READ, rec_drain_cb, &p.rec), 0);
	assert_int_equal(px_io_add(loop, done[0], PX_READ, done_cb, &p), 0);
	assert_true(px_timer_add(loop, 5, 5, tick_cb, &p) > 0);
	/* One event before the fork. */
	tu_send1(sv[1]);
	assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
	assert_int_equal(tu_rec_count(&p.rec, sv[0]), 1);
	assert_int_equal(drained_bytes, 1);

	struct own_args a = { px_loop_backend(loop), done[1], loop, free_inherited };
	pid_t pid = spawn(child_main_own, &a);
	close(done[1]);
	/* The parent's loop runs while the child works; done_cb stops it. */
	tu_run_for(loop, 10000);
	int rc = reap(pid, 10000);
	assert_int_equal(p.status, 0);
	assert_int_equal(rc, 0);
	assert_true(p.ticks > 0);

	/* After the child has exited: io and timers still delivered. */
	int ticks = p.ticks;
	tu_send1(sv[1]);
	tu_run_for(loop, 60);
	assert_int_equal(tu_rec_count(&p.rec, sv[0]), 2);
	assert_int_equal(drained_bytes, 2);
	assert_true(p.ticks > ticks);

	assert_int_equal(px_io_del(loop, sv[0]), 0);
	px_loop_free(loop);
	close(done[0]);
	tu_close_pair(sv);
}

static void test_fork_child_own_loop(void **state)
{
	(void)state;
	own_loop_case(false);
}

static void test_fork_child_frees_then_own_loop(void **state)
{
	(void)state;
	own_loop_case(true);
}

/* ---- the child frees the inherited loop ----------------------------------------- */

struct full {
	px_loop *loop;
	int fds[8]; /* fds the child closes after freeing */
	int nfds;
	int done_w;
};

static int child_free_inherited(void *arg)
{
	struct full *f = arg;
	long ctl = fi_calls(FI_EPOLL_CTL);
	long snd = fi_calls(FI_SENDMSG) + fi_calls(FI_SEND) + fi_calls(FI_WRITEV);
	px_loop_free(f->loop);
	CHECK(fi_calls(FI_EPOLL_CTL) == ctl, 30); /* no DEL on the shared set */
	CHECK(fi_calls(FI_SENDMSG) + fi_calls(FI_SEND) + fi_calls(FI_WRITEV) == snd, 31);
	for (int i = 0; i < f->nfds; i++)
		close(f->fds[i]);
	/* Let the parent be in its wait meanwhile. */
	tu_sleep_ms(30);
	char b = 0;
	CHECK(write(f->done_w, &b, 1) == 1, 32);
	return 0;
}

struct acc_rec {
	int n;
	int fd;
};

static void acc_cb(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                   socklen_t plen, void *arg)
{
	(void)lfd;
	(void)peer;
	(void)plen;
	struct acc_rec *a = arg;
	if (cfd >= 0) {
		a->n++;
		if (a->fd >= 0)
			close(a->fd);
		a->fd = cfd;
		px_loop_stop(loop);
	}
}

struct drain_rec {
	int n;
};

static void drained_cb(px_loop *loop, int fd, int status, void *arg)
{
	(void)fd;
	if (status == 0)
		((struct drain_rec *)arg)->n++;
	px_loop_stop(loop);
}

static void reader_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	(void)revents;
	*(size_t *)arg += tu_drain(fd);
}

static void test_fork_child_frees_inherited(void **state)
{
	(void)state;
	drained_bytes = 0;
	px_loop *loop = tu_loop();
	int lvl[2], et[2], one[2], snd[2], done[2];
	struct parent p = { .status = -1 };
	struct acc_rec ar = { 0, -1 };
	struct drain_rec dr = {0};

	tu_socketpair(lvl);
	tu_socketpair(et);
	tu_socketpair(one);
	tu_socketpair(snd);
	assert_int_equal(tp_pipe(done, TP_NONBLOCK | TP_CLOEXEC), 0);
	assert_int_equal(px_io_add(loop, lvl[0], PX_READ, rec_drain_cb, &p.rec), 0);
	assert_int_equal(px_io_add(loop, et[0], PX_READ | PX_ET, rec_drain_cb, &p.rec), 0);
	assert_int_equal(px_io_add(loop, one[0], PX_READ | PX_ONESHOT, rec_drain_cb, &p.rec), 0);
	assert_int_equal(px_io_add(loop, done[0], PX_READ, done_cb, &p), 0);
	assert_true(px_timer_add(loop, 5, 5, tick_cb, &p) > 0);
	/* A send queue with bytes pending (the peer is not reading yet). */
	assert_int_equal(px_io_add(loop, snd[0], 0, tu_never_cb, NULL), 0);
	static unsigned char big[1 << 20];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (unsigned char)i;
	assert_int_equal(px_send(loop, snd[0], big, sizeof big), 0);
	size_t pend = px_send_pending(loop, snd[0]);
	assert_true(pend > 0);
	assert_int_equal(px_send_notify(loop, snd[0], 0, drained_cb, &dr), 0);
	/* An acceptor. */
	int lfd = px_listen_tcp("127.0.0.1", 0, 0);
	assert_true(lfd >= 0);
	assert_int_equal(px_acceptor_add(loop, lfd, acc_cb, &ar), 0);

	/* The interposer sees the library's calls (else the child's "no
	 * epoll_ctl" check would prove nothing). */
	if (tu_is(loop, "epoll"))
		assert_true(fi_calls(FI_EPOLL_CTL) >= 6);
	assert_true(fi_calls(FI_SEND) + fi_calls(FI_SENDMSG) >= 1);

	struct full f = { loop, { lvl[0], et[0], one[0], snd[0], lfd }, 5, done[1] };
	pid_t pid = spawn(child_free_inherited, &f);
	close(done[1]);
	tu_run_for(loop, 10000);
	int rc = reap(pid, 10000);
	assert_int_equal(rc, 0);
	assert_int_equal(p.status, 0);
	assert_int_equal(p.rec.n, 0);

	/* Every watcher of the parent still works. */
	tu_send1(lvl[1]);
	tu_send1(et[1]);
	tu_send1(one[1]);
	tu_run_for(loop, 50);
	assert_int_equal(tu_rec_count(&p.rec, lvl[0]), 1);
	assert_int_equal(tu_rec_count(&p.rec, et[0]), 1);
	assert_int_equal(tu_rec_count(&p.rec, one[0]), 1);
	assert_int_equal(drained_bytes, 3);
	/* ET: a new edge is reported. */
	tu_send1(et[1]);
	tu_run_for(loop, 30);
	assert_int_equal(tu_rec_count(&p.rec, et[0]), 2);
	assert_int_equal(drained_bytes, 4);
	/* ONESHOT: disarmed since it fired; re-armed it fires again. */
	tu_send1(one[1]);
	tu_run_for(loop, 20);
	assert_int_equal(tu_rec_count(&p.rec, one[0]), 1);
	assert_int_equal(px_io_mod(loop, one[0], PX_READ | PX_ONESHOT), 0);
	tu_run_for(loop, 20);
	assert_int_equal(tu_rec_count(&p.rec, one[0]), 2);

	/* The send queue is flushed completely, in order. */
	size_t got = 0;
	assert_int_equal(px_io_add(loop, snd[1], PX_READ, reader_cb, &got), 0);
	tu_run_for(loop, 5000);
	tu_run_for(loop, 30);
	assert_int_equal(dr.n, 1);
	assert_int_equal(got, sizeof big);
	assert_int_equal(px_send_pending(loop, snd[0]), 0);

	/* The acceptor still accepts. */
	struct sockaddr_in sin;
	socklen_t sl = sizeof sin;
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
	int c = px_connect_tcp("127.0.0.1", ntohs(sin.sin_port), 2000);
	assert_true(c >= 0);
	tu_run_for(loop, 3000);
	assert_int_equal(ar.n, 1);
	close(ar.fd);
	close(c);

	px_loop_free(loop);
	close(lfd);
	close(done[0]);
	tu_close_pair(lvl);
	tu_close_pair(et);
	tu_close_pair(one);
	tu_close_pair(snd);
}

/* The loop's own fds do not survive exec (close-on-exec): the child's fd
 * table after fork holds them, marked FD_CLOEXEC. */
static void test_fork_loop_fds_cloexec(void **state)
{
	(void)state;
	int before[256], after[256];
	int nb = tu_list_fds(before, 256);
	px_loop *loop = tu_loop();
	int na = tu_list_fds(after, 256);
	assert_true(na <= 256 && nb <= 256);
	int seen = 0;
	for (int i = 0; i < na; i++) {
		bool old = false;
		for (int j = 0; j < nb; j++)
			old |= before[j] == after[i];
		if (old)
			continue;
		seen++;
		int fl = fcntl(after[i], F_GETFD);
		assert_true(fl >= 0);
		if (!(fl & FD_CLOEXEC))
			fail_msg("loop fd %d is not close-on-exec", after[i]);
	}
	/* epoll has at least its epoll fd to check (select and poll may have
	 * none of their own) */
	if (tu_is(loop, "epoll"))
		assert_true(seen >= 1);
	px_loop_free(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_fork_child_own_loop),
		TU_TEST(test_fork_child_frees_then_own_loop),
		TU_TEST(test_fork_child_frees_inherited),
		TU_TEST(test_fork_loop_fds_cloexec),
	};
	return TU_RUN("test_fork", tests);
}
