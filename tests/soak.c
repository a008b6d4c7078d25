/*
 * soak — long-running echo soak test of pollux over real loopback TCP.
 *
 *   tests/soak [--backend NAME] [--conns N] [--seconds S] [--full] [--seed X]
 *
 * Short (CI) form: 2,000 connections for 10 s per backend.  --full: 10,000
 * connections for 60 s.  Without --backend every backend of px_backends() is
 * soaked in turn.  Exit status 0 only when every backend passes.
 *
 * Parent process = the server under test: a pollux loop with an acceptor on
 * 127.0.0.1, per connection a PX_READ watcher (level-triggered on even
 * connections, PX_ET on odd ones, the ET ones drain to EAGAIN), echoing with
 * px_send.  Back-pressure: reading stops (px_io_mod(fd, 0)) while
 * px_send_pending() > SRV_HIGH and resumes from the px_send_notify callback
 * at SRV_LOW.  On EOF the server stops reading, waits for the queue to drain
 * (px_send_notify at 0), then px_io_del + close; on an error or reset it
 * px_io_del + closes at once.
 *
 * Child process = the client, an independent oracle: raw epoll, no pollux
 * code at all, so a library bug cannot hide itself on both sides.  It keeps N
 * connections open (a bounded number of connects in flight), and on each one
 * runs rounds of 1..4 messages of random size (1 B .. 64 KiB, seeded PRNG),
 * with random pauses between rounds and random read stalls (which is what
 * makes the server's queues grow and its back-pressure engage).  The bytes of
 * a connection are a pseudo-random stream derived from (seed, offset), so
 * every echoed byte is checked byte for byte against what was sent, without
 * keeping copies.  Each connection ends either with a half-close (shutdown
 * SHUT_WR after its last message, read the rest of the echo to EOF, check
 * received == sent) or with a reset (SO_LINGER {1,0} + close, at a random
 * point of its last round, so echo bytes are usually in flight); either way
 * it is replaced by a new connection so the count stays at N.  When the time
 * is up every connection ends with a half-close (no more resets), so at the
 * end every connection that was not reset has been verified to the last byte.
 * The client sends its figures to the parent through a pipe.
 *
 * The parent then checks: zero mismatches, zero lost or extra bytes on
 * connections that were not reset, no unexpected EOF/reset, every connection
 * finished in time, the server's fd count back to what it was before the
 * first connection (and after the loop is freed, to what it was before the
 * loop existed), and memory flat (see RSS_MARGIN below).
 *
 * Every loop is bounded in count and time: a watchdog alarm(S + 60) kills
 * the run (the handler kills the forked client by pid), the client dies with
 * its parent (PR_SET_PDEATHSIG) and gives up on its own deadline.
 *
 * Fallbacks: px_listen_tcp and px_acceptor_add are referenced weakly; while
 * the socket module is not linked in, the soak uses its own listening socket
 * and accept loop (and says so).
 *
 * Portability: the client is written on raw epoll, so without <sys/epoll.h>
 * the program only says that it is skipped.  PR_SET_PDEATHSIG (Linux),
 * SIOCOUTQ (diagnostics only), mallinfo2 and /proc are used where they are.
 */
#include "portable.h" /* config.h first */

#ifndef HAVE_SYS_EPOLL_H
#include <stdio.h>

int main(void)
{
	printf("soak: skipped: its client (the oracle, independent of pollux) is written on "
	       "raw epoll, which this system does not have\n");
	return 0;
}
#else
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#ifdef HAVE_MALLOC_H
#include <malloc.h>
#endif
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <dirent.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#ifdef HAVE_LINUX_SOCKIOS_H
#include <linux/sockios.h>
#endif
#include <poll.h>
#ifdef HAVE_SYS_PRCTL_H
#include <sys/prctl.h>
#endif
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pollux.h"

#pragma weak px_listen_tcp
#pragma weak px_acceptor_add
#pragma weak px_acceptor_del

#if defined(__SANITIZE_ADDRESS__)
#define SOAK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SOAK_ASAN 1
#endif
#endif
#ifndef SOAK_ASAN
#define SOAK_ASAN 0
#endif

/* ------------------------------------------------------------------------ */
/* Parameters                                                                */
/* ------------------------------------------------------------------------ */

#define MAX_MSG         65536u   /* largest message */
#define SRV_HIGH        (128u * 1024u) /* stop reading above this many queued bytes */
#define SRV_LOW         (32u * 1024u)  /* resume reading at or below this */
#define SRV_RBUF        65536u   /* one recv */
#define SRV_ET_MAX_READS 64      /* bound on one ET callback (then it re-arms) */
#define CLI_MAX_CONNECTING 256   /* connects in flight */
#define CLI_RAMP_S      15       /* time allowed to open the first N connections */
#define CLI_FINAL_S     25       /* time allowed for the final half-closes */
#define SRV_END_S       10       /* time allowed after the report for the server to close all */
/* ramp + S + final + server end (S + 50 s) stays inside the watchdog (S + 60 s). */
#define WATCHDOG_EXTRA  60
#define BACKLOG         4096

/*
 * RSS margin: the final RSS may exceed the warm-up RSS by 20% + 8 MiB.
 *  - Warm-up RSS is the largest sample of the first third of the steady
 *    period (all N connections held).  By then the loop's per-fd tables,
 *    the kernel-side buffers we do not see, and glibc's arenas have reached
 *    their working size, and the send queues have seen most of their typical
 *    peak.
 *  - The queues are bounded per connection (SRV_HIGH + one 64 KiB read), but
 *    how many connections stall at the same moment is random, and glibc
 *    keeps freed chunks in its arenas (fragmentation), so later peaks may sit
 *    somewhat above the warm-up ones: 20% covers that noise (measured: see
 *    the report), while any leak proportional to traffic (bytes, messages or
 *    connections, which grow linearly with time) exceeds it within a run.
 *  - The fixed 8 MiB covers small absolute noise at small N (one more 2x
 *    growth of a per-fd table, one more malloc arena / heap extension).
 * The final RSS (every connection closed) is held to that limit; during the
 * run the late samples are held to it after subtracting the bytes queued in
 * px_send at that moment (live data bounded by back-pressure, not a leak:
 * in the 10,000-connection epoll run the queued total drifted from ~11 to
 * ~16 MiB with RSS following it, and fell back when the connections closed).
 * A second, sharper check uses glibc's mallinfo2 (bytes actually allocated,
 * immune to fragmentation): after every connection is closed the heap in
 * use must be back to within HEAP_MARGIN of what it was before the first
 * connection, so even a per-connection leak of a few dozen bytes shows.
 */
#define RSS_PCT    20
#define RSS_FIXED  (8u * 1024u * 1024u)
/* Grow-only per-fd tables of the loop (watch table, event array, ET lists,
 * select's bit sets): at most ~64 B per fd number, doubled; plus 256 KiB. */
