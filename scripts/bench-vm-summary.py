#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Summarises the VM part of `make bench`: tables in Markdown on stdout, and the numbers that
compare the guest channels in OUT/vm-channels.json. Usage:

    bench-vm-summary.py OUT [KEY=VALUE ...]

OUT holds vm-oneshot.json, vm-resume.json and vm-resume-at-once.json (interleave.py) and
vm-first.json (hyperfine).
The KEY=VALUE words are what bench.sh counted: execs of a one-shot launch (`restored`,
`console`, `vsock`, `ports`, `first`), a warm call's cost (`resume_vsock`,
`resume_ports`: EXECS/CONNECTS/FLOCKS/SYSCALLS) and a running resume VM's processes
(`vm_vsock`, `vm_ports`: PROCESSES/RSS_KIB).

The interleaved commands ran one after the other in every round, so besides the ratio of
medians the median of each round's own ratio is given: it sees less of the machine's drift.
"""
import json
import statistics
import sys


def kind(command: str) -> str:
    """The key of a one-shot row, as bench.sh names its rows."""
    for word, key in (("raw", "raw"), ("first", "first"), ("over the console", "console"),
                      ("over vsock", "vsock"), ("over ports", "ports")):
        if word in command:
            return key
    return "restored"


def channel(command: str) -> str:
    """The channel of a warm-call row, and whether its calls ran at once."""
    name = "vsock" if "over vsock" in command else "ports"
    return f"{name}, at once" if "at once" in command else name


def compare(rows: dict, one: str, other: str) -> dict | None:
    """Ratio of row `one` to row `other`: of their medians, and the median per round."""
    if one not in rows or other not in rows:
        return None
    a, b = rows[one], rows[other]
    return {"median_ratio": a["median"] / b["median"],
            "per_round_ratio": statistics.median(x / y for x, y in zip(a["times"], b["times"])),
            "per_round_difference_ms":
                statistics.median(x - y for x, y in zip(a["times"], b["times"])) * 1000,
            "rounds": len(a["times"])}


def oneshot_table(oneshot: list, raw: dict, costs: dict) -> None:
    print()
    print("| VM launch | median | ratio to raw VMM | execs |")
    print("|---|---:|---:|---:|")
    for r in oneshot:
        execs = costs.get(kind(r["command"]), "1")
        print(f"| {r['command']} | {r['median']*1000:.0f} ms | "
              f"{r['median']/raw['median']:.3f} | {execs} |")


def resume_table(resume: list, costs: dict) -> None:
    print()
    print("| VM call | median | execs | connect() | flock() | syscalls "
          "| processes per VM | VM memory (RSS) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in resume:
        key = channel(r["command"])
        call = costs.get(f"resume_{key}", "-/-/-/-").split("/")
        vm = costs.get(f"vm_{key}", "-/-").split("/")
        rss = f"{int(vm[1]) / 1024:.0f} MiB" if vm[1].isdigit() else "-"
        print(f"| {r['command']} | {r['median']*1000:.1f} ms | {' | '.join(call)} "
              f"| {vm[0]} | {rss} |")


def show(name: str, ratio: dict | None) -> None:
    if ratio is None:
        print(f"{name}: not measured (no vsock device).")
    else:
        print(f"{name}: {ratio['median_ratio']:.3f} (per round: median ratio "
              f"{ratio['per_round_ratio']:.3f}, median difference "
              f"{ratio['per_round_difference_ms']:.1f} ms, {ratio['rounds']} rounds).")


def main() -> int:
    out = sys.argv[1]
    costs = dict(arg.split("=", 1) for arg in sys.argv[2:])
    oneshot = json.load(open(f"{out}/vm-oneshot.json"))["results"]
    oneshot += json.load(open(f"{out}/vm-first.json"))["results"]
    resume = json.load(open(f"{out}/vm-resume.json"))["results"]
    resume += json.load(open(f"{out}/vm-resume-at-once.json"))["results"]
    by_kind = {kind(r["command"]): r for r in oneshot}
    by_channel = {channel(r["command"]): r for r in resume}
    raw = by_kind["raw"]
    oneshot_table(oneshot, raw, costs)
    resume_table(resume, costs)
    ratios = {
        "warm resume call, vsock/ports": compare(by_channel, "vsock", "ports"),
        "warm resume calls at once, vsock/ports":
            compare(by_channel, "vsock, at once", "ports, at once"),
        "booted one-shot, vsock/ports": compare(by_kind, "vsock", "ports"),
        "booted one-shot, console/ports": compare(by_kind, "console", "ports"),
        "booted one-shot, vsock/console": compare(by_kind, "vsock", "console"),
    }
    print()
    for name, ratio in ratios.items():
        show(f"Ratio {name}", ratio)
    for key in ("restored", "console", "vsock", "ports"):
        if key in by_kind:
            show(f"Ratio {by_kind[key]['command']} to the raw VMM",
                 compare(by_kind, key, "raw"))
    summary = {
        "oneshot_median_s": {r["command"]: r["median"] for r in oneshot},
        "resume_median_s": {r["command"]: r["median"] for r in resume},
        "ratios": ratios,
        "costs": costs,
    }
    with open(f"{out}/vm-channels.json", "w") as f:
        json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
