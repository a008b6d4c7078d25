/*
 * pollux — one event API over select, poll and epoll, chosen at run time.
 *
 * Conventions (every call below follows them):
 *  - Calls that can fail return 0 (or a non-negative fd / id) on success and a
 *    negative errno value (-EINVAL, -ENOMEM, ...) on failure.  Constructors that
 *    return a pointer return NULL and set errno.  The library never prints.
 *  - A loop is used by one thread at a time.  Separate loops share nothing
 *    mutable.  The exceptions: px_loop_wake and px_loop_post may be called
 *    on a loop from any thread; the process's signal dispositions are
 *    global, and px_signal_add gives each watched signal to one loop.
 *  - Times are milliseconds on the monotonic clock.
 *  - Inside any callback, any watcher or timer of the same loop may be added,
 *    modified or deleted, including the one being dispatched.  Only
 *    px_loop_run (-EBUSY) and px_loop_free (ignored) may not be called from a
 *    callback of the same loop.
 *  - fork: a child may create, run and free loops of its own, and may
 *    px_loop_free a loop inherited from its parent (that makes no system
 *    call that touches the kernel's state: the parent is not disturbed).  It
 *    must do nothing else with an inherited loop: with epoll the interest set
 *    is one kernel object shared with the parent, so a child's px_io_* or
 *    px_loop_run would change or steal the parent's notifications.  The
 *    same holds for the loop's wake-up fd (px_loop_wake).  Signal
 *    dispositions installed by px_signal_add are inherited; the child's
 *    px_loop_free of the inherited loop restores the earlier ones there.
 */
#ifndef POLLUX_H
#define POLLUX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define PX_API __attribute__((visibility("default")))
#else
#define PX_API
#endif

/* ------------------------------------------------------------------------ */
/* Loop and backends                                                         */
/* ------------------------------------------------------------------------ */

typedef struct px_loop px_loop;

/* Run modes for px_loop_run. */
#define PX_RUN_DEFAULT 0 /* until px_loop_stop, or nothing is registered      */
#define PX_RUN_ONCE    1 /* one iteration; waits for an event or a due timer   */
#define PX_RUN_NOWAIT  2 /* one iteration that does not wait                   */

/*
 * px_loop_new: a loop on the backend named by $POLLUX_BACKEND (read at every
 * call, matched case-insensitively), or the best available one when it is
 * unset or empty: epoll, poll, select (on macOS select, then poll: its poll()
 * reports POLLNVAL for ttys and devices).
 * Errors (NULL + errno): EINVAL unknown backend name; ENOSYS a known backend
 * this system cannot provide; ENOMEM; EMFILE/ENFILE (epoll fd, wake-up fd);
 * any error of epoll_create1 or eventfd/pipe.  The loop's own fds are
 * close-on-exec: the backend's (epoll) and one wake-up fd (px_loop_wake),
 * an eventfd where the system has it, else a pipe (two fds).  They belong
 * to the loop: closing them, or px_io_* on their numbers, is the caller's
 * bug.  (The library keeps the one it watches, the eventfd or the pipe's
 * read end, from such calls: px_io_mod/del/close answer -ENOENT for it,
 * px_io_add -EEXIST.  The others are not checked.)
 */
PX_API px_loop *px_loop_new(void);

/* The same for an explicit name ("select", "poll", "epoll", any case); NULL or
 * "" means best available.  The environment is ignored. */
PX_API px_loop *px_loop_new_backend(const char *name);

/* Frees the loop, its watchers, timers, pending connects, acceptors and send
 * queues, without calling any callback.  Closes no user fd.  NULL does
 * nothing.  Called from a callback of the same loop it does nothing. */
PX_API void px_loop_free(px_loop *loop);

/* "select", "poll" or "epoll". */
PX_API const char *px_loop_backend(const px_loop *loop);

/* NULL-terminated list of the backends usable on this system, best first. */
PX_API const char *const *px_backends(void);