#define HEAP_MARGIN(maxfd) (256u * 1024u + 128u * (size_t)(maxfd))

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* xorshift-style PRNG state (splitmix64 sequence). */
static uint64_t rng_next(uint64_t *s)
{
	*s += 0x9e3779b97f4a7c15ull;
	uint64_t z = *s;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t rng_below(uint64_t *s, uint32_t n) /* 0 .. n-1 */
{
	return n ? (uint32_t)(rng_next(s) % n) : 0;
}

/* The byte stream of a connection: byte at offset i is a function of (seed, i). */
static void stream_fill(uint64_t seed, uint64_t off, unsigned char *buf, size_t len)
{
	size_t i = 0;

	while (i < len) {
		uint64_t pos = off + i;
		uint64_t w = mix64(seed ^ ((pos >> 3) * 0xd6e8feb86659fd93ull));
		for (unsigned s = (unsigned)(pos & 7); s < 8 && i < len; s++, i++)
			buf[i] = (unsigned char)(w >> (8 * s));
	}
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		return -1;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own fd */
}

static size_t rss_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	unsigned long size = 0, res = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%lu %lu", &size, &res) != 2)
		res = 0;
	fclose(f);
	return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

static size_t heap_in_use(void)
{
#if SOAK_ASAN
	return 0;
#elif defined(HAVE_MALLOC_H) && defined(HAVE_MALLINFO2)
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
#else
	return 0;
#endif
}

static long raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -1;
	if (rl.rlim_cur != rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
		(void)getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur == RLIM_INFINITY ? 1L << 20 : (long)rl.rlim_cur;
}

static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static bool write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		c += w;
		n -= (size_t)w;
	}
	return true;
}

/* ------------------------------------------------------------------------ */
/* The client's report                                                       */
/* ------------------------------------------------------------------------ */

struct report {
	uint64_t magic;
	uint64_t opened;       /* connections established */
	uint64_t connect_fail; /* connects that failed (retried) */
	uint64_t completed;    /* half-closed and verified to EOF */
	uint64_t resets;       /* reset by the client on purpose */
	uint64_t msgs;         /* messages sent */
	uint64_t bytes_sent;
	uint64_t bytes_checked; /* echoed bytes received and verified */
	uint64_t mismatches;    /* echoed bytes that differ from what was sent */
	uint64_t extra;         /* connections that got more bytes than sent */
	uint64_t lost;          /* completed connections with received != sent at EOF */
	uint64_t early_eof;     /* EOF before the client's half-close */
	uint64_t unexpected_err; /* ECONNRESET etc. on a connection not reset by us */
	uint64_t stuck;          /* connections not finished by the final deadline */
	uint64_t peak_held;      /* most connections established at once */
	uint64_t min_held;       /* fewest established during the steady period (after warm-up) */
	uint64_t avg_held_x100;
	uint64_t stalls;         /* read stalls */
	uint64_t ramp_ms;        /* time to establish the first N */
	uint64_t steady_ms;      /* length of the steady period */
	uint64_t final_ms;       /* time the final half-closes took */
	uint64_t fail_early;     /* setup failure */
	uint64_t loop_iters;
};
#define REPORT_MAGIC 0x736f616b2d726570ull

/* ------------------------------------------------------------------------ */
/* Client (child process, raw epoll)                                         */
/* ------------------------------------------------------------------------ */

enum { C_FREE, C_CONNECTING, C_ACTIVE, C_SHUT };
enum { F_HALF, F_RESET };

struct cconn {
	int fd;
	uint8_t state, fate;
	bool stalled;
	uint32_t epmask;
	uint64_t seed;
	uint64_t sent, recvd;
	uint64_t round_end;  /* sending stops at this offset for the current round */
	uint64_t reset_at;   /* F_RESET: reset once sent reaches this (in the last round) */
	uint32_t rounds_left;
	uint32_t round_msgs; /* messages in the current round */
	uint64_t next_round; /* ms: the next round starts (after the round is echoed) */
	uint64_t stall_until;
};

struct client {
	int ep;  /* established connections */
	int cep; /* connects in flight: polled first, so that with thousands of
	          * busy connections a connect completion is not starved */
	struct sockaddr_in sa;
	uint32_t nconns;
	struct cconn *c; /* nconns + CLI_MAX_CONNECTING slots */
	uint32_t cap;
	uint32_t *freelist;
	uint32_t nfree;
	uint32_t live, connecting, established;
	uint64_t rng;
	uint64_t conn_seq;
	bool final;
	uint32_t pause_max; /* ms between rounds: 0 .. pause_max */
	unsigned char *buf, *exp;
	struct report r;
};

static uint32_t msg_size(uint64_t *rng)
{
	/* Half uniform over 1..64 KiB, half log-uniform (many small ones). */
	if (rng_below(rng, 2))
		return 1 + rng_below(rng, MAX_MSG);
	uint32_t bits = rng_below(rng, 17); /* 0..16 */
	uint32_t hi = 1u << bits;
	uint32_t v = hi + rng_below(rng, hi);
	return v > MAX_MSG ? MAX_MSG : v;
}

