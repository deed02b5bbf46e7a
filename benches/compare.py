#!/usr/bin/env python3
"""Runs the allocator benches back to back and prints the ratio table.

The peers that must be the global allocator live in bench binaries of their own
(`router`, `system_global`, `mimalloc_global`, `freelist_global`); this script runs each, reads criterion's
medians from target/criterion, and prints them with the ratios the README quotes.

Usage: python3 benches/compare.py [--no-run]   (--no-run: only read the last results)
"""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRITERION = ROOT / "target" / "criterion"
BENCHES = ["system_global", "mimalloc_global", "freelist_global", "router"]


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
    free_list = median_ns(trees, "free_list_box")
    churn_system = median_ns("churn", "system")
    churn_router = median_ns("churn", "router_no_region")
    churn_mimalloc = median_ns("churn", "mimalloc")
    lookup_system = median_ns("free_lookup", "system_block")
    lookup_region = median_ns("free_lookup", "region_block")

    rows = [
        ("binary trees 18, Router with no region vs system Box", passthrough, system,
         ratio(passthrough, system)),
        ("churn 100k allocations, Router with no region vs system", churn_router,
         churn_system, ratio(churn_router, churn_system)),
        ("binary trees 18, region per tree vs system Box", region, system,
         ratio(region, system)),
        ("binary trees 18, region per tree vs mimalloc Box", region, mimalloc,
         ratio(region, mimalloc)),
        ("binary trees 18, region per tree vs bumpalo arena per tree", region, bump,
         ratio(region, bump)),
        ("binary trees 18, region per tree vs a bare free list Box", region, free_list,
         ratio(region, free_list)),
        ("binary trees 18, bare free list Box vs bumpalo (reference)", free_list, bump,
         ratio(free_list, bump)),
        ("binary trees 18, bumpalo arena per tree vs system Box (reference)", bump, system,
         ratio(bump, system)),
        ("churn 100k allocations, mimalloc vs system (reference)", churn_mimalloc,
         churn_system, ratio(churn_mimalloc, churn_system)),
    ]
    print("| comparison | stratalloc | peer | time ratio |")
    print("|---|---|---|---|")
    for label, ours, peer, r in rows:
        print(f"| {label} | {fmt(ours)} | {fmt(peer)} | {r} |")
    print()
    print(f"free ownership look-up: system block {fmt(lookup_system)}, "
          f"region block {fmt(lookup_region)}")


if __name__ == "__main__":
    main()
