/* allocinj: allocation-failure injection for the pollux test programs.
 *
 * allocinj.c defines malloc, calloc, realloc and free in the test executable.
 * As with faultinj's syscalls, the executable's definitions take precedence
 * for every object of the process, libpollux.so included; each forwards to
 * the next definition (dlsym(RTLD_NEXT): libc's, or the sanitizer's
 * interceptor under ASan, which then still sees every block).
 *
 * The library's allocations.  While armed (ai_arm), an allocation call counts
 * when its return address lies in the library's object: the object that
 * holds the function passed to ai_init (libpollux.so).  Calls from the test
 * code, from cmocka and from libc (stdio, opendir, ...) never count, so test
 * code may do anything while armed.  Consequence: memory that libc allocates
 * on the library's behalf (getaddrinfo in px_listen_tcp/px_connect_tcp) is
 * not counted.  When the library is linked into the executable itself (no
 * separate object), every call made while armed counts except cmocka's, and
 * the test must then not allocate while armed; ai_strict() tells which.
 *
 * Counted allocations are numbered 1, 2, ... since ai_reset.  ai_fail_at(n)
 * makes the n-th one fail (NULL, errno ENOMEM; a failed realloc leaves the
 * block alone).  ai_fail_all(true) makes every counted one fail without
 * numbering it: a probe of "does this call need memory now?".
 *
 * Leaks.  Every block returned by a counted call is tracked until it is
 * freed (by anyone; realloc moves the tracking): ai_live() after freeing the
 * loop is a leak check that needs no sanitizer.
 *
 * valgrind replaces the executable's allocator functions with its own, so
 * under valgrind nothing here runs: ai_active() is false, and a test must say
 * so and skip what it cannot do.
 *
 * faultinj's FI_REALLOC plan is applied by the realloc defined here (through
 * fi_realloc_fault, which faultinj.c defines; a weak reference, so programs
 * without faultinj.c need not link it).
 *
 * Not thread-safe: the pollux tests are single-threaded.
 */
#ifndef PX_ALLOCINJ_H
#define PX_ALLOCINJ_H

#include <stdbool.h>
#include <stddef.h>

enum ai_kind { AI_MALLOC, AI_CALLOC, AI_REALLOC };

/* Finds the library's object from one of its functions.  Call once, before
 * arming. */
void ai_init(const void *lib_fn);
/* True when only the library's own object counts (see above). */
bool ai_strict(void);
/* Whether the allocator functions are really interposed (false under
 * valgrind). */
bool ai_active(void);

/* Clears the counters, the failure plan and the tracked blocks; disarms. */
void ai_reset(void);
void ai_arm(void);
void ai_disarm(void);
/* Fail the n-th counted allocation (n >= 1); 0: none. */
void ai_fail_at(long n);
/* Fail every counted allocation (not numbered) while on. */
void ai_fail_all(bool on);

long ai_count(void);  /* counted allocations since ai_reset (probes excluded) */
long ai_faults(void); /* failures injected by ai_fail_at since ai_reset */
long ai_probe_faults(void); /* failures injected by ai_fail_all since ai_reset */

/* One counted allocation. */
struct ai_site {
	enum ai_kind kind;
	size_t size;
	const void *caller; /* return address */
};
/* The k-th counted allocation (1-based) since ai_reset; false when k is out
 * of range or beyond what is kept (the first 4096). */
bool ai_site(long k, struct ai_site *out);
/* The allocation that ai_fail_at made fail; false if none. */
bool ai_fault_site(struct ai_site *out);
/* "realloc(2048) at libpollux.so.1+0x4a2c" (static buffer per call of
 * buf). */
const char *ai_site_str(const struct ai_site *s, char *buf, size_t len);
const char *ai_kind_name(enum ai_kind k);

/* Blocks from counted allocations that are still allocated. */
long ai_live(void);
/* Writes up to max of them as "malloc(16400) at libpollux.so.1+0x5123; ..." */
const char *ai_live_str(char *buf, size_t len, int max);

#endif
