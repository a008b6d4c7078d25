#ifdef HAVE_CONFIG_H
#include <config.h> /* HAVE_EPOLL, HAVE_POLL: the backends this build has */
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "testutil.h"
#include "interpose.h"
#include "portable.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int tu_setup(void **state)
{
	(void)state;
	alarm(TU_WATCHDOG_S);
	return 0;
}

static void init_io_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	(void)fd;
	(void)revents;
	(*(int *)arg)++;
}

/* The wait interposer (waitcount.c or faultinj.c) must see the library's
 * waits, or every check that counts them proves nothing: one iteration of
 * the loop with a ready pipe must count one wait or more.  A libc whose
 * headers rename the wait (interpose.h) shows up here.  Ends the program. */
static void check_wait_interposer(px_loop *l)
{
	int p[2], calls = 0;
	if (tp_pipe(p, TP_NONBLOCK | TP_CLOEXEC) != 0 || write(p[1], "x", 1) != 1) {
		fprintf(stderr, "tu_init: pipe: %s\n", strerror(errno));
		exit(99);
	}
	long w0 = tu_wait_calls();
	int rc = px_io_add(l, p[0], PX_READ, init_io_cb, &calls);
	if (rc == 0)
		rc = px_loop_run(l, PX_RUN_NOWAIT);
	if (rc == 0)
		rc = px_io_del(l, p[0]);
	close(p[0]);
	close(p[1]);
	if (rc != 0 || calls != 1) {
		fprintf(stderr, "tu_init: one iteration with a ready pipe: rc %d, %d callback(s)\n", rc,
		        calls);
		exit(99);
	}
	if (tu_wait_calls() == w0) {
		fprintf(stderr,
		        "tu_init: the wait interposer did not see the %s backend's wait: libpollux "
		        "calls a symbol that tests/waitcount.c or tests/faultinj.c does not define "
		        "(see tests/interpose.h), and the wait counts would prove nothing\n",
		        px_loop_backend(l));
		exit(99);
	}
}

#ifdef IP_GLIBC_TIME64
/* Both of glibc's selects (interpose.h) are interposed, each forwards to its
 * own real one, and each reads its own timeval: 30 ms must take 20 ms to 2
 * s and count one wait. */
static void check_select_entry(const char *sym, int (*fn)(int, void *, void *, void *, void *),
                               void *tv)
{
	long w0 = tu_wait_calls();
	double t0 = tu_now_ms();
	int rc = fn ? fn(0, NULL, NULL, NULL, tv) : -2;
	double ms = tu_now_ms() - t0;
	if (rc != 0 || tu_wait_calls() != w0 + 1 || ms < 20 || ms > 2000) {
		fprintf(stderr,
		        "tu_init: %s(0, NULL, NULL, NULL, 30 ms): rc %d in %.1f ms, %ld wait(s) "
		        "counted: that select is not interposed, or forwards to the wrong one\n",
		        sym, rc, ms, tu_wait_calls() - w0);
		exit(99);
	}
}

static void check_select_entries(void)
{
	struct {
		int32_t sec, usec;
	} t32 = { 0, 30000 };
	struct {
		int64_t sec, usec;
	} t64 = { 0, 30000 };
	typedef int sel(int, void *, void *, void *, void *);
	check_select_entry("select", (sel *)dlsym(RTLD_DEFAULT, "select"), &t32);
	check_select_entry("__select64", (sel *)dlsym(RTLD_DEFAULT, "__select64"), &t64);
}
#endif

void tu_init(const char *prog)
{
	signal(SIGALRM, SIG_DFL);
	alarm(TU_WATCHDOG_S);
	/* cmocka's default output does not show the group name: say which
	 * backend this run is for. */
	px_loop *l = px_loop_new();
	printf("[==========] %s: backend %s\n", tu_group_name(prog),
	       l ? px_loop_backend(l) : "(px_loop_new failed)");
	fflush(stdout);
	px_loop_free(l);
	tu_check_interposers();
}

void tu_check_interposers(void)
{
	px_loop *l = px_loop_new();
	if (!l) {
		fprintf(stderr, "tu_check_interposers: px_loop_new: %s\n", strerror(errno));
		exit(99);
	}
	check_wait_interposer(l);
	px_loop_free(l);
#ifdef IP_GLIBC_TIME64
	check_select_entries();
#endif
}

