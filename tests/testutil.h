/* Helpers shared by the cmocka test programs (test_loop, test_io, test_timer).
 *
 * Every test program runs once per backend: `make check` sets POLLUX_BACKEND
 * to each backend configure found (epoll, poll, select, minus any that
 * --disable-epoll / --disable-poll turned off) for separate runs, and most
 * tests simply call tu_loop() (px_loop_new) so they apply to the backend in
 * the environment.  Expectations about which backends exist come from
 * tu_configured_backends(), never from the operating system's name.
 *
 * Every loop run is bounded: tests register a stop timer (tu_run_for) and
 * each test gets a fresh alarm() watchdog (TU_TEST), whose default action
 * kills the program, so a broken library fails instead of hanging. */
#ifndef PX_TESTUTIL_H
#define PX_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>

#include "pollux.h"

/* Seconds a single test may take before SIGALRM kills the program. */
#define TU_WATCHDOG_S 60

/* A cmocka test with a fresh watchdog. */
#define TU_TEST(f) cmocka_unit_test_setup(f, tu_setup)

int tu_setup(void **state);

/* Runs the group with a name like "test_io[epoll]" (the backend from
 * $POLLUX_BACKEND, "default" when unset).  Installs the watchdog. */
#define TU_RUN(prog, tests) \
	(tu_init(prog), cmocka_run_group_tests_name(tu_group_name(prog), tests, NULL, NULL))
void tu_init(const char *prog);
/* Ends the program (status 99, with a message) unless the wait interposer
 * (tests/waitcount.c or tests/faultinj.c) sees the library's waits on the
 * backend in the environment, and, on 32-bit glibc, both selects forward
 * right (tests/interpose.h).  tu_init calls it. */
void tu_check_interposers(void);
const char *tu_group_name(const char *prog);

/* AF_UNIX SOCK_STREAM pair, non-blocking and close-on-exec (asserts). */
void tu_socketpair(int sv[2]);
void tu_close_pair(int sv[2]);
/* A pair whose sv[0] is placed at fd number `num` (dup2), non-blocking. */
void tu_socketpair_at(int sv[2], int num);

/* Writes one byte / len bytes with send(MSG_NOSIGNAL) (asserts success). */
void tu_send(int fd, const void *buf, size_t len);
void tu_send1(int fd);
/* Writes until EAGAIN; returns the number of bytes written. */
size_t tu_fill(int fd);
/* Reads until EAGAIN or EOF; returns the number of bytes read. */
size_t tu_drain(int fd);
/* Bytes waiting to be read (FIONREAD). */
int tu_pending(int fd);

/* Number of entries in /proc/self/fd (the directory's own fd excluded). */
int tu_count_fds(void);
/* Open fd numbers, sorted; returns the count (at most cap are stored). */
int tu_list_fds(int *out, int cap);

/* Clocks. */
uint64_t tu_now_ns(void);   /* CLOCK_MONOTONIC */
double tu_now_ms(void);
double tu_cpu_ms(void);     /* CPU time of the process (CLOCK_PROCESS_CPUTIME_ID) */
void tu_sleep_ms(unsigned ms);

/* Wait system calls (epoll_wait, poll, select) the process has made: the
 * loop's iterations and the select/poll PX_ET emulation's probes.  Counted
 * by interposers in the executable: tests/waitcount.c, or tests/faultinj.c
 * in the programs that link it. */
long tu_wait_calls(void);

/* Idle or spinning?  A window around a run of the loop counts its wait
 * calls (deterministic: an idle loop makes a few per event or timer, a
 * spinning one thousands per second, however loaded the machine is) and
 * measures the process's CPU time against wall time (a spinning loop uses
 * all the CPU it gets, an idle one a few per cent; on a loaded machine a
 * spinner gets less than a whole core, so the ratio alone is not enough). */
struct tu_idle {
	long waits0;
	double cpu0, wall0;
	/* set by tu_idle_end */
	long waits;
	double cpu_ms, wall_ms;
};
void tu_idle_begin(struct tu_idle *s);
void tu_idle_end(struct tu_idle *s);
/* Bounds for tu_idle_check: wait calls per window (the windows of the tests
 * see at most a few dozen events and timers), and the CPU / wall ratio. */
