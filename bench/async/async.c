/*
 * bench/async: one variant of the v2 benchmarks per invocation (see
 * bench/async/README.md).
 *
 *   async --lib L --backend B --mode MODE [--m M] [--samples S] [--gap-us G]
 *         [--warmup W] [--samples-out FILE]
 *
 * Two threads: the loop thread creates, runs and frees the library's loop;
 * the main thread is the producer.
 *
 *   post-tput   the producer posts M messages as fast as it can (pollux:
 *               px_loop_post; peers: a mutex-protected queue + their async
 *               wake-up); the loop's callback counts them.  posts/s = M / (time
 *               of the M-th callback - start).  Also the producer's and the
 *               loop thread's CPU time per message and the number of batches
 *               (loop wake-ups) that carried them.
 *   wake-tput   the producer calls the wake-up alone M times (px_loop_wake,
 *               uv_async_send, ev_async_send, event_active); wakes/s = M / the
 *               producer's time; the loop counts the wake-ups it saw.
 *   post-lat    S samples: the producer waits G us (spinning: the loop has
 *   wake-lat    gone back to sleep), reads CLOCK_MONOTONIC, posts / wakes /
 *   signal-lat  kill(getpid(), SIGUSR1), and spins until the loop's callback
 *               has read the clock: one sample = callback time - send time.
 *               The producer blocks SIGUSR1, so the kernel delivers the
 *               signal to the (sleeping) loop thread.  W warm-up samples
 *               are dropped.  Output: median, p90, p99, max; every sample
 *               (ns, one a line) goes to --samples-out.
 *
 * Output: one line of key=value pairs on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "async.h"

extern const struct async_driver drv_pollux, drv_libuv, drv_libev, drv_libevent, drv_hand;
static const struct async_driver *const drivers[] = {
#ifndef ASYNC_NO_POLLUX
	&drv_pollux,
#endif
	&drv_libuv, &drv_libev, &drv_libevent, &drv_hand,
};

static const struct async_driver *D;
static const char *backend;
static enum async_mode mode;
static long M = 200000, S = 4000, W = 50, gap_ns = 50000;
/* --cpus hot: the loop thread on one CPU, the producer on another, and a
 * SCHED_IDLE spinner beside the loop thread so that its CPU never idles
 * (an idle vCPU halts, and waking it costs the hypervisor's exit). */
static bool hot;
static int cpu_loop = -1, cpu_prod = -1;
static atomic_int keeper_stop;

static atomic_int ready, failed;
static atomic_int done;       /* post-tput: the M-th message arrived */
static long received;         /* loop thread only */
static uint64_t t_last;       /* loop thread: time of the M-th message */
static uint64_t woken;        /* loop thread: async_woken calls */
static uint64_t signals_seen; /* loop thread: async_signal calls */
static uint64_t loop_cpu, loop_wakeups;

/* Latency: the producer stores the send time of sample `seq`; the loop's
 * callback stores the delay and clears the send time. */
static _Atomic uint64_t lat_t0;
static atomic_long lat_seq, lat_done;
static uint64_t *samples;
static long nsamples;

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static uint64_t cpu_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

void async_die(const char *what)
{
	fprintf(stderr, "async: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void record(long seq)
{
	uint64_t t1 = now_ns();
	uint64_t t0 = atomic_load_explicit(&lat_t0, memory_order_acquire);

	if (t0 == 0 || (seq >= 0 && seq != atomic_load(&lat_seq)))
		return; /* a wake-up no sample is waiting for */
	if (nsamples < W + S)
		samples[nsamples++] = t1 - t0;
	atomic_store_explicit(&lat_t0, 0, memory_order_relaxed);
	atomic_store_explicit(&lat_done, atomic_load(&lat_seq), memory_order_release);
}

void async_posted(void *arg)
{
	if (mode == M_POST_LAT) {
		record((long)(intptr_t)arg);
		return;
	}
	if (++received == M) {
		t_last = now_ns();
		atomic_store_explicit(&done, 1, memory_order_release);
	}
}

void async_woken(void)
{
	woken++;
	if (mode == M_WAKE_LAT)
		record(-1);
}

void async_signal(void)
{
	signals_seen++;
	if (mode == M_SIGNAL_LAT)
		record(-1);
}

/* The library calls, behind wrappers that callgrind can toggle on
 * (--toggle-collect=producer_post etc.): never inlined. */
__attribute__((noinline)) int producer_post(void *arg) { return D->post(arg); }
__attribute__((noinline)) int producer_wake(void) { return D->wake(); }
__attribute__((noinline)) void loop_run(void) { D->run(); }

static void pin(int cpu)
{
	cpu_set_t cs;

	CPU_ZERO(&cs);
	CPU_SET(cpu, &cs);
	if (pthread_setaffinity_np(pthread_self(), sizeof cs, &cs) != 0) {
		fprintf(stderr, "async: cannot pin to CPU %d\n", cpu);
		exit(1);
	}
}

static void *keeper_thread(void *unused)
{
	struct sched_param sp = { 0 };

	(void)unused;
	pin(cpu_loop);
	if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) != 0) {
		fprintf(stderr, "async: SCHED_IDLE refused\n");
		exit(1);
	}
	while (!atomic_load_explicit(&keeper_stop, memory_order_relaxed))
		__builtin_ia32_pause();
	return NULL;
}

