#!/bin/sh
# Builds and runs the soak test by hand (until the build system has a target).
#
#   tests/soak.sh [--asan] [soak options...]     e.g. tests/soak.sh --full
#
# --asan builds with -fsanitize=address,undefined.  Other options go to the
# soak program (--backend NAME, --conns N, --seconds S, --full, --seed X, -v).
# Needs a config.h: $PXCFG (default /tmp/pxcfg) is created with the defaults
# for Linux when missing.
set -eu
cd "$(dirname "$0")/.."

cfg=${PXCFG:-/tmp/pxcfg}
if [ ! -f "$cfg/config.h" ]; then
	mkdir -p "$cfg"
	cat >"$cfg/config.h" <<'EOF'
#define HAVE_EPOLL 1
#define HAVE_POLL 1
#define HAVE_ACCEPT4 1
#define PACKAGE_VERSION "1.0.0"
EOF
fi

flags="-O2"
out=${TMPDIR:-/tmp}/soak
if [ "${1:-}" = "--asan" ]; then
	shift
	flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined"
	out=${TMPDIR:-/tmp}/soak-asan
fi

# shellcheck disable=SC2086
gcc -std=c11 $flags -D_GNU_SOURCE -Wall -Wextra -Werror -I"$cfg" -Iinclude -Isrc/core \
	src/core/*.c src/backend/*.c tests/soak.c -o "$out"
exec "$out" "$@"
