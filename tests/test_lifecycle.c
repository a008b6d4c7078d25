/* Regression tests for defects in the life cycle of watchers, timers and
 * connects: one test per defect, each written against the public contract
 * (include/pollux.h, API.md), so that it fails where the defect exists and
 * passes once the library is fixed.
 *
 *  1. A deleted and closed fd whose file lives on (dup, fork, SCM_RIGHTS)
 *     must not fire for a new file at the same number, nor wake the loop;
 *     closed before px_io_del (the documented but costly order), its lost
 *     registration must not either, and the other watchers keep working.
 *  2. A change the kernel refuses, reported while more fds are ready than a
 *     wait returns, must not write past the event array (ASan catches it).
 *  3. px_io_add of a regular file is -EPERM on epoll whatever the number's
 *     history.
 *  4. A repeating timer survives a failed allocation of its re-arming.
 *  5. px_io_add of a closed fd is -EBADF on every backend.
 *  6. px_connect_tcp with a 0 ms deadline still tries to connect.
 *
 * Links faultinj.c (realloc failure injection, test 4).  Runs on the backend
 * named by $POLLUX_BACKEND, like the other programs. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "portable.h" /* config.h first */
#include "testutil.h"
#include "faultinj.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef HAVE_SYS_EVENTFD_H
#include <sys/eventfd.h>
#endif
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* "-EPERM", "0", ... for the messages. */
static const char *rc_name(int rc)
{
	static char buf[4][32];
	static int k;
	char *b = buf[k++ % 4];
	const char *e = rc < 0 ? tp_errname(-rc) : NULL;
	if (e)
		snprintf(b, sizeof buf[0], "-%s", e);
	else
		snprintf(b, sizeof buf[0], "%d", rc);
	return b;
}

/* ---- who keeps a file alive after close ---------------------------------- */

enum hold_kind { HOLD_DUP, HOLD_FORK, HOLD_SCM, HOLD_N };
static const char *const hold_name[HOLD_N] = { "dup", "fork", "scm_rights" };

struct holder {
	enum hold_kind kind;
	int fd;    /* dup / scm: the copy; fork: the write end the child waits on */
	pid_t pid; /* fork: the child */
};

/* A copy of fd received over a unix socket. */
static int pass_fd(int fd)
{
	int s[2], got = -1;
	char c = 'x';
	struct iovec iov = { &c, 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
	                    .msg_controllen = sizeof u.buf };

	assert_int_equal(tp_socketpair(AF_UNIX, SOCK_DGRAM, 0, TP_CLOEXEC, s), 0);
	memset(&u, 0, sizeof u);
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof fd);
	assert_int_equal(sendmsg(s[0], &m, 0), 1);
	memset(&u, 0, sizeof u);
	m.msg_controllen = sizeof u.buf;
	assert_int_equal(tp_recvmsg_cloexec(s[1], &m, 0), 1);
	cm = CMSG_FIRSTHDR(&m);
	assert_non_null(cm);
	assert_int_equal(cm->cmsg_type, SCM_RIGHTS);
	memcpy(&got, CMSG_DATA(cm), sizeof got);
	close(s[0]);
	close(s[1]);
	assert_true(got >= 0 && got != fd);
	return got;
}

static void hold_start(struct holder *h, enum hold_kind kind, int fd)
{
	h->kind = kind;
	h->pid = -1;
	switch (kind) {
	case HOLD_DUP:
		h->fd = tp_dup_cloexec(fd, 0);
		assert_true(h->fd >= 0);
		break;
	case HOLD_SCM:
		h->fd = pass_fd(fd);
		break;
	default: {
		/* The child holds copies of every fd until told to exit. */
		int p[2];
		assert_int_equal(tp_pipe(p, TP_CLOEXEC), 0);
		fflush(stdout);
		h->pid = fork();
		assert_true(h->pid >= 0);
		if (h->pid == 0) {
			char c;
			close(p[1]);
			while (read(p[0], &c, 1) < 0 && errno == EINTR)
				;
			/* Not _exit: under valgrind the child's exit would check
			 * the parent's heap for leaks, and fail on them. */
			raise(SIGKILL);
		}
		close(p[0]);
		h->fd = p[1];
		break;
	}
	}
}

static void hold_end(struct holder *h)
{
	close(h->fd);
	if (h->pid > 0) {
		int st;
		assert_int_equal(waitpid(h->pid, &st, 0), h->pid);
		assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL); /* its normal end */
	}
}

/* ---- new files for a reused number --------------------------------------- */

enum nf_kind { NF_SOCKET, NF_PIPE, NF_REGFILE, NF_UDP, NF_EVENTFD, NF_N };
static const char *const nf_name[NF_N] = { "socketpair", "pipe", "regular file", "udp",
	                                   "eventfd" };

/* Whether this system has the kind (eventfd: Linux, FreeBSD 13+, NetBSD 10,
 * illumos); says once per program why a variant is skipped when not. */
static bool nf_have(enum nf_kind kind)
{
#ifndef HAVE_SYS_EVENTFD_H
	static bool said;
	if (kind == NF_EVENTFD) {
		if (!said)
			printf("# skipped: the eventfd variants (this system has no eventfd; "
			       "the other file kinds are tested)\n");
		said = true;
		return false;
	}
#else
	(void)kind;
#endif
	return true;
}

