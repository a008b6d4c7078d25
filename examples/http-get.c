/* http-get: a tiny blocking HTTP/1.0 client.
 *
 *   http-get HOST PORT [PATH]          (PATH defaults to "/")
 *
 * Connects with px_connect_tcp (5 s deadline), sends "GET PATH HTTP/1.0",
 * reads the response to end of file (at most 10 s in all) and prints it.
 * Exit status: 0 when the status is 200, 1 another status, 2 an error
 * (connect, a host that does not resolve, timeout, malformed response),
 * 64 usage.  It makes no event loop (px_connect_tcp and poll()), so
 * POLLUX_BACKEND does not matter to it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdbool.h>
#include <poll.h>
#include <signal.h>
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

#define CONNECT_MS 5000
#define TOTAL_MS 10000
#define MAX_RESPONSE (4 * 1024 * 1024)

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Waits until fd is ready for events or the deadline passes. */
static int wait_for(int fd, short events, double deadline)
{
	for (;;) {
		double left = deadline - now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = events };
		int n = poll(&p, 1, (int)left + 1);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

#define USAGE "usage: http-get HOST PORT [PATH]\n"

static void help(void)
{
	printf(USAGE
	       "\n"
	       "A tiny blocking HTTP/1.0 client: connects to HOST PORT (px_connect_tcp,\n"
	       "%d ms deadline), sends \"GET PATH HTTP/1.0\" (PATH default \"/\") with\n"
	       "Connection: close, and prints the response, read to end of file (at most\n"
	       "%d ms in all).\n"
	       "\n"
	       "Options:\n"
	       "  -h, --help   this help\n"
	       "\n"
	       "Environment: none.  POLLUX_BACKEND does not matter: no event loop is made\n"
	       "(px_connect_tcp, then poll() on the one socket).\n"
	       "\n"
	       "Exit status: 0 status 200, 1 another status, 2 an error (connecting, a host\n"
	       "that does not resolve, timeout, malformed response), 64 bad usage.\n",
	       CONNECT_MS, TOTAL_MS);
}

int main(int argc, char **argv)
{
	const char *me = "http-get";
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			help();
			return 0;
		}
		if (argv[i][0] == '-' && argv[i][1] == '-')
			return ex_usage(me, USAGE, "unknown option '%s'", argv[i]);
	}
	if (argc < 3 || argc > 4)
		return ex_usage(me, USAGE, argc < 3 ? "HOST and PORT are needed"
		                                    : "too many arguments");
	const char *host = argv[1], *path = argc > 3 ? argv[3] : "/";
	long port;
	if (!ex_parse_long(argv[2], 1, 65535, &port))
		return ex_usage(me, USAGE, "bad port '%s' (1 to 65535)", argv[2]);
	signal(SIGPIPE, SIG_IGN);
	double deadline = now_ms() + TOTAL_MS;

	int fd = px_connect_tcp(host, (uint16_t)port, CONNECT_MS);
	if (fd < 0) {
		ex_net_error(me, "connect to", host, port, fd);
		return 2;
	}
	/* The socket is blocking; non-blocking I/O with poll() keeps the whole
	 * exchange within the deadline. */
	px_set_nonblock(fd, 1);

	char req[2048];
	bool v6 = strchr(host, ':') != NULL;
	int len = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s%s%s", path,
	                   v6 ? "[" : "", host, v6 ? "]" : "");
	if (len > 0 && (size_t)len < sizeof(req) && port != 80)
		len += snprintf(req + len, sizeof(req) - (size_t)len, ":%ld", port);
	if (len > 0 && (size_t)len < sizeof(req))
		len += snprintf(req + len, sizeof(req) - (size_t)len,
		                "\r\nUser-Agent: pollux-http-get\r\nConnection: close\r\n\r\n");
	if (len <= 0 || (size_t)len >= sizeof(req)) {
		fprintf(stderr, "http-get: request too long\n");
		close(fd);
		return 64;
	}
	size_t off = 0;
	while (off < (size_t)len) {
		ssize_t n = send(fd, req + off, (size_t)len - off, MSG_NOSIGNAL);
		if (n >= 0) {
			off += (size_t)n;
			continue;
		}
		int rc = (errno == EAGAIN || errno == EWOULDBLOCK) ? wait_for(fd, POLLOUT, deadline)
		         : errno == EINTR ? 0 : -errno;
		if (rc < 0) {
			fprintf(stderr, "http-get: send: %s\n", strerror(-rc));
			close(fd);
			return 2;
		}
	}

	char *resp = NULL;
	size_t rlen = 0, rcap = 0;
	int err = 0;
	for (;;) {
		if (rcap - rlen < 4096) {
			if (rcap >= MAX_RESPONSE) {
				err = EFBIG;
				break;
			}
			rcap = rcap ? rcap * 2 : 8192;
			char *nr = realloc(resp, rcap + 1);
			if (!nr) {
				err = ENOMEM;
				break;
			}
			resp = nr;
		}
		ssize_t n = recv(fd, resp + rlen, rcap - rlen, 0);
		if (n > 0) {
			rlen += (size_t)n;
			continue;
		}
		if (n == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			int rc = wait_for(fd, POLLIN, deadline);
			if (rc < 0) {
				err = -rc;
				break;
			}
			continue;
		}
		err = errno;
		break;
	}
	close(fd);
	if (resp)
		fwrite(resp, 1, rlen, stdout);
	fflush(stdout);
	if (err) {
		fprintf(stderr, "http-get: reading the response: %s\n", strerror(err));
		free(resp);
		return 2;
	}
	int status = 0;
	if (resp) {
		resp[rlen] = '\0';
		if (sscanf(resp, "HTTP/%*d.%*d %d", &status) != 1)
			status = 0;
	}
	free(resp);
	if (status == 0) {
		fprintf(stderr, "http-get: malformed response\n");
		return 2;
	}
	return status == 200 ? 0 : 1;
}
