/* Socket helpers for test_sock and test_acceptor (static, header-only).
 * Everything is on loopback (127.0.0.1 / ::1) with ephemeral ports. */
#ifndef PX_SOCKTEST_H
#define PX_SOCKTEST_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portable.h"
#include "testutil.h"

/* Slack for timing checks: generous under valgrind. */
static inline double st_slack_ms(void)
{
	return tu_valgrind() ? 1500.0 : 250.0;
}

static inline int st_flags(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	assert_true(fl >= 0);
	return fl;
}

static inline bool st_nonblocking(int fd)
{
	return (st_flags(fd) & O_NONBLOCK) != 0;
}

static inline bool st_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	assert_true(fl >= 0);
	return (fl & FD_CLOEXEC) != 0;
}

static inline struct sockaddr_in st_loopback4(uint16_t port)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons(port);
	return a;
}

static inline uint16_t st_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* A TCP listener on 127.0.0.1, ephemeral port, close-on-exec (blocking
 * unless nonblock); *addr gets its address. */
static inline int st_listener(int backlog, bool nonblock, struct sockaddr_in *addr)
{
	int fd = tp_socket(AF_INET, SOCK_STREAM, 0, TP_CLOEXEC | (nonblock ? TP_NONBLOCK : 0));
	assert_true(fd >= 0);
	int one = 1;
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
	struct sockaddr_in a = st_loopback4(0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, backlog), 0);
	if (addr)
		*addr = st_loopback4(st_port(fd));
	return fd;
}

/* The address of a port nobody listens on: bound, then closed. */
static inline struct sockaddr_in st_closed_port(void)
{
	int fd = tp_socket(AF_INET, SOCK_STREAM, 0, TP_CLOEXEC);
	assert_true(fd >= 0);
	struct sockaddr_in a = st_loopback4(0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	a = st_loopback4(st_port(fd));
	close(fd);
	return a;
}

/* A TCP socket (blocking unless nonblock), not connected. */
static inline int st_tcp(bool nonblock)
{
	int fd = tp_socket(AF_INET, SOCK_STREAM, 0, TP_CLOEXEC | (nonblock ? TP_NONBLOCK : 0));
	assert_true(fd >= 0);
	return fd;
}

/* Starts a non-blocking connect to addr; returns the fd (non-blocking). */
static inline int st_connect_nb(const struct sockaddr_in *addr)
{
	int fd = st_tcp(true);
	int rc = connect(fd, (const struct sockaddr *)addr, sizeof(*addr));
	assert_true(rc == 0 || errno == EINPROGRESS);
	return fd;
}

/* Waits up to ms for fd's connect to complete; true when it did. */
static inline bool st_connected_within(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int n;
	do
		n = poll(&p, 1, ms);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		return false;
	int err = 0;
	socklen_t len = sizeof(err);
	assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len), 0);
	return err == 0;
}

/*
 * Fills the accept queue of a listener that never accepts: connects until a
 * connect does not complete within 100 ms (the kernel drops SYNs once the
 * queue is full).  The fillers are stored in fds (up to max); returns their
 * count.  Afterwards a further connect to addr hangs until its deadline.
 */
static inline int st_fill_accept_queue(const struct sockaddr_in *addr, int *fds, int max)
{
	int n = 0;
	while (n < max) {
		int fd = st_connect_nb(addr);
		fds[n++] = fd;
		if (!st_connected_within(fd, 100))
			return n; /* this one is stuck: the queue is full */
	}
	fail_msg("the accept queue never filled after %d connects", max);
	return n;
}

static inline void st_close_all(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0) {
			close(fds[i]);
			fds[i] = -1;
		}
}

/* Makes the next close of fd send a RST (SO_LINGER {1, 0}). */
static inline void st_linger0(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
}

/* A connected loopback TCP pair: *client (non-blocking) and *server (the
 * accepted end, non-blocking). */
static inline void st_tcp_pair(int *client, int *server)
{
	struct sockaddr_in a;
	int l = st_listener(1, false, &a);
	int c = st_tcp(false);
	assert_int_equal(connect(c, (struct sockaddr *)&a, sizeof(a)), 0);
	int s = tp_accept(l, NULL, NULL, TP_NONBLOCK | TP_CLOEXEC);
	assert_true(s >= 0);
	close(l);
	assert_int_equal(fcntl(c, F_SETFL, st_flags(c) | O_NONBLOCK), 0);
	*client = c;
	*server = s;
}

/* Byte i of the test stream. */
static inline unsigned char st_pattern(size_t i)
{
	return (unsigned char)((i * 7u + (i >> 11)) % 251u);
}

/* Writes pattern bytes [*off, ...) to a non-blocking fd until EAGAIN or
 * until *off reaches limit; returns the bytes written now. */
static inline size_t st_write_pattern(int fd, size_t *off, size_t limit)
{
	unsigned char buf[16384];
	size_t total = 0;
	while (*off < limit) {
		size_t n = limit - *off < sizeof(buf) ? limit - *off : sizeof(buf);
		for (size_t i = 0; i < n; i++)
			buf[i] = st_pattern(*off + i);
		ssize_t w = tp_send(fd, buf, n, MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
			break;
		}
		*off += (size_t)w;
		total += (size_t)w;
	}
	return total;
}

/* Reads what is available from a non-blocking fd, checking the pattern from
 * *off on; returns 1 at end of file, 0 at EAGAIN. */
static inline int st_read_pattern(int fd, size_t *off)
{
	unsigned char buf[16384];
	for (;;) {
		ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r == 0)
			return 1;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
			return 0;
		}
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != st_pattern(*off + (size_t)i))
				fail_msg("stream byte %zu: got %u, want %u", *off + (size_t)i,
				         buf[i], st_pattern(*off + (size_t)i));
		*off += (size_t)r;
	}
}

#endif
