/*
 * One loop per thread (v2, issue 11): separate loops in separate threads
 * share nothing mutable.
 *
 * NLOOPS worker threads each create their own loop and serve echo on their
 * own listener; the listeners share one loopback port through
 * px_listen_tcp_opts(..., PX_LISTEN_REUSEPORT) (each its own port where the
 * system has no SO_REUSEPORT).  NCLIENTS client threads make real TCP
 * connections and check every byte that comes back.  The loops also post
 * to each other (one px_loop_post per accepted connection to the next
 * loop, made while both run).  At the end the main thread stops each loop
 * with a posted callback, then checks the counts: connections accepted,
 * bytes echoed, posts run.  Under ThreadSanitizer (scripts/test's tsan
 * step) any state the loops shared without synchronization is a report.
 *
 * Threads never assert (cmocka is not thread-safe): they record their
 * first error (v2test.h) for the main thread.  Every wait is bounded: guard
 * timers in the loops, time limits on the gates.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "portable.h" /* config.h first */
#include "testutil.h"
#include "v2test.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NLOOPS 3
#define NCLIENTS 4
#define MAXCONN 1024
#define CHUNK 32768

/* ---- the loops ---------------------------------------------------------------------- */

struct worker {
	int idx;
	int lfd;
	px_loop *loop;       /* published to the main thread through `ready` */
	px_loop *next;       /* the next worker's loop, given through `go` */
	struct worker *next_w;
	struct th_gate ready, go, may_free;
	/* the loop's thread only (read by the main thread after th_join) */
	int conns[MAXCONN];
	int nconn;
	long accepted, closed, echoed, hellos, stops;
	int guard_fired;
	struct px_loop_stats st;
	struct th_err err;
};

static void hello_cb(px_loop *l, void *arg)
{
	struct worker *w = arg; /* the receiving worker: this loop's */
	if (l != w->loop)
		th_fail(&w->err, "a hello ran in another loop");
	w->hellos++;
}

static void stop_cb(px_loop *l, void *arg)
{
	struct worker *w = arg;
	if (l != w->loop)
		th_fail(&w->err, "the stop ran in another loop");
	w->stops++;
	px_loop_stop(l);
}

static void guard_cb(px_loop *l, int64_t id, void *arg)
{
	(void)id;
	struct worker *w = arg;
	w->guard_fired++;
	th_fail(&w->err, "the guard timer fired");
	px_loop_stop(l);
}

static void forget_conn(struct worker *w, int fd)
{
	for (int i = 0; i < w->nconn; i++)
		if (w->conns[i] == fd) {
			w->conns[i] = w->conns[--w->nconn];
			return;
		}
	th_fail(&w->err, "fd %d is not one of the connections", fd);
}

static void echo_cb(px_loop *l, int fd, unsigned revents, void *arg)
{
	struct worker *w = arg;
	char buf[16384];
	(void)revents;
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (n > 0) {
			int rc = px_send(l, fd, buf, (size_t)n);
			if (rc != 0)
				th_fail(&w->err, "px_send: %d", rc);
			w->echoed += n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n < 0)
			th_fail(&w->err, "recv: %s", strerror(errno));
		int rc = px_io_del(l, fd);
		if (rc != 0)
			th_fail(&w->err, "px_io_del: %d", rc);
		close(fd);
		forget_conn(w, fd);
		w->closed++;
		return;
	}
}

static void accept_cb(px_loop *l, int lfd, int cfd, const struct sockaddr *peer,
                      socklen_t peerlen, void *arg)
{
	struct worker *w = arg;
	(void)lfd;
	(void)peer;
	(void)peerlen;
	if (cfd < 0) {
		th_fail(&w->err, "acceptor: %d", cfd);
		return;
	}
	w->accepted++;
	if (w->nconn >= MAXCONN) {
		th_fail(&w->err, "more than %d connections", MAXCONN);
		close(cfd);
		return;
	}
	int rc = px_io_add(l, cfd, PX_READ, echo_cb, w);
	if (rc != 0) {
		th_fail(&w->err, "px_io_add: %d", rc);
		close(cfd);
		return;
	}
	w->conns[w->nconn++] = cfd;
	/* a post to the next loop, which runs in its own thread */
	rc = px_loop_post(w->next, hello_cb, w->next_w);
	if (rc != 0)
		th_fail(&w->err, "px_loop_post to the next loop: %d", rc);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	px_loop *l = px_loop_new();
	if (!l) {
		th_fail(&w->err, "px_loop_new: %s", strerror(errno));
		th_gate_post(&w->ready);
		return NULL;
	}
	w->loop = l;
	int rc = px_acceptor_add(l, w->lfd, accept_cb, w);
	int64_t g = px_timer_add(l, tu_valgrind() ? 300000 : 120000, 0, guard_cb, w);
	th_gate_post(&w->ready);
	if (rc != 0 || g <= 0)
		th_fail(&w->err, "px_acceptor_add %d, px_timer_add %lld", rc, (long long)g);
	else if (!th_gate_wait(&w->go, 120000))
		th_fail(&w->err, "no go from the main thread");
	else if ((rc = px_loop_run(l, PX_RUN_DEFAULT)) != 0)
		th_fail(&w->err, "px_loop_run: %d", rc);
	else if (w->stops != 1)
		th_fail(&w->err, "px_loop_run returned after %ld stop post(s)", w->stops);
	/* hellos from the other loops still queued run now: all were posted
	 * before the main thread posted the stop */
	for (int i = 0; i < 3; i++)
		if ((rc = px_loop_run(l, PX_RUN_NOWAIT)) != 0)
			th_fail(&w->err, "px_loop_run(PX_RUN_NOWAIT): %d", rc);
	px_loop_stats(l, &w->st, sizeof w->st);
	/* connections whose end the loop had not seen yet */
	while (w->nconn > 0) {
		int fd = w->conns[--w->nconn];
		if ((rc = px_io_del(l, fd)) != 0)
			th_fail(&w->err, "px_io_del(%d): %d", fd, rc);
		close(fd);
	}
	if (g > 0 && !w->guard_fired && (rc = px_timer_del(l, g)) != 0)
		th_fail(&w->err, "px_timer_del(guard): %d", rc);
	if ((rc = px_acceptor_del(l, w->lfd)) != 0)
		th_fail(&w->err, "px_acceptor_del: %d", rc);
	/* the main thread's px_loop_post of the stop has returned: only then may
	 * the loop be freed (posting to a loop being freed is the caller's bug) */
	if (!th_gate_wait(&w->may_free, 120000))
		th_fail(&w->err, "no may_free from the main thread");
	px_loop_free(l);
	return NULL;
}

