#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the fuzz targets under fuzz/ and runs each for a bounded time, one after the other.
#
#   FUZZ_SECONDS    seconds per target (default 30)
#   FUZZ_TARGETS    space-separated targets (default: all of fuzz/Cargo.toml)
#   FUZZ_TOOLCHAIN  toolchain with -Z flags for cargo-fuzz (default nightly)
#   FUZZ_SANITIZER  none (default) or address; the fuzzed code is safe Rust, so the
#                   sanitizer only slows it down, but it is there for changes with unsafe
#   FUZZ_RSS_MB     memory limit of one run, in MiB (default 2048)
#
# New inputs found go to fuzz/work/TARGET (ignored by git); the seeds in fuzz/corpus/TARGET
# are read, never written. A crash, a hang (10 s for one input), or an input that takes more
# memory than the limit stops the run: the input is saved in fuzz/artifacts/TARGET/ and the
# script fails. Reproduce with `fuzz/target/*/release/TARGET fuzz/artifacts/TARGET/FILE`.
set -euo pipefail

seconds="${FUZZ_SECONDS:-30}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
sanitizer="${FUZZ_SANITIZER:-none}"
rss_mb="${FUZZ_RSS_MB:-2048}"
cd "$(dirname "$0")/../fuzz"

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
    echo "fuzz: the $toolchain toolchain is missing; install it with rustup toolchain install $toolchain" >&2
    exit 1
fi
if ! command -v c++ >/dev/null 2>&1; then
    # libFuzzer is C++: cargo-fuzz builds it with the system compiler.
    if [ "$(id -u)" = 0 ]; then
        echo "fuzz: installing g++ (libFuzzer is built with it)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
    else
        echo "fuzz: needs a C++ compiler (g++) to build libFuzzer" >&2
        exit 1
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

start=$(date +%s)
if [ -n "${FUZZ_TARGETS:-}" ]; then
    targets="$FUZZ_TARGETS"
    for target in $targets; do
        cargo "+$toolchain" fuzz build --sanitizer "$sanitizer" "$target"
    done
else
    targets="$(cargo "+$toolchain" fuzz list)"
    cargo "+$toolchain" fuzz build --sanitizer "$sanitizer"
fi
triple=$(rustc "+$toolchain" -vV | sed -n 's/^host: //p')
bin_dir="target/$triple/release"
echo "fuzz: built in $(( $(date +%s) - start )) s"

failed=()
summary=()
for target in $targets; do
    mkdir -p "work/$target" "artifacts/$target"
    log="work/$target.log"
    extra=()
    # The launcher's side prints what a hostile agent sends (stdout, stderr frames).
    [ "$target" = pilot_answers ] && extra+=(-close_fd_mask=3)
    status=0
    "$bin_dir/$target" "work/$target" "corpus/$target" \
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -malloc_limit_mb="$rss_mb" \
        -timeout=10 -artifact_prefix="artifacts/$target/" -print_final_stats=1 \
        "${extra[@]}" </dev/null >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log" | tail -n 1)
    summary+=("$(printf '%-16s %s' "$target" "${runs:-stopped (exit $status)}")")
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        grep -E '^(==|SUMMARY|thread|Test unit written|.*panicked)' "$log" | head -n 20 >&2 || true
    fi
done

printf '%s\n' "${summary[@]}"
echo "fuzz: $(( $(date +%s) - start )) s in all"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/work/)" >&2
    exit 1
fi
