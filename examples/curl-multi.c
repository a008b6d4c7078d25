/* curl-multi: fetches many URLs at once with libcurl's multi-socket API,
 * driven by a pollux loop.
 *
 *   curl-multi [-n N] [--et] [--check-body FILE | --check-dir DIR]
 *              [--urls FILE] [--timeout MS] [-v] URL...
 *
 * libcurl owns the sockets and says what it waits for; pollux waits:
 *  - CURLMOPT_SOCKETFUNCTION maps curl's interest onto watchers:
 *    CURL_POLL_IN/OUT/INOUT -> px_io_add (first time) or px_io_mod,
 *    CURL_POLL_REMOVE -> px_io_del.  curl_multi_assign keeps our record.
 *  - CURLMOPT_TIMERFUNCTION keeps exactly one pollux timer: -1 deletes it,
 *    any other value replaces it (0 fires in the next iteration: curl must
 *    not be re-entered from inside its own callback).
 *  - A watcher's callback calls curl_multi_socket_action(fd, IN/OUT/ERR),
 *    the timer's calls it with CURL_SOCKET_TIMEOUT; then finished
 *    transfers are collected with curl_multi_info_read (CURLMSG_DONE) and
 *    the next URLs are started, keeping at most N transfers running.
 *  - CURLOPT_OPENSOCKETFUNCTION / CURLOPT_CLOSESOCKETFUNCTION count the
 *    sockets curl opens and closes; a socket closed while still watched
 *    (curl gave no CURL_POLL_REMOVE first) is px_io_del'ed before close.
 *
 * --et (edge-triggered watchers): libcurl does not promise to read or
 * write until EAGAIN.  The 7.88 of Debian 12 reads a plain-TCP body while
 * poll() says the socket is readable, but at most 100 buffers per call
 * (then it comes back through its own timer); other versions, protocols
 * and connection filters behave otherwise, and nothing in the multi-socket
 * documentation rules out leaving bytes in the kernel.  Bytes left there
 * make no new edge: on epoll the transfer would then hang on curl's timer,
 * or stall until its timeout.  So after each action on an edge-triggered
 * fd the program asks the kernel (poll with timeout 0) whether the
 * directions curl still wants are ready, and if so acts again, at most
 * REDRIVE_MAX times in a row; after that it continues from a 0 ms timer so
 * that one fast transfer cannot starve the others.  That costs one poll()
 * per action.  Without --et the loop reports a ready fd again in the next
 * iteration and no re-drive is needed.  The summary counts the re-drives
 * (with 7.88 they come mostly from bodies that outlast its 100 buffers).
 *
 * Output: one line per URL, in the order transfers finish:
 *   OK|FAIL STATUS BYTES SECONDS sha256=HEX URL [(reason)]
 * then a summary line.  A transfer fails on a curl error (refused,
 * timeout, ...), an HTTP status outside 200-299, or a body that differs
 * from the expected one.  Exit status: 0 when every transfer succeeded and
 * no descriptor leaked, 1 otherwise, 2 on a setup error, 64 on bad usage.
 * Runs on the backend named by $POLLUX_BACKEND. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "excommon.h"
#include "pollux.h"

#define DEFAULT_PARALLEL 10
#define DEFAULT_TIMEOUT_MS 30000
#define REDRIVE_MAX 64

/* ------------------------------------------------------------------------ */
/* SHA-256 (FIPS 180-4), to print and compare bodies without another library */

struct sha256 {
	uint32_t h[8];
	uint64_t len;
	unsigned char buf[64];
	size_t n;
};

static const uint32_t sha_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
	0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
	0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
	0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
	0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
	0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
	0xc67178f2,
};

static uint32_t ror(uint32_t x, unsigned n)
{
	return (x >> n) | (x << (32 - n));
}

