#include <config.h>

/*
 * Buffered sends: px_send, px_send_pending, px_send_notify, and the two hooks
 * the core calls (pxi_sendq_flush when a queued fd is writable,
 * pxi_sendq_free when its registration goes away).
 *
 * Design
 *  - Each registered fd may own a struct pxi_sendq (pxi_io_sendq), allocated by the
 *    first px_send or px_send_notify on it and kept until px_io_del or
 *    px_loop_free (it is small; chunks are freed as soon as they are sent, so
 *    an idle connection holds no buffer memory).
 *  - The queue is a singly linked chain of chunks.  Appends fill the tail
 *    chunk's spare room first (many tiny sends share a chunk) and allocate
 *    one new chunk for the rest (at least CHUNK_MIN bytes), so nothing is ever
 *    copied twice and appending is O(len).  A big send copies only what the
 *    kernel did not take at once.
 *  - Flushing gathers up to IOV_MAX_FLUSH chunks into one
 *    sendmsg(MSG_DONTWAIT, never raising SIGPIPE: compat.h) and repeats until the kernel says
 *    EAGAIN or the queue is empty (drain to EAGAIN: correct under edge
 *    triggering too).  The library's write interest (pxi_io_lib_write) is on
 *    exactly while the queue holds bytes.
 *
 * All or nothing, and -ENOMEM.  When the queue is empty px_send first
 * reserves a chunk big enough for the whole buffer, then sends, then copies
 * what the kernel left into that chunk (shrinking it).  So -ENOMEM can only
 * happen before anything was sent: "nothing queued" also means "nothing
 * sent", and the stream is never torn.  (The reservation is one malloc/free
 * per call that the kernel takes whole; cheap next to the syscall.)  When the
 * queue is not empty nothing is sent now: the new bytes are appended after the
 * allocation they need has succeeded.
 *
 * Errors.  EAGAIN/EWOULDBLOCK/EINTR of a send are "not now".  Any other error
 * of the immediate send in px_send is returned and nothing is queued; it is
 * not sticky (the caller has been told) and no notify callback is made for it.
 * An error of a flush is sticky: the queue is discarded, the library's write
 * interest dropped, the notify callback (if any) called once with -errno, and
 * every later px_send returns that error until px_io_del.  The library's
 * write interest is turned on by the loop's flush before the next wait, with
 * the room it needs reserved before anything is sent: a kernel refusal there
 * reaches the watcher as PX_ERR (the queue stays), ENOMEM is retried.
 *
 * Datagram-style sockets (SOCK_DGRAM, SOCK_SEQPACKET) keep their message
 * boundaries: each queued px_send is its own chunk and is flushed by its own
 * sendmsg.
 *
 * Only fds registered with px_io_add qualify: a pending px_connect or an
 * acceptor (owned registrations) gives -ENOENT, since those registrations go
 * away (and would drop the queue) without the user's px_io_del.
 *
 * Re-entrancy.  User callbacks (the notify callback) run only at the end of a
 * flush, with the queue in a consistent state and write interest already
 * set right.  They may px_send, px_send_notify, px_io_del, anything: after the
 * callback the flush touches nothing of the queue; a guard set by
 * pxi_sendq_free tells it the queue is gone.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "compat.h"
#include "core.h"

#define SEND_FLAGS    MSG_DONTWAIT /* pxi_send(msg) adds what keeps SIGPIPE away */
#define IOV_MAX_FLUSH 64
/* A new chunk holds at least this much (header included: 16 KiB mallocs). */
#define CHUNK_ALLOC   16384u

struct chunk {
	struct chunk *next;
	size_t off; /* first byte not yet sent */
	size_t len; /* bytes stored */
	size_t cap; /* bytes that fit */
	unsigned char data[];
};

#define CHUNK_MIN (CHUNK_ALLOC - sizeof(struct chunk))

/* Set while a user callback runs from a flush; pxi_sendq_free marks it. */
struct guard {
	bool dead;
};

