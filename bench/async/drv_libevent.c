/* libevent 2.1 with evthread_use_pthreads: event_active from the producer
 * thread (on an fd-less event that is never added) + the mutex queue;
 * evsignal.  Forced onto its backend with event_config_avoid_method. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "async.h"

static struct event_base *B;
static struct event *as, *sig;
static struct mq q;
static enum async_mode mode;
static uint64_t calls;

static const char *const backends[] = { "epoll", "poll", "select", NULL };
static const char *const all_methods[] = { "epoll", "poll", "select", "devpoll", "kqueue",
	                                    "evport", "win32", NULL };

static void on_async(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	calls++;
	if (mode == M_WAKE_TPUT || mode == M_WAKE_LAT)
		async_woken();
	else
		mq_drain(&q);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	async_signal();
}

static int init(const char *backend, enum async_mode m)
{
	struct event_config *cfg;

	mode = m;
	mq_init(&q);
	if (evthread_use_pthreads() < 0 || !(cfg = event_config_new()))
		return -1;
	for (const char *const *x = all_methods; *x; x++)
		if (strcmp(*x, backend) != 0)
			event_config_avoid_method(cfg, *x);
	B = event_base_new_with_config(cfg);
	event_config_free(cfg);
	if (!B) {
		fprintf(stderr, "libevent: no base for %s\n", backend);
		return -1;
	}
	if (!(as = event_new(B, -1, 0, on_async, NULL)))
		return -1;
	if (m == M_SIGNAL_LAT &&
	    (!(sig = evsignal_new(B, SIGUSR1, on_signal, NULL)) || event_add(sig, NULL) < 0)) {
		fprintf(stderr, "libevent: evsignal failed\n");
		return -1;
	}
	return 0;
}

static const char *name(void) { return event_base_get_method(B); }
static void run(void) { event_base_loop(B, EVLOOP_NO_EXIT_ON_EMPTY); }

static int post(void *arg)
{
	if (mq_push(&q, async_posted, arg) < 0)
		return -1;
	event_active(as, EV_READ, 0);
	return 0;
}

static int wake(void)
{
	event_active(as, EV_READ, 0);
	return 0;
}

static void stop(void)
{
	if (event_base_loopbreak(B) < 0)
		async_die("event_base_loopbreak");
}

static uint64_t wakeups(void) { return calls; }

const struct async_driver drv_libevent = {
	.lib = "libevent", .backends = backends, .init = init, .backend_name = name, .run = run,
	.post = post, .wake = wake, .stop = stop, .wakeups = wakeups, .fini = NULL,
};