static void sha_block(struct sha256 *s, const unsigned char *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, h;

	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
	e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) +
		              sha_k[i] + w[i];
		uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
	}
	s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
	s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha_init(struct sha256 *s)
{
	static const uint32_t h0[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	memcpy(s->h, h0, sizeof(h0));
	s->len = 0;
	s->n = 0;
}

static void sha_update(struct sha256 *s, const void *data, size_t len)
{
	const unsigned char *p = data;

	s->len += len;
	while (len > 0) {
		size_t k = 64 - s->n < len ? 64 - s->n : len;
		memcpy(s->buf + s->n, p, k);
		s->n += k, p += k, len -= k;
		if (s->n == 64) {
			sha_block(s, s->buf);
			s->n = 0;
		}
	}
}

static void sha_hex(struct sha256 *s, char out[65])
{
	uint64_t bits = s->len * 8;
	unsigned char pad[72] = { 0x80 };
	size_t padlen = (s->n < 56 ? 56 : 120) - s->n;

	for (int i = 0; i < 8; i++)
		pad[padlen + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
	sha_update(s, pad, padlen + 8);
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", (unsigned)(s->h[i / 4] >> (24 - 8 * (i % 4))) & 0xffu);
}

/* ------------------------------------------------------------------------ */

struct app;

/* One socket curl asked us to watch (curl_multi_assign'ed to it). */
struct sock {
	int fd;
	unsigned want;    /* PX_READ | PX_WRITE, as curl last asked */
	uint64_t gen;     /* tells a record from a later one at the same number */
	int64_t redrive;  /* pending re-drive timer (--et), 0 if none */
	struct app *app;
};

struct xfer {
	struct app *app;
	const char *url;
	CURL *easy;
	uint64_t bytes;
	struct sha256 sha;
	FILE *expect;      /* --check-body / --check-dir: the expected body */
	bool mismatch;
	char why[200];     /* why the body check failed */
	struct timespec t0;
	char err[CURL_ERROR_SIZE];
};

struct app {
	px_loop *loop;
	CURLM *multi;
	bool et, verbose;
	long parallel, timeout_ms;
	const char *check_body, *check_dir;
	char **urls;
	size_t nurls, next, running, done, ok, failed;
	uint64_t bytes;
	int64_t timer;           /* curl's one timer, 0 if none */
	struct sock **socks;     /* by fd */
	int nsocks;
	uint64_t gen;
	unsigned long opened, closed, late_removes, redrives, redrive_timers;
	bool fatal;
};

static double secs_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static struct sock *sock_get(struct app *a, int fd)
{
	return fd >= 0 && fd < a->nsocks ? a->socks[fd] : NULL;
}

static unsigned mode(const struct app *a, unsigned want)
{
	return want ? want | (a->et ? PX_ET : 0) : 0;
}

static void sock_forget(struct app *a, struct sock *s)
{
	px_io_del(a->loop, s->fd);
	if (s->redrive > 0)
		px_timer_del(a->loop, s->redrive);
	a->socks[s->fd] = NULL;
	free(s);
}

static void collect(struct app *a);
static void drive(struct app *a, int fd, int flags);

/* The directions of want that the kernel reports ready now, as curl flags. */
static int ready_now(int fd, unsigned want)
{
	struct pollfd p = { .fd = fd };
	if (want & PX_READ)
		p.events |= POLLIN;
	if (want & PX_WRITE)
		p.events |= POLLOUT;
	if (poll(&p, 1, 0) <= 0)
		return 0;
	int flags = 0;
	if ((want & PX_READ) && (p.revents & (POLLIN | POLLHUP | POLLERR)))
		flags |= CURL_CSELECT_IN;
	if ((want & PX_WRITE) && (p.revents & (POLLOUT | POLLERR)))
		flags |= CURL_CSELECT_OUT;
	if (p.revents & POLLERR)
		flags |= CURL_CSELECT_ERR;
	return flags;
}

static void on_redrive(px_loop *loop, int64_t id, void *arg)
{
	struct sock *s = arg;
	(void)loop, (void)id;
	s->redrive = 0;
	int flags = s->want ? ready_now(s->fd, s->want) : 0;
	if (flags)
		drive(s->app, s->fd, flags);
}

/* One curl_multi_socket_action for fd, then collect finished transfers.
 * With --et: act again while curl still watches this socket (same record)
 * and the kernel says a direction it wants is ready. */
static void drive(struct app *a, int fd, int flags)
{
	struct sock *s = sock_get(a, fd);
	uint64_t gen = s ? s->gen : 0;
	int running;

	for (int round = 0;; round++) {
		CURLMcode mc = curl_multi_socket_action(a->multi, fd, flags, &running);
		if (mc != CURLM_OK) {
			fprintf(stderr, "curl-multi: curl_multi_socket_action: %s\n",
			        curl_multi_strerror(mc));
			a->fatal = true;
			px_loop_stop(a->loop);
			return;
		}
		collect(a);
		if (!a->et)
			return;
		s = sock_get(a, fd);
		if (!s || s->gen != gen || !s->want || s->redrive > 0)
			return;
		if (!(flags = ready_now(fd, s->want)))
			return; /* at EAGAIN: the next edge will come */
		if (round == REDRIVE_MAX) {
			int64_t id = px_timer_add(a->loop, 0, 0, on_redrive, s);
			if (id > 0) {
				s->redrive = id;
				a->redrive_timers++;
				return;
			}
			/* no memory for a timer: keep going here */
			round = 0;
		}
		a->redrives++;
	}
}

static void on_io(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct sock *s = arg;
	int flags = 0;
	(void)loop;

	if (revents & PX_READ)
		flags |= CURL_CSELECT_IN;
	if (revents & PX_WRITE)
		flags |= CURL_CSELECT_OUT;
	if (revents & PX_ERR)
		flags |= CURL_CSELECT_ERR;
	drive(s->app, fd, flags);
}

static void on_timeout(px_loop *loop, int64_t id, void *arg)
{
	struct app *a = arg;
	int running;
	(void)loop, (void)id;

	a->timer = 0; /* fired; curl may set a new one from inside the action */
	CURLMcode mc = curl_multi_socket_action(a->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	if (mc != CURLM_OK) {
		fprintf(stderr, "curl-multi: curl_multi_socket_action: %s\n", curl_multi_strerror(mc));
		a->fatal = true;
		px_loop_stop(a->loop);
		return;
	}
	collect(a);
}

/* CURLMOPT_TIMERFUNCTION: one timer, replaced at every call. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
	struct app *a = userp;
	(void)multi;

	if (a->timer > 0) {
		px_timer_del(a->loop, a->timer);
		a->timer = 0;
	}
	if (timeout_ms < 0)
		return 0;
	int64_t id = px_timer_add(a->loop, (uint64_t)timeout_ms, 0, on_timeout, a);
	if (id < 0) {
		fprintf(stderr, "curl-multi: px_timer_add: %s\n", strerror((int)-id));
		return -1;
	}
	a->timer = id;
	return 0;
}

/* CURLMOPT_SOCKETFUNCTION: curl's interest in socket fd -> a watcher. */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct app *a = userp;
	struct sock *s = socketp;
	(void)easy;

	if (what == CURL_POLL_REMOVE) {
		if (s)
			sock_forget(a, s);
		return 0;
	}
	unsigned want = ((what & CURL_POLL_IN) ? PX_READ : 0) | ((what & CURL_POLL_OUT) ? PX_WRITE : 0);
	if (!s) {
		if (fd >= a->nsocks) {
			int n = a->nsocks ? a->nsocks : 64;
			while (n <= fd)
				n *= 2;
			struct sock **t = realloc(a->socks, (size_t)n * sizeof(*t));
			if (!t)
				return -1;
			memset(t + a->nsocks, 0, (size_t)(n - a->nsocks) * sizeof(*t));
			a->socks = t;
			a->nsocks = n;
		}
		if (!(s = calloc(1, sizeof(*s))))
			return -1;
		*s = (struct sock){ .fd = fd, .want = want, .gen = ++a->gen, .app = a };
		int rc = px_io_add(a->loop, fd, mode(a, want), on_io, s);
		if (rc < 0) {
			fprintf(stderr, "curl-multi: px_io_add(%d): %s\n", fd, strerror(-rc));
			free(s);
			return -1;
		}
		a->socks[fd] = s;
		curl_multi_assign(a->multi, fd, s);
		return 0;
	}
	int rc = px_io_mod(a->loop, fd, mode(a, want));
	if (rc < 0) {
		fprintf(stderr, "curl-multi: px_io_mod(%d): %s\n", fd, strerror(-rc));
		return -1;
	}
	s->want = want;
	return 0;
}

static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr)
{
	struct app *a = clientp;
	(void)purpose;

	int fd = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
	if (fd < 0)
		return CURL_SOCKET_BAD;
	a->opened++;
	return fd;
}

static int on_close_socket(void *clientp, curl_socket_t fd)
{
	struct app *a = clientp;
	struct sock *s = sock_get(a, fd);

	if (s) { /* still watched: never close a registered fd */
		a->late_removes++;
		curl_multi_assign(a->multi, fd, NULL);
		sock_forget(a, s);
	}
	a->closed++;
	return close(fd);
}

/* The expected body of url: --check-body's file, or DIR/<last path segment>. */
static FILE *open_expected(struct app *a, const char *url, char *why, size_t whylen)
{
	char path[4096];

	if (a->check_body) {
		snprintf(path, sizeof(path), "%s", a->check_body);
	} else {
		const char *p = strstr(url, "://");
		p = p ? strchr(p + 3, '/') : NULL;
		size_t n = p ? strcspn(p, "?#") : 0;
		const char *base = p;
		for (size_t i = 0; i < n; i++)
			if (p[i] == '/')
				base = p + i + 1;
		n = p ? (size_t)(p + n - base) : 0;
		if (n == 0) {
			snprintf(why, whylen, "no file name in the URL for --check-dir");
			return NULL;
		}
		snprintf(path, sizeof(path), "%s/%.*s", a->check_dir, (int)n, base);
	}
	FILE *f = fopen(path, "rbe");
	if (!f)
		snprintf(why, whylen, "expected body %.100s: %.40s", path, strerror(errno));
	return f;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	size_t n = size * nmemb;

	x->bytes += n;
	sha_update(&x->sha, data, n);
	if (x->expect && !x->mismatch) {
		char buf[16384];
		size_t off = 0;
		while (off < n) {
			size_t k = n - off < sizeof(buf) ? n - off : sizeof(buf);
			size_t got = fread(buf, 1, k, x->expect);
			if (got != k || memcmp(buf, data + off, k) != 0) {
				x->mismatch = true;
				snprintf(x->why, sizeof(x->why), "body differs from the expected one near byte %" PRIu64,
				         x->bytes - n + off);
				break;
			}
			off += k;
		}
	}
	return n;
}

static bool start_next(struct app *a)
{
	const char *url = a->urls[a->next];
	struct xfer *x = calloc(1, sizeof(*x));
	CURL *e = curl_easy_init();

	if (!x || !e) {
		fprintf(stderr, "curl-multi: out of memory\n");
		free(x);
		curl_easy_cleanup(e);
		return false;
	}
	a->next++;
	x->app = a;
	x->url = url;
	x->easy = e;
	sha_init(&x->sha);
	clock_gettime(CLOCK_MONOTONIC, &x->t0);
	if (a->check_body || a->check_dir) {
		x->expect = open_expected(a, url, x->why, sizeof(x->why));
		if (!x->expect)
			x->mismatch = true;
	}
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->err);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, a->timeout_ms);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, a->timeout_ms);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "pollux-curl-multi");
	curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
	curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, a);
	curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
	curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, a);
	if (a->verbose)
		curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
	CURLMcode mc = curl_multi_add_handle(a->multi, e); /* sets a 0 ms timer */
	if (mc != CURLM_OK) {
		fprintf(stderr, "curl-multi: curl_multi_add_handle: %s\n", curl_multi_strerror(mc));
		if (x->expect)
			fclose(x->expect);
		curl_easy_cleanup(e);
		free(x);
		return false;
	}
	a->running++;
	return true;
}

