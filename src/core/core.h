/* Internal interface of the core: the loop's state and the hooks that the
 * socket and send modules use.  Not installed.  Internal symbols use the
 * pxi_ prefix and are not exported. */
#ifndef PX_CORE_H
#define PX_CORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "pollux.h"
#include "backend.h"

#define PX_RW   (PX_READ | PX_WRITE)
#define PX_MASK (PX_READ | PX_WRITE | PX_ET | PX_ONESHOT)

/* A watcher registered with an owner (connect, acceptor) is released through
 * it when px_io_del or px_loop_free drops the registration.  The owner is the
 * watcher's arg. */
struct pxi_owner {
	void (*release)(px_loop *loop, int fd, struct pxi_owner *self);
};

struct pxi_sendq; /* defined by src/core/send.c */

/* watch.flags */
#define W_QUIET_R 0x001u /* ET emulation: read side idle (end of file) */
#define W_QUIET_W 0x002u /* ET emulation: write side idle */
#define W_PROBE_R 0x004u /* ET emulation: check read side after this round */
#define W_PROBE_W 0x008u
#define W_LISTED  0x010u /* on loop->etlist */
#define W_FRESH   0x020u /* registered after this iteration's wait: no stale events */
#define W_OWNED   0x040u /* arg is a struct pxi_owner */
#define W_DIRTY   0x080u /* on loop->chg: the kernel's view is synced before the wait */
#define W_ORPHAN  0x100u /* the kernel may hold a lost registration under this
                          * number (PXK_LOST, px_io_close): new ones here
                          * are tagged, until the set is rebuilt */
#define W_EOFSEEN 0x200u /* ET emulation: a check found the read side at end of file */
#define W_EOFTOLD 0x400u /* ... and a callback has run since, so the reader saw it */
#define W_GONE    0x800u /* deleted after this iteration's wait: its events are stale */
#define W_INTERNAL 0x1000u /* the loop's own wake-up fd: invisible to px_io_*,
                            * never on the fast path (not counted) */
/* Everything the ET emulation knows; forgotten when the mask changes. */
#define W_ETSTATE (W_QUIET_R | W_QUIET_W | W_PROBE_R | W_PROBE_W | W_EOFSEEN | W_EOFTOLD)

/* One per fd number.  cb == NULL: not registered, and then kev == 0 (a
 * deletion leaves the kernel at once). */
struct pxi_watch {
	px_io_cb *cb; /* NULL: not registered */
	void *arg;
	uint16_t flags;
	uint8_t events; /* the user's mask (READ/WRITE/ET/ONESHOT) */
	uint8_t kev;    /* the backend's token for what the kernel holds (backend.h) */
	uint8_t lib;    /* the library's own interest (PX_WRITE for sends) */
	uint8_t fevents; /* events as of the last flush: ET emulation restarts
	                  * only when the mask really changed across a wait */
	uint8_t fast; /* the armed directions as PXR_IN|PXR_OUT when dispatch
	               * needs nothing but the callback (see io.c), else 0 */
	uint8_t tag;  /* the kernel registration's tag (0: none); see W_ORPHAN */
};

/* The table is indexed by fd and every watcher pays for its slack. */
_Static_assert(sizeof(struct pxi_watch) <= 2 * sizeof(void *) + 8, "a watcher stays small");

struct pxi_timer_slot; /* timer.c */
struct pxi_post;       /* wake.c */
struct pxi_signals;    /* signal.c */
struct pxi_heap_node;  /* timer.c */
struct pollfd;

struct px_loop {
	const struct pxi_backend *be;
	void *bst;

	struct pxi_watch *w; /* indexed by fd */
	int wcap;
	int nwatch;  /* registered fds */
	int nkernel; /* fds the backend holds */
	int norphans; /* numbers that may hold a lost registration (W_ORPHAN) */

