/* hb_common.h: the code every HTTP-hello benchmark server shares (header only).
 *
 *  - hb_parse():    the one request parser (complete request = ends in a blank
 *                   line; "Connection: close" detection).
 *  - hb_process():  consumes every complete request in a connection buffer and
 *                   says how many responses to send and whether to close after.
 *  - HB_RESPONSE:   the fixed response; hb_out() builds n copies.
 *  - hb_listen():   the listening socket (the same options as px_listen_tcp:
 *                   SO_REUSEADDR, non-blocking, close-on-exec, SOMAXCONN).
 *  - hb_stats_*():  request/connection counters, printed with the process's
 *                   CPU time (getrusage) on SIGTERM/SIGINT or at exit:
 *                   "HBSTATS requests=N conns=M utime_us=U stime_us=S".
 *  - hb_args():     "--port N" "--backend NAME" "--plain-send" "--io-close"
 *                   (the last two: pollux only).
 *
 * Every server reads with ONE recv per readiness notification (level
 * triggered), answers all complete requests in one send, and when send takes
 * less than everything keeps the rest and waits for writability (reading is
 * paused meanwhile).  A request saying "Connection: close" is answered, then
 * the connection is closed (once the answer is out).
 */
#ifndef HB_COMMON_H
#define HB_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define HB_RESPONSE                                                                  \
	"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\n" \
	"Hello, world!"
#define HB_RESPONSE_LEN (sizeof(HB_RESPONSE) - 1)
#define HB_INBUF 8192 /* a request larger than this closes the connection */
/* Answers per batch at most: every complete request that fits in the input
 * buffer (the shortest request, "GET / HTTP/1.0\r\n\r\n", is 18 bytes). */
#define HB_MAXPIPE (HB_INBUF / 16)

/* Parses the request at buf[0..len).  Returns its length (through the blank
 * line) when complete, 0 when more bytes are needed.  *close_after is set when
 * a Connection header holds the token "close". */
static inline size_t hb_parse(const char *buf, size_t len, bool *close_after)
{
	const char *end = NULL;

	for (size_t i = 3; i < len; i++) {
		if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r') {
			end = buf + i + 1;
			break;
		}
	}
	if (!end)
		return 0;
	*close_after = false;
	/* Header lines: after the first CRLF, up to the blank line. */
	const char *p = memchr(buf, '\n', (size_t)(end - buf));
	while (p && p + 1 < end) {
		const char *line = p + 1;
		const char *eol = memchr(line, '\n', (size_t)(end - line));
		if (!eol)
			break;
		size_t ll = (size_t)(eol - line);
		if (ll > 11 && strncasecmp(line, "connection:", 11) == 0) {
			const char *v = line + 11;
			const char *ve = eol;
			while (v < ve && (*v == ' ' || *v == '\t'))
				v++;
			while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			/* comma-separated tokens */
			while (v < ve) {
				const char *t = v;
				while (v < ve && *v != ',')
					v++;
				const char *te = v;
				while (t < te && (*t == ' ' || *t == '\t'))
					t++;
				while (te > t && (te[-1] == ' ' || te[-1] == '\t'))
					te--;
				if (te - t == 5 && strncasecmp(t, "close", 5) == 0)
					*close_after = true;
				if (v < ve)
					v++;
			}
		}
		p = eol;
	}
	return (size_t)(end - buf);
}

static unsigned long hb_requests, hb_conns;

/* Consumes the complete requests in buf (*len bytes, compacted in place):
 * all of them (HB_MAXPIPE is never reached for a buffer of HB_INBUF).
 * Returns the number of responses to send, sets *close_after when the last
 * one asked to close (requests after it are ignored). */
static inline int hb_process(char *buf, size_t *len, bool *close_after)
{
	size_t off = 0;
	int n = 0;

	*close_after = false;
	while (n < HB_MAXPIPE) {
		bool c = false;
		size_t r = hb_parse(buf + off, *len - off, &c);
		if (!r)
			break;
		off += r;
		n++;
		if (c) {
			*close_after = true;
			off = *len; /* nothing after a close is answered */
			break;
		}
	}
	if (off) {
		memmove(buf, buf + off, *len - off);
		*len -= off;
	}
	hb_requests += (unsigned long)n;
	return n;
}

/* n responses back to back. */
static char hb_outbuf[HB_MAXPIPE * HB_RESPONSE_LEN];
static inline const char *hb_out(int n, size_t *outlen)
{
	static int built;
	if (!built) {
		for (int i = 0; i < HB_MAXPIPE; i++)
			memcpy(hb_outbuf + (size_t)i * HB_RESPONSE_LEN, HB_RESPONSE, HB_RESPONSE_LEN);
		built = 1;
	}
	*outlen = (size_t)n * HB_RESPONSE_LEN;
	return hb_outbuf;
}

static inline int hb_listen(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	struct sockaddr_in sa;

	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, SOMAXCONN) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* ---- the connection logic every server shares ---- */
struct hb_conn {
	int fd;
	bool close_after; /* close once the pending answer is out */
	size_t inlen;
	const char *out; /* answer bytes not yet taken by send */
	size_t outlen;
	void *lib; /* per-library data */
	char in[HB_INBUF];
};

enum { HB_KEEP = 0, HB_WANT_WRITE = 1, HB_CLOSE = 2 };

