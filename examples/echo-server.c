/* echo-server: sends back everything it receives.
 *
 *   echo-server [--port N] [--host ADDR|any] [--et]
 *
 * One read watcher per client.  What the kernel does not take at once is
 * kept in a per-connection buffer; while it is not empty the connection is
 * not read (back-pressure) and the watcher waits for PX_WRITE instead.
 * With --et the watchers are edge-triggered and read/write until EAGAIN.
 * Runs on the backend named by $POLLUX_BACKEND until killed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include "pollux.h"

#define BUFSZ 16384

struct conn {
	int fd;
	size_t off, len; /* unsent bytes: buf[off, off + len) */
	char buf[BUFSZ];
};

static bool et;

static void conn_close(px_loop *loop, struct conn *c)
{
	px_io_del(loop, c->fd);
	close(c->fd);
	free(c);
}

/* Sends the buffer; -1 on error, else 1 when empty, 0 when some is left. */
static int flush_out(struct conn *c)
{
	while (c->len > 0) {
		ssize_t n = send(c->fd, c->buf + c->off, c->len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
		}
		c->off += (size_t)n;
		c->len -= (size_t)n;
	}
	c->off = 0;
	return 1;
}

static void conn_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct conn *c = arg;
	unsigned mode = et ? PX_ET : 0;
	(void)revents;

	for (;;) {
		int f = flush_out(c);
		if (f < 0) {
			conn_close(loop, c);
			return;
		}
		if (f == 0) {
			/* Back-pressure: stop reading until the peer catches up. */
			if (px_io_mod(loop, fd, PX_WRITE | mode) < 0)
				conn_close(loop, c);
			return;
		}
		ssize_t n = recv(fd, c->buf, BUFSZ, 0);
		if (n > 0) {
			c->len = (size_t)n;
			if (!et && (size_t)n < BUFSZ) {
				/* Level-triggered: one read per event is enough. */
				f = flush_out(c);
				if (f < 0)
					conn_close(loop, c);
				else
					px_io_mod(loop, fd, (f ? PX_READ : PX_WRITE) | mode);
				return;
			}
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (px_io_mod(loop, fd, PX_READ | mode) < 0)
				conn_close(loop, c);
			return;
		}
		conn_close(loop, c); /* end of file or error */
		return;
	}
}

static void accept_cb(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                      socklen_t peerlen, void *arg)
{
	(void)lfd;
	(void)peer;
	(void)peerlen;
	(void)arg;
	if (cfd < 0) {
		fprintf(stderr, "echo-server: accept: %s (backing off)\n", strerror(-cfd));
		return;
	}
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(cfd);
		return;
	}
	c->fd = cfd;
	if (px_io_add(loop, cfd, PX_READ | (et ? PX_ET : 0), conn_cb, c) < 0) {
		close(cfd);
		free(c);
	}
}

static int usage(void)
{
	fprintf(stderr, "usage: echo-server [--port N] [--host ADDR|any] [--et]\n");
	return 64;
}

int main(int argc, char **argv)
{
	long port = 7007;
	const char *host = "127.0.0.1";

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--et")) {
			et = true;
		} else if (!strcmp(argv[i], "--port") && i + 1 < argc) {
			char *end;
			port = strtol(argv[++i], &end, 10);
			if (*end || end == argv[i] || port < 0 || port > 65535)
				return usage();
		} else if (!strcmp(argv[i], "--host") && i + 1 < argc) {
			host = argv[++i];
			if (!strcmp(host, "any"))
				host = NULL;
		} else {
			return usage();
		}
	}
	signal(SIGPIPE, SIG_IGN);

	px_loop *loop = px_loop_new();
	if (!loop) {
		fprintf(stderr, "echo-server: px_loop_new: %s\n", strerror(errno));
		return 1;
	}
	int lfd = px_listen_tcp(host, (uint16_t)port, 0);
	if (lfd < 0) {
		fprintf(stderr, "echo-server: listen: %s\n", strerror(-lfd));
		px_loop_free(loop);
		return 1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(lfd, (struct sockaddr *)&ss, &sl) == 0)
		port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
		                                      : ((struct sockaddr_in *)&ss)->sin_port);
	int rc = px_acceptor_add(loop, lfd, accept_cb, NULL);
	if (rc < 0) {
		fprintf(stderr, "echo-server: px_acceptor_add: %s\n", strerror(-rc));
		close(lfd);
		px_loop_free(loop);
		return 1;
	}
	printf("echo-server: backend=%s port=%ld mode=%s\n", px_loop_backend(loop), port,
	       et ? "edge" : "level");
	fflush(stdout);
	rc = px_loop_run(loop, PX_RUN_DEFAULT);
	if (rc < 0)
		fprintf(stderr, "echo-server: px_loop_run: %s\n", strerror(-rc));
	close(lfd);
	px_loop_free(loop);
	return rc < 0 ? 1 : 0;
}
