/* http-hello: the classic epoll tutorial server, written on pollux.
 *
 *   http-hello [--et] [--port N] [--host ADDR] [--max-requests N]
 *
 * Listens on ADDR (default 127.0.0.1; "any" for every address) and answers
 * every request with "Hello, world!".  Each client gets a read watcher
 * (PX_READ, or PX_READ | PX_ET with --et, which then reads until EAGAIN);
 * once the buffered request holds a blank line the response is written,
 * what the kernel does not take at once is kept and written when the socket
 * is writable (PX_WRITE), and the connection is closed.  Runs on the backend
 * named by $POLLUX_BACKEND.  With --max-requests N it exits 0 after serving
 * N requests. */
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

#ifndef MSG_NOSIGNAL /* older macOS: SIGPIPE is ignored in main() instead */
#define MSG_NOSIGNAL 0
#endif

static const char response[] =
	"HTTP/1.0 200 OK\r\n"
	"Content-Type: text/plain\r\n"
	"Content-Length: 14\r\n"
	"Connection: close\r\n"
	"\r\n"
	"Hello, world!\n";

#define REQ_MAX 8192

struct conn {
	int fd;
	bool responding;
	size_t inlen;
	const char *out; /* the rest of the response still to write */
	size_t outlen;
	struct conn *prev, *next;
	char in[REQ_MAX + 1];
};

struct server {
	bool et;
	long max_requests; /* 0: no limit */
	long served;
	long finished; /* responses written (or abandoned) and closed */
	struct conn *conns;
};

static struct server srv;

static void conn_close(px_loop *loop, struct conn *c)
{
	px_io_del(loop, c->fd);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		srv.conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->responding) {
		srv.finished++;
		if (srv.max_requests > 0 && srv.finished >= srv.max_requests)
			px_loop_stop(loop);
	}
	free(c);
}

/* Writes what it can; true when the response is out. */
static bool flush_out(struct conn *c, bool *failed)
{
	while (c->outlen > 0) {
		ssize_t n = send(c->fd, c->out, c->outlen, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				*failed = true;
			return false;
		}
		c->out += n;
		c->outlen -= (size_t)n;
	}
	return true;
}

/* The request line, for the log. */
static void log_request(const struct conn *c)
{
	size_t n = strcspn(c->in, "\r\n");
	printf("served %ld: %.*s\n", srv.served, (int)(n > 200 ? 200 : n), c->in);
	fflush(stdout);
}

static void finish(px_loop *loop, struct conn *c)
{
	/* Nothing more is expected from the client: discard what it sent
	 * beyond the request, then close (FIN after the response). */
	char sink[512];
	while (recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT) > 0)
		;
	shutdown(c->fd, SHUT_WR);
	conn_close(loop, c);
}

static void conn_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct conn *c = arg;
	(void)fd;

	if (c->responding) {
		bool failed = false;
		if (flush_out(c, &failed) || failed)
			finish(loop, c);
		return;
	}
	if (!(revents & (PX_READ | PX_HUP | PX_ERR)))
		return;
	for (;;) {
		if (c->inlen >= REQ_MAX) {
			conn_close(loop, c); /* request too large */
			return;
		}
		ssize_t n = recv(c->fd, c->in + c->inlen, REQ_MAX - c->inlen, 0);
		if (n > 0) {
			c->inlen += (size_t)n;
			c->in[c->inlen] = '\0';
			if (strstr(c->in, "\r\n\r\n") || strstr(c->in, "\n\n"))
				break;
			if (!srv.et)
				return; /* level-triggered: the rest comes with the next event */
			continue;   /* edge-triggered: read until EAGAIN */
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		conn_close(loop, c); /* end of file or error before a full request */
		return;
	}

	srv.served++;
	c->responding = true;
	log_request(c);
	c->out = response;
	c->outlen = sizeof(response) - 1;
	bool failed = false;
	if (flush_out(c, &failed) || failed) {
		finish(loop, c);
		return;
	}
	/* The kernel took only part of it: write the rest when writable. */
	if (px_io_mod(loop, c->fd, PX_WRITE | (srv.et ? PX_ET : 0)) < 0)
		conn_close(loop, c);
}

static void accept_cb(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                      socklen_t peerlen, void *arg)
{
	(void)lfd;
	(void)peer;
	(void)peerlen;
	(void)arg;
	if (cfd < 0) {
		fprintf(stderr, "http-hello: accept: %s (backing off)\n", strerror(-cfd));
		return;
	}
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(cfd);
		return;
	}
	c->fd = cfd;
	int rc = px_io_add(loop, cfd, PX_READ | (srv.et ? PX_ET : 0), conn_cb, c);
	if (rc < 0) {
		fprintf(stderr, "http-hello: px_io_add: %s\n", strerror(-rc));
		close(cfd);
		free(c);
		return;
	}
	c->next = srv.conns;
	if (srv.conns)
		srv.conns->prev = c;
	srv.conns = c;
}

static int usage(void)
{
	fprintf(stderr, "usage: http-hello [--et] [--port N] [--host ADDR|any] [--max-requests N]\n");
	return 64;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

int main(int argc, char **argv)
{
	long port = 8080;
	const char *host = "127.0.0.1";

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--et")) {
			srv.et = true;
		} else if (!strcmp(argv[i], "--port") && i + 1 < argc) {
			if (!parse_long(argv[++i], 0, 65535, &port))
				return usage();
		} else if (!strcmp(argv[i], "--host") && i + 1 < argc) {
			host = argv[++i];
			if (!strcmp(host, "any"))
				host = NULL;
		} else if (!strcmp(argv[i], "--max-requests") && i + 1 < argc) {
			if (!parse_long(argv[++i], 1, 1000000000L, &srv.max_requests))
				return usage();
		} else {
			return usage();
		}
	}
	signal(SIGPIPE, SIG_IGN);

	px_loop *loop = px_loop_new();
	if (!loop) {
		fprintf(stderr, "http-hello: px_loop_new: %s\n", strerror(errno));
		return 1;
	}
	int lfd = px_listen_tcp(host, (uint16_t)port, 0);
	if (lfd < 0) {
		fprintf(stderr, "http-hello: listen on %s port %ld: %s\n", host ? host : "any", port,
		        strerror(-lfd));
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
		fprintf(stderr, "http-hello: px_acceptor_add: %s\n", strerror(-rc));
		close(lfd);
		px_loop_free(loop);
		return 1;
	}
	printf("http-hello: backend=%s port=%ld mode=%s\n", px_loop_backend(loop), port,
	       srv.et ? "edge" : "level");
	fflush(stdout);

	rc = px_loop_run(loop, PX_RUN_DEFAULT);
	if (rc < 0)
		fprintf(stderr, "http-hello: px_loop_run: %s\n", strerror(-rc));

	px_acceptor_del(loop, lfd);
	close(lfd);
	while (srv.conns) {
		struct conn *c = srv.conns;
		srv.conns = c->next;
		px_io_del(loop, c->fd);
		close(c->fd);
		free(c);
	}
	px_loop_free(loop);
	return rc < 0 ? 1 : 0;
}
