/* resolve-pool: blocking work handed to a thread pool, results posted back
 * to the loop with px_loop_post.
 *
 *   resolve-pool [--workers K] [--et] [--port N] [--host ADDR|any]
 *                [--drain-ms N] [--stats]
 *
 * A line-oriented TCP service (default 127.0.0.1 port 7070).  Each line is
 * one request, each request gets one reply line, and replies come in the
 * order of the requests (a connection may send many lines at once):
 *   resolve NAME   "resolve NAME: ADDR ADDR ..." (getaddrinfo, numeric
 *                  addresses, each once) or "resolve NAME: error: ..."
 *   NAME           (a line of one word that is no command) the same
 *   prime N        "prime N: C": C primes <= N, counted by trial division,
 *                  a deliberately slow computation (N <= 1000000000)
 *   sleep MS       "sleep MS: done" after MS milliseconds (<= 60000)
 *   stats          the loop's counters, answered by the loop itself
 *   quit           the server closes the connection after the replies to
 *                  the requests before it
 * anything else gets "error: ...".  getaddrinfo, prime and sleep block, so
 * the loop never runs them: it queues a job for a pool of K worker threads
 * (--workers, default 4).  The pool's queue is a list under the pool's own
 * mutex and condition variable: the loop thread holds the mutex only to
 * append a job and never waits on the condition.  A worker takes a job, runs
 * it, and hands it back with px_loop_post; the post's callback runs in the
 * loop's thread, which sends the reply with px_send once the replies before
 * it are out.  No lock is shared with the loop for the results.
 * Back-pressure: a connection with 32 jobs at the pool is not read until
 * one comes back.  A connection that closes while its jobs run leaves them
 * to finish (prime and sleep notice and stop early); its memory is freed
 * when the last one is back.
 *
 * SIGTERM or SIGINT: graceful stop.  The listener is closed and the
 * connections are no longer read; requests already read are answered, then
 * each connection is closed; then the pool is stopped and its threads
 * joined, and the server exits 0 with a summary line on stdout
 * ("resolve-pool: exit reason=SIGTERM drain=clean workers=K elapsed_ms=T
 * connections=C requests=R replies=P cancelled=X dropped=D").  A second
 * signal, or the drain deadline (--drain-ms, default 5000), cancels the
 * jobs (prime and sleep stop at once and reply "cancelled"; a getaddrinfo
 * that is under way cannot be stopped and is waited for) and closes the
 * connections (counted in dropped).  SIGHUP prints the loop's counters
 * (px_loop_stats and the counters above) as one "resolve-pool: counters
 * when=sighup ..." line on stdout; --stats prints it at exit too.
 * Runs on the backend named by $POLLUX_BACKEND. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include "excommon.h"
#include "pollux.h"

#define LINE_MAX_LEN  1024
#define REPLY_MAX     1024
#define NAME_MAX_LEN  253
#define MAX_INFLIGHT  32     /* jobs at the pool per connection */
#define MAX_WORKERS   64
#define PRIME_MAX     1000000000UL
#define SLEEP_MAX     60000UL

enum kind { J_NOW, J_RESOLVE, J_PRIME, J_SLEEP };

struct conn;

struct job {
	struct job *qnext;     /* the pool's queue (under pool.mu) */
	struct job *cnext;     /* the connection's replies, in request order */
	struct conn *c;
	enum kind kind;
	unsigned long n;
	bool done;             /* back in the loop (loop thread) */
	atomic_bool abandoned; /* its connection is gone: stop early */
	bool cancelled;
	char name[NAME_MAX_LEN + 1];
	char reply[REPLY_MAX]; /* a whole line, "\n" included */
};

struct conn {
	struct conn *prev, *next;
	int fd;                /* -1 once closed (jobs still out) */
	bool reading;          /* PX_READ armed */
	bool eof, quit;        /* no more requests: close after the replies */
	int inflight;          /* jobs at the pool */
	struct job *head, *tail;
	size_t inlen;
	char in[LINE_MAX_LEN + 1];
};