/*
 * px_loop_run: PX_RUN_DEFAULT runs until px_loop_stop is called or nothing is
 * registered (no io watcher, armed or disarmed; no pending timer; no pending
 * connect; no acceptor; no post that has not run).  Signal watchers do not
 * keep it running.  PX_RUN_ONCE runs one iteration, waiting for at least
 * one event or due timer (it returns at once when nothing is registered).
 * PX_RUN_NOWAIT runs one iteration without waiting.
 * Each iteration: wait for readiness (bounded by the next timer), run the
 * timers that are due, then dispatch io callbacks.  Signals that interrupt the
 * wait (EINTR) are retried with the remaining timeout and never surface.
 * Returns 0; -EINVAL for a NULL loop or an unknown mode; -EBUSY when called
 * from a callback of the same loop; -errno when the backend's wait itself
 * fails (e.g. -ENOMEM).
 */
PX_API int px_loop_run(px_loop *loop, int mode);

/* px_loop_run returns after the current iteration.  The request is cleared
 * when px_loop_run returns; made while not running, the next run returns
 * after one iteration.  NULL does nothing. */
PX_API void px_loop_stop(px_loop *loop);

/* ------------------------------------------------------------------------ */
/* Waking and posting across threads                                         */
/* ------------------------------------------------------------------------ */

/*
 * px_loop_wake and px_loop_post are the only calls that may be made on a loop
 * from a thread other than the one running it (px_loop_wake also from a
 * signal handler).  Calling them on a loop that is being or has been freed is
 * the caller's bug: the library does not detect it.  They touch the loop
 * until they return, even when the posted callback has already run: free
 * the loop only after every such call has returned (join the threads).
 *
 * px_loop_wake: the loop's current wait returns, or its next one returns at
 * once; the iteration then ends normally (PX_RUN_ONCE returns).  Wakes made
 * before the loop notices them merge into one, and while one is pending the
 * call makes no system call.  Async-signal-safe; keeps errno.  0, -EINVAL for
 * NULL, or -errno when the wake-up fd could not be written.
 */
PX_API int px_loop_wake(px_loop *loop);

typedef void px_post_cb(px_loop *loop, void *arg);

/*
 * px_loop_post: cb(loop, arg) runs exactly once in the loop's thread, from
 * px_loop_run in a later iteration: never inside px_loop_post, and a post made
 * from a callback of the same loop runs in the next iteration.  Posts made by
 * one thread run in the order they were made.  A post wakes the loop
 * (px_loop_wake), and posts that have not run keep PX_RUN_DEFAULT running.
 * Lock-free: no lock shared with the loop's thread, and at most one
 * allocation per post (the loop recycles the nodes of the posts it ran:
 * up to 4,096 per loop, handed to posting threads in batches that each
 * keeps in a cache of its own, freed when the thread exits).
 * 0, -EINVAL for a NULL loop or cb, -ENOMEM (nothing posted), or
 * px_loop_wake's error (the post is queued and runs at the loop's next
 * wake-up).  px_loop_free drops the posts that have not run, without calling
 * them.
 */
PX_API int px_loop_post(px_loop *loop, px_post_cb *cb, void *arg);

/* ------------------------------------------------------------------------ */
/* Signals                                                                    */
/* ------------------------------------------------------------------------ */

typedef void px_signal_cb(px_loop *loop, int signo, void *arg);

/*
 * px_signal_add: cb runs in the loop's thread, from px_loop_run like any other
 * callback (never inside the signal handler), after every delivery of signo
 * to the process made after px_signal_add returned; deliveries made before
 * that callback runs may merge into one, and a delivery during the callback
 * leads to another.  Whichever thread the kernel delivers to (the signal need
 * not be blocked anywhere), the owning loop is woken.  The library's handler
 * is installed with SA_RESTART, only records the signal and wakes the loop,
 * is async-signal-safe and keeps errno.  Signal watchers do not keep
 * PX_RUN_DEFAULT running.  A callback may px_signal_del its own signal.
 * One loop per signal per process.  Errors: -EINVAL NULL loop or cb, signo
 * outside 1..NSIG-1, SIGKILL or SIGSTOP; -EEXIST this loop watches signo;
 * -EBUSY another loop does; -ENOMEM; sigaction's error.
 *
 * px_signal_del: restores exactly the disposition (handler, flags, mask) in
 * force before px_signal_add; px_loop_free does the same for every signal the
 * loop watches.  0, -EINVAL (NULL loop, bad signo), or -ENOENT when this loop
 * does not watch signo.
 */