/* A new file with nothing to read (a regular file is always ready on select
 * and poll), at the lowest free number; *aux: a second fd to close, or -1.
 * The fd to watch comes first among the numbers the call takes. */
static int nf_open(enum nf_kind kind, int *aux)
{
	int p[2], fd = -1;

	*aux = -1;
	switch (kind) {
	case NF_SOCKET:
		tu_socketpair(p);
		fd = p[0] < p[1] ? p[0] : p[1];
		*aux = p[0] < p[1] ? p[1] : p[0];
		break;
	case NF_PIPE:
		assert_int_equal(tp_pipe(p, TP_NONBLOCK | TP_CLOEXEC), 0);
		fd = p[0]; /* the read end: nothing written */
		*aux = p[1];
		break;
	case NF_REGFILE:
		fd = tu_regfile_at(-1);
		break;
	case NF_UDP:
		fd = tp_socket(AF_INET, SOCK_DGRAM, 0, TP_NONBLOCK | TP_CLOEXEC);
		break;
	default:
#ifdef HAVE_SYS_EVENTFD_H
		fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
#else
		fail_msg("nf_open(eventfd) without eventfd"); /* nf_have() said no */
#endif
		break;
	}
	if (fd < 0)
		fail_msg("new %s: %s", nf_name[kind], strerror(errno));
	return fd;
}

/* A readable socket registered at number *n (the lower of a fresh pair, so
 * the lowest free number); returns the peer.  One iteration delivers it. */
static int readable_watcher(px_loop *loop, int *n, struct tu_rec *r)
{
	int sv[2];

	tu_socketpair(sv);
	*n = sv[0] < sv[1] ? sv[0] : sv[1];
	int peer = sv[0] < sv[1] ? sv[1] : sv[0];
	assert_int_equal(px_io_add(loop, *n, PX_READ, tu_rec_cb, r), 0);
	tu_send1(peer); /* never read */
	tu_nowait(loop, 1);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->fd[0], *n);
	assert_int_equal(r->rev[0], PX_READ);
	return peer;
}

/* PX_RUN_ONCE iterations until a timer of ms fires (at most 20): 1 when
 * nothing else wakes the loop. */
static int iterations_until_timer(px_loop *loop, unsigned ms)
{
	int fired = 0, iters = 0;

	assert_true(px_timer_add(loop, ms, 0, tu_count_timer_cb, &fired) > 0);
	while (!fired && iters < 20) {
		assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
		iters++;
	}
	assert_int_equal(fired, 1);
	return iters;
}

/* ---- 1. deleted + closed fd with a live dup: silent for the new file ----- */

#define REUSE_ITERS 50

/* One variant; returns false (and says why) when the contract was broken. */
static bool reuse_variant(enum hold_kind hk, enum nf_kind nk, bool by_dup2)
{
	px_loop *loop = tu_loop();
	struct tu_rec *r = calloc(1, sizeof *r), *r2 = calloc(1, sizeof *r2);
	struct holder h;
	int n, aux = -1, nfd = -1;
	bool ok = true, epoll = tu_is(loop, "epoll");
	char what[96];

	assert_non_null(r);
	assert_non_null(r2);
	snprintf(what, sizeof what, "%s/%s/%s", hold_name[hk], nf_name[nk],
	         by_dup2 ? "dup2" : "lowest");
	int peer = readable_watcher(loop, &n, r);
	hold_start(&h, hk, n);
	if (by_dup2) /* opened elsewhere, then dup2'ed over the old number */
		nfd = nf_open(nk, &aux);
	assert_int_equal(px_io_del(loop, n), 0);
	if (by_dup2) {
		assert_int_equal(tp_dup_to(nfd, n, TP_CLOEXEC), n); /* closes the old fd */
		close(nfd);
	} else {
		close(n);
		nfd = nf_open(nk, &aux);
		if (nfd != n)
			fail_msg("%s: the new file got fd %d, not the lowest free %d", what, nfd, n);
	}

	bool regfile = nk == NF_REGFILE;
	int want_rc = regfile && epoll ? -EPERM : 0;
	int rc = px_io_add(loop, n, PX_READ, tu_rec_cb, r2);
	if (rc != want_rc) {
		printf("# %s: px_io_add of the new file = %s, want %s\n", what, rc_name(rc),
		       rc_name(want_rc));
		ok = false;
	}
	for (int i = 0; i < REUSE_ITERS; i++) {
		r2->iter = i;
		assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	}
	/* select and poll: a regular file is ready at every iteration. */
	int want_n = regfile && !epoll ? REUSE_ITERS : 0;
	int bad_rev = 0;
	for (int i = 0; i < r2->n; i++)
		bad_rev += r2->fd[i] != n || r2->rev[i] != PX_READ;
	if (r2->n != want_n || bad_rev) {
		printf("# %s: the new watcher got %d callbacks in %d iterations (want %d), "
		       "first revents 0x%x\n",
		       what, r2->n, REUSE_ITERS, want_n, r2->n ? r2->rev[0] : 0);
		ok = false;
	}
	assert_int_equal(r->n, 1); /* the old watcher: nothing after px_io_del */

	if (rc == 0)
		assert_int_equal(px_io_del(loop, n), 0);
	px_loop_free(loop);
	close(n);
	if (aux >= 0)
		close(aux);
	close(peer);
	hold_end(&h);
	free(r);
	free(r2);
	return ok;
}

