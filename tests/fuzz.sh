#!/bin/sh
# Builds tests/fuzz_ops.c (libFuzzer + ASan + UBSan) with the library sources
# and runs it for a bounded time.  Usage: tests/fuzz.sh [seconds] (default 60)
# Environment: FUZZ_SRC (library source tree, default this one), FUZZ_DIR (build/corpus/artifacts dir, default a fresh temp dir),
# CC (default clang), FUZZ_JOBS (parallel workers, default 1), PX_DIFF_RELAX,
# PX_DIFF_MANY, PX_DIFF_IGNORE (see tests/diffops.h).  Exits non-zero on a
# crash, a contract violation or a trace difference;
# the reproducer is left in $FUZZ_DIR/artifacts (re-run it with
# $FUZZ_DIR/fuzz_ops <file>).
set -eu

secs=${1:-60}
here=$(cd "$(dirname "$0")/.." && pwd)
lib=${FUZZ_SRC:-$here}
cc=${CC:-clang}
dir=${FUZZ_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/pollux-fuzz.XXXXXX")}
mkdir -p "$dir/corpus" "$dir/artifacts" "$dir/cfg"

if ! "$cc" --version >/dev/null 2>&1; then
	echo "fuzz.sh: $cc not found (Debian: apt-get install clang libclang-rt-dev)" >&2
	exit 2
fi

# The library's configuration: what this system has (Linux: all three).
cfg="$dir/cfg/config.h"
{
	echo '#define PACKAGE_VERSION "fuzz"'
	[ -e /usr/include/sys/epoll.h ] && echo '#define HAVE_EPOLL 1'
	[ -e /usr/include/poll.h ] && echo '#define HAVE_POLL 1'
	echo '#define HAVE_ACCEPT4 1'
	echo '#define HAVE_BUILTIN_BITS 1' # the rest: probe() below
	echo '#define PX_INVARIANTS 1' # the loop's invariants, checked after every iteration
} > "$cfg"

# tests/portable.h's answers for diffops.c (configure's test checks, asked of
# $cc here): DEFINE, a header, an expression that compiles where it exists.
probe() {
	printf '#include <%s>\nint main(void) { (void)(%s); return 0; }\n' "$2" "$3" > "$dir/cfg/probe.c"
	if "$cc" -std=c11 -D_GNU_SOURCE -fsyntax-only "$dir/cfg/probe.c" 2>/dev/null; then
		echo "#define $1 1" >> "$cfg"
	fi
}
probe HAVE_SYS_EVENTFD_H sys/eventfd.h 0
probe HAVE_SYS_PRCTL_H sys/prctl.h 0
probe HAVE_SYS_FILIO_H sys/filio.h 0
probe HAVE_DECL_PIPE2 unistd.h pipe2
probe HAVE_DECL_DUP3 unistd.h dup3
probe HAVE_DECL_MKOSTEMP stdlib.h mkostemp
probe HAVE_DECL_SOCK_NONBLOCK sys/socket.h SOCK_NONBLOCK
probe HAVE_DECL_SOCK_CLOEXEC sys/socket.h SOCK_CLOEXEC
probe HAVE_DECL_MSG_NOSIGNAL sys/socket.h MSG_NOSIGNAL
probe HAVE_DECL_MSG_CMSG_CLOEXEC sys/socket.h MSG_CMSG_CLOEXEC
probe HAVE_DECL_POLLRDHUP poll.h POLLRDHUP
# the library's own (configure's AC_CHECK_FUNCS)
probe HAVE_EVENTFD sys/eventfd.h eventfd
probe HAVE_PIPE2 unistd.h pipe2
rm -f "$dir/cfg/probe.c"

srcs="$lib/src/core/loop.c $lib/src/core/io.c $lib/src/core/timer.c $lib/src/core/clock.c $lib/src/core/check.c $lib/src/core/compat.c"
for f in wake signal; do
	if [ -f "$lib/src/core/$f.c" ]; then srcs="$srcs $lib/src/core/$f.c"; fi
done
for b in select poll epoll; do
	if [ -f "$lib/src/backend/$b.c" ]; then srcs="$srcs $lib/src/backend/$b.c"; fi
done
if [ -f "$lib/src/core/send.c" ]; then
	srcs="$srcs $lib/src/core/send.c"
else
	cat > "$dir/cfg/sendstub.c" <<'STUB'
#include <config.h>
#include "core.h"
void pxi_sendq_flush(px_loop *l, int fd) { (void)l; (void)fd; }
void pxi_sendq_free(px_loop *l, struct pxi_sendq *q) { (void)l; (void)q; }
STUB
	srcs="$srcs $dir/cfg/sendstub.c"
fi

echo "fuzz.sh: building $dir/fuzz_ops"
# shellcheck disable=SC2086
"$cc" -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-I"$dir/cfg" -I"$lib/include" -I"$lib/src/core" \
	$srcs "$here/tests/diffops.c" "$here/tests/fuzz_ops.c" -o "$dir/fuzz_ops"

# A small starting corpus: a few deterministic pseudo-random programs
# (4 bytes per operation), and short programs that reproduce bugs found
# before (they fail until the library is fixed, then guard it).  Their bytes
# follow the decoder of tests/diffops.c (op kind = byte 0 mod 115 through
# kind_weight[]): re-derive them if those weights change.
if [ -z "$(ls -A "$dir/corpus")" ]; then
	for s in 1 2 3 4 5 6 7 8; do
		LC_ALL=C awk -v seed="$s" 'BEGIN { srand(seed); for (i = 0; i < 800; i++) printf "%c", int(rand() * 256) }' \
			> "$dir/corpus/seed$s"
	done
	# add s0 R; dup s0; del s0; reopen s0; add s0 R; run: epoll keeps the old
	# file (alive in the copy) and reports its hang-up on the new watcher
	printf '\000\000\001\000\144\000\000\000\024\000\000\000\072\000\000\000\000\000\001\000\120\000\000\000' \
		> "$dir/corpus/bug-dup-reuse"
	# the same with a child holding the file (and unread data in it)
	printf '\000\000\001\000\031\000\000\011\152\000\000\000\024\000\000\000\072\000\000\000\000\000\001\000\120\000\000\000' \
		> "$dir/corpus/bug-fork-reuse"
	# the same with the file in flight over SCM_RIGHTS
	printf '\000\000\001\000\153\000\001\000\024\000\000\000\072\000\000\000\000\000\001\000\120\000\000\000' \
		> "$dir/corpus/bug-scm-reuse"
	# add s0 R; reuse s0 file R: epoll px_io_add of a regular file at a
	# number deleted before must be -EPERM
	printf '\000\000\001\000\155\000\001\002\120\000\000\000' > "$dir/corpus/bug-file-eperm"
	# many: 2,100 ready fds and a refused change in one flush (heap overflow)
	printf '\162\000\000\020' > "$dir/corpus/bug-many-refuse"
	# reuse s0 pipe R|ET; shut s0; run x3; run x3: the ET read side of a pipe
	# at end of file must go quiet on select and poll
	printf '\155\000\005\001\064\000\000\000\120\000\002\000\120\000\002\000' > "$dir/corpus/bug-pipe-et-eof"
fi

echo "fuzz.sh: running for ${secs}s (corpus $dir/corpus, artifacts $dir/artifacts)"
set +e
cd "$dir"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
"$dir/fuzz_ops" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 \
	-max_len=4096 -print_final_stats=1 -artifact_prefix="$dir/artifacts/" \
	${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} \
	"$dir/corpus" > "$dir/fuzz.log" 2>&1
rc=$?
set -e
tail -n 80 "$dir/fuzz.log"
if grep -q -E '^(==[0-9]+==ERROR|SUMMARY: |fuzz_ops: [0-9]+ backend)|deadly signal|Test unit written' "$dir/fuzz.log"; then
	echo "fuzz.sh: FAILED (log $dir/fuzz.log, reproducers in $dir/artifacts)" >&2
	exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
echo "fuzz.sh: no crash or difference in ${secs}s ($dir)"
