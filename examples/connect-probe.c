/* connect-probe: is anyone listening on HOST:PORT?  Like "nc -z -w".
 *
 *   connect-probe HOST PORT [--timeout MS]     (default 3000 ms)
 *
 * Prints "connected", "refused", "timed out" or "error: <reason>", followed
 * by the elapsed time, e.g. "refused (0.3 ms)".
 * Exit status: 0 connected, 1 refused, 2 timed out, 3 other error, 64 usage. */
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

#include "pollux.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int usage(void)
{
	fprintf(stderr, "usage: connect-probe HOST PORT [--timeout MS]\n");
	return 64;
}

int main(int argc, char **argv)
{
	const char *host = NULL, *portstr = NULL;
	long timeout = 3000;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
			char *end;
			timeout = strtol(argv[++i], &end, 10);
			if (*end || end == argv[i] || timeout < -1 || timeout > 86400000L)
				return usage();
		} else if (!host) {
			host = argv[i];
		} else if (!portstr) {
			portstr = argv[i];
		} else {
			return usage();
		}
	}
	if (!host || !portstr)
		return usage();
	char *end;
	long port = strtol(portstr, &end, 10);
	if (*end || end == portstr || port < 1 || port > 65535)
		return usage();

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
	} else {
		printf("error: %s (%.1f ms)\n", fd == -ENOENT ? "name does not resolve" : strerror(-fd),
		       el);
		status = 3;
	}
	return status;
}
