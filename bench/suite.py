#!/usr/bin/env python3
"""pollux benchmark suite driver (called by bench/run; see bench/README.md).

Runs bench/dispatch once per variant and repetition, interleaving the
variants (A B C ... A B C ...), then prints one table per benchmark with the
median wall time, its min-max spread, ratios against the hand-written epoll
loop and against libev, callgrind instructions per event, strace syscalls
per event and epoll_ctl calls, and finally the pollux targets of issue 6.
"""
import argparse
import concurrent.futures as cf
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = [
    ("pollux", "epoll"), ("pollux", "poll"), ("pollux", "select"),
    ("libevent", "epoll"), ("libevent", "poll"), ("libevent", "select"),
    ("libev", "epoll"), ("libev", "poll"), ("libev", "select"),
    ("libuv", "epoll"),
    ("epoll", "epoll"), ("poll", "poll"), ("select", "select"),
]


def vname(v):
    lib, be = v
    return f"hand/{be}" if lib in ("epoll", "poll", "select") else f"{lib}/{be}"


def parse_kv(line):
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            try:
                out[k] = float(v) if re.match(r"^-?[0-9.]+$", v) else v
            except ValueError:
                out[k] = v
    return out


class Bench:
    """One benchmark table: a workload configuration run for every variant."""

    def __init__(self, key, title, n, a, w, churn="none", per="event"):
        self.key, self.title = key, title
        self.n, self.a, self.w, self.churn, self.per = n, a, w, churn, per

    def args(self, v, rounds, measure=None):
        lib, be = v
        out = ["--lib", lib, "--backend", be, "--n", str(self.n), "--a", str(self.a),
               "--w", str(self.w), "--rounds", str(rounds), "--churn", self.churn]
        if measure:
            out += ["--measure", measure]
        return out

    def supported(self, v):
        # Debian's libevent is built with _FORTIFY_SOURCE: its select backend
        # aborts on FD_SET of an fd >= FD_SETSIZE (1024).  Watched fds are
        # 3 .. n+2 (+ a few of the library's own).
        if v == ("libevent", "select") and self.n + 16 >= 1024:
            return "n/a: fd >= FD_SETSIZE aborts (fortified libevent)"
        return None


def run_cmd(cmd, timeout=600):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        err = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
        raise RuntimeError(err[:120])
    lines = [l for l in p.stdout.splitlines() if l.startswith("lib=")]
    if not lines:
        raise RuntimeError("no result line")
    return parse_kv(lines[-1])


def callgrind(binary, b, v, rounds, tmp):
    measure = "churn" if b.churn == "round" else "dispatch"
    fd, out = tempfile.mkstemp(prefix="cg.", dir=tmp)
    os.close(fd)
    r = run_cmd(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                 f"--callgrind-out-file={out}", binary] + b.args(v, rounds, measure))
    total = None
    with open(out) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                total = int(line.split()[1])
    os.unlink(out)
    denom = r["churned"] if b.churn == "round" else r["events"]
    return total / denom


def strace(binary, b, v, rounds, tmp):
    fd, out = tempfile.mkstemp(prefix="st.", dir=tmp)
    os.close(fd)
    r = run_cmd(["strace", "-f", "-qq", "-o", out, binary] + b.args(v, rounds))
    phase = "CHURN" if b.churn == "round" else "DISPATCH"
    on, counts = False, {}
    with open(out, errors="replace") as f:
        for line in f:
            if f"PXB_{phase}_START" in line:
                on = True
                continue
            if f"PXB_{phase}_STOP" in line:
                on = False
                continue
            if on:
                m = re.match(r"^(?:\[pid\s+)?\d+\]?\s+([a-z0-9_]+)\(", line)
                if m:
                    counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    os.unlink(out)
    denom = r["churned"] if b.churn == "round" else r["events"]
    return {"sys": sum(counts.values()) / denom,
            "epoll_ctl": counts.get("epoll_ctl", 0) / denom,
            "detail": {k: round(c / denom, 3) for k, c in sorted(counts.items())}}


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.{nd}f}"


def ratio(x, ref):
    if x is None or ref in (None, 0):
        return "-"
    return f"{x / ref:.2f}x"


def libev_ref(v):
    be = v[1]
    return ("libev", be)


