#include <config.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core.h"

struct backend_name {
	const char *name;
	const struct pxi_backend *be; /* NULL: not built on this system */
};

#ifdef HAVE_EPOLL
#define EPOLL_BE &pxi_backend_epoll
#else
#define EPOLL_BE NULL
#endif
#ifdef HAVE_POLL
#define POLL_BE &pxi_backend_poll
#else
#define POLL_BE NULL
#endif

/* Best first.  macOS's poll() reports POLLNVAL for ttys and devices, which
 * its select() watches: there select comes first. */
static const struct backend_name known[] = {
	{ "epoll", EPOLL_BE },
#ifdef __APPLE__
	{ "select", &pxi_backend_select },
	{ "poll", POLL_BE },
#else
	{ "poll", POLL_BE },
	{ "select", &pxi_backend_select },
#endif
};

/* The same order, as names (a constant: px_backends may be called from any
 * thread). */
static const char *const usable[] = {
#ifdef HAVE_EPOLL
	"epoll",
#endif
#ifdef __APPLE__
	"select",
#endif
#ifdef HAVE_POLL
	"poll",
#endif
#ifndef __APPLE__
	"select",
#endif
	NULL,
};

const char *const *px_backends(void)
{
	return usable;
}

const char *px_version(void)
{
	return PACKAGE_VERSION;
}

static px_loop *loop_create(const struct pxi_backend *be)
{
	px_loop *loop = calloc(1, sizeof(*loop));

	if (!loop) {
		errno = ENOMEM;
		return NULL;
	}
	loop->be = be;
	loop->bst = be->create();
	if (!loop->bst) {
		int err = errno ? errno : ENOMEM;
		free(loop);
		errno = err;
		return NULL;
	}
	int rc = pxi_wake_init(loop);
	if (rc < 0) {
		pxi_io_free_all(loop);
		loop->be->destroy(loop->bst);
		free(loop);
		errno = -rc;
		return NULL;
	}
	/* Counters start at px_loop_new's return: the wake-up fd's
	 * registration is not the user's kernel change. */
	memset(&loop->st, 0, sizeof(loop->st));
	loop->freeslot = UINT32_MAX;
	loop->now_ns = pxi_clock_ns();
	return loop;
}

static px_loop *loop_new_named(const char *name)
{
	if (!name || !*name) {
		/* Best available: a backend the kernel refuses (seccomp, old
		 * kernels) yields to the next one. */
		int err = ENOSYS;
		for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
			if (!known[i].be)
				continue;
			px_loop *loop = loop_create(known[i].be);
			if (loop)
				return loop;
			err = errno;
			/* Out of memory or descriptors is no reason to fall back
			 * to a worse backend: the next one would fail the same. */
			if (err == ENOMEM || err == EMFILE || err == ENFILE)
				break;
		}
		errno = err;
		return NULL;
	}
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		if (strcasecmp(name, known[i].name) != 0)
			continue;
		if (!known[i].be) {
			errno = ENOSYS;
			return NULL;
		}
		return loop_create(known[i].be);
	}
	errno = EINVAL;
	return NULL;
}

px_loop *px_loop_new(void)
{
	return loop_new_named(getenv("POLLUX_BACKEND"));
}

px_loop *px_loop_new_backend(const char *name)
{
	return loop_new_named(name);
}

void px_loop_free(px_loop *loop)
{
	if (!loop || loop->depth > 0 || loop->running)
		return;
	/* No handler may wake the loop once it is gone. */
	pxi_signals_free(loop);
	/* Owners (connects, acceptors) may delete their timers on release. */
	pxi_io_free_all(loop);
	pxi_send_loop_free(loop);
	pxi_timers_free(loop);
	pxi_wake_free(loop);
	loop->be->destroy(loop->bst);
	free(loop);
}

const char *px_loop_backend(const px_loop *loop)
{
	return loop ? loop->be->name : NULL;
}

uint64_t px_loop_now(const px_loop *loop)
{
	if (!loop)
		return 0;
	if (loop->now_stale) {
		/* Read lazily: loops without timers skip the clock after each
		 * wait.  The loop is never a const object, only viewed as one. */
		px_loop *l = (px_loop *)loop;
		l->now_ns = pxi_clock_ns();
		l->now_stale = false;
	}
	return loop->now_ns / 1000000u;
}

int px_loop_stats(const px_loop *loop, struct px_loop_stats *st, size_t size)
{
	if (!loop || !st || size == 0)
		return -EINVAL;
	size_t have = sizeof(loop->st);
	memcpy(st, &loop->st, size < have ? size : have);
	if (size > have) /* a newer struct: fields this library does not know are 0 */
		memset((unsigned char *)st + have, 0, size - have);
	return 0;
}

void px_loop_stop(px_loop *loop)
{
	if (loop)
		loop->stop = true;
}

