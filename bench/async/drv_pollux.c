/* pollux: px_loop_post / px_loop_wake / px_signal_add.  A never-readable
 * pipe keeps PX_RUN_DEFAULT running (signal watchers and wake-ups do not). */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include "pollux.h"
#include "async.h"

static px_loop *L;
static int keep[2] = { -1, -1 };
static enum async_mode mode;
static atomic_int stopping;

static const char *const backends[] = { "epoll", "poll", "select", NULL };

static void nop_io(px_loop *loop, int fd, unsigned revents, void *arg)
{
	(void)loop;
	(void)fd;
	(void)revents;
	(void)arg;
}

static void on_signal(px_loop *loop, int signo, void *arg)
{
	(void)loop;
	(void)signo;
	(void)arg;
	async_signal();
}

static void on_post(px_loop *loop, void *arg)
{
	(void)loop;
	async_posted(arg);
}

static void on_stop(px_loop *loop, void *arg)
{
	(void)arg;
	px_loop_stop(loop);
}

static int init(const char *backend, enum async_mode m)
{
	mode = m;
	L = px_loop_new_backend(backend);
	if (!L) {
		perror("px_loop_new_backend");
		return -1;
	}
	if (pipe(keep) < 0 || px_io_add(L, keep[0], PX_READ, nop_io, NULL) < 0) {
		perror("keep-alive pipe");
		return -1;
	}
	if (m == M_SIGNAL_LAT) {
		int rc = px_signal_add(L, SIGUSR1, on_signal, NULL);
		if (rc < 0) {
			fprintf(stderr, "px_signal_add: %d\n", rc);
			return -1;
		}
	}
	return 0;
}

static const char *name(void) { return px_loop_backend(L); }

static void run(void)
{
	if (mode == M_WAKE_TPUT || mode == M_WAKE_LAT) {
		/* A wake-up has no callback: it ends the iteration. */
		while (!atomic_load(&stopping)) {
			px_loop_run(L, PX_RUN_ONCE);
			async_woken();
		}
		return;
	}
	px_loop_run(L, PX_RUN_DEFAULT);
}

static int post(void *arg) { return px_loop_post(L, on_post, arg); }
static int wake(void) { return px_loop_wake(L); }

static void stop(void)
{
	if (mode == M_WAKE_TPUT || mode == M_WAKE_LAT) {
		atomic_store(&stopping, 1);
		px_loop_wake(L);
	} else if (px_loop_post(L, on_stop, NULL) < 0) {
		async_die("px_loop_post(stop)");
	}
}

static uint64_t wakeups(void)
{
	struct px_loop_stats st;

	if (px_loop_stats(L, &st, sizeof st) < 0)
		return 0;
	return st.iterations;
}

static void fini(void)
{
	px_loop_free(L);
	close(keep[0]);
	close(keep[1]);
}

const struct async_driver drv_pollux = {
	.lib = "pollux", .backends = backends, .init = init, .backend_name = name, .run = run,
	.post = post, .wake = wake, .stop = stop, .wakeups = wakeups, .fini = fini,
};