struct pxi_sendq {
	struct chunk *head, *tail;
	size_t pending; /* bytes queued, not yet taken by the kernel */
	size_t low_water;
	px_drain_cb *cb; /* NULL: no notification */
	void *arg;
	struct guard *guard;
	int err;      /* sticky flush error (-errno), 0 if none */
	bool above;   /* pending has been > low_water since the last drain */
	bool message; /* datagram-style socket: one chunk per px_send */
	bool typed;   /* message has been learned (SO_TYPE) */
};

/* A chunk for need bytes; stream queues round up to CHUNK_MIN so that later
 * small appends fit in its spare room. */
static struct chunk *chunk_new(const struct pxi_sendq *q, size_t need)
{
	size_t cap = need < CHUNK_MIN && !q->message ? CHUNK_MIN : need;

	if (cap > SIZE_MAX - sizeof(struct chunk))
		return NULL;
	struct chunk *c = malloc(sizeof(*c) + cap);
	if (!c)
		return NULL;
	c->next = NULL;
	c->off = c->len = 0;
	c->cap = cap;
	return c;
}

/* One spare chunk per loop: the room a send reserves before calling send()
 * comes without malloc and free when the kernel takes it all (the usual
 * case), and -ENOMEM still can never leave a buffer half sent. */
static struct chunk *chunk_take(px_loop *loop, const struct pxi_sendq *q, size_t need)
{
	struct chunk *c = loop->send_spare;

	if (c && need <= c->cap) {
		loop->send_spare = NULL;
		c->next = NULL;
		c->off = c->len = 0;
		return c;
	}
	return chunk_new(q, need);
}

static void chunk_give(px_loop *loop, struct chunk *c)
{
	if (!loop->send_spare && c->cap == CHUNK_MIN)
		loop->send_spare = c;
	else
		free(c);
}

void pxi_send_loop_free(px_loop *loop)
{
	free(loop->send_spare);
	loop->send_spare = NULL;
}

static void chunks_free(px_loop *loop, struct pxi_sendq *q)
{
	loop->st.send_queued -= q->pending;
	struct chunk *c = q->head;

	while (c) {
		struct chunk *next = c->next;
		free(c);
		c = next;
	}
	q->head = q->tail = NULL;
	q->pending = 0;
}

static void link_tail(struct pxi_sendq *q, struct chunk *c)
{
	if (q->tail)
		q->tail->next = c;
	else
		q->head = c;
	q->tail = c;
}

static bool not_now(int e)
{
	return e == EAGAIN || e == EWOULDBLOCK || e == EINTR;
}

/* The registration px_send may use, or NULL (not registered, or owned by a
 * pending connect or an acceptor). */
static struct pxi_watch *user_watch(const px_loop *loop, int fd)
{
	struct pxi_watch *w = pxi_io_get(loop, fd);

	return w && !(w->flags & W_OWNED) ? w : NULL;
}

/* Learns, once, whether the socket keeps message boundaries.  0 or -errno
 * (-ENOTSOCK, -EBADF). */
static int queue_learn_type(int fd, struct pxi_sendq *q)
{
	int type;
	socklen_t tlen = sizeof(type);

	if (q->typed)
		return 0;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0)
		return -errno;
	q->message = type != SOCK_STREAM;
	q->typed = true;
	return 0;
}

/* The fd's queue, created if needed.  With probe, checks that fd is a socket
 * (px_send learns that from send() itself, and the type only when it has to
 * queue: a send the kernel takes whole costs no extra system call).
 * 0 or -errno. */
static int queue_get(px_loop *loop, int fd, struct pxi_sendq **out, bool probe)
{
	struct pxi_watch *w = user_watch(loop, fd);

	if (!w)
		return -ENOENT;
	struct pxi_sendq *q = pxi_io_sendq(loop, fd);
	if (!q) {
		struct pxi_sendq probed = { 0 };
		int rc;
		if (probe && (rc = queue_learn_type(fd, &probed)) < 0)
			return rc;
		/* SO_NOSIGPIPE where that is how SIGPIPE is avoided: once per
		 * socket, before its first send. */
		rc = pxi_nosigpipe(fd);
		if (rc < 0 && rc != -ENOTSOCK)
			return rc;
		q = calloc(1, sizeof(*q));
		if (!q)
			return -ENOMEM;
		q->message = probed.message;
		q->typed = probed.typed;
		if (pxi_io_set_sendq(loop, fd, q) < 0) {
			free(q);
			return -ENOMEM;
		}
	} else if (probe) {
		int rc = queue_learn_type(fd, q);
		if (rc < 0)
			return rc;
	}
	*out = q;
	return 0;
}

