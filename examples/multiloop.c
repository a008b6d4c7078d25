/* multiloop: one loop per thread, signals on loop 0, graceful drain, counters
 * gathered with px_loop_post.  See multiloop.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include "excommon.h"
#include "multiloop.h"

/* After the drain deadline has forced the connections closed, how many more
 * seconds the loops get to report that they are done. */
#define ML_FORCE_GRACE_S 5

struct gather;

struct ml_server {
	const struct ml_app *app;
	const struct ml_options *o;
	struct ml_worker *w;
	int n;
	px_loop *main;        /* w[0].loop */
	long port;
	/* the main thread only: */
	bool draining;
	const char *reason;   /* what started the drain */
	const char *forced;   /* NULL, "deadline" or "second-signal" */
	int64_t deadline;     /* timer id, 0 when none */
	int deadline_fires;
	int ndone;            /* loops 1..n-1 that are done */
	struct gather *gathers;
	uint64_t t0;
};

/* One SIGHUP report being gathered: a slot per loop. */
struct gslot {
	struct gather *g;
	struct ml_worker *w;
	bool answered;
	struct ml_snap snap;
};

struct gather {
	struct ml_server *srv;
	struct gather *next;
	int pending;          /* slots not answered yet */
	struct gslot slot[];
};

/* ------------------------------------------------------------------------ */
/* Options                                                                    */

int ml_option(struct ml_options *o, int argc, char **argv, int *i)
{
	const char *a = argv[*i];
	const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;

	if (!strcmp(a, "--stats")) {
		o->stats = true;
		return 1;
	}
	if (strcmp(a, "--threads") && strcmp(a, "--drain-ms") && strcmp(a, "--port") &&
	    strcmp(a, "--host"))
		return 0;
	if (!v)
		return -1;
	++*i;
	if (!strcmp(a, "--host")) {
		o->host = strcmp(v, "any") ? v : NULL;
		return 1;
	}
	if (!strcmp(a, "--threads"))
		return ex_parse_long(v, 1, ML_MAX_THREADS, &o->threads) ? 1 : -2;
	if (!strcmp(a, "--drain-ms"))
		return ex_parse_long(v, 0, 3600L * 1000, &o->drain_ms) ? 1 : -2;
	return ex_parse_long(v, 0, 65535, &o->port) ? 1 : -2;
}

void ml_help(FILE *f, const struct ml_options *d)
{
	fprintf(f,
	        "  --port N               TCP port; 0: one the kernel picks (default %ld)\n"
	        "  --host ADDR|any        address or name to listen on; any: every address\n"
	        "                         (default %s)\n"
	        "  --threads N            N loops, one per thread, each with its own\n"
	        "                         SO_REUSEPORT listener on the port; 1 to %d\n"
	        "                         (default %ld)\n"
	        "  --drain-ms N           after SIGTERM/SIGINT, close what is still open\n"
	        "                         after N ms (default %ld)\n"
	        "  --stats                also print the counters line at exit (default off)\n"
	        "  -h, --help             this help\n",
	        d->port, d->host ? d->host : "any", ML_MAX_THREADS, d->threads, d->drain_ms);
}

void ml_help_signals(FILE *f, const char *name)
{
	fprintf(f,
	        "Signals: SIGTERM or SIGINT drains: stop accepting, close idle connections,\n"
	        "finish the others, then exit 0 with a summary line\n"
	        "  %s: exit reason=... drain=clean|deadline|second-signal ...\n"
	        "A second one, or the --drain-ms deadline, closes what is left.  SIGHUP\n"
	        "prints the counters of every loop summed, as one line\n"
	        "  %s: counters when=sighup ...\n",
	        name, name);
}

/* ------------------------------------------------------------------------ */
/* Counters                                                                   */

#define ML_FIELD(f) { #f, offsetof(struct px_loop_stats, f) }
static const struct {
	const char *name;
	size_t off;
} stat_fields[] = {
	ML_FIELD(iterations),     ML_FIELD(waits),          ML_FIELD(empty_wakeups),
	ML_FIELD(events),         ML_FIELD(io_callbacks),   ML_FIELD(timer_callbacks),
	ML_FIELD(stale_dropped),  ML_FIELD(closed_fds),     ML_FIELD(kernel_changes),
	ML_FIELD(accepted),       ML_FIELD(accept_backoffs), ML_FIELD(send_queued),
	ML_FIELD(posts),          ML_FIELD(signals),
};
#define NFIELDS (sizeof(stat_fields) / sizeof(stat_fields[0]))

