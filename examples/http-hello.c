/* http-hello: a small HTTP/1.1 server that answers "Hello, world!", written
 * to be copied: timeouts, limits, keep-alive, pipelining, buffered logging,
 * and a way to keep serving at the descriptor limit.
 *
 *   http-hello [--et] [--max-requests N] [--header-timeout-ms MS]
 *              [--idle-timeout-ms MS] [--max-conns N] [--log none|stdout|stderr]
 *              [--quiet] [--port N] [--host ADDR|any] [--threads N]
 *              [--drain-ms N] [--stats]
 *
 * (--help lists every option with its default.)  Listens on 127.0.0.1 port
 * 8080 by default and runs on the backend named by $POLLUX_BACKEND.
 *
 * HTTP
 *  - GET, HEAD and POST get 200 "Hello, world!\n" (HEAD: the same header,
 *    no body); any other method 405 with "Allow: GET, HEAD, POST".
 *  - Keep-alive: HTTP/1.1 by default, HTTP/1.0 with "Connection:
 *    keep-alive" (answered with the same header); "Connection: close" is
 *    honoured.  Responses are HTTP/1.1 (RFC 9110 2.5) with Content-Length
 *    and Date.
 *  - Pipelining: every complete request in the input is answered, in order;
 *    the responses of one read go out in one px_send.
 *  - Bodies: a Content-Length body (up to 1 MiB) is read and discarded;
 *    "Expect: 100-continue" gets "100 Continue" first.  Transfer-Encoding
 *    (chunked bodies) is not supported: 411 Length Required, as the RFC
 *    allows a server that wants a length.  Content-Length over 1 MiB: 413.
 *  - Malformed requests (request line, header syntax, control characters,
 *    obsolete line folding, an HTTP/1.1 request without exactly one Host,
 *    conflicting Content-Length, both Content-Length and Transfer-Encoding)
 *    get 400; a request head over HEAD_MAX (8 KiB) gets 431 (414 when even
 *    the request line does not end within it); an HTTP major version
 *    other than 1 gets 505; an Expect other than 100-continue 417.  Each of
 *    these is answered and the connection closed, since what follows in the
 *    stream cannot be trusted.
 *  - Closing: after the last response the server shuts down its side and
 *    reads (and discards) what the client still sends for at most
 *    LINGER_MS, so the client reads the response rather than a reset.
 *
 * Timeouts (per connection; all in one sweep, see "Timeout queues" below)
 *  - --header-timeout-ms (default 10000): a request head must be complete
 *    this long after the connection was accepted, or after the first byte
 *    of a later request arrived; a body must make progress at least this
 *    often.  Otherwise the connection is closed (a slowloris client).
 *  - --idle-timeout-ms (default 30000): how long a keep-alive connection
 *    may wait between requests, and how long a client that does not read
 *    its responses (more than OUT_HIGH queued) is given to take them.
 *  Timed-out connections are closed without a response (counted in
 *  header_timeouts, idle_timeouts).
 *
 * At the descriptor limit
 *  --max-conns (default: RLIMIT_NOFILE's soft limit minus 12 + 4 per thread,
 *  the descriptors of the loops, listeners and stdio) bounds the open
 *  connections of the process.  A connection accepted beyond it closes
 *  ("sheds") one of its loop that has no request being answered: one
 *  lingering after its last response, else the one that has waited longest
 *  in the idle or the header queue (a keep-alive connection between
 *  requests, or one whose request head or body is incomplete), provided it
 *  has waited at least a tenth of --header-timeout-ms (at most 1 s): a
 *  younger one is more likely a client whose request is on its way than a
 *  slow one.  When there is none, the loop stops accepting (the acceptor is
 *  deleted: new clients wait in the kernel's listen queue, none is reset)
 *  until a connection closes or one becomes old enough to shed; the sweep
 *  timer checks.  So a slowloris attack at the limit sheds its own oldest
 *  connections and a normal client is answered within about a second,
 *  while a burst of fast clients (ab -c 200 at ulimit -n 64) queues
 *  instead of being reset.  Should accept still run out of descriptors
 *  (EMFILE: descriptors used elsewhere, or a --max-conns above the limit),
 *  the acceptor reports it (at most once a second); the server then lowers
 *  its limit for good to what was open less one per loop and makes room
 *  the same way.  Closing connections (px_io_close) is what makes the
 *  library's acceptor retry at once.
 *
 * Logging
 *  --log stdout (default), stderr or none (--quiet): one access-log line per
 *  response, "served N: PEER [TIME] \"REQUEST LINE\" STATUS BYTES", appended
 *  to a per-loop 64 KiB buffer that is written with one write() when it is
 *  full, LOG_FLUSH_MS after its first line, and at exit: no system call per
 *  request.  (A log that cannot be written, e.g. a full pipe, blocks the
 *  loop's thread during that write: the price of a simple example.)
 *  Problems (accept errors, shedding, accept pauses) go to stderr, at most
 *  one line per second for the whole process; the line says how many others
 *  were suppressed.
 *
 * Memory: a connection costs about 130 bytes, plus its input buffer once it
 * has sent something (IN_FIRST, or HEAD_MAX for a large head), plus what
 * px_send queues for a client that does not read (bounded by OUT_HIGH and a
 * batch).  10,000 slowloris connections cost about 11 MB.
 *
 * Threads, signals, counters: see multiloop.h.  SIGTERM/SIGINT: graceful
 * stop; the listeners are closed, keep-alive connections quiet for
 * ML_IDLE_MS are closed, responses sent while draining say "Connection:
 * close", requests in progress are answered.  Summary line: "http-hello:
 * exit reason=... drain=clean|deadline|second-signal threads=N elapsed_ms=T
 * connections=C requests=R dropped=D bad_requests=B header_timeouts=H
 * idle_timeouts=I shed=S accept_pauses=A peak_conns=P".  --max-requests N:
 * after N responses the server stops as on SIGTERM. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "excommon.h"
#include "multiloop.h"
#include "pollux.h"

#define HEAD_MAX     8192          /* request line + header fields + blank line */
#define IN_FIRST     1024          /* first input buffer; grows to HEAD_MAX if needed */
#define BODY_MAX     (1024L * 1024) /* largest Content-Length read (and discarded) */
#define OUT_HIGH     (64u * 1024)  /* stop reading a client with more queued for it */
#define OUT_LOW      (16u * 1024)  /* and resume when it has taken its responses to this */
#define LINGER_MS    2000          /* reading after the last response, at most */
#define LINGER_MAX   (256u * 1024) /* bytes discarded per callback while lingering */
#define LOG_BUF      (64u * 1024)
#define LOG_LINE_MAX 512
#define LOG_FLUSH_MS 1000
#define SCRATCH_SZ   16384
#define OBUF_SZ      16384
#define LOG_REQ_MAX  200           /* request line characters logged */

