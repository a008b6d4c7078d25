/* excommon.h: what every example does the same way (header-only: static
 * inline functions, so an example that uses only some of them gets no
 * unused-function warning).
 *
 * Conventions (README, "Examples"):
 *  - -h or --help prints on stdout what the program does, every option with
 *    its default, the environment it reads (POLLUX_BACKEND) and its exit
 *    statuses, and exits 0.
 *  - Bad usage (an unknown option, a missing or malformed value, a missing
 *    argument) prints one line saying what is wrong, the usage and a pointer
 *    to --help on stderr, and exits 64 (EX_USAGE of sysexits.h).  64 rather
 *    than 2: the clients already give 1, 2 and 3 meanings (refused, timed
 *    out, error...).
 *  - A bad POLLUX_BACKEND and a host that does not resolve get a message
 *    that names the variable or the host, with getaddrinfo's words for the
 *    resolver's answer (gai_strerror), instead of strerror(ENOENT)'s "No
 *    such file or directory".  px_listen_tcp and px_connect_tcp report a
 *    name that does not resolve as -ENOENT and a temporary resolver failure
 *    as -EAGAIN. */
#ifndef EXCOMMON_H
#define EXCOMMON_H

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pollux.h"

#define EX_USAGE_STATUS 64

/* The text of POLLUX_BACKEND's part of every --help. */
#define EX_HELP_ENV                                                              \
	"Environment:\n"                                                         \
	"  POLLUX_BACKEND   the event backend: epoll, poll or select (any case);\n" \
	"                   unset or empty: the best this system has\n"

/* Bad usage: "PROG: REASON", the usage lines, a pointer to --help, all on
 * stderr.  Returns EX_USAGE_STATUS, for "return ex_usage(...)". */
static inline int ex_usage(const char *prog, const char *usage, const char *fmt, ...)
{
	if (fmt) {
		va_list ap;
		fprintf(stderr, "%s: ", prog);
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
		fputc('\n', stderr);
	}
	fprintf(stderr, "%sTry '%s --help' for more.\n", usage, prog);
	return EX_USAGE_STATUS;
}

/* The backends this system has, best first, as "epoll poll select". */
static inline const char *ex_backend_list(char *buf, size_t len)
{
	size_t off = 0;
	buf[0] = '\0';
	for (const char *const *b = px_backends(); *b && off < len; b++) {
		int n = snprintf(buf + off, len - off, "%s%s", off ? " " : "", *b);
		if (n < 0)
			break;
		off += (size_t)n;
	}
	return buf;
}

/* Says why px_loop_new failed (errno), naming POLLUX_BACKEND when it is the
 * cause; keeps errno. */
static inline void ex_loop_error(const char *prog)
{
	int err = errno;
	const char *env = getenv("POLLUX_BACKEND");
	char list[128];

	ex_backend_list(list, sizeof(list));
	if (err == EINVAL && env && *env)
		fprintf(stderr, "%s: POLLUX_BACKEND=%s: unknown backend (known: %s)\n", prog, env,
		        list);
	else if (err == ENOSYS && env && *env)
		fprintf(stderr, "%s: POLLUX_BACKEND=%s: not available on this system (available: %s)\n",
		        prog, env, list);
	else
		fprintf(stderr, "%s: cannot create an event loop (POLLUX_BACKEND=%s): %s\n", prog,
		        env && *env ? env : "unset", strerror(err));
	errno = err;
}

/* px_loop_new, or NULL after ex_loop_error's message. */
static inline px_loop *ex_loop_new(const char *prog)
{
	px_loop *loop = px_loop_new();
	if (!loop)
		ex_loop_error(prog);
	return loop;
}

/* The words for a negative errno from px_listen_tcp(_opts) or
 * px_connect_tcp: the resolver's (gai_strerror) for -ENOENT and -EAGAIN,
 * strerror's for the rest. */
static inline const char *ex_net_strerror(int err)
{
	if (err == -ENOENT)
		return gai_strerror(EAI_NONAME);
	if (err == -EAGAIN)
		return gai_strerror(EAI_AGAIN);
	return strerror(err < 0 ? -err : err);
}

/* "PROG: cannot resolve host 'H': Name or service not known" for a
 * resolver failure, else "PROG: WHAT H port P: <strerror>".  what is e.g.
 * "listen on" or "connect to"; host NULL means any address. */
static inline void ex_net_error(const char *prog, const char *what, const char *host, long port,
                                int err)
{
	if (host && (err == -ENOENT || err == -EAGAIN))
		fprintf(stderr, "%s: cannot resolve host '%s': %s\n", prog, host, ex_net_strerror(err));
	else
		fprintf(stderr, "%s: %s %s port %ld: %s\n", prog, what, host ? host : "any", port,
		        ex_net_strerror(err));
}

/* Parses a whole decimal number in [lo, hi]. */
static inline int ex_parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return 0;
	*out = v;
	return 1;
}

#endif
