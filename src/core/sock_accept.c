#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "compat.h"
#include "core.h"

/* Robust accept, and accepting inside the loop. */

/* Bound on retries of connections that died in the queue, so that a
 * pathological source of errors cannot hang px_accept. */
#define ACCEPT_RETRIES 1000
/* Connections accepted per readiness notification (fairness). */
#define ACCEPT_BATCH 64
/* Back-off after a failure to accept: 5 ms, doubling while the failure
 * persists, up to 500 ms.  Out of descriptors, the acceptor also resumes as
 * soon as the loop deletes a watcher (a descriptor was probably freed), so
 * the delays matter only for descriptors freed behind the loop's back. */
#define BACKOFF_MIN_MS 5u
#define BACKOFF_MAX_MS 500u
/* Out of descriptors for this long: the pending connections are closed
 * (with the reserve descriptor) instead of being left to wait. */
#define PERSIST_MS 250u
/* A failure is reported at most once per episode and once per second. */
#define REPORT_GAP_MS 1000u

static bool retry_accept(int err)
{
	switch (err) {
	case EINTR:
	case ECONNABORTED:
	case EPROTO:
	case ENETDOWN:
	case ENOPROTOOPT:
	case EHOSTDOWN:
#ifdef ENONET
	case ENONET:
#endif
	case EHOSTUNREACH:
	case EOPNOTSUPP:
	case ENETUNREACH:
		return true;
	default:
		return false;
	}
}

/* accept + O_NONBLOCK + FD_CLOEXEC, without accept4. */
static int accept_plain(int lfd, struct sockaddr *sa, socklen_t *salen)
{
	int fd = accept(lfd, sa, salen), rc;

	if (fd < 0)
		return -1;
	if ((rc = pxi_fd_flags(fd, true)) < 0) {
		close(fd);
		errno = -rc;
		return -1;
	}
	return fd;
}

int px_accept(int listen_fd, struct sockaddr *sa, socklen_t *salen)
{
	if (listen_fd < 0)
		return -EBADF;
	if (sa && !salen)
		return -EINVAL;
	socklen_t len0 = salen ? *salen : 0;

	for (int i = 0; i < ACCEPT_RETRIES; i++) {
		int fd;
		if (salen)
			*salen = len0;
#if defined(HAVE_ACCEPT4) && PXC_SOCK_FLAGS
		fd = accept4(listen_fd, sa, salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0 && errno == ENOSYS)
			fd = accept_plain(listen_fd, sa, salen);
#else
		fd = accept_plain(listen_fd, sa, salen);
#endif
		if (fd >= 0)
			return fd;
		int err = errno;
		if (retry_accept(err))
			continue;
		if (err == EAGAIN || err == EWOULDBLOCK)
			return -EAGAIN;
		return -err;
	}
	return -EAGAIN; /* only dead connections so far: nothing ready */
}

/* ------------------------------------------------------------------------ */
/* Acceptors                                                                  */
/* ------------------------------------------------------------------------ */

struct acceptor {
	struct pxi_owner owner; /* first: the watcher's arg */
	px_accept_cb *cb;
	void *arg;
	int fd;
	int reserve;      /* an fd kept to relieve EMFILE, -1 when none */
	int64_t timer;    /* back-off timer that re-arms the listener, 0 when none */
	unsigned backoff; /* ms of the last back-off; 0 outside an episode */
	bool episode;     /* an accept failed and none worked since */
	bool told;        /* the episode has been reported */
	bool reported;    /* some failure has been reported, at reported_ms */
	bool *dead;       /* set by release while the accept batch runs */
	uint64_t since_ms;    /* start of the episode */
	uint64_t reported_ms; /* last report */
	/* On the loop's fd_waiters list while out of descriptors. */
	struct acceptor *wnext, **wprev;
};

static void unwait(px_loop *loop, struct acceptor *a)
{
	if (!a->wprev)
		return;
	*a->wprev = a->wnext;
	if (a->wnext)
		a->wnext->wprev = a->wprev;
	a->wnext = NULL;
	a->wprev = NULL;
	if (!loop->fd_waiters)
		loop->on_fd_release = NULL;
}

/* io.c: a watcher was deleted.  Every acceptor waiting for a descriptor
 * retries at the next iteration (its back-off timer becomes due now). */
static void fds_released(px_loop *loop)
{
	struct acceptor *a;

	while ((a = loop->fd_waiters) != NULL) {
		if (a->timer > 0)
			(void)pxi_timer_restart(loop, a->timer, 0);
		unwait(loop, a);
	}
}

static void wait_fd(px_loop *loop, struct acceptor *a)
{
	if (a->wprev)
		return;
	a->wnext = loop->fd_waiters;
	if (a->wnext)
		a->wnext->wprev = &a->wnext;
	a->wprev = (struct acceptor **)&loop->fd_waiters;
	loop->fd_waiters = a;
	loop->on_fd_release = fds_released;
}

static void acc_release(px_loop *loop, int fd, struct pxi_owner *self)
{
	struct acceptor *a = (struct acceptor *)self;

	(void)fd;
	unwait(loop, a);
	if (a->timer > 0)
		(void)px_timer_del(loop, a->timer);
	if (a->reserve >= 0)
		close(a->reserve);
	if (a->dead)
		*a->dead = true;
	free(a);
}