	pxi_event *ev;
	int evcap;
	int waitcap; /* events a wait may report: waitcap + failedlen <= evcap */

	/* Send queues by fd, allocated on the first px_send: loops that never
	 * send pay nothing per fd for them. */
	struct pxi_sendq **sq;
	int sqcap;
	void *send_spare; /* send.c: one reusable chunk */

	int *etlist; /* fds needing an ET emulation check */
	int etlen, etcap;
	int *fresh; /* fds marked W_FRESH in this iteration */
	int freshlen, freshcap;
	int *chg; /* fds whose kernel registration must be synced before the wait */
	int chglen, chgcap;
	int *failed; /* fds whose change the kernel refused: PX_ERR after the wait */
	int failedlen, failedcap;
	bool rebuild; /* a lost registration reported: new kernel set before the wait */
	struct pollfd *etpfd; /* scratch for the ET emulation check */
	int etpfdcap;

	/* timers (timer.c) */
	struct pxi_heap_node *heap;
	int heaplen, heapcap;
	struct pxi_timer_slot *slots;
	uint32_t nslots, slotcap, freeslot;
	uint64_t timer_seq;
	int64_t *due; /* ids of timers being fired this round */
	int duelen, duecap;
	uint32_t ntimers;

	uint64_t now_ns;
	bool now_stale; /* no timer needed the clock after the last wait */
	bool running;
	bool in_cb_window; /* between a wait and the end of its dispatch */
	bool stop;
	bool ran_cb; /* a callback ran in this iteration */
	int depth;   /* > 0 while a callback runs */

	/* px_loop_stats.  io_callbacks misses the fast path's callbacks of
	 * the current round until pxi_io_dispatch adds them in bulk. */
	struct px_loop_stats st;

	/* Called by io.c when px_io_del or px_io_close deletes a watcher (a
	 * descriptor may have been freed), while something waits for one:
	 * sock_accept.c's acceptors out of descriptors, listed in fd_waiters.
	 * NULL otherwise. */
	void (*on_fd_release)(px_loop *loop);
	void *fd_waiters;

	/* Signal watchers (signal.c), and its hook, run after every wake-up
	 * (NULL while the loop watches no signal). */
	struct pxi_signals *sig;
	void (*on_wake)(px_loop *loop);

	/* wake.c.  wakefd[0] is watched (W_INTERNAL); wakefd[1] is written. */
	int wakefd[2];
	struct pxi_post *recycled; /* free post nodes kept by the loop's thread */
	int nrecycled;
	/* The only fields other threads (and signal handlers) touch, kept
	 * off the cache lines the loop's thread writes all the time. */
	char pad_[64];
	atomic_int wake_pending; /* 1: wakefd is or is about to be readable */
	atomic_int sig_pending;  /* signal.c: some watched signal was recorded */
	_Atomic(struct pxi_post *) posts; /* newest first */
	_Atomic(struct pxi_post *) spare; /* free nodes for posting threads */
};

/* A signal handler may wake a loop: these must not take a lock. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_POINTER_LOCK_FREE == 2,
               "lock-free atomics for the wake-up path");

/* Invariant checks (configure --enable-invariants): PXI_ASSERT aborts with
 * a message when a condition the code relies on is false; without the
 * switch it costs nothing. */
#ifdef PX_INVARIANTS
void pxi_assert_fail(const char *cond, const char *file, int line);
#define PXI_ASSERT(c) ((c) ? (void)0 : pxi_assert_fail(#c, __FILE__, __LINE__))
/* Checks the whole loop: fd table, kernel mirror, lists, timers. */
void pxi_loop_check(px_loop *loop, bool between);
void pxi_timers_check(px_loop *loop);
#else
#define PXI_ASSERT(c) ((void)0)
#endif

/* clock.c */
uint64_t pxi_clock_ns(void);

