/* Hand-written epoll HTTP-hello server: the lower bound.  Level-triggered,
 * one epoll_ctl(ADD) per connection, close() without EPOLL_CTL_DEL (closing
 * the last reference removes the fd from the epoll set). */
#include "hb_common.h"
#include <sys/epoll.h>

static int ep;
static int lfd;

static void conn_close(struct hb_conn *c)
{
	close(c->fd);
	free(c);
}

static void on_accept(void)
{
	for (int i = 0; i < HB_ACCEPT_BATCH; i++) {
		int fd = hb_accept(lfd);
		if (fd < 0)
			return;
		struct hb_conn *c = hb_conn_new(fd);
		struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
		if (!c || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
			close(fd);
			free(c);
		}
	}
}

static void on_conn(struct hb_conn *c, uint32_t ev)
{
	int r;
	if (c->outlen > 0) { /* waiting for writability */
		if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		r = hb_flush(c);
		if (r == HB_KEEP) {
			struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
			if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
				r = HB_CLOSE;
		}
	} else {
		r = hb_on_readable(c);
		if (r == HB_WANT_WRITE) {
			struct epoll_event e = { .events = EPOLLOUT, .data.ptr = c };
			if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
				r = HB_CLOSE;
		}
	}
	if (r == HB_CLOSE)
		conn_close(c);
}

int main(int argc, char **argv)
{
	struct hb_opts o;
	hb_args(argc, argv, &o);
	hb_stats_init();
	lfd = hb_listen(o.port);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (lfd < 0 || ep < 0) {
		perror("srv_epoll: listen/epoll");
		return 1;
	}
	struct epoll_event le = { .events = EPOLLIN, .data.ptr = NULL };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le) < 0) {
		perror("srv_epoll: epoll_ctl");
		return 1;
	}
	hb_ready("epoll-raw", "epoll", o.port);
	struct epoll_event evs[256];
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("srv_epoll: epoll_wait");
			return 1;
		}
		for (int i = 0; i < n; i++) {
			if (!evs[i].data.ptr)
				on_accept();
			else
				on_conn(evs[i].data.ptr, evs[i].events);
		}
	}
}
