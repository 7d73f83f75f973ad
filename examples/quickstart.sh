#!/usr/bin/env bash
# quickstart.sh - phasegate end to end, on a fresh Debian machine:
#   installs what is missing, builds, starts a throwaway PostgreSQL and the
#   demo service, runs the five-phase plan of SPEC section 2 to completion,
#   then runs it again against a "buggy release" of the service and shows the
#   health gate failing and the automatic rollback.
#
#   bash examples/quickstart.sh
#
# Environment: QUICKSTART_ROWS (default 200000) rows in the demo's jobs table;
# QUICKSTART_OUT (default ./quickstart-out) where the run reports (HTML) and
# event logs are left; QUICKSTART_LOG_FORMAT=json runs the applies with
# --log-format json (kept in QUICKSTART_OUT); PHASEGATE and PHG_DEMO: use
# these binaries instead of building (tests/integration/test_quickstart.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${QUICKSTART_ROWS:-200000}
PLAN=$ROOT/examples/quickstart/plan.yaml
OUT=${QUICKSTART_OUT:-$ROOT/quickstart-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOGFMT=()
[[ ${QUICKSTART_LOG_FORMAT:-text} == json ]] && LOGFMT=(--log-format json)

bold() { if [[ -t 1 && -z ${NO_COLOR:-} ]]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi; }
say() { printf 'quickstart: %s\n' "$*"; }

bold "Setting up: Debian packages, build"
bash scripts/bootstrap.sh
if [[ -n ${PHASEGATE:-} && -n ${PHG_DEMO:-} ]]; then
	DEMO=$PHG_DEMO
	say "using $("$PHASEGATE" --version) at $PHASEGATE"
else
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build build -j"$(nproc 2>/dev/null || echo 2)" --target phasegate phasegate-demo >/dev/null
	PHASEGATE=$ROOT/build/phasegate
	DEMO=$ROOT/build/examples/phasegate-demo
	say "built $("$PHASEGATE" --version)"
fi

WORK=$(mktemp -d /tmp/phasegate-quickstart.XXXXXX)
chmod 755 "$WORK"
STATE=$WORK/pg.state
DEMO_PID=
cleanup() {
	local rc=$?
	if [[ -n $DEMO_PID ]]; then kill "$DEMO_PID" 2>/dev/null || true; wait "$DEMO_PID" 2>/dev/null || true; fi
	bash "$ROOT/tests/harness/pg.sh" stop "$STATE" >/dev/null 2>&1 || true
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT INT TERM

bold "Starting a throwaway PostgreSQL (unix socket in $WORK)"
bash tests/harness/pg.sh start "$STATE"
# shellcheck disable=SC1090
source "$STATE"
export PATH="$PHG_TEST_PGBIN:$PATH"
unset PGDATABASE PGSERVICE PGPASSWORD

seed() { # seed DBNAME: a Loom-like jobs table
	psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $1"
	psql -X -q -v ON_ERROR_STOP=1 -d "$1" <<SQL
CREATE TABLE jobs (
  id bigserial PRIMARY KEY,
  repo text NOT NULL,
  status varchar(20) NOT NULL DEFAULT 'queued',
  created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO jobs (repo, status)
SELECT 'github.com/loom/repo-' || (g % 500),
       (ARRAY['queued', 'running', 'done', 'done', 'failed'])[1 + g % 5]
FROM generate_series(1, $ROWS) g;
ANALYZE jobs;
SQL
	say "database $1: jobs table with $ROWS rows"
}

start_demo() { # start_demo DBNAME [--buggy]
	local db=$1
	shift
	rm -f "$WORK/demo.port"
	"$DEMO" --port 0 --port-file "$WORK/demo.port" --write-rate 20 \
		--db "postgresql:///$db?host=$PGHOST&port=$PGPORT&user=postgres" "$@" \
		>"$WORK/demo.log" 2>&1 &
	DEMO_PID=$!
	for _ in $(seq 100); do [[ -s $WORK/demo.port ]] && break; sleep 0.1; done
	[[ -s $WORK/demo.port ]] || { cat "$WORK/demo.log"; exit 1; }
	DEMO_PORT=$(cat "$WORK/demo.port")
	export DEMO_PORT
	say "demo service on http://127.0.0.1:$DEMO_PORT ($db${1:+, $1}), writing 20 jobs/s: $(curl -s "http://127.0.0.1:$DEMO_PORT/healthz")"
}

stop_demo() {
	say "demo writes during the run: $(curl -s "http://127.0.0.1:$DEMO_PORT/stats")"
	kill "$DEMO_PID"
	wait "$DEMO_PID" 2>/dev/null || true
	DEMO_PID=
}

cd "$WORK" # backups land in ./backups here

bold "1/2  The plan (phasegate plan shows every statement; first lines)"
seed loom
export DATABASE_URL="postgresql:///loom?host=$PGHOST&port=$PGPORT&user=postgres"
start_demo loom
"$PHASEGATE" validate "$PLAN"
"$PHASEGATE" plan "$PLAN" | sed -n '1,24p'
say "..."

# apply_logged NAME: apply, its stderr also kept in $OUT/NAME.log (JSON lines
# with QUICKSTART_LOG_FORMAT=json); its exit code in APPLY_RC
apply_logged() {
	{ rc=0; "$PHASEGATE" "${LOGFMT[@]}" apply "$PLAN" 2>&1 1>&3 3>&- || rc=$?; echo "$rc" >"$WORK/apply.rc"; } 3>&1 |
		tee "$OUT/$1.log" >&2
	APPLY_RC=$(cat "$WORK/apply.rc")
}

bold "1/2  Applying it while the service keeps writing"
apply_logged happy
[[ $APPLY_RC -eq 0 ]] || { say "apply exited $APPLY_RC"; exit 1; }
say "apply exited 0"
"$PHASEGATE" status "$PLAN"
psql -X -d loom -c '\d jobs'
psql -X -d loom -At -c "SELECT 'jobs by status: ' || string_agg(status || '=' || n, ', ') FROM (SELECT status, count(*) n FROM jobs GROUP BY 1 ORDER BY 1) s"
psql -X -d loom -At -c "SELECT 'backup: ' || path || ' (' || size || ' bytes, ' || sha256 || ')' FROM phasegate.backups"
say "restore it with: pg_restore --clean --if-exists -d \"\$DATABASE_URL\" <file>"
"$PHASEGATE" report "$PLAN" -o "$OUT/report-happy.html" >/dev/null
"$PHASEGATE" events "$PLAN" --json >"$OUT/events-happy.jsonl"
say "the run's report: $OUT/report-happy.html (open it in a browser); its events: $OUT/events-happy.jsonl"
stop_demo

bold "2/2  The same plan against a buggy release (unhealthy once dual-write is on)"
seed loom_buggy
export DATABASE_URL="postgresql:///loom_buggy?host=$PGHOST&port=$PGPORT&user=postgres"
start_demo loom_buggy --buggy
apply_logged buggy
rc=$APPLY_RC
say "apply exited $rc (3 = a gate failed and the automatic rollback completed)"
"$PHASEGATE" status "$PLAN"
say "the flag is back off: $(curl -s "http://127.0.0.1:$DEMO_PORT/flags/dual_write")"
say "the service is healthy again: $(curl -s "http://127.0.0.1:$DEMO_PORT/healthz")"
psql -X -d loom_buggy -c '\d jobs'
"$PHASEGATE" report "$PLAN" -o "$OUT/report-buggy.html" >/dev/null
"$PHASEGATE" events "$PLAN" --json >"$OUT/events-buggy.jsonl"
say "the failed run's report: $OUT/report-buggy.html; its events: $OUT/events-buggy.jsonl"
stop_demo
[[ $rc -eq 3 ]] || { say "expected exit 3 from the buggy run"; exit 1; }

bold "Done: the happy path completed, and the failing gate was rolled back automatically"
