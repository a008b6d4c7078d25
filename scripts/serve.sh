# scripts/serve.sh: sourced (not run) by scripts/demo and scripts/musl-check.
# Runs one example server (examples/http-hello or examples/echo-server) at a
# time on a port the kernel picks, and stops it.  Only the pid it started is
# ever signalled.
#
#   srv_start LOG BACKEND PROGRAM [ARGS...]
#       starts POLLUX_BACKEND=BACKEND PROGRAM --port 0 ARGS... in the
#       background under "timeout ${SRV_TIMEOUT:-30}" (no stdin; stdout and
#       stderr to LOG) and waits up to 10 s for its startup line
#       ("NAME: backend=B port=N mode=M").  Sets srv_pid and srv_port.  If the
#       line does not come it prints LOG, stops the server and returns 1.
#       A server still running from an earlier srv_start is stopped first.
#   srv_wait SECS
#       waits up to SECS for the server to exit by itself (http-hello
#       --max-requests), then kills it; sets srv_status to its exit status.
#   srv_stop
#       stops it now (SIGTERM) and reaps it; sets srv_status.
#   srv_cleanup
#       for an EXIT trap: stops a server that is still running.

srv_pid=
srv_port=
srv_status=

srv_start() {
	local log=$1 backend=$2 prog=$3 i
	shift 3
	srv_cleanup # one server at a time
	srv_port=
	: > "$log"
	POLLUX_BACKEND=$backend timeout -k 5 "${SRV_TIMEOUT:-30}" "$prog" --port 0 "$@" \
		> "$log" 2>&1 < /dev/null &
	srv_pid=$!
	for i in $(seq 100); do
		srv_port=$(sed -n 's/^[a-z-]*: backend=.* port=\([0-9][0-9]*\).*/\1/p' "$log" | head -1)
		[ -n "$srv_port" ] && return 0
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
}

srv_stop() {
	if [ -z "$srv_pid" ]; then srv_status=0; return 0; fi
	kill "$srv_pid" 2>/dev/null || true
	srv_status=0
	wait "$srv_pid" 2>/dev/null || srv_status=$?
	srv_pid=
}

srv_cleanup() {
	if [ -n "$srv_pid" ]; then
		kill "$srv_pid" 2>/dev/null || true
		wait "$srv_pid" 2>/dev/null || true
		srv_pid=
	fi
}