static uint64_t *stat_at(struct px_loop_stats *st, size_t k)
{
	return (uint64_t *)((char *)st + stat_fields[k].off);
}

static void take_snapshot(struct ml_worker *w, struct ml_snap *s)
{
	memset(s, 0, sizeof(*s));
	px_loop_stats(w->loop, &s->st, sizeof(s->st));
	w->srv->app->snapshot(w, s->c);
}

static void combine(const struct ml_app *app, struct ml_snap *sum, const struct ml_snap *s)
{
	for (size_t k = 0; k < NFIELDS; k++)
		*stat_at(&sum->st, k) += *stat_at((struct px_loop_stats *)&s->st, k);
	for (int k = 0; k < app->ncounters; k++) {
		if (!app->counters[k].max)
			sum->c[k] += s->c[k];
		else if (s->c[k] > sum->c[k])
			sum->c[k] = s->c[k];
	}
}

static void print_app_counters(const struct ml_app *app, const struct ml_snap *sum)
{
	for (int k = 0; k < app->ncounters; k++)
		printf(" %s=%llu", app->counters[k].name, (unsigned long long)sum->c[k]);
}

/* "NAME: counters when=WHEN loops=N <px_loop_stats> <app counters>
 *  [accepted_per_loop=a,b,...]" from one snapshot per loop. */
