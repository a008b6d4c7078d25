/* tls-echo: a TLS echo server and client on OpenSSL in non-blocking mode,
 * driven by a pollux loop.
 *
 *   tls-echo --cert FILE --key FILE [--port N] [--host ADDR|any] [--et]
 *            [--handshake-timeout MS]
 *   tls-echo --client --port N [--host H] (--cafile FILE | --insecure)
 *            [--servername NAME] [--et]
 *
 * Server: a listening socket handed to px_acceptor_add; each connection
 * gets an SSL object on its non-blocking socket and one watcher.  Every
 * SSL call that cannot finish says why: SSL_ERROR_WANT_READ arms the
 * watcher for PX_READ, SSL_ERROR_WANT_WRITE for PX_WRITE (px_io_mod), and
 * the next event resumes the same call.  Note that SSL_write may want to
 * read and SSL_read to write (TLS 1.3 key updates, renegotiation in 1.2):
 * the mask follows what OpenSSL asked for, not the direction of the data.
 * Echo: SSL_read into the connection's one buffer, SSL_write it back;
 * nothing more is read while the buffer is not out (back-pressure: the
 * client's window closes).  A close_notify from the client (TLS half-close)
 * lets the buffered bytes go out, then the server sends its own and
 * closes.  A client that aborts mid-handshake, resets, sends garbage or
 * closes TCP without close_notify only loses its own connection: the error
 * is logged on stderr and the fd closed (px_io_del first).  A handshake
 * that has not finished after --handshake-timeout MS (default 10000) is
 * dropped too.  SIGTERM/SIGINT (px_signal_add): stop accepting, send
 * close_notify where possible, close everything, print the totals, exit 0.
 *
 * Client: connects, sends its stdin, writes what comes back to stdout; at
 * the end of stdin it sends close_notify (TLS half-close) and reads until
 * the server's close_notify.  Exit 0 only when exactly as many bytes came
 * back as were sent.  stdin may be a pipe, a socket, a tty or a file; it
 * is watched (PX_READ) only after a read said EAGAIN.
 *
 * --et (edge-triggered watchers): no new edge comes for bytes that are
 * already waiting, so a connection only goes back to waiting after an SSL
 * call answered WANT_READ/WANT_WRITE, which OpenSSL says only when the
 * socket itself said EAGAIN (SSL_MODE_AUTO_RETRY is set, so a record that
 * carried no application data, such as a session ticket, never ends a
 * read early).  Decrypted bytes that OpenSSL still holds (SSL_pending,
 * SSL_has_pending) make no readiness at all, edge- or level-triggered: the
 * loop below reads again at once after every successful SSL_read and
 * SSL_write instead of waiting for the socket.  To stay fair it stops
 * after ROUNDS_MAX rounds and continues from a 0 ms timer, which works for
 * both modes (level-triggered readiness would not see SSL_pending either).
 *
 * Runs on the backend named by $POLLUX_BACKEND. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "excommon.h"
#include "pollux.h"

#define BUF_SZ 16384
#define ROUNDS_MAX 16
#define DEFAULT_HS_TIMEOUT_MS 10000

enum state { HANDSHAKE, OPEN, CLOSING };

struct conn {
	struct conn *prev, *next;
	int fd;
	SSL *ssl;
	enum state state;
	unsigned armed;         /* PX_READ | PX_WRITE now armed (PX_ET added) */
	bool peer_closed;       /* close_notify received: flush, then close */
	int64_t hs_timer;       /* handshake deadline (server) */
	int64_t resume;         /* 0 ms timer after ROUNDS_MAX rounds */
	size_t off, len;        /* buf[off..len) still to write */
	uint64_t in, out;
	unsigned char buf[BUF_SZ];
};

struct totals {
	uint64_t accepted, handshakes, completed, failed, bytes;
};

static bool et;
static long hs_timeout_ms = DEFAULT_HS_TIMEOUT_MS;
static struct conn *conns;
static size_t nconns;
static struct totals tot;
static int listen_fd = -1;

