#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Times commands round-robin: run 1 of each, then run 2 of each, and so on.

Slow launches on a noisy machine drift over a benchmark; hyperfine runs all runs of one
command before the next, so a drift lands on one side only. Here every round runs every
command once, so drift hits all alike. Usage:

    interleave.py RUNS WARMUP OUT.json NAME COMMAND [NAME COMMAND ...]

Each COMMAND is split like a shell would (shlex) and executed directly, with stdin, stdout
and stderr on /dev/null; leading NAME=VALUE words set environment variables for it, as in
a shell (no `env` process whose start would be timed too). A command that fails stops the
benchmark. OUT.json has the shape of hyperfine's export (results: command, median, times),
medians in seconds.
"""
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time


def split(command: str) -> tuple[list[str], dict[str, str]]:
    """The argv of COMMAND and its environment: this one with its leading NAME=VALUE words."""
    words = shlex.split(command)
    env = dict(os.environ)
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0], re.S):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return words, env


def main() -> int:
    runs, warmup, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    pairs = sys.argv[4:]
    if not pairs or len(pairs) % 2:
        print("interleave.py: give NAME COMMAND pairs", file=sys.stderr)
        return 2
    commands = [(pairs[i], *split(pairs[i + 1])) for i in range(0, len(pairs), 2)]
    times = {name: [] for name, _, _ in commands}
    for round_ in range(warmup + runs):
        for name, argv, env in commands:
            started = time.monotonic()
            done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elapsed = time.monotonic() - started
            if done.returncode != 0:
                print(f"interleave.py: {name} failed with {done.returncode}", file=sys.stderr)
                return 1
            if round_ >= warmup:
                times[name].append(elapsed)
    results = [{"command": name, "median": statistics.median(times[name]),
                "times": times[name]} for name, _, _ in commands]
    with open(out, "w") as f:
        json.dump({"results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
