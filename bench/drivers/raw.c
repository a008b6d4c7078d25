/* Hand-written loops: the lower bounds.  Each is what a careful programmer
 * writes for exactly this workload: no callback table, no deferred changes
 * (a naive epoll loop calls epoll_ctl on every change). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/select.h>

#include "../bench.h"

static const char *const only_epoll[] = { "epoll", NULL };
static const char *const only_poll[] = { "poll", NULL };
static const char *const only_select[] = { "select", NULL };

/* ---- epoll ---- */
static int epfd, ep_n;
static struct epoll_event *ep_buf;

static int ep_init(const char *backend, int n)
{
	(void)backend;
	epfd = epoll_create1(EPOLL_CLOEXEC);
	ep_n = n;
	ep_buf = calloc((size_t)n, sizeof(*ep_buf));
	return epfd < 0 || !ep_buf ? -1 : 0;
}
static const char *ep_name(void) { return "epoll"; }
static int ep_add(int i)
{
	struct epoll_event e = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
	return epoll_ctl(epfd, EPOLL_CTL_ADD, bench_rfd[i], &e);
}
static int ep_del(int i) { return epoll_ctl(epfd, EPOLL_CTL_DEL, bench_rfd[i], NULL); }
static int ep_mod(int i, int on)
{
	struct epoll_event e = { .events = on ? EPOLLIN : 0, .data.u32 = (uint32_t)i };
	return epoll_ctl(epfd, EPOLL_CTL_MOD, bench_rfd[i], &e);
}
static int ep_run(void)
{
	int k = epoll_wait(epfd, ep_buf, ep_n, 0);
	for (int j = 0; j < k; j++)
		bench_event((int)ep_buf[j].data.u32);
	return k < 0 ? -1 : 0;
}
const struct bench_driver drv_epoll = {
	.lib = "epoll", .backends = only_epoll, .init = ep_init, .backend_name = ep_name,
	.add = ep_add, .del = ep_del, .mod = ep_mod, .run_nowait = ep_run,
};

/* ---- poll: slot i is pollfd i ---- */
static struct pollfd *pfd;
static int pl_n;

static int pl_init(const char *backend, int n)
{
	(void)backend;
	pl_n = n;
	pfd = calloc((size_t)n, sizeof(*pfd));
	if (!pfd)
		return -1;
	for (int i = 0; i < n; i++)
		pfd[i].fd = -1;
	return 0;
}
static const char *pl_name(void) { return "poll"; }
static int pl_add(int i)
{
	pfd[i].fd = bench_rfd[i];
	pfd[i].events = POLLIN;
	return 0;
}
static int pl_del(int i)
{
	pfd[i].fd = -1;
	return 0;
}
static int pl_mod(int i, int on)
{
	pfd[i].events = on ? POLLIN : 0;
	return 0;
}
static int pl_run(void)
{
	int k = poll(pfd, (nfds_t)pl_n, 0);
	if (k < 0)
		return -1;
	/* k entries have revents != 0: scan to each without a bound check. */
	for (struct pollfd *p = pfd; k > 0; p++, k--) {
		while (!p->revents)
			p++;
		bench_event((int)(p - pfd));
	}
	return 0;
}
const struct bench_driver drv_poll = {
	.lib = "poll", .backends = only_poll, .init = pl_init, .backend_name = pl_name,
	.add = pl_add, .del = pl_del, .mod = pl_mod, .run_nowait = pl_run,
};

/* ---- select: own bit arrays (any fd number), fd -> slot table ---- */
#define BITS (8 * sizeof(unsigned long))
static unsigned long *rd, *out;
static int *slot_of, maxfd = -1;
static size_t words;

static int sl_init(const char *backend, int n)
{
	(void)backend;
	int hi = 0;
	for (int i = 0; i < n; i++)
		if (bench_rfd[i] > hi)
			hi = bench_rfd[i];
	words = (size_t)hi / BITS + 1;
	rd = calloc(words, sizeof(*rd));
	out = calloc(words, sizeof(*out));
	slot_of = calloc((size_t)hi + 1, sizeof(int));
	if (!rd || !out || !slot_of)
		return -1;
	for (int i = 0; i < n; i++)
		slot_of[bench_rfd[i]] = i;
	return 0;
}
static const char *sl_name(void) { return "select"; }
static int sl_add(int i)
{
	int fd = bench_rfd[i];
	rd[fd / BITS] |= 1ul << (fd % BITS);
	if (fd > maxfd)
		maxfd = fd;
	return 0;
}
static int sl_del(int i)
{
	int fd = bench_rfd[i];
	rd[fd / BITS] &= ~(1ul << (fd % BITS)); /* maxfd left as is: a bound only */
	return 0;
}
static int sl_mod(int i, int on) { return on ? sl_add(i) : sl_del(i); }
static int sl_run(void)
{
	struct timeval tv = { 0, 0 };
	size_t nw = (size_t)maxfd / BITS + 1;
	memcpy(out, rd, nw * sizeof(*rd));
	int k = select(maxfd + 1, (fd_set *)out, NULL, NULL, &tv);
	for (size_t wi = 0; wi < nw && k > 0; wi++)
		for (unsigned long b = out[wi]; b; b &= b - 1) {
			k--;
			bench_event(slot_of[wi * BITS + (size_t)__builtin_ctzl(b)]);
		}
	return k < 0 ? -1 : 0;
}
const struct bench_driver drv_select = {
	.lib = "select", .backends = only_select, .init = sl_init, .backend_name = sl_name,
	.add = sl_add, .del = sl_del, .mod = sl_mod, .run_nowait = sl_run,
};
