#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#ifdef HAVE_SYS_FILIO_H
#include <sys/filio.h> /* FIONREAD on illumos */
#endif
#include <unistd.h>

#include "core.h"

/* The quiet bits are laid out like the directions they silence. */
_Static_assert(W_QUIET_R == PX_READ && W_QUIET_W == PX_WRITE, "quiet bits mirror PX_RW");
_Static_assert((W_PROBE_R >> 2) == PX_READ && (W_PROBE_W >> 2) == PX_WRITE,
               "probe bits mirror PX_RW");

#define W_QUIET (W_QUIET_R | W_QUIET_W)
#define W_PROBE (W_PROBE_R | W_PROBE_W)

static bool emulates_et(const px_loop *loop, const struct pxi_watch *w)
{
	return (w->events & PX_ET) && !(loop->be->kmodes & PX_ET);
}

/* A plain watcher (registered before this wait, level or kernel ET, no
 * one-shot, no library interest) needs nothing from dispatch but its
 * callback: its armed directions are cached in w->fast for the hot path. */
static void fast_update(const px_loop *loop, struct pxi_watch *w)
{
	bool plain = w->cb && w->kev && !w->tag && !(w->flags & (W_FRESH | W_INTERNAL)) && !w->lib &&
	             !(w->events & PX_ONESHOT) && !(w->kev & PX_ONESHOT) && !emulates_et(loop, w);
	/* Kept in the kernel's bits, so that one test tells whether a result
	 * is entirely plain readiness the watcher asked for. */
	unsigned rw = plain ? w->events & PX_RW : 0;
	w->fast = (uint8_t)((rw & PX_READ ? PXR_IN : 0) | (rw & PX_WRITE ? PXR_OUT : 0));
}

/* PX_READ / PX_WRITE from the kernel's PXR_IN (bit 0) and PXR_OUT (bit 2). */
static const uint8_t rw_of[8] = { 0, PX_READ, 0, PX_READ, PX_WRITE, PX_RW, PX_WRITE, PX_RW };

/* What the kernel should watch for this watcher. */
static unsigned want_kev(const px_loop *loop, const struct pxi_watch *w)
{
	unsigned kmodes = loop->be->kmodes;
	unsigned rw = w->events & PX_RW;
	unsigned k;

	if (emulates_et(loop, w))
		rw &= ~(w->flags & W_QUIET);
	k = rw | w->lib;
	if (rw && (kmodes & w->events & PX_ET))
		k |= PX_ET;
	/* A kernel one-shot would also silence the library's own interest. */
	if (rw && !w->lib && (kmodes & w->events & PX_ONESHOT))
		k |= PX_ONESHOT;
	return k;
}

/* Room for n more entries. */
static int vec_reserve(int **v, int len, int *cap, int n)
{
	if (n <= *cap - len)
		return 0;
	size_t ncap = *cap ? (size_t)*cap : 32;
	while (ncap < (size_t)len + (size_t)n)
		ncap *= 2;
	if (ncap > INT_MAX)
		return -ENOMEM;
	int *nv = realloc(*v, ncap * sizeof(**v));
	if (!nv)
		return -ENOMEM;
	*v = nv;
	*cap = (int)ncap;
	return 0;
}

static int vec_push(int **v, int *len, int *cap, int x)
{
	int rc = vec_reserve(v, *len, cap, 1);

	if (rc < 0)
		return rc;
	(*v)[(*len)++] = x;
	return 0;
}

/* Records a change the kernel refused, for PX_ERR after the next wait; the
 * caller has reserved room. */
static void failed_push(px_loop *loop, int fd)
{
	PXI_ASSERT(loop->failedlen < loop->failedcap);
	loop->failed[loop->failedlen++] = fd;
}

/* The kernel may hold a lost registration under w's number, which may
 * report until the set is rebuilt: the wait makes room for it too. */
static void mark_orphan(px_loop *loop, struct pxi_watch *w)
{
	if (!(w->flags & W_ORPHAN)) {
		w->flags |= W_ORPHAN;
		loop->norphans++;
	}
}

