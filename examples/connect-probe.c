/* connect-probe: is anyone listening on HOST:PORT?  Like "nc -z -w".
 *
 *   connect-probe HOST PORT [--timeout MS]     (default 3000 ms)
 *
 * Prints "connected", "refused", "timed out" or "error: <reason>", followed
 * by the elapsed time, e.g. "refused (0.3 ms)"; a host that does not
 * resolve is "error: cannot resolve host 'H': <getaddrinfo's words>".
 * Exit status: 0 connected, 1 refused, 2 timed out, 3 other error, 64 usage.
 * It makes no event loop (px_connect_tcp blocks), so POLLUX_BACKEND does
 * not matter to it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "excommon.h"
#include "pollux.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

#define USAGE "usage: connect-probe HOST PORT [--timeout MS]\n"
#define DEFAULT_TIMEOUT_MS 3000

static void help(void)
{
	printf(USAGE
	       "\n"
	       "Is anyone listening on HOST PORT?  Like \"nc -z -w\": one TCP connect\n"
	       "(px_connect_tcp), then prints \"connected\", \"refused\", \"timed out\" or\n"
	       "\"error: REASON\", and the elapsed time.\n"
	       "\n"
	       "Options:\n"
	       "  --timeout MS   give up after MS; -1: no limit (default %d)\n"
	       "  -h, --help     this help\n"
	       "\n"
	       "Environment: none.  POLLUX_BACKEND does not matter: no event loop is made\n"
	       "(px_connect_tcp waits with poll() itself).\n"
	       "\n"
	       "Exit status: 0 connected, 1 refused, 2 timed out, 3 another error (a host\n"
	       "that does not resolve, unreachable...), 64 bad usage.\n",
	       DEFAULT_TIMEOUT_MS);
}

int main(int argc, char **argv)
{
	const char *host = NULL, *portstr = NULL, *me = "connect-probe";
	long timeout = DEFAULT_TIMEOUT_MS, port;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			help();
			return 0;
		} else if (!strcmp(a, "--timeout")) {
			if (i + 1 >= argc)
				return ex_usage(me, USAGE, "option '%s' needs a value", a);
			if (!ex_parse_long(argv[++i], -1, 86400000L, &timeout))
				return ex_usage(me, USAGE, "bad value '%s' for --timeout (-1 to 86400000)",
				                argv[i]);
		} else if (a[0] == '-' && a[1] == '-') {
			return ex_usage(me, USAGE, "unknown option '%s'", a);
		} else if (!host) {
			host = a;
		} else if (!portstr) {
			portstr = a;
		} else {
			return ex_usage(me, USAGE, "unexpected argument '%s'", a);
		}
	}
	if (!host || !portstr)
		return ex_usage(me, USAGE, "HOST and PORT are needed");
	if (!ex_parse_long(portstr, 1, 65535, &port))
		return ex_usage(me, USAGE, "bad port '%s' (1 to 65535)", portstr);

	double t0 = now_ms();
	int fd = px_connect_tcp(host, (uint16_t)port, (int)timeout);
	double el = now_ms() - t0;
	int status;
	if (fd >= 0) {
		printf("connected (%.1f ms)\n", el);
		close(fd);
		status = 0;
	} else if (fd == -ECONNREFUSED) {
		printf("refused (%.1f ms)\n", el);
		status = 1;
	} else if (fd == -ETIMEDOUT) {
		printf("timed out (%.1f ms)\n", el);
		status = 2;
	} else if (fd == -ENOENT || fd == -EAGAIN) {
		printf("error: cannot resolve host '%s': %s (%.1f ms)\n", host, ex_net_strerror(fd), el);
		status = 3;
	} else {
		printf("error: %s (%.1f ms)\n", strerror(-fd), el);
		status = 3;
	}
	return status;
}