static void cl_setmask(struct client *cl, struct cconn *c, uint32_t m)
{
	if (m == c->epmask)
		return;
	struct epoll_event ev = { .events = m, .data.u32 = (uint32_t)(c - cl->c) };
	if (epoll_ctl(cl->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
		c->epmask = m;
}

static void cl_update(struct client *cl, struct cconn *c)
{
	uint32_t m = 0;

	if (c->state == C_CONNECTING) {
		m = EPOLLOUT;
	} else if (c->state == C_ACTIVE || c->state == C_SHUT) {
		if (!c->stalled)
			m |= EPOLLIN;
		if (c->state == C_ACTIVE && c->sent < c->round_end)
			m |= EPOLLOUT;
	}
	cl_setmask(cl, c, m);
}

static void cl_release(struct client *cl, struct cconn *c)
{
	if (c->state == C_CONNECTING)
		cl->connecting--;
	else
		cl->established--;
	c->state = C_FREE;
	c->fd = -1;
	cl->live--;
	cl->freelist[cl->nfree++] = (uint32_t)(c - cl->c);
}

static void cl_close(struct client *cl, struct cconn *c, bool reset)
{
	if (reset) {
		struct linger lg = { 1, 0 };
		(void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	(void)epoll_ctl(c->state == C_CONNECTING ? cl->cep : cl->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	cl_release(cl, c);
}

/* Starts a round of 1..4 messages (the last round of an F_RESET connection
 * also fixes the reset point). */
static void cl_start_round(struct client *cl, struct cconn *c)
{
	/* 1 round in 8 stalls reading for up to 300 ms and sends 4..12
	 * messages: the echo piles up in the server's queue (back-pressure). */
	bool stall = rng_below(&cl->rng, 8) == 0;
	uint32_t k = stall ? 4 + rng_below(&cl->rng, 9) : 1 + rng_below(&cl->rng, 4);
	uint64_t len = 0;

	for (uint32_t i = 0; i < k; i++)
		len += msg_size(&cl->rng);
	c->round_msgs = k;
	c->round_end = c->sent + len;
	if (c->fate == F_RESET && c->rounds_left == 1)
		c->reset_at = c->sent + rng_below(&cl->rng, (uint32_t)len + 1);
	if (stall) {
		c->stalled = true;
		c->stall_until = now_ms() + 1 + rng_below(&cl->rng, 300);
		cl->r.stalls++;
	}
	cl->r.msgs += k;
}

static void cl_halfclose(struct client *cl, struct cconn *c)
{
	if (shutdown(c->fd, SHUT_WR) < 0) {
		cl->r.unexpected_err++;
		cl_close(cl, c, false);
		return;
	}
	c->state = C_SHUT;
	cl_update(cl, c);
}

static void cl_begin(struct client *cl, struct cconn *c)
{
	struct epoll_event ev = { .events = 0, .data.u32 = (uint32_t)(c - cl->c) };
	(void)epoll_ctl(cl->cep, EPOLL_CTL_DEL, c->fd, NULL);
	if (epoll_ctl(cl->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		cl->r.connect_fail++;
		close(c->fd);
		cl_release(cl, c);
		return;
	}
	c->epmask = 0;
	c->state = C_ACTIVE;
	cl->connecting--;
	cl->established++;
	cl->r.opened++;
	if (cl->established > cl->r.peak_held)
		cl->r.peak_held = cl->established;
	if (cl->final) {
		c->fate = F_HALF;
		cl_halfclose(cl, c);
		return;
	}
	c->fate = rng_below(&cl->rng, 4) == 0 ? F_RESET : F_HALF;
	/* 2..40 rounds: connections live a few seconds (keeps connection churn,
	 * and so TIME_WAIT port use, moderate). */
	c->rounds_left = 2 + rng_below(&cl->rng, 39);
	if (c->fate == F_RESET && rng_below(&cl->rng, 16) == 0)
		c->rounds_left = 1; /* sometimes reset right away */
	c->next_round = now_ms() + rng_below(&cl->rng, 50);
	c->round_end = 0;
	cl_update(cl, c);
}

static bool cl_open(struct client *cl)
{
	if (cl->nfree == 0)
		return false;
	int fd = tp_socket(AF_INET, SOCK_STREAM, 0, TP_NONBLOCK | TP_CLOEXEC);
	if (fd < 0)
		return false;
	uint32_t idx = cl->freelist[--cl->nfree];
	struct cconn *c = &cl->c[idx];
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->seed = mix64(cl->rng ^ ++cl->conn_seq);
	if (rng_below(&cl->rng, 4) == 0) {
		/* Small buffers on some connections: back-pressure comes sooner. */
		int sz = 16384;
		(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	}
	c->state = C_CONNECTING;
	cl->live++;
	cl->connecting++;
	struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = idx };
	if (epoll_ctl(cl->cep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		close(fd);
		cl_release(cl, c);
		return false;
	}
	c->epmask = EPOLLOUT;
	if (connect(fd, (struct sockaddr *)&cl->sa, sizeof(cl->sa)) < 0 && errno != EINPROGRESS) {
		cl->r.connect_fail++;
		cl_close(cl, c, false);
		return false;
	}
	return true;
}

/* The connection's round is fully sent and echoed. */
static void cl_round_done(struct client *cl, struct cconn *c)
{
	c->rounds_left--;
	c->round_end = 0;
	if (c->rounds_left == 0 || cl->final) {
		cl_halfclose(cl, c);
		return;
	}
	c->next_round = now_ms() + rng_below(&cl->rng, cl->pause_max);
}

static void cl_send(struct client *cl, struct cconn *c)
{
	/* Bounded: at most a few sends per event. */
	for (int i = 0; i < 2 && c->state == C_ACTIVE && c->sent < c->round_end; i++) {
		uint64_t lim = c->round_end;
		if (c->fate == F_RESET && c->rounds_left == 1 && !cl->final) {
			if (c->sent >= c->reset_at) {
				cl->r.resets++;
				cl_close(cl, c, true);
				return;
			}
			lim = c->reset_at;
		}
		size_t n = (size_t)(lim - c->sent);
		if (n > MAX_MSG)
			n = MAX_MSG;
		stream_fill(c->seed, c->sent, cl->buf, n);
		ssize_t w = tp_send(c->fd, cl->buf, n, 0);
		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			cl->r.unexpected_err++;
			cl_close(cl, c, false);
			return;
		}
		c->sent += (uint64_t)w;
		cl->r.bytes_sent += (uint64_t)w;
		if ((size_t)w < n)
			break;
	}
	if (c->state != C_ACTIVE)
		return;
	if (c->fate == F_RESET && c->rounds_left == 1 && !cl->final && c->sent >= c->reset_at) {
		cl->r.resets++;
		cl_close(cl, c, true);
		return;
	}
	if (c->sent == c->round_end && c->recvd == c->round_end && c->round_end) {
		cl_round_done(cl, c);
		return;
	}
	if (c->sent == c->round_end && c->state == C_ACTIVE && c->rounds_left == 1 &&
	    c->fate == F_HALF) {
		/* Last message sent: half-close now, read the rest of the echo. */
		cl_halfclose(cl, c);
		return;
	}
	cl_update(cl, c);
}

static void cl_recv(struct client *cl, struct cconn *c)
{
	for (int i = 0; i < 2; i++) {
		ssize_t n = recv(c->fd, cl->buf, MAX_MSG, 0);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			cl->r.unexpected_err++;
			cl_close(cl, c, false);
			return;
		}
		if (n == 0) {
			if (c->state == C_SHUT) {
				if (c->recvd == c->sent)
					cl->r.completed++;
				else
					cl->r.lost++;
			} else {
				cl->r.early_eof++;
			}
			cl_close(cl, c, false);
			return;
		}
		if (c->recvd + (uint64_t)n > c->sent) {
			cl->r.extra++;
			cl_close(cl, c, true);
			return;
		}
		stream_fill(c->seed, c->recvd, cl->exp, (size_t)n);
		if (memcmp(cl->buf, cl->exp, (size_t)n) != 0) {
			for (ssize_t j = 0; j < n; j++)
				cl->r.mismatches += cl->buf[j] != cl->exp[j];
			cl_close(cl, c, true);
			return;
		}
		c->recvd += (uint64_t)n;
		cl->r.bytes_checked += (uint64_t)n;
		if ((size_t)n < MAX_MSG)
			break;
	}
	if (c->state == C_ACTIVE && c->round_end && c->sent == c->round_end &&
	    c->recvd == c->round_end)
		cl_round_done(cl, c);
}

static void cl_event(struct client *cl, struct cconn *c, uint32_t ev)
{
	if (c->state == C_CONNECTING) {
		int err = 0;
		socklen_t l = sizeof(err);
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
			err = errno;
		if (err) {
			cl->r.connect_fail++;
			cl_close(cl, c, false);
			return;
		}
		cl_begin(cl, c);
		return;
	}
	if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->stalled) {
		cl_recv(cl, c);
		if (c->state == C_FREE)
			return;
	}
	if ((ev & (EPOLLOUT | EPOLLERR)) && c->state == C_ACTIVE)
		cl_send(cl, c);
	else if ((ev & (EPOLLERR | EPOLLHUP)) && c->state != C_FREE && c->stalled) {
		/* An error while stalled: see it now. */
		c->stalled = false;
		cl_recv(cl, c);
	}
}

/* Timers: round starts, stall ends.  Called every few ms. */
static void cl_scan(struct client *cl, uint64_t now)
{
	for (uint32_t i = 0; i < cl->cap; i++) {
		struct cconn *c = &cl->c[i];
		if (c->state != C_ACTIVE && c->state != C_SHUT)
			continue;
		if (c->stalled && (now >= c->stall_until || cl->final)) {
			c->stalled = false;
			cl_update(cl, c);
		}
		if (c->state == C_ACTIVE && c->round_end == 0) {
			if (cl->final) {
				cl_halfclose(cl, c);
			} else if (now >= c->next_round) {
				cl_start_round(cl, c);
				cl_send(cl, c);
			}
		}
	}
}

static void cl_enter_final(struct client *cl)
{
	cl->final = true;
	for (uint32_t i = 0; i < cl->cap; i++) {
		struct cconn *c = &cl->c[i];
		if (c->state == C_ACTIVE) {
			c->fate = F_HALF;
			c->rounds_left = 1;
			if (c->round_end == 0)
				cl_halfclose(cl, c);
		}
	}
}

static int client_main(int port, uint32_t nconns, unsigned seconds, uint64_t seed, int repfd,
                       pid_t parent)
{
	struct client cl;
	memset(&cl, 0, sizeof(cl));
	cl.r.magic = REPORT_MAGIC;
	cl.r.min_held = UINT64_MAX;
	cl.rng = seed ^ 0x636c69656e74ull;
	cl.nconns = nconns;
	/* The same offered load whatever N: 100 ms per 2,000 connections, so
	 * one client process can drive 10,000 (2 CPUs here). */
	cl.pause_max = 100u * (nconns > 2000 ? nconns / 2000u : 1u);
	cl.cap = nconns + CLI_MAX_CONNECTING;
	cl.c = calloc(cl.cap, sizeof(*cl.c));
	cl.freelist = calloc(cl.cap, sizeof(*cl.freelist));
	cl.buf = malloc(MAX_MSG);
	cl.exp = malloc(MAX_MSG);
	cl.ep = epoll_create1(EPOLL_CLOEXEC);
	cl.cep = epoll_create1(EPOLL_CLOEXEC);
	if (!cl.c || !cl.freelist || !cl.buf || !cl.exp || cl.ep < 0 || cl.cep < 0) {
		cl.r.fail_early = 1;
		(void)write_all(repfd, &cl.r, sizeof(cl.r));
		return 1;
	}
	for (uint32_t i = 0; i < cl.cap; i++) {
		cl.c[i].fd = -1;
		cl.freelist[cl.nfree++] = cl.cap - 1 - i;
	}
	cl.sa.sin_family = AF_INET;
	cl.sa.sin_port = htons((uint16_t)port);
	cl.sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

	struct epoll_event evs[512];
	/* The steady period (S seconds) starts once all N connections are
	 * established (or after CLI_RAMP_S); held counts start 1 s later. */
	uint64_t t0 = now_ms(), t_end = UINT64_MAX;
	uint64_t t_final = 0, last_scan = 0, warm_at = 0;
	uint64_t held_sum = 0, held_n = 0;
	uint64_t max_iters = (uint64_t)(seconds + CLI_RAMP_S + CLI_FINAL_S + 10) * 1000000u;

	for (uint64_t it = 0; it < max_iters; it++) {
		uint64_t now = now_ms();
		if (getppid() != parent)
			return 2; /* orphaned */
		if (t_end == UINT64_MAX &&
		    (cl.established >= cl.nconns - cl.nconns / 100u ||
		     now >= t0 + CLI_RAMP_S * 1000u)) {
			cl.r.ramp_ms = now - t0;
			t_end = now + (uint64_t)seconds * 1000u;
			warm_at = now + 1000;
		}
		if (!cl.final && now >= t_end) {
			cl.r.steady_ms = now - t0 - cl.r.ramp_ms;
			cl_enter_final(&cl);
			t_final = now;
		}
		if (cl.final && cl.live == 0)
			break;
		if (cl.final && now >= t_final + CLI_FINAL_S * 1000u) {
			cl.r.stuck = cl.live;
			unsigned shown = 0;
			for (uint32_t i = 0; i < cl.cap; i++) {
				struct cconn *c = &cl.c[i];
				if (c->state == C_FREE)
					continue;
				if (shown++ < 10) {
					int inq = -1, outq = -1;
					(void)ioctl(c->fd, FIONREAD, &inq);
#ifdef SIOCOUTQ
					(void)ioctl(c->fd, SIOCOUTQ, &outq);
#endif
					struct sockaddr_in me;
					socklen_t ml = sizeof(me);
					getsockname(c->fd, (struct sockaddr *)&me, &ml);
					fprintf(stderr,
					        "soak client: stuck conn port %d: state=%d fate=%d sent=%" PRIu64
					        " recvd=%" PRIu64 " round_end=%" PRIu64 " rounds_left=%u"
					        " stalled=%d epmask=0x%x inq=%d outq=%d\n",
					        ntohs(me.sin_port), c->state, c->fate, c->sent, c->recvd,
					        c->round_end, c->rounds_left, c->stalled, c->epmask, inq,
					        outq);
				}
				cl_close(&cl, c, true);
			}
			break;
		}
		/* Keep N connections: open replacements, a bounded number at once. */
		for (int k = 0; !cl.final && k < CLI_MAX_CONNECTING &&
		                cl.established + cl.connecting < cl.nconns &&
		                cl.connecting < CLI_MAX_CONNECTING;
		     k++)
			if (!cl_open(&cl))
				break;
		if (warm_at && now >= warm_at && !cl.final) {
			if (cl.established < cl.r.min_held)
				cl.r.min_held = cl.established;
			held_sum += cl.established;
			held_n++;
		}
		int n = epoll_wait(cl.cep, evs, 512, 0);
		for (int i = 0; i < n; i++) {
			struct cconn *c = &cl.c[evs[i].data.u32];
			if (c->state == C_CONNECTING)
				cl_event(&cl, c, evs[i].events);
		}
		n = epoll_wait(cl.ep, evs, 512, 2);
		for (int i = 0; i < n; i++) {
			struct cconn *c = &cl.c[evs[i].data.u32];
			if (c->state != C_FREE)
				cl_event(&cl, c, evs[i].events);
		}
		now = now_ms();
		if (now - last_scan >= 3) {
			last_scan = now;
			cl_scan(&cl, now);
		}
		cl.r.loop_iters++;
	}
	if (cl.final)
		cl.r.final_ms = now_ms() - t_final;
	if (cl.live > 0)
		cl.r.stuck += cl.live;
	if (cl.r.min_held == UINT64_MAX)
		cl.r.min_held = 0;
	cl.r.avg_held_x100 = held_n ? held_sum * 100 / held_n : 0;
	(void)write_all(repfd, &cl.r, sizeof(cl.r));
	close(repfd);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Server (parent process, pollux)                                           */
/* ------------------------------------------------------------------------ */

struct sconn {
	int fd;
	bool et, reading, eof, open;
};

struct server {
	px_loop *loop;
	int lfd, repfd;
	uint32_t nconns;
	bool own_acceptor;
	struct sconn *c; /* indexed by fd */
	size_t cap;
	uint64_t accepted, closed, live, peak_live;
	uint64_t rx, tx_queued, err_closes, eof_closes, bp_stops, bp_resumes, accept_errs;
	uint64_t maxfd;
	unsigned char *rbuf;
	/* report */
	struct report rep;
	size_t repgot;
	bool rep_done, rep_eof;
	/* timing */
	uint64_t t0, t_report, t_stop;
	bool timed_out;
	unsigned seconds;
	/* memory */
	uint64_t warm_start;
	size_t samples[4096];
	size_t heap_samples[4096];
	size_t pend_samples[4096];
	uint64_t sample_t[4096];
	unsigned nsamples;
	uint64_t last_sample;
	int fds_base;     /* before the first connection, loop and listener up */
	size_t heap_base; /* the same moment */
};

static void srv_close(struct server *s, struct sconn *c, bool err)
{
	(void)px_io_del(s->loop, c->fd);
	close(c->fd);
	c->open = false;
	s->live--;
	s->closed++;
	if (err)
		s->err_closes++;
	else
		s->eof_closes++;
}

static void srv_drain(px_loop *loop, int fd, int status, void *arg);

static void srv_read(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct server *s = arg;
	struct sconn *c = &s->c[fd];
	(void)revents;

	int max = c->et ? SRV_ET_MAX_READS : 1;
	for (int i = 0; i < max; i++) {
		ssize_t n = recv(fd, s->rbuf, SRV_RBUF, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			srv_close(s, c, true);
			return;
		}
		if (n == 0) {
			c->eof = true;
			c->reading = false;
			(void)px_io_mod(loop, fd, 0);
			if (px_send_pending(loop, fd) == 0) {
				srv_close(s, c, false);
				return;
			}
			/* Finish sending what is queued, then close. */
			if (px_send_notify(loop, fd, 0, srv_drain, s) < 0)
				srv_close(s, c, true);
			return;
		}
		s->rx += (uint64_t)n;
		int rc = px_send(loop, fd, s->rbuf, (size_t)n);
		if (rc < 0) {
			srv_close(s, c, true);
			return;
		}
		s->tx_queued += (uint64_t)n;
		if (px_send_pending(loop, fd) > SRV_HIGH) {
			/* Back-pressure: stop reading until the drain callback. */
			c->reading = false;
			s->bp_stops++;
			if (px_io_mod(loop, fd, 0) < 0)
				srv_close(s, c, true);
			return;
		}
	}
	if (c->et) {
		/* Bound reached without EAGAIN: re-arm so the edge comes again
		 * (px_io_mod resets edge state; epoll reports a ready fd on MOD). */
		if (px_io_mod(loop, fd, PX_READ | PX_ET) < 0)
			srv_close(s, c, true);
	}
}

static void srv_drain(px_loop *loop, int fd, int status, void *arg)
{
	struct server *s = arg;
	struct sconn *c = &s->c[fd];

	if (!c->open)
		return;
	if (status < 0) {
		srv_close(s, c, true);
		return;
	}
	if (c->eof) {
		if (px_send_pending(loop, fd) == 0)
			srv_close(s, c, false);
		return;
	}
	if (!c->reading) {
		c->reading = true;
		s->bp_resumes++;
		if (px_io_mod(loop, fd, PX_READ | (c->et ? PX_ET : 0)) < 0)
			srv_close(s, c, true);
	}
}

static void srv_new_conn(struct server *s, int fd)
{
	if (fd < 0 || (size_t)fd >= s->cap) {
		if (fd >= 0)
			close(fd);
		s->accept_errs++;
		return;
	}
	struct sconn *c = &s->c[fd];
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->et = (s->accepted & 1) != 0;
	if (s->accepted % 3 == 0) {
		/* A small kernel send buffer on a third of the connections: the
		 * echo stays in px_send's queue and back-pressure engages. */
		int sz = 16384;
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	}
	c->reading = true;
	c->open = true;
	s->accepted++;
	s->live++;
	if (s->live > s->peak_live)
		s->peak_live = s->live;
	if ((uint64_t)fd > s->maxfd)
		s->maxfd = (uint64_t)fd;
	if (px_io_add(s->loop, fd, PX_READ | (c->et ? PX_ET : 0), srv_read, s) < 0) {
		close(fd);
		c->open = false;
		s->live--;
		s->closed++;
		s->err_closes++;
		return;
	}
	if (px_send_notify(s->loop, fd, SRV_LOW, srv_drain, s) < 0)
		srv_close(s, c, true);
}

static void srv_accept_cb(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                          socklen_t plen, void *arg)
{
	(void)loop;
	(void)lfd;
	(void)peer;
	(void)plen;
	struct server *s = arg;
	if (cfd < 0) {
		s->accept_errs++;
		return;
	}
	srv_new_conn(s, cfd);
}

/* Fallback while px_acceptor_add is not linked in. */
static void srv_own_accept(px_loop *loop, int lfd, unsigned revents, void *arg)
{
	(void)loop;
	(void)revents;
	struct server *s = arg;
	for (int i = 0; i < 64; i++) {
		int fd = tp_accept(lfd, NULL, NULL, TP_NONBLOCK | TP_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				s->accept_errs++;
			return;
		}
		srv_new_conn(s, fd);
	}
}

static void srv_report(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)revents;
	struct server *s = arg;
	ssize_t n = read(fd, (char *)&s->rep + s->repgot, sizeof(s->rep) - s->repgot);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0) {
		s->repgot += (size_t)n;
		if (s->repgot < sizeof(s->rep))
			return;
		s->rep_done = s->rep.magic == REPORT_MAGIC;
	} else {
		s->rep_eof = true;
	}
	s->t_report = now_ms();
	(void)px_io_del(loop, fd);
}

static void srv_tick(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	struct server *s = arg;
	uint64_t now = now_ms();

	if (!s->warm_start && s->live >= s->nconns * 9u / 10u)
		s->warm_start = now + 1000;
	if (!s->warm_start && now >= s->t0 + (CLI_RAMP_S + 1) * 1000u)
		s->warm_start = now; /* never reached 90%: sample anyway */
	if (s->warm_start && now >= s->warm_start && now - s->last_sample >= 1000 &&
	    !s->rep_done && !s->rep_eof && s->nsamples < 4096) {
		s->last_sample = now;
		s->sample_t[s->nsamples] = now;
		size_t pend = 0;
		for (uint64_t fd = 0; fd <= s->maxfd && fd < s->cap; fd++)
			if (s->c[fd].open)
				pend += px_send_pending(loop, (int)fd);
		s->heap_samples[s->nsamples] = heap_in_use();
		s->pend_samples[s->nsamples] = pend;
		s->samples[s->nsamples++] = rss_bytes();
	}
	if ((s->rep_done || s->rep_eof) && s->live == 0) {
		px_loop_stop(loop);
		return;
	}
	if (s->t_report && now > s->t_report + SRV_END_S * 1000u) {
		s->timed_out = true;
		px_loop_stop(loop);
		return;
	}
	if (now > s->t0 + (uint64_t)(s->seconds + CLI_RAMP_S + CLI_FINAL_S + 5) * 1000u) {
		s->timed_out = true;
		px_loop_stop(loop);
	}
}

/* ------------------------------------------------------------------------ */
/* One backend                                                               */
/* ------------------------------------------------------------------------ */

static volatile pid_t g_child = -1;

static void on_alarm(int sig)
{
	(void)sig;
	static const char msg[] = "soak: WATCHDOG: run exceeded its time limit, killing it\n";
	(void)!write(2, msg, sizeof(msg) - 1);
	if (g_child > 0)
		kill(g_child, SIGKILL);
	_exit(3);
}

static int own_listen(int *port)
{
	int fd = tp_socket(AF_INET, SOCK_STREAM, 0, TP_NONBLOCK | TP_CLOEXEC);
	if (fd < 0)
		return -errno;
	int one = 1;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, BACKLOG) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	(void)port;
	return fd;
}

static int local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &l) < 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -1;
}

