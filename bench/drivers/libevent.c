/* libevent 2.1: one struct event per slot (event_assign into our array, so
 * the handle is not part of the loop's malloc'd state), forced onto a
 * backend with event_config_avoid_method. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "../bench.h"

static struct event_base *B;
static struct event *ev;
static const char *const backends[] = { "epoll", "poll", "select", NULL };
static const char *const all_methods[] = { "epoll", "poll", "select", "devpoll", "kqueue",
	                                    "evport", "win32", NULL };

static void cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	bench_event((int)(intptr_t)arg);
}

static int init(const char *backend, int n)
{
	struct event_config *cfg = event_config_new();

	if (!cfg)
		return -1;
	for (const char *const *m = all_methods; *m; m++)
		if (strcmp(*m, backend) != 0)
			event_config_avoid_method(cfg, *m);
	B = event_base_new_with_config(cfg);
	event_config_free(cfg);
	if (!B) {
		fprintf(stderr, "libevent: no base for %s\n", backend);
		return -1;
	}
	ev = calloc((size_t)n, sizeof(struct event));
	if (!ev)
		return -1;
	for (int i = 0; i < n; i++)
		if (event_assign(&ev[i], B, bench_rfd[i], EV_READ | EV_PERSIST, cb,
		                 (void *)(intptr_t)i) < 0)
			return -1;
	return 0;
}

static const char *name(void) { return event_base_get_method(B); }
static int add(int i) { return event_add(&ev[i], NULL); }
static int del(int i) { return event_del(&ev[i]); }
static int run(void) { return event_base_loop(B, EVLOOP_ONCE | EVLOOP_NONBLOCK) < 0 ? -1 : 0; }

const struct bench_driver drv_libevent = {
	.lib = "libevent", .backends = backends, .init = init, .backend_name = name,
	.add = add, .del = del, .mod = NULL, .run_nowait = run,
	.handle_size = sizeof(struct event),
};