static const char hello[] = "Hello, world!\n";

/* ------------------------------------------------------------------------ */
/* Timeout queues                                                             */
/*
 * Why not a timer per connection: every timeout of a kind has the same
 * length, so the connections in one state, put at the tail of a list when
 * they enter that state, are in the list in the order of their deadlines.
 * One doubly linked list per kind is then a complete timer structure:
 * O(1) to enter, move or leave (no heap, no allocation, no system call;
 * a keep-alive request moves its connection twice), and expiry pops from
 * the heads.  One repeating sweep timer per loop (a few times per
 * timeout, at most every 250 ms, only while the loop has connections)
 * pops what is due.  A timer per connection would cost a px_timer_add and
 * a px_timer_del (heap operations, O(log n)) at each state change, and a
 * wheel is only needed when timeouts have many different lengths.  The
 * lists also give shedding its victim for free: the oldest connection of
 * a kind is the head of its list.  Timeouts fire between their deadline
 * and one sweep period after it.
 *
 * Every open connection is on exactly one list, so the lists are also the
 * loop's set of connections (the drain, force and cleanup walk them).
 */
enum tq {
	TQ_HEADER, /* no complete request yet: deadline header_ms after entering */
	TQ_IDLE,   /* keep-alive, between requests: idle_ms */
	TQ_SEND,   /* waiting for the client to take its responses: idle_ms */
	TQ_LINGER, /* last response out, our side shut down: LINGER_MS */
	TQ_N
};

enum phase {
	P_HEAD,   /* reading a request head (or none begun) */
	P_BODY,   /* discarding a Content-Length body */
	P_LINGER, /* shut down for writing, discarding input until EOF */
};

struct hstate;

struct conn {
	struct conn *prev, *next; /* its timeout queue, oldest first */
	struct hstate *st;
	uint64_t since;           /* px_loop_now when it entered the queue */
	uint64_t body_left;       /* P_BODY: bytes still to discard */
	char *in;                 /* unparsed input; NULL until the first read */
	uint32_t inlen, incap;
	uint32_t scan;            /* where the search for the head's end resumes */
	int fd;
	unsigned char tq, phase;
	bool first;     /* no request answered yet */
	bool keep;      /* the request being read lets the connection live on */
	bool v10;       /* ... and is HTTP/1.0 */
	bool head_only; /* ... and is HEAD */
	bool closing;   /* close once the responses are out */
	bool blocked;   /* not reading: more than OUT_HIGH queued for the client */
	unsigned short status; /* the response owed once the body is read */
	char peer[INET6_ADDRSTRLEN];
};

struct tqueue {
	struct conn *head, *tail;
	size_t n;
};

/* One loop's state: only its thread touches it. */
struct hstate {
	struct ml_worker *w;
	px_loop *loop;
	struct tqueue q[TQ_N];
	size_t nconns;
	int64_t sweep;     /* the sweep timer while there are connections, else 0 */
	int64_t log_timer; /* the log flush timer while the buffer has lines, else 0 */
	bool cleaning;     /* hello_cleanup: the loop has returned */
	bool paused;       /* the acceptor is deleted: at the limit, nothing to shed */
	uint64_t connections, requests, dropped, bad_requests, header_timeouts, idle_timeouts,
		shed, pauses, peak;
	time_t date_sec;
	char date[40];     /* "Sun, 06 Nov 1994 08:49:37 GMT" for date_sec */
	char stamp[24];    /* "1994-11-06T08:49:37Z" */
	size_t olen;       /* responses being batched for one connection */
	char obuf[OBUF_SZ];
	size_t loglen;
	char logbuf[LOG_BUF];
	char scratch[SCRATCH_SZ]; /* discarded bodies and lingering input */
};

/* Read-only once the loops run. */
static bool et;
static long max_requests;                  /* 0: no limit */
static long header_ms = 10000, idle_ms = 30000;
static long max_conns;                     /* set in main */
static uint64_t tq_ms[TQ_N];
static uint64_t sweep_ms;
static uint64_t shed_age_ms;               /* see victim() */
static long nloops;
static int log_fd = STDOUT_FILENO;         /* -1: --log none */
/* Shared by the loops. */
static atomic_long responses; /* numbers the log lines; --max-requests */
static atomic_long live;      /* open connections of the process */
static atomic_long conn_limit; /* max_conns, lowered when accept says EMFILE */
static atomic_ullong shed_total;
static atomic_ullong err_next_ms; /* rate limit of the stderr lines */
static atomic_ulong err_quiet;

