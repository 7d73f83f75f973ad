#!/usr/bin/env bash
# test.sh - THE test command: bootstrap, configure, build, run every test.
#
#   bash scripts/test.sh
#
# Environment:
#   PHG_CMAKE_ARGS      extra arguments for the configure step, split on
#                       spaces (e.g. "-DPHG_ASAN=ON -DPHG_WERROR=OFF")
#   PHG_SANITIZE=1      also build in build-asan with ASan+UBSan and run the
#                       whole suite there too; the default is 1 under CI
#                       (CI=true) and 0 otherwise (PHG_SANITIZE=0 turns it off).
#                       The kill matrices (test_fault_*) then split their
#                       fault points: every third in build-asan, the others
#                       in build (PHG_FAULT_STRIDE/PHG_FAULT_RESIDUES,
#                       tests/integration/fault_lib.sh); without it, build
#                       tries them all
#   PHG_VALGRIND=1      also run every unit test executable of build/ under
#                       valgrind (memcheck: any error or a definite leak
#                       fails); the default is 1 under CI and 0 otherwise
#   PHG_FUZZ=1          also run scripts/fuzz.sh (libFuzzer targets with
#                       clang, ASan+UBSan, regressions replayed) for
#                       PHG_FUZZ_SECONDS (default 40) in all; the default is
#                       1 under CI and 0 otherwise
#   PHG_SKIP_BOOTSTRAP=1  do not run scripts/bootstrap.sh
#   PHG_CTEST_ARGS      extra arguments for ctest (e.g. "-R test_buf")
#   PHG_CTEST_JOBS      tests run in parallel (default: the cores + 1)
#
# The exit code is ctest's (the first failing one with PHG_SANITIZE=1).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${PHG_SKIP_BOOTSTRAP:-0} != 1 ]]; then
	bash scripts/bootstrap.sh
fi

read -r -a extra_cmake <<<"${PHG_CMAKE_ARGS:-}"
read -r -a extra_ctest <<<"${PHG_CTEST_ARGS:-}"
jobs=$(nproc 2>/dev/null || echo 2)
# tests in parallel: one more than the cores, since most of them wait on
# PostgreSQL, sleeps or a child for much of their time (PHG_CTEST_JOBS)
ctest_jobs=${PHG_CTEST_JOBS:-$((jobs + 1))}

# build_and_test DIR [CMAKE_ARGS...] -> ctest's exit code (or the failing
# configure/build step's).  Called in a `||` list, where `set -e` does not
# apply, hence the explicit returns.
build_and_test() {
	local dir=$1 rc=0
	shift
	printf 'test.sh: configuring %s\n' "$dir"
	cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPHG_TESTS=ON \
		"$@" "${extra_cmake[@]}" || return $?
	printf 'test.sh: building %s\n' "$dir"
	cmake --build "$dir" -j"$jobs" || return $?
	printf 'test.sh: testing %s\n' "$dir"
	ctest --test-dir "$dir" --output-on-failure --no-tests=error -j"$ctest_jobs" \
		--timeout 600 "${extra_ctest[@]}" || rc=$?
	return "$rc"
}

# ci_default VALUE: VALUE if set, else 1 under CI (CI=true), else 0
ci_default() {
	if [[ -n $1 ]]; then
		printf '%s\n' "$1"
	elif [[ ${CI:-} == true ]]; then
		echo 1
	else
		echo 0
	fi
}

# valgrind_units DIR: every unit test executable of DIR under memcheck
valgrind_units() {
	local dir=$1 name n=0 rc=0
	for name in $(ctest --test-dir "$dir" -N -L unit | awk '/Test +#[0-9]+:/ {print $3}'); do
		[[ -x $dir/tests/$name ]] || continue # a script (golden_errors)
		n=$((n + 1))
		if ! PHG_SOURCE_DIR=$PWD valgrind -q --error-exitcode=99 --leak-check=full \
			--errors-for-leak-kinds=definite --show-leak-kinds=definite \
			"$dir/tests/$name" >"$dir/valgrind-$name.log" 2>&1; then
			printf 'test.sh: valgrind: %s failed:\n' "$name"
			tail -40 "$dir/valgrind-$name.log"
			rc=1
		fi
	done
	printf 'test.sh: valgrind: %d unit test(s) run under memcheck%s\n' "$n" \
		"$([[ $rc == 0 ]] && echo ', no error' || echo ', FAILED')"
	return "$rc"
}

sanitize=${PHG_SANITIZE:-}
if [[ -z $sanitize ]]; then
	if [[ ${CI:-} == true ]]; then sanitize=1; else sanitize=0; fi
fi

rc=0
if [[ $sanitize == 1 && -z ${PHG_FAULT_RESIDUES:-} ]]; then
	# the kill matrices (tests/integration/fault_lib.sh): the sanitizer
	# build tries every third fault point, the plain build the others, so
	# the run tries each point once and the two builds share the time
	PHG_FAULT_STRIDE=3 PHG_FAULT_RESIDUES="1 2" build_and_test build || rc=$?
else
	build_and_test build || rc=$?
fi
if [[ $(ci_default "${PHG_VALGRIND:-}") == 1 ]]; then
	vrc=0
	valgrind_units build || vrc=$?
	if [[ $rc -eq 0 ]]; then
		rc=$vrc
	fi
fi

if [[ $sanitize == 1 ]]; then
	src=0
	ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
	UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
		build_and_test build-asan -DPHG_ASAN=ON -DPHG_UBSAN=ON || src=$?
	if [[ $rc -eq 0 ]]; then
		rc=$src
	fi
fi

if [[ $(ci_default "${PHG_FUZZ:-}") == 1 ]]; then
	frc=0
	bash scripts/fuzz.sh "${PHG_FUZZ_SECONDS:-40}" || frc=$?
	if [[ $rc -eq 0 ]]; then
		rc=$frc
	fi
fi

exit "$rc"