static void print_counters(struct ml_server *s, const char *when, struct ml_snap *const *snaps)
{
	struct ml_snap sum;
	memset(&sum, 0, sizeof(sum));
	for (int i = 0; i < s->n; i++)
		combine(s->app, &sum, snaps[i]);
	printf("%s: counters when=%s loops=%d", s->app->name, when, s->n);
	for (size_t k = 0; k < NFIELDS; k++)
		printf(" %s=%llu", stat_fields[k].name, (unsigned long long)*stat_at(&sum.st, k));
	print_app_counters(s->app, &sum);
	if (s->n > 1) {
		printf(" accepted_per_loop=");
		for (int i = 0; i < s->n; i++)
			printf("%s%llu", i ? "," : "", (unsigned long long)snaps[i]->st.accepted);
	}
	printf("\n");
	fflush(stdout);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* px_loop_post, retried for a while when it runs out of memory (a lost post
 * would leave the other side waiting for the drain deadline).  Any other
 * error is px_loop_wake's: the post is queued and runs anyway. */
static int post(px_loop *loop, px_post_cb *cb, void *arg)
{
	int rc;
	for (int tries = 0; (rc = px_loop_post(loop, cb, arg)) == -ENOMEM && tries < 100; tries++) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return rc == -ENOMEM || rc == -EINVAL ? rc : 0;
}

/* ------------------------------------------------------------------------ */
/* SIGHUP: gathering the counters of every loop                               */

static void gather_finish(struct gather *g)
{
	struct ml_server *s = g->srv;
	struct ml_snap *snaps[ML_MAX_THREADS];
	for (int i = 0; i < s->n; i++)
		snaps[i] = &g->slot[i].snap;
	print_counters(s, "sighup", snaps);
	for (struct gather **p = &s->gathers; *p; p = &(*p)->next) {
		if (*p == g) {
			*p = g->next;
			break;
		}
	}
	free(g);
}

static void slot_answered(struct gslot *sl)
{
	sl->answered = true;
	if (--sl->g->pending == 0)
		gather_finish(sl->g);
}

/* Main thread: a loop's snapshot is back. */
static void snap_reply(px_loop *loop, void *arg)
{
	(void)loop;
	slot_answered(arg);
}

/* The loop's thread: take the snapshot, send it back to loop 0. */
static void snap_request(px_loop *loop, void *arg)
{
	struct gslot *sl = arg;
	(void)loop;
	take_snapshot(sl->w, &sl->snap);
	if (post(sl->w->srv->main, snap_reply, sl) < 0)
		fprintf(stderr, "%s: loop %d: cannot post its counters\n", sl->w->srv->app->name,
		        sl->w->idx);
}

static void gather_start(struct ml_server *s)
{
	struct gather *g = calloc(1, sizeof(*g) + (size_t)s->n * sizeof(g->slot[0]));
	if (!g) {
		fprintf(stderr, "%s: SIGHUP: out of memory\n", s->app->name);
		return;
	}
	g->srv = s;
	g->next = s->gathers;
	s->gathers = g;
	g->pending = 1; /* held until every request is out */
	for (int i = 0; i < s->n; i++) {
		struct gslot *sl = &g->slot[i];
		struct ml_worker *w = &s->w[i];
		sl->g = g;
		sl->w = w;
		/* Loop 0 too is asked with a post: a post runs after the
		 * iteration's io callbacks, so their counts are all in (inside
		 * this signal callback they may not be yet). */
		if (w->done) {
			sl->snap = w->final;
			sl->answered = true;
		} else if (post(w->loop, snap_request, sl) < 0) {
			sl->answered = true; /* zeros: better a partial report than none */
		} else {
			g->pending++;
		}
	}
	if (--g->pending == 0)
		gather_finish(g);
}

/* ------------------------------------------------------------------------ */
/* Draining                                                                   */

static void check_all_done(struct ml_server *s)
{
	if (!s->draining || !s->w[0].drained || s->ndone < s->n - 1)
		return;
	if (s->deadline > 0)
		px_timer_del(s->main, s->deadline);
	s->deadline = 0;
	px_loop_stop(s->main);
}

static void drain_tick(px_loop *loop, int64_t id, void *arg)
{
	struct ml_worker *w = arg;
	(void)loop;
	(void)id;
	if (!w->drained)
		w->srv->app->drain(w);
}

/* In the loop's thread: stop accepting, let the example close what is idle,
 * now and every ML_DRAIN_TICK_MS. */
static void worker_drain(struct ml_worker *w)
{
	if (w->draining)
		return;
	w->draining = true;
	if (w->lfd >= 0) {
		px_acceptor_del(w->loop, w->lfd);
		/* Closing a listener resets the connections in its accept queue,
		 * whose clients may have sent their request already: take them
		 * first (a bounded number), as connections to finish. */
		for (int k = 0; k < 1024; k++) {
			struct sockaddr_storage ss;
			socklen_t sl = sizeof(ss);
			int fd = px_accept(w->lfd, (struct sockaddr *)&ss, &sl);
			if (fd < 0)
				break;
			w->srv->app->on_accept(w->loop, w->lfd, fd, (struct sockaddr *)&ss, sl, w);
		}
		close(w->lfd);
		w->lfd = -1;
	}
	/* Without the timer (-ENOMEM) only the deadline ends what goes quiet. */
	int64_t id = px_timer_add(w->loop, ML_DRAIN_TICK_MS, ML_DRAIN_TICK_MS, drain_tick, w);
	w->drain_tick = id > 0 ? id : 0;
	w->srv->app->drain(w); /* may call ml_drained at once */
}

void ml_drained(struct ml_worker *w)
{
	if (w->drained)
		return;
	w->drained = true;
	if (w->drain_tick > 0)
		px_timer_del(w->loop, w->drain_tick);
	w->drain_tick = 0;
	if (w->idx == 0)
		check_all_done(w->srv);
	else
		px_loop_stop(w->loop); /* worker_main reports to loop 0 */
}

static void drain_post(px_loop *loop, void *arg)
{
	(void)loop;
	worker_drain(arg);
}

static void force_post(px_loop *loop, void *arg)
{
	struct ml_worker *w = arg;
	(void)loop;
	worker_drain(w);
	if (!w->drained)
		w->srv->app->force(w);
}

/* Main thread: close what is left everywhere. */
static void force_all(struct ml_server *s, const char *why)
{
	if (!s->forced)
		s->forced = why;
	for (int i = 1; i < s->n; i++)
		if (!s->w[i].done && post(s->w[i].loop, force_post, &s->w[i]) < 0)
			fprintf(stderr, "%s: cannot reach loop %d\n", s->app->name, i);
	force_post(s->main, &s->w[0]);
}

static void deadline_cb(px_loop *loop, int64_t id, void *arg)
{
	struct ml_server *s = arg;
	(void)loop;
	(void)id;
	if (s->deadline_fires++ == 0) {
		fprintf(stderr, "%s: drain deadline (%ld ms) passed: closing what is left\n",
		        s->app->name, s->o->drain_ms);
		force_all(s, "deadline");
	} else if (s->deadline_fires > ML_FORCE_GRACE_S) {
		/* A loop that does not stop after being told twice is a bug;
		 * leave without its cleanup rather than hang. */
		fprintf(stderr, "%s: %d of %d loops did not stop; exiting anyway\n", s->app->name,
		        s->n - 1 - s->ndone + (s->w[0].drained ? 0 : 1), s->n);
		fflush(NULL);
		_exit(2);
	}
}

static void begin_drain(struct ml_server *s, const char *reason)
{
	if (s->draining)
		return;
	s->draining = true;
	s->reason = reason;
	int64_t id = px_timer_add(s->main, (uint64_t)s->o->drain_ms, 1000, deadline_cb, s);
	if (id < 0) {
		fprintf(stderr, "%s: no drain deadline (%s): closing everything now\n", s->app->name,
		        strerror((int)-id));
		force_all(s, "deadline");
		return;
	}
	s->deadline = id;
	for (int i = 1; i < s->n; i++)
		if (!s->w[i].done && post(s->w[i].loop, drain_post, &s->w[i]) < 0)
			fprintf(stderr, "%s: cannot reach loop %d\n", s->app->name, i);
	worker_drain(&s->w[0]);
}

/* Main thread: a loop asked for the drain (ml_stop_all). */
static void stop_post(px_loop *loop, void *arg)
{
	struct ml_worker *w = arg;
	(void)loop;
	begin_drain(w->srv, w->stop_reason);
}

void ml_stop_all(struct ml_worker *w, const char *reason)
{
	if (w->stop_reason)
		return; /* asked already */
	w->stop_reason = reason;
	if (post(w->srv->main, stop_post, w) < 0)
		fprintf(stderr, "%s: %s: cannot reach loop 0\n", w->srv->app->name, reason);
}

static void on_signal(px_loop *loop, int signo, void *arg)
{
	struct ml_server *s = arg;
	(void)loop;
	if (signo == SIGHUP) {
		gather_start(s);
		return;
	}
	const char *name = signo == SIGTERM ? "SIGTERM" : "SIGINT";
	if (!s->draining) {
		printf("%s: %s: draining (deadline %ld ms)\n", s->app->name, name, s->o->drain_ms);
		fflush(stdout);
		begin_drain(s, name);
	} else if (!s->forced) {
		printf("%s: second %s: closing what is left\n", s->app->name, name);
		fflush(stdout);
		force_all(s, "second-signal");
	}
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                    */

/* Main thread: loop w has returned and w->final is set. */
static void worker_done(px_loop *loop, void *arg)
{
	struct ml_worker *w = arg;
	struct ml_server *s = w->srv;
	(void)loop;
	w->done = true;
	s->ndone++;
	/* Requests for counters that w's loop will never run. */
	for (struct gather *g = s->gathers, *next; g; g = next) {
		next = g->next;
		struct gslot *sl = &g->slot[w->idx];
		if (!sl->answered) {
			sl->snap = w->final;
			slot_answered(sl); /* may free g */
		}
	}
	if (!s->draining) {
		/* It stopped by itself (px_loop_run failed): stop everything. */
		fprintf(stderr, "%s: loop %d stopped: stopping the server\n", s->app->name, w->idx);
		begin_drain(s, "loop-stopped");
	}
	check_all_done(s);
}

static void worker_finish(struct ml_worker *w)
{
	take_snapshot(w, &w->final);
	w->srv->app->cleanup(w);
	if (w->lfd >= 0) {
		px_acceptor_del(w->loop, w->lfd);
		close(w->lfd);
		w->lfd = -1;
	}
}

static void *worker_main(void *arg)
{
	struct ml_worker *w = arg;
	int rc = px_loop_run(w->loop, PX_RUN_DEFAULT);
	if (rc < 0)
		fprintf(stderr, "%s: loop %d: px_loop_run: %s\n", w->srv->app->name, w->idx,
		        strerror(-rc));
	worker_finish(w);
	if (post(w->srv->main, worker_done, w) < 0)
		fprintf(stderr, "%s: loop %d: cannot report that it is done\n", w->srv->app->name,
		        w->idx);
	return NULL;
}

/* ------------------------------------------------------------------------ */

static long bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		return -1;
	return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
	                                      : ((struct sockaddr_in *)&ss)->sin_port);
}

