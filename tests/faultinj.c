/* faultinj: see faultinj.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "faultinj.h"
#include "allocinj.h"
#include "interpose.h"
#include "portable.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#ifdef HAVE_SYS_EPOLL_H
#include <sys/epoll.h>
#endif
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

struct plan {
	bool on;
	long skip, count; /* count < 0: forever */
	int err;
	fi_pred *pred;
	void *parg;
	unsigned delay_us;
};

#define FI_MAXERR 24
#define FI_LOG 256

struct stat_row {
	int err[FI_MAXERR];
	long n[FI_MAXERR];
};

static struct plan plans[FI_NCALLS];
static long ncalls[FI_NCALLS], nfaults[FI_NCALLS];
static struct stat_row case_stats[FI_NCALLS], total_stats[FI_NCALLS];
static int wlog[FI_NCALLS][FI_LOG];
static long wlog_n[FI_NCALLS];
static long nreal_eintr[FI_NCALLS];

static const char *const names[FI_NCALLS] = {
	[FI_EPOLL_WAIT] = "epoll_wait", [FI_EPOLL_CTL] = "epoll_ctl", [FI_POLL] = "poll",
	[FI_SELECT] = "select",         [FI_ACCEPT4] = "accept4",     [FI_ACCEPT] = "accept",
	[FI_SENDMSG] = "sendmsg",       [FI_SEND] = "send",           [FI_WRITEV] = "writev",
	[FI_REALLOC] = "realloc",
};

const char *fi_call_name(enum fi_call c)
{
	return (unsigned)c < FI_NCALLS ? names[c] : "?";
}

/* ---- plans --------------------------------------------------------------- */

void fi_plan_ex(enum fi_call c, long skip, long count, int err, fi_pred *pred, void *parg,
                unsigned delay_us)
{
	plans[c] = (struct plan){ true, skip, count, err, pred, parg, delay_us };
}

void fi_plan(enum fi_call c, long skip, long count, int err)
{
	fi_plan_ex(c, skip, count, err, NULL, NULL, 0);
}

void fi_clear(enum fi_call c)
{
	plans[c].on = false;
}

long fi_left(enum fi_call c)
{
	if (!plans[c].on)
		return 0;
	return plans[c].count;
}

void fi_reset(void)
{
	memset(plans, 0, sizeof plans);
	memset(ncalls, 0, sizeof ncalls);
	memset(nfaults, 0, sizeof nfaults);
	memset(case_stats, 0, sizeof case_stats);
	memset(wlog_n, 0, sizeof wlog_n);
	memset(nreal_eintr, 0, sizeof nreal_eintr);
}

bool fi_pred_fd(const struct fi_args *a, void *arg)
{
	return a->fd == *(const int *)arg;
}

bool fi_pred_blocking(const struct fi_args *a, void *arg)
{
	(void)arg;
	return a->timeout_ms != 0;
}

bool fi_pred_probe(const struct fi_args *a, void *arg)
{
	(void)arg;
	return a->timeout_ms == 0;
}

bool fi_pred_op(const struct fi_args *a, void *arg)
{
	return a->op == *(const int *)arg;
}

static void stat_add(struct stat_row *r, int err)
{
	for (int i = 0; i < FI_MAXERR; i++) {
		if (r->n[i] == 0 || r->err[i] == err) {
			r->err[i] = err;
			r->n[i]++;
			return;
		}
	}
}

/* Decides one call: 0 to go through, else the error to inject. */
static int decide(const struct fi_args *a)
{
	struct plan *p = &plans[a->call];

	ncalls[a->call]++;
	if (!p->on || p->count == 0)
		return 0;
	if (p->pred && !p->pred(a, p->parg))
		return 0;
	if (p->skip > 0) {
		p->skip--;
		return 0;
	}
	if (p->count > 0)
		p->count--;
	nfaults[a->call]++;
	stat_add(&case_stats[a->call], p->err);
	stat_add(&total_stats[a->call], p->err);
	return p->err;
}

/* Every wait of the process (never reset): tu_wait_calls() of testutil.h,
 * which tests/waitcount.c provides in the programs without this file. */
static long nwaits_total;

long tu_wait_calls(void);
long tu_wait_calls(void)
{
	return nwaits_total;
}

static void log_wait(enum fi_call c, int timeout_ms)
{
	nwaits_total++;
	wlog[c][wlog_n[c] % FI_LOG] = timeout_ms;
	wlog_n[c]++;
}

int fi_wait_log(enum fi_call c, int *out, int cap)
{
	long n = wlog_n[c] < FI_LOG ? wlog_n[c] : FI_LOG;
	long first = wlog_n[c] - n;
	int k = 0;

	for (long i = 0; i < n && k < cap; i++)
		out[k++] = wlog[c][(first + i) % FI_LOG];
	return k;
}

static void sleep_us(unsigned long us)
{
	struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000L };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Before an injected failure of a wait: part of the timeout passes. */
static void wait_delay(enum fi_call c, int timeout_ms)
{
	unsigned long d = plans[c].delay_us;

	if (timeout_ms >= 0 && (unsigned long)timeout_ms * 1000u < d)
		d = (unsigned long)timeout_ms * 1000u;
	if (d)
		sleep_us(d);
}