/* The loop's state: only the loop's thread touches it. */
static struct {
	px_loop *loop;
	int lfd;
	bool et, stats;
	long drain_ms;
	struct conn *conns;   /* open ones, and closed ones with jobs out */
	size_t nconns;
	long jobs_out;        /* handed to the pool, not back yet */
	bool draining;
	const char *reason, *forced;
	int64_t deadline;
	int deadline_fires;
	uint64_t connections, requests, replies, cancelled, dropped;
	uint64_t t0;
} S = { .lfd = -1 };

/* The pool: its queue and flags are under mu. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t work;  /* a job is queued, or stop */
	pthread_cond_t wake;  /* cancel or abandon: sleeping jobs re-check */
	struct job *head, *tail;
	bool stop;            /* workers leave once the queue is empty */
	atomic_bool cancel;   /* jobs stop early (read without the lock too) */
	pthread_t th[MAX_WORKERS];
	int n;
} P = { .mu = PTHREAD_MUTEX_INITIALIZER,
	.work = PTHREAD_COND_INITIALIZER,
	.wake = PTHREAD_COND_INITIALIZER };

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------ */
/* The pool's side: runs in the worker threads                               */

static bool should_stop(struct job *j)
{
	return atomic_load(&P.cancel) || atomic_load(&j->abandoned);
}

/* Trial division, on purpose: slow enough to be worth a thread. */
static void run_prime(struct job *j)
{
	unsigned long n = j->n, count = n >= 2;
	for (unsigned long k = 3; k <= n; k += 2) {
		if ((k & 4095) == 3 && should_stop(j)) {
			j->cancelled = true;
			snprintf(j->reply, sizeof(j->reply), "prime %lu: cancelled\n", n);
			return;
		}
		bool prime = true;
		for (unsigned long d = 3; d * d <= k; d += 2) {
			if (k % d == 0) {
				prime = false;
				break;
			}
		}
		count += prime;
	}
	snprintf(j->reply, sizeof(j->reply), "prime %lu: %lu\n", n, count);
}

static void run_sleep(struct job *j)
{
	uint64_t end = mono_ms() + j->n, now;
	pthread_mutex_lock(&P.mu);
	while (!should_stop(j) && (now = mono_ms()) < end) {
		/* The condition variable's clock is CLOCK_REALTIME (macOS has no
		 * pthread_condattr_setclock); the monotonic clock decides. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t left = end - now;
		ts.tv_sec += (time_t)(left / 1000);
		ts.tv_nsec += (long)(left % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&P.wake, &P.mu, &ts);
	}
	pthread_mutex_unlock(&P.mu);
	j->cancelled = mono_ms() < end;
	snprintf(j->reply, sizeof(j->reply), "sleep %lu: %s\n", j->n,
	         j->cancelled ? "cancelled" : "done");
}

static void run_resolve(struct job *j)
{
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int rc = getaddrinfo(j->name, NULL, &hints, &res);
	if (rc != 0) {
		snprintf(j->reply, sizeof(j->reply), "resolve %s: error: %s\n", j->name,
		         rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return;
	}
	size_t len = (size_t)snprintf(j->reply, sizeof(j->reply), "resolve %s:", j->name);
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		char host[NI_MAXHOST];
		if (getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof(host), NULL, 0,
		                NI_NUMERICHOST) != 0)
			continue;
		/* Each address once (one per socket type is asked, but a name can
		 * be listed twice in /etc/hosts). */
		char word[NI_MAXHOST + 2];
		snprintf(word, sizeof(word), " %s ", host);
		j->reply[len] = ' ';
		j->reply[len + 1] = '\0';
		bool seen = strstr(j->reply, word) != NULL;
		j->reply[len] = '\0';
		if (seen)
			continue;
		size_t hl = strlen(host);
		if (len + 1 + hl + 2 > sizeof(j->reply))
			break; /* the line is full: the rest is left out */
		j->reply[len++] = ' ';
		memcpy(j->reply + len, host, hl + 1);
		len += hl;
	}
	freeaddrinfo(res);
	j->reply[len++] = '\n';
	j->reply[len] = '\0';
}

