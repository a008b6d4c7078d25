/* portable.h: what the test programs use instead of the Linux and glibc
 * names (tp_ = "test portability").  Each helper takes the system's own
 * call where configure found it (config.h: HAVE_DECL_*, HAVE_*), and
 * otherwise the POSIX way to the same result:
 *
 *   tp_socket, tp_socketpair  SOCK_NONBLOCK/SOCK_CLOEXEC in the type, or
 *                             fcntl afterwards (flags TP_NONBLOCK, TP_CLOEXEC)
 *   tp_pipe                   pipe2, or pipe + fcntl
 *   tp_accept                 accept4, or accept + fcntl
 *   tp_dup_to                 dup3 (fails when old == new), or dup2 + fcntl
 *   tp_dup_cloexec            fcntl(F_DUPFD_CLOEXEC), or F_DUPFD + FD_CLOEXEC
 *   tp_send, tp_sendmsg       send/sendmsg without SIGPIPE: MSG_NOSIGNAL, or
 *                             SIGPIPE ignored around the call (the test
 *                             programs are single-threaded)
 *   tp_recvmsg_cloexec        recvmsg(MSG_CMSG_CLOEXEC), or FD_CLOEXEC set on
 *                             the received fds afterwards
 *   tp_errname                strerrorname_np, or a table of the usual names
 *   tp_poll1, TP_POLLRDHUP    poll() of one fd, now; TP_POLLRDHUP in revents
 *                             means "the stream's peer shut down writing":
 *                             POLLRDHUP, or recv(MSG_PEEK) returning 0 on a
 *                             stream socket where poll has no POLLRDHUP
 *   tp_mkstemp_cloexec        mkostemp(O_CLOEXEC), or mkstemp + fcntl
 *
 * The fallbacks can be tried on Linux too: configure with the cache
 * variables set to "no" (e.g. ac_cv_have_decl_pipe2=no), as scripts/test's
 * "portable" step does.  config.h's answers come first: this header includes it
 * (tests/fuzz.sh writes one of its own).  FIONREAD: <sys/ioctl.h>, and
 * <sys/filio.h> where it is (illumos).  Everything here is static inline:
 * no object to link. */
#ifndef PX_TEST_PORTABLE_H
#define PX_TEST_PORTABLE_H

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>
#ifdef HAVE_SYS_FILIO_H
#include <sys/filio.h>
#endif

#ifndef HAVE_DECL_SOCK_NONBLOCK
#define HAVE_DECL_SOCK_NONBLOCK 0
#endif
#ifndef HAVE_DECL_SOCK_CLOEXEC
#define HAVE_DECL_SOCK_CLOEXEC 0
#endif
#ifndef HAVE_DECL_PIPE2
#define HAVE_DECL_PIPE2 0
#endif
#ifndef HAVE_DECL_ACCEPT4
#define HAVE_DECL_ACCEPT4 0
#endif
#ifndef HAVE_DECL_DUP3
#define HAVE_DECL_DUP3 0
#endif
#ifndef HAVE_DECL_F_DUPFD_CLOEXEC
#define HAVE_DECL_F_DUPFD_CLOEXEC 0
#endif
#ifndef HAVE_DECL_MSG_NOSIGNAL
#define HAVE_DECL_MSG_NOSIGNAL 0
#endif
#ifndef HAVE_DECL_MSG_CMSG_CLOEXEC
#define HAVE_DECL_MSG_CMSG_CLOEXEC 0
#endif
#ifndef HAVE_DECL_POLLRDHUP
#define HAVE_DECL_POLLRDHUP 0
#endif
#ifndef HAVE_DECL_STRERRORNAME_NP
#define HAVE_DECL_STRERRORNAME_NP 0
#endif
#ifndef HAVE_DECL_MKOSTEMP
#define HAVE_DECL_MKOSTEMP 0
#endif

/* MSG_DONTWAIT is not in POSIX.1-2008, but every system the library is
 * for has it (Linux, musl, the BSDs, macOS, illumos): the tests use it
 * as it is. */
