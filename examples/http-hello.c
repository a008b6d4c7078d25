/* http-hello: the classic epoll tutorial server, written on pollux.
 *
 *   http-hello [--et] [--max-requests N] [--port N] [--host ADDR|any]
 *              [--threads N] [--drain-ms N] [--stats]
 *
 * Listens on ADDR (default 127.0.0.1; "any" for every address; port 8080)
 * and answers every request with "Hello, world!".  Each client gets a read
 * watcher (PX_READ, or PX_READ | PX_ET with --et, which then reads until
 * EAGAIN); once the buffered request holds a blank line the response is
 * written, what the kernel does not take at once is kept and written when
 * the socket is writable (PX_WRITE), and the connection is closed
 * (HTTP/1.0, "Connection: close").  Runs on the backend named by
 * $POLLUX_BACKEND.
 *
 * --threads N runs N loops, one per thread, each accepting on its own
 * SO_REUSEPORT listener (see multiloop.h).
 * SIGTERM or SIGINT: graceful stop.  The listeners are closed, connections
 * that have not sent a byte for 1 s since they were accepted (ML_IDLE_MS)
 * are closed, requests already begun are answered;
 * then the server exits 0 with a summary line on stdout
 * ("http-hello: exit reason=SIGTERM drain=clean threads=N elapsed_ms=T
 * connections=C requests=R dropped=D").  A second signal, or the drain
 * deadline (--drain-ms, default 5000), closes what is left (drain=
 * second-signal or deadline, those connections counted in dropped).
 * SIGHUP prints the loops' counters (px_loop_stats summed over the loops,
 * and the counters above) as one "http-hello: counters when=sighup ..."
 * line on stdout; --stats prints the same line at exit (when=exit).
 * --max-requests N: after N responses the server stops as on SIGTERM.
 * Every served request is logged on stdout ("served N: <request line>"). */
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
#include <stdatomic.h>
#include <unistd.h>

#include "multiloop.h"
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

struct hstate;

struct conn {
	int fd;
	bool responding;
	size_t inlen;
	const char *out; /* the rest of the response still to write */
	size_t outlen;
	uint64_t since;  /* px_loop_now when accepted */
	struct hstate *st;
	struct conn *prev, *next;
	char in[REQ_MAX + 1];
};

/* One loop's state: only its thread touches it. */
struct hstate {
	struct ml_worker *w;
	struct conn *conns;
	size_t nconns;
	uint64_t connections, requests, dropped;
};

/* Read-only once the loops run. */
static bool et;
static long max_requests; /* 0: no limit */
/* Shared by the loops. */
static atomic_long served;   /* requests read (numbers the log lines) */
static atomic_long finished; /* responses written (or abandoned) and closed */