PX_API int px_signal_add(px_loop *loop, int signo, px_signal_cb *cb, void *arg);
PX_API int px_signal_del(px_loop *loop, int signo);

/* Cached monotonic time (ms) of the current iteration; updated after every
 * wait.  Arbitrary epoch.  0 for NULL. */
PX_API uint64_t px_loop_now(const px_loop *loop);

/*
 * Counters of a loop, since px_loop_new; fields are only ever appended.
 *   iterations       loop iterations run (each wait-and-dispatch round)
 *   waits            calls of the backend's wait (an interrupted wait that
 *                    is retried counts again)
 *   empty_wakeups    waits that returned before their timeout with no event:
 *                    interrupted (EINTR), or woken with nothing to report.
 *                    A wait with timeout 0 that returns nothing is not one.
 *   events           ready events the backend reported
 *   io_callbacks     io callbacks called (px_io_add's, and the library's own
 *                    watchers: acceptors, pending connects)
 *   timer_callbacks  timer callbacks called (the library's own timers too:
 *                    connect timeouts, acceptor back-offs)
 *   stale_dropped    events dropped by stale-event protection: for a watcher
 *                    deleted or re-added after the wait, or for a lost
 *                    registration of a closed file
 *   closed_fds       registered fds found closed (EBADF, POLLNVAL), or whose
 *                    change the kernel refused, reported as PX_ERR
 *   kernel_changes   registrations added, changed or removed in the kernel's
 *                    interest set (the backend's own set for poll/select)
 *   accepted         connections accepted by acceptors
 *   accept_backoffs  times an acceptor backed off on an accept error
 *   send_queued      bytes now queued by px_send over all fds
 *   posts            callbacks run from px_loop_post
 *   signals          signal callbacks run
 * The loop's own wake-up fd (px_loop_wake) is counted neither as an event
 * nor as an io callback.
 */
struct px_loop_stats {
	uint64_t iterations;
	uint64_t waits;
	uint64_t empty_wakeups;
	uint64_t events;
	uint64_t io_callbacks;
	uint64_t timer_callbacks;
	uint64_t stale_dropped;
	uint64_t closed_fds;
	uint64_t kernel_changes;
	uint64_t accepted;
	uint64_t accept_backoffs;
	uint64_t send_queued;
	uint64_t posts;
	uint64_t signals;
};

/*
 * Copies the first size bytes of the loop's counters to *st: pass
 * sizeof *st, and a program built against an older, smaller struct keeps
 * working (size 8 fills iterations alone, the rest of *st is untouched).
 * Any size > 0 is taken; bytes beyond this library's struct are set to 0.
 * Callable from callbacks.  0, or -EINVAL for a NULL loop or st or size 0.
 */
PX_API int px_loop_stats(const px_loop *loop, struct px_loop_stats *st, size_t size);

/* Library version, e.g. "1.0.0". */
PX_API const char *px_version(void);

/* ------------------------------------------------------------------------ */
/* I/O watchers, keyed by file descriptor                                    */
/* ------------------------------------------------------------------------ */

#define PX_READ    0x01u /* readable (or peer closed, or error)                */
#define PX_WRITE   0x02u /* writable                                           */
#define PX_ET      0x04u /* edge-triggered: drain (read/write until EAGAIN)    */
#define PX_ONESHOT 0x08u /* disarm after one notification; re-arm: px_io_mod   */
#define PX_HUP     0x10u /* revents only: peer hung up                         */
#define PX_ERR     0x20u /* revents only: error pending, or fd closed          */

typedef void px_io_cb(px_loop *loop, int fd, unsigned revents, void *arg);

