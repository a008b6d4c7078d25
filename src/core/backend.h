/* The one interface between the core and a backend.  The core never includes
 * a backend's headers; a backend knows nothing of watchers, timers or
 * callbacks: it keeps a kernel interest set and waits on it. */
#ifndef PX_BACKEND_H
#define PX_BACKEND_H

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "compat.h"

/* Kernel masks passed to ctl: PX_READ | PX_WRITE, plus PX_ET / PX_ONESHOT only
 * for backends that do them in the kernel (kmodes).  0 means "no interest".
 * What ctl returns is the backend's token for what the kernel now holds
 * (0: nothing); the core stores it and hands it back as oldk. */

/* Set by the core in oldk: the kernel reported this registration since it
 * was last set.  Only tracked for kernel one-shots (which never take the
 * dispatch fast path): the backend knows what a fired one-shot means. */
#define PXK_FIRED 0x40u
/* Returned by a removal: removed from the backend's view, but the kernel may
 * keep a registration that can no longer be named (the fd was closed, or its
 * number re-used, before the removal) and that goes on reporting under the
 * old number while another copy of the file is open (dup, fork, SCM_RIGHTS).
 * The core must then rebuild the set (reset) before it trusts that number
 * again. */
#define PXK_LOST 0x80u

/* Ready bits, as a backend reports them, have the values of poll() and
 * epoll (the same on every system for these five, and checked by the poll and
 * epoll backends), so that epoll's results are used as they come. */
#define PXR_IN    0x001u
#define PXR_OUT   0x004u
#define PXR_ERR   0x008u
#define PXR_HUP   0x010u
#define PXR_NVAL  0x020u /* the fd was closed: the core reports it once, disarms it */
/* The peer shut down writing: poll's own value where it has one (Linux
 * 0x2000, FreeBSD 0x4000, where 0x2000 is POLLINIGNEOF); 0 where there is
 * none (macOS), and then nobody asks for it. */
#if PXC_RDHUP
#define PXR_RDHUP ((unsigned)POLLRDHUP)
#else
#define PXR_RDHUP 0u
#endif

/* One ready fd.  With epoll this is struct epoll_event itself, filled by the
 * kernel; the other backends fill the same layout. */
#ifdef HAVE_EPOLL
#include <sys/epoll.h>
typedef struct epoll_event pxi_event;
#else
#include <stdint.h>
typedef struct {
	uint32_t events;
	union {
		int fd;
		uint64_t u64;
	} data;
} pxi_event;
#endif

/* The event's registration tag: the 4 bytes of the data union after the fd. */
_Static_assert(sizeof(((pxi_event *)0)->data) >= sizeof(int) + sizeof(uint32_t),
               "room for a tag beside the fd");
static inline uint32_t pxi_event_tag(const pxi_event *e)
{
	uint32_t tag;

	memcpy(&tag, (const char *)&e->data + sizeof(int), sizeof(tag));
	return tag;
}

static inline void pxi_event_set(pxi_event *e, uint32_t events, int fd, uint32_t tag)
{
	memset(&e->data, 0, sizeof(e->data));
	e->events = events;
	e->data.fd = fd;
	memcpy((char *)&e->data + sizeof(int), &tag, sizeof(tag));
}

struct pxi_backend {
	const char *name;
	unsigned kmodes; /* PX_ET | PX_ONESHOT done by the kernel */
	/* The kernel keeps the interest set between waits (epoll): a
	 * registration lives until removed or until every copy of its file is
	 * closed, so removals must be made while the fd is still open. */
	bool persistent;
	/* Most events one wait reports (the rest wait for the next one; a
	 * backend that scans its set must then rotate where it starts);
	 * 0: one per fd in the set. */
	int batch;
	/* Returns the backend's state, or NULL with errno set. */
	void *(*create)(void);
	void (*destroy)(void *st);
	/* Make the kernel's interest for fd go from oldk (a token, 0: not
	 * held) to newk (0: none; the backend may keep a registration that
	 * reports nothing).  Returns the new token (>= 0, with PXK_LOST when
	 * the registration of the file that had this number may be lost) or
	 * -errno, and then the kernel's view is unchanged.
	 * Adding (oldk 0) an fd that is not open is -EBADF on every backend.
	 * Persistent backends return tag with every event of the registration
	 * (pxi_event_tag), so that the core can tell it from a lost one at the
	 * same number; the others ignore it. */
	int (*ctl)(void *st, int fd, unsigned oldk, unsigned newk, unsigned tag);
	/* Removes fd's registration (oldk != 0) for good: 0 or PXK_LOST.
	 * closing: the caller closes fd right after, and a backend whose
	 * kernel drops the registration with the file's last descriptor may
	 * leave it to close() (then PXK_LOST: it is lost if a copy lives). */
	int (*del)(void *st, int fd, unsigned oldk, bool closing);
	/* Persistent sets only (else NULL): replace the kernel set by an empty
	 * one; 0 or -errno, and then the old set is kept. */
	int (*reset)(void *st);
	/* Wait up to timeout_ms (-1: forever) and fill at most cap events, at most
	 * one per fd.  Returns the count, or -errno (-EINTR is retried by the
	 * core). */
	int (*wait)(void *st, int timeout_ms, pxi_event *ev, int cap);
	/* Registrations held (for the invariant checks). */
	int (*count)(void *st);
};

extern const struct pxi_backend pxi_backend_select;
extern const struct pxi_backend pxi_backend_poll;
extern const struct pxi_backend pxi_backend_epoll;

#endif