long fi_calls(enum fi_call c)
{
	return ncalls[c];
}

long fi_real_eintr(enum fi_call c)
{
	return nreal_eintr[c];
}

static int note(enum fi_call c, int rc)
{
	if (rc < 0 && errno == EINTR)
		nreal_eintr[c]++;
	return rc;
}

long fi_faults(enum fi_call c)
{
	return nfaults[c];
}

long fi_total(enum fi_call c, int err)
{
	for (int i = 0; i < FI_MAXERR; i++)
		if (total_stats[c].n[i] && total_stats[c].err[i] == err)
			return total_stats[c].n[i];
	return 0;
}

const char *fi_summary(bool per_case)
{
	static char buf[1024];
	size_t len = 0;
	const struct stat_row *rows = per_case ? case_stats : total_stats;

	buf[0] = '\0';
	for (int c = 0; c < FI_NCALLS; c++) {
		for (int i = 0; i < FI_MAXERR && rows[c].n[i]; i++) {
			int e = rows[c].err[i];
			const char *en = e == FI_SHORT ? "SHORT" : tp_errname(e);
			int w = snprintf(buf + len, sizeof buf - len, "%s%s %s=%ld", len ? ", " : "",
			                 names[c], en ? en : "?", rows[c].n[i]);
			if (w < 0 || (size_t)w >= sizeof buf - len)
				return buf;
			len += (size_t)w;
		}
	}
	if (!len)
		snprintf(buf, sizeof buf, "none");
	return buf;
}

/* ---- the real functions --------------------------------------------------- */

/* IP_REAL (interpose.h): the next definition of the symbol each wrapper is,
 * which is not always its C name (select is __select64 under glibc's
 * _TIME_BITS=64 on a 32-bit ABI). */

#ifdef HAVE_SYS_EPOLL_H
typedef int epoll_wait_fn(int, struct epoll_event *, int, int);
typedef int epoll_ctl_fn(int, int, int, struct epoll_event *);
#endif
typedef int poll_fn(struct pollfd *, nfds_t, int);
typedef int select_fn(int, fd_set *, fd_set *, fd_set *, struct timeval *);
typedef int accept4_fn(int, struct sockaddr *, socklen_t *, int);
typedef int accept_fn(int, struct sockaddr *, socklen_t *);
typedef ssize_t sendmsg_fn(int, const struct msghdr *, int);
typedef ssize_t send_fn(int, const void *, size_t, int);
typedef ssize_t writev_fn(int, const struct iovec *, int);

/* ---- the wrappers ---------------------------------------------------------- */

#ifdef HAVE_SYS_EPOLL_H
int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
	IP_REAL(epoll_wait_fn *, epoll_wait);
	struct fi_args a = { FI_EPOLL_WAIT, epfd, 0, timeout, (size_t)maxevents };
	log_wait(FI_EPOLL_WAIT, timeout);
	int err = decide(&a);
	if (err) {
		wait_delay(FI_EPOLL_WAIT, timeout);
		errno = err;
		return -1;
	}
	return note(FI_EPOLL_WAIT, real_epoll_wait(epfd, events, maxevents, timeout));
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
	IP_REAL(epoll_ctl_fn *, epoll_ctl);
	struct fi_args a = { FI_EPOLL_CTL, fd, op, 0, 0 };
	int err = decide(&a);
	if (err) {
		errno = err;
		return -1;
	}
	return real_epoll_ctl(epfd, op, fd, event);
}
#endif

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
	IP_REAL(poll_fn *, poll);
	struct fi_args a = { FI_POLL, -1, 0, timeout, (size_t)nfds };
	log_wait(FI_POLL, timeout);
	int err = decide(&a);
	if (err) {
		wait_delay(FI_POLL, timeout);
		errno = err;
		return -1;
	}
	return note(FI_POLL, real_poll(fds, nfds, timeout));
}

#ifdef HAVE___POLL_CHK
/* What a _FORTIFY_SOURCE build of the library calls instead of poll (glibc). */
int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen);
int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen)
{
	if (fdslen / sizeof(*fds) < nfds)
		abort();
	return poll(fds, nfds, timeout);
}
#endif

