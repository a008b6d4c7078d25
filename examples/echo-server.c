/* echo-server: sends back everything it receives, in bounded memory.
 *
 *   echo-server [--et] [--idle-timeout-ms MS] [--port N] [--host ADDR|any]
 *               [--threads N] [--drain-ms N] [--stats]
 *
 * (--help lists every option with its default; bad usage exits 64.)
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
 * the queue is above ECHO_HIGH).  One read buffer per loop serves all its
 * connections: px_send copies what it cannot send at once.
 *
 * Idle timeout (--idle-timeout-ms, default 60000): a connection that makes
 * no progress for that long is closed (counted in idle_timeouts).
 * Progress is a read that got bytes, or the client taking its echo down to
 * ECHO_LOW (a drain notification): a client that neither sends nor reads is
 * cut off, one that only reads a large echo slowly is not.  The loop's
 * connections are kept in one list in the order of their last progress (a
 * connection moves to the tail when it makes some), so the idle ones are
 * at the head: one sweep timer per loop (every eighth of the timeout, 10 ms
 * to 1 s, only while there are connections) closes from the head what is
 * past the deadline, in O(1) per connection and per progress; no timer per
 * connection.
 *
 * --threads N runs N loops, one per thread, each accepting on its own
 * SO_REUSEPORT listener (see multiloop.h).
 * SIGTERM or SIGINT: graceful stop.  The listeners are closed; a connection
 * is closed once it is idle: nothing queued for it, nothing waiting to be
 * read (so the close sends FIN, not RST, and every byte the server read is
 * echoed before it) and nothing read for 1 s (ML_IDLE_MS: a client
 * between two sends is not cut off).  Busy connections go on being served
 * until they are idle or the client closes.  Then the server exits 0 with a
 * summary line on stdout ("echo-server: exit reason=SIGTERM drain=clean
 * threads=N elapsed_ms=T connections=C bytes=B dropped=D").  A second
 * signal, or the drain deadline (--drain-ms, default 5000), closes what is
 * left (drain=second-signal or deadline, those connections counted in
 * dropped).  SIGHUP prints the loops' counters (px_loop_stats summed over
 * the loops, and the counters above) as one "echo-server: counters
 * when=sighup ..." line on stdout.
 *
 * --stats also prints the counters line at exit (when=exit), and, every
 * second while there is traffic, and at exit, the peak RSS (VmHWM from
 * /proc/self/status) and the high-water marks of the queued bytes: over all
 * connections (queued_hwm) and of a single connection (conn_queued_hwm).
 * Keeping queued_hwm exact costs a walk over the connections after each
 * read, so it is only done with --stats.  With --threads N > 1 those lines
 * come from each loop (loop=I); at exit queued_hwm is the sum of the loops'
 * marks (an upper bound) and conn_queued_hwm their maximum.
 *
 * Runs on the backend named by $POLLUX_BACKEND. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "excommon.h"
#include "multiloop.h"
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

struct estate;

struct conn {
	struct conn *prev, *next; /* the loop's connections, for --stats and exit */
	struct estate *st;
	int fd;
	bool reading; /* PX_READ armed */
	bool eof;     /* peer done sending: close once the queue is empty */
	uint64_t last_read; /* px_loop_now of the last read that got bytes */
	uint64_t last_active; /* ... or of the last drain notification */
};

/* One loop's state: only its thread touches it (the main thread reads the
 * --stats marks after joining). */
struct estate {
	struct ml_worker *w;
	struct conn *conns, *tail; /* oldest progress first */
	size_t nconns;
	int64_t sweep;             /* idle sweep timer while there are connections */
	uint64_t connections, echoed, dropped, idle_timeouts;
	/* --stats */
	size_t queued_hwm, conn_queued_hwm;
	unsigned long long last_echoed;
	size_t last_conns;
	char rbuf[READ_SZ];
};

/* Read-only once the loops run. */
static bool et, stats, threaded;
static long idle_ms = 60000;
static uint64_t sweep_ms;

static px_drain_cb on_drain;

static unsigned mode(void)
{
	return et ? PX_ET : 0;
}

static void unlink_conn(struct estate *st, struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		st->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		st->tail = c->prev;
	c->prev = c->next = NULL;
}

static void append_conn(struct estate *st, struct conn *c)
{
	c->prev = st->tail;
	c->next = NULL;
	if (st->tail)
		st->tail->next = c;
	else
		st->conns = c;
	st->tail = c;
}

/* c made progress: to the tail of the list, its idle clock restarts. */
static void touch(const px_loop *loop, struct conn *c)
{
	c->last_active = px_loop_now(loop);
	if (c->st->tail != c) {
		unlink_conn(c->st, c);
		append_conn(c->st, c);
	}
}