#ifndef MSG_DONTWAIT
#error "MSG_DONTWAIT is missing: the tests' non-blocking reads need it"
#endif

#define TP_NONBLOCK 1
#define TP_CLOEXEC 2

/* Sets O_NONBLOCK / FD_CLOEXEC as flags asks; 0 or -1 (errno). */
static inline int tp_set_flags(int fd, int flags)
{
	if (flags & TP_CLOEXEC) {
		int fdfl = fcntl(fd, F_GETFD);
		if (fdfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) != 0)
			return -1;
	}
	if (flags & TP_NONBLOCK) {
		int fl = fcntl(fd, F_GETFL);
		if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
			return -1;
	}
	return 0;
}

/* Closes fd keeping errno; returns -1. */
static inline int tp_fail_close(int fd)
{
	int e = errno;
	close(fd);
	errno = e;
	return -1;
}

static inline int tp_socket(int domain, int type, int proto, int flags)
{
#if HAVE_DECL_SOCK_NONBLOCK && HAVE_DECL_SOCK_CLOEXEC
	return socket(domain,
	              type | (flags & TP_NONBLOCK ? SOCK_NONBLOCK : 0) |
	                  (flags & TP_CLOEXEC ? SOCK_CLOEXEC : 0),
	              proto);
#else
	int fd = socket(domain, type, proto);
	if (fd >= 0 && tp_set_flags(fd, flags) != 0)
		return tp_fail_close(fd);
	return fd;
#endif
}

static inline int tp_socketpair(int domain, int type, int proto, int flags, int sv[2])
{
#if HAVE_DECL_SOCK_NONBLOCK && HAVE_DECL_SOCK_CLOEXEC
	return socketpair(domain,
	                  type | (flags & TP_NONBLOCK ? SOCK_NONBLOCK : 0) |
	                      (flags & TP_CLOEXEC ? SOCK_CLOEXEC : 0),
	                  proto, sv);
#else
	if (socketpair(domain, type, proto, sv) != 0)
		return -1;
	if (tp_set_flags(sv[0], flags) != 0 || tp_set_flags(sv[1], flags) != 0) {
		int e = errno;
		close(sv[0]);
		close(sv[1]);
		errno = e;
		return -1;
	}
	return 0;
#endif
}

static inline int tp_pipe(int p[2], int flags)
{
#if HAVE_DECL_PIPE2
	return pipe2(p, (flags & TP_NONBLOCK ? O_NONBLOCK : 0) | (flags & TP_CLOEXEC ? O_CLOEXEC : 0));
#else
	if (pipe(p) != 0)
		return -1;
	if (tp_set_flags(p[0], flags) != 0 || tp_set_flags(p[1], flags) != 0) {
		int e = errno;
		close(p[0]);
		close(p[1]);
		errno = e;
		return -1;
	}
	return 0;
#endif
}

static inline int tp_accept(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
#if HAVE_DECL_ACCEPT4 && HAVE_DECL_SOCK_NONBLOCK && HAVE_DECL_SOCK_CLOEXEC
	return accept4(fd, sa, len,
	               (flags & TP_NONBLOCK ? SOCK_NONBLOCK : 0) | (flags & TP_CLOEXEC ? SOCK_CLOEXEC : 0));
#else
	int c = accept(fd, sa, len);
	if (c >= 0 && tp_set_flags(c, flags & ~TP_NONBLOCK) != 0)
		return tp_fail_close(c);
	/* O_NONBLOCK: set as asked, cleared otherwise (some systems let the
	 * accepted socket inherit the listener's; accept4 does not). */
	if (c >= 0) {
		int fl = fcntl(c, F_GETFL);
		int want = flags & TP_NONBLOCK ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
		if (fl < 0 || (want != fl && fcntl(c, F_SETFL, want) != 0))
			return tp_fail_close(c);
	}
	return c;
#endif
}

/* dup3: oldfd's file at newfd (whatever was there is closed), flags
 * TP_CLOEXEC or 0; returns newfd.  oldfd == newfd is EINVAL, as for dup3. */
