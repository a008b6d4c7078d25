/* bench/async: the mutex-protected queue the peers' drivers (and the
 * hand-written baseline) put next to their coalescing wake-up: producers
 * append under the mutex, the loop thread swaps the whole vector out under
 * the mutex and calls the items outside it (no allocation per message once
 * the vectors have grown). */
#include <stdio.h>
#include <stdlib.h>

#include "async.h"

void mq_init(struct mq *q)
{
	pthread_mutex_init(&q->mu, NULL);
	q->v = q->spare = NULL;
	q->n = q->cap = q->spare_cap = 0;
	q->batches = 0;
}

int mq_push(struct mq *q, async_fn *fn, void *arg)
{
	int was_empty;

	pthread_mutex_lock(&q->mu);
	if (q->n == q->cap) {
		size_t cap = q->cap ? 2 * q->cap : 256;
		struct mq_item *v = realloc(q->v, cap * sizeof *v);
		if (!v) {
			pthread_mutex_unlock(&q->mu);
			return -1;
		}
		q->v = v;
		q->cap = cap;
	}
	q->v[q->n].fn = fn;
	q->v[q->n].arg = arg;
	was_empty = q->n++ == 0;
	pthread_mutex_unlock(&q->mu);
	return was_empty;
}

void mq_drain(struct mq *q)
{
	struct mq_item *v;
	size_t n, cap;

	pthread_mutex_lock(&q->mu);
	v = q->v;
	n = q->n;
	cap = q->cap;
	q->v = q->spare;
	q->cap = q->spare_cap;
	q->n = 0;
	pthread_mutex_unlock(&q->mu);
	if (n)
		q->batches++;
	for (size_t i = 0; i < n; i++)
		v[i].fn(v[i].arg);
	q->spare = v;
	q->spare_cap = cap;
}

void mq_fini(struct mq *q)
{
	free(q->v);
	free(q->spare);
	pthread_mutex_destroy(&q->mu);
}
