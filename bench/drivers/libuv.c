/* libuv: one uv_poll_t per slot (Linux libuv only has epoll). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <uv.h>

#include "../bench.h"

static uv_loop_t loop;
static uv_poll_t *h;
static const char *const backends[] = { "epoll", NULL };

static void cb(uv_poll_t *p, int status, int events)
{
	(void)status;
	(void)events;
	bench_event((int)(intptr_t)p->data);
}

static int init(const char *backend, int n)
{
	(void)backend;
	if (uv_loop_init(&loop) != 0)
		return -1;
	h = calloc((size_t)n, sizeof(uv_poll_t));
	if (!h)
		return -1;
	for (int i = 0; i < n; i++) {
		int rc = uv_poll_init(&loop, &h[i], bench_rfd[i]);
		if (rc != 0) {
			fprintf(stderr, "uv_poll_init: %s\n", uv_strerror(rc));
			return -1;
		}
		h[i].data = (void *)(intptr_t)i;
	}
	return 0;
}

static const char *name(void) { return "epoll"; }
static int add(int i) { return uv_poll_start(&h[i], UV_READABLE, cb); }
static int del(int i) { return uv_poll_stop(&h[i]); }
static int run(void) { uv_run(&loop, UV_RUN_NOWAIT); return 0; }

const struct bench_driver drv_libuv = {
	.lib = "libuv", .backends = backends, .init = init, .backend_name = name,
	.add = add, .del = del, .mod = NULL, .run_nowait = run, .handle_size = sizeof(uv_poll_t),
};
