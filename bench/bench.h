/* pollux benchmark suite: the interface between the workload (dispatch.c)
 * and one driver per event library (drivers/ directory).
 *
 * A driver owns one loop and one persistent read watcher per slot
 * i = 0 .. n-1 on the fd bench_rfd[i].  Its callback calls bench_event(i);
 * everything else (reading the byte, chaining the next write, churning the
 * watcher) is done by the workload, identically for every library. */
#ifndef POLLUX_BENCH_H
#define POLLUX_BENCH_H

#include <stddef.h>

struct bench_driver {
	const char *lib;
	/* NULL-terminated backend names this driver can be forced onto. */
	const char *const *backends;
	/* Create the loop on `backend` and whatever per-slot handles the
	 * library needs the user to own (ev_io, struct event, uv_poll_t).
	 * Called after the fds exist, before any watcher is registered and
	 * before the memory baseline is taken.  0, or -1 with a message on
	 * stderr. */
	int (*init)(const char *backend, int n);
	/* The backend the library actually runs on (checked against the one
	 * asked for). */
	const char *(*backend_name)(void);
	int (*add)(int i);         /* start a persistent read watcher on slot i */
	int (*del)(int i);         /* stop it */
	int (*mod)(int i, int on); /* disarm (on = 0) / re-arm; NULL: use del/add */
	int (*run_nowait)(void);   /* one non-blocking loop iteration */
	/* Bytes per watcher that the API makes the user allocate (0 for
	 * fd-keyed APIs: pollux, hand-written loops). */
	size_t handle_size;
};

extern int *bench_rfd; /* watched fd of slot i */

/* Called by a driver's callback when slot i is readable. */
void bench_event(int i);

/* Helpers for drivers. */
void bench_die(const char *what);

#endif
