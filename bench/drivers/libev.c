/* libev 4: one ev_io per slot, loop forced onto EVBACKEND_EPOLL/POLL/SELECT. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "../bench.h"

static struct ev_loop *L;
static ev_io *w;
static const char *const backends[] = { "epoll", "poll", "select", NULL };

static void cb(struct ev_loop *loop, ev_io *io, int revents)
{
	(void)loop;
	(void)revents;
	bench_event((int)(intptr_t)io->data);
}

static int init(const char *backend, int n)
{
	unsigned flags = !strcmp(backend, "epoll") ? EVBACKEND_EPOLL
	               : !strcmp(backend, "poll")  ? EVBACKEND_POLL
	                                           : EVBACKEND_SELECT;
	L = ev_loop_new(flags | EVFLAG_NOENV);
	if (!L) {
		fprintf(stderr, "libev: no loop for %s\n", backend);
		return -1;
	}
	w = calloc((size_t)n, sizeof(ev_io));
	if (!w)
		return -1;
	for (int i = 0; i < n; i++) {
		ev_io_init(&w[i], cb, bench_rfd[i], EV_READ);
		w[i].data = (void *)(intptr_t)i;
	}
	return 0;
}

static const char *name(void)
{
	unsigned b = ev_backend(L);
	return b == EVBACKEND_EPOLL ? "epoll" : b == EVBACKEND_POLL ? "poll"
	     : b == EVBACKEND_SELECT ? "select" : "other";
}
/* ev_io_set before each start, as a port of libevent's bench.c does
 * (event_set + event_add): the fd may be a new file, which is what pollux's
 * px_io_add must assume too.  libev then checks with one epoll_ctl (ADD,
 * EEXIST) when a churned fd's mask is unchanged; without ev_io_set it would
 * make none. */
static int add(int i)
{
	ev_io_set(&w[i], bench_rfd[i], EV_READ);
	ev_io_start(L, &w[i]);
	return 0;
}
static int del(int i) { ev_io_stop(L, &w[i]); return 0; }
static int run(void) { ev_run(L, EVRUN_NOWAIT); return 0; }

const struct bench_driver drv_libev = {
	.lib = "libev", .backends = backends, .init = init, .backend_name = name,
	.add = add, .del = del, .mod = NULL, .run_nowait = run, .handle_size = sizeof(ev_io),
};
