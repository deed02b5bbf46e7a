#!/usr/bin/env python3
"""Runs the C workloads in benches/preload/ under glibc, jemalloc, mimalloc, tcmalloc and
ours (LD_PRELOAD) and prints the ratio table.

Each workload is built with `gcc -O2 -pthread` into target/preload-bench; our library is
built with `cargo build --profile preload -p stratalloc-malloc` (release with fat LTO, one
codegen unit and panic = "abort", no_std: as the README says) into target/preload, the
build the LD_PRELOAD tests use. jemalloc, mimalloc and tcmalloc are Debian's packages
(libjemalloc2, libmimalloc2.0, libtcmalloc-minimal4): run as root, the script installs
them with apt-get when they are missing; otherwise it says how and leaves them out.

The allocators take turns run by run (the order rotates each round), every workload N
times each; the table shows the median wall time and the median peak RSS (the child's
ru_maxrss, from os.wait4), each also as a ratio to glibc, and the median CPU time (user +
sys), which moves less than wall time when other work shares the machine. (Each run is
started through /bin/sh so that ru_maxrss is the workload's own: see LAUNCH.) Every run's
exit status and stdout (each workload prints a checksum) must match glibc's run, or the
script stops. The plot (benches/preload.png, grouped bars of the time and RSS ratios per
workload) needs matplotlib (`pip install matplotlib`); without it the script says so.

Usage: python3 benches/preload.py [--runs N] [--lib PATH] [--only NAME[,NAME..]]
                                  [--plot PATH | --no-plot]
  --lib PATH  measure this .so in our slot instead of building ours (e.g. mimalloc's, to
              check the script before ours exists); the table names it by file name.
"""
import argparse
import ctypes
import glob
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ROOT / "benches" / "preload"
BUILD = ROOT / "target" / "preload-bench"
LIB_TARGET = ROOT / "target" / "preload"
OURS = LIB_TARGET / "preload" / "libstratalloc.so"
# The workloads: name -> (the C source in benches/preload/, its arguments). The second
# realloc workload runs twice as many appends, so that the long strings (one in 16) grow
# past 1 KiB into tens of KiB: the growth of large blocks, where the first stays small.
WORKLOADS = {
    "small_objects": ("small_objects", []),
    "producer_consumer": ("producer_consumer", []),
    "growing_heap": ("growing_heap", []),
    "realloc_strings": ("realloc_strings", []),
    "realloc_documents": ("realloc_strings", ["6000000"]),
    "large_blocks": ("large_blocks", []),
    # The kinds where we lost to the others on a suite nobody here wrote (issue 21):
    # threads freeing each other's blocks (Larson's server simulation), random sizes up to
    # 32 KiB on one thread and on two, and blocks of 5-25 MiB written whole.
    "larson": ("larson", []),
    "random_sizes": ("random_sizes", []),
    "random_sizes_2threads": ("random_sizes", ["2"]),
    "huge_blocks": ("huge_blocks", []),
    # Messages of 16 B-16 KiB passed from one thread to another (rpmalloc's style): every
    # block freed by the other thread, most of them past 1 KiB.
    "producer_consumer_16k": ("producer_consumer", ["3000000", "16384"]),
}
# Debian's packages, and the file each ships (under /usr/lib/<multiarch>/).
PEERS = [("jemalloc", "libjemalloc2", "libjemalloc.so.2"),
         ("mimalloc", "libmimalloc2.0", "libmimalloc.so.2"),
         ("tcmalloc", "libtcmalloc-minimal4", "libtcmalloc_minimal.so.4")]


def find_peer(soname):
    hits = sorted(glob.glob(f"/usr/lib/*/{soname}") + glob.glob(f"/usr/lib/{soname}"))
    return hits[0] if hits else None


def peers():
    """(name, .so path) for each peer found, installing the missing ones when root."""
    missing = [(name, pkg, so) for name, pkg, so in PEERS if not find_peer(so)]
    if missing:
        pkgs = " ".join(pkg for _, pkg, _ in missing)
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print(f"installing {pkgs} with apt-get", file=sys.stderr)
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs.split()], check=True)
        else:
            print(f"not found: {pkgs}; install them with "
                  f"`sudo apt-get install {pkgs}` to compare with them", file=sys.stderr)
    found = []
    for name, _, so in PEERS:
        path = find_peer(so)
        if path:
            found.append((name, path))
    return found


def build_workloads(names):
    BUILD.mkdir(parents=True, exist_ok=True)
    for source in sorted({WORKLOADS[name][0] for name in names}):
        subprocess.run(["gcc", "-O2", "-pthread", "-Wall", "-o", str(BUILD / source),
                        str(SOURCES / f"{source}.c")], check=True)


def build_ours():
    env = dict(os.environ, CARGO_TARGET_DIR=str(LIB_TARGET))
    env.pop("LD_PRELOAD", None)
    result = subprocess.run(
        ["cargo", "build", "--profile", "preload", "-p", "stratalloc-malloc"],
        cwd=ROOT, env=env)
    if result.returncode != 0 or not OURS.is_file():
        sys.exit("building libstratalloc.so failed; `--lib PATH` measures another "
                 ".so in its slot")
    return str(OURS)


# Linux carries a process's peak RSS across fork and exec into ru_maxrss, so a workload
# forked from this Python process would report at least Python's own ~15 MiB. Each run is
# therefore started by a /bin/sh (about 1 MiB) that forks it in the background and exits at
# once; as a child subreaper this process inherits the orphan and reaps it with os.wait4,
# whose ru_maxrss is then the workload's own.
LAUNCH = 'LD_PRELOAD="$1" "$0" $3 >"$2" & echo $!'


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")