/* Client state */
static bool client_mode, stdin_eof, stdin_registered, stdin_armed, close_sent, done;
static int stdin_flags = -1;
static int exit_code;

static void conn_run(px_loop *loop, struct conn *c);

/* The first OpenSSL error of the queue (or errno's text), for the log. */
static const char *ssl_why(int err, char *buf, size_t len)
{
	unsigned long e = ERR_peek_last_error();

	if (e) {
		ERR_error_string_n(e, buf, len);
	} else if (err == SSL_ERROR_SYSCALL) {
		snprintf(buf, len, "%s", errno ? strerror(errno) : "connection closed");
	} else {
		snprintf(buf, len, "SSL error %d", err);
	}
	ERR_clear_error();
	return buf;
}

static void conn_free(px_loop *loop, struct conn *c)
{
	px_io_del(loop, c->fd);
	close(c->fd);
	if (c->hs_timer > 0)
		px_timer_del(loop, c->hs_timer);
	if (c->resume > 0)
		px_timer_del(loop, c->resume);
	SSL_free(c->ssl);
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	nconns--;
	free(c);
	if (client_mode) {
		done = true;
		px_loop_stop(loop);
	}
}

/* The connection failed: log it, close it.  The SSL object is not used for
 * anything else after a fatal error (no SSL_shutdown). */
static void conn_fail(px_loop *loop, struct conn *c, const char *what, int err)
{
	char why[256];

	fprintf(stderr, "tls-echo: fd %d: %s failed: %s\n", c->fd, what, ssl_why(err, why, sizeof(why)));
	tot.failed++;
	if (client_mode)
		exit_code = 1;
	conn_free(loop, c);
}

static void arm(px_loop *loop, struct conn *c, unsigned want)
{
	if (want == c->armed)
		return;
	int rc = px_io_mod(loop, c->fd, want ? want | (et ? PX_ET : 0) : 0);
	if (rc < 0) {
		fprintf(stderr, "tls-echo: fd %d: px_io_mod: %s\n", c->fd, strerror(-rc));
		tot.failed++;
		conn_free(loop, c);
		return;
	}
	c->armed = want;
}

static void on_resume(px_loop *loop, int64_t id, void *arg)
{
	struct conn *c = arg;
	(void)id;
	c->resume = 0;
	conn_run(loop, c);
}

static void on_hs_timeout(px_loop *loop, int64_t id, void *arg)
{
	struct conn *c = arg;
	(void)id;
	c->hs_timer = 0;
	fprintf(stderr, "tls-echo: fd %d: handshake not finished after %ld ms: closed\n", c->fd,
	        hs_timeout_ms);
	tot.failed++;
	conn_free(loop, c);
}

static void on_io(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)fd, (void)revents;
	conn_run(loop, arg); /* OpenSSL finds out what happened (errors included) */
}

/* What an SSL call's failure asks for: PX_READ, PX_WRITE, or 0 (fatal;
 * SSL_ERROR_ZERO_RETURN is handled by the caller). */
static unsigned wants(int err)
{
	return err == SSL_ERROR_WANT_READ ? PX_READ : err == SSL_ERROR_WANT_WRITE ? PX_WRITE : 0;
}

/* ------------------------------------------------------------------------ */
/* Client: stdin -> TLS, TLS -> stdout                                       */

/* stdin is armed only while the client waits for it (after EAGAIN). */
static int stdin_arm(px_loop *loop, struct conn *c, bool on);

static void on_stdin(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)fd, (void)revents;
	if (stdin_arm(loop, arg, false) == 0)
		conn_run(loop, arg);
}