static void job_done(px_loop *loop, void *arg);

static void *pool_main(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&P.mu);
		while (!P.head && !P.stop)
			pthread_cond_wait(&P.work, &P.mu);
		struct job *j = P.head;
		if (j) {
			P.head = j->qnext;
			if (!P.head)
				P.tail = NULL;
		}
		pthread_mutex_unlock(&P.mu);
		if (!j)
			return NULL; /* stopped, nothing left */

		if (j->kind == J_PRIME)
			run_prime(j);
		else if (j->kind == J_SLEEP)
			run_sleep(j);
		else
			run_resolve(j);

		/* Back to the loop.  -ENOMEM posts nothing: try again a little
		 * later (the loop would otherwise wait for this job forever).
		 * Any other error is px_loop_wake's: the post is queued. */
		int rc, tries = 0;
		while ((rc = px_loop_post(S.loop, job_done, j)) == -ENOMEM && tries++ < 1000) {
			struct timespec ts = { 0, 10 * 1000 * 1000 };
			nanosleep(&ts, NULL);
		}
		if (rc == -ENOMEM)
			fprintf(stderr, "resolve-pool: a job's result is lost (out of memory)\n");
	}
}

/* Loop thread: hand a job to the pool. */
static void pool_push(struct job *j)
{
	pthread_mutex_lock(&P.mu);
	if (P.tail)
		P.tail->qnext = j;
	else
		P.head = j;
	P.tail = j;
	pthread_cond_signal(&P.work);
	pthread_mutex_unlock(&P.mu);
}

/* Loop thread: running jobs stop early from now on. */
static void pool_cancel(void)
{
	pthread_mutex_lock(&P.mu);
	atomic_store(&P.cancel, true);
	pthread_cond_broadcast(&P.wake);
	pthread_mutex_unlock(&P.mu);
}

static void pool_stop_and_join(void)
{
	pthread_mutex_lock(&P.mu);
	P.stop = true;
	pthread_cond_broadcast(&P.work);
	pthread_mutex_unlock(&P.mu);
	for (int i = 0; i < P.n; i++)
		pthread_join(P.th[i], NULL);
	P.n = 0;
}

/* ------------------------------------------------------------------------ */
/* The loop's side                                                            */

static void format_counters(char *buf, size_t size, const char *when)
{
	struct px_loop_stats st;
	memset(&st, 0, sizeof(st));
	px_loop_stats(S.loop, &st, sizeof(st));
	snprintf(buf, size,
	         "counters when=%s loops=1 iterations=%llu waits=%llu empty_wakeups=%llu "
	         "events=%llu io_callbacks=%llu timer_callbacks=%llu stale_dropped=%llu "
	         "closed_fds=%llu kernel_changes=%llu accepted=%llu accept_backoffs=%llu "
	         "send_queued=%llu posts=%llu signals=%llu connections=%llu requests=%llu "
	         "replies=%llu cancelled=%llu dropped=%llu jobs_out=%ld",
	         when, (unsigned long long)st.iterations, (unsigned long long)st.waits,
	         (unsigned long long)st.empty_wakeups, (unsigned long long)st.events,
	         (unsigned long long)st.io_callbacks, (unsigned long long)st.timer_callbacks,
	         (unsigned long long)st.stale_dropped, (unsigned long long)st.closed_fds,
	         (unsigned long long)st.kernel_changes, (unsigned long long)st.accepted,
	         (unsigned long long)st.accept_backoffs, (unsigned long long)st.send_queued,
	         (unsigned long long)st.posts, (unsigned long long)st.signals,
	         (unsigned long long)S.connections, (unsigned long long)S.requests,
	         (unsigned long long)S.replies, (unsigned long long)S.cancelled,
	         (unsigned long long)S.dropped, S.jobs_out);
}

