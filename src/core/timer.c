#include <config.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include "core.h"

/* Timers live in a slab of slots (O(1) lookup by id) and a binary min-heap of
 * (due, seq, slot) ordered by due time, then creation.  An id is
 * (generation << 32 | slot); a slot's generation only grows and a slot whose
 * generation would leave 31 bits is retired, so ids are never reused. */

#define GEN_MAX 0x7fffffffu
#define NO_HEAP UINT32_MAX

struct pxi_heap_node {
	uint64_t due;
	uint64_t seq;
	uint32_t slot;
};

struct pxi_timer_slot {
	uint64_t due;
	uint64_t repeat_ns;
	uint64_t seq; /* creation order, the tie-break between equal due times */
	px_timer_cb *cb; /* NULL: slot free */
	void *arg;
	uint32_t gen;
	uint32_t heap; /* index in the heap, NO_HEAP while being fired */
	uint32_t next_free;
};

static uint64_t add_sat(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t ms_to_ns(uint64_t ms)
{
	return ms > UINT64_MAX / 1000000u ? UINT64_MAX : ms * 1000000u;
}

static bool node_less(const struct pxi_heap_node *a, const struct pxi_heap_node *b)
{
	return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_set(px_loop *loop, uint32_t i, struct pxi_heap_node n)
{
	loop->heap[i] = n;
	loop->slots[n.slot].heap = i;
}

static void heap_up(px_loop *loop, uint32_t i)
{
	struct pxi_heap_node n = loop->heap[i];

	while (i > 0) {
		uint32_t parent = (i - 1) / 2;
		if (!node_less(&n, &loop->heap[parent]))
			break;
		heap_set(loop, i, loop->heap[parent]);
		i = parent;
	}
	heap_set(loop, i, n);
}

static void heap_down(px_loop *loop, uint32_t i)
{
	uint32_t len = (uint32_t)loop->heaplen;
	struct pxi_heap_node n = loop->heap[i];

	for (;;) {
		uint32_t c = 2 * i + 1;
		if (c >= len)
			break;
		if (c + 1 < len && node_less(&loop->heap[c + 1], &loop->heap[c]))
			c++;
		if (!node_less(&loop->heap[c], &n))
			break;
		heap_set(loop, i, loop->heap[c]);
		i = c;
	}
	heap_set(loop, i, n);
}

/* The caller has reserved room (heapcap >= ntimers). */
static void heap_push(px_loop *loop, uint32_t slot)
{
	PXI_ASSERT(loop->heaplen < loop->heapcap);
	uint32_t i = (uint32_t)loop->heaplen++;
	loop->heap[i] = (struct pxi_heap_node){ loop->slots[slot].due, loop->slots[slot].seq, slot };
	heap_up(loop, i);
}

static void heap_remove(px_loop *loop, uint32_t i)
{
	uint32_t last = (uint32_t)--loop->heaplen;

	loop->slots[loop->heap[i].slot].heap = NO_HEAP;
	if (i == last)
		return;
	heap_set(loop, i, loop->heap[last]);
	if (i > 0 && node_less(&loop->heap[i], &loop->heap[(i - 1) / 2]))
		heap_up(loop, i);
	else
		heap_down(loop, i);
}

static int slot_alloc(px_loop *loop, uint32_t *out)
{
	if (loop->freeslot != UINT32_MAX) {
		*out = loop->freeslot;
		loop->freeslot = loop->slots[*out].next_free;
		return 0;
	}
	if (loop->nslots == loop->slotcap) {
		if (loop->slotcap >= UINT32_MAX / 2)
			return -ENOMEM;
		uint32_t cap = loop->slotcap ? loop->slotcap * 2 : 16;
		struct pxi_timer_slot *s = realloc(loop->slots, (size_t)cap * sizeof(*s));
		if (!s)
			return -ENOMEM;
		loop->slots = s;
		loop->slotcap = cap;
	}
	*out = loop->nslots++;
	loop->slots[*out].gen = 0;
	return 0;
}

static void slot_free(px_loop *loop, uint32_t slot)
{
	struct pxi_timer_slot *s = &loop->slots[slot];

	s->cb = NULL;
	s->arg = NULL;
	s->heap = NO_HEAP;
	loop->ntimers--;
	if (s->gen >= GEN_MAX)
		return; /* retired: its ids are spent */
	s->next_free = loop->freeslot;
	loop->freeslot = slot;
}

static struct pxi_timer_slot *slot_of(px_loop *loop, int64_t id, uint32_t *slot)
{
	if (id <= 0)
		return NULL;
	uint32_t i = (uint32_t)(id & 0xffffffff);
	uint32_t gen = (uint32_t)(id >> 32);
	if (i >= loop->nslots)
		return NULL;
	struct pxi_timer_slot *s = &loop->slots[i];
	if (!s->cb || s->gen != gen)
		return NULL;
	*slot = i;
	return s;
}

/* Room for every timer, fired or pending, in the heap and in the list of
 * timers being fired: re-pushing a repeating timer after it fired, and
 * collecting the due ones, then never allocate (earlier callbacks of the same
 * round may have added timers meanwhile). */
/* Grows array *p of *cap elements of elem bytes to hold n; 0 or -ENOMEM. */
static int grow(void *p, int *cap, uint32_t n, size_t elem)
{
	if ((uint32_t)*cap >= n)
		return 0;
	uint32_t ncap = *cap ? (uint32_t)*cap : 16;
	while (ncap < n)
		ncap *= 2;
	if (ncap > INT_MAX)
		return -ENOMEM;
	void *a = realloc(*(void **)p, (size_t)ncap * elem);
	if (!a)
		return -ENOMEM;
	*(void **)p = a;
	*cap = (int)ncap;
	return 0;
}

static int reserve(px_loop *loop, uint32_t n)
{
	int rc = grow(&loop->heap, &loop->heapcap, n, sizeof(*loop->heap));

	return rc < 0 ? rc : grow(&loop->due, &loop->duecap, n, sizeof(*loop->due));
}

int64_t px_timer_add(px_loop *loop, uint64_t after_ms, uint64_t repeat_ms, px_timer_cb *cb,
                     void *arg)
{
	uint32_t slot;
	int rc;

	if (!loop || !cb)
		return -EINVAL;
	if ((rc = reserve(loop, loop->ntimers + 1)) < 0)
		return rc;
	rc = slot_alloc(loop, &slot);
	if (rc < 0)
		return rc;
	struct pxi_timer_slot *s = &loop->slots[slot];
	s->gen++;
	s->due = add_sat(pxi_clock_ns(), ms_to_ns(after_ms));
	s->repeat_ns = ms_to_ns(repeat_ms);
	s->seq = ++loop->timer_seq;
	s->cb = cb;
	s->arg = arg;
	loop->ntimers++;
	heap_push(loop, slot);
	return (int64_t)((uint64_t)s->gen << 32 | slot);
}

int px_timer_del(px_loop *loop, int64_t id)
{
	uint32_t slot;

	if (!loop)
		return -EINVAL;
	struct pxi_timer_slot *s = slot_of(loop, id, &slot);
	if (!s)
		return -ENOENT;
	if (s->heap != NO_HEAP)
		heap_remove(loop, s->heap);
	slot_free(loop, slot);
	return 0;
}

int pxi_timer_restart(px_loop *loop, int64_t id, uint64_t after_ms)
{
	uint32_t slot;
	struct pxi_timer_slot *s = slot_of(loop, id, &slot);

	if (!s || s->heap == NO_HEAP)
		return -ENOENT;
	heap_remove(loop, s->heap);
	s->due = add_sat(pxi_clock_ns(), ms_to_ns(after_ms));
	s->seq = ++loop->timer_seq;
	heap_push(loop, slot); /* the room it just left */
	return 0;
}

uint64_t pxi_timers_next(px_loop *loop)
{
	if (loop->heaplen == 0)
		return UINT64_MAX;
	uint64_t due = loop->heap[0].due;
	return due <= loop->now_ns ? 0 : due - loop->now_ns;
}

/* Collect every timer due now before running any, so that timers added or
 * re-armed by these callbacks wait for the next iteration. */
void pxi_timers_run(px_loop *loop)
{
	uint64_t now = loop->now_ns;

	loop->duelen = 0;
	while (loop->heaplen > 0 && loop->heap[0].due <= now) {
		uint32_t slot = loop->heap[0].slot;
		PXI_ASSERT(loop->duelen < loop->duecap); /* reserve() */
		loop->due[loop->duelen++] = (int64_t)((uint64_t)loop->slots[slot].gen << 32 | slot);
		heap_remove(loop, 0);
	}

	for (int i = 0; i < loop->duelen; i++) {
		int64_t id = loop->due[i];
		uint32_t slot;
		struct pxi_timer_slot *s = slot_of(loop, id, &slot);
		if (!s || s->heap != NO_HEAP)
			continue; /* deleted by an earlier callback */
		px_timer_cb *cb = s->cb;
		void *arg = s->arg;
		if (s->repeat_ns) {
			uint64_t next = add_sat(s->due, s->repeat_ns);
			if (next <= now) {
				/* Fired late: this firing stands for every period
				 * that has passed; the next is the first one ahead.
				 * (Periods that pass while the callback runs are
				 * caught up by one firing in the next iteration.) */
				uint64_t k = (now - s->due) / s->repeat_ns + 1;
				next = s->due + k * s->repeat_ns;
			}
			s->due = next;
			heap_push(loop, slot); /* reserve() kept room for it */
		} else {
			slot_free(loop, slot);
		}
		loop->st.timer_callbacks++;
		pxi_call_enter(loop);
		cb(loop, id, arg);
		pxi_call_leave(loop);
	}
	loop->duelen = 0;
}

void pxi_timers_free(px_loop *loop)
{
	free(loop->heap);
	free(loop->slots);
	free(loop->due);
	loop->heap = NULL;
	loop->slots = NULL;
	loop->due = NULL;
	loop->heaplen = loop->heapcap = loop->duelen = loop->duecap = 0;
	loop->nslots = loop->slotcap = 0;
	loop->freeslot = UINT32_MAX;
	loop->ntimers = 0;
}

#ifdef PX_INVARIANTS
void pxi_timers_check(px_loop *loop)
{
	uint32_t live = 0;

	PXI_ASSERT(loop->heaplen >= 0 && (uint32_t)loop->heaplen <= loop->ntimers);
	PXI_ASSERT(loop->ntimers <= (uint32_t)loop->heapcap);
	PXI_ASSERT(loop->ntimers <= (uint32_t)loop->duecap || loop->ntimers == 0);
	PXI_ASSERT(loop->nslots <= loop->slotcap);
	for (int i = 0; i < loop->heaplen; i++) {
		const struct pxi_heap_node *n = &loop->heap[i];
		PXI_ASSERT(n->slot < loop->nslots);
		const struct pxi_timer_slot *s = &loop->slots[n->slot];
		PXI_ASSERT(s->cb && s->heap == (uint32_t)i && s->due == n->due && s->seq == n->seq);
		if (i > 0)
			PXI_ASSERT(!node_less(n, &loop->heap[(i - 1) / 2]));
	}
	for (uint32_t i = 0; i < loop->nslots; i++)
		if (loop->slots[i].cb)
			live++;
	PXI_ASSERT(live == loop->ntimers);
}
#endif