static bool soak_backend(const char *backend, uint32_t nconns, unsigned seconds, uint64_t seed,
                         bool verbose)
{
	struct server *s = calloc(1, sizeof(*s));
	bool ok = true;
	char why[512] = "";
	size_t whylen = 0;
#define FAIL(...)                                                                              \
	do {                                                                                   \
		ok = false;                                                                    \
		if (whylen < sizeof(why) - 1)                                                  \
			whylen += (size_t)snprintf(why + whylen, sizeof(why) - whylen, __VA_ARGS__); \
	} while (0)

	if (!s) {
		fprintf(stderr, "soak %s: out of memory\n", backend);
		return false;
	}
	int fds_start = count_fds();
	s->nconns = nconns;
	s->seconds = seconds;
	s->cap = (size_t)raise_nofile() + 16;
	s->c = calloc(s->cap, sizeof(*s->c));
	s->rbuf = malloc(SRV_RBUF);
	if (!s->c || !s->rbuf) {
		fprintf(stderr, "soak %s: out of memory\n", backend);
		free(s->c);
		free(s->rbuf);
		free(s);
		return false;
	}

	/* Listening socket first (the client needs the port), then fork. */
	bool lib_listen = px_listen_tcp != NULL;
	int lfd = lib_listen ? px_listen_tcp("127.0.0.1", 0, BACKLOG) : own_listen(NULL);
	int port = lfd >= 0 ? local_port(lfd) : -1;
	int pfd[2];
	if (lfd < 0 || port <= 0 || tp_pipe(pfd, TP_CLOEXEC) < 0) {
		fprintf(stderr, "soak %s: listen failed: %s\n", backend,
		        strerror(lfd < 0 ? -lfd : errno));
		if (lfd >= 0)
			close(lfd);
		free(s->c);
		free(s->rbuf);
		free(s);
		return false;
	}
	pid_t parent = getpid();
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "soak %s: fork: %s\n", backend, strerror(errno));
		close(lfd);
		close(pfd[0]);
		close(pfd[1]);
		free(s->c);
		free(s->rbuf);
		free(s);
		return false;
	}
	if (pid == 0) {
#if defined(HAVE_SYS_PRCTL_H) && defined(PR_SET_PDEATHSIG)
		(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif /* elsewhere: the client's own deadline and alarm below */
		if (getppid() != parent)
			_exit(2);
		signal(SIGALRM, SIG_DFL);
		alarm(seconds + WATCHDOG_EXTRA);
		close(lfd);
		close(pfd[0]);
		(void)raise_nofile();
		_exit(client_main(port, nconns, seconds, seed, pfd[1], parent));
	}
	g_child = pid;
	close(pfd[1]);
	alarm(seconds + WATCHDOG_EXTRA);

	/* Server. */
	s->loop = px_loop_new_backend(backend);
	if (!s->loop) {
		FAIL("px_loop_new_backend: %s; ", strerror(errno));
		kill(pid, SIGKILL);
	}
	s->lfd = lfd;
	s->repfd = pfd[0];
	s->t0 = now_ms();
	int rc = 0;
	if (ok) {
		s->own_acceptor = px_acceptor_add == NULL;
		if (!s->own_acceptor)
			rc = px_acceptor_add(s->loop, lfd, srv_accept_cb, s);
		else
			rc = px_io_add(s->loop, lfd, PX_READ, srv_own_accept, s);
		if (rc == 0)
			rc = px_io_add(s->loop, pfd[0], PX_READ, srv_report, s);
		if (rc == 0) {
			int64_t t = px_timer_add(s->loop, 100, 100, srv_tick, s);
			rc = t < 0 ? (int)t : 0;
		}
		if (rc < 0) {
			FAIL("setup: %s; ", strerror(-rc));
			kill(pid, SIGKILL);
		}
	}
	s->fds_base = count_fds();
	s->heap_base = heap_in_use();
	double cpu0 = cpu_s();
	uint64_t wall0 = now_ms();
	if (ok) {
		/* Bounded: each run returns on stop or after the deadline tick;
		 * the loop count guards a broken px_loop_run returning early. */
		for (int i = 0; i < 1000 && !s->timed_out && !((s->rep_done || s->rep_eof) && s->live == 0); i++) {
			rc = px_loop_run(s->loop, PX_RUN_DEFAULT);
			if (rc < 0) {
				FAIL("px_loop_run: %s; ", strerror(-rc));
				break;
			}
		}
	}
	double srv_cpu = cpu_s() - cpu0;
	uint64_t wall = now_ms() - wall0;
	if (s->timed_out)
		FAIL("server timed out (live=%" PRIu64 " report=%d); ", s->live, (int)s->rep_done);

	int fds_end_loop = count_fds();
	size_t heap_end = heap_in_use();
	size_t rss_final = rss_bytes();

	/* Any connection still open (only after a failure) is shown and closed
	 * here. */
	unsigned shown = 0;
	for (size_t fd = 0; fd < s->cap; fd++) {
		struct sconn *c = &s->c[fd];
		if (!c->open)
			continue;
		if (shown++ < 10) {
			int inq = -1, outq = -1;
			(void)ioctl(c->fd, FIONREAD, &inq);
#ifdef SIOCOUTQ
			(void)ioctl(c->fd, SIOCOUTQ, &outq);
#endif
			struct pollfd pf = { .fd = c->fd };
			pf.revents = tp_poll1(c->fd, POLLIN | POLLOUT | TP_POLLRDHUP);
			struct sockaddr_in peer;
			socklen_t pl = sizeof(peer);
			getpeername(c->fd, (struct sockaddr *)&peer, &pl);
			fprintf(stderr,
			        "soak server: open conn fd %d (peer port %d): et=%d reading=%d eof=%d "
			        "px_send_pending=%zu kernel inq=%d outq=%d poll revents=0x%x\n",
			        c->fd, ntohs(peer.sin_port), c->et, c->reading, c->eof,
			        px_send_pending(s->loop, c->fd), inq, outq, (unsigned)pf.revents);
		}
		srv_close(s, c, true);
	}
	if (!s->own_acceptor && s->loop)
		(void)px_acceptor_del(s->loop, lfd);
	if (!s->rep_done && !s->rep_eof && s->loop)
		(void)px_io_del(s->loop, pfd[0]);
	px_loop_free(s->loop);
	close(lfd);
	close(pfd[0]);

	/* Reap the client (bounded), kill it if it does not exit. */
	int status = 0;
	bool reaped = false;
	for (int i = 0; i < 500; i++) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid) {
			reaped = true;
			break;
		}
		usleep(10000);
	}
	if (!reaped) {
		kill(pid, SIGKILL);
		(void)waitpid(pid, &status, 0);
		FAIL("client did not exit; ");
	} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		FAIL("client exit status 0x%x; ", status);
	}
	g_child = -1;
	alarm(0);
	int fds_end = count_fds();

	/* Checks. */
	struct report *r = &s->rep;
	if (!s->rep_done) {
		FAIL("no report from the client; ");
		memset(r, 0, sizeof(*r));
	}
	if (r->fail_early)
		FAIL("client setup failed; ");
	if (r->mismatches)
		FAIL("%" PRIu64 " mismatched bytes; ", r->mismatches);
	if (r->extra)
		FAIL("%" PRIu64 " conns got extra bytes; ", r->extra);
	if (r->lost)
		FAIL("%" PRIu64 " conns lost bytes; ", r->lost);
	if (r->early_eof)
		FAIL("%" PRIu64 " early EOFs; ", r->early_eof);
	if (r->unexpected_err)
		FAIL("%" PRIu64 " unexpected errors; ", r->unexpected_err);
	if (r->stuck)
		FAIL("%" PRIu64 " conns stuck at the end; ", r->stuck);
	if (s->rep_done && r->opened != r->completed + r->resets)
		FAIL("opened %" PRIu64 " != completed %" PRIu64 " + reset %" PRIu64 "; ", r->opened,
		     r->completed, r->resets);
	/* Held: the client keeps N connections open or opening; a few are
	 * always being replaced after a reset or half-close, so the test is
	 * on the average number established over the steady period. */
	if (s->rep_done && (r->avg_held_x100 < (uint64_t)nconns * 95u || r->peak_held > nconns))
		FAIL("held avg %.1f (peak %" PRIu64 ") of %u conns; ", r->avg_held_x100 / 100.0,
		     r->peak_held, nconns);
	if (s->peak_live < (uint64_t)nconns * 95u / 100u)
		FAIL("server held at most %" PRIu64 " of %u conns; ", s->peak_live, nconns);
	if (s->rep_done && s->accepted != r->opened)
		FAIL("server accepted %" PRIu64 " != client opened %" PRIu64 "; ", s->accepted,
		     r->opened);
	if (s->live != 0)
		FAIL("%" PRIu64 " server conns still open; ", s->live);
	int leaked_loop = fds_end_loop - s->fds_base;
	int leaked = fds_end - fds_start;
	if (leaked_loop != 0)
		FAIL("server fds: %d before the first conn, %d after all closed; ", s->fds_base,
		     fds_end_loop);
	if (leaked != 0)
		FAIL("fds: %d at start, %d at the end; ", fds_start, fds_end);

	/* Memory. */
	size_t rss_warm = 0, rss_late = 0, net_warm = 0, net_late = 0;
	unsigned nw = 0, nl = 0;
	if (s->nsamples >= 3) {
		uint64_t a = s->sample_t[0], b = s->sample_t[s->nsamples - 1];
		uint64_t third = (b - a) / 3;
		for (unsigned i = 0; i < s->nsamples; i++) {
			/* Net of the echo bytes queued at that moment: those are
			 * bounded by back-pressure (SRV_HIGH per connection) and
			 * vary with how many clients stall, not with time. */
			size_t net = s->samples[i] > s->pend_samples[i]
			                     ? s->samples[i] - s->pend_samples[i]
			                     : 0;
			if (s->sample_t[i] <= a + third) {
				if (s->samples[i] > rss_warm)
					rss_warm = s->samples[i];
				if (net > net_warm)
					net_warm = net;
				nw++;
			}
			if (s->sample_t[i] >= b - third) {
				if (s->samples[i] > rss_late)
					rss_late = s->samples[i];
				if (net > net_late)
					net_late = net;
				nl++;
			}
		}
	} else if (s->nsamples > 0) {
		rss_warm = net_warm = s->samples[0];
		rss_late = net_late = s->samples[s->nsamples - 1];
	}
	size_t rss_lim = rss_warm + rss_warm / 100 * RSS_PCT + RSS_FIXED;
	if (s->nsamples == 0)
		FAIL("no RSS samples; ");
	else {
		size_t net_lim = net_warm + net_warm / 100 * RSS_PCT + RSS_FIXED;
		if (net_late > net_lim)
			FAIL("RSS net of queued bytes grew: warm-up %zu KiB, late %zu KiB (limit %zu); ",
			     net_warm / 1024, net_late / 1024, net_lim / 1024);
		if (rss_final > rss_lim)
			FAIL("RSS grew: warm-up %zu KiB, final %zu KiB (limit %zu); ", rss_warm / 1024,
			     rss_final / 1024, rss_lim / 1024);
	}
	long long heap_delta = (long long)heap_end - (long long)s->heap_base;
	if (s->heap_base && heap_delta > (long long)HEAP_MARGIN(s->maxfd))
		FAIL("heap in use grew by %lld B with no connection open (limit %zu); ", heap_delta,
		     HEAP_MARGIN(s->maxfd));

	printf("soak %s: conns=%" PRIu64 " held, msgs=%" PRIu64 ", bytes moved=%" PRIu64
	       ", checked=%" PRIu64 ", resets=%" PRIu64 ", half-closes=%" PRIu64
	       ", fds leaked=%d, rss start=%zu end=%zu KiB, result=%s\n",
	       backend, (r->avg_held_x100 + 50) / 100, r->msgs, r->bytes_sent + r->bytes_checked, r->bytes_checked, r->resets,
	       r->completed, leaked_loop != 0 ? leaked_loop : leaked, rss_warm / 1024,
	       rss_final / 1024, ok ? "PASS" : "FAIL");
	if (verbose || !ok) {
		printf("  detail %s: target=%u seconds=%u ramp=%" PRIu64 "ms steady=%" PRIu64 "ms final=%" PRIu64
		       "ms held min/avg/peak=%" PRIu64 "/%.1f/%" PRIu64 " opened=%" PRIu64
		       " accepted=%" PRIu64 " connect_fail=%" PRIu64 " stalls=%" PRIu64 "\n",
		       backend, nconns, seconds, r->ramp_ms, r->steady_ms, r->final_ms, r->min_held,
		       r->avg_held_x100 / 100.0, r->peak_held, r->opened, s->accepted,
		       r->connect_fail, r->stalls);
		printf("  detail %s: server rx=%" PRIu64 " tx=%" PRIu64 " closes eof/err=%" PRIu64
		       "/%" PRIu64 " backpressure stops/resumes=%" PRIu64 "/%" PRIu64
		       " accept_errs=%" PRIu64 " peak_live=%" PRIu64 " maxfd=%" PRIu64
		       " cpu=%.1fs wall=%.1fs%s%s\n",
		       backend, s->rx, s->tx_queued, s->eof_closes, s->err_closes, s->bp_stops,
		       s->bp_resumes, s->accept_errs, s->peak_live, s->maxfd, srv_cpu, wall / 1000.0,
		       lib_listen ? "" : " [own listen socket]",
		       s->own_acceptor ? " [own accept loop: px_acceptor_add not linked]" : "");
		printf("  detail %s: rss warm-up max=%zu KiB (%u samples) late max=%zu KiB (%u samples) "
		       "[net of queued: %zu -> %zu KiB] "
		       "final=%zu KiB limit=%zu KiB; heap in use before=%zu after=%zu (delta %lld, "
		       "limit %zu)%s\n",
		       backend, rss_warm / 1024, nw, rss_late / 1024, nl, net_warm / 1024,
		       net_late / 1024, rss_final / 1024,
		       rss_lim / 1024, s->heap_base, heap_end, heap_delta, HEAP_MARGIN(s->maxfd),
		       SOAK_ASAN ? " [heap check off under ASan]" : "");
		if (verbose) {
			printf("  detail %s: samples KiB rss/heap-in-use/queued:", backend);
			for (unsigned i = 0; i < s->nsamples; i++)
				printf(" %zu/%zu/%zu", s->samples[i] / 1024, s->heap_samples[i] / 1024,
				       s->pend_samples[i] / 1024);
			printf("\n");
		}
	}
	if (!ok)
		printf("  FAIL %s: %s\n", backend, why);
	fflush(stdout);
	free(s->c);
	free(s->rbuf);
	free(s);
	return ok;