/*
 * px_io_add: watch fd for events (PX_READ | PX_WRITE, optionally PX_ET and
 * PX_ONESHOT).  events == 0 registers the fd disarmed.
 * Errors: -EINVAL NULL loop, NULL cb, or bits other than READ/WRITE/ET/ONESHOT
 * (PX_HUP/PX_ERR included); -EBADF negative fd, or an fd that is not open
 * (on every backend); -EEXIST already registered (also a reused number that
 * was closed without px_io_del); -EPERM epoll and a regular file (select and
 * poll report regular files always ready); -ENOMEM; other errors of
 * epoll_ctl.  On error nothing is registered.  The answer depends only on
 * the fd and its file, never on what the loop held before.
 * FD_SETSIZE: the select backend sizes its sets to the highest fd, which
 * select() takes on Linux, the BSDs and macOS (built with
 * _DARWIN_UNLIMITED_SELECT); there -ERANGE is never returned.  Where
 * select() cannot take larger sets (illumos, Solaris, or a build configured
 * with --enable-select-limit), select gives -ERANGE for fd >= FD_SETSIZE;
 * poll and epoll never do.
 *
 * Delivery: at most one callback per fd per iteration.  revents holds the
 * armed directions that are ready; on hang-up or error, PX_HUP / PX_ERR are
 * set together with every armed direction, so a PX_READ-only watcher wakes up
 * and sees recv() == 0 or the error.  PX_HUP is POLLHUP/EPOLLHUP, and, on poll
 * and epoll for a watcher armed for PX_READ, the peer's shutdown of writing
 * (RDHUP) where the system has POLLRDHUP (Linux, FreeBSD; not macOS: there
 * the half-close is PX_READ and recv() == 0); select cannot see hang-ups and
 * reports them as readiness.
 * A disarmed watcher (events == 0, or a PX_ONESHOT that fired) gets no
 * callback, not even for hang-up or error.
 *
 * PX_ET works on every backend.  epoll does it in the kernel.  select and poll
 * emulate it: after a callback, each direction that is still ready once the
 * iteration's callbacks have run is treated as idle (a writable socket with
 * nothing to write, a read side at end of file) and is not reported again
 * until it has been seen not ready, until px_io_mod, or until re-adding.
 * Code that reads or writes until EAGAIN behaves as on epoll, and an idle,
 * writable PX_ET watcher does not make the loop spin.  On select, which
 * cannot see hang-ups, the end of file is reported once more before the read
 * side counts as finished.  Only code that drains
 * to EAGAIN has defined behaviour under PX_ET.  Once a PX_ET watcher's read
 * side has reached end of file (or a write failed for good), select and poll
 * treat that direction as idle for good, while epoll may report it again
 * (with PX_HUP) on later kernel wake-ups of the socket; px_io_del and close
 * such an fd.
 *
 * A registered fd that is closed: select and poll report PX_ERR (with the
 * armed directions) once, then the watcher stays registered but disarmed;
 * epoll's kernel set forgets it silently when no other copy of the file is
 * open.  Close an fd only after px_io_del (or use px_io_close).  Closing
 * first works too, but on epoll a copy of the file that lives on (dup, a
 * forked child, SCM_RIGHTS) keeps its registration, which can then no longer
 * be named: until px_io_del its events still reach this watcher, and after
 * it the library keeps them from every watcher and replaces its kernel set
 * (one epoll_ctl per registered fd) when the lost registration reports.
 */
PX_API int px_io_add(px_loop *loop, int fd, unsigned events, px_io_cb *cb, void *arg);

/* Changes the mask (same cb and arg).  Re-arms a fired PX_ONESHOT watcher and
 * resets PX_ET emulation state.  An unchanged mask is a no-op on every
 * backend (no system call, nothing re-reported).  Errors: -EINVAL, -EBADF negative fd,
 * -ENOENT not registered, -EPERM/-ENOMEM/... from epoll_ctl (the old mask
 * stays in force then).
 * A change to a registration the kernel already holds is made by one flush
 * before the next wait (a change undone in the same iteration costs
 * nothing).  If the kernel refuses it there, the watcher gets one callback
 * with PX_ERR and its armed directions, and is disarmed (px_io_mod re-arms
 * it); if it fails for lack of memory (ENOMEM), the change is retried at each
 * later flush and the old mask stays in force meanwhile.  The changes the
 * library makes by itself (PX_ET emulation, px_send's write interest,
 * re-arming a one-shot) follow the same rule. */
