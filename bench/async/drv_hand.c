/* The hand-written lower bound: one eventfd in an epoll set.
 *   post: the mutex queue; the producer writes the eventfd only when it
 *         made the queue non-empty; the loop reads the eventfd, then takes
 *         the whole queue (in that order: no lost wake-up).
 *   wake: an atomic "pending" flag; the eventfd is written only when it was
 *         clear; the loop reads the eventfd, then clears it (clearing first
 *         would let the read swallow the write of a waker that came between:
 *         the flag set, no write outstanding, every later wake lost).
 *   signal: sigaction handler (SA_RESTART) that sets a flag and writes the
 *         eventfd (the self-pipe trick). */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "async.h"

static int ep = -1, efd = -1;
static struct mq q;
static enum async_mode mode;
static atomic_int stopping, wake_pending;
static volatile sig_atomic_t got_signal;
static uint64_t wakes;

static const char *const backends[] = { "epoll", NULL };

static void handler(int signo)
{
	int e = errno;
	uint64_t one = 1;

	(void)signo;
	got_signal = 1;
	if (write(efd, &one, sizeof one) < 0) {
		/* counter full: a wake-up is pending anyway */
	}
	errno = e;
}

static int init(const char *backend, enum async_mode m)
{
	struct epoll_event ev = { .events = EPOLLIN };

	(void)backend;
	mode = m;
	mq_init(&q);
	ep = epoll_create1(EPOLL_CLOEXEC);
	efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ep < 0 || efd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) < 0) {
		perror("hand: epoll/eventfd");
		return -1;
	}
	if (m == M_SIGNAL_LAT) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = handler;
		sa.sa_flags = SA_RESTART;
		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGUSR1, &sa, NULL) < 0)
			return -1;
	}
	return 0;
}

static const char *name(void) { return "epoll"; }

static void run(void)
{
	struct epoll_event evs[4];
	uint64_t cnt;

	while (!atomic_load(&stopping)) {
		int n = epoll_wait(ep, evs, 4, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			async_die("epoll_wait");
		}
		if (n == 0)
			continue;
		wakes++;
		switch (mode) {
		case M_WAKE_TPUT:
		case M_WAKE_LAT:
			if (read(efd, &cnt, sizeof cnt) < 0 && errno != EAGAIN)
				async_die("read eventfd");
			atomic_store(&wake_pending, 0);
			async_woken();
			break;
		case M_POST_TPUT:
		case M_POST_LAT:
			if (read(efd, &cnt, sizeof cnt) < 0 && errno != EAGAIN)
				async_die("read eventfd");
			mq_drain(&q);
			break;
		case M_SIGNAL_LAT:
			if (read(efd, &cnt, sizeof cnt) < 0 && errno != EAGAIN)
				async_die("read eventfd");
			if (got_signal) {
				got_signal = 0;
				async_signal();
			}
			break;
		}
	}
}

static int kick(void)
{
	uint64_t one = 1;
	return write(efd, &one, sizeof one) == sizeof one || errno == EAGAIN ? 0 : -1;
}

static int post(void *arg)
{
	int r = mq_push(&q, async_posted, arg);
	if (r < 0)
		return -1;
	return r ? kick() : 0;
}

static int wake(void)
{
	if (atomic_load_explicit(&wake_pending, memory_order_relaxed) ||
	    atomic_exchange(&wake_pending, 1))
		return 0;
	return kick();
}

static void stop(void)
{
	atomic_store(&stopping, 1);
	kick();
}

static uint64_t wakeups(void) { return wakes; }

static void fini(void)
{
	close(efd);
	close(ep);
	mq_fini(&q);
}

const struct async_driver drv_hand = {
	.lib = "hand", .backends = backends, .init = init, .backend_name = name, .run = run,
	.post = post, .wake = wake, .stop = stop, .wakeups = wakeups, .fini = fini,
};