#undef FAIL
}

/* ------------------------------------------------------------------------ */

static void usage(void)
{
	fprintf(stderr, "usage: soak [--backend NAME] [--conns N] [--seconds S] [--full] "
	                "[--seed X] [--select-cap N] [-v]\n");
}

int main(int argc, char **argv)
{
	const char *backend = NULL;
	long conns = -1, seconds = -1, select_cap = -1;
	bool full = false, verbose = false;
	uint64_t seed = 0x5eed;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--full")) {
			full = true;
		} else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
			verbose = true;
		} else if (!strcmp(a, "--backend") && v) {
			backend = v;
			i++;
		} else if (!strcmp(a, "--conns") && v) {
			conns = strtol(v, NULL, 10);
			i++;
		} else if (!strcmp(a, "--seconds") && v) {
			seconds = strtol(v, NULL, 10);
			i++;
		} else if (!strcmp(a, "--seed") && v) {
			seed = strtoull(v, NULL, 0);
			i++;
		} else if (!strcmp(a, "--select-cap") && v) {
			select_cap = strtol(v, NULL, 10);
			i++;
		} else {
			usage();
			return 2;
		}
	}
	if (conns < 0)
		conns = full ? 10000 : 2000;
	if (seconds < 0)
		seconds = full ? 60 : 10;
	if (conns < 1 || seconds < 1 || seconds > 3600) {
		usage();
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);

	/* Each process needs N connection fds plus a few of its own. */
	long lim = raise_nofile();
	long maxn = lim - 64;
	if (conns > maxn) {
		printf("soak: RLIMIT_NOFILE is %ld: capping conns at %ld (asked %ld)\n", lim, maxn,
		       conns);
		conns = maxn;
	}
	printf("soak: seed=0x%" PRIx64 " conns=%ld seconds=%ld pollux %s%s\n", seed, conns, seconds,
	       px_version(), SOAK_ASAN ? " (ASan)" : "");
	fflush(stdout);

	const char *const *list = px_backends();
	const char *one[2] = { backend, NULL };
	if (backend)
		list = one;
	bool all_ok = true;
	for (int i = 0; list[i]; i++) {
		long n = conns;
		if (select_cap > 0 && !strcasecmp(list[i], "select") && n > select_cap) {
			printf("soak select: capped at %ld conns (--select-cap)\n", select_cap);
			n = select_cap;
		}
		if (!soak_backend(list[i], (uint32_t)n, (unsigned)seconds, seed + (uint64_t)i, verbose))
			all_ok = false;
	}
	return all_ok ? 0 : 1;
}
#endif /* HAVE_SYS_EPOLL_H */
