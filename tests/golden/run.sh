#!/usr/bin/env bash
# run.sh - golden tests for `phasegate validate` error messages.
#
# For every X.yaml in this directory that has an X.expected next to it, run
#   $PHASEGATE validate X.yaml        (from inside this directory, so file
#                                      names in messages read `X.yaml:3:5: ...`)
# and compare its stderr with X.expected byte for byte, and its exit code
# with the number in X.exit (default 2).  A mismatch prints a unified diff.
#
#   bash tests/golden/run.sh [NAME...]      only X.yaml for the given NAMEs
#   PHG_GOLDEN_UPDATE=1 bash tests/golden/run.sh
#                     rewrite each X.expected with the actual stderr (create
#                     an empty X.expected first to add a case); exit codes
#                     are still checked
#
# PHASEGATE defaults to $PHG_BUILD_DIR/phasegate, then build/phasegate.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

if [[ -z ${PHASEGATE:-} ]]; then
	if [[ -n ${PHG_BUILD_DIR:-} && -x $PHG_BUILD_DIR/phasegate ]]; then
		PHASEGATE=$PHG_BUILD_DIR/phasegate
	else
		PHASEGATE=$root/build/phasegate
	fi
fi
case $PHASEGATE in
/*) ;;
*) PHASEGATE=$PWD/$PHASEGATE ;;
esac

cd "$here"
shopt -s nullglob

# Deterministic messages: no colours, C locale, no database in reach.
export NO_COLOR=1 LC_ALL=C
unset DATABASE_URL

cases=()
if [[ $# -gt 0 ]]; then
	for name in "$@"; do
		name=${name%.yaml}
		name=${name##*/}
		[[ -f $name.yaml ]] || { printf 'golden: no %s.yaml in %s\n' "$name" "$here" >&2; exit 2; }
		cases+=("$name.yaml")
	done
else
	cases=(*.yaml)
fi

update=${PHG_GOLDEN_UPDATE:-0}
work=$(mktemp -d "${TMPDIR:-/tmp}/phg-golden.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

passed=0 failed=0 skipped=0 updated=0
for yaml in "${cases[@]}"; do
	name=${yaml%.yaml}
	if [[ ! -f $name.expected ]]; then
		printf 'skip %s (no %s.expected)\n' "$yaml" "$name"
		skipped=$((skipped + 1))
		continue
	fi
	if [[ ! -x $PHASEGATE ]]; then
		printf 'golden: phasegate binary not found at %s (set PHASEGATE or build first)\n' \
			"$PHASEGATE" >&2
		exit 1
	fi
	want_rc=2
	if [[ -f $name.exit ]]; then
		want_rc=$(tr -d '[:space:]' <"$name.exit")
		if [[ ! $want_rc =~ ^[0-9]+$ ]]; then
			printf 'FAIL %s: %s.exit must hold a number, not %q\n' "$yaml" "$name" "$want_rc"
			failed=$((failed + 1))
			continue
		fi
	fi

	rc=0
	timeout 30 "$PHASEGATE" validate "$yaml" >"$work/stdout" 2>"$work/stderr" </dev/null || rc=$?
	ok=1
	if [[ $rc -ne $want_rc ]]; then
		ok=0
		if [[ $rc -eq 124 ]]; then
			printf 'FAIL %s: timed out after 30s\n' "$yaml"
		else
			printf 'FAIL %s: exit code %d, expected %d\n' "$yaml" "$rc" "$want_rc"
		fi
	fi
	if ! cmp -s "$name.expected" "$work/stderr"; then
		if [[ $update == 1 ]]; then
			cp -- "$work/stderr" "$name.expected"
			printf 'updated %s.expected\n' "$name"
			updated=$((updated + 1))
		else
			ok=0
			printf 'FAIL %s: stderr differs from %s.expected\n' "$yaml" "$name"
			diff -u --label "$name.expected" --label "stderr of: phasegate validate $yaml" \
				"$name.expected" "$work/stderr" || true
		fi
	fi
	if [[ $ok -eq 1 ]]; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		if [[ -s $work/stdout ]]; then
			printf -- '--- stdout of phasegate validate %s:\n' "$yaml"
			head -n 50 "$work/stdout"
		fi
	fi
done

if [[ $((passed + failed)) -eq 0 ]]; then
	printf 'golden: no X.yaml with an X.expected in %s yet; nothing to check\n' "$here"
	exit 0
fi
if [[ $update == 1 ]]; then
	printf 'golden: %d file(s) updated\n' "$updated"
fi
printf 'golden: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
[[ $failed -eq 0 ]]
