#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "core.h"

/* TCP conveniences: a listening socket and a connected client socket. */

static int gai_errno(int rc)
{
	switch (rc) {
	case EAI_NONAME:
#ifdef EAI_NODATA
	case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
	case EAI_ADDRFAMILY:
#endif
	case EAI_FAIL:
		return -ENOENT;
	case EAI_AGAIN:
		return -EAGAIN; /* temporary failure of the resolver */
	case EAI_MEMORY:
		return -ENOMEM;
	case EAI_SYSTEM:
		return errno ? -errno : -EIO;
	case EAI_FAMILY:
	case EAI_SOCKTYPE:
	case EAI_SERVICE:
	case EAI_BADFLAGS:
		return -EINVAL;
	default:
		return -ENOENT;
	}
}

static int resolve(const char *host, uint16_t port, int flags, struct addrinfo **res)
{
	char serv[8];
	struct addrinfo hints;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	hints.ai_flags = AI_NUMERICSERV | flags;
	snprintf(serv, sizeof(serv), "%u", (unsigned)port);
	errno = 0;
	int rc = getaddrinfo(host, serv, &hints, res);
	if (rc != 0)
		return gai_errno(rc);
	if (!*res)
		return -ENOENT;
	return 0;
}

#if defined(HAVE_DECL_SO_REUSEPORT) && HAVE_DECL_SO_REUSEPORT
#define PX_HAVE_REUSEPORT 1
#else
#define PX_HAVE_REUSEPORT 0
#endif

/* IPV6_V6ONLY on an IPv6 listener: leave the system's default, force
 * dual-stack (0) or IPv6 only (1). */
enum v6only { V6_DEFAULT, V6_DUAL, V6_ONLY };

/* socket + options + bind + listen for one address; fd or -errno. */
static int listen_on(const struct sockaddr *sa, socklen_t salen, int backlog,
                     enum v6only v6, bool reuseport)
{
	int fd = pxi_socket(sa->sa_family, SOCK_STREAM, IPPROTO_TCP, true);
	int one = 1, err;

	if (fd < 0)
		return fd;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto fail;
#if PX_HAVE_REUSEPORT
	if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
#else
	(void)reuseport; /* px_listen_tcp_opts refused it already */
#endif
	if (sa->sa_family == AF_INET6 && v6 != V6_DEFAULT) {
		int only = v6 == V6_ONLY;
		if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &only, sizeof(only)) < 0)
			goto fail;
	}
	if (bind(fd, sa, salen) < 0 || listen(fd, backlog) < 0)
		goto fail;
	return fd;
fail:
	err = errno;
	close(fd);
	return -err;
}

int px_listen_tcp(const char *host, uint16_t port, int backlog)
{
	return px_listen_tcp_opts(host, port, backlog, 0);
}

int px_listen_tcp_opts(const char *host, uint16_t port, int backlog, unsigned flags)
{
	if (flags & ~(PX_LISTEN_REUSEPORT | PX_LISTEN_V6ONLY))
		return -EINVAL;
	if ((flags & PX_LISTEN_REUSEPORT) && !PX_HAVE_REUSEPORT)
		return -ENOTSUP;
	bool reuseport = flags & PX_LISTEN_REUSEPORT;
	bool v6only = flags & PX_LISTEN_V6ONLY;

	if (backlog <= 0)
		backlog = SOMAXCONN;

	if (!host) {
		/* Any address: dual-stack [::] so that 127.0.0.1 reaches it,
		 * else 0.0.0.0 (no IPv6, or IPv6-only sockets enforced).
		 * V6ONLY: [::] taking IPv6 only, no IPv4 fallback. */
		struct sockaddr_in6 s6;
		memset(&s6, 0, sizeof(s6));
		s6.sin6_family = AF_INET6;
		s6.sin6_addr = in6addr_any;
		s6.sin6_port = htons(port);
		int fd = listen_on((struct sockaddr *)&s6, sizeof(s6), backlog,
		                   v6only ? V6_ONLY : V6_DUAL, reuseport);
		if (fd >= 0 || v6only)
			return fd;
		struct sockaddr_in s4;
		memset(&s4, 0, sizeof(s4));
		s4.sin_family = AF_INET;
		s4.sin_addr.s_addr = htonl(INADDR_ANY);
		s4.sin_port = htons(port);
		return listen_on((struct sockaddr *)&s4, sizeof(s4), backlog, V6_DEFAULT, reuseport);
	}

	struct addrinfo *res;
	int rc = resolve(host, port, AI_PASSIVE, &res);
	if (rc < 0)
		return rc;
	/* V6ONLY: only the IPv6 addresses; a host with none (an IPv4
	 * literal, a name with only IPv4 addresses) is -EINVAL. */
	rc = v6only ? -EINVAL : -ENOENT;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		if (ai->ai_family != AF_INET6 && (v6only || ai->ai_family != AF_INET))
			continue;
		rc = listen_on(ai->ai_addr, ai->ai_addrlen, backlog,
		               v6only ? V6_ONLY : V6_DEFAULT, reuseport);
		if (rc >= 0)
			break;
	}
	freeaddrinfo(res);
	return rc;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int px_connect_tcp(const char *host, uint16_t port, int timeout_ms)
{
	if (!host)
		return -EINVAL;

	struct addrinfo *res;
	int rc = resolve(host, port, 0, &res);
	if (rc < 0)
		return rc;

	/* The deadline covers connecting, not name resolution. */
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX
	                                   : mono_ns() + (uint64_t)timeout_ms * 1000000u;
	rc = -ENOENT;
	bool tried = false;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
			continue;
		int left_ms = -1;
		if (deadline != UINT64_MAX) {
			uint64_t now = mono_ns();
			/* The first address is always tried, as px_connect_timeout
			 * tries with 0 ms: a loopback connect completes at once. */
			if (now >= deadline && tried) {
				rc = -ETIMEDOUT;
				break;
			}
			if (now > deadline)
				now = deadline;
			uint64_t left = deadline - now;
			uint64_t ms = left / 1000000u + (left % 1000000u != 0);
			left_ms = ms > INT32_MAX ? INT32_MAX : (int)ms;
		}
		int fd = pxi_socket(ai->ai_family, SOCK_STREAM, IPPROTO_TCP, false);
		if (fd < 0) {
			rc = fd;
			continue;
		}
		tried = true;
		rc = px_connect_timeout(fd, ai->ai_addr, ai->ai_addrlen, left_ms);
		if (rc == 0) {
			freeaddrinfo(res);
			return fd; /* blocking: px_connect_timeout restored it */
		}
		close(fd);
	}
	freeaddrinfo(res);
	return rc;
}