static inline int tp_dup_to(int oldfd, int newfd, int flags)
{
#if HAVE_DECL_DUP3
	return dup3(oldfd, newfd, flags & TP_CLOEXEC ? O_CLOEXEC : 0);
#else
	if (oldfd == newfd) {
		errno = EINVAL;
		return -1;
	}
	int fd;
	while ((fd = dup2(oldfd, newfd)) < 0 && errno == EINTR)
		;
	if (fd < 0)
		return -1;
	if (fcntl(fd, F_SETFD, flags & TP_CLOEXEC ? FD_CLOEXEC : 0) != 0)
		return tp_fail_close(fd);
	return fd;
#endif
}

/* The lowest free number >= min, close-on-exec. */
static inline int tp_dup_cloexec(int fd, int min)
{
#if HAVE_DECL_F_DUPFD_CLOEXEC
	return fcntl(fd, F_DUPFD_CLOEXEC, min);
#else
	int c = fcntl(fd, F_DUPFD, min);
	if (c >= 0 && fcntl(c, F_SETFD, FD_CLOEXEC) != 0)
		return tp_fail_close(c);
	return c;
#endif
}

#if !HAVE_DECL_MSG_NOSIGNAL
/* Ignores SIGPIPE for the length of one call: a SIGPIPE raised by the
 * call is discarded, the call fails with EPIPE. */
struct tp_nosig {
	struct sigaction old;
	int ok;
};
static inline void tp_nosig_begin(struct tp_nosig *s)
{
	struct sigaction ign;
	memset(&ign, 0, sizeof ign);
	ign.sa_handler = SIG_IGN;
	sigemptyset(&ign.sa_mask);
	s->ok = sigaction(SIGPIPE, &ign, &s->old) == 0;
}
static inline void tp_nosig_end(struct tp_nosig *s)
{
	int e = errno;
	if (s->ok)
		(void)sigaction(SIGPIPE, &s->old, NULL);
	errno = e;
}
#endif

/* send(2) that never raises SIGPIPE (MSG_NOSIGNAL's meaning); flags are
 * the other MSG_* flags. */
static inline ssize_t tp_send(int fd, const void *buf, size_t len, int flags)
{
#if HAVE_DECL_MSG_NOSIGNAL
	return send(fd, buf, len, flags | MSG_NOSIGNAL);
#else
	struct tp_nosig s;
	tp_nosig_begin(&s);
	ssize_t n = send(fd, buf, len, flags);
	tp_nosig_end(&s);
	return n;
#endif
}

static inline ssize_t tp_sendmsg(int fd, const struct msghdr *m, int flags)
{
#if HAVE_DECL_MSG_NOSIGNAL
	return sendmsg(fd, m, flags | MSG_NOSIGNAL);
#else
	struct tp_nosig s;
	tp_nosig_begin(&s);
	ssize_t n = sendmsg(fd, m, flags);
	tp_nosig_end(&s);
	return n;
#endif
}

/* recvmsg(2) whose received fds (SCM_RIGHTS) are close-on-exec. */
static inline ssize_t tp_recvmsg_cloexec(int fd, struct msghdr *m, int flags)
{
#if HAVE_DECL_MSG_CMSG_CLOEXEC
	return recvmsg(fd, m, flags | MSG_CMSG_CLOEXEC);
#else
	ssize_t n = recvmsg(fd, m, flags);
	if (n < 0)
		return n;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int x;
			memcpy(&x, CMSG_DATA(c) + i * sizeof(int), sizeof x);
			(void)fcntl(x, F_SETFD, FD_CLOEXEC);
		}
	}
	return n;
#endif
}

/* "EAGAIN" for EAGAIN; NULL for a number it does not know (as
 * strerrorname_np). */
