#!/usr/bin/env bash
# fuzz.sh - build the libFuzzer targets (tests/fuzz/fuzz_*.c) with clang,
# ASan and UBSan in build-fuzz, replay every saved regression input, then
# fuzz each target for its share of SECONDS (default 60 in all).
#
#   bash scripts/fuzz.sh [SECONDS]
#
# Seeds: tests/fuzz/corpus/TARGET/, and for fuzz_plan_load every plan in
# plans/, examples/ and tests/golden/.  The fuzzers work on a copy under
# build-fuzz/corpus (nothing generated lands in the repository).  Anything
# found (a crash, a leak, a timeout) is left in build-fuzz/artifacts/ and
# the script exits 1: copy the input into tests/fuzz/regressions/TARGET/ with
# the fix, so it is replayed from then on.  Longer runs: docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

total=${1:-60}
[[ $total =~ ^[0-9]+$ && $total -gt 0 ]] || { echo "fuzz.sh: SECONDS must be a positive number" >&2; exit 2; }
command -v clang >/dev/null || { echo "fuzz.sh: clang is needed (scripts/bootstrap.sh installs it)" >&2; exit 2; }

targets=()
for f in tests/fuzz/fuzz_*.c; do
	t=$(basename "$f" .c)
	targets+=("$t")
done
out=build-fuzz
echo "fuzz.sh: configuring and building ${targets[*]} in $out"
CC=clang cmake -S . -B "$out" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPHG_TESTS=ON -DPHG_FUZZ=ON \
	-DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
	>"$out.configure.log" 2>&1 || { cat "$out.configure.log" >&2; exit 1; }
cmake --build "$out" -j"$(nproc 2>/dev/null || echo 2)" --target "${targets[@]}" >"$out/build.log" 2>&1 ||
	{ tail -40 "$out/build.log" >&2; exit 1; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
rm -rf "$out/corpus" "$out/artifacts"
mkdir -p "$out/artifacts"
per=$((total / ${#targets[@]}))
((per > 0)) || per=1
rc=0
for t in "${targets[@]}"; do
	bin=$out/tests/fuzz/$t
	corpus=$out/corpus/$t
	mkdir -p "$corpus" "$out/artifacts/$t"
	[[ -d tests/fuzz/corpus/$t ]] && cp tests/fuzz/corpus/$t/* "$corpus/" 2>/dev/null || true
	if [[ $t == fuzz_plan_load ]]; then
		i=0
		while IFS= read -r -d '' p; do
			cp "$p" "$corpus/seed-$((i++)).yaml"
		done < <(find plans examples tests/golden tests/unit/data -name '*.yaml' -print0)
	fi
	max_len=4096
	[[ $t == fuzz_plan_load ]] && max_len=65536
	# every saved regression input, once
	regs=()
	while IFS= read -r -d '' r; do regs+=("$r"); done < <(find "tests/fuzz/regressions/$t" -type f ! -name README -print0 2>/dev/null)
	if ((${#regs[@]} > 0)); then
		echo "fuzz.sh: $t: replaying ${#regs[@]} regression input(s)"
		"$bin" -artifact_prefix="$out/artifacts/$t/" "${regs[@]}" >"$out/artifacts/$t.replay.log" 2>&1 ||
			{ echo "fuzz.sh: $t: a regression input fails again:" >&2; tail -30 "$out/artifacts/$t.replay.log" >&2; rc=1; continue; }
	fi
	echo "fuzz.sh: $t: fuzzing for ${per}s ($(find "$corpus" -type f | wc -l) seed(s))"
	if ! "$bin" -max_total_time="$per" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
		-print_final_stats=1 -artifact_prefix="$out/artifacts/$t/" "$corpus" \
		>"$out/artifacts/$t.log" 2>&1; then
		echo "fuzz.sh: $t found a failure:" >&2
		grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$out/artifacts/$t.log" | head -10 >&2
		echo "fuzz.sh: inputs in $out/artifacts/$t/; copy them into tests/fuzz/regressions/$t/ with the fix" >&2
		rc=1
		continue
	fi
	grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$out/artifacts/$t.log" |
		tr '\n' ' ' | sed "s/^/fuzz.sh: $t: /; s/ \$/\n/"
done
exit "$rc"