/* select's timeout in ms (-1: none), from its two fields. */
static int select_timeout(bool has, long long sec, long long usec)
{
	if (!has)
		return -1;
	long long ms = sec * 1000 + (usec + 999) / 1000;
	return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

/* The fault decision of a select: 0 to go through, else the errno. */
static int select_decide(int nfds, int timeout)
{
	struct fi_args a = { FI_SELECT, -1, 0, timeout, (size_t)nfds };
	log_wait(FI_SELECT, timeout);
	int err = decide(&a);
	if (err)
		wait_delay(FI_SELECT, timeout);
	return err;
}

int select(int nfds, fd_set *rd, fd_set *wr, fd_set *ex, struct timeval *tv)
{
	IP_REAL(select_fn *, select);
	int err = select_decide(nfds, select_timeout(tv, tv ? (long long)tv->tv_sec : 0,
	                                             tv ? (long long)tv->tv_usec : 0));
	if (err) {
		errno = err;
		return -1;
	}
	return note(FI_SELECT, real_select(nfds, rd, wr, ex, tv));
}

#ifdef IP_GLIBC_TIME64
/* glibc's other select (interpose.h): the same plan, its own timeval. */
typedef int other_select_fn(int, fd_set *, fd_set *, fd_set *, struct ip_other_timeval *);
int fi_other_select(int nfds, fd_set *rd, fd_set *wr, fd_set *ex, struct ip_other_timeval *tv)
	__asm__(IP_OTHER_SELECT);
int fi_other_select(int nfds, fd_set *rd, fd_set *wr, fd_set *ex, struct ip_other_timeval *tv)
{
	static other_select_fn *real;
	if (!real && !(real = (other_select_fn *)dlsym(RTLD_NEXT, IP_OTHER_SELECT)))
		abort();
	int err = select_decide(nfds, select_timeout(tv, tv ? (long long)tv->tv_sec : 0,
	                                             tv ? (long long)tv->tv_usec : 0));
	if (err) {
		errno = err;
		return -1;
	}
	return note(FI_SELECT, real(nfds, rd, wr, ex, tv));
}
#endif

#ifdef HAVE_ACCEPT4
int accept4(int fd, struct sockaddr *sa, socklen_t *salen, int flags)
{
	IP_REAL(accept4_fn *, accept4);
	struct fi_args a = { FI_ACCEPT4, fd, 0, 0, 0 };
	int err = decide(&a);
	if (err) {
		errno = err;
		return -1;
	}
	return real_accept4(fd, sa, salen, flags);
}
#endif

int accept(int fd, struct sockaddr *sa, socklen_t *salen)
{
	IP_REAL(accept_fn *, accept);
	struct fi_args a = { FI_ACCEPT, fd, 0, 0, 0 };
	int err = decide(&a);
	if (err) {
		errno = err;
		return -1;
	}
	return real_accept(fd, sa, salen);
}

static ssize_t do_sendmsg(sendmsg_fn *real, int fd, const struct msghdr *msg, int flags)
{
	size_t len = 0;
	for (size_t i = 0; i < (size_t)msg->msg_iovlen; i++)
		len += msg->msg_iov[i].iov_len;
	struct fi_args a = { FI_SENDMSG, fd, 0, 0, len };
	int err = decide(&a);
	if (err == FI_SHORT && len > 0) {
		/* The first non-empty byte only. */
		struct msghdr m = *msg;
		struct iovec one;
		for (size_t i = 0; i < (size_t)msg->msg_iovlen; i++) {
			if (msg->msg_iov[i].iov_len) {
				one = (struct iovec){ msg->msg_iov[i].iov_base, 1 };
				break;
			}
		}
		m.msg_iov = &one;
		m.msg_iovlen = 1;
		return real(fd, &m, flags);
	}
	if (err > 0) {
		errno = err;
		return -1;
	}
	return real(fd, msg, flags);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	IP_REAL(sendmsg_fn *, sendmsg);
	return do_sendmsg(real_sendmsg, fd, msg, flags);
}

#ifdef IP_GLIBC_TIME64
/* glibc's other sendmsg (interpose.h; the same types). */
ssize_t fi_other_sendmsg(int fd, const struct msghdr *msg, int flags) __asm__(IP_OTHER_SENDMSG);
ssize_t fi_other_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	static sendmsg_fn *real;
	if (!real && !(real = (sendmsg_fn *)dlsym(RTLD_NEXT, IP_OTHER_SENDMSG)))
		abort();
	return do_sendmsg(real, fd, msg, flags);
}
#endif

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	IP_REAL(send_fn *, send);
	struct fi_args a = { FI_SEND, fd, 0, 0, len };
	int err = decide(&a);
	if (err == FI_SHORT)
		return real_send(fd, buf, len ? 1 : 0, flags);
	if (err > 0) {
		errno = err;
		return -1;
	}
	return real_send(fd, buf, len, flags);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
	IP_REAL(writev_fn *, writev);
	size_t len = 0;
	for (int i = 0; i < iovcnt; i++)
		len += iov[i].iov_len;
	struct fi_args a = { FI_WRITEV, fd, 0, 0, len };
	int err = decide(&a);
	if (err == FI_SHORT && len > 0) {
		for (int i = 0; i < iovcnt; i++)
			if (iov[i].iov_len)
				return real_writev(fd, &(struct iovec){ iov[i].iov_base, 1 }, 1);
	}
	if (err > 0) {
		errno = err;
		return -1;
	}
	return real_writev(fd, iov, iovcnt);
}

/* realloc is defined by allocinj.c (the one interposer of the allocator
 * functions); it asks here, for every call, whether the FI_REALLOC plan
 * fails it. */
bool fi_realloc_fault(size_t n)
{
	struct fi_args a = { FI_REALLOC, -1, 0, 0, n };

	return decide(&a) != 0;
}

bool fi_realloc_active(void)
{
	return ai_active();
}
