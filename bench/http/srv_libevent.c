/* libevent HTTP-hello server: the bare event API (event_new/event_add with
 * EV_READ|EV_PERSIST, no evhttp, no bufferevents), on epoll/poll/select chosen
 * with event_config_avoid_method. */
#include "hb_common.h"
#include <event2/event.h>

struct lconn {
	struct hb_conn *c;
	struct event *rev, *wev;
};

static int lfd;
static struct event_base *base;

static void conn_close(struct lconn *l)
{
	event_free(l->rev); /* event_del included */
	if (l->wev)
		event_free(l->wev);
	close(l->c->fd);
	free(l->c);
	free(l);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
	struct lconn *l = arg;
	(void)fd;
	(void)what;
	int r = hb_flush(l->c);
	if (r == HB_WANT_WRITE)
		return;
	if (r == HB_CLOSE) {
		conn_close(l);
		return;
	}
	event_del(l->wev);
	event_add(l->rev, NULL);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
	struct lconn *l = arg;
	(void)what;
	int r = hb_on_readable(l->c);
	if (r == HB_CLOSE) {
		conn_close(l);
	} else if (r == HB_WANT_WRITE) {
		if (!l->wev)
			l->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_write, l);
		if (!l->wev) {
			conn_close(l);
			return;
		}
		event_del(l->rev);
		event_add(l->wev, NULL);
	}
}

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	for (int i = 0; i < HB_ACCEPT_BATCH; i++) {
		int cfd = hb_accept(lfd);
		if (cfd < 0)
			return;
		struct lconn *l = malloc(sizeof(*l));
		struct hb_conn *c = hb_conn_new(cfd);
		if (!l || !c) {
			close(cfd);
			free(l);
			free(c);
			continue;
		}
		l->c = c;
		l->wev = NULL;
		l->rev = event_new(base, cfd, EV_READ | EV_PERSIST, on_read, l);
		if (!l->rev || event_add(l->rev, NULL) < 0) {
			if (l->rev)
				event_free(l->rev);
			close(cfd);
			free(c);
			free(l);
		}
	}
}

int main(int argc, char **argv)
{
	struct hb_opts o;
	hb_args(argc, argv, &o);
	hb_stats_init();
	static const char *const all[] = { "epoll", "poll", "select", "devpoll", "kqueue", "evport", "win32" };
	struct event_config *cfg = event_config_new();
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		if (strcmp(all[i], o.backend) != 0)
			event_config_avoid_method(cfg, all[i]);
	base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	if (!base || strcmp(event_base_get_method(base), o.backend) != 0) {
		fprintf(stderr, "srv_libevent: cannot get backend %s\n", o.backend);
		return 1;
	}
	lfd = hb_listen(o.port);
	if (lfd < 0) {
		perror("srv_libevent: listen");
		return 1;
	}
	struct event *lev = event_new(base, lfd, EV_READ | EV_PERSIST, on_accept, NULL);
	event_add(lev, NULL);
	hb_ready("libevent", event_base_get_method(base), o.port);
	event_base_dispatch(base);
	return 1;
}
