/* multiloop: the server scaffolding that http-hello and echo-server share.
 *
 *  - One loop per thread (--threads N, default 1), each with its own
 *    listener on the same port: px_listen_tcp_opts(..., PX_LISTEN_REUSEPORT)
 *    when N > 1 (the kernel spreads the connections), px_listen_tcp when
 *    N == 1.  Loop 0 runs in the main thread.
 *  - Loop 0 owns SIGTERM, SIGINT and SIGHUP (px_signal_add: one loop per
 *    signal per process) and talks to the other loops only with
 *    px_loop_post; they answer the same way.
 *  - SIGTERM or SIGINT: a graceful drain.  Every loop deletes its acceptor,
 *    takes the connections already in its listener's accept queue (closing
 *    the listener would reset them) and closes it; the example's drain hook
 *    then closes idle connections (quiet for ML_IDLE_MS) and lets the
 *    others finish; it runs again every ML_DRAIN_TICK_MS; a loop whose last
 *    connection is gone has drained.  When every loop has drained the process exits 0.
 *    The drain is bounded: after --drain-ms (default 5000) or on a second
 *    SIGTERM/SIGINT, the force hook closes what is left (counted as
 *    "dropped"), and the process still exits 0.
 *  - SIGHUP: every loop's px_loop_stats and the example's counters are
 *    gathered (a post to each loop, which posts its snapshot back) and
 *    summed into one "counters when=sighup" line.
 *  - At exit one summary line ("NAME: exit reason=... drain=clean|deadline|
 *    second-signal ..."), and with --stats a "counters when=exit" line.
 * Everything is printed to stdout, one line per report, flushed at once.
 * Signal each process once: timeout(1) without --foreground, for one, sends
 * a signal it forwards twice (to its child and to its process group), which
 * reads as a second SIGTERM.
 *
 * Threads: a loop's state (its worker and the example's state for it) is
 * touched only by the thread that runs the loop, except what the comments
 * below say; everything that crosses threads goes through px_loop_post,
 * whose callback runs after everything the posting thread did before
 * posting. */
#ifndef MULTILOOP_H
#define MULTILOOP_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "pollux.h"

#define ML_MAX_COUNTERS 12
#define ML_MAX_THREADS  64
/* While draining, a connection is idle (closed) only once it has been quiet
 * this long: a client between two sends, or whose request is on its way,
 * is not cut off.  The drain hook runs again every ML_DRAIN_TICK_MS. */
#define ML_IDLE_MS       1000
#define ML_DRAIN_TICK_MS 100

/* An example's own counter: summed over the loops, or (max) their maximum. */
struct ml_counter {
	const char *name;
	bool max;
};

/* One loop's counters at one moment. */
struct ml_snap {
	struct px_loop_stats st;
	uint64_t c[ML_MAX_COUNTERS];
};

struct ml_server;

struct ml_worker {
	int idx;              /* 0: the main thread's loop */
	px_loop *loop;
	int lfd;              /* the listener; -1 once closed */
	void *state;          /* the example's state for this loop */
	struct ml_server *srv;
	/* the loop's thread only: */
	bool draining;        /* the acceptor is gone, the drain hook ran */
	bool drained;         /* ml_drained was called */
	int64_t drain_tick;   /* the timer that re-runs the drain hook */
	const char *stop_reason; /* set by ml_stop_all, read by loop 0 in its post */
	/* the main thread only: */
	bool done;            /* the loop has returned, final is valid */
	pthread_t thread;
	/* written by the loop's thread after its loop returned, read by the main
	 * thread after the "done" post (or after joining) */
	struct ml_snap final;
};

struct ml_app {
	const char *name;     /* "http-hello": prefix of every line */
	const char *mode;     /* "level" or "edge", for the start-up line */
	const char *info;     /* NULL, or more "key=value" words for the start-up line */
	const struct ml_counter *counters;
	int ncounters;        /* <= ML_MAX_COUNTERS */
	px_accept_cb *on_accept;                      /* arg: the struct ml_worker */
	int (*start)(struct ml_worker *w);            /* optional, before the threads start */
	void (*drain)(struct ml_worker *w);           /* close idle connections; ml_drained when none is left
	                                                 (at the start of the drain, then every ML_DRAIN_TICK_MS) */
	void (*force)(struct ml_worker *w);           /* close every connection now, then ml_drained */
	void (*snapshot)(struct ml_worker *w, uint64_t *c); /* the example's counters */
	void (*cleanup)(struct ml_worker *w);         /* after the loop returned: free what is left */
};

struct ml_options {
	const char *host;     /* NULL: any address */
	long port;
	long threads;         /* 1..ML_MAX_THREADS */
	long drain_ms;        /* drain deadline */
	bool stats;           /* counters at exit too */
};

/* Parses --threads N, --drain-ms N, --port N, --host ADDR|any and --stats at
 * argv[*i] (advancing *i past a value): 1 when it took the option, 0 when
 * argv[*i] is none of these, -1 when its value is missing (*i unchanged),
 * -2 when the value argv[*i] is bad (*i advanced to it). */
int ml_option(struct ml_options *o, int argc, char **argv, int *i);

/* The --help lines of the options above, with the defaults in *defaults. */
void ml_help(FILE *f, const struct ml_options *defaults);

/* The --help lines on signals and the summary, for a server named name. */
void ml_help_signals(FILE *f, const char *name);

/* Creates the loops and listeners, prints the start-up line
 * ("NAME: backend=B port=P mode=M threads=N [INFO]"), runs until the server has
 * stopped and every thread has been joined, prints the summary, frees the
 * loops.  states: o->threads states of state_size bytes each (set up by the
 * caller; still the caller's after the call).  *total (may be NULL) gets
 * the combined final counters.  Returns the exit status: 0, or 1 when the
 * server could not start (a bad POLLUX_BACKEND, a host that does not
 * resolve, a port in use...: one line on stderr says which, see
 * excommon.h). */
int ml_run(const struct ml_app *app, const struct ml_options *o, void *states,
           size_t state_size, struct ml_snap *total);

/* In w's thread, while draining: no connection is left on this loop. */
void ml_drained(struct ml_worker *w);

/* In any loop's thread (w is that loop's worker): starts the graceful drain
 * of every loop, as SIGTERM does; reason is a string literal for the
 * summary (e.g. "max-requests").  No effect once draining. */
void ml_stop_all(struct ml_worker *w, const char *reason);

#endif