static void test_deleted_dup_fd_silent_for_new_file(void **state)
{
	(void)state;
	int bad = 0, total = 0;

	for (int hk = 0; hk < HOLD_N; hk++)
		for (int nk = 0; nk < NF_N; nk++)
			for (int d = 0; d < 2 && nf_have((enum nf_kind)nk); d++) {
				total++;
				bad += !reuse_variant((enum hold_kind)hk, (enum nf_kind)nk, d);
			}
	if (bad)
		fail_msg("%d of %d variants broke the contract (see the # lines)", bad, total);
}

/* ---- 1b. ... nor wakes the loop when nothing is re-added ----------------- */

static void test_deleted_dup_fd_no_early_wakeup(void **state)
{
	(void)state;
	int bad = 0;

	for (int hk = 0; hk < HOLD_N; hk++) {
		px_loop *loop = tu_loop();
		struct tu_rec *r = calloc(1, sizeof *r);
		struct holder h;
		int n;

		assert_non_null(r);
		int peer = readable_watcher(loop, &n, r);
		hold_start(&h, (enum hold_kind)hk, n);
		assert_int_equal(px_io_del(loop, n), 0);
		close(n);
		/* PX_RUN_ONCE waits for an event or a due timer: nothing but
		 * the timer is registered, so one iteration is the timer's. */
		int iters = iterations_until_timer(loop, 50);
		assert_int_equal(r->n, 1); /* no io callback after px_io_del */
		if (iters != 1) {
			printf("# %s: %d PX_RUN_ONCE iterations before the 50 ms timer fired "
			       "(woken by the deleted fd), want 1\n",
			       hold_name[hk], iters);
			bad++;
		}
		px_loop_free(loop);
		close(peer);
		hold_end(&h);
		free(r);
	}
	if (bad)
		fail_msg("%d of %d holders woke the loop early", bad, (int)HOLD_N);
}

/* ---- 1c. closed before px_io_del, a copy alive: a lost registration ----- */

/* The documented but expensive order: close, then px_io_del.  On epoll the
 * kernel keeps the registration of the file that lives on, and nothing can
 * name it any more.  It must neither wake the loop for long nor reach the
 * watcher of a new file at that number; other watchers, a fired one-shot
 * among them, must keep working (the loop replaces its kernel set). */
static void closed_before_del(enum hold_kind hk, bool reuse_at_once)
{
	px_loop *loop = tu_loop();
	struct tu_rec *r = calloc(1, sizeof *r), *r2 = calloc(1, sizeof *r2);
	struct tu_rec *ro = calloc(1, sizeof *ro);
	struct holder h;
	int n, other[2], one[2], aux = -1, nfd = -1;

	assert_non_null(r);
	assert_non_null(r2);
	assert_non_null(ro);
	tu_socketpair(other);
	tu_socketpair(one);
	assert_int_equal(px_io_add(loop, other[0], PX_READ, tu_rec_cb, ro), 0);
	/* A one-shot that fires before the set is replaced, re-armed after. */
	assert_int_equal(px_io_add(loop, one[0], PX_READ | PX_ONESHOT, tu_rec_cb, ro), 0);
	tu_send1(one[1]);
	int peer = readable_watcher(loop, &n, r); /* also delivers the one-shot */
	assert_int_equal(tu_rec_count(ro, one[0]), 1);
	hold_start(&h, hk, n);

	close(n); /* the wrong order */
	assert_int_equal(px_io_del(loop, n), 0);
	if (reuse_at_once) {
		/* The number is taken again before any wait: the new file's
		 * watcher must not get the lost registration's events. */
		nfd = nf_open(NF_PIPE, &aux); /* nothing to read */
		assert_int_equal(nfd, n);
		assert_int_equal(px_io_add(loop, n, PX_READ, tu_rec_cb, r2), 0);
		tu_nowait(loop, 20);
		assert_int_equal(r2->n, 0);
	} else {
		int iters = iterations_until_timer(loop, 30);
		/* The lost registration may wake one wait, which replaces the
		 * set (the loop's own fd may then take any free number). */
		if (iters > 2)
			fail_msg("%s: %d iterations before a 30 ms timer: the loop spins on a "
			         "lost registration", hold_name[hk], iters);
	}
	assert_int_equal(r->n, 1);
	assert_int_equal(ro->n, 1);

	/* Everything else still works: the new file, the other watcher, the
	 * one-shot re-armed. */
	if (reuse_at_once)
		assert_int_equal(write(aux, "x", 1), 1);
	tu_send1(other[1]);
	assert_int_equal(px_io_mod(loop, one[0], PX_READ | PX_ONESHOT), 0);
	tu_nowait(loop, 1);
	if (reuse_at_once) {
		assert_int_equal(r2->n, 1);
		assert_int_equal(r2->rev[0], PX_READ);
	}
	assert_int_equal(tu_rec_count(ro, other[0]), 1);
	assert_int_equal(tu_rec_count(ro, one[0]), 2);

	px_loop_free(loop);
	if (nfd >= 0)
		close(nfd);
	if (aux >= 0)
		close(aux);
	close(peer);
	tu_close_pair(other);
	tu_close_pair(one);
	hold_end(&h);
	free(r);
	free(r2);
	free(ro);
}

