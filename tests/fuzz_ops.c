/* libFuzzer target over the diffops language (tests/diffops.h): the input
 * bytes are decoded into a program (4 bytes per operation, 8 for a timer with
 * an action; at most 512 operations), which runs on every backend of
 * px_backends() in-process; any difference between the traces (under the
 * equivalence of tests/diffops.c) prints both traces and aborts.  Crashes,
 * leaks and UB are caught by the sanitizers.  Every run closes all of its
 * sockets and frees its loop, so fd use is bounded (12 pinned fds at
 * 600..611, plus the loop's own).
 *
 * Build and run: tests/fuzz.sh [seconds].  $PX_DIFF_RELAX (a number) turns on
 * the relaxations of diffops.h, as for test_diff. */
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
		fprintf(stderr, "fuzz_ops: %d backend pair(s) differ\n", rc);
		abort();
	}
	return 0;
}
