/* pollux HTTP-hello server: px_listen_tcp + px_acceptor_add + px_io_add +
 * px_send (default) or, with --plain-send, send() with the same EAGAIN
 * handling as the other servers (px_io_mod to PX_WRITE and back).  A
 * connection ends with px_io_del + close, or, with --io-close, px_io_close
 * (no epoll_ctl: no other copy of the socket exists).
 * --backend epoll|poll|select picks the backend. */
#include "hb_common.h"
#include "pollux.h"

static bool plain, io_close;

static void conn_close(px_loop *loop, struct hb_conn *c)
{
	if (io_close) {
		px_io_close(loop, c->fd);
	} else {
		px_io_del(loop, c->fd);
		close(c->fd);
	}
	free(c);
}

static void on_drain(px_loop *loop, int fd, int status, void *arg)
{
	(void)fd;
	(void)status;
	conn_close(loop, arg); /* drained (status 0) or failed: close either way */
}

static void on_io(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct hb_conn *c = arg;
	(void)fd;

	if (plain) {
		int r;
		if (c->outlen > 0) {
			r = hb_flush(c);
			if (r == HB_KEEP && px_io_mod(loop, c->fd, PX_READ) < 0)
				r = HB_CLOSE;
		} else {
			r = hb_on_readable(c);
			if (r == HB_WANT_WRITE && px_io_mod(loop, c->fd, PX_WRITE) < 0)
				r = HB_CLOSE;
		}
		if (r == HB_CLOSE)
			conn_close(loop, c);
		return;
	}
	(void)revents;
	int k = hb_read(c);
	if (k < 0) {
		conn_close(loop, c);
		return;
	}
	if (k == 0)
		return;
	size_t len;
	const char *out = hb_out(k, &len);
	if (px_send(loop, c->fd, out, len) < 0) {
		conn_close(loop, c);
		return;
	}
	if (c->close_after) {
		if (px_send_pending(loop, c->fd) == 0) {
			conn_close(loop, c);
		} else if (px_send_notify(loop, c->fd, 0, on_drain, c) < 0 ||
		           px_io_mod(loop, c->fd, 0) < 0) {
			conn_close(loop, c);
		}
	}
}

static void on_accept(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                      socklen_t peerlen, void *arg)
{
	(void)lfd;
	(void)peer;
	(void)peerlen;
	(void)arg;
	if (cfd < 0)
		return; /* resource shortage: the acceptor backs off by itself */
	struct hb_conn *c = hb_conn_new(cfd);
	if (!c || px_io_add(loop, cfd, PX_READ, on_io, c) < 0) {
		close(cfd);
		free(c);
	}
}

int main(int argc, char **argv)
{
	struct hb_opts o;
	hb_args(argc, argv, &o);
	plain = o.plain_send;
	io_close = o.io_close;
	hb_stats_init();
	px_loop *loop = px_loop_new_backend(o.backend);
	if (!loop) {
		perror("srv_pollux: px_loop_new_backend");
		return 1;
	}
	int lfd = px_listen_tcp("127.0.0.1", (uint16_t)o.port, 0);
	if (lfd < 0) {
		fprintf(stderr, "srv_pollux: px_listen_tcp: %s\n", strerror(-lfd));
		return 1;
	}
	int rc = px_acceptor_add(loop, lfd, on_accept, NULL);
	if (rc < 0) {
		fprintf(stderr, "srv_pollux: px_acceptor_add: %s\n", strerror(-rc));
		return 1;
	}
	hb_ready(plain ? "pollux-plain" : "pollux", px_loop_backend(loop), o.port);
	rc = px_loop_run(loop, PX_RUN_DEFAULT);
	fprintf(stderr, "srv_pollux: px_loop_run returned %d\n", rc);
	return 1;
}