static int ns_to_timeout(uint64_t ns)
{
	if (ns == UINT64_MAX)
		return -1;
	uint64_t ms = ns / 1000000u + (ns % 1000000u != 0); /* never wake early */
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* A wait that returned nothing: before its timeout?  (A timeout of 0
 * returns at once: never early.  With a timeout > 0 there are timers, so
 * loop_wait has just read the clock.) */
static bool early(const px_loop *loop, int timeout_ms, uint64_t deadline)
{
	if (timeout_ms == 0)
		return false;
	if (timeout_ms < 0)
		return true;
	return !loop->now_stale && loop->now_ns < deadline;
}

static int loop_wait(px_loop *loop, int timeout_ms)
{
	/* The deadline is fixed once: signals arriving faster than the
	 * millisecond rounding must not keep pushing it out. */
	uint64_t deadline = timeout_ms > 0 ? loop->now_ns + (uint64_t)timeout_ms * 1000000u : 0;

	for (;;) {
		int n = loop->be->wait(loop->bst, timeout_ms, loop->ev, loop->waitcap);
		loop->st.waits++;
		if (n != -EINTR) {
			/* Only timers need the time; px_loop_now reads it lazily. */
			loop->now_stale = loop->heaplen == 0;
			if (!loop->now_stale)
				loop->now_ns = pxi_clock_ns();
			if (n > 0)
				loop->st.events += (uint64_t)n;
			else if (n == 0 && early(loop, timeout_ms, deadline))
				loop->st.empty_wakeups++;
			return n;
		}
		/* Interrupted: woke before the timeout with nothing to do. */
		if (timeout_ms != 0)
			loop->st.empty_wakeups++;
		loop->now_ns = pxi_clock_ns();
		if (timeout_ms > 0)
			timeout_ms = loop->now_ns >= deadline ? 0 : ns_to_timeout(deadline - loop->now_ns);
	}
}

static int iterate(px_loop *loop, int timeout_ms)
{
	loop->st.iterations++;
	int n = pxi_io_prepare(loop);

	if (n < 0)
		return n;
	if (loop->failedlen > 0)
		timeout_ms = 0; /* refused changes are reported in this iteration */
	n = loop_wait(loop, timeout_ms);
	if (n < 0)
		return n;
	n = pxi_io_add_failed(loop, n);
	/* The posts made before the wait returned; later ones wait for the
	 * next iteration. */
	struct pxi_post *posts = pxi_posts_take(loop);
	loop->ran_cb = false;
	loop->in_cb_window = true;
	if (loop->heaplen > 0)
		pxi_timers_run(loop);
	pxi_io_dispatch(loop, n);
	loop->in_cb_window = false;
	/* After the window: this iteration's events are all dispatched, so
	 * watchers the posts add or delete need no stale-event marks. */
	if (posts) {
		pxi_call_enter(loop);
		pxi_posts_run(loop, posts);
		pxi_call_leave(loop);
	}
	if (loop->etlen > 0 && loop->ran_cb)
		pxi_io_et_check(loop);
#ifdef PX_INVARIANTS
	pxi_loop_check(loop, true);
#endif
	return 0;
}

static bool alive(const px_loop *loop)
{
	/* Pending connects and acceptors are registered watchers; the
	 * wake-up fd's watcher is the one that does not count.  Signal
	 * watchers do not either. */
	PXI_ASSERT(loop->nwatch >= 1 && (loop->w[loop->wakefd[0]].flags & W_INTERNAL));
	return loop->nwatch > 1 || loop->ntimers > 0 || pxi_posts_pending(loop);
}

int px_loop_run(px_loop *loop, int mode)
{
	int rc = 0;

	if (!loop || (mode != PX_RUN_DEFAULT && mode != PX_RUN_ONCE && mode != PX_RUN_NOWAIT))
		return -EINVAL;
	if (loop->depth > 0 || loop->running)
		return -EBUSY;
	loop->running = true;
	loop->now_ns = pxi_clock_ns();
	loop->now_stale = false;
	/* Writes made outside the loop may have filled an idle ET socket. */
	if (loop->etlen > 0)
		pxi_io_et_check(loop);

	while (alive(loop)) {
		int timeout = 0;
		/* Callbacks take time: measure the next timer from now, not
		 * from before they ran. */
		if ((loop->ran_cb || loop->now_stale) && loop->heaplen > 0) {
			loop->now_ns = pxi_clock_ns();
			loop->now_stale = false;
		}
		if (mode != PX_RUN_NOWAIT && !loop->stop)
			timeout = ns_to_timeout(pxi_timers_next(loop));
		rc = iterate(loop, timeout);
		if (rc < 0 || loop->stop || mode != PX_RUN_DEFAULT)
			break;
	}
	loop->stop = false;
	loop->running = false;
	return rc;
}