/* Bytes just appended to c->in: returns the number of answers to send now
 * (sets c->close_after), 0 when the request is incomplete, -1 to close (the
 * buffer is full without a complete request). */
static inline int hb_consume(struct hb_conn *c)
{
	bool cl = false;
	int k = hb_process(c->in, &c->inlen, &cl);
	if (k == 0)
		return c->inlen >= HB_INBUF ? -1 : 0;
	c->close_after = cl;
	return k;
}

/* One recv, then hb_consume: >0 answers to send, 0 nothing to do, -1 close
 * (end of file, error, or oversized request). */
static inline int hb_read(struct hb_conn *c)
{
	ssize_t n;
	do
		n = recv(c->fd, c->in + c->inlen, HB_INBUF - c->inlen, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
	if (n == 0)
		return -1;
	c->inlen += (size_t)n;
	return hb_consume(c);
}

/* Plain send of c->out: HB_KEEP when everything went and the connection
 * stays, HB_CLOSE when it must be closed (done and close_after, or error),
 * HB_WANT_WRITE when the kernel took only part (the rest stays in c->out). */
static inline int hb_flush(struct hb_conn *c)
{
	while (c->outlen > 0) {
		ssize_t n = send(c->fd, c->out, c->outlen, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return (errno == EAGAIN || errno == EWOULDBLOCK) ? HB_WANT_WRITE : HB_CLOSE;
		}
		c->out += n;
		c->outlen -= (size_t)n;
	}
	return c->close_after ? HB_CLOSE : HB_KEEP;
}

/* Readable: read, answer.  Same return values as hb_flush. */
static inline int hb_on_readable(struct hb_conn *c)
{
	int k = hb_read(c);
	if (k < 0)
		return HB_CLOSE;
	if (k == 0)
		return HB_KEEP;
	c->out = hb_out(k, &c->outlen);
	return hb_flush(c);
}

static inline struct hb_conn *hb_conn_new(int fd)
{
	struct hb_conn *c = malloc(sizeof(*c));
	if (!c)
		return NULL;
	c->fd = fd;
	c->close_after = false;
	c->inlen = 0;
	c->out = NULL;
	c->outlen = 0;
	c->lib = NULL;
	hb_conns++;
	return c;
}

/* Accept errors that mean "that connection died in the queue": retry. */
static inline bool hb_accept_retry(int e)
{
	return e == EINTR || e == ECONNABORTED || e == EPROTO || e == ENETDOWN ||
	       e == ENOPROTOOPT || e == EHOSTDOWN || e == ENONET || e == EHOSTUNREACH ||
	       e == EOPNOTSUPP || e == ENETUNREACH;
}
/* Accepting: at most this many per readiness notification (as pollux). */
#define HB_ACCEPT_BATCH 64

/* One accept4 (non-blocking, close-on-exec): fd, or -1 when nothing more to
 * take now (EAGAIN, or a resource error: the servers just try again on the
 * next notification). */
static inline int hb_accept(int lfd)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0)
			return fd;
		if (!hb_accept_retry(errno))
			return -1;
	}
}

/* ---- stats ---- */
static void hb_put(char **p, const char *s)
{
	while (*s)
		*(*p)++ = *s++;
}
static void hb_putu(char **p, unsigned long v)
{
	char tmp[24];
	int n = 0;
	do
		tmp[n++] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	while (n)
		*(*p)++ = tmp[--n];
}
static void hb_stats_print(void)
{
	struct rusage ru;
	char line[256], *p = line;
	getrusage(RUSAGE_SELF, &ru);
	hb_put(&p, "HBSTATS requests=");
	hb_putu(&p, hb_requests);
	hb_put(&p, " conns=");
	hb_putu(&p, hb_conns);
	hb_put(&p, " utime_us=");
	hb_putu(&p, (unsigned long)ru.ru_utime.tv_sec * 1000000ul + (unsigned long)ru.ru_utime.tv_usec);
	hb_put(&p, " stime_us=");
	hb_putu(&p, (unsigned long)ru.ru_stime.tv_sec * 1000000ul + (unsigned long)ru.ru_stime.tv_usec);
	hb_put(&p, "\n");
	ssize_t r = write(2, line, (size_t)(p - line));
	(void)r;
}
static void hb_on_term(int sig)
{
	(void)sig;
	hb_stats_print();
	_exit(0);
}
static inline void hb_stats_init(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = hb_on_term;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

struct hb_opts {
	int port;
	const char *backend;
	bool plain_send;
	bool io_close;
};

static inline void hb_args(int argc, char **argv, struct hb_opts *o)
{
	o->port = 8080;
	o->backend = "epoll";
	o->plain_send = false;
	o->io_close = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc)
			o->port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--backend") && i + 1 < argc)
			o->backend = argv[++i];
		else if (!strcmp(argv[i], "--plain-send"))
			o->plain_send = true;
		else if (!strcmp(argv[i], "--io-close"))
			o->io_close = true;
		else {
			fprintf(stderr, "usage: %s [--port N] [--backend epoll|poll|select] [--plain-send] [--io-close]\n",
			        argv[0]);
			exit(64);
		}
	}
}

/* Printed on stdout once listening: the runner waits for it. */
static inline void hb_ready(const char *name, const char *backend, int port)
{
	printf("READY %s %s %d\n", name, backend, port);
	fflush(stdout);
}

#endif