static void *loop_thread(void *unused)
{
	sigset_t set;
	uint64_t c0;

	(void)unused;
	if (hot)
		pin(cpu_loop);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	if (D->init(backend, mode) < 0) {
		atomic_store(&failed, 1);
		return NULL;
	}
	if (strcmp(D->backend_name(), backend) != 0) {
		fprintf(stderr, "async: %s runs on %s, not %s\n", D->lib, D->backend_name(), backend);
		atomic_store(&failed, 1);
		return NULL;
	}
	c0 = cpu_ns();
	atomic_store(&ready, 1);
	loop_run();
	loop_cpu = cpu_ns() - c0;
	loop_wakeups = D->wakeups ? D->wakeups() : 0;
	if (D->fini)
		D->fini();
	return NULL;
}

static void pause_ns(uint64_t ns)
{
	struct timespec t = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };
	nanosleep(&t, NULL);
}

static void spin_until(uint64_t t)
{
	while (now_ns() < t)
		__builtin_ia32_pause();
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t pct(const uint64_t *v, long n, double p)
{
	long i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
	return v[i < n ? i : n - 1];
}

static void run_latency(const char *samples_out)
{
	uint64_t t0;

	samples = calloc((size_t)(W + S), sizeof *samples);
	if (!samples)
		async_die("calloc");
	for (long i = 1; i <= W + S; i++) {
		spin_until(now_ns() + (uint64_t)gap_ns);
		atomic_store(&lat_seq, i);
		t0 = now_ns();
		atomic_store_explicit(&lat_t0, t0, memory_order_release);
		int rc = mode == M_POST_LAT ? producer_post((void *)(intptr_t)i)
		         : mode == M_WAKE_LAT ? producer_wake()
		                              : kill(getpid(), SIGUSR1);
		if (rc < 0) {
			fprintf(stderr, "async: send failed (%d)\n", rc);
			exit(1);
		}
		while (atomic_load_explicit(&lat_done, memory_order_acquire) != i) {
			__builtin_ia32_pause();
			if (now_ns() - t0 > 2000000000u) {
				fprintf(stderr, "async: sample %ld never arrived (lost wake-up?)\n", i);
				exit(1);
			}
		}
	}
	D->stop();
	/* samples[] is complete: the last record() happened before lat_done. */
	long n = nsamples - W;
	uint64_t *v = samples + W;
	if (samples_out) {
		FILE *f = fopen(samples_out, "w");
		if (!f)
			async_die(samples_out);
		for (long i = 0; i < n; i++)
			fprintf(f, "%llu\n", (unsigned long long)v[i]);
		fclose(f);
	}
	qsort(v, (size_t)n, sizeof *v, cmp_u64);
	printf(" samples=%ld lat_med_ns=%llu lat_p90_ns=%llu lat_p99_ns=%llu lat_max_ns=%llu", n,
	       (unsigned long long)pct(v, n, 50), (unsigned long long)pct(v, n, 90),
	       (unsigned long long)pct(v, n, 99), (unsigned long long)v[n - 1]);
}

static const char *const mode_names[] = {
	[M_POST_TPUT] = "post-tput", [M_WAKE_TPUT] = "wake-tput", [M_POST_LAT] = "post-lat",
	[M_WAKE_LAT] = "wake-lat", [M_SIGNAL_LAT] = "signal-lat",
};

static void usage(void)
{
	fprintf(stderr, "usage: async --lib L --backend B --mode post-tput|wake-tput|post-lat|"
	                "wake-lat|signal-lat [--m M] [--samples S] [--gap-us G] [--warmup W] "
	                "[--samples-out FILE]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *lib = NULL, *mname = NULL, *samples_out = NULL;
	pthread_t th;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			usage();
		i++;
		if (!strcmp(a, "--lib"))
			lib = v;
		else if (!strcmp(a, "--backend"))
			backend = v;
		else if (!strcmp(a, "--mode"))
			mname = v;
		else if (!strcmp(a, "--m"))
			M = atol(v);
		else if (!strcmp(a, "--samples"))
			S = atol(v);
		else if (!strcmp(a, "--warmup"))
			W = atol(v);
		else if (!strcmp(a, "--gap-us"))
			gap_ns = atol(v) * 1000;
		else if (!strcmp(a, "--samples-out"))
			samples_out = v;
		else if (!strcmp(a, "--cpus"))
			hot = !strcmp(v, "hot");
		else
			usage();
	}
	if (!lib || !backend || !mname || M < 1 || S < 1 || W < 0)
		usage();
	for (size_t i = 0; i < sizeof drivers / sizeof *drivers; i++)
		if (!strcmp(drivers[i]->lib, lib))
			D = drivers[i];
	if (!D) {
		fprintf(stderr, "async: no driver for %s in this build\n", lib);
		return 2;
	}
	bool ok = false;
	for (const char *const *b = D->backends; *b; b++)
		ok |= !strcmp(*b, backend);
	if (!ok) {
		fprintf(stderr, "async: %s has no backend %s\n", lib, backend);
		return 2;
	}
	mode = (enum async_mode)-1;
	for (size_t i = 0; i < sizeof mode_names / sizeof *mode_names; i++)
		if (!strcmp(mode_names[i], mname))
			mode = (enum async_mode)i;
	if ((int)mode < 0)
		usage();

	pthread_t keeper;
	if (hot) {
		cpu_set_t cs;
		if (sched_getaffinity(0, sizeof cs, &cs) < 0)
			async_die("sched_getaffinity");
		for (int c = 0; c < CPU_SETSIZE && cpu_prod < 0; c++)
			if (CPU_ISSET(c, &cs)) {
				if (cpu_loop < 0)
					cpu_loop = c;
				else
					cpu_prod = c;
			}
		if (cpu_prod < 0) {
			fprintf(stderr, "async: --cpus hot needs two CPUs\n");
			return 2;
		}
		pin(cpu_prod);
		if (pthread_create(&keeper, NULL, keeper_thread, NULL) != 0)
			async_die("pthread_create");
	}
	if (pthread_create(&th, NULL, loop_thread, NULL) != 0)
		async_die("pthread_create");
	/* The producer never takes SIGUSR1: the kernel delivers it to the
	 * loop thread, asleep in its wait. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	while (!atomic_load(&ready)) {
		if (atomic_load(&failed)) {
			pthread_join(th, NULL);
			return 1;
		}
		pause_ns(100000);
	}
	pause_ns(10000000); /* let the loop reach its first wait */

	printf("lib=%s backend=%s mode=%s", lib, backend, mname);
	if (mode == M_POST_TPUT || mode == M_WAKE_TPUT) {
		uint64_t c0 = cpu_ns(), t0 = now_ns();
		for (long i = 0; i < M; i++) {
			int rc = mode == M_POST_TPUT ? producer_post(NULL) : producer_wake();
			if (rc < 0) {
				fprintf(stderr, "async: %s failed (%d)\n",
				        mode == M_POST_TPUT ? "post" : "wake", rc);
				exit(1);
			}
		}
		uint64_t t1 = now_ns(), pc = cpu_ns() - c0;
		if (mode == M_POST_TPUT) {
			uint64_t deadline = t1 + 30000000000u;
			while (!atomic_load_explicit(&done, memory_order_acquire)) {
				if (now_ns() > deadline) {
					fprintf(stderr, "async: only %ld of %ld posts arrived\n", received, M);
					exit(1);
				}
				pause_ns(100000);
			}
		} else {
			pause_ns(1000000); /* let the loop see the last wake */
		}
		D->stop();
		pthread_join(th, NULL);
		if (mode == M_POST_TPUT)
			printf(" m=%ld posts_per_s=%.0f ns_per_post=%.1f prod_ns_per_post=%.1f "
			       "prod_cpu_ns=%.1f loop_cpu_ns=%.1f batches=%llu",
			       M, M * 1e9 / (double)(t_last - t0), (double)(t_last - t0) / (double)M,
			       (double)(t1 - t0) / (double)M, (double)pc / (double)M,
			       (double)loop_cpu / (double)M, (unsigned long long)loop_wakeups);
		else
			printf(" m=%ld wakes_per_s=%.0f ns_per_wake=%.1f prod_cpu_ns=%.1f "
			       "loop_wakeups=%llu",
			       M, M * 1e9 / (double)(t1 - t0), (double)(t1 - t0) / (double)M,
			       (double)pc / (double)M, (unsigned long long)woken);
	} else {
		run_latency(samples_out);
		pthread_join(th, NULL);
		printf(" gap_us=%ld loop_wakeups=%llu", gap_ns / 1000,
		       (unsigned long long)(mode == M_SIGNAL_LAT ? signals_seen
		                            : mode == M_WAKE_LAT ? woken : loop_wakeups));
	}
	if (hot) {
		atomic_store(&keeper_stop, 1);
		pthread_join(keeper, NULL);
		printf(" cpus=hot");
	}
	printf("\n");
	return 0;
}
