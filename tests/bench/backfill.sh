#!/usr/bin/env bash
# backfill.sh - how fast phasegate's batched, checkpointed backfill is,
# against the single-statement UPDATE of the same table in the same run.
#
#   bash tests/bench/backfill.sh            # 1,000,000 rows
#   BENCH_ROWS=10000000 bash tests/bench/backfill.sh
#   BENCH_BATCH=20000 bash tests/bench/backfill.sh
#
# Starts its own throwaway PostgreSQL (tests/harness/pg.sh) unless
# PHG_TEST_STATE names a running one, builds phasegate if needed, seeds two
# identical tables, then:
#   baseline   UPDATE jobs_a SET new_status = status       (one statement)
#   phasegate  backfill of jobs_b, batch_size BENCH_BATCH (default 5000),
#              each batch its own transaction with its checkpoint
# and prints rows/s of each, the ratio, and phasegate's peak RSS.
# Wall-clock figures on a shared machine are noisy: compare the ratio, which
# is measured in the same run; never assert on them in tests.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROWS=${BENCH_ROWS:-1000000}
BATCH=${BENCH_BATCH:-5000}
BUILD=${PHG_BUILD_DIR:-$ROOT/build}
PHASEGATE=${PHASEGATE:-$BUILD/phasegate}

if [[ ! -x $PHASEGATE ]]; then
	cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build "$BUILD" -j"$(nproc)" --target phasegate >/dev/null
fi

WORK=$(mktemp -d /tmp/phasegate-bench.XXXXXX)
chmod 755 "$WORK"
OWN_PG=0
STATE=${PHG_TEST_STATE:-}
cleanup() {
	if [[ $OWN_PG == 1 ]]; then bash "$ROOT/tests/harness/pg.sh" stop "$STATE" >/dev/null 2>&1 || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT
if [[ -z $STATE ]]; then
	STATE=$WORK/pg.state
	OWN_PG=1
	bash "$ROOT/tests/harness/pg.sh" start "$STATE" >/dev/null
fi
# shellcheck disable=SC1090
source "$STATE"
export PATH="$PHG_TEST_PGBIN:$PATH"
unset PGDATABASE PGSERVICE PGPASSWORD
DB=bench_$$
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
ms() { date +%s%3N; }

psql -X -q -d postgres -c "CREATE DATABASE $DB"
export DATABASE_URL="postgresql:///$DB?host=$PGHOST&port=$PGPORT&user=postgres"
for t in jobs_a jobs_b; do
	q "CREATE TABLE $t (id bigserial PRIMARY KEY, repo text NOT NULL,
	    status varchar(20) NOT NULL, new_status varchar(20),
	    created_at timestamptz NOT NULL DEFAULT now())"
	q "INSERT INTO $t (repo, status) SELECT 'github.com/loom/repo-' || (g % 500),
	    (ARRAY['queued','running','done','done','failed'])[1 + g % 5]
	    FROM generate_series(1, $ROWS) g"
	q "VACUUM ANALYZE $t"
done
q "CHECKPOINT"

t0=$(ms)
q "UPDATE jobs_a SET new_status = status"
base_ms=$(($(ms) - t0))

cat >"$WORK/plan.yaml" <<EOF
version: 1
name: bench-backfill
phases:
  - name: backfill
    steps:
      - backfill: { table: jobs_b, set: "new_status = status", where: "new_status IS NULL", batch_size: $BATCH }
EOF
q "CHECKPOINT"
t0=$(ms)
"$PHASEGATE" apply "$WORK/plan.yaml" -q &
pid=$!
peak=0
while kill -0 "$pid" 2>/dev/null; do
	hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
	[[ -n $hwm && $hwm -gt $peak ]] && peak=$hwm
	sleep 0.05
done
wait "$pid"
pg_ms=$(($(ms) - t0))

left=$(q "SELECT count(*) FROM jobs_b WHERE new_status IS DISTINCT FROM status")
[[ $left == 0 ]] || { echo "bench: $left rows not backfilled" >&2; exit 1; }

awk -v rows="$ROWS" -v b="$base_ms" -v p="$pg_ms" -v batch="$BATCH" -v rss="$peak" 'BEGIN {
	br = rows / (b / 1000.0); pr = rows / (p / 1000.0)
	printf "rows                         %d\n", rows
	printf "baseline: one UPDATE         %8.2f s  %10.0f rows/s\n", b / 1000.0, br
	printf "phasegate: batches of %-6d %8.2f s  %10.0f rows/s  (includes connect, state, final sweep)\n", batch, p / 1000.0, pr
	printf "ratio phasegate / baseline   %8.2f\n", pr / br
	printf "phasegate peak RSS           %8.1f MB\n", rss / 1024.0
}'
psql -X -q -d postgres -c "DROP DATABASE $DB"
