#!/usr/bin/env bash
# test_core_tty.sh - on a terminal (issue 14): phasegate run in a real
# pseudo-terminal (script(1)) draws a live line rewritten in place (\r and
# erase-line) for a backfill (rows, %, rows/s, ETA, batch), a long statement
# (a VALIDATE that waits) and the verify gate, coloured; warnings coloured.
# NO_COLOR: the live line without colours.  TERM=dumb, and stderr not a
# terminal: plain lines only, no escape sequence at all.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

command -v script >/dev/null 2>&1 || fail "script(1) is missing (bsdutils)"
fake_http fake healthy
port=$FAKE_PORT

new_db core_tty
seed() { # the table, fresh
	psql_q "SET client_min_messages = warning; DROP TABLE IF EXISTS tt; DROP FUNCTION IF EXISTS slow_tt(); CREATE TABLE tt (id int PRIMARY KEY, a int);
		INSERT INTO tt SELECT g, g FROM generate_series(1, 4000) g; ANALYZE tt" >/dev/null
	slow_updates tt 0.3
}
# a check whose VALIDATE takes a few seconds (a long statement)
psql_q "CREATE FUNCTION slow_pos(int) RETURNS boolean LANGUAGE plpgsql AS \$\$
	BEGIN PERFORM pg_sleep(0.0005); RETURN \$1 > 0; END \$\$" >/dev/null
plan() { # NAME [CHECK]
	cat >"$T/$1.yaml" <<YAML
version: 1
name: $1
settings: { throttle: off }
checks:
  api: { url: "http://127.0.0.1:$port/healthz", interval: 200ms, successes: 3 }
phases:
  - name: fill
    steps:
      - add_column: { table: tt, column: b, type: int }
      - backfill: { table: tt, set: "b = a", batch_size: 500 }
      - add_check: { table: tt, name: tt_b_pos, check: "${2:-b > 0}" }
    verify: [api]
YAML
}
# in_pty OUT CMD... - run CMD with a terminal as its stdin/stdout/stderr
in_pty() {
	local out=$1
	shift
	script -qec "$(printf '%q ' "$@")" /dev/null >"$out" 2>&1 </dev/null
}
esc=$'\033'

# ---- a terminal: the live line, coloured ----------------------------------
seed
plan tty1 "slow_pos(b)"
TERM=xterm COLUMNS=200 in_pty "$T/tty1.out" "$PHASEGATE" apply "$T/tty1.yaml" || fail "apply in a pty" "$(cat "$T/tty1.out")"
grep -q "plan completed" "$T/tty1.out" || fail "the apply did not complete" "$(cat "$T/tty1.out")"
grep -aq $'\r'"${esc}\[K" "$T/tty1.out" || fail "no line rewritten in place"
grep -aqE 'backfill tt: +[0-9]+%  [0-9]+/4000 rows  [0-9]+ rows/s  ETA [0-9]+ s  batch 500' "$T/tty1.out" ||
	fail "no live backfill line" "$(tr '\r' '\n' <"$T/tty1.out" | head -40)"
grep -aqE 'verify gate: check "api" passes [0-9]/3 in a row' "$T/tty1.out" || fail "no live gate line"
grep -aqE 'validate constraint "tt_b_pos": scans "tt", writes continue: [0-9]+ s' "$T/tty1.out" || fail "no live line for the long VALIDATE" \
	"$(tr '\r' '\n' <"$T/tty1.out" | grep -a -i valid | head)"
grep -aq "${esc}\[32m" "$T/tty1.out" || fail "no colour on a terminal"
# the log lines are whole lines: none starts with the live line's text
tr '\r' '\n' <"$T/tty1.out" | sed "s/^${esc}\[K//" | grep -a "phasegate\[tty1" | grep -aqv "^[0-9][0-9]:" &&
	fail "a log line was drawn over the live line" "$(tr '\r' '\n' <"$T/tty1.out" | grep -a 'phasegate\[tty1' | head)"

# ---- NO_COLOR: the live line, no colours -------------------------------------
seed
plan tty2
NO_COLOR=1 TERM=xterm COLUMNS=200 in_pty "$T/tty2.out" "$PHASEGATE" apply "$T/tty2.yaml" || fail "apply in a pty (NO_COLOR)"
grep -aq $'\r'"${esc}\[K" "$T/tty2.out" || fail "NO_COLOR: no live line"
grep -aqE "${esc}\[[0-9;]*m" "$T/tty2.out" && fail "NO_COLOR: colours drawn"

# ---- TERM=dumb, and a pipe: plain lines ---------------------------------------
seed
plan tty3
TERM=dumb in_pty "$T/tty3.out" "$PHASEGATE" apply "$T/tty3.yaml" || fail "apply in a pty (TERM=dumb)"
grep -q "plan completed" "$T/tty3.out" || fail "TERM=dumb: the apply did not complete"
grep -aq "$esc" "$T/tty3.out" && fail "TERM=dumb: an escape sequence was written"
seed
plan tty4
assert_exit 0 phg apply "$T/tty4.yaml"
grep -aq "$esc" "$T/err" && fail "a pipe got an escape sequence"
grep -aq $'\r' "$T/err" && fail "a pipe got a carriage return"
assert_file_contains "$T/err" "backfill of tt done: 4000 rows"
pass