static void conn_close(px_loop *loop, struct conn *c)
{
	struct hstate *st = c->st;
	px_io_del(loop, c->fd);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		st->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	st->nconns--;
	if (c->responding) {
		long n = atomic_fetch_add(&finished, 1) + 1;
		if (max_requests > 0 && n == max_requests)
			ml_stop_all(st->w, "max-requests");
	}
	free(c);
	if (st->w->draining && st->nconns == 0)
		ml_drained(st->w);
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
static void log_request(const struct conn *c, long number)
{
	size_t n = strcspn(c->in, "\r\n");
	printf("served %ld: %.*s\n", number, (int)(n > 200 ? 200 : n), c->in);
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
			if (!et)
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

	c->st->requests++;
	c->responding = true;
	log_request(c, atomic_fetch_add(&served, 1) + 1);
	c->out = response;
	c->outlen = sizeof(response) - 1;
	bool failed = false;
	if (flush_out(c, &failed) || failed) {
		finish(loop, c);
		return;
	}
	/* The kernel took only part of it: write the rest when writable. */
	if (px_io_mod(loop, c->fd, PX_WRITE | (et ? PX_ET : 0)) < 0)
		conn_close(loop, c);
}

static void accept_cb(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                      socklen_t peerlen, void *arg)
{
	struct ml_worker *w = arg;
	struct hstate *st = w->state;
	(void)lfd;
	(void)peer;
	(void)peerlen;
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
	c->st = st;
	c->since = px_loop_now(loop);
	int rc = px_io_add(loop, cfd, PX_READ | (et ? PX_ET : 0), conn_cb, c);
	if (rc < 0) {
		fprintf(stderr, "http-hello: px_io_add: %s\n", strerror(-rc));
		close(cfd);
		free(c);
		return;
	}
	c->next = st->conns;
	if (st->conns)
		st->conns->prev = c;
	st->conns = c;
	st->nconns++;
	st->connections++;
}

/* ------------------------------------------------------------------------ */
/* The hooks of multiloop.h, each in the loop's own thread                   */

static int hello_start(struct ml_worker *w)
{
	struct hstate *st = w->state;
	st->w = w;
	return 0;
}

/* Stop: a connection that has sent nothing for ML_IDLE_MS since it was
 * accepted is idle and closed; one that has begun a request (or sends it
 * within ML_IDLE_MS) gets its answer.  Runs every ML_DRAIN_TICK_MS. */
static void hello_drain(struct ml_worker *w)
{
	struct hstate *st = w->state;
	uint64_t now = px_loop_now(w->loop);
	for (struct conn *c = st->conns, *next; c; c = next) {
		next = c->next;
		if (!c->responding && c->inlen == 0 && now - c->since >= ML_IDLE_MS)
			conn_close(w->loop, c);
	}
	if (st->nconns == 0)
		ml_drained(w);
}

static void hello_force(struct ml_worker *w)
{
	struct hstate *st = w->state;
	while (st->conns) {
		st->dropped++;
		conn_close(w->loop, st->conns); /* the last one calls ml_drained */
	}
	ml_drained(w);
}

static void hello_snapshot(struct ml_worker *w, uint64_t *c)
{
	struct hstate *st = w->state;
	c[0] = st->connections;
	c[1] = st->requests;
	c[2] = st->dropped;
}

static void hello_cleanup(struct ml_worker *w)
{
	struct hstate *st = w->state;
	while (st->conns) {
		struct conn *c = st->conns;
		st->conns = c->next;
		px_io_del(w->loop, c->fd);
		close(c->fd);
		free(c);
	}
	st->nconns = 0;
}

static const struct ml_counter hello_counters[] = {
	{ "connections", false },
	{ "requests", false },
	{ "dropped", false },
};

static int usage(void)
{
	fprintf(stderr, "usage: http-hello [--et] [--max-requests N] [--port N] [--host ADDR|any]\n"
	                "                  [--threads N] [--drain-ms N] [--stats]\n");
	return 64;
}

int main(int argc, char **argv)
{
	struct ml_options o = { .host = "127.0.0.1", .port = 8080, .threads = 1, .drain_ms = 5000 };

	for (int i = 1; i < argc; i++) {
		int r = ml_option(&o, argc, argv, &i);
		if (r < 0)
			return usage();
		if (r > 0)
			continue;
		if (!strcmp(argv[i], "--et")) {
			et = true;
		} else if (!strcmp(argv[i], "--max-requests") && i + 1 < argc) {
			char *end;
			errno = 0;
			max_requests = strtol(argv[++i], &end, 10);
			if (errno || end == argv[i] || *end || max_requests < 1 ||
			    max_requests > 1000000000L)
				return usage();
		} else {
			return usage();
		}
	}
	signal(SIGPIPE, SIG_IGN);

	static struct hstate states[ML_MAX_THREADS];
	const struct ml_app app = {
		.name = "http-hello",
		.mode = et ? "edge" : "level",
		.counters = hello_counters,
		.ncounters = (int)(sizeof(hello_counters) / sizeof(hello_counters[0])),
		.on_accept = accept_cb,
		.start = hello_start,
		.drain = hello_drain,
		.force = hello_force,
		.snapshot = hello_snapshot,
		.cleanup = hello_cleanup,
	};
	return ml_run(&app, &o, states, sizeof(states[0]), NULL);
}
