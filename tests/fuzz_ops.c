/* libFuzzer target over the diffops language (tests/diffops.h): the input
 * bytes are decoded into a program (4 bytes per operation, 8 for a timer with
 * an action; at most 512 operations), which runs on every backend of
 * px_backends() in-process; a contract violation recorded by a run (the
 * interpreter's own checks) or any difference between the traces (under the
 * equivalence of tests/diffops.c) prints the traces and aborts.  Crashes,
 * leaks and UB are caught by the sanitizers.  The same language as
 * test_diff, the new operations included: copies (dup, dup2, SCM_RIGHTS in
 * flight or received), children (fork: each is told to exit at the end of
 * its run and reaped by a later one), other kinds of file at a reused number
 * (pipe, regular file, UDP, eventfd), refused changes, and "many" (thousands
 * of extra socketpairs at 1000 and up, made once per process and kept).
 * Every run closes the rest of its files and frees its loop, so fd use is
 * bounded (the pinned fds at 600..693, the "many" pool, the loop's own).
 *
 * Build and run: tests/fuzz.sh [seconds].  $PX_DIFF_RELAX (a number) turns on
 * the relaxations of diffops.h, as for test_diff; $PX_DIFF_MANY (0..256) how
 * often "many" is decoded; $PX_DIFF_IGNORE violations (by name) that do not
 * count as findings. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "diffops.h"

#define FUZZ_MAXOPS 512

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	const char *v = getenv("PX_DIFF_RELAX");
	if (v && *v)
		do_relax = (unsigned)strtoul(v, NULL, 0);
	do_viol_ignore = do_viol_parse(getenv("PX_DIFF_IGNORE"));
	v = getenv("PX_DIFF_MANY");
	if (v && *v)
		do_many_gate = (unsigned)strtoul(v, NULL, 0);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct do_prog p;

	do_decode(&p, data, size, FUZZ_MAXOPS);
	if (p.nops == 0)
		return 0;
	int rc = do_check_all(&p, stderr);
	if (rc < 0) {
		/* Could not set up (EMFILE...): not a finding of the library. */
		fprintf(stderr, "fuzz_ops: setup failed: %d\n", rc);
		return 0;
	}
	if (rc > 0) {
		fprintf(stderr, "fuzz_ops: %d backend run(s) or pair(s) failed (%s)\n", rc,
		        (do_last_viol & ~1u) ? "contract violation" : "traces differ");
		abort();
	}
	return 0;
}
