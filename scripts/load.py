#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Load driver for flake-pilot's launchers (run by scripts/load.sh, or `make load`).

Every scenario checks each call's output and exit status, times every call (p50/p99 and
throughput), and counts what the launchers leave behind before and after: containers by
the flake label, host processes of the work directory, sockets, lock files and instance
directories in the state directories, and the descriptors the resume instance's agent
holds. A scenario with a wrong output or a leak fails the run.

Counts come from the environment (LOAD_* variables, see load.sh); the figures are written
as a Markdown report to the path given as the first argument.
"""

from concurrent.futures import ThreadPoolExecutor
import json
import os
import statistics
import subprocess
import sys
import time

WORK = os.environ["LOAD_WORK"]
BIN = os.environ["LOAD_BIN"]
IMAGE = "localhost/busybox:latest"
ENV = dict(os.environ, FLAKES_CONFIG=f"{WORK}/flakes.yml", HOME=f"{WORK}/home")
ENV.pop("FLAKE_LOG_LEVEL", None)
ENV.pop("PILOT_DEBUG", None)
TAG = os.environ.get("LOAD_TAG", f"ld{os.getpid()}")


def n(name, default):
    return int(os.environ.get(f"LOAD_{name}", default))


def ctl(*args):
    subprocess.run([f"{BIN}/flake-ctl", *args], env=ENV, check=True,
                   stdout=subprocess.DEVNULL)


def call(app, *args):
    """One launch: (seconds, exit code, stdout, stderr)."""
    started = time.monotonic()
    done = subprocess.run([app, *args], env=ENV, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=600)
    return (time.monotonic() - started, done.returncode,
            done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def checked(results, want):
    """Raises unless every result has exit 0, the wanted output and no stderr."""
    for i, (_, code, out, err) in enumerate(results):
        expect = want(i)
        if code != 0 or out != expect or err:
            raise SystemExit(f"call {i}: exit {code}, stdout {out!r} (want {expect!r}), "
                             f"stderr {err!r}")


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def figures(name, results, wall):
    times = [r[0] for r in results]
    return {
        "scenario": name,
        "calls": len(results),
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": percentile(times, 99) * 1000,
        "max_ms": max(times) * 1000,
        "per_s": len(results) / wall,
    }


def concurrent(name, jobs, want):
    """Runs `jobs` (lists of argv) all at once."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda job: call(*job), jobs))
    wall = time.monotonic() - started
    checked(results, want)
    return figures(name, results, wall)


def sequential(name, jobs, want):
    started = time.monotonic()
    results = [call(*job) for job in jobs]
    wall = time.monotonic() - started
    checked(results, want)
    return figures(name, results, wall)


# ----- what is left behind -----

def containers(names):
    total = 0
    for name in names:
        out = subprocess.run(
            ["podman", "ps", "-a", "-q", "--filter", f"label=io.flake-pilot.flake={name}"],
            capture_output=True, text=True, check=True).stdout
        total += len(out.split())
    return total


def processes():
    """Host processes whose command line names the work directory (launchers, VMMs) or a
    flake of this run (podman's conmon of each container), other than this driver's own."""
    mine = {os.getpid(), os.getppid()}
    needles = (WORK.encode(), f"flake-{TAG}-".encode())
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in mine:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if any(needle in cmdline for needle in needles):
            count += 1
    return count


def is_port_lock(name):
    """A VM's `port-N.lock`: one per guest channel port, kept for the VM's life."""
    return name.startswith("port-") and name.endswith(".lock") and name[5:-5].isdigit()


def state_files(root):
    """(sockets, lock files, instance directories, port locks) below the state directory
    `root`."""
    sockets = locks = dirs = ports = 0
    for top, subdirs, files in os.walk(root):
        depth = top[len(root):].count("/")
        for f in files:
            path = os.path.join(top, f)
            if os.path.islink(path):
                continue
            mode = os.lstat(path).st_mode
            if (mode & 0o170000) == 0o140000:
                sockets += 1
            elif is_port_lock(f):
                ports += 1
            elif f == "lock" or f.endswith(".lock"):
                locks += 1
        # <ids>/<uid>/<instance>/ and <ids>/<uid>/.vm/<instance>/
        dirs += sum(1 for d in subdirs if depth == 1 and not d.startswith(".")
                    or top.endswith("/.vm"))
    return sockets, locks, dirs, ports