static int stdin_arm(px_loop *loop, struct conn *c, bool on)
{
	unsigned ev = on ? PX_READ | (et ? PX_ET : 0) : 0;
	int rc = stdin_registered ? px_io_mod(loop, 0, ev) : px_io_add(loop, 0, ev, on_stdin, c);
	if (rc < 0) {
		fprintf(stderr, "tls-echo: watching stdin: %s\n", strerror(-rc));
		exit_code = 1;
		conn_free(loop, c);
		return rc;
	}
	stdin_registered = true;
	stdin_armed = on;
	return 0;
}

/* Blocking write of all of it (stdout is a sink; if it was left
 * non-blocking by whoever started us, wait with poll). */
static bool write_all(int fd, const unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w > 0) {
			p += w, n -= (size_t)w;
		} else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd pf = { .fd = fd, .events = POLLOUT };
			poll(&pf, 1, 1000);
		} else if (w < 0 && errno == EINTR) {
			continue;
		} else {
			return false;
		}
	}
	return true;
}

/* One round of the client: feed the write side, drain the read side.
 * Returns the directions the socket waits for, or sets *progress. */
static unsigned client_round(px_loop *loop, struct conn *c, bool *progress, bool *gone)
{
	unsigned need = 0;
	int r, err;

	/* Write side: stdin -> buffer -> SSL_write; then close_notify. */
	if (c->off == c->len && !stdin_eof && !stdin_armed) {
		ssize_t n = read(0, c->buf, sizeof(c->buf));
		if (n > 0) {
			c->off = 0, c->len = (size_t)n;
			*progress = true;
		} else if (n == 0) {
			stdin_eof = true;
			*progress = true;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (stdin_arm(loop, c, true) < 0) {
				*gone = true;
				return 0;
			}
		} else if (errno != EINTR) {
			fprintf(stderr, "tls-echo: reading stdin: %s\n", strerror(errno));
			exit_code = 1;
			*gone = true;
			conn_free(loop, c);
			return 0;
		}
	}
	if (c->off < c->len) {
		ERR_clear_error();
		r = SSL_write(c->ssl, c->buf + c->off, (int)(c->len - c->off));
		if (r > 0) {
			c->off += (size_t)r, c->out += (uint64_t)r;
			if (c->off == c->len)
				c->off = c->len = 0;
			*progress = true;
		} else if ((need |= wants(err = SSL_get_error(c->ssl, r))) == 0) {
			*gone = true;
			conn_fail(loop, c, "SSL_write", err);
			return 0;
		}
	} else if (stdin_eof && !close_sent) {
		ERR_clear_error();
		r = SSL_shutdown(c->ssl); /* 0: close_notify sent, the peer's not yet seen */
		if (r >= 0) {
			close_sent = true;
			*progress = true;
		} else if ((need |= wants(err = SSL_get_error(c->ssl, r))) == 0) {
			*gone = true;
			conn_fail(loop, c, "SSL_shutdown", err);
			return 0;
		}
	}

	/* Read side: SSL_read -> stdout, until the server's close_notify. */
	unsigned char in[BUF_SZ];
	ERR_clear_error();
	r = SSL_read(c->ssl, in, sizeof(in));
	if (r > 0) {
		c->in += (uint64_t)r;
		if (!write_all(1, in, (size_t)r)) {
			fprintf(stderr, "tls-echo: writing stdout: %s\n", strerror(errno));
			exit_code = 1;
			*gone = true;
			conn_free(loop, c);
			return 0;
		}
		*progress = true;
	} else if ((err = SSL_get_error(c->ssl, r)) == SSL_ERROR_ZERO_RETURN) {
		/* The server is done: it echoed everything it will. */
		if (!close_sent || c->off < c->len || !stdin_eof) {
			fprintf(stderr, "tls-echo: the server closed before the client was done\n");
			exit_code = 1;
		} else if (c->in != c->out) {
			fprintf(stderr, "tls-echo: sent %" PRIu64 " bytes, got %" PRIu64 " back\n", c->out,
			        c->in);
			exit_code = 1;
		}
		fprintf(stderr, "tls-echo: client: %s %s, sent %" PRIu64 ", received %" PRIu64 "\n",
		        SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl), c->out, c->in);
		*gone = true;
		conn_free(loop, c);
		return 0;
	} else if (wants(err)) {
		need |= wants(err);
	} else {
		*gone = true;
		conn_fail(loop, c, "SSL_read", err);
		return 0;
	}
	return need;
}

