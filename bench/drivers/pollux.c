/* pollux: fd-keyed watchers, nothing for the user to allocate. */
#include <stdint.h>
#include <stdio.h>

#include "pollux.h"
#include "../bench.h"

static px_loop *L;
static const char *const backends[] = { "epoll", "poll", "select", NULL };

static void cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	(void)fd;
	(void)revents;
	bench_event((int)(intptr_t)arg);
}

static int init(const char *backend, int n)
{
	(void)n;
	L = px_loop_new_backend(backend);
	if (!L) {
		perror("px_loop_new_backend");
		return -1;
	}
	return 0;
}

static const char *name(void) { return px_loop_backend(L); }
static int add(int i) { return px_io_add(L, bench_rfd[i], PX_READ, cb, (void *)(intptr_t)i); }
static int del(int i) { return px_io_del(L, bench_rfd[i]); }
static int mod(int i, int on) { return px_io_mod(L, bench_rfd[i], on ? PX_READ : 0); }
static int run(void) { return px_loop_run(L, PX_RUN_NOWAIT); }

const struct bench_driver drv_pollux = {
	.lib = "pollux", .backends = backends, .init = init, .backend_name = name,
	.add = add, .del = del, .mod = mod, .run_nowait = run, .handle_size = 0,
};
