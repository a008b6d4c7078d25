#include <config.h>

#include <time.h>

#include "core.h"

/* Nanoseconds keep repeating timers exact; callers round to ms only at the
 * edges (the wait's timeout and px_loop_now). */
uint64_t pxi_clock_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
