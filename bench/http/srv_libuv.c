/* libuv HTTP-hello server: uv_tcp + uv_read_start + uv_write (epoll on
 * Linux; libuv has no other backend here). */
#include "hb_common.h"
#include <uv.h>

struct wreq {
	uv_write_t req;
	struct uconn *u;
	bool embedded;
};

struct uconn {
	uv_tcp_t h; /* first: the handle's address is the connection's */
	struct hb_conn *c;
	struct wreq w; /* the usual write; a second concurrent one is malloc'd */
	bool wbusy;
};

static uv_loop_t loop;
static uv_tcp_t server;

static void on_closed(uv_handle_t *h)
{
	struct uconn *u = (struct uconn *)h;
	free(u->c);
	free(u);
}

static void conn_close(struct uconn *u)
{
	if (!uv_is_closing((uv_handle_t *)&u->h))
		uv_close((uv_handle_t *)&u->h, on_closed);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct uconn *u = (struct uconn *)h;
	(void)hint;
	buf->base = u->c->in + u->c->inlen;
	buf->len = HB_INBUF - u->c->inlen;
}

static void on_written(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	struct uconn *u = w->u;
	if (w->embedded)
		u->wbusy = false;
	else
		free(w);
	if (status < 0 || u->c->close_after)
		conn_close(u);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct uconn *u = (struct uconn *)s;
	(void)buf;
	if (nread < 0) {
		conn_close(u);
		return;
	}
	if (nread == 0)
		return;
	u->c->inlen += (size_t)nread;
	int k = hb_consume(u->c);
	if (k < 0) {
		conn_close(u);
		return;
	}
	if (k == 0)
		return;
	size_t len;
	const char *out = hb_out(k, &len);
	uv_buf_t b = uv_buf_init((char *)out, (unsigned)len);
	struct wreq *w;
	if (!u->wbusy) {
		w = &u->w;
		u->wbusy = true;
	} else {
		w = malloc(sizeof(*w));
		if (!w) {
			conn_close(u);
			return;
		}
		w->embedded = false;
	}
	w->u = u;
	if (u->c->close_after)
		uv_read_stop(s);
	if (uv_write(&w->req, s, &b, 1, on_written) < 0) {
		if (w->embedded)
			u->wbusy = false;
		else
			free(w);
		conn_close(u);
	}
}

static void on_connection(uv_stream_t *srv, int status)
{
	if (status < 0)
		return;
	struct uconn *u = malloc(sizeof(*u));
	struct hb_conn *c = hb_conn_new(-1);
	if (!u || !c) {
		free(u);
		free(c);
		return;
	}
	u->c = c;
	u->wbusy = false;
	u->w.embedded = true;
	uv_tcp_init(&loop, &u->h);
	if (uv_accept(srv, (uv_stream_t *)&u->h) < 0) {
		uv_close((uv_handle_t *)&u->h, on_closed);
		return;
	}
	uv_os_fd_t fd;
	if (uv_fileno((uv_handle_t *)&u->h, &fd) == 0)
		c->fd = fd;
	uv_read_start((uv_stream_t *)&u->h, on_alloc, on_read);
}

int main(int argc, char **argv)
{
	struct hb_opts o;
	hb_args(argc, argv, &o);
	hb_stats_init();
	if (strcmp(o.backend, "epoll") != 0) {
		fprintf(stderr, "srv_libuv: only epoll\n");
		return 1;
	}
	uv_loop_init(&loop);
	uv_tcp_init(&loop, &server);
	struct sockaddr_in sa;
	uv_ip4_addr("127.0.0.1", o.port, &sa);
	int rc = uv_tcp_bind(&server, (const struct sockaddr *)&sa, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&server, SOMAXCONN, on_connection);
	if (rc < 0) {
		fprintf(stderr, "srv_libuv: %s\n", uv_strerror(rc));
		return 1;
	}
	hb_ready("libuv", "epoll", o.port);
	uv_run(&loop, UV_RUN_DEFAULT);
	return 1;
}