static void conn_close(px_loop *loop, struct conn *c)
{
	struct estate *st = c->st;
	px_io_del(loop, c->fd); /* also discards what is still queued */
	close(c->fd);
	unlink_conn(st, c);
	st->nconns--;
	free(c);
	if (st->nconns == 0 && st->sweep > 0) {
		px_timer_del(loop, st->sweep);
		st->sweep = 0;
	}
	if (st->w->draining && st->nconns == 0)
		ml_drained(st->w);
}

static int set_reading(px_loop *loop, struct conn *c, bool on)
{
	int rc = px_io_mod(loop, c->fd, on ? PX_READ | mode() : 0);
	if (rc == 0)
		c->reading = on;
	return rc;
}

static size_t total_queued(const px_loop *loop, const struct estate *st)
{
	size_t sum = 0;
	for (const struct conn *c = st->conns; c; c = c->next)
		sum += px_send_pending(loop, c->fd);
	return sum;
}

/* Queues only grow in px_send, so sampling right after it sees every peak. */
static void note_queued(const px_loop *loop, struct estate *st, size_t pending)
{
	if (pending > st->conn_queued_hwm)
		st->conn_queued_hwm = pending;
	size_t total = total_queued(loop, st);
	if (total > st->queued_hwm)
		st->queued_hwm = total;
}

/* End of file: stop reading, close once everything has been sent.  False
 * when it closed c. */
static bool conn_eof(px_loop *loop, struct conn *c)
{
	c->eof = true;
	if (set_reading(loop, c, false) < 0 || px_send_pending(loop, c->fd) == 0) {
		conn_close(loop, c);
		return false;
	}
	/* Called while the queue is above 0: on_drain runs when it is empty
	 * (or with an error status if the rest cannot be sent). */
	if (px_send_notify(loop, c->fd, 0, on_drain, c) < 0) {
		conn_close(loop, c);
		return false;
	}
	return true;
}

/* Reads and echoes: once with level-triggered watchers (the loop reports
 * the fd again while data is waiting), until EAGAIN with --et.  Either way
 * it stops early when the queue goes above ECHO_HIGH.  False when it closed
 * c. */
static bool conn_read(px_loop *loop, struct conn *c)
{
	struct estate *st = c->st;
	for (;;) {
		ssize_t n = recv(c->fd, st->rbuf, sizeof(st->rbuf), 0);
		if (n > 0) {
			c->last_read = px_loop_now(loop);
			touch(loop, c);
			int rc = px_send(loop, c->fd, st->rbuf, (size_t)n);
			if (rc < 0) {
				conn_close(loop, c); /* -EPIPE, -ECONNRESET, -ENOMEM, ... */
				return false;
			}
			size_t pending = px_send_pending(loop, c->fd);
			st->echoed += (uint64_t)n;
			if (stats)
				note_queued(loop, st, pending);
			if (pending > ECHO_HIGH) {
				/* Back-pressure: leave the rest in the kernel until
				 * on_drain says the peer has caught up. */
				if (set_reading(loop, c, false) < 0) {
					conn_close(loop, c);
					return false;
				}
				return true;
			}
			if (!et)
				return true;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		if (n == 0)
			return conn_eof(loop, c);
		conn_close(loop, c); /* read error */
		return false;
	}
}

/* While draining (at its start, then every ML_DRAIN_TICK_MS): close c if
 * it is idle: nothing queued for it, nothing waiting to be read (so the
 * close sends FIN, not RST, and everything read has been echoed), and
 * nothing read for ML_IDLE_MS (a client between two sends is not cut off).
 * A busy connection is served as usual until it is idle or the client
 * closes (then it closes once its queue is empty). */
static void drain_check(px_loop *loop, struct conn *c)
{
	if (c->eof || !c->reading || px_send_pending(loop, c->fd) > 0)
		return;
	char b;
	ssize_t n;
	do
		n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n > 0)
		return; /* more to echo: the watcher reports it */
	if (n == 0) {
		conn_eof(loop, c); /* nothing queued: closes now */
		return;
	}
	if ((errno == EAGAIN || errno == EWOULDBLOCK) &&
	    px_loop_now(loop) - c->last_read < ML_IDLE_MS)
		return; /* quiet, but not for long yet */
	conn_close(loop, c); /* idle, or an error */
}

/* The queue has fallen to ECHO_LOW (to 0 after end of file), or a send
 * failed (status < 0, the queue is gone). */
