#!/usr/bin/env bash
# Fuzzes each target for SECONDS (cargo fuzz, libFuzzer), after running it over the inputs that
# once failed (fuzz/regressions/<target>, which must keep passing), and prints what it did.
#
# usage: [FUZZ_SEED=N] config/fuzz/run.sh SECONDS TARGET...
#
# With FUZZ_SEED, libFuzzer's mutations follow that seed: from the same corpus a run tries the
# same inputs in the same order (as many as fit in the time), so `make test` does not pass or fail
# by chance. Without it each run explores differently.
#
# The builds go to a target directory in the cache, so a fresh clone rebuilds only the
# project's crates. A crash fails the run (the other targets still run): its input is in
# fuzz/artifacts/<target>/; once fixed, it goes into fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=$1
shift
cache=$HOME/.cache/kubernetes-nmstate
cargo_fuzz_version=0.13.2
cargo_fuzz=$cache/cargo-fuzz-$cargo_fuzz_version/bin/cargo-fuzz

say() { echo "fuzz: $*"; }

if [ ! -x "$cargo_fuzz" ]; then
	say "installing cargo-fuzz $cargo_fuzz_version"
	cargo install -q --locked "cargo-fuzz@$cargo_fuzz_version" --root "$(dirname "$(dirname "$cargo_fuzz")")"
fi

# No sanitizer: the targets are safe Rust, without one libFuzzer runs about twice as many
# inputs, and the build needs no nightly compiler (libFuzzer's instrumentation is made of
# stable options; only the sanitizers are not). Debug assertions on, so integer overflows are
# found.
flags=(--sanitizer none --debug-assertions --target-dir "$cache/fuzz-target")
export PATH=$(dirname "$cargo_fuzz"):$PATH
fuzz() { cargo fuzz "$@"; }

# The project's crates lie outside the fuzz workspace, so cargo keys their builds by absolute
# path and every clone added a copy (9.6 GB after eleven CI runs): drop each build whose sources
# are gone, as its dep-info file (deps/*.d) names them.
prune_gone_sources() {
	local dir=$cache/fuzz-target/x86_64-unknown-linux-gnu/release info source hash pruned=0
	[ -d "$dir/deps" ] || return 0
	for info in "$dir"/deps/*.d; do
		source=$(head -1 "$info" | cut -d: -f2 | awk '{print $1}')
		if [ -z "$source" ] || [ -e "$source" ]; then
			continue
		fi
		hash=${info##*-}
		hash=${hash%.d}
		rm -rf "$dir"/deps/*-"$hash" "$dir"/deps/*-"$hash".* "$dir"/.fingerprint/*-"$hash"
		pruned=$((pruned + 1))
	done
	[ "$pruned" = 0 ] || say "pruned $pruned builds of sources no longer there"
}

prune_gone_sources
started=$(date +%s)
fuzz build "${flags[@]}"
say "built the targets in $(( $(date +%s) - started )) s ($(rustc --version))"

failed=()
for target in "$@"; do
	mkdir -p "fuzz/corpus/$target" "fuzz/regressions/$target"
	regressions=$(find "fuzz/regressions/$target" -type f | wc -l)
	if [ "$regressions" -gt 0 ] &&
		! fuzz run "${flags[@]}" "$target" "fuzz/regressions/$target" -- -runs=0 \
			>"fuzz/corpus/$target.regressions.log" 2>&1; then
		tail -30 "fuzz/corpus/$target.regressions.log" >&2
		say "$target: a regression input fails again (fuzz/regressions/$target)"
		failed+=("$target")
		continue
	fi
	log=fuzz/corpus/$target.log
	options=(-max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1)
	if [ -f "fuzz/dicts/$target.dict" ]; then options+=(-dict="fuzz/dicts/$target.dict"); fi
	if [ -n "${FUZZ_SEED:-}" ]; then options+=(-seed="$FUZZ_SEED"); fi
	if ! fuzz run "${flags[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- "${options[@]}" \
		>"$log" 2>&1; then
		grep -A25 -m1 'panicked\|ERROR: libFuzzer' "$log" >&2 || tail -30 "$log" >&2
		say "$target: crashed; the input is in fuzz/artifacts/$target/ (reproduce: PATH=$(dirname "$cargo_fuzz"):\$PATH cargo fuzz run ${flags[*]} $target <file>)"
		failed+=("$target")
		continue
	fi
	stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
	say "$target: $(stat number_of_executed_units) executions in $seconds s ($(stat average_exec_per_sec)/s), corpus $(find "fuzz/corpus/$target" -type f | wc -l) inputs, $regressions regressions passed, peak RSS $(stat peak_rss_mb) MB, no crash"
done
if [ ${#failed[@]} -gt 0 ]; then
	say "failed: ${failed[*]}" >&2
	exit 1
fi
