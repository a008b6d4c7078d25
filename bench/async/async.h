/* bench/async: the interface between the harness (async.c) and one driver
 * per event library (drv_*.c).  See bench/async/README.md.
 *
 * Every driver call except post, wake and stop is made from the
 * loop thread: it creates the loop there (init, setup), runs it (run) and
 * frees it (fini).  post, wake and stop are made from the producer thread
 * (main); they are the library's cross-thread entry points. */
#ifndef POLLUX_BENCH_ASYNC_H
#define POLLUX_BENCH_ASYNC_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

enum async_mode { M_POST_TPUT, M_WAKE_TPUT, M_POST_LAT, M_WAKE_LAT, M_SIGNAL_LAT };

typedef void async_fn(void *arg);

struct async_driver {
	const char *lib;
	const char *const *backends; /* NULL-terminated */
	/* Loop thread: create the loop on `backend` and what `mode` needs
	 * (async handles, the signal watcher for SIGUSR1).  0 or -1 (message
	 * on stderr). */
	int (*init)(const char *backend, enum async_mode mode);
	const char *(*backend_name)(void);
	/* Loop thread: run until stop().  In the wake modes the driver calls
	 * async_woken() once per wake-up it sees; in the signal mode
	 * async_signal() once per signal callback; a post(arg) leads to one
	 * async_posted(arg) in the loop thread. */
	void (*run)(void);
	/* Producer thread. */
	int (*post)(void *arg);
	int (*wake)(void);
	void (*stop)(void);
	/* Loop thread, after run returned: the number of times the loop
	 * woke up / ran a batch (0 when the library cannot tell). */
	uint64_t (*wakeups)(void);
	void (*fini)(void);
};

/* Called by drivers, in the loop thread. */
void async_posted(void *arg);
void async_woken(void);
void async_signal(void);
void async_die(const char *what);

/* The usual companion of a coalescing async handle: a mutex-protected
 * vector of (fn, arg), swapped out whole by the consumer (mq.c). */
struct mq_item {
	async_fn *fn;
	void *arg;
};
struct mq {
	pthread_mutex_t mu;
	struct mq_item *v, *spare;
	size_t n, cap, spare_cap;
	uint64_t batches;
};
void mq_init(struct mq *q);
/* Producer: append; returns 1 when the queue was empty before. */
int mq_push(struct mq *q, async_fn *fn, void *arg);
/* Consumer: take everything queued and call it, outside the lock. */
void mq_drain(struct mq *q);
void mq_fini(struct mq *q);

#endif
