/* libuv: uv_async_t (coalescing) + the mutex queue; uv_signal_t. */
#include <signal.h>
#include <stdio.h>

#include <uv.h>

#include "async.h"

static uv_loop_t loop;
static uv_async_t as, stopper;
static uv_signal_t sig;
static struct mq q;
static enum async_mode mode;
static uint64_t calls;

static const char *const backends[] = { "epoll", NULL };

static void on_async(uv_async_t *h)
{
	(void)h;
	calls++;
	if (mode == M_WAKE_TPUT || mode == M_WAKE_LAT)
		async_woken();
	else
		mq_drain(&q);
}

static void on_stop(uv_async_t *h)
{
	(void)h;
	uv_stop(&loop);
}

static void on_signal(uv_signal_t *h, int signo)
{
	(void)h;
	(void)signo;
	async_signal();
}

static int init(const char *backend, enum async_mode m)
{
	int rc;

	(void)backend;
	mode = m;
	mq_init(&q);
	if ((rc = uv_loop_init(&loop)) != 0 || (rc = uv_async_init(&loop, &as, on_async)) != 0 ||
	    (rc = uv_async_init(&loop, &stopper, on_stop)) != 0) {
		fprintf(stderr, "libuv: %s\n", uv_strerror(rc));
		return -1;
	}
	if (m == M_SIGNAL_LAT && ((rc = uv_signal_init(&loop, &sig)) != 0 ||
	                          (rc = uv_signal_start(&sig, on_signal, SIGUSR1)) != 0)) {
		fprintf(stderr, "uv_signal: %s\n", uv_strerror(rc));
		return -1;
	}
	return 0;
}

static const char *name(void) { return "epoll"; }
static void run(void) { uv_run(&loop, UV_RUN_DEFAULT); }

static int post(void *arg)
{
	if (mq_push(&q, async_posted, arg) < 0)
		return -1;
	return uv_async_send(&as);
}

static int wake(void) { return uv_async_send(&as); }

static void stop(void)
{
	if (uv_async_send(&stopper) != 0)
		async_die("uv_async_send(stop)");
}

static uint64_t wakeups(void) { return calls; }

const struct async_driver drv_libuv = {
	.lib = "libuv", .backends = backends, .init = init, .backend_name = name, .run = run,
	.post = post, .wake = wake, .stop = stop, .wakeups = wakeups, .fini = NULL,
};