static void finish(struct app *a, struct xfer *x, CURLcode res, long status)
{
	char hex[65], why[CURL_ERROR_SIZE + 64] = "";
	bool ok = false;

	sha_hex(&x->sha, hex);
	if (res != CURLE_OK) {
		snprintf(why, sizeof(why), "curl error %d: %s", (int)res,
		         x->err[0] ? x->err : curl_easy_strerror(res));
	} else if (status < 200 || status > 299) {
		snprintf(why, sizeof(why), "HTTP status %ld", status);
	} else if (x->mismatch) {
		snprintf(why, sizeof(why), "%s", x->why);
	} else if (x->expect && fgetc(x->expect) != EOF) {
		snprintf(why, sizeof(why), "body shorter than the expected one (%" PRIu64 " bytes)",
		         x->bytes);
	} else {
		ok = true;
	}
	if (x->expect)
		fclose(x->expect);
	printf("%-4s %03ld %10" PRIu64 " %7.3fs sha256=%s %s%s%s%s\n", ok ? "OK" : "FAIL", status,
	       x->bytes, secs_since(&x->t0), hex, x->url, ok ? "" : " (", why, ok ? "" : ")");
	fflush(stdout);
	a->done++;
	a->bytes += x->bytes;
	if (ok)
		a->ok++;
	else
		a->failed++;
}