PX_API int px_io_mod(px_loop *loop, int fd, unsigned events);

/* Unregisters fd; discards its send queue; cancels a pending px_connect on it
 * without a callback; removes an acceptor on it.  Succeeds (0) for an fd that
 * was closed while registered.  Errors: -EINVAL NULL loop, -EBADF negative fd,
 * -ENOENT not registered.  An fd deleted during an iteration gets no further
 * callback from that iteration.  Once it returns, no event of the
 * registration reaches any watcher or wakes the loop, whatever other copies
 * of the file exist (dup, fork, SCM_RIGHTS) and whatever file the number
 * names after close: on epoll the kernel registration is removed at once (one
 * epoll_ctl), while the fd is still open. */
PX_API int px_io_del(px_loop *loop, int fd);

/* px_io_del(loop, fd) and close(fd) in one call, for the common server that
 * closes every connection it deletes: on epoll it makes no epoll_ctl, and
 * lets close() drop the kernel registration, which close() does when this is
 * the file's last descriptor (no dup of it, no copy inherited by a child that
 * still holds it, none in flight or kept after SCM_RIGHTS).  When that does
 * not hold, the registration outlives the number; the library still keeps
 * its events from every watcher (a registration made later at the number
 * carries a tag the lost one lacks), and when the lost one reports, it
 * replaces its kernel set: one epoll_ctl per registered fd.  So the
 * precondition decides the cost, never the correctness.  select and poll:
 * exactly px_io_del then close.  Returns 0, the errors of px_io_del (then
 * nothing is closed), or close's -errno other than -EINTR (the fd is closed
 * and unregistered anyway). */
PX_API int px_io_close(px_loop *loop, int fd);

/* ------------------------------------------------------------------------ */
/* Timers                                                                     */
/* ------------------------------------------------------------------------ */

typedef void px_timer_cb(px_loop *loop, int64_t id, void *arg);

/*
 * px_timer_add: calls cb once after_ms from now (the monotonic clock read
 * inside this call), then every repeat_ms if repeat_ms > 0.  Never early;
 * after_ms == 0 fires in the next iteration, never from inside this call.
 * Timers due in the same iteration fire in order of due time, ties in order of
 * creation.  Repeats are scheduled from the due time (no drift); when periods
 * were missed, one firing stands for all of them and the next is one period
 * after it.  Returns an id > 0 (never reused within the loop's life) or
 * -EINVAL (NULL loop or cb), -ENOMEM.
 */
PX_API int64_t px_timer_add(px_loop *loop, uint64_t after_ms, uint64_t repeat_ms,
                            px_timer_cb *cb, void *arg);

/* Cancels a timer.  -ENOENT for an unknown id or a one-shot that has fired
 * (including from its own callback); -EINVAL NULL loop.  A repeating timer may
 * delete itself from its callback. */
PX_API int px_timer_del(px_loop *loop, int64_t id);

/* ------------------------------------------------------------------------ */
/* Sockets: non-blocking helpers                                              */
/* ------------------------------------------------------------------------ */

/* Sets (on != 0) or clears O_NONBLOCK.  0, or -EBADF / -errno of fcntl. */
PX_API int px_set_nonblock(int fd, int on);

/*
 * Blocking connect with a deadline: starts a non-blocking connect, waits for
 * writability with poll() up to timeout_ms (< 0: no limit), reads the outcome
 * with getsockopt(SO_ERROR) and restores the fd's original O_NONBLOCK flag on
 * every path.  EINTR does not restart the clock.  Never closes fd.
 * Returns 0, -ETIMEDOUT, or the connect error (-ECONNREFUSED, -ENETUNREACH,
 * ...); -EINVAL NULL or too-short address, -EBADF bad fd, -ENOTSOCK,
 * -EISCONN already connected (Linux reports a completed non-blocking connect
 * as success once, then EISCONN), -EINVAL a listening socket.
 */
