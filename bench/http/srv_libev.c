/* libev HTTP-hello server: ev_io watchers on EVBACKEND_EPOLL/POLL/SELECT. */
#include "hb_common.h"
#include <ev.h>

struct lconn {
	struct hb_conn *c;
	ev_io rw, ww;
};

static int lfd;

static void conn_close(struct ev_loop *loop, struct lconn *l)
{
	ev_io_stop(loop, &l->rw);
	ev_io_stop(loop, &l->ww);
	close(l->c->fd);
	free(l->c);
	free(l);
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents)
{
	struct lconn *l = w->data;
	(void)revents;
	int r = hb_flush(l->c);
	if (r == HB_WANT_WRITE)
		return;
	if (r == HB_CLOSE) {
		conn_close(loop, l);
		return;
	}
	ev_io_stop(loop, &l->ww);
	ev_io_start(loop, &l->rw);
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
	struct lconn *l = w->data;
	(void)revents;
	int r = hb_on_readable(l->c);
	if (r == HB_CLOSE) {
		conn_close(loop, l);
	} else if (r == HB_WANT_WRITE) {
		ev_io_stop(loop, &l->rw);
		ev_io_start(loop, &l->ww);
	}
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)w;
	(void)revents;
	for (int i = 0; i < HB_ACCEPT_BATCH; i++) {
		int fd = hb_accept(lfd);
		if (fd < 0)
			return;
		struct lconn *l = malloc(sizeof(*l));
		struct hb_conn *c = hb_conn_new(fd);
		if (!l || !c) {
			close(fd);
			free(l);
			free(c);
			continue;
		}
		l->c = c;
		ev_io_init(&l->rw, on_read, fd, EV_READ);
		ev_io_init(&l->ww, on_write, fd, EV_WRITE);
		l->rw.data = l->ww.data = l;
		ev_io_start(loop, &l->rw);
	}
}

int main(int argc, char **argv)
{
	struct hb_opts o;
	hb_args(argc, argv, &o);
	hb_stats_init();
	unsigned flags = !strcmp(o.backend, "epoll") ? EVBACKEND_EPOLL
	                 : !strcmp(o.backend, "poll") ? EVBACKEND_POLL
	                 : !strcmp(o.backend, "select") ? EVBACKEND_SELECT : 0;
	struct ev_loop *loop = flags ? ev_loop_new(flags | EVFLAG_NOENV) : NULL;
	if (!loop) {
		fprintf(stderr, "srv_libev: no loop for backend %s\n", o.backend);
		return 1;
	}
	lfd = hb_listen(o.port);
	if (lfd < 0) {
		perror("srv_libev: listen");
		return 1;
	}
	ev_io lw;
	ev_io_init(&lw, on_accept, lfd, EV_READ);
	ev_io_start(loop, &lw);
	unsigned be = ev_backend(loop);
	hb_ready("libev", be == EVBACKEND_EPOLL ? "epoll" : be == EVBACKEND_POLL ? "poll"
	                  : be == EVBACKEND_SELECT ? "select" : "?", o.port);
	ev_run(loop, 0);
	return 1;
}
