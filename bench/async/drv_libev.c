/* libev: ev_async (coalescing) + the mutex queue; ev_signal.  The loop is
 * forced onto its backend with ev_loop_new(EVBACKEND_X | EVFLAG_NOENV). */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <ev.h>

#include "async.h"

static struct ev_loop *L;
static ev_async as, stopper;
static ev_signal sig;
static struct mq q;
static enum async_mode mode;
static uint64_t calls;

static const char *const backends[] = { "epoll", "poll", "select", NULL };

static void on_async(struct ev_loop *l, ev_async *w, int revents)
{
	(void)l;
	(void)w;
	(void)revents;
	calls++;
	if (mode == M_WAKE_TPUT || mode == M_WAKE_LAT)
		async_woken();
	else
		mq_drain(&q);
}

static void on_stop(struct ev_loop *l, ev_async *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(l, EVBREAK_ALL);
}

static void on_signal(struct ev_loop *l, ev_signal *w, int revents)
{
	(void)l;
	(void)w;
	(void)revents;
	async_signal();
}

static int init(const char *backend, enum async_mode m)
{
	unsigned flag = !strcmp(backend, "epoll") ? EVBACKEND_EPOLL
	                : !strcmp(backend, "poll") ? EVBACKEND_POLL
	                                           : EVBACKEND_SELECT;

	mode = m;
	mq_init(&q);
	L = ev_loop_new(flag | EVFLAG_NOENV);
	if (!L) {
		fprintf(stderr, "libev: no loop for %s\n", backend);
		return -1;
	}
	ev_async_init(&as, on_async);
	ev_async_start(L, &as);
	ev_async_init(&stopper, on_stop);
	ev_async_start(L, &stopper);
	if (m == M_SIGNAL_LAT) {
		ev_signal_init(&sig, on_signal, SIGUSR1);
		ev_signal_start(L, &sig);
	}
	return 0;
}

static const char *name(void)
{
	unsigned b = ev_backend(L);
	return b == EVBACKEND_EPOLL ? "epoll" : b == EVBACKEND_POLL ? "poll"
	       : b == EVBACKEND_SELECT ? "select" : "?";
}

static void run(void) { ev_run(L, 0); }

static int post(void *arg)
{
	if (mq_push(&q, async_posted, arg) < 0)
		return -1;
	ev_async_send(L, &as);
	return 0;
}

static int wake(void)
{
	ev_async_send(L, &as);
	return 0;
}

static void stop(void) { ev_async_send(L, &stopper); }
static uint64_t wakeups(void) { return calls; }

const struct async_driver drv_libev = {
	.lib = "libev", .backends = backends, .init = init, .backend_name = name, .run = run,
	.post = post, .wake = wake, .stop = stop, .wakeups = wakeups, .fini = NULL,
};