def snapshot(names):
    sockets, locks, dirs, ports = state_files(f"{WORK}/ids")
    return {"containers": containers(names), "processes": processes(),
            "sockets": sockets, "lock files": locks, "instance dirs": dirs,
            "port locks": ports}


def same(before, after):
    """Whether nothing was left: equal counts, except a VM's port locks, which stay (one
    per port a call has used) up to the number of ports."""
    if not isinstance(before, dict):
        return before == after
    rest = lambda counts: {k: v for k, v in counts.items() if k != "port locks"}
    return rest(before) == rest(after) and after["port locks"] <= PORTS


# Guest channel ports of a resume VM under QEMU (virtio console ports).
PORTS = 4


def settle(names, want, limit=30):
    """Waits (containers end asynchronously) until the counts are `want` or time is up."""
    deadline = time.monotonic() + limit
    while True:
        now = snapshot(names)
        if same(want, now) or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def agent_fds(container):
    pid = subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", container],
                         capture_output=True, text=True, check=True).stdout.strip()
    return len(os.listdir(f"/proc/{pid}/fd"))


# ----- scenarios -----

def register(name, *extra):
    app = f"{WORK}/bin/{name}"
    ctl("podman", "register", "--container", IMAGE, "--app", app, "--target", "/bin/sh",
        "--opt", "\\--network none", *extra)
    return app


def register_podman():
    """The flakes of the container scenarios: (one-shot, resume, many resume, names)."""
    oneshot = register(f"{TAG}-one")
    resume = register(f"{TAG}-res", "--resume")
    many = [register(f"{TAG}-m{i}", "--resume") for i in range(n("FLAKES", 20))]
    names = [f"{TAG}-one", f"{TAG}-res"] + [f"{TAG}-m{i}" for i in range(len(many))]
    return oneshot, resume, many, names


def podman_scenarios(flakes, report, leaks):
    oneshot, resume, many, names = flakes
    echo = ["-c", 'echo "$1"', "sh"]

    empty = snapshot(names)
    # The engine alone, with the options the launcher passes, for comparison.
    raw = ["podman", "run", "--rm", "--interactive", "--init", "--log-driver=passthrough",
           "--quiet", "--network", "none", "--entrypoint", "/bin/sh", IMAGE]
    report.append(concurrent(
        f"`podman run --rm` alone, {n('ONESHOT', 50)} concurrent (baseline)",
        [[*raw, *echo, str(i)] for i in range(n("ONESHOT", 50))],
        lambda i: f"{i}\n"))
    report.append(concurrent(
        f"one-shot container, {n('ONESHOT', 50)} concurrent launches",
        [[oneshot, *echo, str(i)] for i in range(n("ONESHOT", 50))],
        lambda i: f"{i}\n"))

    # A warm instance: its agent's descriptors are counted before and after.
    checked([call(resume, *echo, "up")], lambda i: "up\n")
    container = f"flake-{TAG}-res-u{os.getuid()}"
    before = snapshot(names)
    fds_before = agent_fds(container)
    report.append(concurrent(
        f"resume container, {n('WARM', 50)} concurrent warm calls",
        [[resume, *echo, str(i)] for i in range(n("WARM", 50))],
        lambda i: f"{i}\n"))
    report.append(sequential(
        f"resume container, {n('SEQ', 1000)} sequential warm calls",
        [[resume, *echo, str(i)] for i in range(n("SEQ", 1000))],
        lambda i: f"{i}\n"))
    leaks.append(("resume container: agent descriptors", fds_before, agent_fds(container)))
    after = settle(names, before)
    leaks.append(("resume container: around the warm calls", before, after))

    report.append(concurrent(
        f"{len(many)} different resume flakes, first calls at once",
        [[app, *echo, str(i)] for i, app in enumerate(many)],
        lambda i: f"{i}\n"))
    for app in [resume, *many]:
        checked([call(app, "%remove", *echo, "bye")], lambda i: "bye\n")
    leaks.append(("podman: all instances removed", empty, settle(names, empty)))


