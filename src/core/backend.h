/* The one interface between the core and a backend.  The core never includes
 * a backend's headers; a backend knows nothing of watchers, timers or
 * callbacks: it keeps a kernel interest set and waits on it. */
#ifndef PX_BACKEND_H
#define PX_BACKEND_H

/* Kernel masks passed to ctl: PX_READ | PX_WRITE, plus PX_ET / PX_ONESHOT only
 * for backends that do them natively.  0 means "not in the set".  PXK_INERT
 * means "in the set, but disarmed by the kernel" (a fired native oneshot). */
#define PXK_INERT 0x40u

/* Ready bits, as a backend reports them, have the values of poll() and
 * epoll (the same on Linux, and checked by the poll and epoll backends), so
 * that epoll's results are used as they come. */
#define PXR_IN    0x001u
#define PXR_OUT   0x004u
#define PXR_ERR   0x008u
#define PXR_HUP   0x010u
#define PXR_NVAL  0x020u /* the fd was closed: the core reports it once, disarms it */
#define PXR_RDHUP 0x2000u

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

struct pxi_backend {
	const char *name;
	unsigned native; /* PX_ET | PX_ONESHOT done by the kernel */
	/* Most events one wait reports (the rest wait for the next one; a
	 * backend that scans its set must then rotate where it starts);
	 * 0: one per fd in the set. */
	int batch;
	/* Returns the backend's state, or NULL with errno set. */
	void *(*create)(void);
	void (*destroy)(void *st);
	/* Make the kernel's interest for fd go from oldk to newk (0: add; to
	 * 0: remove; else change).  0 or -errno (-EEXIST: adding what the
	 * kernel holds); on error the kernel's view is unchanged. */
	int (*ctl)(void *st, int fd, unsigned oldk, unsigned newk);
	/* Wait up to timeout_ms (-1: forever) and fill at most cap events, at most
	 * one per fd.  Returns the count, or -errno (-EINTR is retried by the
	 * core). */
	int (*wait)(void *st, int timeout_ms, pxi_event *ev, int cap);
};

extern const struct pxi_backend pxi_backend_select;
extern const struct pxi_backend pxi_backend_poll;
extern const struct pxi_backend pxi_backend_epoll;

#endif
