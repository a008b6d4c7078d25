#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

/* Non-blocking helpers and connects with a deadline (blocking and in-loop). */

int px_set_nonblock(int fd, int on)
{
	int flags, nflags;

	if (fd < 0)
		return -EBADF;
	flags = fcntl(fd, F_GETFL);
	if (flags < 0)
		return -errno;
	nflags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
	if (nflags != flags && fcntl(fd, F_SETFL, nflags) < 0)
		return -errno;
	return 0;
}

/* -EINVAL for a NULL address, or one too short for its family. */
static int check_addr(const struct sockaddr *sa, socklen_t salen)
{
	if (!sa || salen < (socklen_t)sizeof(sa_family_t))
		return -EINVAL;
	switch (sa->sa_family) {
	case AF_INET:
		return salen < (socklen_t)sizeof(struct sockaddr_in) ? -EINVAL : 0;
	case AF_INET6:
		return salen < (socklen_t)sizeof(struct sockaddr_in6) ? -EINVAL : 0;
	case AF_UNIX:
		return salen > (socklen_t)sizeof(struct sockaddr_un) ? -EINVAL : 0;
	default:
		return 0; /* the kernel judges the rest */
	}
}

/* -EBADF / -ENOTSOCK from the fd itself, -EINVAL for a listening socket. */
static int check_connectable(int fd)
{
	int listening = 0;
	socklen_t len = sizeof(listening);

	if (fd < 0)
		return -EBADF;
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
		return -errno;
	return listening ? -EINVAL : 0;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The outcome of a connect that poll() reported finished: 0 or -errno. */
static int connect_outcome(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return -errno;
	return err ? -err : 0;
}

int px_connect_timeout(int fd, const struct sockaddr *sa, socklen_t salen, int timeout_ms)
{
	int rc, flags;

	if ((rc = check_addr(sa, salen)) < 0)
		return rc;
	if ((rc = check_connectable(fd)) < 0)
		return rc;
	flags = fcntl(fd, F_GETFL);
	if (flags < 0)
		return -errno;
	if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -errno;

	/* The deadline is fixed before connecting: signals never extend it. */
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX
	                                   : mono_ns() + (uint64_t)timeout_ms * 1000000u;

	if (connect(fd, sa, salen) == 0) {
		rc = 0;
	} else if (errno != EINPROGRESS && errno != EINTR) {
		/* EINTR: the connect goes on asynchronously; wait for it. */
		rc = -errno;
	} else {
		for (;;) {
			int wait_ms = -1;
			if (deadline != UINT64_MAX) {
				uint64_t now = mono_ns();
				if (now >= deadline) {
					wait_ms = 0;
				} else {
					uint64_t left = deadline - now;
					uint64_t ms = left / 1000000u + (left % 1000000u != 0);
					wait_ms = ms > INT32_MAX ? INT32_MAX : (int)ms;
				}
			}
			struct pollfd p = { .fd = fd, .events = POLLOUT };
			int n = poll(&p, 1, wait_ms);
			if (n < 0) {
				if (errno == EINTR)
					continue; /* the deadline stays where it was */
				rc = -errno;
				break;
			}
			if (n == 0) {
				if (wait_ms == 0 || mono_ns() >= deadline) {
					rc = -ETIMEDOUT;
					break;
				}
				continue;
			}
			rc = (p.revents & POLLNVAL) ? -EBADF : connect_outcome(fd);
			break;
		}
	}

	if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags) < 0 && rc == 0)
		rc = -errno;
	return rc;
}

/* ------------------------------------------------------------------------ */
/* px_connect: the same inside the loop                                       */
/* ------------------------------------------------------------------------ */

struct conn {
	struct pxi_owner owner; /* first: the watcher's arg */
	px_connect_cb *cb;
	void *arg;
	int fd;
	int status;    /* the outcome to deliver from the timer, when finished */
	bool finished; /* connect() gave the outcome at once */
	int64_t timer; /* deadline or deferral timer, 0 when none */
};

static void conn_release(px_loop *loop, int fd, struct pxi_owner *self)
{
	struct conn *c = (struct conn *)self;

	(void)fd;
	/* Io owners are released before the loop frees its timers, so the
	 * timer can still be deleted here during px_loop_free. */
	if (c->timer > 0)
		(void)px_timer_del(loop, c->timer);
	free(c);
}