PX_API int px_connect_timeout(int fd, const struct sockaddr *sa, socklen_t salen,
                              int timeout_ms);

/*
 * The same inside the loop: leaves fd non-blocking and calls cb exactly once,
 * never from inside px_connect, with status 0 or -errno (-ETIMEDOUT
 * included).  Returns 0 when started, or -errno when it failed at once (cb is
 * then never called): -EINVAL (NULL loop/cb/address, short address),
 * -EBADF, -ENOTSOCK, -EEXIST fd already registered, -ENOMEM, connect errors.
 * The fd is registered while pending and unregistered before cb runs, so cb
 * may px_io_add it; it is never closed.  px_io_del(fd) and px_loop_free
 * cancel it without a callback.  A pending connect keeps px_loop_run alive.
 * timeout_ms < 0: no deadline.
 */
typedef void px_connect_cb(px_loop *loop, int fd, int status, void *arg);
PX_API int px_connect(px_loop *loop, int fd, const struct sockaddr *sa, socklen_t salen,
                      int timeout_ms, px_connect_cb *cb, void *arg);

/*
 * One robust accept on a non-blocking listening socket (on a blocking one it
 * may block).  Returns a connected fd that is non-blocking and close-on-exec;
 * -EAGAIN when no connection is ready.  Connections that died in the queue
 * (ECONNABORTED, EPROTO, and Linux's other pending network errors: ENETDOWN,
 * ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH) and
 * EINTR are retried, never returned.  Other failures (-EMFILE, -ENFILE,
 * -ENOBUFS, -ENOMEM, -EBADF, -ENOTSOCK, -EINVAL not listening, ...) are
 * returned.  sa/salen may be NULL.
 */
PX_API int px_accept(int listen_fd, struct sockaddr *sa, socklen_t *salen);

/*
 * Accepting in the loop: sets listen_fd non-blocking and, each time it is
 * readable, accepts the ready connections (at most a bounded batch per
 * iteration, for fairness) and calls cb for each with a non-blocking,
 * close-on-exec client fd that cb owns.  On a resource failure (EMFILE,
 * ENFILE, ENOBUFS, ENOMEM) cb gets client_fd = -errno and peer NULL, once per
 * episode and at most once a second (an episode that starts sooner is
 * reported if it lasts until then); the acceptor then backs off instead of
 * spinning: it retries after 5 ms, doubling while the failure lasts, up to
 * 500 ms.  Out of descriptors (EMFILE, ENFILE) it also retries as soon as
 * px_io_del or px_io_close deletes any watcher of the loop (a descriptor was
 * probably freed), and once the shortage has lasted 250 ms it closes the
 * pending connections (through a reserve descriptor) rather than leave their
 * clients waiting.  It resumes by itself once accepting works.  Any other
 * accept failure is treated the same way (reported, backed off), so a broken
 * listener cannot spin.
 * Errors: -EINVAL (NULL loop/cb, socket not
 * listening), -EBADF, -ENOTSOCK, -EEXIST fd already registered, -ENOMEM.
 * px_acceptor_del: -ENOENT when fd is not an acceptor.  Neither closes
 * listen_fd.
 */
typedef void px_accept_cb(px_loop *loop, int listen_fd, int client_fd,
                          const struct sockaddr *peer, socklen_t peerlen, void *arg);
PX_API int px_acceptor_add(px_loop *loop, int listen_fd, px_accept_cb *cb, void *arg);
PX_API int px_acceptor_del(px_loop *loop, int listen_fd);

/*
 * A listening TCP socket: SO_REUSEADDR, non-blocking, close-on-exec.  host
 * NULL means any address (dual-stack [::] where possible, so 127.0.0.1
 * reaches it); IPv4 and IPv6 literals and names are accepted; port 0 is an
 * ephemeral port; backlog <= 0 means SOMAXCONN.  Returns the fd or -errno
 * (-ENOENT name does not resolve, -EAGAIN temporary resolver failure,
 * -EADDRINUSE, ...).
 */