static void track_above(struct pxi_sendq *q)
{
	if (q->pending > q->low_water)
		q->above = true;
}

/* Turns the queue into the failed state; returns the callback to make (the
 * caller makes it, once). */
static void queue_fail(px_loop *loop, int fd, struct pxi_sendq *q, int err,
                       px_drain_cb **cb, void **arg)
{
	chunks_free(loop, q);
	q->err = err;
	q->above = false;
	*cb = q->cb;
	*arg = q->arg;
	q->cb = NULL; /* once; no drain callback follows */
	q->arg = NULL;
	(void)pxi_io_lib_write(loop, fd, false);
}

/* Runs a user callback from inside the library.  Returns false when the
 * queue was freed meanwhile (the caller must not touch it). */
static bool call_user(px_loop *loop, int fd, struct pxi_sendq *q, px_drain_cb *cb,
                      void *arg, int status)
{
	struct guard g = { false };
	struct guard *outer = q->guard;

	q->guard = &g;
	pxi_call_enter(loop);
	cb(loop, fd, status, arg);
	pxi_call_leave(loop);
	if (g.dead) {
		if (outer)
			outer->dead = true;
		return false;
	}
	q->guard = outer;
	return true;
}

/* Appends len bytes to a non-empty (or message-mode) queue: all or nothing. */
static int queue_append(struct pxi_sendq *q, const unsigned char *p, size_t len)
{
	size_t room = 0;

	if (!q->message && q->tail)
		room = q->tail->cap - q->tail->len;
	if (room >= len) {
		memcpy(q->tail->data + q->tail->len, p, len);
		q->tail->len += len;
	} else {
		struct chunk *c = chunk_new(q, len - room);
		if (!c)
			return -ENOMEM;
		if (room) {
			memcpy(q->tail->data + q->tail->len, p, room);
			q->tail->len += room;
		}
		memcpy(c->data, p + room, len - room);
		c->len = len - room;
		link_tail(q, c);
	}
	q->pending += len;
	track_above(q);
	return 0;
}

int px_send(px_loop *loop, int fd, const void *buf, size_t len)
{
	struct pxi_sendq *q;
	int rc;

	if (!loop || (!buf && len > 0))
		return -EINVAL;
	if (len == 0)
		return 0;
	if (fd < 0)
		return -EBADF;
	if ((rc = queue_get(loop, fd, &q, false)) < 0)
		return rc;
	if (q->err)
		return q->err;
	if (q->pending > 0) {
		rc = queue_append(q, buf, len); /* never reorder */
		if (rc == 0)
			loop->st.send_queued += len;
		return rc;
	}

	/* Empty queue: reserve room for everything (the copy, and the write
	 * interest that flushes it), then send now. */
	if ((rc = pxi_io_lib_reserve(loop)) < 0)
		return rc;
	struct chunk *c = chunk_take(loop, q, len);
	if (!c)
		return -ENOMEM;
	ssize_t n = pxi_send(fd, buf, len, SEND_FLAGS);
	if (n < 0) {
		int e = errno;
		if (!not_now(e)) {
			chunk_give(loop, c);
			return -e;
		}
		n = 0;
	}
	size_t left = len - (size_t)n;
	if (left == 0) {
		chunk_give(loop, c);
		return 0;
	}
	/* Queuing after all: whether the socket keeps message boundaries
	 * matters from here on (a failure here would have failed the send). */
	(void)queue_learn_type(fd, q);
	memcpy(c->data, (const unsigned char *)buf + n, left);
	c->len = left;
	if (c->cap > CHUNK_MIN && c->cap - left > CHUNK_MIN / 4) {
		/* Give back what the kernel took (keep some room to append). */
		size_t cap = left < CHUNK_MIN ? CHUNK_MIN : left;
		struct chunk *s = realloc(c, sizeof(*c) + cap);
		if (s) {
			c = s;
			c->cap = cap;
		}
	}
	link_tail(q, c);
	q->pending = left;
	loop->st.send_queued += left;
	track_above(q);
	/* Made by the flush before the next wait (it cannot fail now: room was
	 * reserved); a refusal there reaches the watcher as PX_ERR, ENOMEM is
	 * retried, and the queue stays. */
	(void)pxi_io_lib_write(loop, fd, true);
	return 0;
}

