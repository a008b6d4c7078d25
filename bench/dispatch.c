/*
 * bench/dispatch: one benchmark variant per invocation (see bench/README.md).
 *
 *   dispatch --lib L --backend B --n N --a A --w W --rounds R
 *            [--churn none|round|cb|mod] [--measure dispatch|churn]
 *            [--mode dispatch|mem] [--warmup K] [--pairs active|all]
 *
 * Workload (libevent's test/bench.c, as used by libev's benchmark): N
 * watched fds with one persistent read watcher each; A of them (evenly
 * spaced) are socketpairs that get one byte at the start of each round; every
 * callback reads its byte and, while fewer than W chained writes have
 * happened, writes one byte to the next active pair.  A round ends when all
 * A + W bytes have been read (= A + W events).  Only the dispatch phase
 * (looping until every byte is read) is timed, counted by callgrind (client
 * requests around it) and bracketed by marker syscalls for strace
 * (write(-1, "PXB_..._START", ...)).
 *
 * Churn variants: round = before each round, delete and re-add every
 * watcher, then one non-blocking iteration (libevent bench.c's setup phase;
 * measured separately as the "churn" phase, per watcher); cb = every
 * callback deletes and re-adds its own watcher (inside the iteration); mod =
 * every callback disarms and re-arms its own watcher with the library's
 * modify call (del/add where the library has none).  In cb and mod modes the
 * measured phase ends with one more iteration, so that changes a library
 * defers to its next iteration are counted.
 *
 * Output: one line of key=value pairs on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <valgrind/callgrind.h>

#include "bench.h"

extern const struct bench_driver drv_pollux, drv_libevent, drv_libev, drv_libuv, drv_epoll,
	drv_poll, drv_select;
static const struct bench_driver *const drivers[] = {
	&drv_pollux, &drv_libevent, &drv_libev, &drv_libuv, &drv_epoll, &drv_poll, &drv_select,
};

enum churn { CHURN_NONE, CHURN_ROUND, CHURN_CB, CHURN_MOD };

int *bench_rfd;
static int *wfd;   /* write end of an active slot's pair, -1 otherwise */
static int *nexta; /* the active slot an active slot writes to */
static const struct bench_driver *D;
static enum churn churn;
static long count, fired, writes;

void bench_die(const char *what)
{
	fprintf(stderr, "dispatch: %s: %s\n", what, strerror(errno));
	exit(1);
}

void bench_event(int i)
{
	char ch;

	if (read(bench_rfd[i], &ch, 1) != 1)
		return; /* spurious wake-up: not an event */
	count++;
	if (writes > 0) {
		writes--;
		fired++;
		if (write(wfd[nexta[i]], "e", 1) != 1)
			bench_die("write");
	}
	switch (churn) {
	case CHURN_CB:
		if (D->del(i) < 0 || D->add(i) < 0)
			bench_die("churn del/add");
		break;
	case CHURN_MOD:
		if (D->mod) {
			if (D->mod(i, 0) < 0 || D->mod(i, 1) < 0)
				bench_die("churn mod");
		} else if (D->del(i) < 0 || D->add(i) < 0) {
			bench_die("churn del/add");
		}
		break;
	default:
		break;
	}
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A syscall that strace shows and that changes nothing: phase markers. */
static void marker(const char *s)
{
	ssize_t r = write(-1, s, strlen(s));
	(void)r;
}

static size_t heap_bytes(void)
{
	struct mallinfo2 mi = mallinfo2();

	return mi.uordblks + mi.hblkhd; /* in use from the arenas + mmapped chunks */
}

static long status_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	size_t kl = strlen(key);

	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
			v = atol(line + kl + 1);
			break;
		}
	fclose(f);
	return v;
}