static void on_drain(px_loop *loop, int fd, int status, void *arg)
{
	struct conn *c = arg;

	if (status < 0) {
		conn_close(loop, c);
		return;
	}
	touch(loop, c); /* the client is taking its echo */
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
	struct conn *c = arg;
	(void)fd;
	(void)revents; /* PX_HUP / PX_ERR: recv() reports them */
	conn_read(loop, c);
}

/* Closes the connections that made no progress for idle_ms: the head of
 * the list. */
static void idle_sweep(px_loop *loop, int64_t id, void *arg)
{
	struct estate *st = arg;
	uint64_t now = px_loop_now(loop);
	(void)id;
	while (st->conns && now - st->conns->last_active >= (uint64_t)idle_ms) {
		st->idle_timeouts++;
		conn_close(loop, st->conns); /* the last one deletes this timer */
	}
}

static void accept_cb(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                      socklen_t peerlen, void *arg)
{
	struct ml_worker *w = arg;
	struct estate *st = w->state;
	(void)lfd;
	(void)peer;
	(void)peerlen;
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
	c->st = st;
	c->reading = true;
	c->last_read = c->last_active = px_loop_now(loop);
	if (px_io_add(loop, cfd, PX_READ | mode(), conn_cb, c) < 0) {
		close(cfd);
		free(c);
		return;
	}
	int rc = px_send_notify(loop, cfd, ECHO_LOW, on_drain, c);
	if (rc == 0 && st->nconns == 0) {
		int64_t id = px_timer_add(loop, sweep_ms, sweep_ms, idle_sweep, st);
		rc = id < 0 ? (int)id : 0;
		st->sweep = id > 0 ? id : 0;
	}
	if (rc < 0) {
		fprintf(stderr, "echo-server: new connection: %s\n", strerror(-rc));
		px_io_del(loop, cfd);
		close(cfd);
		free(c);
		return;
	}
	append_conn(st, c);
	st->nconns++;
	st->connections++;
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

static long peak_rss_kib(void)
{
	long hwm = vm_kib("VmHWM");
	if (hwm < 0) {
		struct rusage ru;
		if (getrusage(RUSAGE_SELF, &ru) == 0)
			hwm = ru.ru_maxrss; /* KiB on Linux */
	}
	return hwm;
}

static void print_stats(const char *tag, int loop_idx, size_t queued, size_t queued_hwm,
                        size_t conn_queued_hwm, size_t nconns, unsigned long long echoed)
{
	char where[24] = "";
	if (threaded && loop_idx >= 0)
		snprintf(where, sizeof(where), " loop=%d", loop_idx);
	printf("echo-server: %s peak_rss_kib=%ld rss_kib=%ld queued=%zu queued_hwm=%zu "
	       "conn_queued_hwm=%zu conns=%zu echoed=%llu%s\n",
	       tag, peak_rss_kib(), vm_kib("VmRSS"), queued, queued_hwm, conn_queued_hwm, nconns,
	       echoed, where);
	fflush(stdout);
}

static void stats_tick(px_loop *loop, int64_t id, void *arg)
{
	struct estate *st = arg;
	(void)id;
	size_t queued = total_queued(loop, st);
	if (st->echoed != st->last_echoed || st->nconns != st->last_conns || queued > 0)
		print_stats("stats", st->w->idx, queued, st->queued_hwm, st->conn_queued_hwm,
		            st->nconns, (unsigned long long)st->echoed);
	st->last_echoed = st->echoed;
	st->last_conns = st->nconns;
}

/* ------------------------------------------------------------------------ */
/* The hooks of multiloop.h, each in the loop's own thread                   */

static int echo_start(struct ml_worker *w)
{
	struct estate *st = w->state;
	st->w = w;
	if (!stats)
		return 0;
	int64_t id = px_timer_add(w->loop, 1000, 1000, stats_tick, st);
	return id < 0 ? (int)id : 0;
}

static void echo_drain(struct ml_worker *w)
{
	struct estate *st = w->state;
	for (struct conn *c = st->conns, *next; c; c = next) {
		next = c->next;
		drain_check(w->loop, c);
	}
	if (st->nconns == 0)
		ml_drained(w);
}

static void echo_force(struct ml_worker *w)
{
	struct estate *st = w->state;
	while (st->conns) {
		st->dropped++;
		conn_close(w->loop, st->conns); /* the last one calls ml_drained */
	}
	ml_drained(w);
}

static void echo_snapshot(struct ml_worker *w, uint64_t *c)
{
	struct estate *st = w->state;
	c[0] = st->connections;
	c[1] = st->echoed;
	c[2] = st->dropped;
	c[3] = st->idle_timeouts;
}

static void echo_cleanup(struct ml_worker *w)
{
	struct estate *st = w->state;
	while (st->conns) {
		struct conn *c = st->conns;
		st->conns = c->next;
		px_io_del(w->loop, c->fd);
		close(c->fd);
		free(c);
	}
	st->tail = NULL;
	st->nconns = 0;
	if (st->sweep > 0)
		px_timer_del(w->loop, st->sweep);
	st->sweep = 0;
}

static const struct ml_counter echo_counters[] = {
	{ "connections", false },
	{ "bytes", false },
	{ "dropped", false },
	{ "idle_timeouts", false },
};

/* ------------------------------------------------------------------------ */

#define USAGE                                                                      \
	"usage: echo-server [--et] [--idle-timeout-ms MS] [--port N] [--host ADDR|any]\n" \
	"                   [--threads N] [--drain-ms N] [--stats]\n"

static void help(const struct ml_options *d)
{
	printf(USAGE
	       "\n"
	       "A TCP echo server: sends back every byte it receives, through px_send with\n"
	       "back-pressure (a client that sends fast and reads slowly is not read while\n"
	       "more than %u KiB are queued for it, and again from %u KiB).  With --stats\n"
	       "it also prints the peak RSS and the queue high-water marks every second\n"
	       "while there is traffic, and at exit.\n"
	       "\n"
	       "Options:\n"
	       "  --et                   edge-triggered watchers (PX_ET; default level)\n"
	       "  --idle-timeout-ms MS   close a connection that neither sends nor takes its\n"
	       "                         echo for MS (default %ld)\n",
	       ECHO_HIGH / 1024, ECHO_LOW / 1024, idle_ms);
	ml_help(stdout, d);
	printf("\n" EX_HELP_ENV "\n");
	ml_help_signals(stdout, "echo-server");
	printf("\nExit status: 0 after a drain (even a forced one), 1 when the server could\n"
	       "not start (a bad POLLUX_BACKEND, a host that does not resolve, a port in\n"
	       "use), 64 bad usage.\n");
}

int main(int argc, char **argv)
{
	const struct ml_options defaults = { .host = "127.0.0.1", .port = 7007, .threads = 1,
	                                     .drain_ms = 5000 };
	struct ml_options o = defaults;
	const char *me = "echo-server";

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			help(&defaults);
			return 0;
		}
		int r = ml_option(&o, argc, argv, &i);
		if (r == -1)
			return ex_usage(me, USAGE, "option '%s' needs a value", a);
		if (r == -2)
			return ex_usage(me, USAGE, "bad value '%s' for %s", argv[i], a);
		if (r > 0)
			continue;
		if (!strcmp(a, "--et")) {
			et = true;
		} else if (!strcmp(a, "--idle-timeout-ms")) {
			if (i + 1 >= argc)
				return ex_usage(me, USAGE, "option '%s' needs a value", a);
			if (!ex_parse_long(argv[++i], 1, 86400000L, &idle_ms))
				return ex_usage(me, USAGE, "bad value '%s' for %s (1 to 86400000)",
				                argv[i], a);
		} else {
			return ex_usage(me, USAGE, "unknown option '%s'", a);
		}
	}
	sweep_ms = (uint64_t)(idle_ms / 8 < 10 ? 10 : idle_ms / 8 > 1000 ? 1000 : idle_ms / 8);
	stats = o.stats;
	threaded = o.threads > 1;
	char info[48];
	snprintf(info, sizeof(info), "idle_timeout_ms=%ld", idle_ms);
	signal(SIGPIPE, SIG_IGN);

	/* Static: a loop's state holds its 64 KiB read buffer. */
	static struct estate states[ML_MAX_THREADS];
	const struct ml_app app = {
		.name = "echo-server",
		.mode = et ? "edge" : "level",
		.info = info,
		.counters = echo_counters,
		.ncounters = (int)(sizeof(echo_counters) / sizeof(echo_counters[0])),
		.on_accept = accept_cb,
		.start = echo_start,
		.drain = echo_drain,
		.force = echo_force,
		.snapshot = echo_snapshot,
		.cleanup = echo_cleanup,
	};
	int status = ml_run(&app, &o, states, sizeof(states[0]), NULL);
	if (status == 0 && stats) {
		/* The threads are joined: their marks can be read. */
		size_t qh = 0, cqh = 0;
		unsigned long long echoed = 0;
		for (long i = 0; i < o.threads; i++) {
			qh += states[i].queued_hwm;
			if (states[i].conn_queued_hwm > cqh)
				cqh = states[i].conn_queued_hwm;
			echoed += states[i].echoed;
		}
		print_stats("final", -1, 0, qh, cqh, 0, echoed);
	}
	return status;
}