static unsigned mode(void)
{
	return et ? PX_ET : 0;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A problem worth a line on stderr: at most one line per second for the
 * whole process; the next line says how many were not shown. */
static void errlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void errlog(const char *fmt, ...)
{
	uint64_t now = mono_ms();
	unsigned long long next = atomic_load(&err_next_ms);
	if (now < next || !atomic_compare_exchange_strong(&err_next_ms, &next, now + 1000)) {
		atomic_fetch_add(&err_quiet, 1);
		return;
	}
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	unsigned long quiet = atomic_exchange(&err_quiet, 0);
	if (quiet)
		fprintf(stderr, "http-hello: %s (%lu more such messages not shown)\n", msg, quiet);
	else
		fprintf(stderr, "http-hello: %s\n", msg);
}

/* ------------------------------------------------------------------------ */
/* Queues                                                                     */

static void q_remove(struct conn *c)
{
	struct tqueue *q = &c->st->q[c->tq];
	if (c->prev)
		c->prev->next = c->next;
	else
		q->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		q->tail = c->prev;
	c->prev = c->next = NULL;
	q->n--;
}

static void q_append(struct conn *c, enum tq t)
{
	struct tqueue *q = &c->st->q[t];
	c->tq = (unsigned char)t;
	c->since = px_loop_now(c->st->loop);
	c->prev = q->tail;
	c->next = NULL;
	if (q->tail)
		q->tail->next = c;
	else
		q->head = c;
	q->tail = c;
	q->n++;
}

/* To the tail of queue t: its deadline starts now. */
static void q_move(struct conn *c, enum tq t)
{
	q_remove(c);
	q_append(c, t);
}

/* ------------------------------------------------------------------------ */
/* Dates and the access log                                                   */

static void update_date(struct hstate *st)
{
	time_t t = time(NULL);
	if (t == st->date_sec)
		return;
	struct tm tm;
	st->date_sec = t;
	gmtime_r(&t, &tm);
	strftime(st->date, sizeof(st->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
	strftime(st->stamp, sizeof(st->stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void log_flush(struct hstate *st)
{
	size_t off = 0;
	while (off < st->loglen) {
		ssize_t n = write(log_fd, st->logbuf + off, st->loglen - off);
		if (n > 0) {
			off += (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else {
			errlog("writing the access log: %s (%zu bytes dropped)",
			       n < 0 ? strerror(errno) : "nothing written", st->loglen - off);
			break;
		}
	}
	st->loglen = 0;
	if (st->log_timer > 0)
		px_timer_del(st->loop, st->log_timer);
	st->log_timer = 0;
}

static void log_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	struct hstate *st = arg;
	(void)loop;
	(void)id;
	st->log_timer = 0; /* a one-shot that fired */
	log_flush(st);
}

/* The request line for the log: at most LOG_REQ_MAX characters, anything
 * unprintable (or a quote) as '?'. */
static void log_response(struct conn *c, const char *line, size_t len, int status,
                         size_t body_bytes, long number)
{
	struct hstate *st = c->st;
	if (log_fd < 0)
		return;
	if (LOG_BUF - st->loglen < LOG_LINE_MAX)
		log_flush(st);
	char req[LOG_REQ_MAX + 1];
	size_t n = len < LOG_REQ_MAX ? len : LOG_REQ_MAX;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)line[i];
		req[i] = ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\' ? '?' : (char)ch;
	}
	req[n] = '\0';
	update_date(st);
	int k = snprintf(st->logbuf + st->loglen, LOG_BUF - st->loglen,
	                 "served %ld: %s [%s] \"%s\" %d %zu\n", number, c->peer, st->stamp, req,
	                 status, body_bytes);
	if (k > 0)
		st->loglen += (size_t)k < LOG_BUF - st->loglen ? (size_t)k : LOG_BUF - st->loglen - 1;
	if (st->log_timer == 0) {
		int64_t id = px_timer_add(st->loop, LOG_FLUSH_MS, 0, log_timer_cb, st);
		if (id > 0)
			st->log_timer = id;
		else
			log_flush(st); /* no timer: no buffering */
	}
}

/* ------------------------------------------------------------------------ */
/* Connections                                                                */

static void sweep_cb(px_loop *loop, int64_t id, void *arg);
static px_accept_cb accept_cb;
static void acceptor_resume(struct hstate *st);

static void conn_close(struct conn *c)
{
	struct hstate *st = c->st;
	q_remove(c);
	st->olen = 0;                 /* a batch being made for it is void */
	px_io_close(st->loop, c->fd); /* also drops what is queued for it */
	free(c->in);
	free(c);
	st->nconns--;
	long now_live = atomic_fetch_sub(&live, 1) - 1;
	if (st->paused && (now_live < atomic_load(&conn_limit) || st->nconns == 0))
		acceptor_resume(st); /* room again (or none of ours left to wait for) */
	if (st->nconns == 0 && st->sweep > 0 && !st->paused) {
		px_timer_del(st->loop, st->sweep);
		st->sweep = 0;
	}
	if (st->w->draining && st->nconns == 0 && !st->cleaning)
		ml_drained(st->w);
}

/* The connection to close to make room, or NULL: one lingering after its
 * last response, else the one that has waited longest in the idle or the
 * header queue (no request being answered), if it has waited at least
 * shed_age_ms: a younger one is more likely a client whose request is on
 * its way than a slow one. */
static struct conn *victim(struct hstate *st)
{
	struct conn *c = st->q[TQ_LINGER].head;
	if (c)
		return c;
	struct conn *a = st->q[TQ_IDLE].head, *b = st->q[TQ_HEADER].head;
	c = !a ? b : !b ? a : a->since <= b->since ? a : b;
	return c && px_loop_now(st->loop) - c->since >= shed_age_ms ? c : NULL;
}

/* Stop accepting: the connections wait in the listener's queue (the
 * kernel's backlog) instead of being reset. */
static void acceptor_pause(struct hstate *st)
{
	if (st->paused || st->w->lfd < 0 || st->w->draining)
		return;
	if (px_acceptor_del(st->loop, st->w->lfd) < 0)
		return;
	st->paused = true;
	st->pauses++;
	if (st->sweep == 0) { /* it resumes from the sweep if nothing else */
		int64_t id = px_timer_add(st->loop, sweep_ms, sweep_ms, sweep_cb, st);
		st->sweep = id > 0 ? id : 0;
	}
	errlog("at the connection limit (%ld) with no idle or slow connection to close: "
	       "new connections wait in the listen queue",
	       atomic_load(&conn_limit));
}

static void acceptor_resume(struct hstate *st)
{
	if (!st->paused || st->cleaning)
		return;
	st->paused = false;
	if (st->w->draining || st->w->lfd < 0)
		return; /* the drain has taken the listener */
	int rc = px_acceptor_add(st->loop, st->w->lfd, accept_cb, st->w);
	if (rc < 0) {
		st->paused = true; /* the sweep tries again */
		errlog("resuming accepting: %s", strerror(-rc));
	}
}

/* Closes old idle or slow connections while more than keep are open.
 * False when there was none left to close. */
static bool shed_to(struct hstate *st, long keep)
{
	while (atomic_load(&live) > keep) {
		struct conn *c = victim(st);
		if (!c)
			return false;
		bool finished = c->phase == P_LINGER; /* answered: routine under load */
		conn_close(c);
		st->shed++;
		unsigned long long n = atomic_fetch_add(&shed_total, 1) + 1;
		if (!finished)
			errlog("at the connection limit (%ld): closing the oldest idle or slow "
			       "connections (%llu so far, lingering ones included)",
			       atomic_load(&conn_limit), n);
	}
	return true;
}

/* Over the limit: closes old idle or slow connections until under it, or,
 * when there is none, stops accepting until there is room. */
static void make_room(struct hstate *st)
{
	if (!shed_to(st, atomic_load(&conn_limit)))
		acceptor_pause(st);
}

/* Appends to the loop's batch of responses for c. */
static bool out_flush(struct conn *c);

static bool out_add(struct conn *c, const char *p, size_t n)
{
	struct hstate *st = c->st;
	if (st->olen + n > sizeof(st->obuf) && !out_flush(c))
		return false;
	memcpy(st->obuf + st->olen, p, n);
	st->olen += n;
	return true;
}

/* px_send of the batch.  False when c is closed (the send failed). */
static bool out_flush(struct conn *c)
{
	struct hstate *st = c->st;
	if (st->olen == 0)
		return true;
	int rc = px_send(st->loop, c->fd, st->obuf, st->olen);
	st->olen = 0;
	if (rc < 0) {
		conn_close(c); /* -EPIPE, -ECONNRESET, -ENOMEM... */
		return false;
	}
	return true;
}

static const char *reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 405: return "Method Not Allowed";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 417: return "Expectation Failed";
	case 431: return "Request Header Fields Too Large";
	case 505: return "HTTP Version Not Supported";
	default: return "Error";
	}
}

/* Appends one response to the batch; the body is "Hello, world!\n" for 200,
 * the reason phrase and a newline otherwise.  Returns the body's length, or
 * -1 when c is closed. */
static long respond(struct conn *c, int status, bool head_only, bool close_it, bool v10_keep)
{
	struct hstate *st = c->st;
	char body[64], hdr[512];
	size_t blen;
	if (status == 200) {
		blen = sizeof(hello) - 1;
		memcpy(body, hello, blen);
	} else {
		blen = (size_t)snprintf(body, sizeof(body), "%s\n", reason(status));
	}
	update_date(st);
	int n = snprintf(hdr, sizeof(hdr),
	                 "HTTP/1.1 %d %s\r\n"
	                 "Server: pollux-http-hello\r\n"
	                 "Date: %s\r\n"
	                 "Content-Type: text/plain\r\n"
	                 "Content-Length: %zu\r\n"
	                 "%s%s"
	                 "\r\n",
	                 status, reason(status), st->date, blen,
	                 status == 405 ? "Allow: GET, HEAD, POST\r\n" : "",
	                 close_it ? "Connection: close\r\n" : v10_keep ? "Connection: keep-alive\r\n" : "");
	if (!out_add(c, hdr, (size_t)n))
		return -1;
	if (!head_only && !out_add(c, body, blen))
		return -1;
	return head_only ? 0 : (long)blen;
}

/* One more response: numbers it, stops the server after --max-requests. */
static long count_response(struct hstate *st)
{
	long n = atomic_fetch_add(&responses, 1) + 1;
	if (max_requests > 0 && n == max_requests)
		ml_stop_all(st->w, "max-requests");
	return n;
}

/* ------------------------------------------------------------------------ */
/* Parsing                                                                    */

enum method { M_GET, M_HEAD, M_POST, M_OTHER };

struct req {
	const char *line; /* the request line, for the log */
	size_t line_len;
	enum method method;
	int minor;        /* HTTP/1.minor */
	bool conn_close, conn_keep;
	int hosts;
	bool expect_continue;
	uint64_t cl;      /* Content-Length, 0 when none */
};

static bool is_tchar(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* field-value characters: HTAB, SP, VCHAR, obs-text (RFC 9110 5.5). */
static bool is_vchar(unsigned char ch)
{
	return ch == '\t' || (ch >= 0x20 && ch != 0x7f);
}

static bool name_is(const char *p, size_t n, const char *name)
{
	return strlen(name) == n && !strncasecmp(p, name, n);
}

static void trim(const char **p, size_t *n)
{
	while (*n && (**p == ' ' || **p == '\t')) {
		++*p;
		--*n;
	}
	while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t'))
		--*n;
}

/* The Connection header: comma-separated tokens. */
static void parse_connection(const char *v, size_t n, struct req *r)
{
	while (n) {
		const char *comma = memchr(v, ',', n);
		size_t k = comma ? (size_t)(comma - v) : n;
		const char *t = v;
		size_t tn = k;
		trim(&t, &tn);
		if (name_is(t, tn, "close"))
			r->conn_close = true;
		else if (name_is(t, tn, "keep-alive"))
			r->conn_keep = true;
		if (!comma)
			break;
		v += k + 1;
		n -= k + 1;
	}
}

/* p[0..len) is a request head: request line, header fields, blank line, each
 * ended by LF or CRLF.  Returns the status to answer: 200 or 405 (a
 * well-formed request), or an error status (then the connection closes). */
static int parse_head(const char *p, size_t len, struct req *r)
{
	const char *end = p + len;
	bool have_cl = false, te = false, expect_other = false;

	memset(r, 0, sizeof(*r));
	for (int lineno = 0; p < end; lineno++) {
		const char *lf = memchr(p, '\n', (size_t)(end - p));
		if (!lf)
			return 400;
		const char *line = p;
		size_t n = (size_t)(lf - p);
		p = lf + 1;
		if (n && line[n - 1] == '\r')
			n--;
		if (memchr(line, '\r', n))
			return 400; /* a bare CR */
		if (lineno == 0) {
			/* method SP request-target SP HTTP/D.D */
			const char *sp1 = memchr(line, ' ', n);
			if (!sp1 || sp1 == line)
				return 400;
			for (const char *q = line; q < sp1; q++)
				if (!is_tchar((unsigned char)*q))
					return 400;
			const char *t = sp1 + 1;
			const char *sp2 = memchr(t, ' ', n - (size_t)(t - line));
			if (!sp2 || sp2 == t)
				return 400;
			for (const char *q = t; q < sp2; q++)
				if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
					return 400;
			const char *v = sp2 + 1;
			size_t vn = n - (size_t)(v - line);
			if (vn != 8 || memcmp(v, "HTTP/", 5) || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
			    v[7] < '0' || v[7] > '9')
				return 400;
			size_t mn = (size_t)(sp1 - line);
			r->method = mn == 3 && !memcmp(line, "GET", 3)    ? M_GET
			            : mn == 4 && !memcmp(line, "HEAD", 4) ? M_HEAD
			            : mn == 4 && !memcmp(line, "POST", 4) ? M_POST
			                                                   : M_OTHER;
			r->line = line;
			r->line_len = n;
			if (v[5] != '1')
				return 505;
			r->minor = v[7] - '0';
			continue;
		}
		if (n == 0)
			break; /* the blank line: the end */
		if (line[0] == ' ' || line[0] == '\t')
			return 400; /* obsolete line folding */
		const char *colon = memchr(line, ':', n);
		if (!colon || colon == line)
			return 400;
		for (const char *q = line; q < colon; q++)
			if (!is_tchar((unsigned char)*q))
				return 400; /* includes whitespace before the colon */
		const char *val = colon + 1;
		size_t vn = n - (size_t)(val - line);
		for (size_t i = 0; i < vn; i++)
			if (!is_vchar((unsigned char)val[i]))
				return 400;
		trim(&val, &vn);
		const char *name = line;
		size_t nn = (size_t)(colon - line);
		if (name_is(name, nn, "host")) {
			r->hosts++;
		} else if (name_is(name, nn, "connection")) {
			parse_connection(val, vn, r);
		} else if (name_is(name, nn, "content-length")) {
			uint64_t v = 0;
			if (vn == 0)
				return 400;
			for (size_t i = 0; i < vn; i++) {
				if (val[i] < '0' || val[i] > '9')
					return 400;
				if (v <= (uint64_t)BODY_MAX * 10) /* no overflow: saturates above */
					v = v * 10 + (uint64_t)(val[i] - '0');
			}
			if (have_cl && v != r->cl)
				return 400;
			have_cl = true;
			r->cl = v;
		} else if (name_is(name, nn, "transfer-encoding")) {
			te = true;
		} else if (name_is(name, nn, "expect")) {
			if (name_is(val, vn, "100-continue"))
				r->expect_continue = true;
			else
				expect_other = true;
		}
	}
	if (r->hosts > 1 || (r->minor >= 1 && r->hosts == 0))
		return 400; /* RFC 9112 3.2 */
	if (te)
		return have_cl ? 400 : 411;
	if (r->cl > (uint64_t)BODY_MAX)
		return 413;
	if (r->minor == 0) {
		r->expect_continue = false; /* RFC 9110 10.1.1: ignored in HTTP/1.0 */
		expect_other = false;
	}
	if (expect_other)
		return 417;
	return r->method == M_OTHER ? 405 : 200;
}

/* Where c->in holds a complete head: its length (from the start of the
 * buffer), and in *skip the empty lines before the request line (RFC 9112
 * 2.2 asks to ignore them).  0 while incomplete. */
static size_t head_end(struct conn *c, size_t *skip)
{
	size_t s = 0;
	while (s < c->inlen && (c->in[s] == '\r' || c->in[s] == '\n'))
		s++;
	*skip = s;
	size_t i = c->scan > s ? c->scan : s;
	for (; i < c->inlen; i++) {
		if (c->in[i] != '\n')
			continue;
		if (i + 1 < c->inlen && c->in[i + 1] == '\n')
			return i + 2;
		if (i + 2 < c->inlen && c->in[i + 1] == '\r' && c->in[i + 2] == '\n')
			return i + 3;
	}
	/* The last two bytes may begin the end: look at them again. */
	c->scan = c->inlen > s + 2 ? c->inlen - 2 : (uint32_t)s;
	return 0;
}

static void consume(struct conn *c, size_t n)
{
	if (n == 0)
		return;
	c->inlen -= (uint32_t)n;
	memmove(c->in, c->in + n, c->inlen);
	c->scan = 0;
}

/* ------------------------------------------------------------------------ */
/* Reading, answering, closing                                                */

enum { R_MORE, R_STOP, R_GONE };

static px_drain_cb on_drain;

/* Reads and discards while lingering.  False when c is closed. */
static bool linger_read(struct conn *c)
{
	struct hstate *st = c->st;
	size_t total = 0;
	while (total < LINGER_MAX) {
		ssize_t n = recv(c->fd, st->scratch, sizeof(st->scratch), 0);
		if (n > 0) {
			total += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		break; /* end of file (the client has closed too) or an error */
	}
	conn_close(c); /* done, or a client that will not stop sending */
	return false;
}

/* Everything is sent: FIN, then discard input for at most LINGER_MS. */
static bool begin_linger(struct conn *c)
{
	struct hstate *st = c->st;
	shutdown(c->fd, SHUT_WR);
	c->phase = P_LINGER;
	q_move(c, TQ_LINGER);
	if (px_io_mod(st->loop, c->fd, PX_READ | mode()) < 0) {
		conn_close(c);
		return false;
	}
	return linger_read(c); /* under PX_ET, input already waiting makes no edge */
}

/* No more requests: close once the responses are out.  False when c is
 * closed. */
static bool start_close(struct conn *c)
{
	struct hstate *st = c->st;
	c->closing = true;
	free(c->in);
	c->in = NULL;
	c->inlen = c->incap = c->scan = 0;
	if (px_send_pending(st->loop, c->fd) == 0)
		return begin_linger(c);
	/* Called while the queue is above 0: on_drain runs when it is empty. */
	if (px_io_mod(st->loop, c->fd, 0) < 0 ||
	    px_send_notify(st->loop, c->fd, 0, on_drain, c) < 0) {
		conn_close(c);
		return false;
	}
	q_move(c, TQ_SEND);
	return true;
}

/* An error response (the request cannot be trusted, nor what follows it):
 * logged, answered, then the connection closes.  False when c is closed. */
static bool reject(struct conn *c, int status, const char *line, size_t len)
{
	struct hstate *st = c->st;
	st->bad_requests++;
	long n = count_response(st);
	long b = respond(c, status, false, true, false);
	if (b < 0)
		return false;
	log_response(c, line, len, status, (size_t)b, n);
	c->closing = true;
	return true;
}

/* The request whose head was read (and body discarded) is answered and,
 * unless its head was logged already (line NULL: a request with a body,
 * logged and counted when its head came), logged.  False when c is
 * closed. */
static bool answer(struct conn *c, const char *line, size_t len)
{
	struct hstate *st = c->st;
	bool close_it = !c->keep || st->w->draining;
	long n = line ? count_response(st) : 0;
	long b = respond(c, c->status, c->head_only, close_it, c->keep && c->v10);
	if (b < 0)
		return false;
	if (line)
		log_response(c, line, len, c->status, (size_t)b, n);
	c->first = false;
	if (close_it)
		c->closing = true;
	return true;
}

/* After an answer, with the request consumed: the next request's clock
 * starts (idle while none has begun, header once one has). */
static void next_request(struct conn *c)
{
	if (!c->closing)
		q_move(c, c->inlen ? TQ_HEADER : TQ_IDLE);
}

/* Answers the complete requests in c->in, in order, and decides what c
 * waits for next.  R_MORE: read more; R_STOP: not reading now (blocked,
 * closing); R_GONE: c is closed. */
static int process(struct conn *c)
{
	struct hstate *st = c->st;
	for (;;) {
		if (c->phase == P_BODY) {
			size_t k = c->body_left < c->inlen ? (size_t)c->body_left : c->inlen;
			consume(c, k);
			c->body_left -= k;
			if (c->body_left > 0)
				break;
			c->phase = P_HEAD;
			if (!answer(c, NULL, 0)) /* logged with its head */
				return R_GONE;
			if (c->closing)
				break;
			next_request(c);
			continue;
		}
		if (c->inlen == 0)
			break;
		if (st->olen > OBUF_SZ / 2 && !out_flush(c))
			return R_GONE;
		if (px_send_pending(st->loop, c->fd) > OUT_HIGH) {
			/* The rest waits until the client reads: on_drain resumes
			 * at OUT_LOW. */
			c->blocked = true;
			break;
		}
		size_t skip, hlen = head_end(c, &skip);
		if (hlen == 0) {
			if (c->inlen >= HEAD_MAX) {
				const char *l = c->in + skip;
				size_t ln = c->inlen - skip;
				const char *lf = memchr(l, '\n', ln);
				if (!reject(c, lf ? 431 : 414, l, lf ? (size_t)(lf - l) : ln))
					return R_GONE;
			}
			break;
		}
		struct req rq;
		int status = parse_head(c->in + skip, hlen - skip, &rq);
		if (status != 200 && status != 405) {
			const char *l = c->in + skip;
			const char *lf = memchr(l, '\n', hlen - skip);
			size_t ln = lf ? (size_t)(lf - l) : hlen - skip;
			if (ln && l[ln - 1] == '\r')
				ln--;
			if (!reject(c, status, l, ln))
				return R_GONE;
			break;
		}
		st->requests++;
		c->status = (unsigned short)status;
		c->head_only = rq.method == M_HEAD;
		c->v10 = rq.minor == 0;
		c->keep = rq.minor >= 1 ? !rq.conn_close : rq.conn_keep && !rq.conn_close;
		if (rq.cl > 0) {
			/* Logged now, while the request line is in the buffer;
			 * answered once the body is read. */
			if (rq.expect_continue && !out_add(c, "HTTP/1.1 100 Continue\r\n\r\n", 25))
				return R_GONE;
			long n = count_response(st);
			size_t b = c->head_only ? 0 : status == 200 ? sizeof(hello) - 1
			                                             : strlen(reason(status)) + 1;
			log_response(c, rq.line, rq.line_len, status, b, n);
			consume(c, hlen);
			c->phase = P_BODY;
			c->body_left = rq.cl;
			q_move(c, TQ_HEADER); /* the body's clock */
			continue;
		}
		if (!answer(c, rq.line, rq.line_len))
			return R_GONE;
		consume(c, hlen);
		if (c->closing)
			break;
		next_request(c);
	}
	if (!out_flush(c))
		return R_GONE;
	if (c->closing)
		return start_close(c) ? R_STOP : R_GONE;
	if (!c->blocked && px_send_pending(st->loop, c->fd) > OUT_HIGH)
		c->blocked = true;
	if (c->blocked) {
		if (px_io_mod(st->loop, c->fd, 0) < 0) {
			conn_close(c);
			return R_GONE;
		}
		if (c->tq != TQ_SEND)
			q_move(c, TQ_SEND);
		return R_STOP;
	}
	if (c->tq == TQ_IDLE && c->inlen > 0)
		q_move(c, TQ_HEADER); /* a request begins: the header clock starts */
	return R_MORE;
}

/* Reads into c->in (a head) or the scratch buffer (a body being
 * discarded).  recv's result. */
static ssize_t conn_recv(struct conn *c)
{
	struct hstate *st = c->st;
	ssize_t n;
	if (c->phase == P_BODY) {
		/* process() has consumed the buffered part: c->inlen == 0.
		 * Never more than the body: what follows is the next request. */
		size_t want = c->body_left < sizeof(st->scratch) ? (size_t)c->body_left
		                                                  : sizeof(st->scratch);
		n = recv(c->fd, st->scratch, want, 0);
		if (n > 0) {
			c->body_left -= (uint64_t)n;
			q_move(c, TQ_HEADER); /* progress: the body's clock starts again */
		}
		return n;
	}
	if (c->inlen >= HEAD_MAX) {
		errno = ENOBUFS; /* cannot happen: process() answered 431 */
		return -1;
	}
	if (c->inlen == c->incap) {
		/* Most requests fit in IN_FIRST; only larger heads cost HEAD_MAX. */
		uint32_t cap = c->incap ? HEAD_MAX : IN_FIRST;
		char *in = realloc(c->in, cap);
		if (!in) {
			errno = ENOMEM;
			return -1;
		}
		c->in = in;
		c->incap = cap;
	}
	n = recv(c->fd, c->in + c->inlen, c->incap - c->inlen, 0);
	if (n > 0)
		c->inlen += (uint32_t)n;
	return n;
}

/* Answers what is buffered, reads, answers...: one read with level-
 * triggered watchers (the loop reports the fd again while input waits),
 * until EAGAIN with --et; stops when c blocks, closes or is closed. */
static void pump(struct conn *c)
{
	bool got = false;
	for (;;) {
		if (process(c) != R_MORE)
			return;
		if (got && !et)
			return;
		ssize_t n = conn_recv(c);
		if (n > 0) {
			got = true;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n == 0 && px_send_pending(c->st->loop, c->fd) > 0) {
			/* The client is done sending (maybe a half-close after its
			 * requests): its responses still go out.  A request it left
			 * incomplete is dropped. */
			start_close(c);
			return;
		}
		if (n < 0 && errno != ECONNRESET && errno != EPIPE && errno != ETIMEDOUT)
			errlog("reading from %s: %s", c->peer, strerror(errno));
		conn_close(c); /* end of file, nothing owed; or an error */
		return;
	}
}

static void conn_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct conn *c = arg;
	(void)loop;
	(void)fd;
	(void)revents; /* PX_HUP / PX_ERR: recv() reports them */
	if (c->phase == P_LINGER)
		linger_read(c);
	else if (!c->blocked && !c->closing)
		pump(c);
}

/* The queue fell to OUT_LOW (to 0 when closing), or a send failed. */
static void on_drain(px_loop *loop, int fd, int status, void *arg)
{
	struct conn *c = arg;
	if (status < 0) {
		conn_close(c);
		return;
	}
	if (c->phase == P_LINGER)
		return;
	if (c->closing) {
		if (px_send_pending(loop, fd) == 0)
			begin_linger(c);
		return;
	}
	if (c->blocked && px_send_pending(loop, fd) <= OUT_LOW) {
		c->blocked = false;
		if (px_io_mod(loop, fd, PX_READ | mode()) < 0) {
			conn_close(c);
			return;
		}
		q_move(c, c->phase == P_BODY || c->inlen || c->first ? TQ_HEADER : TQ_IDLE);
		/* Buffered requests first; then read (under PX_ET what waits in
		 * the kernel makes no new edge). */
		pump(c);
	}
}

/* Closes what is past its deadline: the heads of the queues. */
static void sweep_cb(px_loop *loop, int64_t id, void *arg)
{
	struct hstate *st = arg;
	uint64_t now = px_loop_now(loop);
	(void)id;
	for (int t = 0; t < TQ_N; t++) {
		struct conn *c;
		while ((c = st->q[t].head) && now - c->since >= tq_ms[t]) {
			if (t == TQ_HEADER)
				st->header_timeouts++;
			else if (t != TQ_LINGER)
				st->idle_timeouts++;
			conn_close(c); /* may delete this timer: then st->q[] is empty */
		}
	}
	/* Paused: resume once there is room for one more, made by shedding
	 * what has become old enough if need be (the connections waiting in
	 * the listen queue are then accepted, each shedding another). */
	if (st->paused && (shed_to(st, atomic_load(&conn_limit) - 1) || st->nconns == 0))
		acceptor_resume(st);
	if (!st->paused && st->nconns == 0 && st->sweep > 0) {
		px_timer_del(loop, st->sweep);
		st->sweep = 0;
	}
}

static void accept_cb(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                      socklen_t peerlen, void *arg)
{
	struct ml_worker *w = arg;
	struct hstate *st = w->state;
	(void)lfd;
	(void)peerlen;
	if (cfd < 0) {
		if (cfd == -EMFILE || cfd == -ENFILE) {
			/* Descriptors are used elsewhere too (--max-conns is too
			 * high for this process): lower the limit, for good, to
			 * what is open less one per loop (each may go one over
			 * before it pauses), then make room as at the limit.  The
			 * acceptor retries as soon as a connection is closed. */
			long now_live = atomic_load(&live);
			long lim = now_live - 1 - nloops;
			if (lim < 1)
				lim = 1;
			long old = atomic_load(&conn_limit);
			while (lim < old && !atomic_compare_exchange_weak(&conn_limit, &old, lim))
				;
			errlog("accept: %s with %ld connections open: connection limit now %ld",
			       strerror(-cfd), now_live, atomic_load(&conn_limit));
			make_room(st);
		} else {
			errlog("accept: %s (the acceptor backs off)", strerror(-cfd));
		}
		return;
	}
	atomic_fetch_add(&live, 1);
	struct conn *c = calloc(1, sizeof(*c));
	int rc = c ? px_io_add(loop, cfd, PX_READ | mode(), conn_cb, c) : -ENOMEM;
	if (rc == 0)
		rc = px_send_notify(loop, cfd, OUT_LOW, on_drain, c);
	if (rc == 0 && st->sweep == 0) {
		int64_t id = px_timer_add(loop, sweep_ms, sweep_ms, sweep_cb, st);
		rc = id < 0 ? (int)id : 0;
		st->sweep = id > 0 ? id : 0;
	}
	if (rc < 0) {
		errlog("new connection: %s", strerror(-rc));
		if (c)
			px_io_del(loop, cfd);
		close(cfd);
		free(c);
		atomic_fetch_sub(&live, 1);
		return;
	}
	c->fd = cfd;
	c->st = st;
	c->first = true;
	c->phase = P_HEAD;
	strcpy(c->peer, "-");
	if (log_fd >= 0 && peer) {
		if (peer->sa_family == AF_INET)
			inet_ntop(AF_INET, &((const struct sockaddr_in *)peer)->sin_addr, c->peer,
			          sizeof(c->peer));
		else if (peer->sa_family == AF_INET6)
			inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)peer)->sin6_addr, c->peer,
			          sizeof(c->peer));
	}
	q_append(c, TQ_HEADER); /* the first request's head is due header_ms from now */
	st->nconns++;
	st->connections++;
	if (atomic_load(&live) > atomic_load(&conn_limit))
		make_room(st); /* never closes c: it is young */
	long now_live = atomic_load(&live);
	if (now_live > 0 && (uint64_t)now_live > st->peak)
		st->peak = (uint64_t)now_live;
}

/* ------------------------------------------------------------------------ */
/* The hooks of multiloop.h, each in the loop's own thread                   */

static int hello_start(struct ml_worker *w)
{
	struct hstate *st = w->state;
	st->w = w;
	st->loop = w->loop;
	return 0;
}

/* Stop: a connection with no request begun, nothing queued for it and
 * nothing waiting to be read, quiet for ML_IDLE_MS (since it was accepted
 * or answered), is idle and closed; the others are answered (with
 * "Connection: close") and close by themselves.  Runs every
 * ML_DRAIN_TICK_MS. */
static void hello_drain(struct ml_worker *w)
{
	struct hstate *st = w->state;
	uint64_t now = px_loop_now(w->loop);
	static const enum tq quiet[] = { TQ_IDLE, TQ_HEADER };
	for (size_t k = 0; k < sizeof(quiet) / sizeof(quiet[0]); k++) {
		for (struct conn *c = st->q[quiet[k]].head, *next; c; c = next) {
			next = c->next;
			if (c->phase != P_HEAD || c->inlen > 0 || now - c->since < ML_IDLE_MS ||
			    px_send_pending(w->loop, c->fd) > 0)
				continue;
			char b;
			ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
			if (n > 0)
				continue; /* a request is arriving: its callback reads it */
			conn_close(c);
		}
	}
	if (st->nconns == 0)
		ml_drained(w);
}

static void close_all(struct hstate *st, bool count)
{
	for (int t = 0; t < TQ_N; t++) {
		while (st->q[t].head) {
			if (count)
				st->dropped++;
			conn_close(st->q[t].head);
		}
	}
}

static void hello_force(struct ml_worker *w)
{
	close_all(w->state, true); /* the last one calls ml_drained */
	ml_drained(w);
}

static void hello_snapshot(struct ml_worker *w, uint64_t *c)
{
	struct hstate *st = w->state;
	c[0] = st->connections;
	c[1] = st->requests;
	c[2] = st->dropped;
	c[3] = st->bad_requests;
	c[4] = st->header_timeouts;
	c[5] = st->idle_timeouts;
	c[6] = st->shed;
	c[7] = st->pauses;
	c[8] = st->peak;
}

static void hello_cleanup(struct ml_worker *w)
{
	struct hstate *st = w->state;
	st->cleaning = true;
	close_all(st, false);
	if (st->sweep > 0)
		px_timer_del(w->loop, st->sweep);
	st->sweep = 0;
	log_flush(st);
}

static const struct ml_counter hello_counters[] = {
	{ "connections", false },   { "requests", false },      { "dropped", false },
	{ "bad_requests", false },  { "header_timeouts", false }, { "idle_timeouts", false },
	{ "shed", false },          { "accept_pauses", false },    { "peak_conns", true },
};

/* ------------------------------------------------------------------------ */

#define USAGE                                                                              \
	"usage: http-hello [--et] [--max-requests N] [--header-timeout-ms MS]\n"           \
	"                  [--idle-timeout-ms MS] [--max-conns N] [--log none|stdout|stderr]\n" \
	"                  [--quiet] [--port N] [--host ADDR|any] [--threads N]\n"        \
	"                  [--drain-ms N] [--stats]\n"

/* RLIMIT_NOFILE's soft limit, less what the process needs besides its
 * connections: stdio, and per loop its backend, wake-up fd, listener and
 * the acceptor's reserve descriptor, plus a margin. */
static long default_max_conns(long threads)
{
	struct rlimit rl;
	long lim = 1000000;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < (rlim_t)lim)
		lim = (long)rl.rlim_cur;
	long n = lim - (12 + 4 * threads);
	return n > 1 ? n : 1;
}

