# scripts/serve.sh: sourced (not run) by scripts/demo, scripts/musl-check and
# scripts/examples-check.  Runs one example server (examples/http-hello,
# echo-server or resolve-pool) at a time on a port the kernel picks, and
# stops it.  Only the processes it started are ever signalled, by pid.
#
#   srv_start LOG BACKEND PROGRAM [ARGS...]
#       starts POLLUX_BACKEND=BACKEND PROGRAM --port 0 ARGS... in the
#       background under "timeout --foreground -k 5 ${SRV_TIMEOUT:-30}"
#       (no stdin; stdout and stderr to LOG; through $SRV_WRAPPER, e.g.
#       valgrind, when that is set) and waits up to ${SRV_START_WAIT:-10} s
#       for its startup line ("NAME: backend=B port=N mode=M ...").  Sets
#       srv_pid (timeout's pid: wait for it), srv_child (the server's own
#       pid: signal it) and srv_port.  If the line does not come it prints
#       LOG, stops the server and returns 1.  A server still running from an
#       earlier srv_start is stopped first.
#   srv_signal SIG
#       sends SIG (TERM, HUP, INT...) to the server itself.  Not through
#       timeout: without --foreground it sends each signal twice (to the
#       child and to its process group), and with -k any signal it forwards
#       starts its SIGKILL countdown.
#   srv_wait SECS
#       waits up to SECS for the server to exit by itself (http-hello
#       --max-requests, or after srv_signal TERM), then kills it; sets
#       srv_status to its exit status.
#   srv_stop
#       stops it now (SIGTERM) and reaps it; sets srv_status.
#   srv_cleanup
#       for an EXIT trap: stops a server that is still running.

srv_pid=
srv_child=
srv_port=
srv_status=
srv_pidfile=

srv_start() {
	local log=$1 backend=$2 prog=$3 i
	shift 3
	srv_cleanup # one server at a time
	srv_port=
	srv_child=
	: > "$log"
	[ -n "$srv_pidfile" ] || srv_pidfile=$(mktemp)
	: > "$srv_pidfile"
	# sh records its pid, then becomes the server (exec): that pid is the
	# server's (the wrapper's, e.g. valgrind's, which is the same process).
	POLLUX_BACKEND=$backend timeout --foreground -k 5 "${SRV_TIMEOUT:-30}" \
		sh -c 'echo $$ > "$0"; exec "$@"' "$srv_pidfile" ${SRV_WRAPPER-} "$prog" --port 0 "$@" \
		> "$log" 2>&1 < /dev/null &
	srv_pid=$!
	for i in $(seq $((${SRV_START_WAIT:-10} * 10))); do
		[ -n "$srv_child" ] || srv_child=$(cat "$srv_pidfile" 2>/dev/null)
		srv_port=$(sed -n 's/^[a-z-]*: backend=.* port=\([0-9][0-9]*\).*/\1/p' "$log" | head -1)
		[ -n "$srv_port" ] && [ -n "$srv_child" ] && return 0
		kill -0 "$srv_pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "FAIL: $(basename "$prog") did not print its startup line; its output:"
	sed 's/^/  | /' "$log"
	srv_stop
	return 1
}

srv_wait() {
	if [ -z "$srv_pid" ]; then srv_status=0; return 0; fi
	timeout "$1" tail --pid="$srv_pid" -f /dev/null || kill "$srv_pid" 2>/dev/null || true
	srv_status=0
	wait "$srv_pid" || srv_status=$?
	srv_pid=
	srv_child=
}

srv_signal() {
	if [ -n "$srv_pid" ] && [ -n "$srv_child" ] && kill -0 "$srv_pid" 2>/dev/null; then
		kill -s "$1" "$srv_child" 2>/dev/null
	else
		return 1
	fi
}

srv_stop() {
	if [ -z "$srv_pid" ]; then srv_status=0; return 0; fi
	srv_signal TERM || kill "$srv_pid" 2>/dev/null || true
	srv_status=0
	wait "$srv_pid" 2>/dev/null || srv_status=$?
	srv_pid=
	srv_child=
}

srv_cleanup() {
	if [ -n "$srv_pid" ]; then
		srv_signal TERM || kill "$srv_pid" 2>/dev/null || true
		wait "$srv_pid" 2>/dev/null || true
		srv_pid=
		srv_child=
	fi
	if [ -n "$srv_pidfile" ]; then
		rm -f "$srv_pidfile"
		srv_pidfile=
	fi
}