static inline const char *tp_errname(int e)
{
#if HAVE_DECL_STRERRORNAME_NP
	return strerrorname_np(e);
#else
#define TP_E(x) { x, #x }
	static const struct {
		int e;
		const char *name;
	} tab[] = {
		TP_E(EPERM), TP_E(ENOENT), TP_E(ESRCH), TP_E(EINTR), TP_E(EIO), TP_E(ENXIO),
		TP_E(E2BIG), TP_E(ENOEXEC), TP_E(EBADF), TP_E(ECHILD), TP_E(EAGAIN),
		TP_E(ENOMEM), TP_E(EACCES), TP_E(EFAULT), TP_E(EBUSY), TP_E(EEXIST),
		TP_E(EXDEV), TP_E(ENODEV), TP_E(ENOTDIR), TP_E(EISDIR), TP_E(EINVAL),
		TP_E(ENFILE), TP_E(EMFILE), TP_E(ENOTTY), TP_E(EFBIG), TP_E(ENOSPC),
		TP_E(ESPIPE), TP_E(EROFS), TP_E(EMLINK), TP_E(EPIPE), TP_E(EDOM), TP_E(ERANGE),
		TP_E(EDEADLK), TP_E(ENAMETOOLONG), TP_E(ENOLCK), TP_E(ENOSYS), TP_E(ENOTEMPTY),
		TP_E(ELOOP), TP_E(ENOMSG), TP_E(EIDRM), TP_E(ENOLINK), TP_E(EPROTO),
		TP_E(EBADMSG), TP_E(EOVERFLOW), TP_E(EILSEQ), TP_E(ENOTSOCK),
		TP_E(EDESTADDRREQ), TP_E(EMSGSIZE), TP_E(EPROTOTYPE), TP_E(ENOPROTOOPT),
		TP_E(EPROTONOSUPPORT), TP_E(EOPNOTSUPP), TP_E(ENOTSUP), TP_E(EAFNOSUPPORT),
		TP_E(EADDRINUSE), TP_E(EADDRNOTAVAIL), TP_E(ENETDOWN), TP_E(ENETUNREACH),
		TP_E(ENETRESET), TP_E(ECONNABORTED), TP_E(ECONNRESET), TP_E(ENOBUFS),
		TP_E(EISCONN), TP_E(ENOTCONN), TP_E(ETIMEDOUT), TP_E(ECONNREFUSED),
		TP_E(EHOSTUNREACH), TP_E(EALREADY), TP_E(EINPROGRESS), TP_E(ESTALE),
		TP_E(ECANCELED),
#ifdef EHOSTDOWN
		TP_E(EHOSTDOWN),
#endif
#ifdef ENONET
		TP_E(ENONET),
#endif
	};
#undef TP_E
	for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
		if (tab[i].e == e)
			return tab[i].name;
	return NULL;
#endif
}

/* The stream socket's peer shut down writing (a read would give EOF now). */
static inline bool tp_stream_eof(int fd)
{
	int type = 0;
	socklen_t tl = sizeof type;
	char c;

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM)
		return false;
	return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

#if HAVE_DECL_POLLRDHUP
#define TP_POLLRDHUP POLLRDHUP
#else
/* A bit no poll() sets where POLLRDHUP is missing; tp_poll1 sets it. */
#define TP_POLLRDHUP 0x4000
#endif

/* poll(2) of one fd with timeout 0: its revents (0 when nothing is ready).
 * TP_POLLRDHUP in events asks for the peer's shutdown as well. */
static inline short tp_poll1(int fd, short events)
{
#if HAVE_DECL_POLLRDHUP
	struct pollfd pf = { .fd = fd, .events = events };
	return poll(&pf, 1, 0) == 1 ? pf.revents : 0;
#else
	struct pollfd pf = { .fd = fd, .events = (short)(events & ~TP_POLLRDHUP) };
	short rev = poll(&pf, 1, 0) == 1 ? pf.revents : 0;
	if ((events & TP_POLLRDHUP) && !(rev & POLLNVAL) && tp_stream_eof(fd))
		rev |= TP_POLLRDHUP;
	return rev;
#endif
}

/* mkostemp(path, O_CLOEXEC). */
static inline int tp_mkstemp_cloexec(char *path)
{
#if HAVE_DECL_MKOSTEMP
	return mkostemp(path, O_CLOEXEC);
#else
	int fd = mkstemp(path);
	if (fd >= 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
		unlink(path);
		return tp_fail_close(fd);
	}
	return fd;
#endif
}

#endif
