/* slow-reader: a client that sends fast and reads slowly, to check that an
 * echo server pushes back instead of buffering without bound.
 *
 *   slow-reader HOST PORT [--mib N] [--read-kib-per-s K] [--conns C]
 *                         [--timeout S]
 *
 * Opens C connections (default 4).  On each it sends N MiB (default 64) as
 * fast as the socket takes them, then shuts down its write side, while
 * reading the echo back at no more than K KiB/s per connection (default 512;
 * a token bucket refilled every 10 ms).  Every echoed byte is checked against
 * the deterministic pattern that was sent (a hash of connection number and
 * offset, so lost, duplicated or reordered bytes are caught).  A connection
 * is done when all N MiB came back intact followed by end of file (the
 * server closes after echoing everything).
 *
 * Exit status: 0 all connections done; 1 a mismatch, a connection error or
 * an early end of file; 2 the deadline passed (default: the time the reads
 * need at K KiB/s, times 1.5, plus 10 s; --timeout S overrides it);
 * 64 usage.  Prints bytes sent and verified, the time at which the last
 * byte was sent, and the elapsed time. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "excommon.h"
#include "pollux.h"

#ifndef MSG_NOSIGNAL /* older macOS: SIGPIPE is ignored in main() instead */
#define MSG_NOSIGNAL 0
#endif

#define TICK_MS     10
#define IO_SZ       65536
#define SEND_BURST  (1024 * 1024) /* per write callback, for fairness */

struct rconn {
	int idx, fd;
	uint64_t sent, verified;
	bool sent_all; /* and shut down for writing */
	bool done;     /* everything verified, then end of file */
	double tokens; /* bytes it may read now */
};

static struct rconn *cs;
static int nconns = 4, ndone, status = 0;
static uint64_t total = 64ull << 20;
static double rate = 512.0 * 1024; /* bytes/s per connection */
static double t0, t_sent, t_last_tick;
static int nsent_all;
static unsigned char sbuf[IO_SZ], rbuf[IO_SZ], ebuf[IO_SZ];

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* The bytes [off, off + len) of connection idx's stream. */
static void pattern(int idx, uint64_t off, unsigned char *p, size_t len)
{
	uint64_t blk = UINT64_MAX, v = 0;
	for (size_t i = 0; i < len; i++) {
		uint64_t o = off + i;
		if (o >> 3 != blk) {
			blk = o >> 3;
			v = splitmix64(((uint64_t)idx << 56) ^ blk);
		}
		p[i] = (unsigned char)(v >> (8 * (o & 7)));
	}
}

static void finish(px_loop *loop, int st)
{
	if (st > status)
		status = st;
	px_loop_stop(loop);
}

static void write_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct rconn *c = arg;
	size_t burst = 0;
	(void)revents;

	while (c->sent < total && burst < SEND_BURST) {
		size_t len = total - c->sent < IO_SZ ? (size_t)(total - c->sent) : IO_SZ;
		pattern(c->idx, c->sent, sbuf, len);
		ssize_t n = send(fd, sbuf, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			fprintf(stderr, "slow-reader: conn %d: send at %" PRIu64 ": %s\n", c->idx,
			        c->sent, strerror(errno));
			finish(loop, 1);
			return;
		}
		c->sent += (uint64_t)n;
		burst += (size_t)n;
	}
	if (c->sent == total && !c->sent_all) {
		c->sent_all = true;
		shutdown(fd, SHUT_WR);
		px_io_mod(loop, fd, 0); /* reads happen in the tick */
		if (++nsent_all == nconns)
			t_sent = now_s() - t0;
	}
}