const char *tu_group_name(const char *prog)
{
	static char name[128];
	const char *be = getenv("POLLUX_BACKEND");
	snprintf(name, sizeof name, "%s[%s]", prog, be && *be ? be : "default");
	return name;
}

void tu_socketpair(int sv[2])
{
	int rc = tp_socketpair(AF_UNIX, SOCK_STREAM, 0, TP_NONBLOCK | TP_CLOEXEC, sv);
	if (rc != 0)
		fail_msg("socketpair: %s", strerror(errno));
}

void tu_close_pair(int sv[2])
{
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	sv[0] = sv[1] = -1;
}

void tu_socketpair_at(int sv[2], int num)
{
	int p[2];
	tu_socketpair(p);
	if (p[0] == num) {
		sv[0] = p[0];
		sv[1] = p[1];
		return;
	}
	if (p[1] == num) {
		sv[0] = p[1];
		sv[1] = p[0];
		return;
	}
	if (tp_dup_to(p[0], num, TP_CLOEXEC) != num)
		fail_msg("dup3 to %d: %s", num, strerror(errno));
	close(p[0]);
	sv[0] = num;
	sv[1] = p[1];
	/* O_NONBLOCK is a file status flag: shared by the dup. */
	assert_true(fcntl(num, F_GETFL) & O_NONBLOCK);
}

void tu_send(int fd, const void *buf, size_t len)
{
	ssize_t n = tp_send(fd, buf, len, 0);
	if (n != (ssize_t)len)
		fail_msg("send(%d, %zu) = %zd: %s", fd, len, n, strerror(errno));
}

void tu_send1(int fd)
{
	tu_send(fd, "x", 1);
}

size_t tu_fill(int fd)
{
	static char buf[65536];
	size_t total = 0;
	for (;;) {
		ssize_t n = tp_send(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (n > 0) {
			total += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		fail_msg("tu_fill(%d): %s", fd, strerror(errno));
	}
	return total;
}

size_t tu_drain(int fd)
{
	static char buf[65536];
	size_t total = 0;
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (n > 0) {
			total += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		break; /* EOF, EAGAIN or error */
	}
	return total;
}

int tu_pending(int fd)
{
	int n = -1;
	if (ioctl(fd, FIONREAD, &n) != 0)
		return -1;
	return n;
}

/* Without /proc/self/fd (the BSDs, macOS; /dev/fd may list 0-2 only):
 * every number below the soft RLIMIT_NOFILE (no fd can be above it but
 * one opened before the limit was lowered; capped at 2^20) is asked. */
static int list_fds_fcntl(int *out, int cap)
{
	struct rlimit rl;
	long max = 1L << 20;
	int n = 0;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < (rlim_t)max)
		max = (long)rl.rlim_cur;
	for (long fd = 0; fd < max; fd++) {
		if (fcntl((int)fd, F_GETFD) < 0)
			continue;
		if (n < cap)
			out[n] = (int)fd;
		n++;
	}
	return n;
}

int tu_list_fds(int *out, int cap)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0, self;
	struct dirent *e;
	if (!d)
		return list_fds_fcntl(out, cap); /* already sorted */
	self = dirfd(d);
	while ((e = readdir(d)) != NULL) {
		char *end;
		long v;
		if (e->d_name[0] == '.')
			continue;
		v = strtol(e->d_name, &end, 10);
		if (*end || v == self)
			continue;
		if (n < cap)
			out[n] = (int)v;
		n++;
	}
	closedir(d);
	/* sort the stored part (small lists: insertion sort) */
	for (int i = 1; i < n && i < cap; i++) {
		int v = out[i], j = i - 1;
		while (j >= 0 && out[j] > v) {
			out[j + 1] = out[j];
			j--;
		}
		out[j + 1] = v;
	}
	return n;
}

int tu_count_fds(void)
{
	int dummy[1];
	return tu_list_fds(dummy, 0);
}

uint64_t tu_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double tu_now_ms(void)
{
	return (double)tu_now_ns() / 1e6;
}