static void test_closed_before_del_copy_alive(void **state)
{
	(void)state;

	for (int hk = 0; hk < HOLD_N; hk++) {
		closed_before_del((enum hold_kind)hk, true);
		closed_before_del((enum hold_kind)hk, false);
	}
}

/* ---- px_io_close: delete and close, no epoll_ctl ------------------------ */

static bool fd_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

static void test_io_close_contract(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct tu_rec *r = calloc(1, sizeof *r);
	int sv[2], n;

	assert_non_null(r);
	tu_socketpair(sv);
	assert_int_equal(px_io_close(NULL, sv[0]), -EINVAL);
	assert_int_equal(px_io_close(loop, -1), -EBADF);
	assert_int_equal(px_io_close(loop, sv[0]), -ENOENT);
	assert_true(fd_open(sv[0])); /* nothing closed on error */

	int peer = readable_watcher(loop, &n, r);
	long ctl0 = fi_calls(FI_EPOLL_CTL);
	assert_int_equal(px_io_close(loop, n), 0);
	/* No system call but the close on any backend. */
	assert_int_equal(fi_calls(FI_EPOLL_CTL), ctl0);
	assert_false(fd_open(n));
	assert_int_equal(px_io_del(loop, n), -ENOENT);
	tu_nowait(loop, 5);
	assert_int_equal(r->n, 1);

	/* The number is free for a new registration, which works. */
	int p[2];
	assert_int_equal(tp_pipe(p, TP_NONBLOCK | TP_CLOEXEC), 0);
	assert_int_equal(p[0], n);
	assert_int_equal(px_io_add(loop, n, PX_READ, tu_rec_cb, r), 0);
	tu_nowait(loop, 3);
	assert_int_equal(r->n, 1);
	assert_int_equal(write(p[1], "x", 1), 1);
	tu_nowait(loop, 1);
	assert_int_equal(r->n, 2);
	assert_int_equal(r->fd[1], n);
	assert_int_equal(r->rev[1], PX_READ);
	assert_int_equal(px_io_close(loop, n), 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0); /* nothing left */

	px_loop_free(loop);
	close(p[1]);
	close(peer);
	tu_close_pair(sv);
	free(r);
}

/* The precondition broken: a copy of the file lives on.  The cost changes
 * (a rebuilt set), never what watchers see. */
static void test_io_close_copy_alive(void **state)
{
	(void)state;

	for (int hk = 0; hk < HOLD_N; hk++) {
		px_loop *loop = tu_loop();
		struct tu_rec *r = calloc(1, sizeof *r), *r2 = calloc(1, sizeof *r2);
		struct tu_rec *ro = calloc(1, sizeof *ro);
		struct holder h;
		int n, other[2], aux = -1;

		assert_non_null(r);
		assert_non_null(r2);
		assert_non_null(ro);
		tu_socketpair(other);
		assert_int_equal(px_io_add(loop, other[0], PX_READ, tu_rec_cb, ro), 0);
		int peer = readable_watcher(loop, &n, r);
		hold_start(&h, (enum hold_kind)hk, n);
		assert_int_equal(px_io_close(loop, n), 0);

		int nfd = nf_open(NF_PIPE, &aux); /* nothing to read */
		assert_int_equal(nfd, n);
		assert_int_equal(px_io_add(loop, n, PX_READ | (hk == HOLD_FORK ? PX_ET : 0u),
		                           tu_rec_cb, r2), 0);
		int iters = iterations_until_timer(loop, 30);
		if (iters > 2)
			fail_msg("%s: %d iterations before a 30 ms timer: the loop spins on a "
			         "lost registration", hold_name[hk], iters);
		assert_int_equal(r->n, 1);
		assert_int_equal(r2->n, 0);
		assert_int_equal(ro->n, 0);

		assert_int_equal(write(aux, "x", 1), 1);
		tu_send1(other[1]);
		tu_nowait(loop, 1);
		assert_int_equal(r2->n, 1);
		assert_int_equal(r2->rev[0], PX_READ);
		assert_int_equal(ro->n, 1);

		px_loop_free(loop);
		close(nfd);
		close(aux);
		close(peer);
		tu_close_pair(other);
		hold_end(&h);
		free(r);
		free(r2);
		free(ro);
	}
}

/* One number closed with a copy alive, re-registered, again and again: more
 * lost registrations at it than a watcher has tags, once between waits and
 * once from inside a callback while other events of the same wait are still
 * to be dispatched. */
#define CHURN 260

struct churn {
	int n;       /* the churned number */
	int peer;    /* the peer of the socket at n now */
	int copies[2 * CHURN];
	int ncopies;
	int strays;  /* callbacks for n: its sockets never have data */
	int left;    /* churns to make from the next callback */
	int others;  /* callbacks of the other watchers */
};

static void churn_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct churn *c = arg;

	(void)loop;
	(void)revents;
	if (fd == c->n)
		c->strays++;
}

