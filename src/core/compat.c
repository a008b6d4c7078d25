#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_EVENTFD
#include <sys/eventfd.h>
#endif

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
#if !PXC_HAVE_MSG_NOSIGNAL && defined(HAVE_DECL_SO_NOSIGPIPE) && HAVE_DECL_SO_NOSIGPIPE
	int one = 1;

	if (setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one)) < 0)
		return -errno;
#else
	(void)fd;
#endif
	return 0;
}

#if !PXC_HAVE_MSG_NOSIGNAL && !(defined(HAVE_DECL_SO_NOSIGPIPE) && HAVE_DECL_SO_NOSIGPIPE)
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

int pxi_wakefd_open(int fds[2])
{
#ifdef HAVE_EVENTFD
	int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

	if (fd < 0)
		return -errno;
	fds[0] = fds[1] = fd;
	return 0;
#elif defined(HAVE_PIPE2)
	return pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0 ? -errno : 0;
#else
	/* Not atomic: a fork+exec in another thread in between inherits the
	 * pipe (systems without pipe2 cannot do better). */
	int rc;

	if (pipe(fds) < 0)
		return -errno;
	if ((rc = pxi_fd_flags(fds[0], true)) < 0 || (rc = pxi_fd_flags(fds[1], true)) < 0) {
		pxi_wakefd_close(fds);
		return rc;
	}
	return 0;
#endif
}

int pxi_wakefd_signal(int wfd)
{
#ifdef HAVE_EVENTFD
	uint64_t one = 1;
#else
	char one = 1;
#endif
	for (;;) {
		if (write(wfd, &one, sizeof(one)) >= 0)
			return 0;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 0; /* the counter or the pipe is full: readable */
		if (errno != EINTR)
			return -errno;
	}
}

void pxi_wakefd_drain(int rfd)
{
#ifdef HAVE_EVENTFD
	uint64_t count;

	/* One read resets the counter. */
	while (read(rfd, &count, sizeof(count)) < 0 && errno == EINTR)
		;
#else
	char buf[256];
	ssize_t n;

	while ((n = read(rfd, buf, sizeof(buf))) == (ssize_t)sizeof(buf) ||
	       (n < 0 && errno == EINTR))
		;
#endif
}

void pxi_wakefd_close(const int fds[2])
{
	close(fds[0]);
	if (fds[1] != fds[0])
		close(fds[1]);
}