static void print_counters(const char *when)
{
	char line[1024];
	format_counters(line, sizeof(line), when);
	printf("resolve-pool: %s\n", line);
	fflush(stdout);
}

static void check_drained(void)
{
	if (!S.draining || S.nconns > 0)
		return;
	if (S.deadline > 0)
		px_timer_del(S.loop, S.deadline);
	S.deadline = 0;
	px_loop_stop(S.loop);
}

static void conn_free(struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		S.conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	S.nconns--;
	free(c);
	check_drained();
}

/* Closes the socket; the connection's memory goes with its last job. */
static void conn_close(struct conn *c)
{
	if (c->fd >= 0) {
		px_io_del(S.loop, c->fd);
		close(c->fd);
		c->fd = -1;
	}
	bool wake = false;
	for (struct job *j = c->head, *next; j; j = next) {
		next = j->cnext;
		if (j->done) {
			free(j);
		} else {
			atomic_store(&j->abandoned, true);
			wake |= j->kind == J_SLEEP;
		}
	}
	c->head = c->tail = NULL;
	if (wake) {
		pthread_mutex_lock(&P.mu);
		pthread_cond_broadcast(&P.wake);
		pthread_mutex_unlock(&P.mu);
	}
	if (c->inflight == 0)
		conn_free(c);
}

static int set_reading(struct conn *c, bool on)
{
	if (c->reading == on)
		return 0;
	int rc = px_io_mod(S.loop, c->fd, on ? PX_READ | (S.et ? PX_ET : 0) : 0);
	if (rc == 0)
		c->reading = on;
	return rc;
}

/* Done with c once no request is coming (end of file, quit, draining), no
 * job is out, every reply is written and the kernel took it.  False when it
 * closed c. */
static bool maybe_close(struct conn *c)
{
	if (c->fd < 0 || !(c->eof || c->quit || S.draining) || c->inflight > 0 || c->head ||
	    px_send_pending(S.loop, c->fd) > 0)
		return true;
	/* Requests that were never read: discard them, so that close()
	 * sends FIN and not RST (which could destroy replies in flight). */
	char sink[512];
	while (recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT) > 0)
		;
	shutdown(c->fd, SHUT_WR);
	conn_close(c);
	return false;
}

/* Writes the replies that are ready, in request order.  False when it
 * closed c. */
static bool flush_replies(struct conn *c)
{
	while (c->head && c->head->done) {
		struct job *j = c->head;
		c->head = j->cnext;
		if (!c->head)
			c->tail = NULL;
		int rc = px_send(S.loop, c->fd, j->reply, strlen(j->reply));
		free(j);
		S.replies++;
		if (rc < 0) {
			conn_close(c);
			return false;
		}
	}
	return true;
}

static struct job *job_new(struct conn *c, enum kind kind)
{
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->c = c;
	j->kind = kind;
	atomic_init(&j->abandoned, false);
	if (c->tail)
		c->tail->cnext = j;
	else
		c->head = j;
	c->tail = j;
	if (kind == J_NOW) {
		j->done = true;
	} else {
		c->inflight++;
		S.jobs_out++;
	}
	return j;
}

static bool parse_ulong(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	if (!*s || *s == '-' || *s == '+')
		return false;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || *end || v > max)
		return false;
	*out = v;
	return true;
}