static void help(const struct ml_options *d)
{
	printf(USAGE
	       "\n"
	       "A small HTTP/1.1 server: every GET, HEAD or POST gets \"Hello, world!\".\n"
	       "Keep-alive (HTTP/1.1 by default, HTTP/1.0 with Connection: keep-alive),\n"
	       "pipelining, Content-Length bodies up to 1 MiB read and discarded; 400 for a\n"
	       "malformed request, 431 for a request head over 8 KiB, 411 for chunked\n"
	       "bodies, 413 for larger ones, 405 for other methods.  Per-connection header\n"
	       "and idle timeouts; at --max-conns the oldest idle or slow connections are\n"
	       "closed to make room (or accepting pauses until one is old enough: 1/10 of\n"
	       "the header timeout, at most 1 s).  One access-log line per response,\n"
	       "buffered.\n"
	       "\n"
	       "Options:\n"
	       "  --et                   edge-triggered watchers (PX_ET; default level)\n"
	       "  --max-requests N       stop as on SIGTERM after N responses (default: never)\n"
	       "  --header-timeout-ms MS a request head must be complete MS after the\n"
	       "                         connection or the request's first byte; a body\n"
	       "                         must progress every MS (default %ld)\n"
	       "  --idle-timeout-ms MS   keep-alive wait between requests, and the time a\n"
	       "                         client gets to read its responses (default %ld)\n"
	       "  --max-conns N          open connections at most (default %ld: the\n"
	       "                         descriptor limit, %ld, less 12 + 4 per thread)\n"
	       "  --log WHERE            access log: stdout, stderr or none (default stdout)\n"
	       "  --quiet                the same as --log none\n",
	       header_ms, idle_ms, default_max_conns(d->threads), default_max_conns(d->threads) + 12 + 4 * d->threads);
	ml_help(stdout, d);
	printf("\n" EX_HELP_ENV "\n");
	ml_help_signals(stdout, "http-hello");
	printf("\nExit status: 0 after a drain (even a forced one), 1 when the server could\n"
	       "not start (a bad POLLUX_BACKEND, a host that does not resolve, a port in\n"
	       "use), 64 bad usage.\n");
}