/* ------------------------------------------------------------------------ */
/* Server: echo                                                               */

/* One round of the server; same contract as client_round. */
static unsigned server_round(px_loop *loop, struct conn *c, bool *progress, bool *gone)
{
	int r, err;

	if (c->off < c->len) {
		ERR_clear_error();
		r = SSL_write(c->ssl, c->buf + c->off, (int)(c->len - c->off));
		if (r > 0) {
			c->off += (size_t)r, c->out += (uint64_t)r;
			tot.bytes += (uint64_t)r;
			if (c->off == c->len)
				c->off = c->len = 0;
			*progress = true;
			return 0;
		}
		unsigned w = wants(err = SSL_get_error(c->ssl, r));
		if (!w) {
			*gone = true;
			conn_fail(loop, c, "SSL_write", err);
		}
		return w; /* nothing is read while the buffer is not out */
	}
	if (c->peer_closed) {
		/* All echoed: our close_notify (the client's came already). */
		ERR_clear_error();
		r = SSL_shutdown(c->ssl);
		if (r < 0) {
			unsigned w = wants(err = SSL_get_error(c->ssl, r));
			if (w)
				return w;
			*gone = true;
			conn_fail(loop, c, "SSL_shutdown", err);
			return 0;
		}
		tot.completed++;
		*gone = true;
		conn_free(loop, c);
		return 0;
	}
	ERR_clear_error();
	r = SSL_read(c->ssl, c->buf, sizeof(c->buf));
	if (r > 0) {
		c->off = 0, c->len = (size_t)r, c->in += (uint64_t)r;
		*progress = true;
		return 0;
	}
	err = SSL_get_error(c->ssl, r);
	if (err == SSL_ERROR_ZERO_RETURN) {
		c->peer_closed = true;
		*progress = true;
		return 0;
	}
	unsigned w = wants(err);
	if (!w) {
		*gone = true;
		conn_fail(loop, c, "SSL_read", err); /* reset, EOF without close_notify, garbage */
	}
	return w;
}

/* Runs the connection until OpenSSL waits for the socket (then arms the
 * watcher for what it waits for), or it is closed, or ROUNDS_MAX rounds
 * (then it resumes from a 0 ms timer). */
static void conn_run(px_loop *loop, struct conn *c)
{
	unsigned need = 0;
	bool gone = false;

	if (c->state == HANDSHAKE) {
		ERR_clear_error();
		int r = client_mode ? SSL_connect(c->ssl) : SSL_accept(c->ssl);
		if (r <= 0) {
			int err = SSL_get_error(c->ssl, r);
			if (!(need = wants(err))) {
				conn_fail(loop, c, "handshake", err);
				return;
			}
			arm(loop, c, need);
			return;
		}
		c->state = OPEN;
		tot.handshakes++;
		if (c->hs_timer > 0) {
			px_timer_del(loop, c->hs_timer);
			c->hs_timer = 0;
		}
	}
	for (int round = 0; round < ROUNDS_MAX; round++) {
		bool progress = false;
		need = client_mode ? client_round(loop, c, &progress, &gone)
		                   : server_round(loop, c, &progress, &gone);
		if (gone)
			return;
		if (!progress) {
			arm(loop, c, need);
			return;
		}
	}
	/* Still busy: let the other connections run first. */
	if (c->resume == 0) {
		int64_t id = px_timer_add(loop, 0, 0, on_resume, c);
		if (id < 0) {
			fprintf(stderr, "tls-echo: px_timer_add: %s\n", strerror((int)-id));
			tot.failed++;
			conn_free(loop, c);
			return;
		}
		c->resume = id;
	}
}

