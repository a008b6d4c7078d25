/* The system facilities that are not everywhere, each with its fallback.
 * configure says which exist (config.h); --enable-portable-fallbacks hides
 * them all, so that the fallbacks that macOS, the BSDs and illumos need run
 * in the Linux test suite too.  Nothing else in the library tests for a
 * system. */
#ifndef PX_COMPAT_H
#define PX_COMPAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

/* POLLRDHUP: the peer shut down writing, seen without a read.  Without it
 * PX_HUP means POLLHUP only, and the PX_ET emulation finds the end of file
 * with a peek (pxi_at_eof). */
#if defined(HAVE_DECL_POLLRDHUP) && HAVE_DECL_POLLRDHUP
#define PXC_RDHUP 1
#else
#define PXC_RDHUP 0
#endif

#if defined(HAVE_DECL_SOCK_NONBLOCK) && HAVE_DECL_SOCK_NONBLOCK && \
	defined(HAVE_DECL_SOCK_CLOEXEC) && HAVE_DECL_SOCK_CLOEXEC
#define PXC_SOCK_FLAGS 1
#else
#define PXC_SOCK_FLAGS 0
#endif

/* PXC_HAVE_MSG_NOSIGNAL for #if: glibc defines MSG_NOSIGNAL as a macro of
 * itself (an enum constant), which #if reads as 0. */
#if defined(HAVE_DECL_MSG_NOSIGNAL) && HAVE_DECL_MSG_NOSIGNAL
#define PXC_HAVE_MSG_NOSIGNAL 1
#define PXC_MSG_NOSIGNAL MSG_NOSIGNAL
#else
#define PXC_HAVE_MSG_NOSIGNAL 0
#define PXC_MSG_NOSIGNAL 0
#endif

/* A socket that is close-on-exec, and non-blocking if asked; fd or -errno.
 * Nothing leaks when a step fails. */
int pxi_socket(int domain, int type, int protocol, bool nonblock);

/* Sets FD_CLOEXEC, and O_NONBLOCK if asked; 0 or -errno. */
int pxi_fd_flags(int fd, bool nonblock);

/* send/sendmsg that never raise SIGPIPE: MSG_NOSIGNAL where it exists;
 * else SO_NOSIGPIPE, set once per socket by pxi_nosigpipe; else SIGPIPE is
 * blocked in the calling thread around the call and a SIGPIPE that the call
 * raised is consumed.  Same returns and errno as send()/sendmsg(). */
ssize_t pxi_send(int fd, const void *buf, size_t len, int flags);
ssize_t pxi_sendmsg(int fd, const struct msghdr *msg, int flags);
/* Before the first send on fd: SO_NOSIGPIPE where that is the way (a
 * no-op elsewhere).  0 or -errno. */
int pxi_nosigpipe(int fd);

/* The loop's wake-up fd: an eventfd where the system has one (fds[0] ==
 * fds[1]), else a pipe (read end, write end); close-on-exec and
 * non-blocking.  0 or -errno, and then nothing is left open. */
int pxi_wakefd_open(int fds[2]);
/* Makes fds[0] readable.  Async-signal-safe (write() only); a full pipe or
 * counter is already readable, so that is success.  0 or -errno. */
int pxi_wakefd_signal(int wfd);
/* Reads fds[0] until it is no longer readable. */
void pxi_wakefd_drain(int rfd);
void pxi_wakefd_close(const int fds[2]);

/* Stream socket at end of file, by a peek (no data consumed): true when the
 * peer has shut down writing and nothing is left to read. */
bool pxi_peek_eof(int fd);

/* Bits set, and trailing zeros of a non-zero x (select's word scans). */
#ifdef HAVE_BUILTIN_BITS
static inline int pxi_popcount(unsigned long long x) { return __builtin_popcountll(x); }
static inline int pxi_ctz(unsigned long long x) { return __builtin_ctzll(x); }
#else
static inline int pxi_popcount(unsigned long long x)
{
	int n = 0;

	for (; x; x &= x - 1)
		n++;
	return n;
}

static inline int pxi_ctz(unsigned long long x)
{
	int n = 0;

	for (; !(x & 1u); x >>= 1)
		n++;
	return n;
}
#endif

#endif