/* timer.c */
void pxi_timers_free(px_loop *loop);
/* Nanoseconds until the next timer is due (0 if due), or UINT64_MAX. */
uint64_t pxi_timers_next(px_loop *loop);
void pxi_timers_run(px_loop *loop);
/* Makes pending timer id due after_ms from now, as if added now; allocates
 * nothing.  0 or -ENOENT. */
int pxi_timer_restart(px_loop *loop, int64_t id, uint64_t after_ms);

/* wake.c */
/* Creates the wake-up fd and its watcher; 0 or -errno (nothing left). */
int pxi_wake_init(px_loop *loop);
/* px_loop_wake without the argument check: a direct call, for the signal
 * handler (no PLT entry to resolve inside a handler). */
int pxi_wake(px_loop *loop);
/* Drops the posts that have not run and closes the wake-up fd (after
 * pxi_io_free_all). */
void pxi_wake_free(px_loop *loop);
/* The posts made until now, oldest first (NULL: none); and running them,
 * which frees them. */
struct pxi_post *pxi_posts_take(px_loop *loop);
void pxi_posts_run(px_loop *loop, struct pxi_post *fifo);
/* Posts that have not run (px_loop_run's "alive"). */
static inline bool pxi_posts_pending(const px_loop *loop)
{
	/* Relaxed: a post missed here is seen at the loop's next run. */
	return atomic_load_explicit(&((px_loop *)loop)->posts, memory_order_relaxed) != NULL;
}

/* signal.c */
/* Deletes every signal watcher of the loop, restoring dispositions. */
void pxi_signals_free(px_loop *loop);

/* io.c */
/* Registers the loop's own fd for reading: not visible to px_io_* */
int pxi_io_add_internal(px_loop *loop, int fd, px_io_cb *cb);
int pxi_io_add_owned(px_loop *loop, int fd, unsigned events, px_io_cb *cb,
                     struct pxi_owner *owner);
struct pxi_owner *pxi_io_owner(px_loop *loop, int fd); /* NULL if none */
struct pxi_watch *pxi_io_get(const px_loop *loop, int fd); /* NULL if unregistered */
static inline struct pxi_sendq *pxi_io_sendq(const px_loop *loop, int fd)
{
	return fd >= 0 && fd < loop->sqcap ? loop->sq[fd] : NULL;
}
/* Attaches q to registered fd (0 or -ENOMEM); px_io_del frees it. */
int pxi_io_set_sendq(px_loop *loop, int fd, struct pxi_sendq *q);
/* Sets or clears the library's own write interest for fd (registered). */
int pxi_io_lib_write(px_loop *loop, int fd, bool on);
/* Room for what pxi_io_lib_write needs, so that it cannot fail afterwards
 * (0 or -ENOMEM).  Inline: px_send asks before every send. */
int pxi_io_lib_reserve_slow(px_loop *loop);
static inline int pxi_io_lib_reserve(px_loop *loop)
{
	return loop->chglen < loop->chgcap ? 0 : pxi_io_lib_reserve_slow(loop);
}
void pxi_io_free_all(px_loop *loop);
void pxi_io_dispatch(px_loop *loop, int n);
void pxi_io_et_check(px_loop *loop);
/* Before a wait: fold the iteration's changes into the kernel, reserve room
 * for events.  0 or -errno. */
int pxi_io_prepare(px_loop *loop);
/* After a wait that returned n events: adds the refused changes as errors;
 * returns the new count. */
int pxi_io_add_failed(px_loop *loop, int n);

/* send.c: called by io.c */
void pxi_sendq_flush(px_loop *loop, int fd);   /* fd writable, lib interest set */
void pxi_sendq_free(px_loop *loop, struct pxi_sendq *q);
void pxi_send_loop_free(px_loop *loop); /* frees what send.c keeps per loop */

static inline void pxi_call_enter(px_loop *loop) { loop->depth++; loop->ran_cb = true; }
static inline void pxi_call_leave(px_loop *loop) { loop->depth--; }

#endif
