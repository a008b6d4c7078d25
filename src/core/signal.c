/* Signal watchers: px_signal_add and px_signal_del.
 *
 * A signal's disposition belongs to the process, so each signal has one
 * slot here, owned by at most one loop.  The library's handler only records
 * the signal in its slot and wakes the owner (pxi_wake: atomics and a
 * write(), async-signal-safe); the loop's wake-up hook, in the loop's thread,
 * runs the callbacks of the signals it finds recorded.  A recording is
 * cleared before its callback runs, so a delivery during the callback leads
 * to another one.
 *
 * px_signal_del restores the old disposition, then waits until no handler
 * that may still see the loop is running (inflight), so that the loop can be
 * freed right after. */
#include <config.h>

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

#ifndef NSIG
#ifdef _NSIG
#define NSIG _NSIG
#else
#define NSIG 65
#endif
#endif

struct slot {
	_Atomic(px_loop *) owner;
	atomic_int pending;  /* delivered, and its callback has not run yet */
	atomic_int inflight; /* handlers running for this signal */
	struct sigaction old; /* the disposition to restore; the owner's */
};

/* The process's signal state: zero-initialized, which atomics allow. */
static struct slot slots[NSIG];

struct pxi_signals {
	int n;     /* signals watched */
	pid_t pid; /* the process that installed them (fork: see free) */
	struct {
		px_signal_cb *cb; /* NULL: not watched by this loop */
		void *arg;
	} w[NSIG];
};

static void on_signal(int signo)
{
	int saved = errno;
	struct slot *s = &slots[signo];

	atomic_fetch_add(&s->inflight, 1);
	px_loop *loop = atomic_load(&s->owner);
	if (loop) {
		atomic_store(&s->pending, 1);
		atomic_store(&loop->sig_pending, 1);
		(void)pxi_wake(loop);
	}
	atomic_fetch_sub(&s->inflight, 1);
	errno = saved;
}

/* The loop's wake-up hook (loop->on_wake). */
static void run_signals(px_loop *loop)
{
	/* Most wake-ups are posts: scan the slots only when a handler ran.
	 * Cleared before the scan, so a signal recorded during it (or during
	 * a callback) sets it again for the next wake-up. */
	if (!atomic_load(&loop->sig_pending) || !atomic_exchange(&loop->sig_pending, 0))
		return;
	for (int signo = 1; signo < NSIG; signo++) {
		/* Re-read each time: a callback may add or delete watchers. */
		struct pxi_signals *sg = loop->sig;
		if (!sg->w[signo].cb || !atomic_load(&slots[signo].pending) ||
		    !atomic_exchange(&slots[signo].pending, 0))
			continue;
		loop->st.signals++;
		sg->w[signo].cb(loop, signo, sg->w[signo].arg);
	}
}

static bool valid(int signo)
{
	return signo > 0 && signo < NSIG && signo != SIGKILL && signo != SIGSTOP;
}

int px_signal_add(px_loop *loop, int signo, px_signal_cb *cb, void *arg)
{
	if (!loop || !cb || !valid(signo))
		return -EINVAL;
	if (!loop->sig && !(loop->sig = calloc(1, sizeof(*loop->sig))))
		return -ENOMEM;
	struct slot *s = &slots[signo];
	px_loop *owner = NULL;
	if (!atomic_compare_exchange_strong(&s->owner, &owner, loop))
		return owner == loop ? -EEXIST : -EBUSY;
	/* Only deliveries from now on count. */
	atomic_store(&s->pending, 0);

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	if (sigaction(signo, &sa, &s->old) < 0) {
		int err = errno;
		atomic_store(&s->owner, NULL);
		return -err;
	}
	struct pxi_signals *sg = loop->sig;
	sg->w[signo].cb = cb;
	sg->w[signo].arg = arg;
	if (sg->n++ == 0)
		sg->pid = getpid();
	loop->on_wake = run_signals;
	return 0;
}

/* forked: in a child of the process that installed the handler.  Only the
 * forking thread lives on there, so the inflight counts copied from the
 * parent may belong to handlers that will never finish. */
static int signal_del(px_loop *loop, int signo, bool forked)
{
	struct slot *s = &slots[signo];

	if (sigaction(signo, &s->old, NULL) < 0)
		return -errno;
	atomic_store(&s->owner, NULL);
	if (forked)
		atomic_store(&s->inflight, 0);
	/* A handler that saw the owner may still be waking the loop: it
	 * neither blocks nor waits, so this is short. */
	while (atomic_load(&s->inflight) > 0)
		sched_yield();
	struct pxi_signals *sg = loop->sig;
	sg->w[signo].cb = NULL;
	sg->w[signo].arg = NULL;
	if (--sg->n == 0)
		loop->on_wake = NULL;
	return 0;
}

int px_signal_del(px_loop *loop, int signo)
{
	if (!loop || signo <= 0 || signo >= NSIG)
		return -EINVAL;
	if (!loop->sig || !loop->sig->w[signo].cb)
		return -ENOENT;
	PXI_ASSERT(atomic_load(&slots[signo].owner) == loop);
	return signal_del(loop, signo, false);
}

void pxi_signals_free(px_loop *loop)
{
	struct pxi_signals *sg = loop->sig;

	if (!sg)
		return;
	bool forked = sg->n > 0 && getpid() != sg->pid;
	for (int signo = 1; signo < NSIG && sg->n > 0; signo++)
		if (sg->w[signo].cb && signal_del(loop, signo, forked) < 0) {
			/* sigaction cannot refuse what it accepted before;
			 * still, never leave the handler pointing here. */
			PXI_ASSERT(!"sigaction refused to restore a disposition");
			atomic_store(&slots[signo].owner, NULL);
		}
	free(sg);
	loop->sig = NULL;
	loop->on_wake = NULL;
}
