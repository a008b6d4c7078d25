#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>

#include "pollux.h"
#include "backend.h"
#include "compat.h"

/* fd_set is a fixed FD_SETSIZE bits and FD_SET beyond it is undefined, so the
 * sets here are our own word arrays, grown with the highest fd, in the
 * kernel's layout (bit fd % BITS of word fd / BITS).  select() takes any nfds
 * the process's fd table allows. */

/* The system's fd_mask, as an unsigned type: select() reads the sets in its
 * layout (bit fd % BITS of word fd / BITS), which on a big-endian system
 * depends on the word's size. */
#if SIZEOF_FD_MASK == 4
typedef uint32_t word;
#elif SIZEOF_FD_MASK == 8
typedef uint64_t word;
#else
typedef unsigned long word;
#endif
_Static_assert(sizeof(word) <= sizeof(unsigned long long), "bit counts fit");

#define BITS (CHAR_BIT * sizeof(word))

struct select_state {
	word *rd, *wr;   /* interest */
	word *ord, *owr; /* the copy select() overwrites */
	size_t words;
	int maxfd;    /* -1 when empty */
	int held;     /* fds in the sets */
	size_t start; /* word where the next scan of results begins */
};

static void *sel_create(void)
{
	struct select_state *st = calloc(1, sizeof(*st));

	if (st)
		st->maxfd = -1;
	return st;
}

static void sel_destroy(void *p)
{
	struct select_state *st = p;

	free(st->rd);
	free(st->wr);
	free(st->ord);
	free(st->owr);
	free(st);
}

static bool bit(const word *set, int fd)
{
	return set[(size_t)fd / BITS] >> ((size_t)fd % BITS) & 1u;
}

static void put(word *set, int fd, bool on)
{
	word m = (word)1 << ((size_t)fd % BITS);

	if (on)
		set[(size_t)fd / BITS] |= m;
	else
		set[(size_t)fd / BITS] &= ~m;
}

static int sel_grow(struct select_state *st, int fd)
{
	size_t need = (size_t)fd / BITS + 1;

	if (need <= st->words)
		return 0;
	size_t words = st->words ? st->words : FD_SETSIZE / BITS;
	while (words < need)
		words *= 2;
	word **sets[] = { &st->rd, &st->wr, &st->ord, &st->owr };
	for (size_t i = 0; i < 4; i++) {
		word *s = realloc(*sets[i], words * sizeof(word));
		if (!s)
			return -ENOMEM; /* the sets grown so far stay valid and larger */
		memset(s + st->words, 0, (words - st->words) * sizeof(word));
		*sets[i] = s;
	}
	st->words = words;
	return 0;
}

static void sel_fix_max(struct select_state *st)
{
	while (st->maxfd >= 0 && !bit(st->rd, st->maxfd) && !bit(st->wr, st->maxfd))
		st->maxfd--;
}

static int sel_ctl(void *p, int fd, unsigned oldk, unsigned newk, unsigned tag)
{
	struct select_state *st = p;

	(void)tag; /* nothing outlives its number here */
#ifdef PX_SELECT_LIMIT
	/* This system's select() refuses sets beyond FD_SETSIZE. */
	if (newk && fd >= FD_SETSIZE)
		return -ERANGE;
#endif
	/* select() checks nothing until it waits (then EBADF for the whole
	 * set): say now, as epoll_ctl does, that the fd is not open. */
	if (!oldk && newk && fcntl(fd, F_GETFD) < 0)
		return -errno;
	int rc = sel_grow(st, fd);
	if (rc < 0)
		return rc;
	if (!oldk && newk)
		st->held++;
	else if (oldk && !newk)
		st->held--;
	put(st->rd, fd, newk & PX_READ);
	put(st->wr, fd, newk & PX_WRITE);
	if (newk && fd > st->maxfd)
		st->maxfd = fd;
	else if (!newk && fd == st->maxfd)
		sel_fix_max(st);
	return (int)newk;
}

static int sel_del(void *p, int fd, unsigned oldk, bool closing)
{
	(void)closing;
	return sel_ctl(p, fd, oldk, 0, 0);
}

static int sel_count(void *p)
{
	return ((struct select_state *)p)->held;
}

/* select() fails as a whole with EBADF when any fd in the sets was closed:
 * find those, report each once as an error, and drop them from the sets. */
static int sel_reap(struct select_state *st, pxi_event *ev, int cap)
{
	int out = 0;

	for (int fd = 0; fd <= st->maxfd && out < cap; fd++) {
		if (!bit(st->rd, fd) && !bit(st->wr, fd))
			continue;
		if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
			continue;
		put(st->rd, fd, false);
		put(st->wr, fd, false);
		ev[out].events = PXR_NVAL;
		ev[out++].data.fd = fd;
	}
	sel_fix_max(st);
	return out ? out : -EBADF;
}

static int sel_select(struct select_state *st, struct timeval *tvp)
{
	int nfds = st->maxfd + 1;

	if (nfds > 0) {
		size_t words = ((size_t)nfds + BITS - 1) / BITS;
		memcpy(st->ord, st->rd, words * sizeof(word));
		memcpy(st->owr, st->wr, words * sizeof(word));
	}
	return select(nfds, nfds ? (fd_set *)st->ord : NULL, nfds ? (fd_set *)st->owr : NULL,
	              NULL, tvp);
}

static int sel_wait(void *p, int timeout_ms, pxi_event *ev, int cap)
{
	struct select_state *st = p;
	struct timeval tv, *tvp = NULL;
	int out = 0;

	if (timeout_ms >= 0) {
		tv.tv_sec = timeout_ms / 1000;
		tv.tv_usec = (timeout_ms % 1000) * 1000;
		tvp = &tv;
	}
	int rc = sel_select(st, tvp);
	if (rc < 0 && errno == EBADF) {
		/* Report the closed fds, and still look at the others now, as
		 * poll and epoll would in this same iteration. */
		out = sel_reap(st, ev, cap);
		if (out < 0)
			return out;
		struct timeval zero = { 0, 0 };
		rc = sel_select(st, &zero);
		if (rc < 0)
			return out;
	} else if (rc < 0) {
		return -errno;
	}
	/* A word at a time: idle fds cost one test per 64.  When more are
	 * ready than fit, the next scan starts at the word where this one
	 * stopped, so high fds are not starved. */
	size_t words = ((size_t)st->maxfd + BITS) / BITS;
	size_t w = st->start < words ? st->start : 0;
	for (size_t seen = 0; seen < words && rc > 0; seen++, w = w + 1 < words ? w + 1 : 0) {
		word any = st->ord[w] | st->owr[w];
		if (!any)
			continue;
		if (out + pxi_popcount(any) > cap) {
			st->start = w; /* this word does not fit: next time */
			break;
		}
		while (any) {
			int bitno = pxi_ctz(any);
			any &= any - 1;
			int fd = (int)(w * BITS) + bitno;
			unsigned r = (bit(st->ord, fd) ? PXR_IN : 0) | (bit(st->owr, fd) ? PXR_OUT : 0);
			rc -= (r & PXR_IN ? 1 : 0) + (r & PXR_OUT ? 1 : 0);
			ev[out].events = r;
			ev[out++].data.fd = fd;
		}
	}
	return out;
}

const struct pxi_backend pxi_backend_select = {
	.name = "select",
	.kmodes = 0,
	.persistent = false,
	.batch = 1024,
	.create = sel_create,
	.destroy = sel_destroy,
	.ctl = sel_ctl,
	.del = sel_del,
	.wait = sel_wait,
	.count = sel_count,
};