/* The socket at n gets a byte (so its registration, lost by the close,
 * stays ready), a copy that lives on, px_io_close; a new socket takes n. */
static void churn_once(px_loop *loop, struct churn *c)
{
	int sv[2];

	tu_send1(c->peer);
	close(c->peer);
	c->copies[c->ncopies] = tp_dup_cloexec(c->n, 0);
	assert_true(c->copies[c->ncopies] >= 0);
	c->ncopies++;
	assert_int_equal(px_io_close(loop, c->n), 0);
	tu_socketpair(sv);
	if (sv[0] != c->n) { /* the number is free: dup3 puts the socket there */
		assert_int_equal(tp_dup_to(sv[0], c->n, TP_CLOEXEC), c->n);
		close(sv[0]);
	}
	c->peer = sv[1];
	assert_int_equal(px_io_add(loop, c->n, PX_READ, churn_cb, c), 0);
}

static void churn_other_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct churn *c = arg;
	char b;

	(void)revents;
	c->others++;
	assert_int_equal(read(fd, &b, 1), 1);
	for (; c->left > 0; c->left--)
		churn_once(loop, c);
}

static void test_io_close_tags_run_out(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	struct churn *c = calloc(1, sizeof *c);
	int others[4][2], sv[2];

	assert_non_null(c);
	for (int i = 0; i < 4; i++) {
		tu_socketpair(others[i]);
		assert_int_equal(px_io_add(loop, others[i][0], PX_READ, churn_other_cb, c), 0);
	}
	tu_socketpair(sv);
	c->n = sv[0];
	c->peer = sv[1];
	assert_int_equal(px_io_add(loop, c->n, PX_READ, churn_cb, c), 0);

	for (int i = 0; i < CHURN; i++) /* no wait between them */
		churn_once(loop, c);
	tu_nowait(loop, 3);
	assert_int_equal(c->strays, 0);

	/* From the first callback of a wait that reported all four others. */
	c->left = CHURN;
	for (int i = 0; i < 4; i++)
		tu_send1(others[i][1]);
	tu_nowait(loop, 1);
	assert_int_equal(c->left, 0);
	tu_nowait(loop, 3);
	assert_int_equal(c->strays, 0);
	/* Each other watcher called once: none lost, none twice. */
	assert_int_equal(c->others, 4);

	px_loop_free(loop);
	close(c->n);
	close(c->peer);
	for (int i = 0; i < c->ncopies; i++)
		close(c->copies[i]);
	for (int i = 0; i < 4; i++)
		tu_close_pair(others[i]);
	free(c);
}

/* ---- 3. -EPERM for a regular file does not depend on the number's past --- */

static void test_regular_file_eperm_any_history(void **state)
{
	(void)state;
	/* 0: a fresh number; 1: px_io_del'ed just before (no iteration);
	 * 2: an iteration between add and del; 3: an iteration between
	 * close and the re-add. */
	static const char *const how[] = { "fresh number", "deleted just before",
		                           "deleted after an iteration",
		                           "iteration between close and re-add" };
	int bad = 0;

	for (int v = 0; v < 4; v++) {
		px_loop *loop = tu_loop();
		struct tu_rec *r = calloc(1, sizeof *r), *r2 = calloc(1, sizeof *r2);
		int n, peer = -1, ka[2];

		assert_non_null(r);
		assert_non_null(r2);
		/* A disarmed watcher keeps the loop iterating when nothing else is
		 * registered. */
		tu_socketpair(ka);
		assert_int_equal(px_io_add(loop, ka[0], 0, tu_never_cb, NULL), 0);
		if (v == 0) {
			n = tu_regfile_at(-1);
		} else {
			int sv[2];
			tu_socketpair(sv);
			n = sv[0];
			peer = sv[1];
			assert_int_equal(px_io_add(loop, n, PX_READ, tu_rec_cb, r), 0);
			if (v == 2)
				tu_nowait(loop, 1);
			assert_int_equal(px_io_del(loop, n), 0);
			close(n);
			if (v == 3)
				tu_nowait(loop, 1);
			assert_int_equal(tu_regfile_at(n), n);
		}
		int want = tu_is(loop, "epoll") ? -EPERM : 0;
		int rc = px_io_add(loop, n, PX_READ, tu_rec_cb, r2);
		tu_nowait(loop, 3);
		if (rc != want) {
			printf("# %s: px_io_add of a regular file = %s, want %s\n", how[v],
			       rc_name(rc), rc_name(want));
			bad++;
		}
		/* Registered only where it is allowed, and then always ready. */
		int want_n = want == 0 ? 3 : 0;
		if (r2->n != want_n || (r2->n && r2->rev[0] != PX_READ)) {
			printf("# %s: %d callbacks in 3 iterations, want %d\n", how[v], r2->n, want_n);
			bad++;
		}
		assert_int_equal(r->n, 0);
		assert_int_equal(px_io_del(loop, n), rc == 0 ? 0 : -ENOENT);
		assert_int_equal(px_io_del(loop, ka[0]), 0);
		px_loop_free(loop);
		tu_close_pair(ka);
		close(n);
		if (peer >= 0)
			close(peer);
		free(r);
		free(r2);
	}
	if (bad)
		fail_msg("%d wrong results (see the # lines)", bad);
}

