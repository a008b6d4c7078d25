/* waitcount: counts the wait system calls of the process, for the test
 * programs that do not link faultinj.c (which counts them itself and
 * provides tu_wait_calls() there).
 *
 * Defines epoll_wait, poll (and __poll_chk, what a _FORTIFY_SOURCE build of
 * the library calls instead) and select in the test executable; like
 * faultinj.c's wrappers, they take precedence over libc's for libpollux.so
 * too, count the call and forward to the real function found with
 * dlsym(RTLD_NEXT) under the symbol they are (interpose.h: select may be
 * __select64; on 32-bit glibc both selects are defined).  __poll_chk only
 * where libc has it.  tu_wait_calls() (testutil.h) is the total, and
 * tu_init checks at start-up that the library's waits reach it.  A loop's
 * iterations each make one wait, and the select/poll PX_ET emulation's
 * probe is a poll(..., 0): counting them tells an idle loop (a few calls per
 * event or timer) from a spinning one (thousands per second) however busy
 * the machine is, which CPU-time ratios cannot do on their own.
 *
 * The count is a relaxed atomic: test_post, test_signal and test_threads
 * run loops and system calls in several threads (and under
 * ThreadSanitizer); the other programs are single-threaded. */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "testutil.h"
#include "interpose.h"

#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/select.h>
#ifdef HAVE_SYS_EPOLL_H
#include <sys/epoll.h>
#endif

static atomic_long nwaits;

long tu_wait_calls(void)
{
	return atomic_load_explicit(&nwaits, memory_order_relaxed);
}

typedef int poll_fn(struct pollfd *, nfds_t, int);
typedef int select_fn(int, fd_set *, fd_set *, fd_set *, struct timeval *);

#ifdef HAVE_SYS_EPOLL_H
typedef int epoll_wait_fn(int, struct epoll_event *, int, int);

int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
	IP_REAL(epoll_wait_fn *, epoll_wait);
	atomic_fetch_add_explicit(&nwaits, 1, memory_order_relaxed);
	return real_epoll_wait(epfd, events, maxevents, timeout);
}
#endif

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
	IP_REAL(poll_fn *, poll);
	atomic_fetch_add_explicit(&nwaits, 1, memory_order_relaxed);
	return real_poll(fds, nfds, timeout);
}

#ifdef HAVE___POLL_CHK
int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen);
int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen)
{
	if (fdslen / sizeof(*fds) < nfds)
		abort();
	return poll(fds, nfds, timeout);
}
#endif

int select(int nfds, fd_set *rd, fd_set *wr, fd_set *ex, struct timeval *tv)
{
	IP_REAL(select_fn *, select);
	atomic_fetch_add_explicit(&nwaits, 1, memory_order_relaxed);
	return real_select(nfds, rd, wr, ex, tv);
}

#ifdef IP_GLIBC_TIME64
/* glibc's other select (interpose.h). */
typedef int other_select_fn(int, fd_set *, fd_set *, fd_set *, struct ip_other_timeval *);
int ip_other_select(int nfds, fd_set *rd, fd_set *wr, fd_set *ex, struct ip_other_timeval *tv)
	__asm__(IP_OTHER_SELECT);
int ip_other_select(int nfds, fd_set *rd, fd_set *wr, fd_set *ex, struct ip_other_timeval *tv)
{
	static _Atomic(other_select_fn *) real_other;
	other_select_fn *real = atomic_load_explicit(&real_other, memory_order_acquire);
	if (!real) {
		if (!(real = (other_select_fn *)dlsym(RTLD_NEXT, IP_OTHER_SELECT)))
			abort();
		atomic_store_explicit(&real_other, real, memory_order_release);
	}
	atomic_fetch_add_explicit(&nwaits, 1, memory_order_relaxed);
	return real(nfds, rd, wr, ex, tv);
}
#endif