static struct conn *conn_new(px_loop *loop, SSL_CTX *ctx, int fd)
{
	struct conn *c = calloc(1, sizeof(*c));
	SSL *ssl = SSL_new(ctx);

	if (!c || !ssl || !SSL_set_fd(ssl, fd)) {
		fprintf(stderr, "tls-echo: out of memory for a connection\n");
		free(c);
		SSL_free(ssl);
		return NULL;
	}
	c->fd = fd;
	c->ssl = ssl;
	int rc = px_io_add(loop, fd, 0, on_io, c); /* armed by the first conn_run */
	if (rc < 0) {
		fprintf(stderr, "tls-echo: px_io_add: %s\n", strerror(-rc));
		SSL_free(ssl);
		free(c);
		return NULL;
	}
	c->next = conns;
	if (conns)
		conns->prev = c;
	conns = c;
	nconns++;
	return c;
}

static void on_accept(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer, socklen_t plen,
                      void *arg)
{
	SSL_CTX *ctx = arg;
	(void)lfd, (void)peer, (void)plen;

	if (cfd < 0) { /* EMFILE and the like: the acceptor backs off by itself */
		fprintf(stderr, "tls-echo: accept: %s\n", strerror(-cfd));
		return;
	}
	tot.accepted++;
	struct conn *c = conn_new(loop, ctx, cfd);
	if (!c) {
		close(cfd);
		tot.failed++;
		return;
	}
	int64_t id = px_timer_add(loop, (uint64_t)hs_timeout_ms, 0, on_hs_timeout, c);
	if (id < 0) {
		tot.failed++;
		conn_free(loop, c);
		return;
	}
	c->hs_timer = id;
	conn_run(loop, c); /* the ClientHello may be there already */
}

static void print_totals(const char *tag)
{
	fprintf(stderr,
	        "tls-echo: %s: accepted %" PRIu64 ", handshakes %" PRIu64 ", completed %" PRIu64
	        ", failed %" PRIu64 ", echoed %" PRIu64 " bytes, open %zu\n",
	        tag, tot.accepted, tot.handshakes, tot.completed, tot.failed, tot.bytes, nconns);
}

/* SIGTERM / SIGINT: stop accepting, say goodbye where the socket takes it
 * at once, close everything; px_loop_run then returns. */
static void on_stop_signal(px_loop *loop, int signo, void *arg)
{
	(void)arg;
	fprintf(stderr, "tls-echo: %s: stopping\n", strsignal(signo));
	if (listen_fd >= 0) {
		px_acceptor_del(loop, listen_fd);
		close(listen_fd);
		listen_fd = -1;
	}
	while (conns) {
		struct conn *c = conns;
		if (c->state == OPEN) {
			ERR_clear_error();
			SSL_shutdown(c->ssl); /* best effort, never waits */
			ERR_clear_error();
		}
		conn_free(loop, c);
	}
	px_loop_stop(loop);
}

/* ------------------------------------------------------------------------ */

#define USAGE                                                                          \
	"usage: tls-echo --cert FILE --key FILE [--port N] [--host ADDR|any] [--et]\n"   \
	"                [--handshake-timeout MS]\n"                                     \
	"       tls-echo --client --port N [--host H] (--cafile FILE | --insecure)\n"    \
	"                [--servername NAME] [--et]\n"

