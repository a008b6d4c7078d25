#include <config.h>

#ifdef HAVE_POLL
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "pollux.h"
#include "backend.h"

/* A dense pollfd array (what poll() wants) and, per fd, its index there, so
 * adding and removing are O(1): removal moves the last entry into the hole. */

struct poll_state {
	struct pollfd *pfd;
	int n, cap;
	int *idx; /* indexed by fd */
	int idxcap;
	int start; /* where the next scan of results begins */
};

static void *pl_create(void)
{
	return calloc(1, sizeof(struct poll_state));
}

static void pl_destroy(void *p)
{
	struct poll_state *st = p;

	free(st->pfd);
	free(st->idx);
	free(st);
}

static short pl_mask(unsigned k)
{
	short m = 0;

	if (k & PX_READ)
		m |= (short)(POLLIN | PXR_RDHUP);
	if (k & PX_WRITE)
		m |= POLLOUT;
	return m;
}

static int pl_grow(struct poll_state *st, int fd)
{
	if (st->n == st->cap) {
		int cap = st->cap ? st->cap * 2 : 64;
		struct pollfd *p = realloc(st->pfd, (size_t)cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		st->pfd = p;
		st->cap = cap;
	}
	if (fd >= st->idxcap) {
		size_t cap = st->idxcap ? (size_t)st->idxcap : 64;
		while (cap <= (size_t)fd)
			cap *= 2;
		int *idx = realloc(st->idx, cap * sizeof(*idx));
		if (!idx)
			return -ENOMEM;
		st->idx = idx;
		st->idxcap = (int)cap;
	}
	return 0;
}

static int pl_del(void *p, int fd, unsigned oldk, bool closing)
{
	struct poll_state *st = p;
	int i = st->idx[fd];

	(void)oldk;
	(void)closing;
	st->pfd[i] = st->pfd[--st->n];
	st->idx[st->pfd[i].fd] = i;
	return 0;
}

static int pl_ctl(void *p, int fd, unsigned oldk, unsigned newk, unsigned tag)
{
	struct poll_state *st = p;

	(void)tag; /* nothing outlives its number here */
	if (!newk)
		return pl_del(p, fd, oldk, false); /* poll would still report hang-ups */
	if (oldk) {
		st->pfd[st->idx[fd]].events = pl_mask(newk);
		return (int)newk;
	}
	/* poll() checks nothing until it waits (then POLLNVAL): say now, as
	 * epoll_ctl does, that the fd is not open. */
	if (fcntl(fd, F_GETFD) < 0)
		return -errno;
	int rc = pl_grow(st, fd);
	if (rc < 0)
		return rc;
	st->idx[fd] = st->n;
	st->pfd[st->n++] = (struct pollfd){ .fd = fd, .events = pl_mask(newk) };
	return (int)newk;
}

static int pl_count(void *p)
{
	return ((struct poll_state *)p)->n;
}

_Static_assert(POLLIN == PXR_IN && POLLOUT == PXR_OUT && POLLERR == PXR_ERR &&
                   POLLHUP == PXR_HUP && POLLNVAL == PXR_NVAL,
               "poll's bits are the core's");

static int pl_wait(void *p, int timeout_ms, pxi_event *ev, int cap)
{
	struct poll_state *st = p;
	int rc = poll(st->pfd, (nfds_t)st->n, timeout_ms);
	int out = 0;

	if (rc <= 0)
		return rc < 0 ? -errno : 0;
	if (rc > cap)
		rc = cap;
	/* When more are ready than fit, the next scan starts where this one
	 * stopped, so the end of the array is not starved. */
	int from = st->start < st->n ? st->start : 0;
	for (int pass = 0; pass < 2; pass++) {
		int end = pass ? from : st->n;
		for (int i = pass ? 0 : from; i < end; i++) {
			if (!st->pfd[i].revents)
				continue;
			ev[out].events = (unsigned short)st->pfd[i].revents;
			ev[out].data.fd = st->pfd[i].fd;
			if (++out == rc) {
				st->start = i + 1;
				return out;
			}
		}
	}
	return out;
}

const struct pxi_backend pxi_backend_poll = {
	.name = "poll",
	.kmodes = 0,
	.persistent = false,
	.batch = 1024,
	.create = pl_create,
	.destroy = pl_destroy,
	.ctl = pl_ctl,
	.del = pl_del,
	.wait = pl_wait,
	.count = pl_count,
};
#endif