static int setup(struct ml_server *s, void *states, size_t state_size)
{
	const struct ml_app *app = s->app;
	for (int i = 0; i < s->n; i++) {
		struct ml_worker *w = &s->w[i];
		w->idx = i;
		w->srv = s;
		w->lfd = -1;
		w->state = (char *)states + (size_t)i * state_size;
		w->loop = ex_loop_new(app->name);
		if (!w->loop)
			return -1;
		if (i == 0)
			s->main = w->loop;
		/* Loop 0 binds the port (an ephemeral one for --port 0); the
		 * others share it. */
		int fd = s->n > 1 ? px_listen_tcp_opts(s->o->host, (uint16_t)s->port, 0,
		                                       PX_LISTEN_REUSEPORT)
		                  : px_listen_tcp(s->o->host, (uint16_t)s->port, 0);
		if (fd < 0) {
			ex_net_error(app->name, s->n > 1 ? "listen (SO_REUSEPORT) on" : "listen on",
			             s->o->host, s->port, fd);
			return -1;
		}
		w->lfd = fd;
		if (i == 0 && (s->port = bound_port(fd)) < 0) {
			fprintf(stderr, "%s: getsockname: %s\n", app->name, strerror(errno));
			return -1;
		}
		int rc = px_acceptor_add(w->loop, fd, app->on_accept, w);
		if (rc == 0 && app->start)
			rc = app->start(w);
		if (rc < 0) {
			fprintf(stderr, "%s: setup: %s\n", app->name, strerror(-rc));
			return -1;
		}
	}
	static const int sigs[] = { SIGTERM, SIGINT, SIGHUP };
	for (size_t k = 0; k < sizeof(sigs) / sizeof(sigs[0]); k++) {
		int rc = px_signal_add(s->main, sigs[k], on_signal, s);
		if (rc < 0) {
			fprintf(stderr, "%s: px_signal_add(%d): %s\n", app->name, sigs[k], strerror(-rc));
			return -1;
		}
	}
	return 0;
}