/* One request line (without its "\n").  False when out of memory. */
static bool handle_line(struct conn *c, char *line)
{
	size_t len = strlen(line);
	if (len > 0 && line[len - 1] == '\r')
		line[--len] = '\0';
	char *cmd = line + strspn(line, " \t");
	if (!*cmd)
		return true; /* empty line: no request */
	char *arg = cmd + strcspn(cmd, " \t");
	if (*arg)
		*arg++ = '\0';
	arg += strspn(arg, " \t");
	char *tail = arg + strcspn(arg, " \t");
	bool extra = *(tail + strspn(tail, " \t")) != '\0';
	*tail = '\0';

	S.requests++;
	if (!strcmp(cmd, "quit") && !*arg) {
		c->quit = true;
		return true;
	}
	enum kind kind = J_NOW;
	const char *err = NULL;
	unsigned long n = 0;
	const char *name = NULL;
	if (extra) {
		err = "one argument at most";
	} else if (!strcmp(cmd, "stats") && !*arg) {
		kind = J_NOW;
	} else if (!strcmp(cmd, "prime")) {
		if (parse_ulong(arg, PRIME_MAX, &n))
			kind = J_PRIME;
		else
			err = "prime N: N from 0 to 1000000000";
	} else if (!strcmp(cmd, "sleep")) {
		if (parse_ulong(arg, SLEEP_MAX, &n))
			kind = J_SLEEP;
		else
			err = "sleep MS: MS from 0 to 60000";
	} else if (!strcmp(cmd, "resolve") || !*arg) {
		name = !strcmp(cmd, "resolve") ? arg : cmd;
		if (!*name)
			err = "resolve NAME: a name is missing";
		else if (strlen(name) > NAME_MAX_LEN)
			err = "resolve NAME: the name is too long";
		else
			kind = J_RESOLVE;
	} else {
		err = "unknown request (resolve NAME, prime N, sleep MS, stats, quit)";
	}

	struct job *j = job_new(c, err ? J_NOW : kind);
	if (!j)
		return false;
	if (err) {
		snprintf(j->reply, sizeof(j->reply), "error: %s\n", err);
	} else if (kind == J_NOW) {
		format_counters(j->reply, sizeof(j->reply) - 1, "request");
		strcat(j->reply, "\n");
	} else {
		j->n = n;
		if (name)
			snprintf(j->name, sizeof(j->name), "%s", name);
		pool_push(j);
	}
	return true;
}

/* More requests may be read from c now. */
static bool wants_input(const struct conn *c)
{
	return c->fd >= 0 && !c->eof && !c->quit && !S.draining && c->inflight < MAX_INFLIGHT;
}

/* Starts the jobs of the complete lines in c->in while fewer than
 * MAX_INFLIGHT are out (also while draining: those requests were read).
 * False when it closed c (out of memory). */
static bool start_lines(struct conn *c)
{
	size_t off = 0;
	while (!c->quit && c->inflight < MAX_INFLIGHT) {
		char *nl = memchr(c->in + off, '\n', c->inlen - off);
		if (!nl)
			break;
		*nl = '\0';
		if (!handle_line(c, c->in + off)) {
			conn_close(c);
			return false;
		}
		off = (size_t)(nl - c->in) + 1;
	}
	if (off > 0) {
		memmove(c->in, c->in + off, c->inlen - off);
		c->inlen -= off;
	}
	return true;
}

/* Reads and starts requests: one read when level-triggered (the watcher
 * reports the rest), until EAGAIN with --et, in both cases only while
 * wants_input(c) (with --et, reading resumes here, by a read, not by an
 * edge that may never come).  Then writes the replies that are ready, arms
 * the watcher as wanted and closes c when it is done. */
static void conn_input(struct conn *c)
{
	for (;;) {
		if (!start_lines(c))
			return;
		if (!wants_input(c))
			break;
		if (c->inlen >= LINE_MAX_LEN) {
			/* No newline in a whole buffer: answer, then close. */
			struct job *j = job_new(c, J_NOW);
			if (j)
				snprintf(j->reply, sizeof(j->reply), "error: line too long\n");
			c->inlen = 0;
			c->quit = true;
			break;
		}
		ssize_t n = recv(c->fd, c->in + c->inlen, LINE_MAX_LEN - c->inlen, 0);
		if (n > 0) {
			c->inlen += (size_t)n;
			if (S.et)
				continue;
			if (!start_lines(c))
				return;
			break;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n < 0) {
			conn_close(c); /* read error: nobody to answer */
			return;
		}
		/* End of file: a last line without "\n" is a request too. */
		c->eof = true;
		if (c->inlen > 0)
			c->in[c->inlen++] = '\n';
		if (!start_lines(c))
			return;
		break;
	}
	if (!flush_replies(c))
		return;
	if (set_reading(c, wants_input(c)) < 0) {
		conn_close(c);
		return;
	}
	maybe_close(c);
}

