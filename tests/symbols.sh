#!/bin/sh
# Checks the dynamic symbol table of the built shared library:
#  - every exported (defined) symbol starts with px_ (internals use pxi_ and
#    -fvisibility=hidden, and libtool's -export-symbols-regex '^px_');
#  - every function that include/pollux.h declares with PX_API is exported,
#    px_loop_new, px_io_add and px_timer_add included.
# Finds the library through $PX_BUILDDIR (set by make check), else the
# current directory; the header through $PX_SRCDIR, else this script's
# directory/..  Works in VPATH and distcheck builds.

builddir=${PX_BUILDDIR:-.}
srcdir=${PX_SRCDIR:-$(dirname "$0")/..}
NM=${NM:-nm}

lib=$builddir/.libs/libpollux.so
header=$srcdir/include/pollux.h

if ! test -f "$lib"; then
	if test -f "$builddir/.libs/libpollux.a"; then
		echo "SKIP: no shared library (configured with --disable-shared?)"
		exit 77
	fi
	echo "FAIL: $lib not found (run make first)"
	exit 1
fi
if ! test -f "$header"; then
	echo "FAIL: $header not found"
	exit 1
fi

tmp=${TMPDIR:-/tmp}/px-symbols.$$
trap 'rm -f "$tmp".*' EXIT INT TERM

# "nm -D --defined-only" prints "ADDRESS TYPE NAME"; version-node
# definitions (type A) are not symbols of the library's code or data.
if ! $NM -D --defined-only "$lib" > "$tmp.nm"; then
	echo "FAIL: $NM -D --defined-only $lib failed"
	exit 1
fi
awk 'NF >= 3 && $2 != "A" { sub(/@.*/, "", $3); print $3 }' "$tmp.nm" | sort -u > "$tmp.exported"

# Functions the public header declares: "PX_API <type> <name>(" on one line.
sed -n 's/^PX_API[^(]*[^A-Za-z0-9_]\([A-Za-z_][A-Za-z0-9_]*\)[[:space:]]*(.*/\1/p' "$header" |
	sort -u > "$tmp.declared"

status=0
echo "library: $lib"
echo "exported: $(wc -l < "$tmp.exported") symbols; declared in pollux.h: $(wc -l < "$tmp.declared") functions"

bad=$(grep -v '^px_' "$tmp.exported")
if test -n "$bad"; then
	echo "FAIL: symbols exported without the px_ prefix:"
	echo "$bad" | sed 's/^/    /'
	status=1
fi

bad=$(grep '^pxi_' "$tmp.exported")
if test -n "$bad"; then
	echo "FAIL: internal pxi_ symbols exported:"
	echo "$bad" | sed 's/^/    /'
	status=1
fi

for sym in px_loop_new px_io_add px_timer_add; do
	grep -qx "$sym" "$tmp.declared" || { echo "FAIL: $sym is not declared in $header"; status=1; }
done

missing=$(comm -23 "$tmp.declared" "$tmp.exported")
if test -n "$missing"; then
	echo "FAIL: declared in pollux.h but not exported by the library:"
	echo "$missing" | sed 's/^/    /'
	status=1
fi

extra=$(comm -13 "$tmp.declared" "$tmp.exported")
if test -n "$extra"; then
	echo "FAIL: exported but not declared in pollux.h:"
	echo "$extra" | sed 's/^/    /'
	status=1
fi

if test $status -eq 0; then
	echo "PASS: exactly the $(wc -l < "$tmp.declared") functions of pollux.h are exported, all px_*"
fi
exit $status