PX_API int px_listen_tcp(const char *host, uint16_t port, int backlog);

/*
 * px_listen_tcp with options; px_listen_tcp(h, p, b) is
 * px_listen_tcp_opts(h, p, b, 0).  flags, or-ed:
 *   PX_LISTEN_REUSEPORT  SO_REUSEPORT: several listeners (one per loop,
 *                        each in its own thread) share a port, the kernel
 *                        spreads connections over them.  Every listener of
 *                        the port must set it.  -ENOTSUP where the system
 *                        has no SO_REUSEPORT.
 *   PX_LISTEN_V6ONLY     an IPv6 listener that does not take IPv4
 *                        (IPV6_V6ONLY=1).  host NULL: [::] only, with no
 *                        fallback to 0.0.0.0 (-EAFNOSUPPORT etc. where the
 *                        system has no IPv6).  Otherwise only host's IPv6
 *                        addresses are tried: an IPv4 literal or a name
 *                        with no IPv6 address is -EINVAL.
 * Unknown flags: -EINVAL.  Otherwise as px_listen_tcp.
 */
#define PX_LISTEN_REUSEPORT 0x01u
#define PX_LISTEN_V6ONLY    0x02u
PX_API int px_listen_tcp_opts(const char *host, uint16_t port, int backlog, unsigned flags);

/*
 * A connected, blocking, close-on-exec TCP socket to host:port, trying each
 * resolved address in turn until timeout_ms (< 0: no limit) has passed; the
 * deadline covers connecting, not name resolution.  Returns the fd or -errno:
 * -ENOENT the name does not resolve, -EAGAIN temporary resolver failure,
 * -EINVAL NULL host, -ETIMEDOUT, or the last address's connect error.
 */
PX_API int px_connect_tcp(const char *host, uint16_t port, int timeout_ms);

/* ------------------------------------------------------------------------ */
/* Buffered sends                                                             */
/* ------------------------------------------------------------------------ */

typedef void px_drain_cb(px_loop *loop, int fd, int status, void *arg);

/*
 * px_send: sends what the kernel takes now and queues the rest (all or
 * nothing); the queue is flushed in order whenever fd is writable, through
 * write interest pollux keeps itself (never visible in revents unless the
 * watcher asked for PX_WRITE).  fd must be registered with px_io_add.  Never
 * raises SIGPIPE.  Errors: -EINVAL NULL loop or buf == NULL with len > 0
 * (len == 0 is a no-op returning 0); -EBADF negative fd; -ENOENT
 * unregistered, or registered by the library (a pending px_connect, an
 * acceptor); -ENOTSOCK not a socket; -ENOMEM the copy could not be made
 * (nothing sent, nothing queued); the immediate send's error (-EPIPE,
 * -ECONNRESET, ...), nothing queued, not sticky; once a flush has failed,
 * that error (sticky).  All or nothing without exception: the write interest
 * that flushes the queue is made by the loop's flush before the next wait
 * (see px_io_mod: a kernel refusal there reaches the watcher as PX_ERR, with
 * the queue kept until px_io_del; ENOMEM is retried).  On datagram and
 * seqpacket sockets each px_send stays one message.
 */
PX_API int px_send(px_loop *loop, int fd, const void *buf, size_t len);

/* Bytes accepted by px_send and not yet taken by the kernel (0 for unknown
 * fds). */
PX_API size_t px_send_pending(const px_loop *loop, int fd);

/*
 * Calls cb with status 0 each time the queue falls to low_water bytes or fewer
 * after having been above it, and once with -errno when a send fails (the
 * queue is then discarded; no drain callback follows).  cb == NULL turns
 * notification off; a second call replaces the first.  Errors: -EINVAL,
 * -EBADF, -ENOENT, -ENOTSOCK as for px_send.
 */
PX_API int px_send_notify(px_loop *loop, int fd, size_t low_water, px_drain_cb *cb,
                          void *arg);

#ifdef __cplusplus
}
#endif
#endif /* POLLUX_H */