static void help(void)
{
	printf(USAGE
	       "\n"
	       "A TLS echo server (default) or client on OpenSSL in non-blocking mode, on a\n"
	       "pollux loop (backend from $POLLUX_BACKEND).\n"
	       "\n"
	       "Server: echoes every byte back; prints 'tls-echo: backend=B port=N mode=M'\n"
	       "when it listens; SIGTERM/SIGINT stop it (exit 0) after the totals.\n"
	       "  --cert FILE, --key FILE  PEM certificate (chain) and private key\n"
	       "  --port N                 port (default 8443; 0: the kernel picks)\n"
	       "  --host ADDR|any          address (default 127.0.0.1)\n"
	       "  --handshake-timeout MS   drop handshakes slower than this (default %d)\n"
	       "Client: sends stdin, writes the echo to stdout, sends close_notify at the end\n"
	       "of stdin; exit 0 when as many bytes came back as were sent.\n"
	       "  --port N, --host H       the server (host default 127.0.0.1)\n"
	       "  --cafile FILE            verify the server against FILE, and its name\n"
	       "  --servername NAME        SNI and the name verified (default localhost)\n"
	       "  --insecure               no verification\n"
	       "Both:\n"
	       "  --et                     edge-triggered watchers (PX_ET; default level)\n"
	       "  -h, --help               this help\n"
	       "\n" EX_HELP_ENV
	       "\n"
	       "Exit status: server: 0 after SIGTERM/SIGINT, 1 when it could not start (a\n"
	       "bad POLLUX_BACKEND, certificate or key, a host that does not resolve, a port\n"
	       "in use); client: 0 when every byte came back, 1 otherwise; 64 bad usage.\n",
	       DEFAULT_HS_TIMEOUT_MS);
}

static void print_ssl_errors(const char *what)
{
	char buf[256];
	unsigned long e;

	fprintf(stderr, "tls-echo: %s failed\n", what);
	while ((e = ERR_get_error())) {
		ERR_error_string_n(e, buf, sizeof(buf));
		fprintf(stderr, "  %s\n", buf);
	}
}

static int run_server(px_loop *loop, const char *host, long port, const char *cert, const char *key)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		print_ssl_errors("loading the certificate and key");
		SSL_CTX_free(ctx);
		return 1;
	}
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                          SSL_MODE_AUTO_RETRY);

	listen_fd = px_listen_tcp(host, (uint16_t)port, 0);
	if (listen_fd < 0) {
		ex_net_error("tls-echo", "listen on", host, port, listen_fd);
		SSL_CTX_free(ctx);
		return 1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(listen_fd, (struct sockaddr *)&ss, &sl) == 0)
		port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
		                                      : ((struct sockaddr_in *)&ss)->sin_port);
	int rc = px_acceptor_add(loop, listen_fd, on_accept, ctx);
	if (rc == 0)
		rc = px_signal_add(loop, SIGTERM, on_stop_signal, NULL);
	if (rc == 0)
		rc = px_signal_add(loop, SIGINT, on_stop_signal, NULL);
	if (rc < 0) {
		fprintf(stderr, "tls-echo: setting up the loop: %s\n", strerror(-rc));
		close(listen_fd);
		SSL_CTX_free(ctx);
		return 1;
	}
	printf("tls-echo: backend=%s port=%ld mode=%s\n", px_loop_backend(loop), port,
	       et ? "edge" : "level");
	fflush(stdout);

	rc = px_loop_run(loop, PX_RUN_DEFAULT);
	if (rc < 0)
		fprintf(stderr, "tls-echo: px_loop_run: %s\n", strerror(-rc));
	print_totals("stopped");
	if (listen_fd >= 0) {
		px_acceptor_del(loop, listen_fd);
		close(listen_fd);
	}
	while (conns)
		conn_free(loop, conns);
	SSL_CTX_free(ctx);
	return rc < 0 ? 1 : 0;
}