static int open_reserve(void)
{
	return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void acc_io_cb(px_loop *loop, int fd, unsigned revents, void *arg);

static void acc_rearm_cb(px_loop *loop, int64_t id, void *arg)
{
	struct acceptor *a = arg;

	(void)id;
	a->timer = 0;
	unwait(loop, a);
	if (a->reserve < 0)
		a->reserve = open_reserve();
	if (px_io_mod(loop, a->fd, PX_READ) < 0) {
		/* Could not re-arm (ENOMEM from the backend): try again after the
		 * same back-off rather than stop accepting for good. */
		int64_t again = px_timer_add(loop, a->backoff, 0, acc_rearm_cb, a);
		if (again > 0)
			a->timer = again;
		return;
	}
	/* Accept now rather than after one more wait: the connections are
	 * queued already (an empty queue is one EAGAIN). */
	acc_io_cb(loop, a->fd, PX_READ, a);
}

/* Out of descriptors for a while: close the pending connections, up to a
 * batch, through the reserve descriptor's slot, so that their clients see
 * the connection closed at once instead of waiting in the queue. */
static void drop_pending(struct acceptor *a)
{
	for (int i = 0; i < ACCEPT_BATCH && a->reserve >= 0; i++) {
		close(a->reserve);
		int fd = px_accept(a->fd, NULL, NULL);
		if (fd >= 0)
			close(fd);
		a->reserve = open_reserve();
		if (fd < 0)
			break;
	}
}

/* A failure other than "nothing ready": stop listening for a while instead
 * of spinning on a listener that stays readable.  Returns true when the
 * caller should report it (once per episode, at most once a second). */
static bool acc_backoff(px_loop *loop, struct acceptor *a, int err)
{
	uint64_t now = px_loop_now(loop);
	bool nofd = err == -EMFILE || err == -ENFILE;

	loop->st.accept_backoffs++;
	if (!a->episode) {
		a->episode = true;
		a->told = false;
		a->since_ms = now;
	} else if (nofd && now - a->since_ms >= PERSIST_MS) {
		drop_pending(a);
	}
	/* An episode that starts less than a second after the last report is
	 * reported when it has lasted until then (short episodes at a high
	 * rate would otherwise make a report each). */
	bool report = !a->told && (!a->reported || now - a->reported_ms >= REPORT_GAP_MS);
	if (report) {
		a->told = true;
		a->reported = true;
		a->reported_ms = now;
	}
	a->backoff = a->backoff ? a->backoff * 2 : BACKOFF_MIN_MS;
	if (a->backoff > BACKOFF_MAX_MS)
		a->backoff = BACKOFF_MAX_MS;
	if (a->timer > 0) {
		(void)px_timer_del(loop, a->timer);
		a->timer = 0;
	}
	int64_t id = px_timer_add(loop, a->backoff, 0, acc_rearm_cb, a);
	if (id > 0) {
		a->timer = id;
		(void)px_io_mod(loop, a->fd, 0);
		if (nofd)
			wait_fd(loop, a);
	}
	/* Without a timer the listener stays armed: retrying at the loop's
	 * pace is better than never resuming. */
	return report;
}

static void acc_io_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct acceptor *a = arg;
	bool dead = false;

	(void)revents;
	a->dead = &dead;
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int c = px_accept(fd, (struct sockaddr *)&ss, &sl);
		if (c == -EAGAIN)
			break;
		if (c >= 0) {
			loop->st.accepted++;
			a->episode = false;
			a->backoff = 0;
			if (a->reserve < 0)
				a->reserve = open_reserve();
			a->cb(loop, fd, c, (struct sockaddr *)&ss, sl, a->arg);
			/* The callback may have deleted the acceptor (freeing a). */
			if (dead)
				return;
		} else {
			/* Anything else backs off (the listener is disarmed
			 * for a while): reported once per episode. */
			px_accept_cb *cb = a->cb;
			void *cbarg = a->arg;
			if (acc_backoff(loop, a, c))
				cb(loop, fd, c, NULL, 0, cbarg);
			if (dead)
				return;
			break;
		}
	}
	a->dead = NULL;
}

int px_acceptor_add(px_loop *loop, int listen_fd, px_accept_cb *cb, void *arg)
{
	int listening = 0, rc;
	socklen_t len = sizeof(listening);

	if (!loop || !cb)
		return -EINVAL;
	if (listen_fd < 0)
		return -EBADF;
	if (pxi_io_get(loop, listen_fd))
		return -EEXIST;
	if (getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
		return -errno;
	if (!listening)
		return -EINVAL;
	if ((rc = px_set_nonblock(listen_fd, 1)) < 0)
		return rc;

	struct acceptor *a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->owner.release = acc_release;
	a->cb = cb;
	a->arg = arg;
	a->fd = listen_fd;
	a->reserve = open_reserve(); /* -1 is tolerated: retried later */
	rc = pxi_io_add_owned(loop, listen_fd, PX_READ, acc_io_cb, &a->owner);
	if (rc < 0) {
		if (a->reserve >= 0)
			close(a->reserve);
		free(a);
		return rc;
	}
	return 0;
}

int px_acceptor_del(px_loop *loop, int listen_fd)
{
	if (!loop)
		return -EINVAL;
	if (listen_fd < 0)
		return -EBADF;
	struct pxi_owner *o = pxi_io_owner(loop, listen_fd);
	if (!o || o->release != acc_release)
		return -ENOENT;
	return px_io_del(loop, listen_fd);
}