/* ---- the clients -------------------------------------------------------------------- */

struct client {
	int idx;
	uint16_t port[NLOOPS];
	int nports;
	long conns;
	uint32_t seed;
	long made, bytes, rounds;
	struct th_err err;
};

static unsigned char pattern_byte(uint32_t key, long i)
{
	uint32_t x = key ^ (uint32_t)i * 2654435761u;
	x ^= x >> 15;
	return (unsigned char)(x * 2246822519u >> 24);
}

static bool write_all(int fd, const unsigned char *p, size_t len, struct th_err *e)
{
	while (len > 0) {
		ssize_t n = tp_send(fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			th_fail(e, "send: %s", n < 0 ? strerror(errno) : "0");
			return false;
		}
		p += n;
		len -= (size_t)n;
	}
	return true;
}

static bool read_all(int fd, unsigned char *p, size_t len, struct th_err *e)
{
	while (len > 0) {
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			th_fail(e, "recv: %s", n < 0 ? strerror(errno) : "end of file");
			return false;
		}
		p += n;
		len -= (size_t)n;
	}
	return true;
}

/* Connections one after another; on each, 1 to 4 rounds of a random-sized
 * patterned block written and read back, every byte compared. */
static void *client_main(void *arg)
{
	struct client *c = arg;
	unsigned char *out = malloc(CHUNK), *in = malloc(CHUNK);
	if (!out || !in) {
		th_fail(&c->err, "malloc");
		goto done;
	}
	for (long k = 0; k < c->conns; k++) {
		uint16_t port = c->port[(c->idx + k) % c->nports];
		int fd = px_connect_tcp("127.0.0.1", port, 10000);
		if (fd < 0) {
			th_fail(&c->err, "connection %ld: px_connect_tcp: %d", k, fd);
			break;
		}
		c->made++;
		int rounds = 1 + (int)(th_rand(&c->seed) % 4);
		bool ok = true;
		for (int r = 0; r < rounds && ok; r++) {
			size_t len = 1 + th_rand(&c->seed) % CHUNK;
			uint32_t key = th_rand(&c->seed);
			for (size_t i = 0; i < len; i++)
				out[i] = pattern_byte(key, (long)i);
			ok = write_all(fd, out, len, &c->err) && read_all(fd, in, len, &c->err);
			if (ok && memcmp(in, out, len) != 0) {
				size_t i = 0;
				while (in[i] == out[i])
					i++;
				th_fail(&c->err, "connection %ld round %d: byte %zu of %zu differs", k, r,
				        i, len);
				ok = false;
			}
			if (ok) {
				c->bytes += (long)len;
				c->rounds++;
			}
		}
		close(fd);
		if (!ok)
			break;
	}
done:
	free(out);
	free(in);
	return NULL;
}

/* ---- the test ----------------------------------------------------------------------- */

