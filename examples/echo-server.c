/* echo-server: sends back everything it receives, in bounded memory.
 *
 *   echo-server [--port N] [--host ADDR|any] [--et] [--stats]
 *
 * Echoes through px_send (the library's per-fd send queue) with
 * back-pressure.  Per client:
 *  - after each read the bytes are handed to px_send, which sends what the
 *    kernel takes and queues the rest;
 *  - once px_send_pending() is above ECHO_HIGH the connection stops being
 *    read (px_io_mod(fd, 0)).  Unread data then stays in the kernel: the
 *    server's receive buffer fills, the TCP window closes, and the client's
 *    sends stall.  A client that sends fast and reads slowly cannot make the
 *    server's memory grow: its queue stays <= ECHO_HIGH + one read buffer;
 *  - px_send_notify(..., ECHO_LOW, on_drain, ...) resumes reading when the
 *    queue has fallen to ECHO_LOW.  It reads at once in the drain callback:
 *    with --et no new edge may come for data that is already waiting;
 *  - at end of file reading stops and the connection is closed once its
 *    queue has drained (drain callback with low_water 0);
 *  - a read error, a failed px_send or an error status in the drain callback
 *    closes the connection (px_io_del, then close).
 * With --et the watchers are edge-triggered and read until EAGAIN (or until
 * the queue is above ECHO_HIGH).  One read buffer serves all connections:
 * px_send copies what it cannot send at once.
 *
 * --stats prints, every second while there is traffic and on SIGINT/SIGTERM
 * (which then end the server), the peak RSS (VmHWM from /proc/self/status)
 * and the high-water marks of the queued bytes: over all connections
 * (queued_hwm) and of a single connection (conn_queued_hwm).  Keeping
 * queued_hwm exact costs a walk over the connections after each read, so it
 * is only done with --stats.
 *
 * Runs on the backend named by $POLLUX_BACKEND until killed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include "pollux.h"

/* Stop reading a client above ECHO_HIGH queued bytes, resume at ECHO_LOW.
 * (Overridable at build time, e.g. -DECHO_HIGH=... to compare with an
 * unbounded server.) */
#ifndef ECHO_HIGH
#define ECHO_HIGH (256u * 1024)
#endif
#ifndef ECHO_LOW
#define ECHO_LOW (64u * 1024)
#endif
#define READ_SZ 65536

struct conn {
	struct conn *prev, *next; /* all connections, for --stats and exit */
	int fd;
	bool reading; /* PX_READ armed */
	bool eof;     /* peer done sending: close once the queue is empty */
};

static bool et, stats;
static struct conn *conns;
static size_t nconns;
static char rbuf[READ_SZ];

/* --stats counters */
static unsigned long long echoed;
static size_t queued_hwm, conn_queued_hwm;

static px_drain_cb on_drain;

static unsigned mode(void)
{
	return et ? PX_ET : 0;
}

static void conn_close(px_loop *loop, struct conn *c)
{
	px_io_del(loop, c->fd); /* also discards what is still queued */
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	nconns--;
	free(c);
}

static int set_reading(px_loop *loop, struct conn *c, bool on)
{
	int rc = px_io_mod(loop, c->fd, on ? PX_READ | mode() : 0);
	if (rc == 0)
		c->reading = on;
	return rc;
}

static size_t total_queued(const px_loop *loop)
{
	size_t sum = 0;
	for (const struct conn *c = conns; c; c = c->next)
		sum += px_send_pending(loop, c->fd);
	return sum;
}

/* Queues only grow in px_send, so sampling right after it sees every peak. */
static void note_queued(const px_loop *loop, size_t pending)
{
	if (pending > conn_queued_hwm)
		conn_queued_hwm = pending;
	size_t total = total_queued(loop);
	if (total > queued_hwm)
		queued_hwm = total;
}

/* End of file: stop reading, close once everything has been sent. */
static void conn_eof(px_loop *loop, struct conn *c)
{
	c->eof = true;
	if (set_reading(loop, c, false) < 0 || px_send_pending(loop, c->fd) == 0) {
		conn_close(loop, c);
		return;
	}
	/* Called while the queue is above 0: on_drain runs when it is empty
	 * (or with an error status if the rest cannot be sent). */
	if (px_send_notify(loop, c->fd, 0, on_drain, c) < 0)
		conn_close(loop, c);
}

/* Reads and echoes: once with level-triggered watchers (the loop reports
 * the fd again while data is waiting), until EAGAIN with --et.  Either way
 * it stops early when the queue goes above ECHO_HIGH.  May close c. */
static void conn_read(px_loop *loop, struct conn *c)
{
	for (;;) {
		ssize_t n = recv(c->fd, rbuf, sizeof(rbuf), 0);
		if (n > 0) {
			int rc = px_send(loop, c->fd, rbuf, (size_t)n);
			if (rc < 0) {
				conn_close(loop, c); /* -EPIPE, -ECONNRESET, -ENOMEM, ... */
				return;
			}
			size_t pending = px_send_pending(loop, c->fd);
			if (stats) {
				echoed += (unsigned long long)n;
				note_queued(loop, pending);
			}
			if (pending > ECHO_HIGH) {
				/* Back-pressure: leave the rest in the kernel until
				 * on_drain says the peer has caught up. */
				if (set_reading(loop, c, false) < 0)
					conn_close(loop, c);
				return;
			}
			if (!et)
				return;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n == 0)
			conn_eof(loop, c);
		else
			conn_close(loop, c); /* read error */
		return;
	}
}

