#!/usr/bin/env bash
# test_gates_loop.sh - the loop is never blocked, and verify gate counting.
#
# Issue 3, "Tests": a `sql` step running pg_sleep(3) in a phase with a
# 200 ms `watch` check gets at least 10 probes in while the statement runs.
# The statement writes its own start and end (clock_timestamp()); the probes
# in between are counted twice, independently: at the fake service (its
# request log, its clock mapped to the wall clock by one timed request) and
# in phasegate's event log.
#
# Gate semantics (SPEC section 2 "Gates"):
#   successes: 3, no soak  -> the verify gate passes on exactly the 3rd probe
#   successes: 3, soak: 2s -> the phase is not applied before 2 s of probing,
#                             although 3 successes came in after 0.4 s
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

[[ -n ${FAKEHTTP:-} && -x $FAKEHTTP ]] || fail "FAKEHTTP is not set (build target fakehttp)"

# fake_start NAME [MODE] - start a fake service; its port in FAKE_PORT.
fake_start() {
	bg_run "fake_$1" "$FAKEHTTP" --port 0 --port-file "$T/$1.port" --mode "${2:-healthy}"
	wait_for -t 10 test -s "$T/$1.port"
	FAKE_PORT=$(cat "$T/$1.port")
}
fake_get() { curl -sS -m 5 "http://127.0.0.1:$1$2"; }
# python3 for JSON (a pyenv shim can take a second to start: prefer the system one)
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3
py() { "$PY" -I -S -c "$@"; }
now_ms() {
	local t=${EPOCHREALTIME//[.,]/}
	echo $((10#$t / 1000))
}

new_db gates_loop
fake_start api
export FAKE_PORT

psql_q "CREATE TABLE marks (what text PRIMARY KEY, at timestamptz NOT NULL)" >/dev/null

cat >"$T/loop.yaml" <<'EOF'
version: 1
name: gates-loop
checks:
  api:
    url: "http://127.0.0.1:${FAKE_PORT}/healthz"
    interval: 200ms
    timeout: 1s
    successes: 3
    failures: 2
    soak: 2s
  quick:
    url: "http://127.0.0.1:${FAKE_PORT}/quick"
    interval: 200ms
    successes: 3
phases:
  - name: sleepy
    watch: [api]
    steps:
      - sql:
          up: >-
            INSERT INTO marks VALUES ('start', clock_timestamp());
            SELECT pg_sleep(3);
            INSERT INTO marks VALUES ('end', clock_timestamp())
          down: "-- phasegate:safety_assured: a small table of the test\nDELETE FROM marks"
    verify: [api]
  - name: counted
    steps:
      - sql: { up: "INSERT INTO marks VALUES ('counted', clock_timestamp())", down: "SELECT 1" }
    verify: [quick]
EOF

# map the fake service's clock (ms since it started) to the wall clock: one
# request of our own, timed on both sides
t1=$(now_ms)
fake_get "$FAKE_PORT" /sync >/dev/null
t2=$(now_ms)

t0=$(now_ms)
assert_exit 0 phg apply "$T/loop.yaml"
elapsed=$(($(now_ms) - t0))

# ---- the fake service: probes that arrived while the statement ran
read -r m_start m_end < <(psql_q "SELECT extract(epoch FROM (SELECT at FROM marks WHERE what = 'start')),
	extract(epoch FROM (SELECT at FROM marks WHERE what = 'end'))" -F ' ')
n_fake=$(fake_get "$FAKE_PORT" /_requests | py '
import json, sys
t1, t2, start, end = (float(a) for a in sys.argv[1:5])
reqs = json.load(sys.stdin)
sync = [r for r in reqs if r["path"] == "/sync"][0]
offset = (t1 + t2) / 2 - sync["time_ms"]    # wall-clock ms = time_ms + offset
print(sum(1 for r in reqs if r["path"] == "/healthz"
          and start * 1000 < r["time_ms"] + offset < end * 1000))
' "$t1" "$t2" "$m_start" "$m_end")
if ((n_fake < 10)); then
	fail "the fake service got only $n_fake probes while pg_sleep(3) ran (want >= 10)"
fi

# ---- phasegate's event log: watch probes between the statement's own marks
n_ev=$(psql_q "SELECT count(*) FROM phasegate.events e
	WHERE e.kind = 'probe' AND e.data->>'gate' = 'watch' AND e.data->>'check' = 'api'
	AND (e.data->>'ok')::boolean
	AND e.at > (SELECT at FROM marks WHERE what = 'start')
	AND e.at < (SELECT at FROM marks WHERE what = 'end')")
if ((n_ev < 10)); then
	fail "phasegate logged only $n_ev watch probes during the 3 s statement (want >= 10)"
fi
stmt_ms=$(psql_q "SELECT (extract(epoch FROM (SELECT at FROM marks WHERE what = 'end')
	- (SELECT at FROM marks WHERE what = 'start')) * 1000)::int")
((stmt_ms >= 2900)) || fail "the statement ran only ${stmt_ms} ms"

# ---- soak: 2s with successes: 3 -> not applied before 2 s of probing
# the verify gate starts after the step's statement ended; the phase is
# applied (finished_at) no sooner than 2 s later, although the 3rd success
# came after ~0.4 s
soak_ms=$(psql_q "SELECT (extract(epoch FROM p.finished_at - (SELECT at FROM marks
	WHERE what = 'end')) * 1000)::int FROM phasegate.phases p WHERE p.name = 'sleepy'")
if ((soak_ms < 1980)); then
	fail "phase 'sleepy' was applied ${soak_ms} ms after its steps ended (soak is 2s)"
fi
if ((soak_ms > 4500)); then
	fail "phase 'sleepy' was applied only ${soak_ms} ms after its steps ended (soak 2s)"
fi
third_ms=$(psql_q "SELECT (extract(epoch FROM max(at) - min(at)) * 1000)::int FROM (
	SELECT at FROM phasegate.events WHERE kind = 'probe' AND phase = 'sleepy'
	AND data->>'gate' = 'verify' ORDER BY id LIMIT 3) s")
((third_ms < 1500)) || fail "3 successes took ${third_ms} ms: the soak test proves nothing"
n_verify=$(psql_q "SELECT count(*) FROM phasegate.events WHERE kind = 'probe'
	AND phase = 'sleepy' AND data->>'gate' = 'verify'")
((n_verify >= 8)) || fail "only $n_verify verify probes during a 2 s soak at 200 ms"
assert_eq "1" "$(psql_q "SELECT count(*) FROM phasegate.events WHERE kind = 'gate_passed'
	AND phase = 'sleepy'")" "one gate_passed event for phase sleepy"
# the verify gate began after the step: no verify probe before the statement ended
assert_eq 0 "$(psql_q "SELECT count(*) FROM phasegate.events WHERE kind = 'probe'
	AND data->>'gate' = 'verify' AND at < (SELECT at FROM marks WHERE what = 'end')")" \
	"no verify probe before the steps finished"

# ---- successes: 3 without soak -> passes on exactly the 3rd success
reqs=$(fake_get "$FAKE_PORT" /_requests)
n_quick=$(py 'import json,sys; print(sum(1 for r in json.loads(sys.argv[1]) if r["path"] == "/quick"))' "$reqs")
assert_eq 3 "$n_quick" "verify [quick] (successes: 3, no soak) sends exactly 3 probes"
assert_eq 3 "$(psql_q "SELECT count(*) FROM phasegate.events WHERE kind = 'probe'
	AND phase = 'counted' AND data->>'check' = 'quick' AND (data->>'ok')::boolean")" \
	"three passing probe events for check quick"
assert_eq "1 2 3" "$(psql_q "SELECT string_agg(data->>'successes', ' ' ORDER BY id)
	FROM phasegate.events WHERE kind = 'probe' AND phase = 'counted'")" \
	"consecutive successes counted 1, 2, 3"
# 3 probes 200 ms apart: about 0.4 s from the first to the phase being applied
q_ms=$(psql_q "SELECT (extract(epoch FROM p.finished_at - (SELECT min(at) FROM phasegate.events
	WHERE kind = 'probe' AND phase = 'counted')) * 1000)::int
	FROM phasegate.phases p WHERE p.name = 'counted'")
if ((q_ms < 350 || q_ms > 1900)); then
	fail "phase 'counted' applied ${q_ms} ms after its first probe (3 probes at 200 ms: ~400)"
fi

printf 'probes while pg_sleep(3) ran: %d at the service, %d in the event log; soak %d ms, %d verify probes\n' \
	"$n_fake" "$n_ev" "$soak_ms" "$n_verify"
assert_eq "completed" "$(psql_q "SELECT state FROM phasegate.runs")" "run completed"
assert_eq "applied applied" "$(psql_q "SELECT string_agg(state, ' ' ORDER BY idx) FROM phasegate.phases")"
((elapsed < 20000)) || fail "apply took ${elapsed} ms"

pass