def run_once(workload, lib):
    """(wall seconds, cpu seconds, peak RSS in KiB, exit code, stdout) of one run."""
    source, arguments = WORKLOADS[workload]
    program = str(BUILD / source)
    env = dict(os.environ)
    env.pop("STRATALLOC_SUMMARY", None)
    env.pop("LD_PRELOAD", None)
    out_file = str(BUILD / f"{workload}.out")
    start = time.perf_counter()
    launcher = subprocess.Popen(["/bin/sh", "-c", LAUNCH, program, lib or "", out_file,
                                 " ".join(arguments)],
                                env=env, stdout=subprocess.PIPE)
    pid = int(launcher.stdout.read())
    launcher.wait()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    out = pathlib.Path(out_file).read_bytes()
    return (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
            os.waitstatus_to_exitcode(status), out)


def fmt_time(s):
    return f"{s * 1e3:.0f} ms" if s < 10 else f"{s:.1f} s"


def fmt_rss(kib):
    return f"{kib / 1024:.1f} MiB"


def plot(path, workloads, allocators, time_ratio, rss_ratio):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is missing (`pip install matplotlib`): no plot at {path}",
              file=sys.stderr)
        return
    others = allocators[1:]  # glibc is the 1.0 line
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    width = 0.8 / len(others)
    for ax, ratios, title in ((axes[0], time_ratio, "wall time / glibc (median)"),
                              (axes[1], rss_ratio, "peak RSS / glibc (median)")):
        for i, name in enumerate(others):
            xs = [w + (i - (len(others) - 1) / 2) * width for w in range(len(workloads))]
            ax.bar(xs, [ratios[(wl, name)] for wl in workloads], width, label=name)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(title)
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels(workloads, rotation=20, ha="right")
        ax.set_ylabel("ratio (lower is better)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lib", help="a .so to measure in our slot instead of ours")
    parser.add_argument("--only", help="comma-separated workloads to run")
    parser.add_argument("--plot", default=str(ROOT / "benches" / "preload.png"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    workloads = args.only.split(",") if args.only else list(WORKLOADS)
    for name in workloads:
        if name not in WORKLOADS:
            sys.exit(f"unknown workload {name}; the workloads: {', '.join(WORKLOADS)}")

    build_workloads(workloads)
    become_subreaper()
    ours_name = "stratalloc"
    if args.lib:
        ours_lib = os.path.abspath(args.lib)
        if not os.path.isfile(ours_lib):
            sys.exit(f"--lib {args.lib}: no such file")
        ours_name = f"{os.path.basename(ours_lib)} (--lib)"
    else:
        ours_lib = build_ours()
    allocators = [("glibc", None), *peers(), (ours_name, ours_lib)]
    names = [name for name, _ in allocators]

    load_before = os.getloadavg()
    samples = {}  # (workload, allocator) -> [(wall, cpu, rss)]
    expected = {}  # workload -> (status, stdout) of glibc's first run
    for r in range(args.runs):
        for wl in workloads:
            # rotate who goes first, so no allocator always runs after the same one
            turn = allocators[r % len(allocators):] + allocators[:r % len(allocators)]
            for name, lib in turn:
                wall, cpu, rss, status, out = run_once(wl, lib)
                if status != 0:
                    sys.exit(f"{wl} under {name}: exit code {status}")
                if name == "glibc":
                    expected.setdefault(wl, out)
                samples.setdefault((wl, name), []).append((wall, cpu, rss, out))
        print(f"round {r + 1}/{args.runs} done", file=sys.stderr)
    for (wl, name), runs in samples.items():
        for *_, out in runs:
            if out != expected[wl]:
                sys.exit(f"{wl} under {name} printed {out!r}, glibc {expected[wl]!r}")
    load_after = os.getloadavg()

    med = {key: (statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs),
                 statistics.median(s[2] for s in runs)) for key, runs in samples.items()}
    time_ratio = {k: v[0] / med[(k[0], "glibc")][0] for k, v in med.items()}
    rss_ratio = {k: v[2] / med[(k[0], "glibc")][2] for k, v in med.items()}

    print(f"{args.runs} runs each, allocators alternating; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print()
    print("| workload | allocator | wall (median) | wall / glibc | cpu (median) "
          "| peak RSS (median) | RSS / glibc |")
    print("|---|---|---|---|---|---|---|")
    for wl in workloads:
        for name in names:
            wall, cpu, rss = med[(wl, name)]
            print(f"| {wl} | {name} | {fmt_time(wall)} | {time_ratio[(wl, name)]:.2f}x "
                  f"| {fmt_time(cpu)} | {fmt_rss(rss)} | {rss_ratio[(wl, name)]:.2f}x |")
    print()
    print("| allocator | geometric mean wall / glibc | geometric mean RSS / glibc |")
    print("|---|---|---|")
    for name in names:
        t = statistics.geometric_mean(time_ratio[(wl, name)] for wl in workloads)
        m = statistics.geometric_mean(rss_ratio[(wl, name)] for wl in workloads)
        print(f"| {name} | {t:.2f}x | {m:.2f}x |")
    print()
    if not args.no_plot:
        plot(args.plot, workloads, names, time_ratio, rss_ratio)


if __name__ == "__main__":
    main()
