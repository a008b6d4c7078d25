#!/usr/bin/env python3
"""bench/async/suite.py: the v2 benchmarks (issue 11), called by bench/async/run.

Runs bench/out/async-* once per (mode, variant, repetition), the variants
interleaved (every variant once per repetition, in a rotating order), then
prints markdown tables: posting throughput, wake-only rate, post / wake /
signal latency (median and p99 over all samples of all repetitions), with
cost ratios against every peer.  Instructions per post / wake come from
callgrind (one run per variant, deterministic up to batching).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

POLLUX = [("pollux", "epoll"), ("pollux", "poll"), ("pollux", "select")]
PEERS = [("hand", "epoll"), ("libuv", "epoll"), ("libev", "epoll"), ("libevent", "epoll")]
PEER_OTHER = [("libev", "poll"), ("libev", "select"), ("libevent", "poll"), ("libevent", "select")]
MODES = ["post-tput", "wake-tput", "post-lat", "wake-lat", "signal-lat"]
TITLES = {
    "post-tput": "Cross-thread posting: throughput",
    "wake-tput": "Wake-up alone: rate of calls from another thread",
    "post-lat": "Post latency: post from another thread -> callback runs in the sleeping loop",
    "wake-lat": "Wake-up latency: wake from another thread -> the sleeping loop sees it",
    "signal-lat": "Signal latency: kill(getpid(), SIGUSR1) -> the loop's signal callback",
}
WHAT = {
    "pollux": {"post": "`px_loop_post`", "wake": "`px_loop_wake`", "signal": "`px_signal_add`"},
    "hand": {"post": "mutex queue + eventfd (written on empty -> non-empty) + `epoll_wait`",
             "wake": "atomic flag + eventfd", "signal": "`sigaction` handler + eventfd"},
    "libuv": {"post": "mutex queue + `uv_async_send`", "wake": "`uv_async_send`",
              "signal": "`uv_signal_start`"},
    "libev": {"post": "mutex queue + `ev_async_send`", "wake": "`ev_async_send`",
              "signal": "`ev_signal_start`"},
    "libevent": {"post": "mutex queue + `event_active` (evthread_use_pthreads)",
                 "wake": "`event_active`", "signal": "`evsignal_new` + `event_add`"},
}


def vname(v):
    return f"{v[0]}/{v[1]}"


def parse_kv(line):
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def run_one(binary, v, mode, opt, samples_out=None, wrap=None, timeout=120):
    free = mode.endswith("@free")
    mode = mode.split("@")[0]
    cmd = [binary, "--lib", v[0], "--backend", v[1], "--mode", mode]
    if not free:
        cmd += ["--cpus", "hot"]
    if mode.endswith("tput"):
        cmd += ["--m", str(opt.m if mode == "post-tput" else opt.mw)]
    else:
        cmd += ["--samples", str(opt.samples), "--gap-us", str(opt.gap_us)]
        if samples_out:
            cmd += ["--samples-out", samples_out]
    if wrap:
        cmd = wrap + cmd
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        err = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
        raise RuntimeError(err[:160])
    lines = [l for l in p.stdout.splitlines() if l.startswith("lib=")]
    if not lines:
        raise RuntimeError("no result line")
    return parse_kv(lines[-1])


def callgrind_ir(binary, v, mode, fn, m, tmp):
    """User-space instructions inside fn (producer_post, producer_wake or
    loop_run, with everything they call) per message."""
    fd, out = tempfile.mkstemp(prefix="cg.", dir=tmp)
    os.close(fd)
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=yes", f"--toggle-collect={fn}",
           f"--callgrind-out-file={out}", binary, "--lib", v[0], "--backend", v[1],
           "--mode", mode, "--m", str(m)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=600)
    if p.returncode != 0:
        raise RuntimeError((p.stderr.strip().splitlines() or ["callgrind failed"])[-1][:160])
    total = None
    with open(out) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                total = int(line.split()[1])
    os.unlink(out)
    return total / m if total is not None else None


def callgrind_lat(binary, v, mode, tmp, k0=100, k1=600):
    """Loop-side user-space instructions per latency sample: everything under
    loop_run (return from the wait, the library's handling, the callback, back
    into the wait; the signal handler too), k1 samples minus k0, / (k1 - k0)."""
    tot = []
    for k in (k0, k1):
        fd, out = tempfile.mkstemp(prefix="cg.", dir=tmp)
        os.close(fd)
        cmd = ["valgrind", "--tool=callgrind", "--toggle-collect=loop_run",
               f"--callgrind-out-file={out}", binary, "--lib", v[0], "--backend", v[1],
               "--mode", mode, "--samples", str(k), "--warmup", "0", "--gap-us", "50"]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=600)
        if p.returncode != 0:
            raise RuntimeError((p.stderr.strip().splitlines() or ["callgrind failed"])[-1][:160])
        with open(out) as f:
            for line in f:
                if line.startswith("totals:") or line.startswith("summary:"):
                    tot.append(int(line.split()[1]))
                    break
        os.unlink(out)
    return (tot[1] - tot[0]) / (k1 - k0)


def strace_counts(binary, v, mode, tmp, k0=100, k1=600):
    """System calls per latency sample (both threads): strace -f -c of a run
    with k1 samples minus one with k0, divided by k1 - k0 (set-up cancels)."""
    per = []
    for k in (k0, k1):
        fd, out = tempfile.mkstemp(prefix="st.", dir=tmp)
        os.close(fd)
        # strace slows every system call down: a longer gap, so that the loop
        # is back asleep before each sample here too.
        cmd = ["strace", "-f", "-qq", "-c", "-o", out, binary, "--lib", v[0], "--backend", v[1],
               "--mode", mode, "--samples", str(k), "--warmup", "0", "--gap-us", "1000"]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=300)
        if p.returncode != 0:
            raise RuntimeError((p.stderr.strip().splitlines() or ["strace failed"])[-1][:160])
        counts = {}
        with open(out) as f:
            for line in f:
                fs = line.split()
                if len(fs) >= 5 and fs[-1] != "total" and fs[3].isdigit():
                    counts[fs[-1]] = int(fs[3])
        os.unlink(out)
        per.append(counts)
    names = set(per[0]) | set(per[1])
    d = {n: (per[1].get(n, 0) - per[0].get(n, 0)) / (k1 - k0) for n in names}
    d = {n: round(x, 2) for n, x in d.items() if abs(x) >= 0.05}
    return sum(d.values()), dict(sorted(d.items(), key=lambda kv: -kv[1]))


def pct(sorted_v, p):
    if not sorted_v:
        return None
    i = int(p / 100.0 * (len(sorted_v) - 1) + 0.5)
    return sorted_v[min(i, len(sorted_v) - 1)]


def med(xs):
    return statistics.median(xs) if xs else None


def f1(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--m", type=int, default=2000000, help="posts per throughput run")
    ap.add_argument("--mw", type=int, default=2000000, help="wakes per wake-rate run")
    ap.add_argument("--samples", type=int, default=2000, help="latency samples per run")
    ap.add_argument("--lat-runs", type=int, default=2,
                    help="runs per repetition (short runs, interleaved: the machine's load "
                    "changes under them); the tables give the median of all of them")
    ap.add_argument("--gap-us", type=int, default=50)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--only", default="", help="comma list of lib/backend variants")
    ap.add_argument("--peer-backends", action="store_true",
                    help="also libev and libevent on poll and select")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--no-free", action="store_true",
                    help="skip the unpinned latency runs (only the pinned, hot-CPU ones)")
    ap.add_argument("--cg-m", type=int, default=200000)
    ap.add_argument("--no-pollux", action="store_true", help="this build has no v2 pollux")
    ap.add_argument("--json", default="")
    ap.add_argument("--md", default="")
    ap.add_argument("--command", default="bench/async/run")
    opt = ap.parse_args()

    started = time.time()
    variants = ([] if opt.no_pollux else POLLUX) + PEERS + (PEER_OTHER if opt.peer_backends else [])
    if opt.only:
        want = set(opt.only.split(","))
        variants = [v for v in variants if vname(v) in want]
    modes = [m for m in MODES if m in opt.modes.split(",")]
    if not opt.no_free:
        modes += [m + "@free" for m in modes if m.endswith("lat")]
    tmp = tempfile.mkdtemp(prefix="pxasync.")
    res = {m: {v: {"runs": [], "samples": []} for v in variants} for m in modes}

    # 1. Wall clock: interleaved repetitions, each of lat_runs passes (every
    # variant once per pass, in a rotating order).
    npass = opt.reps * opt.lat_runs
    for rep in range(npass):
        for mode in modes:
            k = rep % max(len(variants), 1)
            for v in variants[k:] + variants[:k]:
                r = res[mode][v]
                if r.get("error"):
                    continue
                sfile = os.path.join(tmp, "samples")
                try:
                    kv = run_one(opt.bin, v, mode, opt, samples_out=sfile)
                except Exception as e:  # noqa: BLE001
                    r["error"] = str(e)
                    continue
                r["runs"].append(kv)
                if "-lat" in mode:
                    with open(sfile) as f:
                        r["samples"] += [int(x) for x in f]
        print(f"[{time.time() - started:5.1f}s] pass {rep + 1}/{npass}", file=sys.stderr)

    for mode in modes:
        for v in variants:
            r = res[mode][v]
            runs = r["runs"]
            if mode == "post-tput":
                for key in ("posts_per_s", "ns_per_post", "prod_cpu_ns", "loop_cpu_ns", "batches"):
                    r[key] = med([x[key] for x in runs])
                r["spread"] = [x["posts_per_s"] for x in runs]
            elif mode == "wake-tput":
                for key in ("wakes_per_s", "ns_per_wake", "prod_cpu_ns", "loop_wakeups"):
                    r[key] = med([x[key] for x in runs])
                r["spread"] = [x["wakes_per_s"] for x in runs]
            elif r["runs"]:
                s = sorted(r["samples"])
                r["n"] = len(s)
                r["med"], r["p90"], r["p99"] = pct(s, 50), pct(s, 90), pct(s, 99)
                r["rep_meds"] = [x["lat_med_ns"] for x in runs]
                r["rep_p99s"] = [x["lat_p99_ns"] for x in runs]
                r["samples"] = None  # not kept in the JSON

    # 2. Instructions (callgrind): producer side and loop side, per message.
    if not opt.no_callgrind and shutil.which("valgrind"):
        for mode, fns in (("post-tput", ("producer_post", "loop_run")),
                          ("wake-tput", ("producer_wake",))):
            if mode not in modes:
                continue
            for v in variants:
                r = res[mode][v]
                if r.get("error"):
                    continue
                for fn in fns:
                    try:
                        r["ir_" + fn] = callgrind_ir(opt.bin, v, mode, fn, opt.cg_m, tmp)
                    except Exception as e:  # noqa: BLE001
                        r["ir_error"] = str(e)
        for mode in ("post-lat", "wake-lat", "signal-lat"):
            if mode not in modes:
                continue
            for v in variants:
                r = res[mode][v]
                if r.get("error"):
                    continue
                try:
                    r["ir_loop"] = callgrind_lat(opt.bin, v, mode, tmp)
                except Exception as e:  # noqa: BLE001
                    r["ir_error"] = str(e)
        print(f"[{time.time() - started:5.1f}s] callgrind done", file=sys.stderr)
    # 3. System calls per latency sample (strace -f -c; deterministic).
    if not opt.no_strace and shutil.which("strace"):
        for mode in modes:
            if not mode.endswith("lat"):  # the pinned runs only
                continue
            for v in variants:
                r = res[mode][v]
                if r.get("error"):
                    continue
                try:
                    r["sys"], r["sys_detail"] = strace_counts(opt.bin, v, mode, tmp)
                except Exception as e:  # noqa: BLE001
                    r["sys_error"] = str(e)
        print(f"[{time.time() - started:5.1f}s] strace done", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)

    # 4. Tables.
    L = []
    out = L.append
    present_peers = [p for p in PEERS if p in variants]

    def ref(v, peer, mode):
        """The peer to compare v with: the peer on v's backend when it was run, else on epoll."""
        same = (peer[0], v[1])
        return res[mode].get(same) if same in res[mode] else res[mode].get(peer)

    def peer_cols():
        return " | ".join(f"x {p[0]}" for p in present_peers)

    def ratios(v, mode, key, invert=False):
        cells = []
        for p in present_peers:
            a, b = res[mode][v].get(key), (ref(v, p, mode) or {}).get(key)
            if invert and a and b:
                a, b = 1 / a, 1 / b
            cells.append(ratio(a, b))
        return " | ".join(cells)

    def sysfmt(r):
        if r.get("sys") is None:
            return "-"
        return f"{r['sys']:.1f}: " + ", ".join(f"{n} {c:g}" for n, c in r["sys_detail"].items())

    def errors(mode):
        for v in variants:
            if res[mode][v].get("error"):
                out(f"\n`{vname(v)}`: error: {res[mode][v]['error']}")

    if "post-tput" in modes:
        mode = "post-tput"
        out(f"#### {TITLES[mode]} ({opt.m:,} posts, one producer thread)\n")
        out("| variant | how | Mposts/s median [min-max] | ns/post | producer CPU ns/post | "
            "loop CPU ns/post | loop batches | producer Ir/post | loop Ir/post | "
            + peer_cols() + " |")
        out("|---|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(present_peers))
        for v in variants:
            r = res[mode][v]
            if not r["runs"]:
                continue
            sp = r["spread"]
            out(f"| {vname(v)} | {WHAT[v[0]]['post']} | {r['posts_per_s'] / 1e6:.2f} "
                f"[{min(sp) / 1e6:.2f}-{max(sp) / 1e6:.2f}] | {f1(r['ns_per_post'])} | "
                f"{f1(r['prod_cpu_ns'])} | {f1(r['loop_cpu_ns'])} | {f1(r['batches'], 0)} | "
                f"{f1(r.get('ir_producer_post'))} | {f1(r.get('ir_loop_run'))} | "
                + ratios(v, mode, "ns_per_post") + " |")
        errors(mode)
        out(f"\nns/post = (time the M-th callback ran - start) / M, median of {npass} runs; "
            "x peer = ns/post ÷ the peer's (< 1: faster than the peer). CPU: the thread's "
            "CLOCK_THREAD_CPUTIME_ID / M. Ir: callgrind user-space instructions per post, "
            f"{opt.cg_m:,} posts (valgrind runs the two threads one at a time, so the loop "
            "side is the cost at large batches).\n")

    if "wake-tput" in modes:
        mode = "wake-tput"
        out(f"#### {TITLES[mode]} ({opt.mw:,} calls)\n")
        out("| variant | call | M calls/s median [min-max] | ns/call | producer CPU ns/call | "
            "loop wake-ups | producer Ir/call | " + peer_cols() + " |")
        out("|---|---|---|---:|---:|---:|---:|" + "---:|" * len(present_peers))
        for v in variants:
            r = res[mode][v]
            if not r["runs"]:
                continue
            sp = r["spread"]
            out(f"| {vname(v)} | {WHAT[v[0]]['wake']} | {r['wakes_per_s'] / 1e6:.1f} "
                f"[{min(sp) / 1e6:.1f}-{max(sp) / 1e6:.1f}] | {f1(r['ns_per_wake'])} | "
                f"{f1(r['prod_cpu_ns'])} | {f1(r['loop_wakeups'], 0)} | "
                f"{f1(r.get('ir_producer_wake'))} | " + ratios(v, mode, "ns_per_wake") + " |")
        errors(mode)
        out(f"\nns/call = the producer's time for the calls / M, median of {npass} runs. The "
            "wake-ups coalesce: a call while one is pending makes no system call, so this is "
            "mostly the cost of the pending check; loop wake-ups = how many the loop saw "
            "(median).\n")

    for mode in ("post-lat", "wake-lat", "signal-lat"):
        if mode not in modes:
            continue
        what = {"post-lat": "post", "wake-lat": "wake", "signal-lat": "signal"}[mode]
        out(f"#### {TITLES[mode]} (pinned, hot CPUs)\n")
        out("| variant | how | samples | median µs | p90 µs | p99 µs | per-run medians µs | "
            "median " + peer_cols() + " | p99 " + peer_cols() + " | loop Ir/sample | "
            "syscalls/sample |")
        out("|---|---|---:|---:|---:|---:|---|" + "---:|" * (2 * len(present_peers) + 1) + "---|")
        for v in variants:
            r = res[mode][v]
            if not r["runs"]:
                continue
            rm = r["rep_meds"]
            out(f"| {vname(v)} | {WHAT[v[0]][what]} | {r['n']:,} | {r['med'] / 1e3:.1f} | "
                f"{r['p90'] / 1e3:.1f} | {r['p99'] / 1e3:.1f} | "
                f"{min(rm) / 1e3:.1f}-{max(rm) / 1e3:.1f} | "
                + ratios(v, mode, "med") + " | " + ratios(v, mode, "p99") + " | "
                + f1(r.get("ir_loop"), 0) + " | " + sysfmt(r) + " |")
        errors(mode)
        out("")
    free_modes = [m for m in modes if m.endswith("@free")]
    if free_modes:
        out("#### The same latencies unpinned (the scheduler places the threads; no spinner)\n")
        out("| variant | " + " | ".join(f"{m.split('-')[0]} median µs | {m.split('-')[0]} p99 µs | "
                                         f"{m.split('-')[0]} per-run medians µs"
                                         for m in free_modes) + " |")
        out("|---|" + "---:|---:|---|" * len(free_modes))
        for v in variants:
            cells = []
            for m in free_modes:
                r = res[m][v]
                if not r["runs"]:
                    cells.append("- | - | -")
                    continue
                rm = r["rep_meds"]
                cells.append(f"{r['med'] / 1e3:.1f} | {r['p99'] / 1e3:.1f} | "
                             f"{min(rm) / 1e3:.1f}-{max(rm) / 1e3:.1f}")
            out(f"| {vname(v)} | " + " | ".join(cells) + " |")
        for m in free_modes:
            errors(m)
        out("\nUnpinned, a sample is fast (4-5 µs) when the kernel wakes the loop thread on the "
            "sender's CPU (the spinning sender is preempted) and slow (20-40 µs) when it wakes it "
            "on the other vCPU, halted while idle: the mix follows the machine's other load, "
            "hence the spread of the per-run medians.\n")
    if any("-lat" in m for m in modes):
        out(f"Latency: {opt.samples:,} samples per run x {npass} runs, pooled; before each "
            f"sample the sender spins {opt.gap_us} µs so that the loop is asleep in its wait; a "
            "sample is CLOCK_MONOTONIC in the loop's callback minus CLOCK_MONOTONIC just before "
            "the call. The sender blocks SIGUSR1: the kernel delivers the signal to the loop "
            "thread. Pinned (--cpus hot): the loop thread on one CPU with a SCHED_IDLE spinner "
            "beside it (its vCPU never halts), the sender on the other; throughput runs too. "
            "x peer = ratio of the medians (or of the p99s); < 1: faster than the peer. "
            "syscalls/sample: both threads, from strace -f -c (600 samples minus 100, 1 ms apart), "
            "with the "
            "sender's own call (write, kill, ...) included. loop Ir/sample: callgrind, "
            "user-space instructions of the loop thread per sample (600 samples minus 100): "
            "from the wait's return through the library's handling and the callback back "
            "into the wait (pollux's wake-up: one px_loop_run(PX_RUN_ONCE) call per wake-up); "
            "libuv's is inflated by its busy-wait for the sender (uv__async_spin), which "
            "valgrind's one-thread-at-a-time scheduling stretches.")
    out(f"\n{opt.reps} repetitions x {opt.lat_runs} runs per cell, interleaved (every variant "
        f"once per pass, rotating order); command: `{opt.command}`.")
    text = "\n".join(L)
    print(text, flush=True)
    if opt.md:
        with open(opt.md, "w") as f:
            f.write(text + "\n")
    if opt.json:
        ser = {m: {vname(v): r for v, r in d.items()} for m, d in res.items()}
        with open(opt.json, "w") as f:
            json.dump(ser, f, indent=1, default=str)
    print(f"[{time.time() - started:5.1f}s] done", file=sys.stderr)


if __name__ == "__main__":
    main()
