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
/* Back-off after a failure to accept: 100 ms doubling up to 1 s. */
#define BACKOFF_MIN_MS 100u
#define BACKOFF_MAX_MS 1000u

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
	bool episode;     /* a failure has been reported and no accept worked since */
	bool *dead;       /* set by release while the accept batch runs */
};

static void acc_release(px_loop *loop, int fd, struct pxi_owner *self)
{
	struct acceptor *a = (struct acceptor *)self;

	(void)fd;
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

static void acc_rearm_cb(px_loop *loop, int64_t id, void *arg)
{
	struct acceptor *a = arg;

	(void)id;
	a->timer = 0;
	if (a->reserve < 0)
		a->reserve = open_reserve();
	if (px_io_mod(loop, a->fd, PX_READ) < 0) {
		/* Could not re-arm (ENOMEM from the backend): try again after the
		 * same back-off rather than stop accepting for good. */
		int64_t again = px_timer_add(loop, a->backoff, 0, acc_rearm_cb, a);
		if (again > 0)
			a->timer = again;
	}
}

/* Out of descriptors: give the oldest pending connection a clean close
 * instead of leaving it to hang, using the reserve fd's slot. */
static void drop_one(struct acceptor *a)
{
	if (a->reserve < 0)
		return;
	close(a->reserve);
	a->reserve = -1;
	int fd = px_accept(a->fd, NULL, NULL);
	if (fd >= 0)
		close(fd);
	a->reserve = open_reserve();
}

/* A failure other than "nothing ready": stop listening for a while instead
 * of spinning on a listener that stays readable.  Returns true when the
 * caller should report it (once per episode). */
static bool acc_backoff(px_loop *loop, struct acceptor *a, int err)
{
	bool report = !a->episode;

	loop->st.accept_backoffs++;
	/* Only a failure that persists past the first back-off costs a pending
	 * connection: a brief shortage loses nobody. */
	if ((err == -EMFILE || err == -ENFILE) && a->episode)
		drop_one(a);
	a->episode = true;
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