static void conn_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	(void)fd;
	(void)revents; /* PX_HUP / PX_ERR: recv() reports them */
	conn_input(arg);
}

/* The send queue is empty (status 0) or a send failed. */
static void on_sent(px_loop *loop, int fd, int status, void *arg)
{
	struct conn *c = arg;
	(void)loop;
	(void)fd;
	if (status < 0)
		conn_close(c);
	else
		maybe_close(c);
}

/* Loop thread, posted by a worker: the job is back. */
static void job_done(px_loop *loop, void *arg)
{
	struct job *j = arg;
	struct conn *c = j->c;
	(void)loop;
	j->done = true;
	S.jobs_out--;
	c->inflight--;
	if (j->cancelled)
		S.cancelled++;
	if (c->fd < 0) {
		/* The connection closed meanwhile. */
		free(j);
		if (c->inflight == 0)
			conn_free(c);
		return;
	}
	conn_input(c); /* writes the replies, starts waiting requests, reads */
}

static void accept_cb(px_loop *loop, int lfd, int cfd, const struct sockaddr *peer,
                      socklen_t peerlen, void *arg)
{
	(void)lfd;
	(void)peer;
	(void)peerlen;
	(void)arg;
	if (cfd < 0) {
		fprintf(stderr, "resolve-pool: accept: %s (backing off)\n", strerror(-cfd));
		return;
	}
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(cfd);
		return;
	}
	c->fd = cfd;
	c->reading = true;
	if (px_io_add(loop, cfd, PX_READ | (S.et ? PX_ET : 0), conn_cb, c) < 0 ||
	    px_send_notify(loop, cfd, 0, on_sent, c) < 0) {
		px_io_del(loop, cfd);
		close(cfd);
		free(c);
		return;
	}
	c->next = S.conns;
	if (S.conns)
		S.conns->prev = c;
	S.conns = c;
	S.nconns++;
	S.connections++;
}

/* ------------------------------------------------------------------------ */
/* Stopping                                                                   */

static void force_close(const char *why)
{
	if (!S.forced)
		S.forced = why;
	pool_cancel();
	for (struct conn *c = S.conns, *next; c; c = next) {
		next = c->next;
		if (c->fd >= 0) {
			S.dropped++;
			conn_close(c); /* may free c (and stop the loop) */
		}
	}
}

static void deadline_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	(void)arg;
	if (S.deadline_fires++ == 0) {
		fprintf(stderr, "resolve-pool: drain deadline (%ld ms) passed: cancelling the jobs\n",
		        S.drain_ms);
		force_close("deadline");
	} else if (S.deadline_fires > 5) {
		/* Jobs still out: a getaddrinfo that takes its time.  Stop the
		 * loop; main joins the pool and collects them. */
		px_loop_stop(S.loop);
	}
}

static void begin_drain(const char *reason)
{
	S.draining = true;
	S.reason = reason;
	if (S.lfd >= 0) {
		px_acceptor_del(S.loop, S.lfd);
		close(S.lfd);
		S.lfd = -1;
	}
	int64_t id = px_timer_add(S.loop, (uint64_t)S.drain_ms, 1000, deadline_cb, NULL);
	if (id < 0) {
		force_close("deadline");
		px_loop_stop(S.loop);
		return;
	}
	S.deadline = id;
	/* Read no more requests; a connection with nothing under way closes. */
	for (struct conn *c = S.conns, *next; c; c = next) {
		next = c->next;
		if (c->fd >= 0)
			conn_input(c);
	}
	check_drained();
}