size_t px_send_pending(const px_loop *loop, int fd)
{
	struct pxi_watch *w = user_watch(loop, fd);

	struct pxi_sendq *q = w ? pxi_io_sendq(loop, fd) : NULL;

	return q ? q->pending : 0;
}

int px_send_notify(px_loop *loop, int fd, size_t low_water, px_drain_cb *cb, void *arg)
{
	struct pxi_sendq *q;
	int rc;

	if (!loop)
		return -EINVAL;
	if (fd < 0)
		return -EBADF;
	if ((rc = queue_get(loop, fd, &q, true)) < 0)
		return rc;
	q->cb = cb;
	q->arg = cb ? arg : NULL;
	q->low_water = low_water;
	/* Registered while above: the next fall to low_water is reported. */
	q->above = cb && !q->err && q->pending > low_water;
	return 0;
}

/* Sends as much of the queue as the kernel takes.  0 when the kernel said
 * EAGAIN or the queue is empty, -errno on a real error. */
static int queue_write(int fd, struct pxi_sendq *q)
{
	struct iovec iov[IOV_MAX_FLUSH];

	while (q->head) {
		int n = 0;
		for (struct chunk *c = q->head; c && n < IOV_MAX_FLUSH; c = c->next) {
			iov[n].iov_base = c->data + c->off;
			iov[n].iov_len = c->len - c->off;
			n++;
			if (q->message)
				break; /* one message per sendmsg */
		}
		struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t sent = pxi_sendmsg(fd, &msg, SEND_FLAGS);
		if (sent < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		if (q->message) {
			/* A datagram is taken whole or not at all. */
			struct chunk *c = q->head;
			q->pending -= c->len - c->off;
			q->head = c->next;
			if (!q->head)
				q->tail = NULL;
			free(c);
			continue;
		}
		size_t left = (size_t)sent;
		q->pending -= left;
		while (left > 0) {
			struct chunk *c = q->head;
			size_t avail = c->len - c->off;
			if (left < avail) {
				c->off += left;
				break;
			}
			left -= avail;
			q->head = c->next;
			if (!q->head)
				q->tail = NULL;
			free(c);
		}
	}
	return 0;
}

void pxi_sendq_flush(px_loop *loop, int fd)
{
	struct pxi_sendq *q = pxi_io_sendq(loop, fd);
	px_drain_cb *cb;
	void *arg;

	if (!q)
		return;
	size_t before = q->pending;
	int rc = q->err ? 0 : queue_write(fd, q);
	loop->st.send_queued -= before - q->pending;
	if (rc < 0) {
		queue_fail(loop, fd, q, rc, &cb, &arg);
		if (cb)
			(void)call_user(loop, fd, q, cb, arg, rc);
		return;
	}
	if (q->pending == 0)
		(void)pxi_io_lib_write(loop, fd, false); /* retried on the next wake-up */
	if (q->cb && q->above && q->pending <= q->low_water) {
		q->above = false;
		(void)call_user(loop, fd, q, q->cb, q->arg, 0);
	}
}

void pxi_sendq_free(px_loop *loop, struct pxi_sendq *q)
{
	if (!q)
		return;
	if (q->guard)
		q->guard->dead = true;
	chunks_free(loop, q);
	free(q);
}