/* Unregisters fd (which frees c) and runs the user's callback. */
static void conn_finish(px_loop *loop, struct conn *c, int status)
{
	px_connect_cb *cb = c->cb;
	void *arg = c->arg;
	int fd = c->fd;

	(void)px_io_del(loop, fd); /* conn_release: c is gone after this */
	cb(loop, fd, status, arg);
}

static void conn_io_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)revents;
	conn_finish(loop, c, connect_outcome(c->fd));
}

/* Deferral (an outcome that connect() gave at once, reported from the next
 * iteration) or deadline: then the connect may have finished just now (io is
 * dispatched after timers in an iteration), so look once more before
 * reporting a timeout. */
static void conn_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	struct conn *c = arg;
	struct pollfd p = { .fd = c->fd, .events = POLLOUT };
	int status = c->status;

	(void)id;
	c->timer = 0; /* a fired one-shot: nothing to delete */
	if (!c->finished) {
		status = -ETIMEDOUT;
		if (poll(&p, 1, 0) == 1 && !(p.revents & POLLNVAL))
			status = connect_outcome(c->fd);
	}
	conn_finish(loop, c, status);
}

/* Errors of connect() that are an outcome of the attempt (reported through
 * the callback) rather than a mistake in the call (returned at once). */
static bool is_outcome_error(int err)
{
	switch (err) {
	case ECONNREFUSED:
	case ENETUNREACH:
	case EHOSTUNREACH:
	case ETIMEDOUT:
	case ECONNRESET:
	case ECONNABORTED:
	case ENETDOWN:
	case EHOSTDOWN:
	case EADDRNOTAVAIL:
	case EACCES:
	case EPERM:
	case ENOENT: /* AF_UNIX: nobody at that path */
	case EAGAIN: /* AF_UNIX: the listener's backlog is full */
		return true;
	default:
		return false;
	}
}

int px_connect(px_loop *loop, int fd, const struct sockaddr *sa, socklen_t salen,
               int timeout_ms, px_connect_cb *cb, void *arg)
{
	int rc;

	if (!loop || !cb)
		return -EINVAL;
	if ((rc = check_addr(sa, salen)) < 0)
		return rc;
	if (fd < 0)
		return -EBADF;
	if (pxi_io_get(loop, fd))
		return -EEXIST;
	if ((rc = check_connectable(fd)) < 0)
		return rc;
	if ((rc = px_set_nonblock(fd, 1)) < 0)
		return rc;

	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->owner.release = conn_release;
	c->cb = cb;
	c->arg = arg;
	c->fd = fd;

	/* Everything that can fail is done before connecting, so that no
	 * connect is left in flight when the caller is told it failed: the
	 * watcher (armed for PX_WRITE: the kernel looks at readiness only at
	 * the wait, by when the connect has started) and the timer (the
	 * deadline, or the deferral of an outcome that comes at once). */
	rc = pxi_io_add_owned(loop, fd, PX_WRITE, conn_io_cb, &c->owner);
	if (rc < 0) {
		free(c);
		return rc;
	}
	/* From here on, px_io_del frees c. */
	int64_t id = px_timer_add(loop, timeout_ms >= 0 ? (uint64_t)timeout_ms : UINT64_MAX, 0,
	                          conn_timer_cb, c);
	if (id < 0) {
		(void)px_io_del(loop, fd);
		return (int)id;
	}
	c->timer = id;

	if (connect(fd, sa, salen) == 0) {
		c->finished = true;
	} else if (errno == EINPROGRESS || errno == EINTR) {
		if (timeout_ms < 0) { /* no deadline */
			(void)px_timer_del(loop, c->timer);
			c->timer = 0;
		}
		return 0;
	} else if (is_outcome_error(errno)) {
		c->finished = true;
		c->status = -errno;
	} else {
		rc = -errno;
		(void)px_io_del(loop, fd);
		return rc;
	}
	/* Finished at once: report from the next iteration, never from inside
	 * px_connect.  The fd stays registered (disarmed) until then, so
	 * px_io_del still cancels.  Neither call allocates. */
	(void)px_io_mod(loop, fd, 0);
	(void)pxi_timer_restart(loop, c->timer, 0);
	return 0;
}
