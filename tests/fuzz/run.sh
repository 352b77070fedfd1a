#!/usr/bin/env bash
# Bounded fuzzing of the parsers of hostile input (tests/fuzz/README.md):
# replays the committed corpus and regressions (`cargo test`), then runs each
# AFL++ target for MIGNET_FUZZ_SECONDS (default 5) from its corpus. Fails if
# a replay fails or a target finds a crash; each crash is copied to
# tests/fuzz/regressions/<target>/ to be fixed and committed.
#
#   MIGNET_FUZZ_SECONDS=600 bash tests/fuzz/run.sh            # longer
#   MIGNET_FUZZ_TARGETS="qmp quantity" bash tests/fuzz/run.sh  # some targets
#
# Needs cargo-afl and its AFL++ build (tests/setup.sh installs both under
# ${MIGNET_CACHE:-~/.cache/mignet}/fuzz). Changes no host setting: AFL++'s
# checks of the CPU governor and of core_pattern are skipped through its
# environment variables instead (AFL_SKIP_CPUFREQ,
# AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES); persistent mode catches panics
# in-process, so core dumps are not needed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
t_start=$SECONDS

seconds="${MIGNET_FUZZ_SECONDS:-5}"
cache="${MIGNET_CACHE:-$HOME/.cache/mignet}"
export PATH="$cache/fuzz/cargo-afl/bin:$PATH"
# cargo-afl keeps its AFL++ build under $XDG_DATA_HOME/afl.rs.
export XDG_DATA_HOME="$cache/fuzz/share"
# One build directory for the replay and the fuzzers: `cargo afl test` and
# `cargo afl build` use the same flags, so the dependencies build once.
export CARGO_TARGET_DIR="${MIGNET_FUZZ_TARGET_DIR:-$root/target/fuzz}"
# cargo-afl builds every crate (kube, axum, tokio, ...) at opt-level 3 with
# one codegen unit: 11 minutes here. At opt-level 0 with 16 units (rustc's
# last -C wins, and cargo-afl appends RUSTFLAGS after its own) it takes 2 to 5
# minutes on a shared machine; the targets run slower, which matters less
# than the build within a budget of seconds per target.
export AFL_OPT_LEVEL="${AFL_OPT_LEVEL:-0}"
export RUSTFLAGS="-C codegen-units=16"
manifest="$here/Cargo.toml"

if ! command -v cargo-afl >/dev/null; then
    echo "tests/fuzz/run.sh: cargo-afl is missing; run tests/setup.sh" >&2
    exit 1
fi

if [ -n "${MIGNET_FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$MIGNET_FUZZ_TARGETS"
else
    targets=()
    for f in "$here"/src/bin/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

# 1. Replay the corpus and the regressions (the same build the fuzzers use).
t=$SECONDS
if ! cargo afl test --manifest-path "$manifest" --locked --features afl -q -- --test-threads=2; then
    echo "tests/fuzz/run.sh: a corpus or regression input fails its checks (see above)" >&2
    exit 1
fi
cargo afl build --manifest-path "$manifest" --locked --features afl --bins -q
echo "tests/fuzz/run.sh: replay and build took $((SECONDS - t))s"

# 2. Fuzz each target for a fixed time.
export AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1
# Other work shares the 2 cores: do not pin a core, calibrate quickly.
export AFL_NO_AFFINITY=1
export AFL_FAST_CAL=1
# A target's own assertions are its oracle; AFL's crash dedup is enough.
export AFL_SKIP_CRASHES=1

out_root="$CARGO_TARGET_DIR/afl-out"
status=0
for target in "${targets[@]}"; do
    corpus="$here/corpus/$target"
    if [ ! -d "$corpus" ]; then
        echo "tests/fuzz/run.sh: no corpus for target $target" >&2
        status=1
        continue
    fi
    out="$out_root/$target"
    rm -rf "$out"
    mkdir -p "$out"
    t=$SECONDS
    dict=()
    if [ -f "$here/dict/$target.dict" ]; then
        dict=(-x "$here/dict/$target.dict")
    fi
    if ! cargo afl fuzz -i "$corpus" -o "$out" "${dict[@]}" -V "$seconds" -t 2000 \
        "$CARGO_TARGET_DIR/debug/$target" >"$out/afl.log" 2>&1; then
        echo "tests/fuzz/run.sh: afl-fuzz failed on $target; its log:" >&2
        tail -n 30 "$out/afl.log" >&2
        status=1
        continue
    fi
    stats="$out/default/fuzzer_stats"
    execs="$(awk -F': *' '$1 ~ /^execs_done/ {print $2}' "$stats" 2>/dev/null || echo "?")"
    paths="$(awk -F': *' '$1 ~ /^corpus_count/ {print $2}' "$stats" 2>/dev/null || echo "?")"
    crashes=()
    for c in "$out"/default/crashes/id:*; do
        [ -f "$c" ] && crashes+=("$c")
    done
    hangs=$(find "$out/default/hangs" -type f -name 'id:*' 2>/dev/null | wc -l)
    echo "tests/fuzz/run.sh: $target: $((SECONDS - t))s, $execs execs, $paths inputs in the queue, ${#crashes[@]} crashes, $hangs hangs"
    if [ "${#crashes[@]}" -gt 0 ]; then
        status=1
        dest="$here/regressions/$target"
        mkdir -p "$dest"
        for c in "${crashes[@]}"; do
            name="crash-$(sha1sum "$c" | cut -c1-16)"
            cp "$c" "$dest/$name"
            echo "tests/fuzz/run.sh: $target CRASHED on ${dest#"$root"/}/$name" >&2
        done
        echo "  reproduce: cargo test --manifest-path tests/fuzz/Cargo.toml $target" >&2
        echo "  then fix the parser and commit the input under tests/fuzz/regressions/$target/" >&2
    fi
    if [ "$hangs" -gt 0 ]; then
        echo "tests/fuzz/run.sh: $target: inputs slower than 2 s are in $out/default/hangs (not failing: the machine is shared)" >&2
    fi
done
echo "tests/fuzz/run.sh: ${#targets[@]} targets, ${seconds}s each, $((SECONDS - t_start))s in all"
exit "$status"
