/* px_loop_wake and px_loop_post: the loop's wake-up fd, and the posts other
 * threads leave for it.
 *
 * The protocol, with every atomic operation sequentially consistent:
 *  - a waker sets wake_pending; only the one that turned it from 0 to 1
 *    writes the fd, so that a pending wake costs no system call;
 *  - the loop, woken by the fd, drains it first and clears wake_pending
 *    second, then looks at the posts (and signal.c at its signals).
 * A waker that found wake_pending set did its own work (pushed a post,
 * recorded a signal) before that; the loop's clear comes after it, and the
 * loop looks at the posts after its clear, so it sees the work.  A waker
 * that comes after the clear writes the fd again, and the next wait returns
 * at once.  Clearing before draining would lose that write.
 *
 * Posts are a lock-free stack (one allocation per post, no lock shared with
 * the loop's thread).  Right after each wait the loop takes it whole and
 * reverses it, so that the posts of each thread run in the order they were
 * pushed, and runs them after that iteration's io callbacks: a post made
 * by a callback, even one of the same round, waits for the next iteration.
 * The wake-up fd's callback only drains it; a post it finds in the stack
 * after its clear was made since the wait, and it wakes the loop again.
 *
 * Nodes are recycled, because malloc in one thread and free in another
 * takes both slow paths every time: the loop keeps the nodes of the posts
 * it ran (up to RECYCLE_MAX) and publishes them as one batch in `spare`
 * whenever that is empty; a posting thread takes the whole batch
 * (exchange: no ABA) into a cache of its own (a pthread key, freed at
 * thread exit) and takes its nodes from there.  A node is plain memory, so
 * a thread's cache serves posts to any loop, and outlives the loop it came
 * from. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "core.h"

struct pxi_post {
	struct pxi_post *next;
	px_post_cb *cb;
	void *arg;
};

/* Nodes the loop keeps for reuse; the rest are freed. */
#define RECYCLE_MAX 4096

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static bool cache_ok;

static void free_chain(struct pxi_post *p)
{
	while (p) {
		struct pxi_post *next = p->next;
		free(p);
		p = next;
	}
}

static void cache_free(void *chain)
{
	free_chain(chain);
}

static void cache_init(void)
{
	cache_ok = pthread_key_create(&cache_key, cache_free) == 0;
}

/* A node for a post: from this thread's cache, else the loop's published
 * batch (which then becomes the cache), else malloc. */
static struct pxi_post *node_get(px_loop *loop)
{
	(void)pthread_once(&cache_once, cache_init);
	if (!cache_ok)
		return malloc(sizeof(struct pxi_post));
	struct pxi_post *c = pthread_getspecific(cache_key);
	if (!c && atomic_load_explicit(&loop->spare, memory_order_relaxed))
		c = atomic_exchange(&loop->spare, NULL);
	if (!c)
		return malloc(sizeof(struct pxi_post));
	if (pthread_setspecific(cache_key, c->next) != 0)
		free_chain(c->next); /* nowhere to keep them */
	return c;
}

/* The loop's thread: a node whose post has run. */
static void node_put(px_loop *loop, struct pxi_post *p)
{
	if (loop->nrecycled >= RECYCLE_MAX) {
		free(p);
		return;
	}
	p->next = loop->recycled;
	loop->recycled = p;
	loop->nrecycled++;
}

/* Publishes the kept nodes when the last batch has been taken.  Only the
 * loop's thread makes `spare` non-empty, so it needs no CAS. */
static void nodes_publish(px_loop *loop)
{
	if (!loop->recycled || atomic_load_explicit(&loop->spare, memory_order_relaxed))
		return;
	atomic_store_explicit(&loop->spare, loop->recycled, memory_order_release);
	loop->recycled = NULL;
	loop->nrecycled = 0;
}

struct pxi_post *pxi_posts_take(px_loop *loop)
{
	/* A load first: a loop nobody posts to keeps the line shared. */
	if (!atomic_load_explicit(&loop->posts, memory_order_relaxed))
		return NULL;
	struct pxi_post *p = atomic_exchange(&loop->posts, NULL), *fifo = NULL;

	while (p) {
		struct pxi_post *next = p->next;
		p->next = fifo;
		fifo = p;
		p = next;
	}
	return fifo;
}

void pxi_posts_run(px_loop *loop, struct pxi_post *fifo)
{
	while (fifo) {
		struct pxi_post *cur = fifo;
		px_post_cb *cb = cur->cb;
		void *arg = cur->arg;
		fifo = cur->next;
		node_put(loop, cur);
		loop->st.posts++;
		cb(loop, arg);
	}
	nodes_publish(loop);
}

static void on_wakefd(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)revents;
	(void)arg;
	/* The loop's own event is not one of the user's (the wait counted
	 * it; dispatch does not count this callback). */
	loop->st.events--;
	pxi_wakefd_drain(fd);
	atomic_store(&loop->wake_pending, 0);
	if (loop->on_wake)
		loop->on_wake(loop);
	/* Posts made after this iteration's wait run in the next one, which
	 * must then not sleep: one made since the wait whose poster found the
	 * wake pending (before the clear above) wrote nothing. */
	if (atomic_load(&loop->posts))
		(void)pxi_wake(loop);
}

int pxi_wake_init(px_loop *loop)
{
	int rc = pxi_wakefd_open(loop->wakefd);

	if (rc < 0)
		return rc;
	atomic_init(&loop->wake_pending, 0);
	atomic_init(&loop->sig_pending, 0);
	atomic_init(&loop->posts, NULL);
	atomic_init(&loop->spare, NULL);
	if ((rc = pxi_io_add_internal(loop, loop->wakefd[0], on_wakefd)) < 0) {
		pxi_wakefd_close(loop->wakefd);
		return rc;
	}
	return 0;
}

void pxi_wake_free(px_loop *loop)
{
	free_chain(atomic_exchange(&loop->posts, NULL));
	free_chain(atomic_exchange(&loop->spare, NULL));
	free_chain(loop->recycled);
	loop->recycled = NULL;
	loop->nrecycled = 0;
	pxi_wakefd_close(loop->wakefd);
}

int pxi_wake(px_loop *loop)
{
	/* A load first: while a wake is pending, wakers only read the
	 * cache line instead of fighting over it. */
	if (atomic_load(&loop->wake_pending) || atomic_exchange(&loop->wake_pending, 1))
		return 0;
	int saved = errno;
	int rc = pxi_wakefd_signal(loop->wakefd[1]);
	if (rc < 0)
		atomic_store(&loop->wake_pending, 0); /* the next waker tries again */
	errno = saved;
	return rc;
}

int px_loop_wake(px_loop *loop)
{
	return loop ? pxi_wake(loop) : -EINVAL;
}

int px_loop_post(px_loop *loop, px_post_cb *cb, void *arg)
{
	if (!loop || !cb)
		return -EINVAL;
	struct pxi_post *p = node_get(loop);
	if (!p)
		return -ENOMEM;
	p->cb = cb;
	p->arg = arg;
	p->next = atomic_load(&loop->posts);
	while (!atomic_compare_exchange_weak(&loop->posts, &p->next, p))
		;
	return pxi_wake(loop);
}