int ml_run(const struct ml_app *app, const struct ml_options *o, void *states,
           size_t state_size, struct ml_snap *total)
{
	struct ml_server srv;
	struct ml_worker w[ML_MAX_THREADS];
	struct ml_server *s = &srv;
	int started = 1; /* loops running: 0 in this thread, then 1.. */
	int status = 0;

	memset(&srv, 0, sizeof(srv));
	memset(w, 0, sizeof(w));
	s->app = app;
	s->o = o;
	s->w = w;
	s->n = (int)o->threads;
	s->port = o->port;
	s->t0 = mono_ms();

	if (setup(s, states, state_size) < 0) {
		status = 1;
		goto out;
	}
	printf("%s: backend=%s port=%ld mode=%s threads=%d%s%s\n", app->name,
	       px_loop_backend(s->main), s->port, app->mode, s->n, app->info ? " " : "",
	       app->info ? app->info : "");
	fflush(stdout);
	for (; started < s->n; started++) {
		int rc = pthread_create(&w[started].thread, NULL, worker_main, &w[started]);
		if (rc != 0) {
			fprintf(stderr, "%s: pthread_create: %s\n", app->name, strerror(rc));
			/* Serve with what runs, but stop at once. */
			begin_drain(s, "thread-failed");
			break;
		}
	}
	/* Loops that never started are done already. */
	for (int i = started; i < s->n; i++) {
		w[i].done = true;
		s->ndone++;
	}

	int rc = px_loop_run(s->main, PX_RUN_DEFAULT);
	if (rc < 0) {
		fprintf(stderr, "%s: px_loop_run: %s\n", app->name, strerror(-rc));
		status = 1;
	}
	if (!s->w[0].drained || s->ndone < s->n - 1) {
		/* Returned before everything drained (an error): make the other
		 * loops stop, and wait for them below. */
		s->draining = true;
		force_all(s, s->forced ? s->forced : "error");
	}
	for (int i = 1; i < started; i++)
		pthread_join(w[i].thread, NULL);
	worker_finish(&w[0]);

	struct ml_snap sum;
	struct ml_snap *snaps[ML_MAX_THREADS];
	memset(&sum, 0, sizeof(sum));
	for (int i = 0; i < s->n; i++) {
		snaps[i] = &w[i].final;
		combine(app, &sum, &w[i].final);
	}
	printf("%s: exit reason=%s drain=%s threads=%d elapsed_ms=%llu", app->name,
	       s->reason ? s->reason : "none", s->forced ? s->forced : "clean", s->n,
	       (unsigned long long)(mono_ms() - s->t0));
	print_app_counters(app, &sum);
	printf("\n");
	fflush(stdout);
	if (o->stats)
		print_counters(s, "exit", snaps);
	if (total)
		*total = sum;
out:
	while (s->gathers) {
		struct gather *g = s->gathers;
		s->gathers = g->next;
		free(g);
	}
	/* Loop 0 last: freeing it restores the signal dispositions, and the
	 * other loops post to it until they are done. */
	for (int i = s->n - 1; i >= 0; i--) {
		if (w[i].lfd >= 0)
			close(w[i].lfd);
		px_loop_free(w[i].loop);
	}
	return status;
}