static int run_client(px_loop *loop, const char *host, long port, const char *cafile,
                      const char *servername)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    (cafile && SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1)) {
		print_ssl_errors("setting up TLS");
		SSL_CTX_free(ctx);
		return 1;
	}
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                          SSL_MODE_AUTO_RETRY);
	SSL_CTX_set_verify(ctx, cafile ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);

	int fd = px_connect_tcp(host, (uint16_t)port, 10000);
	if (fd < 0) {
		ex_net_error("tls-echo", "connect to", host, port, fd);
		SSL_CTX_free(ctx);
		return 1;
	}
	px_set_nonblock(fd, 1);
	struct conn *c = conn_new(loop, ctx, fd);
	if (!c || !SSL_set_tlsext_host_name(c->ssl, servername) ||
	    (cafile && !SSL_set1_host(c->ssl, servername))) {
		if (c)
			conn_free(loop, c);
		else
			close(fd);
		SSL_CTX_free(ctx);
		return 1;
	}
	stdin_flags = fcntl(0, F_GETFL);
	if (stdin_flags >= 0)
		fcntl(0, F_SETFL, stdin_flags | O_NONBLOCK);

	conn_run(loop, c);
	int rc = done ? 0 : px_loop_run(loop, PX_RUN_DEFAULT);
	if (rc < 0) {
		fprintf(stderr, "tls-echo: px_loop_run: %s\n", strerror(-rc));
		exit_code = 1;
	}
	if (stdin_registered)
		px_io_del(loop, 0);
	if (stdin_flags >= 0)
		fcntl(0, F_SETFL, stdin_flags); /* stdin may be shared with our parent */
	while (conns) {
		exit_code = 1; /* the loop ended without the server's close_notify */
		conn_free(loop, conns);
	}
	SSL_CTX_free(ctx);
	return exit_code;
}

int main(int argc, char **argv)
{
	long port = -1;
	const char *host = "127.0.0.1", *cert = NULL, *key = NULL, *cafile = NULL;
	const char *servername = "localhost";
	bool insecure = false;

	const char *me = "tls-echo";
	for (int i = 1; i < argc; i++) {
		const char *o = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		const char **str = NULL;
		if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
			help();
			return 0;
		} else if (!strcmp(o, "--client")) {
			client_mode = true;
		} else if (!strcmp(o, "--et")) {
			et = true;
		} else if (!strcmp(o, "--insecure")) {
			insecure = true;
		} else if (!strcmp(o, "--port") || !strcmp(o, "--handshake-timeout")) {
			bool is_port = !strcmp(o, "--port");
			long lo = is_port ? 0 : 1, hi = is_port ? 65535 : 86400000L;
			if (!v)
				return ex_usage(me, USAGE, "option '%s' needs a value", o);
			if (!ex_parse_long(v, lo, hi, is_port ? &port : &hs_timeout_ms))
				return ex_usage(me, USAGE, "bad value '%s' for %s (%ld to %ld)", v, o, lo, hi);
			i++;
		} else if (!strcmp(o, "--host")) {
			str = &host;
		} else if (!strcmp(o, "--cert")) {
			str = &cert;
		} else if (!strcmp(o, "--key")) {
			str = &key;
		} else if (!strcmp(o, "--cafile")) {
			str = &cafile;
		} else if (!strcmp(o, "--servername")) {
			str = &servername;
		} else {
			return ex_usage(me, USAGE, "unknown option '%s'", o);
		}
		if (str) {
			if (!v)
				return ex_usage(me, USAGE, "option '%s' needs a value", o);
			*str = v;
			i++;
		}
	}
	if (host && !strcmp(host, "any"))
		host = NULL;
	if (client_mode) {
		if (port <= 0)
			return ex_usage(me, USAGE, "--client needs --port N (1 to 65535)");
		if (!host)
			return ex_usage(me, USAGE, "--client needs a --host to connect to");
		if (!cafile == !insecure)
			return ex_usage(me, USAGE, "--client needs one of --cafile FILE and --insecure");
	} else if (!cert || !key) {
		return ex_usage(me, USAGE, "the server needs --cert FILE and --key FILE");
	}
	if (port < 0)
		port = 8443;
	signal(SIGPIPE, SIG_IGN); /* OpenSSL writes with write(): a reset peer must not kill us */

	px_loop *loop = ex_loop_new(me);
	if (!loop)
		return 1;
	int rc = client_mode ? run_client(loop, host, port, cafile, servername)
	                     : run_server(loop, host, port, cert, key);
	px_loop_free(loop);
	return rc;
}