static void print_sighup(px_loop *loop, void *arg)
{
	(void)loop;
	(void)arg;
	print_counters("sighup");
}

static void on_signal(px_loop *loop, int signo, void *arg)
{
	(void)arg;
	if (signo == SIGHUP) {
		/* From a post: it runs after this iteration's io callbacks, so
		 * their counts are all in (inside this callback they may not be). */
		if (px_loop_post(loop, print_sighup, NULL) < 0)
			print_counters("sighup");
		return;
	}
	const char *name = signo == SIGTERM ? "SIGTERM" : "SIGINT";
	if (!S.draining) {
		printf("resolve-pool: %s: draining (deadline %ld ms)\n", name, S.drain_ms);
		fflush(stdout);
		begin_drain(name);
	} else if (!S.forced) {
		printf("resolve-pool: second %s: cancelling the jobs\n", name);
		fflush(stdout);
		force_close("second-signal");
	}
}

/* ------------------------------------------------------------------------ */

#define USAGE                                                                      \
	"usage: resolve-pool [--workers K] [--et] [--port N] [--host ADDR|any]\n"    \
	"                    [--drain-ms N] [--stats]\n"

static void help(void)
{
	printf(USAGE
	       "\n"
	       "A line-oriented TCP service whose blocking work (getaddrinfo, a slow prime\n"
	       "count, sleeps) runs on a pool of worker threads and comes back to the loop\n"
	       "with px_loop_post; each connection's replies keep the order of its requests.\n"
	       "Requests, one per line:\n"
	       "  resolve NAME   the addresses of NAME (NAME alone does the same)\n"
	       "  prime N        how many primes are <= N (N <= %lu)\n"
	       "  sleep MS       \"done\" after MS ms (MS <= %lu)\n"
	       "  stats          the loop's counters\n"
	       "  quit           close after the replies to the requests before it\n"
	       "\n"
	       "Options:\n"
	       "  --workers K            threads in the pool, 1 to %d (default 4)\n"
	       "  --et                   edge-triggered watchers (PX_ET; default level)\n"
	       "  --port N               TCP port; 0: one the kernel picks (default 7070)\n"
	       "  --host ADDR|any        address or name to listen on; any: every address\n"
	       "                         (default 127.0.0.1)\n"
	       "  --drain-ms N           after SIGTERM/SIGINT, cancel the jobs and close what\n"
	       "                         is still open after N ms (default 5000)\n"
	       "  --stats                also print the counters line at exit (default off)\n"
	       "  -h, --help             this help\n"
	       "\n" EX_HELP_ENV
	       "\n"
	       "Signals: SIGTERM or SIGINT: stop reading, answer what was read, join the\n"
	       "pool, exit 0 with a line \"resolve-pool: exit reason=...\"; a second one, or\n"
	       "the --drain-ms deadline, cancels the jobs.  SIGHUP prints the counters.\n"
	       "\n"
	       "Exit status: 0 after a drain, 1 when the service could not start (a bad\n"
	       "POLLUX_BACKEND, a host that does not resolve, a port in use), 64 bad usage.\n",
	       PRIME_MAX, SLEEP_MAX, MAX_WORKERS);
}

