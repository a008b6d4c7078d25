/* Differential test: random programs of the diffops language (tests/diffops.h)
 * run on every backend in-process; their traces must be equivalent under the
 * contract (see tests/diffops.c).
 *
 *   tests/test_diff                           PX_DIFF_SEEDS seeds (default 200,
 *                                             50 under valgrind) from PX_DIFF_START
 *   tests/test_diff --seeds N --start S [--ops K]
 *   tests/test_diff --seed S [--ops K] --dump  one seed, with every trace printed
 *
 * Environment: PX_DIFF_SEEDS (the long-run knob: e.g. PX_DIFF_SEEDS=20000),
 * PX_DIFF_START, PX_DIFF_OPS (default 200),
 * PX_DIFF_MAXFAIL (failing seeds described in full, default 3),
 * PX_DIFF_RELAX (relaxations of the equivalence, a number: see diffops.h;
 * default 3 = DO_RELAX_LATEHUP | DO_RELAX_ETEOF),
 * PX_DIFF_MANY (how often "many" is decoded: 0..256, default 8, about one
 * program in twenty; 0 turns it off), PX_DIFF_IGNORE (violations that do not
 * fail a seed, by name: e.g. "epoll-eperm,et-eof-spin").
 * The summary line counts failing seeds per kind of finding (contract
 * violations by name, "diff" for traces that differ) with the first seed of
 * each.
 * make check runs this program once per backend (POLLUX_BACKEND): the
 * comparison always covers every backend of px_backends(), so each run is the
 * same check.  A build configured with a single backend (--disable-epoll
 * --disable-poll) has nothing to compare: the program then exits 77, which
 * make check reports as SKIP (not as a PASS that could not have failed). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "diffops.h"
#include "testutil.h"

static uint64_t opt_seeds = 200, opt_start = 1;
static uint64_t kind_first[V_N];
static unsigned kind_count[V_N];
static int opt_ops = 200, opt_dump, opt_maxfail = 3;

static int under_valgrind(void)
{
	const char *p = getenv("LD_PRELOAD");
	const char *w = getenv("PX_TEST_WRAPPER");
	return (p && strstr(p, "valgrind")) || (w && strstr(w, "valgrind"));
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);
	return v && *v ? strtoull(v, NULL, 0) : dflt;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void dump_seed(uint64_t seed)
{
	static struct do_prog p;
	const char *const *be = px_backends();

	do_generate(&p, seed, opt_ops);
	printf("seed %llu, %d ops:\n", (unsigned long long)seed, p.nops);
	do_print_prog(&p, 0, p.nops, stdout);
	for (int i = 0; be[i]; i++) {
		struct do_trace t;
		int rc = do_run(&p, be[i], &t);
		if (rc < 0)
			printf("%s: run failed: %d\n", be[i], rc);
		do_print_trace(&t, stdout);
		do_trace_free(&t);
	}
}

static void test_diff_seeds(void **state)
{
	static struct do_prog p;
	int failed = 0;
	uint64_t first_bad = 0;
	double t0 = now_s();
	char *fails = calloc(1, 4096);
	size_t flen = 0;

	(void)state;
	/* The comparison covers exactly the configured backends. */
	int nbe = 0;
	while (px_backends()[nbe])
		nbe++;
	assert_int_equal(nbe, tu_configured_count());
	assert_true(nbe >= 2);
	for (uint64_t k = 0; k < opt_seeds; k++) {
		uint64_t seed = opt_start + k;
		do_generate(&p, seed, opt_ops);
		FILE *out = failed < opt_maxfail ? stdout : NULL;
		if (out)
			fflush(stdout);
		int rc = do_check_all(&p, out);
		if (rc < 0)
			fail_msg("seed %llu: setup failed: %d", (unsigned long long)seed, rc);
		if (rc > 0) {
			for (int v = 0; v < V_N; v++)
				if (do_last_viol & (1u << v)) {
					if (!kind_count[v]++)
						kind_first[v] = seed;
				}
			if (!failed)
				first_bad = seed;
			failed++;
			if (out)
				printf("^^^ seed %llu: %d run(s) with violations or backend pair(s) that "
				       "differ (reproduce: "
				       "tests/test_diff --seed %llu --ops %d --dump)\n\n",
				       (unsigned long long)seed, rc, (unsigned long long)seed, opt_ops);
			if (fails && flen < 4000)
				flen += (size_t)snprintf(fails + flen, 4096 - flen, " %llu",
				                         (unsigned long long)seed);
		}
	}
	do_reap_children();
	printf("[ diff     ] %llu seeds from %llu, %d ops each, backends:",
	       (unsigned long long)opt_seeds, (unsigned long long)opt_start, opt_ops);
	for (const char *const *b = px_backends(); *b; b++)
		printf(" %s", *b);
	printf("; %.2f s; %d failing seed(s)%s%s\n", now_s() - t0, failed, failed ? ":" : "",
	       failed && fails ? fails : "");
	if (failed) {
		printf("[ diff     ] by kind (seeds, first):");
		for (int v = 0; v < V_N; v++)
			if (kind_count[v])
				printf(" %s %u (%llu)", v ? do_viol_name(v) : "diff", kind_count[v],
				       (unsigned long long)kind_first[v]);
		printf("\n");
	}
	free(fails);
	if (failed)
		fail_msg("%d of %llu seeds failed: contract violations or traces that differ "
		         "across backends (first: %llu)",
		         failed, (unsigned long long)opt_seeds, (unsigned long long)first_bad);
}

