/* interpose.h: finding the function that an interposer (a definition of a
 * libc function in the test executable: faultinj.c, waitcount.c,
 * test_acceptor.c) stands in for.
 *
 * The symbol a C definition gets is not always its C name: headers rename
 * calls whose types changed, and the definition gets the new name and the
 * new types with them:
 *   glibc on a 32-bit ABI with _TIME_BITS=64: select is __select64 (struct
 *     timeval of two 64-bit fields), sendmsg __sendmsg64, recvmsg
 *     __recvmsg64, ...
 *   musl on a 32-bit ABI: select is __select_time64;
 *   NetBSD: select is __select50.
 * The real function is then the next definition of that same symbol, not
 * of the C name: dlsym(RTLD_NEXT, "select") would hand __select64's
 * timeval to the 32-bit select, which misreads it (a 100 ms timeout becomes
 * 0: the loop spins).  ip_real asks the dynamic linker which symbol the
 * interposer is (dladdr), and falls back to the C name where it cannot say.
 *
 * IP_GLIBC_TIME64: glibc on a 32-bit ABI, which has both a 32-bit-time and a
 * 64-bit-time entry point of select and sendmsg; a library built with the
 * other _TIME_BITS than the tests calls the other one, so the interposers
 * define both (IP_OTHER_*: the one the C name is not here), and testutil.c
 * checks both at start-up. */
#ifndef PX_TEST_INTERPOSE_H
#define PX_TEST_INTERPOSE_H

#include <config.h>
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static inline void *ip_real(void *self, const char *name)
{
	const char *sym = name;
#ifdef HAVE_DLADDR
	Dl_info di;
	if (dladdr(self, &di) && di.dli_sname && di.dli_saddr == self)
		sym = di.dli_sname;
#else
	(void)self;
#endif
	void *p = dlsym(RTLD_NEXT, sym);
	if (!p) {
		const char *e = dlerror();
		fprintf(stderr, "interposer %s: dlsym(RTLD_NEXT, \"%s\") failed: %s\n", name, sym,
		        e ? e : "?");
		abort();
	}
	return p;
}

/* In an interposer of `name`: real_<name>, the function it forwards to,
 * looked up once and kept in an atomic static (the interposers run in
 * several threads in the threaded tests: test_post, test_signal,
 * test_threads, also under ThreadSanitizer). */
#define IP_REAL(type, name)                                                       \
	static _Atomic(type) ip_real_##name;                                      \
	type real_##name = atomic_load_explicit(&ip_real_##name, memory_order_acquire); \
	if (!real_##name) {                                                       \
		real_##name = (type)ip_real((void *)name, #name);                 \
		atomic_store_explicit(&ip_real_##name, real_##name, memory_order_release); \
	}

#if defined(__GLIBC__) && defined(__TIMESIZE) && __TIMESIZE == 32 &&                  \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
#define IP_GLIBC_TIME64 1
#ifdef __USE_TIME_BITS64 /* the C names are the 64-bit ones */
#define IP_OTHER_SELECT "select"
#define IP_OTHER_SENDMSG "sendmsg"
typedef int32_t ip_other_time;
#else
#define IP_OTHER_SELECT "__select64"
#define IP_OTHER_SENDMSG "__sendmsg64"
typedef int64_t ip_other_time;
#endif
/* struct timeval of the other select (glibc's __timeval64 has a 64-bit
 * tv_usec too). */
struct ip_other_timeval {
	ip_other_time tv_sec;
	ip_other_time tv_usec;
};
#endif

#endif