static uint16_t port_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static void test_loop_per_thread_reuseport_echo(void **state)
{
	(void)state;
	static struct worker w[NLOOPS];
	static struct client c[NCLIENTS];
	pthread_t wt[NLOOPS], ct[NCLIENTS];
	uint16_t ports[NLOOPS];
	int nports;
	int fds_before = tu_count_fds();

	/* the listeners: one port shared with SO_REUSEPORT, else one each */
	memset(w, 0, sizeof w);
	int lfd = px_listen_tcp_opts("127.0.0.1", 0, 0, PX_LISTEN_REUSEPORT);
	if (lfd == -ENOTSUP) {
		print_message("# no SO_REUSEPORT here: each loop listens on a port of its own\n");
		for (int i = 0; i < NLOOPS; i++) {
			w[i].lfd = px_listen_tcp("127.0.0.1", 0, 0);
			assert_true(w[i].lfd >= 0);
			ports[i] = port_of(w[i].lfd);
		}
		nports = NLOOPS;
	} else {
		assert_true(lfd >= 0);
		w[0].lfd = lfd;
		ports[0] = port_of(lfd);
		for (int i = 1; i < NLOOPS; i++) {
			w[i].lfd = px_listen_tcp_opts("127.0.0.1", ports[0], 0, PX_LISTEN_REUSEPORT);
			if (w[i].lfd < 0)
				fail_msg("listener %d on port %u with PX_LISTEN_REUSEPORT: %d", i,
				         (unsigned)ports[0], w[i].lfd);
		}
		nports = 1;
	}

	/* the loops, each created in its own thread */
	for (int i = 0; i < NLOOPS; i++) {
		w[i].idx = i;
		th_gate_init(&w[i].ready);
		th_gate_init(&w[i].go);
		th_gate_init(&w[i].may_free);
		th_start(&wt[i], worker_main, &w[i]);
	}
	bool ready = true;
	for (int i = 0; i < NLOOPS; i++)
		ready &= th_gate_wait(&w[i].ready, 60000) && w[i].loop != NULL;
	for (int i = 0; i < NLOOPS; i++) {
		w[i].next = w[(i + 1) % NLOOPS].loop;
		w[i].next_w = &w[(i + 1) % NLOOPS];
	}
	for (int i = 0; ready && i < NLOOPS; i++)
		th_gate_post(&w[i].go);

	/* the clients */
	long conns = v2_scaled(60);
	memset(c, 0, sizeof c);
	for (int i = 0; ready && i < NCLIENTS; i++) {
		c[i].idx = i;
		memcpy(c[i].port, ports, sizeof ports);
		c[i].nports = nports;
		c[i].conns = conns;
		c[i].seed = 1000u + (uint32_t)i;
		th_start(&ct[i], client_main, &c[i]);
	}
	for (int i = 0; ready && i < NCLIENTS; i++)
		th_join(ct[i]);

	/* stop each loop from this thread with a post; then let it free */
	int post_rc[NLOOPS];
	for (int i = 0; i < NLOOPS; i++) {
		post_rc[i] = w[i].loop && ready ? px_loop_post(w[i].loop, stop_cb, &w[i]) : 0;
		th_gate_post(&w[i].go); /* (not ready: lets the worker end) */
		th_gate_post(&w[i].may_free);
	}
	for (int i = 0; i < NLOOPS; i++)
		th_join(wt[i]);
	for (int i = 0; i < NLOOPS; i++) {
		th_gate_destroy(&w[i].ready);
		th_gate_destroy(&w[i].go);
		th_gate_destroy(&w[i].may_free);
		close(w[i].lfd);
	}

	assert_true(ready);
	long made = 0, bytes = 0, rounds = 0, accepted = 0, echoed = 0, hellos = 0;
	char dist[128] = "";
	for (int i = 0; i < NCLIENTS; i++) {
		th_check(&c[i].err, "client");
		made += c[i].made;
		bytes += c[i].bytes;
		rounds += c[i].rounds;
	}
	for (int i = 0; i < NLOOPS; i++) {
		char name[32];
		snprintf(name, sizeof name, "loop %d", i);
		th_check(&w[i].err, name);
		assert_int_equal(post_rc[i], 0);
		assert_int_equal(w[i].stops, 1);
		assert_int_equal(w[i].guard_fired, 0);
		assert_int_equal(w[i].st.accepted, (uint64_t)w[i].accepted);
		/* its hellos (one per connection the previous loop accepted) and the
		 * stop */
		assert_int_equal(w[i].st.posts, (uint64_t)w[i].hellos + 1);
		accepted += w[i].accepted;
		echoed += w[i].echoed;
		hellos += w[i].hellos;
		size_t len = strlen(dist);
		snprintf(dist + len, sizeof dist - len, "%s%ld", i ? "/" : "", w[i].accepted);
	}
	for (int i = 0; i < NLOOPS; i++)
		assert_int_equal(w[i].hellos, w[(i + NLOOPS - 1) % NLOOPS].accepted);
	print_message("# %d loops (%s), %d clients: %ld connections (per loop %s), %ld rounds, "
	              "%ld bytes echoed\n",
	              NLOOPS, nports == 1 ? "one SO_REUSEPORT port" : "a port each", NCLIENTS,
	              made, dist, rounds, echoed);
	assert_int_equal(made, NCLIENTS * conns);
	assert_int_equal(accepted, made);
	assert_int_equal(echoed, bytes);
	assert_int_equal(hellos, accepted);
	assert_int_equal(tu_count_fds(), fds_before);
}

int main(void)
{
	/* the tests' own sends never raise SIGPIPE; with the portable fallbacks
	 * tp_send toggles SIGPIPE around each call, which is only safe across
	 * threads when it is ignored for good */
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		TU_TEST(test_loop_per_thread_reuseport_echo),
	};
	return TU_RUN("test_threads", tests);
}
