#include <config.h>

#ifdef HAVE_EPOLL
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "pollux.h"
#include "backend.h"

/* epoll keeps the interest set in the kernel: only changes cost a syscall,
 * and ET and one-shot come for free. */

struct epoll_state {
	int epfd;
};

static void *ep_create(void)
{
	struct epoll_state *st = calloc(1, sizeof(*st));

	if (!st)
		return NULL;
	st->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (st->epfd < 0) {
		int err = errno;
		free(st);
		errno = err;
		return NULL;
	}
	return st;
}

static void ep_destroy(void *p)
{
	struct epoll_state *st = p;

	close(st->epfd);
	free(st);
}

static uint32_t ep_mask(unsigned k)
{
	uint32_t m = 0;

	if (k & PX_READ)
		m |= EPOLLIN | EPOLLRDHUP;
	if (k & PX_WRITE)
		m |= EPOLLOUT;
	if (k & PX_ET)
		m |= EPOLLET;
	if (k & PX_ONESHOT)
		m |= EPOLLONESHOT;
	return m;
}

static int ep_ctl(void *p, int fd, unsigned oldk, unsigned newk)
{
	struct epoll_state *st = p;
	struct epoll_event e = { .events = ep_mask(newk), .data.fd = fd };
	int op = !oldk ? EPOLL_CTL_ADD : !newk ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;

	if (epoll_ctl(st->epfd, op, fd, &e) == 0)
		return 0;
	switch (errno) {
	case ENOENT:
		/* Closed and reopened under the same number: the kernel forgot
		 * the old registration. */
		if (op == EPOLL_CTL_MOD)
			return epoll_ctl(st->epfd, EPOLL_CTL_ADD, fd, &e) == 0 ? 0 : -errno;
		if (op == EPOLL_CTL_DEL)
			return 0;
		break;
	case EBADF:
		if (op == EPOLL_CTL_DEL)
			return 0;
		break;
	}
	return -errno;
}

_Static_assert(EPOLLIN == PXR_IN && EPOLLOUT == PXR_OUT && EPOLLERR == PXR_ERR &&
                   EPOLLHUP == PXR_HUP && EPOLLRDHUP == PXR_RDHUP,
               "epoll's bits are the core's");

static int ep_wait(void *p, int timeout_ms, pxi_event *ev, int cap)
{
	struct epoll_state *st = p;
	int n = epoll_wait(st->epfd, ev, cap, timeout_ms);

	return n < 0 ? -errno : n;
}

const struct pxi_backend pxi_backend_epoll = {
	.name = "epoll",
	.native = PX_ET | PX_ONESHOT,
	/* The kernel hands out ready fds round-robin, so a bounded batch is
	 * fair and keeps memory per fd flat. */
	.batch = 1024,
	.create = ep_create,
	.destroy = ep_destroy,
	.ctl = ep_ctl,
	.wait = ep_wait,
};
#endif
