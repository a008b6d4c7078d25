#include <config.h>

#ifdef HAVE_EPOLL
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "pollux.h"
#include "backend.h"

/* epoll keeps the interest set in the kernel: only changes cost a syscall,
 * and ET and one-shot come for free.  Its quirks, all handled here:
 *  - a registration belongs to a file, not to a number: close() drops it
 *    only when the last copy of the file goes (dup, fork, SCM_RIGHTS), so it
 *    is removed explicitly, while the fd is open;
 *  - a registration that outlived its number can no longer be named, and
 *    only a new epoll set gets rid of it (PXK_LOST, reset);
 *  - a fired EPOLLONESHOT stays in the set, reporting nothing (not even
 *    EPOLLHUP/EPOLLERR, which epoll otherwise always reports), until MOD;
 *  - ADD of what the kernel holds is EEXIST, MOD of what it does not ENOENT.
 * Each registration carries the core's tag beside the fd in epoll's data, and
 * the kernel hands it back with every event.
 */

struct epoll_state {
	int epfd;
	int held; /* registrations made and not removed */
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

static int ep_reset(void *p)
{
	struct epoll_state *st = p;
	int epfd = epoll_create1(EPOLL_CLOEXEC);

	if (epfd < 0)
		return -errno;
	close(st->epfd);
	st->epfd = epfd;
	st->held = 0;
	return 0;
}

static uint32_t ep_mask(unsigned k)
{
	uint32_t m = 0;

	if (k & PX_READ)
		m |= EPOLLIN | PXR_RDHUP;
	if (k & PX_WRITE)
		m |= EPOLLOUT;
	if (k & PX_ET)
		m |= EPOLLET;
	if (k & PX_ONESHOT)
		m |= EPOLLONESHOT;
	return m;
}

static int ep_del(void *p, int fd, unsigned oldk, bool closing)
{
	struct epoll_state *st = p;
	struct epoll_event e = { 0 }; /* pre-2.6.9 kernels want one */

	(void)oldk;
	st->held--;
	if (closing)
		return PXK_LOST; /* close() removes it, unless a copy lives */
	if (epoll_ctl(st->epfd, EPOLL_CTL_DEL, fd, &e) == 0)
		return 0;
	/* EBADF: closed first; ENOENT: the number names another file now.
	 * Either way the old registration lives on if a copy of its file is
	 * open somewhere, and nothing can name it any more. */
	return PXK_LOST;
}

static int ep_ctl(void *p, int fd, unsigned oldk, unsigned newk, unsigned tag)
{
	struct epoll_state *st = p;
	struct epoll_event e;

	pxi_event_set(&e, ep_mask(newk), fd, tag);
	if (!newk) {
		/* Kept when the kernel has disarmed it already: re-arming is
		 * then one MOD.  Anything else could still report hang-ups. */
		if ((oldk & (PX_ONESHOT | PXK_FIRED)) == (PX_ONESHOT | PXK_FIRED))
			return (int)oldk;
		return ep_del(p, fd, oldk, false);
	}
	int op = oldk ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
	if (epoll_ctl(st->epfd, op, fd, &e) < 0) {
		if (op == EPOLL_CTL_ADD && errno == EEXIST)
			op = EPOLL_CTL_MOD; /* held already (a removal failed): take it over */
		else if (op == EPOLL_CTL_MOD && errno == ENOENT)
			op = EPOLL_CTL_ADD; /* the number was closed and re-opened */
		else
			return -errno;
		if (epoll_ctl(st->epfd, op, fd, &e) < 0)
			return -errno;
		/* The file that was registered under this number is gone from
		 * it; its registration lives on if a copy of it is open. */
		if (op == EPOLL_CTL_ADD)
			return (int)(newk | PXK_LOST);
	}
	if (!oldk)
		st->held++;
	return (int)newk;
}

static int ep_count(void *p)
{
	return ((struct epoll_state *)p)->held;
}

_Static_assert(EPOLLIN == PXR_IN && EPOLLOUT == PXR_OUT && EPOLLERR == PXR_ERR &&
                   EPOLLHUP == PXR_HUP && (!PXC_RDHUP || EPOLLRDHUP == PXR_RDHUP),
               "epoll's bits are the core's");

static int ep_wait(void *p, int timeout_ms, pxi_event *ev, int cap)
{
	struct epoll_state *st = p;
	int n = epoll_wait(st->epfd, ev, cap, timeout_ms);

	return n < 0 ? -errno : n;
}

const struct pxi_backend pxi_backend_epoll = {
	.name = "epoll",
	.kmodes = PX_ET | PX_ONESHOT,
	.persistent = true,
	/* The kernel hands out ready fds round-robin, so a bounded batch is
	 * fair and keeps memory per fd flat. */
	.batch = 1024,
	.create = ep_create,
	.destroy = ep_destroy,
	.ctl = ep_ctl,
	.del = ep_del,
	.reset = ep_reset,
	.wait = ep_wait,
	.count = ep_count,
};
#endif