static void raise_nofile(long need)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		bench_die("getrlimit");
	if ((rlim_t)need > rl.rlim_max) {
		struct rlimit want = { (rlim_t)need, (rlim_t)need };
		if (setrlimit(RLIMIT_NOFILE, &want) == 0)
			return;
	}
	rl.rlim_cur = rl.rlim_max;
	(void)setrlimit(RLIMIT_NOFILE, &rl);
	if ((rlim_t)need > rl.rlim_max) {
		fprintf(stderr, "dispatch: need %ld fds, hard limit is %ld\n", need,
		        (long)rl.rlim_max);
		exit(1);
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: dispatch --lib pollux|libevent|libev|libuv|epoll|poll|select "
	                "[--backend B] [--n N] [--a A] [--w W] [--rounds R] "
	                "[--churn none|round|cb|mod] [--measure dispatch|churn] "
	                "[--mode dispatch|mem] [--warmup K] [--pairs active|all]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *lib = NULL, *backend = NULL, *mode = "dispatch", *measure = "dispatch";
	const char *pairs = "active";
	long n = 1000, a = 100, w = 100, rounds = 20, warmup = 2;

	for (int i = 1; i < argc; i++) {
		const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			usage();
		i++;
		if (!strcmp(k, "--lib"))
			lib = v;
		else if (!strcmp(k, "--backend"))
			backend = v;
		else if (!strcmp(k, "--n"))
			n = atol(v);
		else if (!strcmp(k, "--a"))
			a = atol(v);
		else if (!strcmp(k, "--w"))
			w = atol(v);
		else if (!strcmp(k, "--rounds"))
			rounds = atol(v);
		else if (!strcmp(k, "--warmup"))
			warmup = atol(v);
		else if (!strcmp(k, "--mode"))
			mode = v;
		else if (!strcmp(k, "--measure"))
			measure = v;
		else if (!strcmp(k, "--pairs"))
			pairs = v;
		else if (!strcmp(k, "--churn"))
			churn = !strcmp(v, "round") ? CHURN_ROUND
			        : !strcmp(v, "cb")  ? CHURN_CB
			        : !strcmp(v, "mod") ? CHURN_MOD
			        : !strcmp(v, "none") ? CHURN_NONE
			                             : (usage(), CHURN_NONE);
		else
			usage();
	}
	if (!lib || n < 1 || a < 1 || a > n || w < 0 || rounds < 1 || warmup < 0)
		usage();
	for (size_t i = 0; i < sizeof drivers / sizeof drivers[0]; i++)
		if (!strcmp(drivers[i]->lib, lib))
			D = drivers[i];
	if (!D)
		usage();
	if (!backend)
		backend = D->backends[0];
	int ok = 0;
	for (const char *const *b = D->backends; *b; b++)
		ok |= !strcmp(*b, backend);
	if (!ok) {
		fprintf(stderr, "dispatch: %s has no backend %s\n", lib, backend);
		return 2;
	}

	/* fds: active slots are socketpairs; the idle ones are single unbound
	 * AF_UNIX datagram sockets (never readable), unless --pairs all and
	 * the fd limit allows 2 fds per slot. */
	bool all_pairs = !strcmp(pairs, "all");
	raise_nofile(n + (all_pairs ? n : a) + 80);
	bench_rfd = calloc((size_t)n, sizeof(int));
	wfd = calloc((size_t)n, sizeof(int));
	nexta = calloc((size_t)n, sizeof(int));
	long *act = calloc((size_t)a, sizeof(long));
	if (!bench_rfd || !wfd || !nexta || !act)
		bench_die("calloc");
	long space = n / a;
	for (long k = 0; k < a; k++)
		act[k] = k * space;
	for (long i = 0, k = 0; i < n; i++) {
		bool active = k < a && act[k] == i;
		if (active || all_pairs) {
			int sv[2];
			if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
				bench_die("socketpair");
			bench_rfd[i] = sv[0];
			/* Write ends live above every watched fd, so the watched
			 * fds are dense from 3 up (libevent's select backend is
			 * built with _FORTIFY_SOURCE and aborts at fd >= 1024). */
			wfd[i] = fcntl(sv[1], F_DUPFD, (int)n + 16);
			if (wfd[i] < 0)
				bench_die("F_DUPFD");
			close(sv[1]);
		} else {
			bench_rfd[i] = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
			if (bench_rfd[i] < 0)
				bench_die("socket");
			wfd[i] = -1;
		}
		if (active) {
			nexta[i] = (int)act[(k + 1) % a];
			k++;
		}
	}

	size_t heap_pre = heap_bytes();
	if (D->init(backend, (int)n) < 0)
		return 1;
	/* What init allocated beyond the user-owned handles (libuv sizes its
	 * fd table in uv_poll_init, for instance). */
	double init_per_fd = ((double)heap_bytes() - (double)heap_pre -
	                      (double)D->handle_size * (double)n) / (double)n;
	const char *actual = D->backend_name();
	if (strcmp(actual, backend) != 0) {
		fprintf(stderr, "dispatch: %s runs on %s, not %s\n", lib, actual, backend);
		return 1;
	}

	long rss0 = status_kb("VmRSS");
	size_t heap0 = heap_bytes();
	uint64_t t0 = now_ns();
	for (long i = 0; i < n; i++)
		if (D->add((int)i) < 0)
			bench_die("add");
	if (D->run_nowait() < 0)
		bench_die("run");
	uint64_t t1 = now_ns();
	size_t heap1 = heap_bytes();
	long rss1 = status_kb("VmRSS");

	if (!strcmp(mode, "mem")) {
		struct rusage ru;
		getrusage(RUSAGE_SELF, &ru);
		/* Loop state = everything malloc'd by init (minus the handles the
		 * driver allocated for the user) and by registering n watchers
		 * and running one iteration. */
		double state = init_per_fd + (double)(heap1 - heap0) / (double)n;
		printf("lib=%s backend=%s n=%ld state_bytes_per_fd=%.2f add_bytes_per_fd=%.2f "
		       "init_bytes_per_fd=%.2f handle_size=%zu bytes_per_fd_incl_handle=%.2f "
		       "rss_kb_before=%ld rss_kb_after=%ld hwm_kb=%ld maxrss_kb=%ld "
		       "add_ns_per_fd=%.1f\n",
		       lib, backend, n, state, (double)(heap1 - heap0) / (double)n, init_per_fd,
		       D->handle_size, state + (double)D->handle_size, rss0, rss1,
		       status_kb("VmHWM"), ru.ru_maxrss, (double)(t1 - t0) / (double)n);
		return 0;
	}

	bool cg_dispatch = strcmp(measure, "churn") != 0;
	uint64_t disp_ns = 0, churn_ns = 0;
	long events = 0, iters = 0, churned = 0;
	for (long r = -warmup; r < rounds; r++) {
		bool counted = r >= 0;
		if (churn == CHURN_ROUND) {
			if (counted)
				marker("PXB_CHURN_START\n");
			uint64_t c0 = now_ns();
			if (counted && !cg_dispatch)
				CALLGRIND_START_INSTRUMENTATION;
			for (long i = 0; i < n; i++)
				if (D->del((int)i) < 0 || D->add((int)i) < 0)
					bench_die("churn");
			if (D->run_nowait() < 0)
				bench_die("run");
			if (counted && !cg_dispatch)
				CALLGRIND_STOP_INSTRUMENTATION;
			uint64_t c1 = now_ns();
			if (counted) {
				marker("PXB_CHURN_STOP\n");
				churn_ns += c1 - c0;
				churned += n;
			}
		} else if (D->run_nowait() < 0) {
			bench_die("run");
		}

		fired = 0;
		for (long k = 0; k < a; k++, fired++)
			if (write(wfd[act[k]], "e", 1) != 1)
				bench_die("write");
		count = 0;
		writes = w;

		if (counted)
			marker("PXB_DISPATCH_START\n");
		uint64_t d0 = now_ns();
		if (counted && cg_dispatch)
			CALLGRIND_START_INSTRUMENTATION;
		long it = 0;
		do {
			if (D->run_nowait() < 0)
				bench_die("run");
			if (++it > 100000000L) {
				fprintf(stderr, "dispatch: no progress\n");
				return 1;
			}
		} while (count != fired);
		/* Libraries that defer kernel changes (libev) apply the last
		 * callbacks' churn in the next iteration: count it here. */
		if (churn == CHURN_CB || churn == CHURN_MOD) {
			if (D->run_nowait() < 0)
				bench_die("run");
			it++;
		}
		if (counted && cg_dispatch)
			CALLGRIND_STOP_INSTRUMENTATION;
		uint64_t d1 = now_ns();
		if (counted) {
			marker("PXB_DISPATCH_STOP\n");
			disp_ns += d1 - d0;
			events += count;
			iters += it;
		}
	}
	static const char *const cn[] = { "none", "round", "cb", "mod" };
	printf("lib=%s backend=%s n=%ld a=%ld w=%ld rounds=%ld churn=%s events=%ld iterations=%ld "
	       "dispatch_ns=%llu ns_per_event=%.2f churned=%ld churn_ns=%llu churn_ns_per_fd=%.2f "
	       "add_ns_per_fd=%.1f bytes_per_fd=%.2f rss_kb_delta=%ld\n",
	       lib, backend, n, a, w, rounds, cn[churn], events, iters,
	       (unsigned long long)disp_ns, (double)disp_ns / (double)events, churned,
	       (unsigned long long)churn_ns, churned ? (double)churn_ns / (double)churned : 0.0,
	       (double)(t1 - t0) / (double)n, (double)(heap1 - heap0) / (double)n, rss1 - rss0);
	return 0;
}