int main(int argc, char **argv)
{
	const struct ml_options defaults = { .host = "127.0.0.1", .port = 8080, .threads = 1,
	                                     .drain_ms = 5000 };
	struct ml_options o = defaults;
	long conns = 0; /* 0: derived from RLIMIT_NOFILE */
	const char *me = "http-hello";

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
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		long *num = NULL, lo = 1, hi = 86400000L;
		if (!strcmp(a, "--et")) {
			et = true;
		} else if (!strcmp(a, "--quiet")) {
			log_fd = -1;
		} else if (!strcmp(a, "--log")) {
			if (!v)
				return ex_usage(me, USAGE, "option '%s' needs a value", a);
			i++;
			if (!strcmp(v, "none"))
				log_fd = -1;
			else if (!strcmp(v, "stdout"))
				log_fd = STDOUT_FILENO;
			else if (!strcmp(v, "stderr"))
				log_fd = STDERR_FILENO;
			else
				return ex_usage(me, USAGE, "bad value '%s' for --log (none, stdout or stderr)", v);
		} else if (!strcmp(a, "--max-requests")) {
			num = &max_requests;
			hi = 1000000000L;
		} else if (!strcmp(a, "--header-timeout-ms")) {
			num = &header_ms;
		} else if (!strcmp(a, "--idle-timeout-ms")) {
			num = &idle_ms;
		} else if (!strcmp(a, "--max-conns")) {
			num = &conns;
			hi = 10000000L;
		} else {
			return ex_usage(me, USAGE, "unknown option '%s'", a);
		}
		if (num) {
			if (!v)
				return ex_usage(me, USAGE, "option '%s' needs a value", a);
			if (!ex_parse_long(v, lo, hi, num))
				return ex_usage(me, USAGE, "bad value '%s' for %s (%ld to %ld)", v, a, lo, hi);
			i++;
		}
	}
	max_conns = conns > 0 ? conns : default_max_conns(o.threads);
	atomic_store(&conn_limit, max_conns);
	tq_ms[TQ_HEADER] = (uint64_t)header_ms;
	tq_ms[TQ_IDLE] = tq_ms[TQ_SEND] = (uint64_t)idle_ms;
	tq_ms[TQ_LINGER] = LINGER_MS;
	/* A few sweeps per timeout: a timeout fires at most an eighth of the
	 * shorter one late (10 ms to 250 ms). */
	long shorter = header_ms < idle_ms ? header_ms : idle_ms;
	sweep_ms = (uint64_t)(shorter / 8 < 10 ? 10 : shorter / 8 > 250 ? 250 : shorter / 8);
	/* A connection at least this old may be shed: a tenth of the header
	 * timeout, at most 1 s (a request is on its way within a round trip
	 * of the accept, or of the previous response). */
	shed_age_ms = (uint64_t)(header_ms / 10 > 1000 ? 1000 : header_ms / 10);
	nloops = o.threads;
	signal(SIGPIPE, SIG_IGN);

	char info[160];
	snprintf(info, sizeof(info), "max_conns=%ld header_timeout_ms=%ld idle_timeout_ms=%ld log=%s",
	         max_conns, header_ms, idle_ms,
	         log_fd < 0 ? "none" : log_fd == STDOUT_FILENO ? "stdout" : "stderr");
	/* Static: a loop's state holds its buffers (about 100 KiB). */
	static struct hstate states[ML_MAX_THREADS];
	const struct ml_app app = {
		.name = "http-hello",
		.mode = et ? "edge" : "level",
		.info = info,
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