/* Stores a token from the backend as fd's kernel state. */
static void kev_set(px_loop *loop, int fd, int tok)
{
	struct pxi_watch *w = &loop->w[fd];

	if (tok & PXK_LOST) {
		mark_orphan(loop, w);
		/* Held all the same (a change found the number naming another
		 * file, and registered that one): the lost one is untagged, so
		 * only a new set tells them apart. */
		if (tok & ~PXK_LOST)
			loop->rebuild = true;
		tok &= ~PXK_LOST;
	}
	if (!w->kev && tok)
		loop->nkernel++;
	else if (w->kev && !tok)
		loop->nkernel--;
	w->kev = (uint8_t)tok;
}

static int backend_rebuild(px_loop *loop, int skip);

/* Brings the kernel's view of registered fd to what its watcher wants now.
 * 0, or the backend's error for an addition or change (then nothing
 * changed). */
static int kernel_apply(px_loop *loop, int fd)
{
	struct pxi_watch *w = &loop->w[fd];
	unsigned k = want_kev(loop, w);
	int rc;

	if (k == w->kev)
		return 0;
	if (!w->kev && k && (w->flags & W_ORPHAN)) {
		/* A lost registration may report under this number: the new
		 * one gets a tag that no registration here has had since the
		 * set was last rebuilt, and dispatch tells them apart.  When
		 * the tags run out, a new set gets rid of the lost ones. */
		if (w->tag < UINT8_MAX)
			w->tag++;
		else if ((rc = backend_rebuild(loop, fd)) < 0)
			return rc;
	}
	rc = loop->be->ctl(loop->bst, fd, w->kev, k, w->tag);
	if (rc < 0)
		return rc;
	if ((unsigned)rc != w->kev)
		loop->st.kernel_changes++;
	kev_set(loop, fd, rc);
	fast_update(loop, w);
	return 0;
}

/* Puts fd on the list the flush before the next wait goes through; false
 * only when that list cannot grow. */
static bool mark_dirty(px_loop *loop, int fd)
{
	struct pxi_watch *w = &loop->w[fd];

	if (!(w->flags & W_DIRTY) &&
	    vec_push(&loop->chg, &loop->chglen, &loop->chgcap, fd) == 0)
		w->flags |= W_DIRTY;
	return w->flags & W_DIRTY;
}

/* Makes fd's kernel registration follow its watcher.  A new registration is
 * made at once, so that px_io_add and px_io_mod can report what the kernel
 * refuses (-EPERM, -EBADF, ...); changes to one the kernel holds wait for
 * the flush before the next wait, where a change and its undoing in the same
 * iteration cancel out. */
static int io_sync(px_loop *loop, int fd)
{
	if (!loop->w[fd].kev || !mark_dirty(loop, fd))
		return kernel_apply(loop, fd);
	return 0;
}

/* A change the library makes by itself, with no caller to return an error
 * to: made at the flush, where a refusal reaches the watcher as PX_ERR and
 * ENOMEM is retried, instead of being dropped. */
static void io_resync(px_loop *loop, int fd)
{
	if (!mark_dirty(loop, fd) && kernel_apply(loop, fd) < 0)
		(void)vec_push(&loop->failed, &loop->failedlen, &loop->failedcap, fd);
}

/* The table only grows for fds that are open, so a bogus huge number costs a
 * fcntl, not a huge allocation. */
static int tab_reserve(px_loop *loop, int fd)
{
	if (fd < loop->wcap)
		return 0;
	if (fcntl(fd, F_GETFD) < 0)
		return -EBADF;
	/* Geometric, but by an eighth: the table is indexed by fd number and
	 * its slack is memory every watcher pays for. */
	size_t cap = (size_t)loop->wcap + (size_t)loop->wcap / 8;
	if (cap <= (size_t)fd)
		cap = (size_t)fd + 1;
	cap = (cap + 63) & ~(size_t)63;
	if (cap > (size_t)INT_MAX)
		cap = (size_t)INT_MAX;
	struct pxi_watch *w = realloc(loop->w, cap * sizeof(*w));
	if (!w)
		return -ENOMEM;
	memset(w + loop->wcap, 0, (cap - (size_t)loop->wcap) * sizeof(*w));
	loop->w = w;
	loop->wcap = (int)cap;
	return 0;
}