/* Reads what the token bucket allows; false when the run must end. */
static bool read_some(px_loop *loop, struct rconn *c)
{
	while (!c->done) {
		size_t want;
		if (c->verified == total)
			want = 1; /* only end of file may follow */
		else if (c->tokens < 1)
			return true;
		else {
			want = c->tokens < IO_SZ ? (size_t)c->tokens : IO_SZ;
			if (want > total - c->verified)
				want = (size_t)(total - c->verified);
		}
		ssize_t n = recv(c->fd, rbuf, want, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return true;
			fprintf(stderr, "slow-reader: conn %d: recv after %" PRIu64 " bytes: %s\n",
			        c->idx, c->verified, strerror(errno));
			finish(loop, 1);
			return false;
		}
		if (n == 0) {
			if (c->verified < total) {
				fprintf(stderr,
				        "slow-reader: conn %d: end of file after %" PRIu64
				        " of %" PRIu64 " bytes\n",
				        c->idx, c->verified, total);
				finish(loop, 1);
				return false;
			}
			c->done = true;
			px_io_del(loop, c->fd);
			close(c->fd);
			c->fd = -1;
			if (++ndone == nconns)
				finish(loop, 0);
			return true;
		}
		if (c->verified == total) {
			fprintf(stderr, "slow-reader: conn %d: extra bytes after %" PRIu64 "\n",
			        c->idx, total);
			finish(loop, 1);
			return false;
		}
		pattern(c->idx, c->verified, ebuf, (size_t)n);
		if (memcmp(rbuf, ebuf, (size_t)n) != 0) {
			size_t i = 0;
			while (rbuf[i] == ebuf[i])
				i++;
			fprintf(stderr,
			        "slow-reader: conn %d: mismatch at byte %" PRIu64
			        ": got 0x%02x, expected 0x%02x\n",
			        c->idx, c->verified + i, rbuf[i], ebuf[i]);
			finish(loop, 1);
			return false;
		}
		c->verified += (uint64_t)n;
		c->tokens -= (double)n;
	}
	return true;
}

static void tick_cb(px_loop *loop, int64_t id, void *arg)
{
	double t = now_s(), dt = t - t_last_tick;
	/* Bucket depth: 100 ms of reading (at least 4 KiB), so a late tick
	 * cannot turn into a big burst. */
	double cap = rate * 0.1 < 4096 ? 4096 : rate * 0.1;
	(void)id;
	(void)arg;
	t_last_tick = t;
	for (int i = 0; i < nconns; i++) {
		struct rconn *c = &cs[i];
		if (c->done)
			continue;
		c->tokens += rate * dt;
		if (c->tokens > cap)
			c->tokens = cap;
		if (!read_some(loop, c))
			return;
	}
}

static void deadline_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	(void)arg;
	fprintf(stderr, "slow-reader: timeout after %.1f s\n", now_s() - t0);
	for (int i = 0; i < nconns; i++)
		fprintf(stderr, "  conn %d: sent %" PRIu64 " verified %" PRIu64 "%s\n", i,
		        cs[i].sent, cs[i].verified, cs[i].done ? " done" : "");
	finish(loop, 2);
}

#define USAGE                                                                   \
	"usage: slow-reader HOST PORT [--mib N] [--read-kib-per-s K] [--conns C]\n" \
	"                   [--timeout S]\n"

static void help(void)
{
	printf(USAGE
	       "\n"
	       "A client that sends fast and reads slowly, to check that an echo server at\n"
	       "HOST PORT pushes back instead of buffering without bound.  On each of C\n"
	       "connections it sends N MiB of a deterministic pattern as fast as the socket\n"
	       "takes them, then shuts down its write side, while reading the echo back at\n"
	       "no more than K KiB/s per connection; every byte is checked.\n"
	       "\n"
	       "Options:\n"
	       "  --mib N                MiB sent per connection (default 64)\n"
	       "  --read-kib-per-s K     read rate per connection, KiB/s (default 512)\n"
	       "  --conns C              connections, 1 to 10000 (default 4)\n"
	       "  --timeout S            give up after S seconds (default: the time the\n"
	       "                         reads need at K KiB/s, times 1.5, plus 10)\n"
	       "  -h, --help             this help\n"
	       "\n" EX_HELP_ENV
	       "\n"
	       "Exit status: 0 every byte came back, then end of file; 1 a mismatch, a\n"
	       "connection error (or a host that does not resolve, a bad POLLUX_BACKEND)\n"
	       "or an early end of file; 2 the deadline passed; 64 bad usage.\n");
}

static bool num(const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= lo && v <= hi))
		return false;
	*out = v;
	return true;
}