int main(int argc, char **argv)
{
	long port = 7070, workers = 4;
	const char *host = "127.0.0.1";
	int status = 0;

	const char *me = "resolve-pool";

	S.drain_ms = 5000;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		long *num = NULL, lo = 0, hi = 0;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			help();
			return 0;
		} else if (!strcmp(a, "--et")) {
			S.et = true;
		} else if (!strcmp(a, "--stats")) {
			S.stats = true;
		} else if (!strcmp(a, "--workers")) {
			num = &workers, lo = 1, hi = MAX_WORKERS;
		} else if (!strcmp(a, "--port")) {
			num = &port, lo = 0, hi = 65535;
		} else if (!strcmp(a, "--drain-ms")) {
			num = &S.drain_ms, lo = 0, hi = 3600L * 1000;
		} else if (!strcmp(a, "--host")) {
			if (!v)
				return ex_usage(me, USAGE, "option '%s' needs a value", a);
			host = strcmp(argv[++i], "any") ? argv[i] : NULL;
		} else {
			return ex_usage(me, USAGE, "unknown option '%s'", a);
		}
		if (num) {
			if (!v)
				return ex_usage(me, USAGE, "option '%s' needs a value", a);
			if (!ex_parse_long(v, lo, hi, num))
				return ex_usage(me, USAGE, "bad value '%s' for %s (%ld to %ld)", v, a, lo, hi);
			i++;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	S.t0 = mono_ms();
	atomic_init(&P.cancel, false);

	S.loop = ex_loop_new(me);
	if (!S.loop)
		return 1;
	S.lfd = px_listen_tcp(host, (uint16_t)port, 0);
	if (S.lfd < 0) {
		ex_net_error(me, "listen on", host, port, S.lfd);
		px_loop_free(S.loop);
		return 1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(S.lfd, (struct sockaddr *)&ss, &sl) == 0)
		port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
		                                      : ((struct sockaddr_in *)&ss)->sin_port);
	int rc = px_acceptor_add(S.loop, S.lfd, accept_cb, NULL);
	static const int sigs[] = { SIGTERM, SIGINT, SIGHUP };
	for (size_t k = 0; rc == 0 && k < sizeof(sigs) / sizeof(sigs[0]); k++)
		rc = px_signal_add(S.loop, sigs[k], on_signal, NULL);
	for (; rc == 0 && P.n < workers; P.n++) {
		rc = -pthread_create(&P.th[P.n], NULL, pool_main, NULL);
		if (rc != 0)
			break;
	}
	if (rc < 0) {
		fprintf(stderr, "resolve-pool: setup: %s\n", strerror(-rc));
		status = 1;
	} else {
		printf("resolve-pool: backend=%s port=%ld mode=%s workers=%d\n", px_loop_backend(S.loop),
		       port, S.et ? "edge" : "level", P.n);
		fflush(stdout);
		rc = px_loop_run(S.loop, PX_RUN_DEFAULT);
		if (rc < 0) {
			fprintf(stderr, "resolve-pool: px_loop_run: %s\n", strerror(-rc));
			status = 1;
		}
	}

	/* The pool: cancel what runs unless the drain ended cleanly, stop,
	 * join; then run the posts of the jobs that came back meanwhile. */
	if (S.nconns > 0 || status != 0)
		pool_cancel();
	pool_stop_and_join();
	for (int tries = 0; S.jobs_out > 0 && tries < 100; tries++)
		px_loop_run(S.loop, PX_RUN_NOWAIT);
	while (S.conns) {
		struct conn *c = S.conns;
		if (c->fd >= 0)
			S.dropped++;
		c->inflight = 0; /* every job is back, or lost */
		conn_close(c);    /* frees c */
	}
	if (S.lfd >= 0)
		close(S.lfd);
	if (status == 0) {
		printf("resolve-pool: exit reason=%s drain=%s workers=%d elapsed_ms=%llu "
		       "connections=%llu requests=%llu replies=%llu cancelled=%llu dropped=%llu\n",
		       S.reason ? S.reason : "none", S.forced ? S.forced : "clean", (int)workers,
		       (unsigned long long)(mono_ms() - S.t0), (unsigned long long)S.connections,
		       (unsigned long long)S.requests, (unsigned long long)S.replies,
		       (unsigned long long)S.cancelled, (unsigned long long)S.dropped);
		if (S.stats)
			print_counters("exit");
	}
	px_loop_free(S.loop);
	return status;
}