double tu_cpu_ms(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0)
		fail_msg("clock_gettime(CLOCK_PROCESS_CPUTIME_ID): %s", strerror(errno));
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void tu_sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

void tu_idle_begin(struct tu_idle *s)
{
	s->waits0 = tu_wait_calls();
	s->cpu0 = tu_cpu_ms();
	s->wall0 = tu_now_ms();
	s->waits = 0;
	s->cpu_ms = s->wall_ms = 0;
}

void tu_idle_end(struct tu_idle *s)
{
	s->cpu_ms = tu_cpu_ms() - s->cpu0;
	s->wall_ms = tu_now_ms() - s->wall0;
	s->waits = tu_wait_calls() - s->waits0;
}

void tu_idle_check(const struct tu_idle *s, long max_waits, bool check_cpu, const char *what)
{
	double ratio = s->wall_ms > 0 ? s->cpu_ms / s->wall_ms : 0;
	print_message("idle? %s: %ld wait calls (max %ld), CPU %.1f ms in %.0f ms (%.1f%%%s)\n",
	              what, s->waits, max_waits, s->cpu_ms, s->wall_ms, ratio * 100,
	              check_cpu ? "" : ", not checked");
	if (s->waits < 1)
		fail_msg("%s: no wait call was counted: the interposer does not see the loop", what);
	if (s->waits > max_waits)
		fail_msg("%s: %ld wait calls in %.0f ms, at most %ld expected (spinning)", what,
		         s->waits, s->wall_ms, max_waits);
	if (check_cpu) {
		if (s->wall_ms < 300)
			fail_msg("%s: a %.0f ms window is too short for a CPU ratio", what, s->wall_ms);
		if (ratio >= TU_IDLE_MAX_CPU)
			fail_msg("%s: %.0f%% CPU (%.1f ms in %.0f ms; spinning)", what, ratio * 100,
			         s->cpu_ms, s->wall_ms);
	}
}

bool tu_valgrind(void)
{
	const char *p = getenv("LD_PRELOAD");
	return p && strstr(p, "valgrind") != NULL;
}

long tu_raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return -1;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur == RLIM_INFINITY ? 1L << 20 : (long)rl.rlim_cur;
}

/* config.h's list, best first (the order of px_backends()). */
static const char *const configured[] = {
#ifdef HAVE_EPOLL
	"epoll",
#endif
#ifdef __APPLE__ /* select before poll there: see src/core/loop.c */
	"select",
#endif
#ifdef HAVE_POLL
	"poll",
#endif
#ifndef __APPLE__
	"select",
#endif
	NULL,
};

const char *const *tu_configured_backends(void)
{
	/* make check exports configure's list as PX_BACKENDS: it must be the
	 * list this program was compiled for (a stale build would test the
	 * wrong expectations). */
	const char *env = getenv("PX_BACKENDS");
	if (env && *env) {
		char want[64] = "";
		size_t len = 0;
		for (int i = 0; configured[i]; i++)
			len += (size_t)snprintf(want + len, sizeof want - len, "%s%s", i ? " " : "",
			                        configured[i]);
		/* compare word by word (any run of blanks separates) */
		const char *p = env;
		int i = 0;
		for (;; i++) {
			while (*p == ' ' || *p == '\t')
				p++;
			size_t w = strcspn(p, " \t");
			if (w == 0 || !configured[i]) {
				if (w != 0 || configured[i])
					fail_msg("PX_BACKENDS='%s' but config.h configured '%s'", env, want);
				break;
			}
			if (strlen(configured[i]) != w || strncmp(p, configured[i], w) != 0)
				fail_msg("PX_BACKENDS='%s' but config.h configured '%s'", env, want);
			p += w;
		}
	}
	return configured;
}

int tu_configured_count(void)
{
	const char *const *b = tu_configured_backends();
	int n = 0;
	while (b[n])
		n++;
	return n;
}

bool tu_configured(const char *name)
{
	const char *const *b = tu_configured_backends();
	for (int i = 0; b[i]; i++)
		if (strcmp(b[i], name) == 0)
			return true;
	return false;
}