/* ---- 4. a repeating timer survives ENOMEM when it is re-armed ----------- */

#define FILL_MAX 70

struct filler {
	int k;                   /* timers to add */
	int64_t ids[FILL_MAX];   /* their ids (or -errno) */
	int64_t extra;           /* one more, added while allocations fail */
	int ran;
};

static void far_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)arg;
	fail_msg("timer %lld, due in an hour, fired", (long long)id);
}

/* Adds k far timers, then makes every allocation fail until the end of the
 * round, and adds one more. */
static void filler_cb(px_loop *loop, int64_t id, void *arg)
{
	struct filler *f = arg;

	(void)id;
	f->ran++;
	for (int i = 0; i < f->k; i++)
		f->ids[i] = px_timer_add(loop, 3600 * 1000, 0, far_timer_cb, NULL);
	fi_plan(FI_REALLOC, 0, -1, ENOMEM);
	f->extra = px_timer_add(loop, 3600 * 1000, 0, far_timer_cb, NULL);
}

static void test_repeat_timer_survives_enomem(void **state)
{
	(void)state;
	if (!fi_realloc_active()) {
		printf("# skipped: realloc is not interposed here (valgrind?), cannot fail it\n");
		skip();
	}
	int bad = 0;

	/* The timers of one round leave the heap before their callbacks run;
	 * the filler then adds k timers: for some k the heap is full exactly
	 * when the repeating timer goes back (k = 16, 32, 64 with a heap that
	 * starts at 16 and doubles), and that allocation fails. */
	for (int k = 1; k <= FILL_MAX; k++) {
		px_loop *loop = tu_loop();
		struct filler f = { .k = k };
		int ticks = 0, guard = 0;

		fi_reset();
		int64_t fid = px_timer_add(loop, 0, 0, filler_cb, &f);
		int64_t rid = px_timer_add(loop, 0, 1, tu_count_timer_cb, &ticks);
		assert_true(fid > 0 && rid > 0);
		int rc = px_loop_run(loop, PX_RUN_ONCE);
		fi_clear(FI_REALLOC);
		assert_int_equal(rc, 0);
		assert_int_equal(f.ran, 1);
		assert_int_equal(ticks, 1);
		for (int i = 0; i < k; i++)
			if (f.ids[i] <= 0)
				fail_msg("k=%d: px_timer_add #%d = %lld with allocations working", k, i,
				         (long long)f.ids[i]);
		if (f.extra <= 0 && f.extra != -ENOMEM)
			fail_msg("k=%d: px_timer_add while allocations fail = %lld, want an id or "
			         "-ENOMEM", k, (long long)f.extra);

		/* It must go on firing (every 1 ms); the guard bounds the wait. */
		int64_t gid = px_timer_add(loop, 500, 0, tu_count_timer_cb, &guard);
		assert_true(gid > 0);
		for (int it = 0; it < 1000 && ticks < 3 && !guard; it++)
			assert_int_equal(px_loop_run(loop, PX_RUN_ONCE), 0);
		if (ticks < 3) {
			printf("# k=%d: the repeating timer fired %d time(s) after the round "
			       "(%ld allocation(s) failed), want >= 2\n",
			       k, ticks - 1, fi_faults(FI_REALLOC));
			bad++;
		}

		/* Nothing else lost: every timer that was added is pending. */
		assert_int_equal(px_timer_del(loop, rid), 0);
		for (int i = 0; i < k; i++)
			assert_int_equal(px_timer_del(loop, f.ids[i]), 0);
		if (f.extra > 0)
			assert_int_equal(px_timer_del(loop, f.extra), 0);
		assert_int_equal(px_timer_del(loop, fid), -ENOENT);
		assert_int_equal(px_timer_del(loop, gid), guard ? -ENOENT : 0);
		px_loop_free(loop);
	}
	if (bad)
		fail_msg("the repeating timer was lost for %d fill level(s)", bad);
}

/* ---- 5. px_io_add of a closed fd: -EBADF on every backend --------------- */

static void test_io_add_closed_fd_ebadf(void **state)
{
	(void)state;
	px_loop *loop = tu_loop();
	int low[3][2], high[2], bad = 0;

	/* A few watchers, one at a high number: every number below it is
	 * inside the loop's fd table. */
	for (int i = 0; i < 3; i++) {
		tu_socketpair(low[i]);
		assert_int_equal(px_io_add(loop, low[i][0], PX_READ, tu_never_cb, NULL), 0);
	}
	int hi = tu_free_fd(200);
	tu_socketpair_at(high, hi);
	assert_int_equal(px_io_add(loop, hi, PX_READ, tu_never_cb, NULL), 0);
	tu_nowait(loop, 1);

	int closed = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(closed >= 0 && closed < hi);
	close(closed);
	int never = tu_free_fd(hi / 2); /* below hi, never opened by this test */
	int beyond = tu_free_fd(hi + 1000);
	assert_true(never < hi);
	const int cand[] = { closed, never, beyond };
	const char *const what[] = { "a closed low fd", "a never-open fd inside the table",
		                     "a never-open fd beyond the table" };
	for (int i = 0; i < 3; i++) {
		int rc = px_io_add(loop, cand[i], PX_READ, tu_never_cb, NULL);
		if (rc != -EBADF) {
			printf("# %s (%d): px_io_add = %s, want -EBADF\n", what[i], cand[i],
			       rc_name(rc));
			bad++;
		}
		/* On error nothing is registered. */
		int del = px_io_del(loop, cand[i]);
		if (rc != 0 && del != -ENOENT) {
			printf("# %s (%d): px_io_del after a failed add = %d, want -ENOENT\n",
			       what[i], cand[i], del);
			bad++;
		}
	}
	tu_nowait(loop, 2);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(px_io_del(loop, low[i][0]), 0);
		tu_close_pair(low[i]);
	}
	assert_int_equal(px_io_del(loop, hi), 0);
	tu_close_pair(high);
	px_loop_free(loop);
	if (bad)
		fail_msg("%d wrong results (see the # lines)", bad);
}