static int check_events(unsigned events)
{
	return (events & ~PX_MASK) ? -EINVAL : 0;
}

static int io_add(px_loop *loop, int fd, unsigned events, px_io_cb *cb, void *arg,
                  uint16_t flags)
{
	int rc;

	if (!loop || !cb)
		return -EINVAL;
	if (fd < 0)
		return -EBADF;
	if ((rc = check_events(events)) < 0)
		return rc;
	if ((rc = tab_reserve(loop, fd)) < 0)
		return rc;
	struct pxi_watch *w = &loop->w[fd];
	if (w->cb)
		return -EEXIST;
	if (loop->in_cb_window &&
	    (rc = vec_push(&loop->fresh, &loop->freshlen, &loop->freshcap, fd)) < 0)
		return rc;
	/* A deleted watcher may still be on the change list, and its number
	 * may name a lost registration. */
	uint16_t keep = w->flags & (W_DIRTY | W_ORPHAN), gone = w->flags;
	PXI_ASSERT(w->kev == 0 && !w->cb);
	w->cb = cb;
	w->arg = arg;
	w->events = w->fevents = (uint8_t)events;
	w->lib = 0;
	w->flags = (uint16_t)(flags | keep | (loop->in_cb_window ? W_FRESH : 0));
	rc = io_sync(loop, fd);
	if (rc < 0) {
		uint8_t tag = w->tag;
		memset(w, 0, sizeof(*w));
		w->flags = keep | (gone & W_GONE);
		w->tag = tag;
		return rc;
	}
	fast_update(loop, w);
	loop->nwatch++;
	return 0;
}

int px_io_add(px_loop *loop, int fd, unsigned events, px_io_cb *cb, void *arg)
{
	return io_add(loop, fd, events, cb, arg, 0);
}

int pxi_io_add_owned(px_loop *loop, int fd, unsigned events, px_io_cb *cb,
                     struct pxi_owner *owner)
{
	return io_add(loop, fd, events, cb, owner, W_OWNED);
}

int pxi_io_add_internal(px_loop *loop, int fd, px_io_cb *cb)
{
	return io_add(loop, fd, PX_READ, cb, NULL, W_INTERNAL);
}

struct pxi_watch *pxi_io_get(const px_loop *loop, int fd)
{
	/* The loop's own fd is not the user's to change or send on. */
	if (!loop || fd < 0 || fd >= loop->wcap || !loop->w[fd].cb ||
	    (loop->w[fd].flags & W_INTERNAL))
		return NULL;
	return &loop->w[fd];
}

struct pxi_owner *pxi_io_owner(px_loop *loop, int fd)
{
	struct pxi_watch *w = pxi_io_get(loop, fd);

	return w && (w->flags & W_OWNED) ? w->arg : NULL;
}

int px_io_mod(px_loop *loop, int fd, unsigned events)
{
	int rc;

	if (!loop)
		return -EINVAL;
	if (fd < 0)
		return -EBADF;
	if ((rc = check_events(events)) < 0)
		return rc;
	struct pxi_watch *w = pxi_io_get(loop, fd);
	if (!w)
		return -ENOENT;
	uint8_t old_events = w->events;
	uint16_t old_flags = w->flags;
	if (w->events == events)
		return 0; /* nothing changes, on any backend */
	w->events = (uint8_t)events;
	if (!(loop->be->kmodes & PX_ET) && ((events | old_events) & PX_ET)) {
		/* The emulation's state restarts at the flush, if the mask
		 * then differs from the last one (as epoll re-checks readiness
		 * only when the change reaches the kernel). */
		if (mark_dirty(loop, fd)) {
			fast_update(loop, w);
			return 0;
		}
		w->flags &= (uint16_t)~W_ETSTATE;
		w->fevents = w->events;
	}
	rc = io_sync(loop, fd);
	if (rc < 0) {
		w->events = old_events;
		w->flags = old_flags;
	}
	fast_update(loop, w);
	return rc;
}

