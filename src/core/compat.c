#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"

int pxi_fd_flags(int fd, bool nonblock)
{
	int fl;

	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		return -errno;
	if (!nonblock)
		return 0;
	if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

int pxi_socket(int domain, int type, int protocol, bool nonblock)
{
#if PXC_SOCK_FLAGS
	int fd = socket(domain, type | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), protocol);

	return fd < 0 ? -errno : fd;
#else
	/* Not atomic: a fork+exec in another thread between the two calls
	 * inherits the fd (systems without SOCK_CLOEXEC cannot do better). */
	int fd = socket(domain, type, protocol), rc;

	if (fd < 0)
		return -errno;
	if ((rc = pxi_fd_flags(fd, nonblock)) < 0) {
		close(fd);
		return rc;
	}
	return fd;
#endif
}

int pxi_nosigpipe(int fd)
{
#if !PXC_MSG_NOSIGNAL && defined(HAVE_DECL_SO_NOSIGPIPE) && HAVE_DECL_SO_NOSIGPIPE
	int one = 1;

	if (setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one)) < 0)
		return -errno;
#else
	(void)fd;
#endif
	return 0;
}

#if !PXC_MSG_NOSIGNAL && !(defined(HAVE_DECL_SO_NOSIGPIPE) && HAVE_DECL_SO_NOSIGPIPE)
#define PXC_MASK_SIGPIPE 1
/* Blocks SIGPIPE in this thread; *had: one was pending already (the
 * caller's own, which must stay pending). */
static void sigpipe_block(sigset_t *old, bool *had)
{
	sigset_t pipe, pending;

	sigemptyset(&pipe);
	sigaddset(&pipe, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe, old);
	sigpending(&pending);
	*had = sigismember(&pending, SIGPIPE);
}

/* Consumes the SIGPIPE the send raised (EPIPE), then restores the mask. */
static void sigpipe_restore(const sigset_t *old, bool had, bool epipe)
{
	if (epipe && !had) {
		sigset_t pipe;
		struct timespec zero = { 0, 0 };

		sigemptyset(&pipe);
		sigaddset(&pipe, SIGPIPE);
		while (sigtimedwait(&pipe, NULL, &zero) < 0 && errno == EINTR)
			;
	}
	pthread_sigmask(SIG_SETMASK, old, NULL);
}
#endif

ssize_t pxi_send(int fd, const void *buf, size_t len, int flags)
{
#ifdef PXC_MASK_SIGPIPE
	sigset_t old;
	bool had;

	sigpipe_block(&old, &had);
	ssize_t n = send(fd, buf, len, flags);
	int err = errno;
	sigpipe_restore(&old, had, n < 0 && err == EPIPE);
	errno = err;
	return n;
#else
	return send(fd, buf, len, flags | PXC_MSG_NOSIGNAL);
#endif
}

ssize_t pxi_sendmsg(int fd, const struct msghdr *msg, int flags)
{
#ifdef PXC_MASK_SIGPIPE
	sigset_t old;
	bool had;

	sigpipe_block(&old, &had);
	ssize_t n = sendmsg(fd, msg, flags);
	int err = errno;
	sigpipe_restore(&old, had, n < 0 && err == EPIPE);
	errno = err;
	return n;
#else
	return sendmsg(fd, msg, flags | PXC_MSG_NOSIGNAL);
#endif
}

bool pxi_peek_eof(int fd)
{
	char c;
	ssize_t n;

	do
		n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	return n == 0;
}