/* Finished transfers (CURLMSG_DONE) out, the next URLs in. */
static void collect(struct app *a)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(a->multi, &left))) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		CURL *e = msg->easy_handle;
		CURLcode res = msg->data.result;
		char *priv = NULL;
		long status = 0;
		curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
		curl_multi_remove_handle(a->multi, e); /* msg is invalid from here */
		curl_easy_cleanup(e);
		struct xfer *x = (struct xfer *)priv;
		a->running--;
		finish(a, x, res, status);
		free(x);
	}
	while (!a->fatal && a->next < a->nurls && a->running < (size_t)a->parallel)
		if (!start_next(a)) {
			a->fatal = true;
			px_loop_stop(a->loop);
		}
	if (a->done == a->nurls)
		px_loop_stop(a->loop); /* curl may still hold idle connections and a timer */
}

/* Open descriptors of this process (-1 where /proc/self/fd is missing). */
static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n - 3; /* ".", ".." and the directory's own fd */
}

#define USAGE                                                                           \
	"usage: curl-multi [-n N] [--et] [--check-body FILE | --check-dir DIR] [--urls FILE]\n" \
	"                  [--timeout MS] [-v] URL...\n"

static void help(void)
{
	printf(USAGE
	       "\n"
	       "Fetches every URL concurrently with libcurl's multi-socket API on a pollux\n"
	       "loop (backend from $POLLUX_BACKEND) and prints one line per URL:\n"
	       "  OK|FAIL STATUS BYTES SECONDS sha256=HEX URL [(reason)]\n"
	       "then a summary.  A transfer fails on a curl error, an HTTP status outside\n"
	       "200-299, or a body that differs from the expected one.  Exit status 0 when\n"
	       "all succeeded (and no descriptor leaked), 1 otherwise, 2 setup error, 64 usage.\n"
	       "\n"
	       "  -n, --parallel N     transfers running at once (default %d)\n"
	       "      --et             edge-triggered watchers (PX_ET); curl is re-driven while\n"
	       "                       its socket stays ready (default: level-triggered)\n"
	       "      --check-body FILE  every body must equal FILE byte for byte (default:\n"
	       "                       bodies are not checked)\n"
	       "      --check-dir DIR  the body of .../NAME must equal DIR/NAME\n"
	       "      --urls FILE      also read URLs from FILE, one per line ('-': stdin;\n"
	       "                       default: the URLs of the command line only)\n"
	       "      --timeout MS     limit per transfer, connecting included (default %d)\n"
	       "  -v, --verbose        libcurl's verbose output on stderr (default off)\n"
	       "  -h, --help           this help\n"
	       "A host that does not resolve fails its transfer with curl's reason\n"
	       "(\"curl error 6: Could not resolve host: ...\").\n"
	       "\n" EX_HELP_ENV,
	       DEFAULT_PARALLEL, DEFAULT_TIMEOUT_MS);
}