px_loop *tu_loop(void)
{
	px_loop *loop = px_loop_new();
	if (!loop)
		fail_msg("px_loop_new: %s (POLLUX_BACKEND=%s)", strerror(errno),
		         getenv("POLLUX_BACKEND") ? getenv("POLLUX_BACKEND") : "(unset)");
	return loop;
}

struct stopper {
	int fired;
};

static void stopper_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	((struct stopper *)arg)->fired++;
	px_loop_stop(loop);
}

bool tu_run_for(px_loop *loop, uint64_t timeout_ms)
{
	struct stopper s = {0};
	int64_t id = px_timer_add(loop, timeout_ms, 0, stopper_cb, &s);
	assert_true(id > 0);
	assert_int_equal(px_loop_run(loop, PX_RUN_DEFAULT), 0);
	assert_true(s.fired <= 1);
	if (!s.fired)
		assert_int_equal(px_timer_del(loop, id), 0);
	else
		assert_int_equal(px_timer_del(loop, id), -ENOENT);
	return s.fired == 1;
}

void tu_nowait(px_loop *loop, int n)
{
	for (int i = 0; i < n; i++)
		assert_int_equal(px_loop_run(loop, PX_RUN_NOWAIT), 0);
}

bool tu_is(px_loop *loop, const char *backend)
{
	return strcmp(px_loop_backend(loop), backend) == 0;
}

void tu_rec_add(struct tu_rec *r, int fd, unsigned revents)
{
	if (r->n >= TU_MAXREC)
		fail_msg("too many callbacks recorded (%d)", r->n);
	r->fd[r->n] = fd;
	r->rev[r->n] = revents;
	r->at[r->n] = r->iter;
	r->n++;
}

void tu_rec_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	tu_rec_add(arg, fd, revents);
}

int tu_rec_count(const struct tu_rec *r, int fd)
{
	int c = 0;
	for (int i = 0; i < r->n; i++)
		c += r->fd[i] == fd;
	return c;
}

void tu_never_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	(void)arg;
	fail_msg("unexpected callback: fd %d revents 0x%x", fd, revents);
}

void tu_count_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)loop;
	(void)id;
	(*(int *)arg)++;
}

void tu_stop_timer_cb(px_loop *loop, int64_t id, void *arg)
{
	(void)id;
	if (arg)
		(*(int *)arg)++;
	px_loop_stop(loop);
}

int tu_regfile_at(int num)
{
	const char *dir = getenv("TMPDIR");
	struct stat st;
	if (!dir || !*dir)
		dir = "/tmp";
	int fd = -1;
#ifdef O_TMPFILE
	fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
	if (fd < 0) { /* no O_TMPFILE here: a named file, unlinked at once */
		char path[4096];
		snprintf(path, sizeof path, "%s/pollux-test-XXXXXX", dir);
		fd = tp_mkstemp_cloexec(path);
		if (fd < 0)
			fail_msg("mkostemp %s: %s", path, strerror(errno));
		unlink(path);
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
		fail_msg("%s: no regular file for fd %d", dir, fd);
	if (num >= 0 && fd != num) {
		if (tp_dup_to(fd, num, TP_CLOEXEC) != num)
			fail_msg("dup3 to %d: %s", num, strerror(errno));
		close(fd);
		fd = num;
	}
	return fd;
}

int tu_free_fd(int from)
{
	int fd = from < 0 ? 0 : from;
	while (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
		fd++;
	return fd;
}

bool tu_sees_rdhup(px_loop *loop)
{
#if defined(HAVE_DECL_POLLRDHUP) && HAVE_DECL_POLLRDHUP
	return !tu_is(loop, "select");
#else
	(void)loop;
	return false;
#endif
}

bool tu_uses_accept4(void)
{
#if defined(HAVE_ACCEPT4) && defined(HAVE_DECL_SOCK_NONBLOCK) && HAVE_DECL_SOCK_NONBLOCK && \
	defined(HAVE_DECL_SOCK_CLOEXEC) && HAVE_DECL_SOCK_CLOEXEC
	return true;
#else
	return false;
#endif
}

bool tu_select_limited(px_loop *loop)
{
#ifdef PX_SELECT_LIMIT
	return tu_is(loop, "select");
#else
	(void)loop;
	return false;
#endif
}