/* ---- 6. px_connect_tcp with timeout 0 tries to connect ------------------- */

static uint16_t local_port(int fd)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof sa;
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	return ntohs(sa.sin_port);
}

/* Whether a connection reaches the listener within 1 s (accepted, closed). */
static bool listener_sees(int lfd)
{
	struct pollfd p = { .fd = lfd, .events = POLLIN };
	int n;

	while ((n = poll(&p, 1, 1000)) < 0 && errno == EINTR)
		;
	if (n <= 0)
		return false;
	int c = px_accept(lfd, NULL, NULL);
	if (c >= 0)
		close(c);
	return c >= 0;
}

static void test_connect_tcp_zero_timeout_tries(void **state)
{
	(void)state;
	int lfd = px_listen_tcp("127.0.0.1", 0, 0);
	assert_true(lfd >= 0);
	uint16_t port = local_port(lfd);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

	/* The blocking helper with a 0 ms deadline starts the connect. */
	int c = tp_socket(AF_INET, SOCK_STREAM, 0, TP_CLOEXEC);
	assert_true(c >= 0);
	int rc = px_connect_timeout(c, (struct sockaddr *)&sa, sizeof sa, 0);
	if (rc != 0 && rc != -ETIMEDOUT)
		fail_msg("px_connect_timeout(listening port, 0) = %d, want 0 or -ETIMEDOUT", rc);
	assert_true(listener_sees(lfd));
	close(c);

	/* px_connect_tcp with a 0 ms deadline must at least try. */
	rc = px_connect_tcp("127.0.0.1", port, 0);
	bool seen = listener_sees(lfd);
	printf("# px_connect_tcp(127.0.0.1:%u, 0) = %s; listener saw a connection: %s\n",
	       (unsigned)port, rc_name(rc), seen ? "yes" : "no");
	if (rc >= 0) {
		struct sockaddr_in peer;
		socklen_t len = sizeof peer;
		assert_int_equal(getpeername(rc, (struct sockaddr *)&peer, &len), 0);
		assert_int_equal(ntohs(peer.sin_port), port);
		close(rc);
	} else if (rc != -ETIMEDOUT) {
		fail_msg("px_connect_tcp(listening port, 0) = %d, want an fd or -ETIMEDOUT", rc);
	}
	if (rc < 0 && !seen)
		fail_msg("px_connect_tcp(127.0.0.1:%u, 0) = %s without a connection attempt",
		         (unsigned)port, rc_name(rc));

	/* A port bound by a socket that does not listen: refused (or out of
	 * time), never anything else, from both calls. */
	int b = tp_socket(AF_INET, SOCK_STREAM, 0, TP_CLOEXEC);
	struct sockaddr_in bsa = { .sin_family = AF_INET };
	bsa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_true(b >= 0);
	assert_int_equal(bind(b, (struct sockaddr *)&bsa, sizeof bsa), 0);
	uint16_t closed_port = local_port(b);
	bsa.sin_port = htons(closed_port);
	c = tp_socket(AF_INET, SOCK_STREAM, 0, TP_CLOEXEC);
	assert_true(c >= 0);
	rc = px_connect_timeout(c, (struct sockaddr *)&bsa, sizeof bsa, 0);
	close(c);
	if (rc != -ECONNREFUSED && rc != -ETIMEDOUT)
		fail_msg("px_connect_timeout(closed port, 0) = %d", rc);
	rc = px_connect_tcp("127.0.0.1", closed_port, 0);
	if (rc != -ECONNREFUSED && rc != -ETIMEDOUT)
		fail_msg("px_connect_tcp(closed port, 0) = %d, want -ECONNREFUSED or -ETIMEDOUT",
		         rc);
	assert_int_equal(px_connect_tcp("127.0.0.1", closed_port, 5000), -ECONNREFUSED);
	close(b);
	close(lfd);
}

/* ---- 2. refused changes while more fds are ready than one wait returns -- */

#define NREADY 2200 /* more than a wait of 2,048 events returns */
#define NREFUSED 4  /* one is enough for ASan; more make a plain build trip too */

struct ready_count {
	int *n;
	unsigned *rev;
	int maxfd;
};

static void ready_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct ready_count *c = arg;

	(void)loop;
	if (fd < 0 || fd > c->maxfd)
		fail_msg("callback for fd %d, not a watched one", fd);
	c->n[fd]++;
	c->rev[fd] |= revents;
}