/* The queue has fallen to ECHO_LOW (or to 0 after end of file), or a send
 * failed (status < 0, the queue is gone). */
static void on_drain(px_loop *loop, int fd, int status, void *arg)
{
	struct conn *c = arg;

	if (status < 0) {
		conn_close(loop, c);
		return;
	}
	if (c->eof) {
		if (px_send_pending(loop, fd) == 0)
			conn_close(loop, c);
		return;
	}
	if (!c->reading) {
		if (set_reading(loop, c, true) < 0) {
			conn_close(loop, c);
			return;
		}
		/* Read now: under PX_ET the data that piled up in the kernel
		 * while we were not reading makes no new edge. */
		conn_read(loop, c);
	}
}

static void conn_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)fd;
	(void)revents; /* PX_HUP / PX_ERR: recv() reports them */
	conn_read(loop, arg);
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
	c->reading = true;
	if (px_io_add(loop, cfd, PX_READ | mode(), conn_cb, c) < 0) {
		close(cfd);
		free(c);
		return;
	}
	if (px_send_notify(loop, cfd, ECHO_LOW, on_drain, c) < 0) {
		px_io_del(loop, cfd);
		close(cfd);
		free(c);
		return;
	}
	c->next = conns;
	if (conns)
		conns->prev = c;
	conns = c;
	nconns++;
}

/* ------------------------------------------------------------------------ */
/* --stats                                                                    */

/* A "Vm...:  N kB" line of /proc/self/status, in KiB; -1 if unavailable. */
static long vm_kib(const char *key)
{
	FILE *f = fopen("/proc/self/status", "re");
	char line[256];
	long v = -1;
	size_t kl = strlen(key);

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, key, kl) && line[kl] == ':') {
			v = strtol(line + kl + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

static void print_stats(const px_loop *loop, const char *tag)
{
	long hwm = vm_kib("VmHWM");
	if (hwm < 0) {
		struct rusage ru;
		if (getrusage(RUSAGE_SELF, &ru) == 0)
			hwm = ru.ru_maxrss; /* KiB on Linux */
	}
	printf("echo-server: %s peak_rss_kib=%ld rss_kib=%ld queued=%zu queued_hwm=%zu "
	       "conn_queued_hwm=%zu conns=%zu echoed=%llu\n",
	       tag, hwm, vm_kib("VmRSS"), total_queued(loop), queued_hwm, conn_queued_hwm,
	       nconns, echoed);
	fflush(stdout);
}

static void stats_tick(px_loop *loop, int64_t id, void *arg)
{
	static unsigned long long last_echoed;
	static size_t last_conns;
	(void)id;
	(void)arg;
	if (echoed != last_echoed || nconns != last_conns || total_queued(loop) > 0)
		print_stats(loop, "stats");
	last_echoed = echoed;
	last_conns = nconns;
}

static int sig_pipe[2] = { -1, -1 };

static void on_signal(int signo)
{
	int e = errno;
	unsigned char b = (unsigned char)signo;
	(void)!write(sig_pipe[1], &b, 1);
	errno = e;
}

static void sig_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	unsigned char b = 0;
	(void)revents;
	(void)arg;
	while (read(fd, &b, 1) > 0)
		;
	print_stats(loop, "final");
	px_loop_stop(loop);
}

static int stats_start(px_loop *loop)
{
	/* pipe + fcntl rather than pipe2: macOS has no pipe2. */
	if (pipe(sig_pipe) < 0)
		return -errno;
	for (int i = 0; i < 2; i++)
		if (fcntl(sig_pipe[i], F_SETFD, FD_CLOEXEC) < 0 ||
		    fcntl(sig_pipe[i], F_SETFL, fcntl(sig_pipe[i], F_GETFL) | O_NONBLOCK) < 0)
			return -errno;
	int rc = px_io_add(loop, sig_pipe[0], PX_READ, sig_cb, NULL);
	if (rc < 0)
		return rc;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
		return -errno;
	int64_t id = px_timer_add(loop, 1000, 1000, stats_tick, NULL);
	return id < 0 ? (int)id : 0;
}

/* ------------------------------------------------------------------------ */

static int usage(void)
{
	fprintf(stderr, "usage: echo-server [--port N] [--host ADDR|any] [--et] [--stats]\n");
	return 64;
}

int main(int argc, char **argv)
{
	long port = 7007;
	const char *host = "127.0.0.1";

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--et")) {
			et = true;
		} else if (!strcmp(argv[i], "--stats")) {
			stats = true;
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
	if (rc == 0 && stats)
		rc = stats_start(loop);
	if (rc < 0) {
		fprintf(stderr, "echo-server: setup: %s\n", strerror(-rc));
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
	while (conns) {
		struct conn *c = conns;
		conns = c->next;
		close(c->fd);
		free(c);
	}
	close(lfd);
	px_loop_free(loop);
	if (sig_pipe[0] >= 0) {
		close(sig_pipe[0]);
		close(sig_pipe[1]);
	}
	return rc < 0 ? 1 : 0;
}