static bool add_url(struct app *a, size_t *cap, const char *url)
{
	if (a->nurls == *cap) {
		size_t n = *cap ? *cap * 2 : 64;
		char **t = realloc(a->urls, n * sizeof(*t));
		if (!t)
			return false;
		a->urls = t;
		*cap = n;
	}
	if (!(a->urls[a->nurls] = strdup(url)))
		return false;
	a->nurls++;
	return true;
}

static bool read_urls(struct app *a, size_t *cap, const char *file)
{
	FILE *f = strcmp(file, "-") ? fopen(file, "re") : stdin;
	char line[8192];

	if (!f) {
		fprintf(stderr, "curl-multi: %s: %s\n", file, strerror(errno));
		return false;
	}
	bool ok = true;
	while (ok && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] && line[0] != '#')
			ok = add_url(a, cap, line);
	}
	if (f != stdin)
		fclose(f);
	return ok;
}

int main(int argc, char **argv)
{
	static struct app app = { .parallel = DEFAULT_PARALLEL, .timeout_ms = DEFAULT_TIMEOUT_MS };
	struct app *a = &app;
	size_t cap = 0;

	const char *me = "curl-multi";
	for (int i = 1; i < argc; i++) {
		const char *o = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool takes = !strcmp(o, "-n") || !strcmp(o, "--parallel") || !strcmp(o, "--check-body") ||
		             !strcmp(o, "--check-dir") || !strcmp(o, "--urls") || !strcmp(o, "--timeout");
		if (takes && !v)
			return ex_usage(me, USAGE, "option '%s' needs a value", o);
		if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
			help();
			return 0;
		} else if (!strcmp(o, "-n") || !strcmp(o, "--parallel")) {
			if (!ex_parse_long(argv[++i], 1, 100000, &a->parallel))
				return ex_usage(me, USAGE, "bad value '%s' for %s (1 to 100000)", v, o);
		} else if (!strcmp(o, "--et")) {
			a->et = true;
		} else if (!strcmp(o, "--check-body")) {
			a->check_body = argv[++i];
		} else if (!strcmp(o, "--check-dir")) {
			a->check_dir = argv[++i];
		} else if (!strcmp(o, "--urls")) {
			if (!read_urls(a, &cap, argv[++i]))
				return 2;
		} else if (!strcmp(o, "--timeout")) {
			if (!ex_parse_long(argv[++i], 1, 86400000L, &a->timeout_ms))
				return ex_usage(me, USAGE, "bad value '%s' for %s (1 to 86400000)", v, o);
		} else if (!strcmp(o, "-v") || !strcmp(o, "--verbose")) {
			a->verbose = true;
		} else if (o[0] == '-' && o[1]) {
			return ex_usage(me, USAGE, "unknown option '%s'", o);
		} else if (!add_url(a, &cap, o)) {
			fprintf(stderr, "curl-multi: out of memory\n");
			return 2;
		}
	}
	if (a->nurls == 0)
		return ex_usage(me, USAGE, "no URL to fetch");
	if (a->check_body && a->check_dir)
		return ex_usage(me, USAGE, "--check-body and --check-dir exclude each other");

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		fprintf(stderr, "curl-multi: curl_global_init failed\n");
		return 2;
	}
	/* Counted once libcurl's global state (and OpenSSL's) is set up: what
	 * it keeps open for the life of the process is not a leak. */
	int fds_before = count_fds();
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);

	a->loop = ex_loop_new(me);
	if (!a->loop) {
		curl_global_cleanup();
		return 2;
	}
	a->multi = curl_multi_init();
	if (!a->multi) {
		fprintf(stderr, "curl-multi: curl_multi_init failed\n");
		return 2;
	}
	curl_multi_setopt(a->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
	curl_multi_setopt(a->multi, CURLMOPT_SOCKETDATA, a);
	curl_multi_setopt(a->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
	curl_multi_setopt(a->multi, CURLMOPT_TIMERDATA, a);

	collect(a); /* starts the first transfers */
	int rc = 0;
	if (!a->fatal)
		rc = px_loop_run(a->loop, PX_RUN_DEFAULT);
	if (rc < 0) {
		fprintf(stderr, "curl-multi: px_loop_run: %s\n", strerror(-rc));
		a->fatal = true;
	}
	if (a->done < a->nurls && !a->fatal) {
		fprintf(stderr, "curl-multi: the loop ended with %zu transfers unfinished\n",
		        a->nurls - a->done);
		a->fatal = true;
	}

	struct px_loop_stats st = { 0 };
	px_loop_stats(a->loop, &st, sizeof(st));
	const char *backend = px_loop_backend(a->loop); /* a string constant */
	curl_multi_cleanup(a->multi); /* closes cached connections: REMOVE, close callbacks */
	int leftover = 0;
	for (int fd = 0; fd < a->nsocks; fd++)
		if (a->socks[fd]) {
			leftover++;
			sock_forget(a, a->socks[fd]);
		}
	if (a->timer > 0)
		px_timer_del(a->loop, a->timer);
	px_loop_free(a->loop);
	free(a->socks);
	int fds_after = count_fds();
	curl_global_cleanup();

	bool leak = a->opened != a->closed || leftover > 0 || fds_before != fds_after;
	printf("curl-multi: %zu transfers (%s, %s, parallel %ld): %zu ok, %zu failed, %" PRIu64
	       " bytes in %.3f s; sockets opened %lu, closed %lu; fds %d before, %d after%s; "
	       "re-drives %lu (%lu deferred); loop: %" PRIu64 " iterations, %" PRIu64
	       " io callbacks, %" PRIu64 " timer callbacks\n",
	       a->nurls, backend, a->et ? "edge-triggered" : "level-triggered", a->parallel, a->ok, a->failed + (a->nurls - a->done),
	       a->bytes, secs_since(&t0), a->opened, a->closed, fds_before, fds_after,
	       leak ? " LEAK" : "", a->redrives, a->redrive_timers, st.iterations, st.io_callbacks,
	       st.timer_callbacks);
	if (leftover || a->late_removes)
		printf("curl-multi: %d watchers left after cleanup, %lu sockets closed while watched\n",
		       leftover, a->late_removes);
	for (size_t i = 0; i < a->nurls; i++)
		free(a->urls[i]);
	free(a->urls);
	if (a->fatal)
		return 2;
	return a->failed || a->done < a->nurls || leak ? 1 : 0;
}