int main(int argc, char **argv)
{
	int single = 0;
	uint64_t seed = 0;

	opt_seeds = env_u64("PX_DIFF_SEEDS", under_valgrind() ? 50 : 200);
	opt_start = env_u64("PX_DIFF_START", 1);
	opt_ops = (int)env_u64("PX_DIFF_OPS", 200);
	opt_maxfail = (int)env_u64("PX_DIFF_MAXFAIL", 3);
	do_relax = (unsigned)env_u64("PX_DIFF_RELAX", do_relax);
	do_many_gate = (unsigned)env_u64("PX_DIFF_MANY", do_many_gate);
	do_viol_ignore = do_viol_parse(getenv("PX_DIFF_IGNORE"));
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--seeds") && v)
			opt_seeds = strtoull(v, NULL, 0), i++;
		else if (!strcmp(a, "--start") && v)
			opt_start = strtoull(v, NULL, 0), i++;
		else if (!strcmp(a, "--ops") && v)
			opt_ops = atoi(v), i++;
		else if (!strcmp(a, "--seed") && v)
			single = 1, seed = strtoull(v, NULL, 0), i++;
		else if (!strcmp(a, "--dump"))
			opt_dump = 1;
		else if (!strcmp(a, "--maxfail") && v)
			opt_maxfail = atoi(v), i++;
		else {
			fprintf(stderr,
			        "usage: %s [--seeds N] [--start S] [--ops K] [--maxfail M]\n"
			        "       %s --seed S [--ops K] [--dump]\n",
			        argv[0], argv[0]);
			return 2;
		}
	}
	if (opt_ops < 1)
		opt_ops = 1;
	if (opt_ops > DO_MAXOPS)
		opt_ops = DO_MAXOPS;
	if (single) {
		opt_start = seed;
		opt_seeds = 1;
		if (opt_dump)
			dump_seed(seed);
	}
	/* A watchdog scaled to the work: about 20 ms per seed of 200 ops is
	 * generous without valgrind; never less than two minutes. */
	signal(SIGALRM, SIG_DFL);
	uint64_t budget = 120 + opt_seeds * (uint64_t)opt_ops / (under_valgrind() ? 200 : 2000);
	alarm(budget > 86400 ? 86400 : (unsigned)budget);

	if (tu_configured_count() < 2) {
		printf("# SKIP: test_diff compares backends; this build has only %s\n",
		       tu_configured_backends()[0]);
		return 77;
	}

	tu_check_interposers();
	const char *be = getenv("POLLUX_BACKEND");
	char name[64];
	snprintf(name, sizeof name, "test_diff[%s]", be && *be ? be : "default");
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_diff_seeds),
	};
	return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