int main(int argc, char **argv)
{
	const char *host = NULL, *port_s = NULL;
	double mib = 64, kib = 512, conns = 4, timeout = -1, port;

	const char *me = "slow-reader";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		double *out = NULL, lo = 0, hi = 0;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			help();
			return 0;
		} else if (!strcmp(a, "--mib")) {
			out = &mib, lo = 0, hi = 1 << 20;
		} else if (!strcmp(a, "--read-kib-per-s")) {
			out = &kib, lo = 1, hi = 1 << 30;
		} else if (!strcmp(a, "--conns")) {
			out = &conns, lo = 1, hi = 10000;
		} else if (!strcmp(a, "--timeout")) {
			out = &timeout, lo = 0.001, hi = 1e6;
		} else if (a[0] == '-' && a[1] == '-') {
			return ex_usage(me, USAGE, "unknown option '%s'", a);
		} else if (!host) {
			host = a;
		} else if (!port_s) {
			port_s = a;
		} else {
			return ex_usage(me, USAGE, "unexpected argument '%s'", a);
		}
		if (out) {
			if (!v)
				return ex_usage(me, USAGE, "option '%s' needs a value", a);
			if (!num(v, lo, hi, out) || (out == &conns && conns != (int)conns))
				return ex_usage(me, USAGE, "bad value '%s' for %s (%g to %g)", v, a, lo, hi);
			i++;
		}
	}
	if (!host || !port_s)
		return ex_usage(me, USAGE, "HOST and PORT are needed");
	if (!num(port_s, 1, 65535, &port) || port != (int)port)
		return ex_usage(me, USAGE, "bad port '%s' (1 to 65535)", port_s);
	nconns = (int)conns;
	total = (uint64_t)(mib * 1048576.0);
	rate = kib * 1024.0;
	if (timeout < 0)
		timeout = (double)total / rate * 1.5 + 10;
	signal(SIGPIPE, SIG_IGN);

	px_loop *loop = ex_loop_new(me);
	if (!loop)
		return 1;
	cs = calloc((size_t)nconns, sizeof(*cs));
	if (!cs) {
		perror("slow-reader: calloc");
		px_loop_free(loop);
		return 1;
	}
	for (int i = 0; i < nconns; i++)
		cs[i].fd = -1;
	t0 = t_last_tick = now_s();
	for (int i = 0; i < nconns; i++) {
		struct rconn *c = &cs[i];
		c->idx = i;
		int fd = px_connect_tcp(host, (uint16_t)port, 5000);
		if (fd < 0) {
			ex_net_error(me, "connect to", host, (long)port, fd);
			status = 1;
			goto out;
		}
		c->fd = fd;
		int rc = px_set_nonblock(fd, 1);
		if (rc == 0)
			rc = px_io_add(loop, fd, total ? PX_WRITE : 0, write_cb, c);
		if (rc < 0) {
			fprintf(stderr, "slow-reader: setup: %s\n", strerror(-rc));
			status = 1;
			goto out;
		}
		if (total == 0) {
			c->sent_all = true;
			shutdown(fd, SHUT_WR);
			nsent_all++;
		}
	}
	if (px_timer_add(loop, TICK_MS, TICK_MS, tick_cb, NULL) < 0 ||
	    px_timer_add(loop, (uint64_t)(timeout * 1000), 0, deadline_cb, NULL) < 0) {
		fprintf(stderr, "slow-reader: px_timer_add failed\n");
		status = 1;
		goto out;
	}
	int rc = px_loop_run(loop, PX_RUN_DEFAULT);
	if (rc < 0) {
		fprintf(stderr, "slow-reader: px_loop_run: %s\n", strerror(-rc));
		status = 1;
	}
	double el = now_s() - t0;
	uint64_t sent = 0, verified = 0;
	for (int i = 0; i < nconns; i++) {
		sent += cs[i].sent;
		verified += cs[i].verified;
	}
	printf("slow-reader: %s backend=%s conns=%d sent=%" PRIu64 " verified=%" PRIu64
	       " bytes (of %" PRIu64 ") last_byte_sent_at=%.2f s elapsed=%.2f s "
	       "read_limit=%.0f KiB/s/conn\n",
	       status == 0 ? "ok" : "FAILED", px_loop_backend(loop), nconns, sent, verified,
	       total * (uint64_t)nconns, nsent_all == nconns ? t_sent : -1.0, el, kib);
out:
	for (int i = 0; i < nconns; i++)
		if (cs[i].fd >= 0)
			close(cs[i].fd);
	px_loop_free(loop);
	free(cs);
	return status;
}
