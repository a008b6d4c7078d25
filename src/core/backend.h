/* The one interface between the core and a backend.  The core never includes
 * a backend's headers; a backend knows nothing of watchers, timers or
 * callbacks: it keeps a kernel interest set and waits on it. */
#ifndef PX_BACKEND_H
#define PX_BACKEND_H

/* Kernel masks passed to ctl: PX_READ | PX_WRITE, plus PX_ET / PX_ONESHOT only
 * for backends that do them natively.  0 means "not in the set".  PXK_INERT
 * means "in the set, but disarmed by the kernel" (a fired native oneshot). */
#define PXK_INERT 0x40u

/* revents bits a backend may report: PX_READ, PX_WRITE, PX_HUP, PX_ERR, and
 * PXR_NVAL for an fd that turned out to be closed (the core disarms it). */
#define PXR_NVAL 0x100u

struct pxi_event {
	int fd;
	unsigned revents;
};

struct pxi_backend {
	const char *name;
	unsigned native; /* PX_ET | PX_ONESHOT done by the kernel */
	/* Most events one wait needs room for; 0: one per fd in the set (a
	 * scan from the start of the set would starve its tail otherwise). */
	int batch;
	/* Returns the backend's state, or NULL with errno set. */
	void *(*create)(void);
	void (*destroy)(void *st);
	/* Make the kernel's interest for fd go from oldk to newk (they differ).
	 * 0 or -errno; on error the kernel's view is unchanged. */
	int (*ctl)(void *st, int fd, unsigned oldk, unsigned newk);
	/* Wait up to timeout_ms (-1: forever) and fill at most cap events, at most
	 * one per fd.  Returns the count, or -errno (-EINTR is retried by the
	 * core). */
	int (*wait)(void *st, int timeout_ms, struct pxi_event *ev, int cap);
};

extern const struct pxi_backend pxi_backend_select;
extern const struct pxi_backend pxi_backend_poll;
extern const struct pxi_backend pxi_backend_epoll;

#endif
