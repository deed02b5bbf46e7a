#!/usr/bin/env python3
"""Runs the allocator benches back to back and prints the ratio table.

The peers that must be the global allocator live in bench binaries of their own
(`router`, `system_global`, `mimalloc_global`, `freelist_global`, `dhat_global`); this
script runs each, reads criterion's medians from its output directory (`$CRITERION_HOME`, else
`$CARGO_TARGET_DIR/criterion`, else target/criterion, as criterion chooses), and prints them
with the ratios and targets the README quotes. Rows whose target reads "(reference)" are
there to read the others by.

Usage: python3 benches/compare.py [--no-run]   (--no-run: only read the last results)
"""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if os.environ.get("CRITERION_HOME"):
    CRITERION = pathlib.Path(os.environ["CRITERION_HOME"])
elif os.environ.get("CARGO_TARGET_DIR"):
    CRITERION = ROOT / os.environ["CARGO_TARGET_DIR"] / "criterion"
else:
    CRITERION = ROOT / "target" / "criterion"
BENCHES = ["system_global", "mimalloc_global", "freelist_global", "dhat_global", "router"]


def median_ns(group, name):
    path = CRITERION / group / name / "new" / "estimates.json"
    try:
        return json.loads(path.read_text())["median"]["point_estimate"]
    except FileNotFoundError:
        return None


def fmt(ns):
    if ns is None:
        return "n/a"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.2f} ns"


def ratio(a, b):
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def main():
    if "--no-run" not in sys.argv:
        for bench in BENCHES:
            subprocess.run(
                ["cargo", "bench", "--bench", bench, "--", "--noplot"],
                cwd=ROOT,
                check=True,
            )
    trees = "binary_trees_18"
    system = median_ns(trees, "system_box")
    mimalloc = median_ns(trees, "mimalloc_box")
    passthrough = median_ns(trees, "router_no_region")
    region = median_ns(trees, "region_per_tree")
    bump = median_ns(trees, "bumpalo_per_tree")
    bump_box = median_ns(trees, "bumpalo_box_per_tree")
    free_list = median_ns(trees, "free_list_box")
    churn_system = median_ns("churn", "system")
    churn_router = median_ns("churn", "router_no_region")
    churn_mimalloc = median_ns("churn", "mimalloc")
    requests = "request_loop"
    request_system = median_ns(requests, "system")
    request_mimalloc = median_ns(requests, "mimalloc")
    request_router = median_ns(requests, "router_no_region")
    request_region = median_ns(requests, "region_per_request")
    request_reset = median_ns(requests, "region_reset_per_request")
    request_bump = median_ns(requests, "bumpalo_reset_per_request")
    profile_plain = median_ns("profile_churn", "router_no_region")
    profile_ours = median_ns("profile_churn", "region_profile")
    profile_dhat = median_ns("profile_churn", "dhat")
    lookup_system = median_ns("free_lookup", "system_block")
    lookup_region = median_ns("free_lookup", "region_block")

    reference = "(reference)"
    rows = [
        ("binary trees 18, Router with no region vs system Box", passthrough, system,
         "≤ 1.05x"),
        ("churn 100k allocations, Router with no region vs system", churn_router,
         churn_system, "≤ 1.05x"),
        ("binary trees 18, region per tree vs mimalloc Box", region, mimalloc, "< 1x"),
        ("binary trees 18, region per tree vs bumpalo Box tree per arena, dropped node by node",
         region, bump_box, "≤ 1.1x"),
        ("binary trees 18, region per tree vs a bare free list Box", region, free_list,
         "≤ 1.0x"),
        ("binary trees 18, region per tree vs system Box", region, system, reference),
        ("binary trees 18, region per tree vs bumpalo arena per tree, never dropped", region,
         bump, reference),
        ("binary trees 18, bare free list Box vs bumpalo, never dropped", free_list, bump,
         reference),
        ("binary trees 18, bumpalo Box tree vs bumpalo tree never dropped", bump_box, bump,
         reference),
        ("binary trees 18, bumpalo arena per tree vs system Box", bump, system, reference),
        ("churn 100k allocations, mimalloc vs system", churn_mimalloc, churn_system,
         reference),
        ("request loop, region per request vs mimalloc", request_region, request_mimalloc,
         "< 1x"),
        ("request loop, region per request vs bumpalo Bump reset per request", request_region,
         request_bump, "≤ 1.15x"),
        ("request loop, one region reset per request vs mimalloc", request_reset,
         request_mimalloc, "< 1x"),
        ("request loop, one region reset per request vs bumpalo Bump reset per request",
         request_reset, request_bump, "≤ 1.15x"),
        ("request loop, region per request vs Router with no region", request_region,
         request_router, reference),
        ("request loop, region per request vs system", request_region, request_system,
         reference),
        ("request loop, Router with no region vs system", request_router, request_system,
         reference),
        ("request loop, mimalloc vs system", request_mimalloc, request_system, reference),
        ("request loop, bumpalo Bump reset per request vs system", request_bump,
         request_system, reference),
        ("churn 1M allocations, region::profile vs dhat profiling it", profile_ours,
         profile_dhat, "< 1x"),
        ("churn 1M allocations, region::profile vs Router with no region (system)",
         profile_ours, profile_plain, reference),
    ]
    print("| comparison | stratalloc | peer | time ratio | target |")
    print("|---|---|---|---|---|")
    for label, ours, peer, target in rows:
        print(f"| {label} | {fmt(ours)} | {fmt(peer)} | {ratio(ours, peer)} | {target} |")
    print()
    print(f"free ownership look-up: system block {fmt(lookup_system)}, "
          f"region block {fmt(lookup_region)}")


if __name__ == "__main__":
    main()