def vm_scenarios(report, leaks):
    resume = f"{WORK}/bin/{TAG}-vmr"
    oneshot = f"{WORK}/bin/{TAG}-vmo"
    echo = ["-c", 'echo "$1"', "sh"]
    empty = snapshot([])
    report.append(concurrent(
        f"one-shot VM, {n('VM_ONESHOT', 5)} concurrent launches",
        [[oneshot, *echo, str(i)] for i in range(n("VM_ONESHOT", 5))],
        lambda i: f"{i}\n"))
    checked([call(resume, *echo, "up")], lambda i: "up\n")
    fds = ["-c", "ls /proc/1/fd | wc -l"]
    sci_before = int(call(resume, *fds)[2])
    before = snapshot([])
    report.append(concurrent(
        f"resume VM, {n('VM_WARM', 20)} concurrent warm calls",
        [[resume, *echo, str(i)] for i in range(n("VM_WARM", 20))],
        lambda i: f"{i}\n"))
    report.append(sequential(
        f"resume VM, {n('VM_SEQ', 300)} sequential warm calls",
        [[resume, *echo, str(i)] for i in range(n("VM_SEQ", 300))],
        lambda i: f"{i}\n"))
    sci_after = int(call(resume, *fds)[2])
    leaks.append(("resume VM: guest init descriptors", sci_before, sci_after))
    leaks.append(("resume VM: around the warm calls", before, settle([], before)))
    checked([call(resume, "%remove", *echo, "bye")], lambda i: "bye\n")
    leaks.append(("VM: instance removed", empty, settle([], empty)))


def markdown(report, leaks):
    lines = ["| scenario | calls | p50 ms | p99 ms | max ms | calls/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in report:
        lines.append(f"| {r['scenario']} | {r['calls']} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['max_ms']:.0f} | {r['per_s']:.1f} |")
    lines += ["", "| left behind | before | after |", "|---|---|---|"]
    for what, before, after in leaks:
        if isinstance(before, dict):
            before = ", ".join(f"{k} {v}" for k, v in before.items())
            after = ", ".join(f"{k} {v}" for k, v in after.items())
        lines.append(f"| {what} | {before} | {after} |")
    return "\n".join(lines) + "\n"


def merge(rounds):
    """One row per scenario: the median over the rounds of p50, p99 and throughput, the
    largest maximum."""
    merged = []
    for rows in zip(*rounds):
        row = dict(rows[0])
        for key in ("p50_ms", "p99_ms", "per_s"):
            row[key] = statistics.median(r[key] for r in rows)
        row["max_ms"] = max(r["max_ms"] for r in rows)
        merged.append(row)
    return merged


def main():
    which = os.environ.get("LOAD_ONLY", "")
    podman = which in ("", "podman")
    vm = which in ("", "vm") and os.path.exists(f"{WORK}/bin/{TAG}-vmr")
    flakes = register_podman() if podman else None
    rounds, leaks = [], []
    for round_no in range(1, n("ROUNDS", 1) + 1):
        report, found = [], []
        if podman:
            podman_scenarios(flakes, report, found)
        if vm:
            vm_scenarios(report, found)
        rounds.append(report)
        leaks += [(f"round {round_no}: {what}", b, a) for what, b, a in found]
    report = merge(rounds)
    text = markdown(report, leaks)
    with open(sys.argv[1], "w") as f:
        f.write(text)
    print(text)
    with open(sys.argv[1] + ".json", "w") as f:
        json.dump({"rounds": rounds, "report": report, "leaks": leaks}, f, indent=1)
    bad = [(w, b, a) for w, b, a in leaks if not same(b, a)]
    if bad:
        raise SystemExit(f"leaks: {bad}")


if __name__ == "__main__":
    main()