int pxi_io_set_sendq(px_loop *loop, int fd, struct pxi_sendq *q)
{
	if (!pxi_io_get(loop, fd))
		return -ENOENT;
	if (fd >= loop->sqcap) {
		int cap = loop->wcap; /* fd < wcap: it is registered */
		struct pxi_sendq **t = realloc(loop->sq, (size_t)cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		memset(t + loop->sqcap, 0, (size_t)(cap - loop->sqcap) * sizeof(*t));
		loop->sq = t;
		loop->sqcap = cap;
	}
	loop->sq[fd] = q;
	return 0;
}

int pxi_io_lib_reserve_slow(px_loop *loop)
{
	return vec_reserve(&loop->chg, loop->chglen, &loop->chgcap, 1);
}

/* Made by the flush, like every change the library makes by itself: px_send
 * has sent part of its buffer when it turns this on, and must not fail then. */
int pxi_io_lib_write(px_loop *loop, int fd, bool on)
{
	struct pxi_watch *w = pxi_io_get(loop, fd);

	if (!w)
		return -ENOENT;
	w->lib = on ? PX_WRITE : 0;
	io_resync(loop, fd);
	fast_update(loop, w);
	return 0;
}

enum drop { DROP_DEL, DROP_CLOSE, DROP_FREE };

/* Drops the registration; the caller has checked it exists.
 *  DROP_DEL: the kernel's registration is removed now, while the fd is open:
 *    after a close, one kept alive by another copy of the file could not be
 *    named any more.
 *  DROP_CLOSE: the caller closes the fd next (px_io_close), which drops an
 *    epoll registration for free when no other copy of the file is open.
 *    If one is, the registration is lost: the number is marked (W_ORPHAN) so
 *    that the next registration there is tagged.
 *  DROP_FREE: px_loop_free leaves the kernel alone (a child after fork must
 *    not touch the parent's epoll set; the set dies with the loop). */
static void io_drop(px_loop *loop, int fd, enum drop how)
{
	struct pxi_watch *w = &loop->w[fd];
	struct pxi_sendq *sq = pxi_io_sendq(loop, fd);
	struct pxi_owner *owner = (w->flags & W_OWNED) ? w->arg : NULL;
	uint8_t kev = w->kev, tag = w->tag;
	uint16_t keep = w->flags & (W_DIRTY | W_ORPHAN);

	memset(w, 0, sizeof(*w));
	w->flags = keep;
	w->tag = tag;
	loop->nwatch--;
	/* Events of this iteration for it are stale (see dispatch_slow). */
	if (loop->in_cb_window &&
	    vec_push(&loop->fresh, &loop->freshlen, &loop->freshcap, fd) == 0)
		w->flags |= W_GONE;
	if (kev) {
		loop->nkernel--;
		if (how != DROP_FREE) {
			loop->st.kernel_changes++;
			if (loop->be->del(loop->bst, fd, kev, how == DROP_CLOSE) & PXK_LOST)
				mark_orphan(loop, w);
		}
	}
	if (sq) {
		loop->sq[fd] = NULL;
		pxi_sendq_free(loop, sq);
	}
	if (owner)
		owner->release(loop, fd, owner);
	if (how != DROP_FREE && loop->on_fd_release)
		loop->on_fd_release(loop);
}

/* The argument checks of px_io_del and px_io_close. */
static int check_registered(const px_loop *loop, int fd)
{
	if (!loop)
		return -EINVAL;
	if (fd < 0)
		return -EBADF;
	return pxi_io_get(loop, fd) ? 0 : -ENOENT;
}

int px_io_del(px_loop *loop, int fd)
{
	int rc = check_registered(loop, fd);

	if (rc == 0)
		io_drop(loop, fd, DROP_DEL);
	return rc;
}

int px_io_close(px_loop *loop, int fd)
{
	int rc = check_registered(loop, fd);

	if (rc < 0)
		return rc;
	io_drop(loop, fd, DROP_CLOSE);
	/* Linux closes the fd even when close() is interrupted. */
	return close(fd) < 0 && errno != EINTR ? -errno : 0;
}

void pxi_io_free_all(px_loop *loop)
{
	for (int fd = 0; fd < loop->wcap && loop->nwatch > 0; fd++)
		if (loop->w[fd].cb)
			io_drop(loop, fd, DROP_FREE);
	free(loop->w);
	free(loop->sq);
	free(loop->ev);
	free(loop->etlist);
	free(loop->fresh);
	free(loop->chg);
	free(loop->failed);
	free(loop->etpfd);
	loop->w = NULL;
	loop->sq = NULL;
	loop->sqcap = 0;
	loop->ev = NULL;
	loop->etlist = loop->fresh = loop->chg = loop->failed = NULL;
	loop->chglen = loop->chgcap = loop->failedlen = loop->failedcap = 0;
	loop->etpfd = NULL;
	loop->wcap = loop->evcap = loop->etcap = loop->etlen = 0;
	loop->freshcap = loop->freshlen = loop->etpfdcap = 0;
}

/* Replaces the kernel set by a new one holding every registration but
 * skip's, to get rid of lost ones (PXK_LOST).  A registration the kernel now
 * refuses is reported like a refused change. */
static int backend_rebuild(px_loop *loop, int skip)
{
	int rc = vec_reserve(&loop->failed, loop->failedlen, &loop->failedcap, loop->nwatch);

	if (rc < 0 || (loop->in_cb_window &&
	               (rc = vec_reserve(&loop->fresh, loop->freshlen, &loop->freshcap,
	                                 loop->nwatch)) < 0))
		return rc;
	if ((rc = loop->be->reset(loop->bst)) < 0)
		return rc;
	loop->rebuild = false;
	loop->nkernel = 0;
	loop->norphans = 0;
	for (int fd = 0; fd < loop->wcap; fd++) {
		struct pxi_watch *w = &loop->w[fd];
		w->kev = 0;
		w->tag = 0;
		w->flags &= (uint16_t)~W_ORPHAN;
		if (!w->cb)
			continue;
		/* Every registration is new: what the iteration collected from
		 * the old set is stale (the kernel reports current readiness to
		 * a new registration, edge-triggered ones too). */
		if (loop->in_cb_window && !(w->flags & W_FRESH)) {
			w->flags |= W_FRESH;
			loop->fresh[loop->freshlen++] = fd;
		}
		if (fd != skip && kernel_apply(loop, fd) < 0)
			failed_push(loop, fd);
		fast_update(loop, w);
	}
	return 0;
}

/* Folds the iteration's changes into the kernel. */
static int flush(px_loop *loop)
{
	int rc;

	if (loop->rebuild && (rc = backend_rebuild(loop, -1)) < 0)
		return rc;
	/* Room to report every change the kernel may refuse: none is lost. */
	if (loop->chglen > loop->failedcap - loop->failedlen &&
	    (rc = vec_reserve(&loop->failed, loop->failedlen, &loop->failedcap, loop->chglen)) < 0)
		return rc;
	int retry = 0;
	for (int i = 0; i < loop->chglen; i++) {
		int fd = loop->chg[i];
		struct pxi_watch *w = &loop->w[fd];
		w->flags &= (uint16_t)~W_DIRTY;
		if (!w->cb)
			continue; /* deleted: removed from the kernel then */
		if (w->events != w->fevents) {
			w->flags &= (uint16_t)~W_ETSTATE;
			w->fevents = w->events;
		}
		rc = kernel_apply(loop, fd);
		if (rc == -ENOMEM) {
			/* Memory may be back at the next flush: nothing is lost,
			 * the change waits (the kernel keeps the old state). */
			w->flags |= W_DIRTY;
			loop->chg[retry++] = fd;
		} else if (rc < 0) {
			failed_push(loop, fd);
		}
	}
	loop->chglen = retry;
	return 0;
}

int pxi_io_prepare(px_loop *loop)
{
	int rc;

	if ((loop->chglen || loop->rebuild) && (rc = flush(loop)) < 0)
		return rc;
	/* The wait may fill waitcap events (one per registration, lost ones
	 * included); the refused changes are added after them. */
	int waitcap = loop->nkernel + loop->norphans > 0 ? loop->nkernel + loop->norphans : 1;
	if (loop->be->batch > 0 && waitcap > loop->be->batch)
		waitcap = loop->be->batch;
	if (waitcap + loop->failedlen > loop->evcap) {
		int cap = loop->evcap ? loop->evcap : 64;
		while (cap < waitcap + loop->failedlen)
			cap *= 2;
		pxi_event *ev = realloc(loop->ev, (size_t)cap * sizeof(*ev));
		if (!ev)
			return -ENOMEM;
		loop->ev = ev;
		loop->evcap = cap;
	}
	loop->waitcap = waitcap;
	PXI_ASSERT(waitcap + loop->failedlen <= loop->evcap);
	return 0;
}

/* A change the kernel refused is reported like a closed fd: PX_ERR once,
 * then the watcher is disarmed.  Merged into the fd's event, if it has one,
 * to keep one callback per fd per iteration. */
int pxi_io_add_failed(px_loop *loop, int n)
{
	PXI_ASSERT(n <= loop->waitcap && loop->waitcap + loop->failedlen <= loop->evcap);
	for (int i = 0; i < loop->failedlen; i++) {
		int fd = loop->failed[i], j;
		for (j = 0; j < n && loop->ev[j].data.fd != fd; j++)
			;
		if (j == n)
			pxi_event_set(&loop->ev[n++], 0, fd, loop->w[fd].tag);
		loop->ev[j].events |= PXR_NVAL;
	}
	loop->failedlen = 0;
	return n;
}

/* Applies what delivering an event does to the watcher's arming, before the
 * callback runs (so the callback sees, and may change, the new state). */
static void disarm_after(px_loop *loop, int fd, bool nval, unsigned out)
{
	struct pxi_watch *w = &loop->w[fd];

	if (nval || (w->events & PX_ONESHOT)) {
		/* A closed fd (or a change the kernel refused) is reported once,
		 * the library's own interest included; a one-shot fires once. */
		if (nval)
			w->lib = 0;
		w->events &= (uint8_t)~PX_RW;
		w->fevents = w->events; /* re-arming is a change, as for epoll */
		w->flags &= (uint16_t)~W_ETSTATE;
		io_resync(loop, fd);
		fast_update(loop, w);
	} else if (emulates_et(loop, w)) {
		w->flags |= (uint16_t)((out & PX_RW) << 2);
		/* Told of a hang-up, or called while a check had found the end
		 * of file: its reads reach 0 now. */
		if (out & PX_HUP)
			w->flags |= W_EOFSEEN | W_EOFTOLD;
		else if ((out & PX_READ) && (w->flags & W_EOFSEEN))
			w->flags |= W_EOFTOLD;
		if (!(w->flags & W_LISTED) &&
		    vec_push(&loop->etlist, &loop->etlen, &loop->etcap, fd) == 0)
			w->flags |= W_LISTED;
	}
}

/* Everything but the plain case: stale and stray events, hang-ups and
 * errors, one-shots, ET emulation, the library's own write interest. */
static void dispatch_slow(px_loop *loop, const pxi_event *ev)
{
	uint32_t e = ev->events;
	int fd = ev->data.fd;
	struct pxi_watch *w = &loop->w[fd];

	if (!w->cb || (!w->kev && !(e & PXR_NVAL))) {
		/* Nothing of ours is in the kernel under this number.  Deleted
		 * or disarmed during this round: a stale event.  Otherwise the
		 * kernel holds a registration we do not, a lost one (PXK_LOST),
		 * and only a new set removes it.  (A change the kernel refused,
		 * PXR_NVAL, is reported even when the registration is gone: a
		 * set rebuilt since may have refused it again.) */
		if (!(e & PXR_NVAL) && !(w->flags & (W_GONE | W_FRESH)) && loop->be->persistent)
			loop->rebuild = true;
		loop->st.stale_dropped++;
		return;
	}
	if (w->tag && pxi_event_tag(ev) != w->tag) {
		/* The lost registration at this number (W_ORPHAN) reported:
		 * only a new set gets rid of it. */
		loop->rebuild = true;
		loop->st.stale_dropped++;
		return;
	}
	if (w->flags & W_FRESH) {
		loop->st.stale_dropped++;
		return; /* re-added after the wait: stale */
	}
	/* Registrations change only before the wait (or are new, and then
	 * fresh), so a kernel one-shot that reported here is the watcher's,
	 * and the kernel has disarmed it. */
	if (w->kev & PX_ONESHOT)
		w->kev |= PXK_FIRED;

	bool nval = e & PXR_NVAL;
	unsigned rev = rw_of[e & 7] | (e & (PXR_HUP | PXR_RDHUP) ? PX_HUP : 0) |
	               (e & (PXR_ERR | PXR_NVAL) ? PX_ERR : 0);
	if ((w->lib & PX_WRITE) && (rev & (PX_WRITE | PX_HUP | PX_ERR))) {
		pxi_sendq_flush(loop, fd);
		w = pxi_io_get(loop, fd);
		if (!w || (w->flags & W_FRESH))
			return;
	}

	unsigned armed = w->events & PX_RW;
	if (emulates_et(loop, w))
		armed &= ~(unsigned)(w->flags & W_QUIET);
	unsigned out = rev & armed;
	unsigned bad = rev & (PX_HUP | PX_ERR);
	if (bad && armed)
		out |= armed | bad;
	if (!(out & PX_RW)) {
		if (nval)
			disarm_after(loop, fd, true, 0); /* nothing to tell, still disarm */
		else if ((w->kev & PXK_FIRED) && (w->events & PX_RW))
			io_resync(loop, fd); /* re-arm what the one-shot hid */
		return;
	}
	disarm_after(loop, fd, nval, out);
	/* The general path counts its own callbacks (the loop's wake-up fd
	 * takes it, and is not counted); pxi_io_dispatch counts the fast
	 * path's in bulk. */
	if (!(w->flags & W_INTERNAL))
		loop->st.io_callbacks++;
	if (nval)
		loop->st.closed_fds++;
	w->cb(loop, fd, out, w->arg);
}

void pxi_io_dispatch(px_loop *loop, int n)
{
	const pxi_event *ev = loop->ev;

	/* Fast-path callbacks are counted in bulk: n minus the events that
	 * took the general path, which counts its own callbacks. */
	int slow = 0;

	/* One "inside a callback" mark for the whole round. */
	loop->depth++;
	if (n > 0)
		loop->ran_cb = true;
	for (int i = 0; i < n; i++) {
		uint32_t e = ev[i].events;
		int fd = ev[i].data.fd;
		/* Backends only report fds this loop put in their set, and the
		 * table never shrinks; the check costs little and keeps it so. */
		if ((unsigned)fd >= (unsigned)loop->wcap) {
			PXI_ASSERT(!"an event for an fd beyond the table");
			slow++;
			continue;
		}
		struct pxi_watch *w = &loop->w[fd];
		/* Plain watcher, plain readiness: e is within the armed bits
		 * (never empty, so fast == 0 always takes the general path). */
		if (!(e & ~(uint32_t)w->fast)) {
			w->cb(loop, fd, rw_of[e & 7], w->arg);
			continue;
		}
		slow++;
		dispatch_slow(loop, &ev[i]);
	}
	loop->depth--;
	if (n > 0)
		loop->st.io_callbacks += (uint64_t)(n - slow);
	for (int i = 0; i < loop->freshlen; i++) {
		int fd = loop->fresh[i];
		if (fd < loop->wcap) {
			loop->w[fd].flags &= (uint16_t)~(W_FRESH | W_GONE);
			fast_update(loop, &loop->w[fd]);
		}
	}
	loop->freshlen = 0;
}

/*
 * PX_ET on backends that only know level-triggered readiness.  After a
 * round of callbacks, one poll(0) looks at each direction that was just
 * delivered, and at each write side that was found idle before:
 *  - still writable: the callback did not fill it, so the next edge can only
 *    come after it fills; silence it (no spin on an idle writable socket);
 *  - not writable: a real edge will follow; keep it in the kernel set;
 *  - still readable with a hang-up: end of file, no further edge; silence it;
 *  - readable without a hang-up: after a drain to EAGAIN that is new data;
 *    keep it (level delivery is exact for draining code).
 */
/* A hang-up with bytes still queued is not yet the end: the peer may have
 * sent its last bytes and shut down after the callback drained. */
static bool nothing_to_read(int fd)
{
	int n = 0;

	return ioctl(fd, FIONREAD, &n) < 0 || n == 0;
}

void pxi_io_et_check(px_loop *loop)
{
	int n = 0;

	if (loop->etpfdcap < loop->etlen) {
		struct pollfd *p = realloc(loop->etpfd, (size_t)loop->etlen * sizeof(*p));
		if (!p)
			return; /* try again after the next round */
		loop->etpfd = p;
		loop->etpfdcap = loop->etlen;
	}
	for (int i = 0; i < loop->etlen; i++) {
		int fd = loop->etlist[i];
		struct pxi_watch *w = pxi_io_get(loop, fd);
		if (!w || !(w->flags & W_LISTED))
			continue;
		unsigned dirs = ((w->flags & W_PROBE) >> 2) | (w->flags & W_QUIET_W);
		/* Judged by the mask of the last flush: a change made since then
		 * restarts the emulation at the next flush if it still stands. */
		if (w->fevents & PX_ET)
			dirs &= w->fevents & PX_RW;
		else
			dirs = 0;
		if (!dirs) {
			w->flags &= (uint16_t)~(W_LISTED | W_PROBE);
			continue;
		}
		short pev = 0;
		if (dirs & PX_READ)
			pev |= (short)(POLLIN | PXR_RDHUP);
		if (dirs & PX_WRITE)
			pev |= POLLOUT;
		loop->etpfd[n++] = (struct pollfd){ .fd = fd, .events = pev };
	}
	loop->etlen = 0;
	if (n == 0)
		return;
	int rc;
	do
		rc = poll(loop->etpfd, (nfds_t)n, 0);
	while (rc < 0 && errno == EINTR);

	for (int i = 0; i < n; i++) {
		int fd = loop->etpfd[i].fd;
		short ev = loop->etpfd[i].events, rev = rc < 0 ? 0 : loop->etpfd[i].revents;
		struct pxi_watch *w = &loop->w[fd];
		uint16_t quiet = w->flags & W_QUIET;

		if (rc >= 0 && !(rev & POLLNVAL)) {
			if (ev & POLLOUT)
				quiet = (rev & POLLOUT) ? quiet | W_QUIET_W : quiet & ~W_QUIET_W;
			if (ev & POLLIN) {
				/* A socket at end of file is readable with RDHUP or
				 * HUP; a pipe whose writers are gone reports HUP alone.
				 * Where poll has no RDHUP, a readable stream socket
				 * with nothing to read is at end of file if a peek
				 * says so. */
				bool at_eof = (rev & (PXR_RDHUP | POLLHUP | POLLERR))
				                  ? nothing_to_read(fd)
				                  : !PXC_RDHUP && (rev & POLLIN) && nothing_to_read(fd) &&
				                        pxi_peek_eof(fd);
				/* The end of file may have arrived after the callback
				 * read EAGAIN: silence the side only once a callback
				 * has run while it was there (one more callback at
				 * most, never a missed end of file). */
				if (!at_eof)
					w->flags &= (uint16_t)~(W_EOFSEEN | W_EOFTOLD);
				else if (!(w->flags & W_EOFSEEN))
					w->flags |= W_EOFSEEN;
				quiet = at_eof && (w->flags & W_EOFTOLD) ? quiet | W_QUIET_R
				                                         : quiet & ~W_QUIET_R;
			}
		}
		w->flags = (uint16_t)((w->flags & ~(W_QUIET | W_PROBE | W_LISTED)) | quiet);
		if ((quiet & W_QUIET_W) &&
		    vec_push(&loop->etlist, &loop->etlen, &loop->etcap, fd) == 0)
			w->flags |= W_LISTED; /* watch for the user filling it */
		io_resync(loop, fd);
	}
}