def print_table(b, res, out):
    unit = "fd" if b.churn == "round" else "event"
    hdr = (f"{'variant':<16} {'ns/'+unit:>9} {'spread(min-max)':>17} {'vs epoll':>8} "
           f"{'vs libev':>8} | {'Ir/'+unit:>8} {'vs epoll':>8} {'vs libev':>8} | "
           f"{'sys/'+unit:>8} {'epoll_ctl':>9}")
    out(f"\n== {b.title} ==")
    out(hdr)
    out("-" * len(hdr))
    ref_w = res.get(("epoll", "epoll"), {}).get("wall")
    ref_i = res.get(("epoll", "epoll"), {}).get("ir")
    for v in VARIANTS:
        r = res.get(v)
        if r is None:
            continue
        if r.get("skip"):
            out(f"{vname(v):<16} {r['skip']}")
            continue
        lr = res.get(libev_ref(v), {})
        walls = r.get("walls") or []
        spread = f"{min(walls):.0f}-{max(walls):.0f}" if walls else "-"
        st = r.get("strace") or {}
        out(f"{vname(v):<16} {fmt(r.get('wall'), 0):>9} {spread:>17} "
            f"{ratio(r.get('wall'), ref_w):>8} {ratio(r.get('wall'), lr.get('wall')):>8} | "
            f"{fmt(r.get('ir')):>8} {ratio(r.get('ir'), ref_i):>8} "
            f"{ratio(r.get('ir'), lr.get('ir')):>8} | "
            f"{fmt(st.get('sys'), 2):>8} {fmt(st.get('epoll_ctl'), 2):>9}")
    errs = [(vname(v), r["error"]) for v, r in res.items() if r.get("error")]
    for name, e in errs:
        out(f"  ! {name}: {e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma list of lib/backend variants")
    ap.add_argument("--bench", default="", help="comma list of table keys (d1000,cb1000,...)")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--json", default="")
    opt = ap.parse_args()

    started = time.time()
    have_vg = shutil.which("valgrind") and not opt.no_callgrind
    have_st = shutil.which("strace") and not opt.no_strace
    variants = VARIANTS
    if opt.only:
        want = set(opt.only.split(","))
        variants = [v for v in VARIANTS if vname(v) in want or f"{v[0]}/{v[1]}" in want]

    if opt.quick:
        benches = [
            Bench("d1000", "Dispatch N=1000 A=100 W=100", 1000, 100, 100),
            Bench("cb1000", "Churn in callback (del+add own watcher) N=1000 A=100 W=100",
                  1000, 100, 100, "cb"),
            Bench("idle0", "Idle scaling: 0 idle + 10 busy (W=100)", 10, 10, 100),
            Bench("idle10000", "Idle scaling: 10000 idle + 10 busy (W=100)", 10010, 10, 100),
        ]
        target_events, min_rounds, cg_rounds, st_rounds = 1000, 3, 4, 2
    else:
        benches = [
            Bench("d100", "Dispatch N=100 A=100 W=100", 100, 100, 100),
            Bench("d1000", "Dispatch N=1000 A=100 W=100", 1000, 100, 100),
            Bench("d10000", "Dispatch N=10000 A=100 W=100", 10000, 100, 100),
            Bench("dA1000", "Dispatch N=1000 A=1000 W=100", 1000, 1000, 100),
            Bench("round1000", "Churn per round: del+add all N watchers, then one "
                  "iteration (per watcher) N=1000", 1000, 100, 100, "round"),
            Bench("cb1000", "Churn in callback (del+add own watcher) N=1000 A=100 W=100",
                  1000, 100, 100, "cb"),
            Bench("mod1000", "Churn in callback (disarm+re-arm own watcher with the modify "
                  "call; del+add where none) N=1000 A=100 W=100", 1000, 100, 100, "mod"),
            Bench("idle0", "Idle scaling: 0 idle + 10 busy (W=100)", 10, 10, 100),
            Bench("idle1000", "Idle scaling: 1000 idle + 10 busy (W=100)", 1010, 10, 100),
            Bench("idle10000", "Idle scaling: 10000 idle + 10 busy (W=100)", 10010, 10, 100),
        ]
        target_events, min_rounds, cg_rounds, st_rounds = 8000, 8, 10, 5

    if opt.bench:
        benches = [b for b in benches if b.key in opt.bench.split(",")]
    results = {b.key: {} for b in benches}

    # 1. Wall clock: interleaved repetitions, variant after variant.
    for b in benches:
        rounds = max(min_rounds, target_events // (b.a + b.w))
        if b.churn == "round":
            rounds = max(min_rounds, rounds // 4)
        res = results[b.key]
        for v in variants:
            res[v] = {"walls": []}
            why = b.supported(v)
            if why:
                res[v]["skip"] = why
        for rep in range(opt.reps):
            for v in variants:
                r = res[v]
                if r.get("skip") or r.get("error"):
                    continue
                try:
                    kv = run_cmd([opt.bin] + b.args(v, rounds))
                except Exception as e:  # noqa: BLE001
                    r["error"] = str(e)
                    continue
                r["walls"].append(kv["churn_ns_per_fd"] if b.churn == "round"
                                  else kv["ns_per_event"])
        for v in variants:
            r = res[v]
            if r["walls"]:
                r["wall"] = statistics.median(r["walls"])
        print(f"[{time.time() - started:5.1f}s] timed {b.key}", file=sys.stderr)

    # 2. Deterministic counts: callgrind and strace, two at a time.
    tmp = tempfile.mkdtemp(prefix="pxbench.")
    jobs = {}
    with cf.ThreadPoolExecutor(max_workers=2) as ex:
        for b in benches:
            for v in variants:
                r = results[b.key][v]
                if r.get("skip") or r.get("error"):
                    continue
                if have_vg:
                    jobs[ex.submit(callgrind, opt.bin, b, v, cg_rounds, tmp)] = (b, v, "ir")
                if have_st:
                    jobs[ex.submit(strace, opt.bin, b, v, st_rounds, tmp)] = (b, v, "strace")
        for fut in cf.as_completed(jobs):
            b, v, what = jobs[fut]
            try:
                results[b.key][v][what] = fut.result()
            except Exception as e:  # noqa: BLE001
                results[b.key][v].setdefault("error", f"{what}: {e}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"[{time.time() - started:5.1f}s] callgrind/strace done", file=sys.stderr)

    # 3. Memory: 10,000 registered fds, one run per variant (deterministic).
    mem = {}
    for v in variants:
        why = Bench("mem", "", 10000, 1, 0).supported(v)
        if why:
            mem[v] = {"error": why}
            continue
        try:
            mem[v] = run_cmd([opt.bin, "--mode", "mem", "--lib", v[0], "--backend", v[1],
                              "--n", "10000", "--a", "1"])
        except Exception as e:  # noqa: BLE001
            mem[v] = {"error": str(e)}

    lines = []
    out = lines.append
    out(f"pollux benchmark suite ({'quick' if opt.quick else 'full'}), {opt.reps} interleaved "
        f"repetitions per variant; wall = median ns, spread = min-max of the repetitions;")
    out("'vs epoll' = ratio to the hand-written epoll loop, 'vs libev' = ratio to libev on "
        "the same backend;")
    out("Ir = callgrind user-space instructions of the measured phase only; sys/epoll_ctl = "
        "strace counts inside the phase markers.")
    for b in benches:
        print_table(b, results[b.key], out)

    # Idle-scaling summary.
    idle_keys = [k for k in ("idle0", "idle1000", "idle10000") if k in results]
    if len(idle_keys) >= 2 and idle_keys[0] == "idle0":
        out("\n== Idle scaling summary: per-event cost relative to 0 idle fds ==")
        out(f"{'variant':<16} " + " ".join(f"{'Ir '+k[4:]:>10} {'wall '+k[4:]:>11}"
                                         for k in idle_keys[1:]))
        for v in variants:
            base = results["idle0"].get(v, {})
            cells = []
            for k in idle_keys[1:]:
                r = results[k].get(v, {})
                cells.append(f"{ratio(r.get('ir'), base.get('ir')):>10} "
                             f"{ratio(r.get('wall'), base.get('wall')):>11}")
            out(f"{vname(v):<16} " + " ".join(cells))

    out("\n== Memory: 10,000 registered fds ==")
    hdr = (f"{'variant':<16} {'loop B/fd':>9} {'handle B/fd':>11} {'total B/fd':>10} "
           f"{'peak RSS kB':>11} {'RSS +kB':>8}")
    out(hdr)
    out("-" * len(hdr))
    for v in variants:
        m = mem[v]
        if "error" in m:
            out(f"{vname(v):<16} {m['error']}")
            continue
        out(f"{vname(v):<16} {m['state_bytes_per_fd']:>9.1f} {m['handle_size']:>11.0f} "
            f"{m['bytes_per_fd_incl_handle']:>10.1f} {m['hwm_kb']:>11.0f} "
            f"{m['rss_kb_after'] - m['rss_kb_before']:>8.0f}")
    out("(loop B/fd: malloc'd bytes (mallinfo2) of the loop for 10,000 watchers after one "
        "iteration;\n handle: the per-watcher struct the API makes the user own; peak RSS: "
        "VmHWM of the whole process)")

    out("\n" + targets(results, mem))
    text = "\n".join(lines)
    print(text)
    if opt.json:
        ser = {"results": {k: {vname(v): r for v, r in d.items()} for k, d in results.items()},
               "memory": {vname(v): m for v, m in mem.items()}, "tables": text}
        with open(opt.json, "w") as f:
            json.dump(ser, f, indent=1, default=str)
    print(f"[{time.time() - started:5.1f}s] done", file=sys.stderr)


def targets(results, mem):
    t = ["== pollux targets (issue 6) =="]

    def get(k, v, f):
        r = results.get(k, {}).get(v, {})
        x = r.get(f) if f != "sys" and f != "epoll_ctl" else (r.get("strace") or {}).get(f)
        return x

    def line(ok, text):
        t.append(f"[{'MET' if ok else 'NOT MET' if ok is not None else 'n/a'}] {text}")

    P, H = ("pollux", "epoll"), ("epoll", "epoll")
    for k in [k for k in ("d100", "d1000", "d10000", "dA1000") if k in results]:
        ir = get(k, P, "ir")
        if ir is not None:
            line(ir <= 60, f"{k}: epoll Ir/event {ir:.1f} <= 60 ({ir / 60:.2f}x the target; "
                 f"hand-written {fmt(get(k, H, 'ir'))})")
        s, hs = get(k, P, "sys"), get(k, H, "sys")
        if s is not None and hs is not None:
            line(s <= hs + 1e-9, f"{k}: epoll syscalls/event {s:.3f} <= hand-written {hs:.3f} "
                 f"({s / hs:.2f}x)")
        w, hw = get(k, P, "wall"), get(k, H, "wall")
        if w and hw:
            line(w <= 1.05 * hw, f"{k}: epoll wall {w:.0f} ns <= 1.05x hand-written {hw:.0f} "
                 f"({w / hw:.2f}x; wall is noisy here)")
        for be in ("poll", "select"):
            ir, hir = get(k, ("pollux", be), "ir"), get(k, (be, be), "ir")
            if ir is None or hir is None:
                continue
            ev_ir, le_ir = get(k, ("libev", be), "ir"), get(k, ("libevent", be), "ir")
            peers = [x for x in (ev_ir, le_ir) if x is not None]
            ok = ir <= 1.25 * hir and all(ir < x for x in peers)
            line(ok, f"{k}: {be} Ir/event {ir:.1f} <= 1.25x hand-written {hir:.1f} "
                 f"({ir / hir:.2f}x) and < libev {fmt(ev_ir)} / libevent {fmt(le_ir)}")
    for k, what in (("cb1000", "del+add in a callback"), ("mod1000", "mod(0)+mod(READ) in a callback"),
                    ("round1000", "del+add of every watcher between iterations")):
        c = get(k, P, "epoll_ctl")
        if c is not None:
            line(c <= 1e-9, f"{k}: {what}, kernel view unchanged: {c:.2f} epoll_ctl per "
                 f"watcher (target 0, at most 1)")
    i0, i10 = get("idle0", P, "ir"), get("idle10000", P, "ir")
    if i0 and i10:
        w0, w10 = get("idle0", P, "wall"), get("idle10000", P, "wall")
        line(i10 <= 1.10 * i0, f"idle epoll: Ir/event with 10,000 idle {i10:.1f} vs none {i0:.1f} "
             f"({i10 / i0:.2f}x <= 1.10x; wall {ratio(w10, w0)})")
    for be in ("epoll", "poll", "select"):
        m = mem.get(("pollux", be), {})
        if "state_bytes_per_fd" in m:
            b = m["state_bytes_per_fd"]
            line(b <= 32, f"memory {be}: {b:.1f} bytes of loop state per fd <= 32 ({b / 32:.2f}x)")
    return "\n".join(t)


if __name__ == "__main__":
    main()
