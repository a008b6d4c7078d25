/* Invariant checks of a debug build (configure --enable-invariants): after
 * every iteration the loop's bookkeeping is compared with what it must be,
 * so that a broken precondition stops the test that broke it instead of
 * showing up later as a stray event or a corrupted heap. */
#include <config.h>

#ifdef PX_INVARIANTS
#include <stdio.h>
#include <stdlib.h>

#include "core.h"

void pxi_assert_fail(const char *cond, const char *file, int line)
{
	/* The one place where the library prints: a debug build stopping. */
	fprintf(stderr, "pollux: invariant failed at %s:%d: %s\n", file, line, cond);
	abort();
}

/* exact: every entry is marked, and each marked fd is listed once (the
 * change list); else entries may be left by deleted watchers (the ET list,
 * which skips them). */
static void check_list(const px_loop *loop, const int *v, int len, unsigned flag, bool exact)
{
	int marked = 0;

	for (int i = 0; i < len; i++)
		PXI_ASSERT(v[i] >= 0 && v[i] < loop->wcap && (!exact || (loop->w[v[i]].flags & flag)));
	for (int fd = 0; fd < loop->wcap; fd++)
		if (loop->w[fd].flags & flag)
			marked++;
	PXI_ASSERT(exact ? marked == len : marked <= len);
}

/* between: called between iterations (no round of callbacks under way). */
void pxi_loop_check(px_loop *loop, bool between)
{
	int nwatch = 0, nkernel = 0, norphans = 0, ninternal = 0;

	PXI_ASSERT(loop->wcap >= 0 && (loop->wcap == 0 || loop->w));
	for (int fd = 0; fd < loop->wcap; fd++) {
		const struct pxi_watch *w = &loop->w[fd];
		if (w->cb)
			nwatch++;
		if (w->kev)
			nkernel++;
		if (w->flags & W_ORPHAN)
			norphans++;
		if (w->flags & W_INTERNAL)
			ninternal++;
		/* A deleted watcher left the kernel at once. */
		PXI_ASSERT(w->cb || (!w->kev && !w->events && !w->lib && !w->fast));
		PXI_ASSERT(!w->cb || !(w->flags & W_GONE));
		/* A registration where a lost one may report is tagged; only
		 * persistent sets lose registrations. */
		PXI_ASSERT(!(w->flags & W_ORPHAN) || !w->kev || w->tag || loop->rebuild);
		PXI_ASSERT(loop->be->persistent || (!w->tag && !(w->flags & W_ORPHAN)));
		PXI_ASSERT(!(w->kev & PXK_LOST));
		PXI_ASSERT(!(w->events & ~PX_MASK) && !(w->lib & ~PX_WRITE));
		/* The fast path only for registrations the kernel holds. */
		PXI_ASSERT(!w->fast || (w->cb && w->kev && !w->tag && !w->lib &&
		                        !(w->kev & PX_ONESHOT) && !(w->flags & W_INTERNAL)));
		if (between)
			PXI_ASSERT(!(w->flags & (W_FRESH | W_GONE)));
		if (!(loop->be->kmodes & PX_ONESHOT))
			PXI_ASSERT(!(w->kev & (PX_ONESHOT | PXK_FIRED)));
	}
	PXI_ASSERT(nwatch == loop->nwatch);
	/* The wake-up fd, and only it, is internal, registered for reading
	 * in the kernel: a wake can never go unseen. */
	PXI_ASSERT(ninternal == 1 && loop->wakefd[0] >= 0 && loop->wakefd[0] < loop->wcap);
	PXI_ASSERT((loop->w[loop->wakefd[0]].flags & W_INTERNAL) &&
	           loop->w[loop->wakefd[0]].events == PX_READ &&
	           (loop->w[loop->wakefd[0]].kev & PX_READ));
	PXI_ASSERT(nkernel == loop->nkernel);
	PXI_ASSERT(norphans == loop->norphans);
	if (loop->be->count)
		PXI_ASSERT(loop->be->count(loop->bst) == loop->nkernel);
	PXI_ASSERT(loop->sqcap <= loop->wcap);
	for (int fd = 0; fd < loop->sqcap; fd++)
		PXI_ASSERT(!loop->sq[fd] || loop->w[fd].cb);

	check_list(loop, loop->chg, loop->chglen, W_DIRTY, true);
	check_list(loop, loop->etlist, loop->etlen, W_LISTED, false);
	PXI_ASSERT(loop->chglen <= loop->chgcap && loop->etlen <= loop->etcap);
	PXI_ASSERT(loop->failedlen <= loop->failedcap);
	for (int i = 0; i < loop->failedlen; i++)
		PXI_ASSERT(loop->failed[i] >= 0 && loop->failed[i] < loop->wcap);
	if (between)
		PXI_ASSERT(loop->freshlen == 0 && loop->depth == 0);
	PXI_ASSERT(loop->waitcap >= 0 && loop->waitcap <= loop->evcap);
	PXI_ASSERT(!loop->rebuild || loop->be->persistent);

	pxi_timers_check(loop);
	if (between)
		PXI_ASSERT((uint32_t)loop->heaplen == loop->ntimers);
}
#endif