#define TU_IDLE_MAX_WAITS 50
#define TU_IDLE_MAX_CPU 0.5
/* Prints the window's figures and fails the test unless it was idle: at
 * least one wait call (else the interposer did not see the loop, and the
 * count would prove nothing), at most max_waits, and, when check_cpu, CPU
 * time below TU_IDLE_MAX_CPU of the wall time (windows of 300 ms or more:
 * shorter ones are too coarse for a ratio, and are refused). */
void tu_idle_check(const struct tu_idle *s, long max_waits, bool check_cpu, const char *what);

/* True when running under valgrind (everything is much slower). */
bool tu_valgrind(void);

/* Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft
 * limit. */
long tu_raise_nofile(void);

/* px_loop_new() for the backend in the environment (asserts non-NULL). */
px_loop *tu_loop(void);

/* Runs px_loop_run(PX_RUN_DEFAULT) with a stop timer after timeout_ms (the
 * timer calls px_loop_stop).  Asserts that the run returns 0.  Returns true
 * when the stop timer fired; otherwise the stop timer is deleted. */
bool tu_run_for(px_loop *loop, uint64_t timeout_ms);

/* Runs PX_RUN_NOWAIT n times (asserting 0). */
void tu_nowait(px_loop *loop, int n);

/* Backend tests. */
bool tu_is(px_loop *loop, const char *backend);

/* The backends this build was configured with (config.h: HAVE_EPOLL,
 * HAVE_POLL; select always), best first, NULL-terminated: what the tests
 * expect px_backends() to be.  Never "this is Linux, so all three": a build
 * configured with --disable-epoll or --disable-poll has fewer.  When
 * $PX_BACKENDS is set (make check exports configure's list) it must name the
 * same backends in the same order, or the calling test fails. */
const char *const *tu_configured_backends(void);
/* Whether this build sees a peer's shutdown of writing as PX_HUP on loop's
 * backend (poll and epoll, where the system has POLLRDHUP and the build
 * uses it: not with --enable-portable-fallbacks). */
bool tu_sees_rdhup(px_loop *loop);
/* Whether px_accept uses accept4 (else accept + fcntl): what the fault
 * tests interpose. */
bool tu_uses_accept4(void);
/* Whether loop's backend refuses fds >= FD_SETSIZE with -ERANGE (select,
 * where select() cannot take larger sets: --enable-select-limit). */
bool tu_select_limited(px_loop *loop);
int tu_configured_count(void);
/* True when `name` ("epoll", "poll", "select") is one of them. */
bool tu_configured(const char *name);

/* A recorder of io callbacks: pass a struct tu_rec * as the watcher's arg, or
 * call tu_rec_add from your own callback. */
#define TU_MAXREC 4096
struct tu_rec {
	int n;
	int iter; /* set by the test: the current iteration number */
	int fd[TU_MAXREC];
	unsigned rev[TU_MAXREC];
	int at[TU_MAXREC]; /* iter at the time of the callback */
};
void tu_rec_add(struct tu_rec *r, int fd, unsigned revents);
void tu_rec_cb(px_loop *loop, int fd, unsigned revents, void *arg);
/* Number of recorded callbacks for fd. */
int tu_rec_count(const struct tu_rec *r, int fd);
/* Callback that never should run. */
void tu_never_cb(px_loop *loop, int fd, unsigned revents, void *arg);
/* Timer callback that counts into *(int *)arg. */
void tu_count_timer_cb(px_loop *loop, int64_t id, void *arg);
/* Timer callback that calls px_loop_stop. */
void tu_stop_timer_cb(px_loop *loop, int64_t id, void *arg);

/* A regular file (an unlinked temporary file in $TMPDIR or /tmp), open
 * read-write and close-on-exec, at fd number num (dup3 over whatever is
 * there), or at the lowest free number when num < 0.  Returns the fd
 * (asserts). */
int tu_regfile_at(int num);
/* The lowest fd number >= from that is not open. */
int tu_free_fd(int from);

#endif