/* Last: under ASan the overflow ends the program. */
static void test_refused_change_many_ready(void **state)
{
	(void)state;
	long lim = tu_raise_nofile();
	if (lim < NREADY + 64) {
		printf("# skipped: RLIMIT_NOFILE hard limit %ld is too low for %d fds\n", lim,
		       NREADY + 64);
		skip();
	}
	px_loop *loop = tu_loop();
	bool epoll = tu_is(loop, "epoll");
	int (*pairs)[2] = calloc(NREADY / 2, sizeof *pairs);
	struct ready_count c = { 0 };
	struct tu_rec *rx = calloc(1, sizeof *rx);
	int xs[NREFUSED][2], rc[NREFUSED];

	assert_non_null(pairs);
	assert_non_null(rx);
	/* Both ends of each pair are readable and registered. */
	for (int i = 0; i < NREADY / 2; i++) {
		tu_socketpair(pairs[i]);
		tu_send1(pairs[i][0]);
		tu_send1(pairs[i][1]);
		for (int k = 0; k < 2; k++)
			if (pairs[i][k] > c.maxfd)
				c.maxfd = pairs[i][k];
	}
	c.n = calloc((size_t)c.maxfd + 1, sizeof *c.n);
	c.rev = calloc((size_t)c.maxfd + 1, sizeof *c.rev);
	assert_non_null(c.n);
	assert_non_null(c.rev);
	for (int i = 0; i < NREADY / 2; i++)
		for (int k = 0; k < 2; k++)
			assert_int_equal(px_io_add(loop, pairs[i][k], PX_READ, ready_cb, &c), 0);
	for (int j = 0; j < NREFUSED; j++) {
		tu_socketpair(xs[j]);
		assert_int_equal(px_io_add(loop, xs[j][0], PX_READ, tu_rec_cb, rx), 0);
	}
	tu_nowait(loop, 1);
	assert_int_equal(rx->n, 0);
	memset(c.n, 0, ((size_t)c.maxfd + 1) * sizeof *c.n);
	memset(c.rev, 0, ((size_t)c.maxfd + 1) * sizeof *c.rev);

	/* Each xs[j][0] now names a regular file, which epoll cannot watch:
	 * the change, made by the flush before the next wait, is refused. */
	for (int j = 0; j < NREFUSED; j++) {
		int x = xs[j][0];
		close(x);
		assert_int_equal(tu_regfile_at(x), x);
		rc[j] = px_io_mod(loop, x, PX_READ | PX_WRITE);
		if (!epoll || rc[j] != -EPERM) /* epoll may refuse at once (old mask stays) */
			assert_int_equal(rc[j], 0);
	}
	for (int it = 0; it < 8; it++) {
		rx->iter = it;
		assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
	}

	for (int j = 0; j < NREFUSED; j++) {
		int x = xs[j][0], nx = tu_rec_count(rx, x);
		unsigned rev = 0;
		for (int i = 0; i < rx->n; i++)
			if (rx->fd[i] == x)
				rev |= rx->rev[i];
		if (epoll && rc[j] == 0) {
			/* The refusal is told once, as PX_ERR; then it is disarmed. */
			if (nx != 1 || !(rev & PX_ERR))
				fail_msg("refused fd %d: %d callbacks (revents 0x%x), want 1 with PX_ERR",
				         x, nx, rev);
		} else if (epoll) {
			assert_int_equal(nx, 0);
		} else {
			assert_true(nx >= 1); /* a regular file is always ready */
		}
	}
	int missed = 0;
	for (int i = 0; i < NREADY / 2; i++)
		for (int k = 0; k < 2; k++) {
			int fd = pairs[i][k];
			if (c.n[fd] < 1 || c.rev[fd] != PX_READ) {
				if (missed++ < 5)
					printf("# fd %d: %d callbacks, revents 0x%x\n", fd, c.n[fd],
					       c.rev[fd]);
			}
		}
	if (missed)
		fail_msg("%d of %d ready watchers were not called with PX_READ", missed, NREADY);

	for (int i = 0; i < NREADY / 2; i++) {
		for (int k = 0; k < 2; k++)
			assert_int_equal(px_io_del(loop, pairs[i][k]), 0);
		tu_close_pair(pairs[i]);
	}
	for (int j = 0; j < NREFUSED; j++) {
		assert_int_equal(px_io_del(loop, xs[j][0]), 0);
		tu_close_pair(xs[j]);
	}
	px_loop_free(loop);
	free(pairs);
	free(c.n);
	free(c.rev);
	free(rx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_deleted_dup_fd_silent_for_new_file),
		TU_TEST(test_deleted_dup_fd_no_early_wakeup),
		TU_TEST(test_closed_before_del_copy_alive),
		TU_TEST(test_io_close_contract),
		TU_TEST(test_io_close_copy_alive),
		TU_TEST(test_io_close_tags_run_out),
		TU_TEST(test_regular_file_eperm_any_history),
		TU_TEST(test_repeat_timer_survives_enomem),
		TU_TEST(test_io_add_closed_fd_ebadf),
		TU_TEST(test_connect_tcp_zero_timeout_tries),
		TU_TEST(test_refused_change_many_ready),
	};
	return TU_RUN("test_lifecycle", tests);
}
