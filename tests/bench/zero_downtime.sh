#!/usr/bin/env bash
# zero_downtime.sh - what the application feels during a schema migration:
# its latency, its failed statements, the replica's lag, and how fast the
# migration's backfill goes, for the jobs.status rewrite run without a
# migration, naively, and with phasegate.
#
#   bash tests/bench/zero_downtime.sh                       # 1,000,000 rows
#   ROWS=10000000 bash tests/bench/zero_downtime.sh
#   ROWS=100000 BASE_SECS=5 bash tests/bench/zero_downtime.sh   # a quick look
#
# Everything is real: it starts its own throwaway PostgreSQL primary
# (tests/harness/pg.sh start) and a streaming replica of it (pg.sh replica),
# builds phasegate if needed (RelWithDebInfo, like backfill.sh), seeds a
# `jobs` table of ROWS rows once into a template database, and runs every
# scenario in its own copy of it (CREATE DATABASE ... TEMPLATE), after the
# replica has caught up.  The application is pgbench: APP_CLIENTS clients,
# APP_RATE transactions/s in all (-R: a fixed schedule, so a request that
# waits behind a lock counts its queueing), each a read and an update of
# jobs.status by id (zd/app.sql), running from PAD_SECS before the migration
# until PAD_SECS after it.  PostgreSQL 15's pgbench aborts a client on an
# error, so each client is its own `pgbench -c 1`, started again after every
# abort; every abort is a failed application statement, and its error text
# is kept.  Scenarios:
#   (a) baseline     no migration, BASE_SECS
#   (b) naive        the recipe as a plain migration tool with transactional
#                    DDL runs it: one transaction (zd/naive.sql, psql
#                    --single-transaction); its UPDATE alone is timed, and
#                    that single statement's rows/s is the reference the
#                    backfills are compared with
#   (c) phasegate    phasegate apply zd/plan.yaml: expand, dual-write,
#                    backfill (batch_time 100ms), enforce, contract (after a
#                    backup; the drop and the rename are one transaction);
#                    default throttle (latency budget 2x), max_replica_lag 10s
#   (d) unthrottled  the same plan with `throttle: off` (only that line differs)
# A sampler asks the primary every 250 ms for the replica's replay lag (s and
# bytes); phasegate's peak RSS is its VmHWM, read every 200 ms.  At the end it
# prints a markdown table (app p50/p99/max over the whole scenario, failed app
# statements, max replica lag, wall time of the migration itself, backfill
# rows/s -- phasegate's own "backfill of jobs done" figure -- and its ratio to
# the single UPDATE's, phasegate's peak RSS), the targets, met or missed, the
# slowest app transactions of (c) and (d) with the line of phasegate's log
# they followed, and every distinct error of a failed app statement with its
# count; and writes all of it to BENCH_OUT too.  It never fails on a figure:
# wall-clock figures on a shared machine are noisy (compare figures of one
# run).  It fails (non-zero) on bad settings, a missing tool, a failed
# migration (with the tail of its log) or a migration that did not leave the
# table as expected.
#
# Environment:
#   ROWS                  rows in jobs (default 1000000; BENCH_ROWS works too)
#   BASE_SECS             length of the baseline, seconds (15)
#   PAD_SECS              the app runs this long before and after each migration (3)
#   APP_CLIENTS           pgbench processes, one client each (4)
#   APP_RATE              transactions/s of all of them together (200)
#   BENCH_REPLICA         1 (default): a streaming replica; 0: none (no lag figures)
#   BENCH_STRIP_NEW_KEYS  1: remove the `throttle` and `max_replica_lag` settings
#                         from the plans, for a phasegate that does not know them
#                         (then (c) and (d) run the same plan)
#   BENCH_SCENARIOS       which to run, in order (default "baseline naive phasegate unthrottled")
#   BENCH_OUT             where the table is written too (/tmp/zero_downtime.md)
#   BENCH_KEEP            1: keep the work directory (logs of pgbench, phasegate, sampler)
#   BENCH_WORST           how many of the slowest app transactions of (c) and (d) to
#                         list with the phasegate log line they followed (5; 0: none)
#   PHASEGATE             the binary (default $PHG_BUILD_DIR/phasegate, built if missing)
#   PHG_BUILD_DIR         build directory (default build/)
#   PHG_TEST_PGPORT       the primary's port, which only names its socket (55441)
set -euo pipefail
export LC_ALL=C

PROG=zero_downtime.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ZD=$ROOT/tests/bench/zd
PGSH=$ROOT/tests/harness/pg.sh

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# ---- settings
ROWS=${ROWS:-${BENCH_ROWS:-1000000}}
BASE_SECS=${BASE_SECS:-15}
PAD_SECS=${PAD_SECS:-3}
APP_CLIENTS=${APP_CLIENTS:-4}
APP_RATE=${APP_RATE:-200}
REPLICA=${BENCH_REPLICA:-1}
STRIP=${BENCH_STRIP_NEW_KEYS:-0}
SCENARIOS=${BENCH_SCENARIOS:-baseline naive phasegate unthrottled}
OUT=${BENCH_OUT:-/tmp/zero_downtime.md}
KEEP=${BENCH_KEEP:-0}
WORST=${BENCH_WORST:-5}
BUILD=${PHG_BUILD_DIR:-$ROOT/build}
PHASEGATE=${PHASEGATE:-$BUILD/phasegate}
export PHG_TEST_PGPORT=${PHG_TEST_PGPORT:-55441}

posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive whole number, not '$2'"; }
posint ROWS "$ROWS"
((${#ROWS} <= 10 && ROWS <= 2000000000)) || die "ROWS must be at most 2000000000, not $ROWS"
posint BASE_SECS "$BASE_SECS"
[[ $PAD_SECS =~ ^[0-9]+$ ]] || die "PAD_SECS must be a whole number of seconds, not '$PAD_SECS'"
posint APP_CLIENTS "$APP_CLIENTS"
posint APP_RATE "$APP_RATE"
posint PHG_TEST_PGPORT "$PHG_TEST_PGPORT"
[[ $REPLICA == 0 || $REPLICA == 1 ]] || die "BENCH_REPLICA must be 0 or 1, not '$REPLICA'"
[[ $STRIP == 0 || $STRIP == 1 ]] || die "BENCH_STRIP_NEW_KEYS must be 0 or 1, not '$STRIP'"
[[ $KEEP == 0 || $KEEP == 1 ]] || die "BENCH_KEEP must be 0 or 1, not '$KEEP'"
[[ $WORST =~ ^[0-9]+$ ]] || die "BENCH_WORST must be a whole number, not '$WORST'"
read -r -a SCENARIOS <<<"$SCENARIOS"
((${#SCENARIOS[@]} > 0)) || die "BENCH_SCENARIOS is empty"
for s in "${SCENARIOS[@]}"; do
	case $s in
	baseline | naive | phasegate | unthrottled) ;;
	*) die "unknown scenario '$s' in BENCH_SCENARIOS (known: baseline naive phasegate unthrottled)" ;;
	esac
done
RATE_EACH=$(awk -v r="$APP_RATE" -v c="$APP_CLIENTS" 'BEGIN { printf "%.3f", r / c }')
RETRY_PAUSE=$(awk -v r="$RATE_EACH" 'BEGIN { printf "%.3f", 1 / r }')
for f in plan.yaml app.sql naive.sql sampler.sql latency.awk report.awk worst.awk; do
	[[ -r $ZD/$f ]] || die "missing $ZD/$f"
done
[[ -r $PGSH ]] || die "missing $PGSH"
out_dir=$(dirname "$OUT")
[[ -d $out_dir && -w $out_dir ]] || die "BENCH_OUT=$OUT: directory $out_dir is not writable"

# pgbench of the server's version: pg.sh picks the newest /usr/lib/postgresql/*/bin
find_pgbench() {
	local d
	if [[ -n ${PG_BINDIR:-} && -x ${PG_BINDIR:-}/pgbench ]]; then
		printf '%s\n' "$PG_BINDIR/pgbench"
		return 0
	fi
	for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV); do
		if [[ -x $d/pg_ctl ]]; then
			[[ -x $d/pgbench ]] && { printf '%s\n' "$d/pgbench"; return 0; }
			break
		fi
	done
	command -v pgbench
}
find_pgbench >/dev/null ||
	die "no pgbench (it comes with the PostgreSQL server package, e.g. postgresql-15; see scripts/bootstrap.sh)"
for t in awk sort sed grep; do
	command -v "$t" >/dev/null || die "no $t on PATH"
done

if [[ ! -x $PHASEGATE ]]; then
	[[ $PHASEGATE == "$BUILD/phasegate" ]] || die "PHASEGATE=$PHASEGATE is not an executable file"
	say "building phasegate (RelWithDebInfo) in $BUILD"
	{ cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"${TMPDIR:-/tmp}/zd-build.$$.log" 2>&1 &&
		cmake --build "$BUILD" -j"$(nproc)" --target phasegate >>"${TMPDIR:-/tmp}/zd-build.$$.log" 2>&1; } || {
		tail -n 30 "${TMPDIR:-/tmp}/zd-build.$$.log" >&2
		rm -f "${TMPDIR:-/tmp}/zd-build.$$.log"
		die "building phasegate failed (the last lines of the build are above)"
	}
	rm -f "${TMPDIR:-/tmp}/zd-build.$$.log"
fi

# ---- the work directory and everything that runs in the background
WORK=$(mktemp -d /tmp/phasegate-zd.XXXXXX)
chmod 755 "$WORK"
STATE=$WORK/pg.state
PG_STARTED=0
APP_DIR=""     # the running app's directory (its stop file)
APP_PIDS=()    # the client loops
SAMPLER_PID=""
MIGRATION_PID=""
STAMP_PID=""
DB=""

kill_tree() { # PID - the process and its children (it started them)
	local pid=$1 kids
	[[ -n $pid ]] || return 0
	kids=$(pgrep -P "$pid" 2>/dev/null || true)
	kill -TERM "$pid" 2>/dev/null || true
	# shellcheck disable=SC2086
	[[ -z $kids ]] || kill -TERM $kids 2>/dev/null || true
}

cleanup() {
	local rc=$? p
	trap - EXIT INT TERM
	[[ -z $APP_DIR ]] || touch "$APP_DIR/stop" 2>/dev/null || true
	for p in "${APP_PIDS[@]}"; do kill_tree "$p"; done
	kill_tree "$SAMPLER_PID"
	kill_tree "$MIGRATION_PID"
	kill_tree "$STAMP_PID"
	wait 2>/dev/null || true
	if [[ $PG_STARTED == 1 ]]; then
		bash "$PGSH" stop "$STATE" >/dev/null 2>&1 || say "pg.sh stop failed; the cluster may be left in ${PGDIR:-/tmp/phasegate-pg.*}"
		# a server of ours that pg.sh did not stop (the replica lives in the same directory)
		if [[ -n ${PGDIR:-} ]]; then
			for p in $(pgrep -f "postgres -D $PGDIR/" 2>/dev/null || true); do
				say "stopping leftover server $p of $PGDIR"
				kill -QUIT "$p" 2>/dev/null || true
			done
		fi
	fi
	if [[ $KEEP == 1 ]]; then
		say "work directory kept: $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the plans: (c) is zd/plan.yaml itself; (d) differs in the throttle line
PLAN_LAG=$(sed -n 's/^ *max_replica_lag: *\([0-9]*\)s\b.*/\1/p' "$ZD/plan.yaml")
[[ -n $PLAN_LAG ]] || die "$ZD/plan.yaml: no max_replica_lag in seconds"
grep -q 'zd:throttle' "$ZD/plan.yaml" || die "$ZD/plan.yaml: no line marked zd:throttle"
sed -e 's/^\( *\)throttle:.*# zd:throttle.*$/\1throttle: off   # zd:throttle/' "$ZD/plan.yaml" >"$WORK/plan-unthrottled.yaml"
cp "$ZD/plan.yaml" "$WORK/plan-phasegate.yaml"
grep -q '^ *throttle: off' "$WORK/plan-unthrottled.yaml" || die "could not derive the throttle: off plan"
if [[ $STRIP == 1 ]]; then
	sed -i -e '/# zd:throttle/d' -e '/# zd:replica/d' "$WORK/plan-phasegate.yaml" "$WORK/plan-unthrottled.yaml"
fi
MAX_LAG=$PLAN_LAG # the target, also when the plans do not hold it
[[ $REPLICA == 1 ]] || MAX_LAG=-
for p in phasegate unthrottled; do
	"$PHASEGATE" validate "$WORK/plan-$p.yaml" >"$WORK/validate-$p.log" 2>&1 || {
		cat "$WORK/validate-$p.log" >&2
		[[ $STRIP == 1 ]] || say "(a phasegate without the throttle/max_replica_lag settings? BENCH_STRIP_NEW_KEYS=1 runs without them)"
		die "the $p plan does not validate"
	}
done

# ---- the primary and its replica
bash "$PGSH" start "$STATE" >"$WORK/pg-start.log" 2>&1 || {
	cat "$WORK/pg-start.log" >&2
	die "could not start PostgreSQL (tests/harness/pg.sh start)"
}
PG_STARTED=1
# shellcheck source=/dev/null
source "$STATE"
PGDIR=$PHG_TEST_PGDIR
export PATH="$PHG_TEST_PGBIN:$PATH"
unset PGDATABASE PGSERVICE PGPASSWORD PGOPTIONS
command -v pgbench >/dev/null ||
	die "no pgbench in $PHG_TEST_PGBIN (it comes with the PostgreSQL server package)"
PGVERSION=$(postgres --version | sed 's/^postgres (PostgreSQL) \([0-9.]*\).*/\1/')

qp() { psql -X -q -At -v ON_ERROR_STOP=1 -d postgres -c "$1"; }
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
ms() { date +%s%3N; }

if [[ $REPLICA == 1 ]]; then
	if ! bash "$PGSH" replica "$STATE" >"$WORK/pg-replica.log" 2>&1; then
		cat "$WORK/pg-replica.log" >&2
		die "could not start the replica (tests/harness/pg.sh replica); BENCH_REPLICA=0 runs without one"
	fi
	# shellcheck source=/dev/null
	source "$STATE"
	[[ -n ${PHG_TEST_REPLICA_PORT:-} ]] || die "pg.sh replica did not record PHG_TEST_REPLICA_PORT in $STATE"
	for ((i = 0; i < 300; i++)); do
		[[ $(qp "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") -ge 1 ]] && break
		sleep 0.1
	done
	((i < 300)) || die "the replica is not streaming after 30 s (pg_stat_replication: $(qp "SELECT application_name, state FROM pg_stat_replication"))"
	[[ $(psql -X -At -p "$PHG_TEST_REPLICA_PORT" -d postgres -c "SELECT pg_is_in_recovery()") == t ]] ||
		die "the server on port $PHG_TEST_REPLICA_PORT is not a standby"
fi

# replica_catch_up - wait until the replica has replayed all WAL written so far
replica_catch_up() {
	local target i
	[[ $REPLICA == 1 ]] || return 0
	target=$(qp "SELECT pg_current_wal_lsn()")
	for ((i = 0; i < 1800; i++)); do
		[[ $(qp "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn >= '$target'") -ge 1 ]] && return 0
		sleep 0.1
	done
	die "the replica did not replay up to $target within 180 s"
}

# ---- the seed: one jobs table, copied for every scenario
say "seeding $ROWS rows (PostgreSQL $PGVERSION, replica: $([[ $REPLICA == 1 ]] && echo "port $PHG_TEST_REPLICA_PORT" || echo none))"
DB=zd_seed
qp "CREATE DATABASE zd_seed"
q "CREATE TABLE jobs (id bigserial PRIMARY KEY, repo text NOT NULL,
    status varchar(20) NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
q "INSERT INTO jobs (repo, status) SELECT 'github.com/loom/repo-' || (g % 500),
    (ARRAY['queued','running','done','done','failed'])[1 + g % 5]
    FROM generate_series(1, $ROWS) g"
q "VACUUM ANALYZE jobs"
DB=""

# ---- the app
# app_client DIR N - client N: pgbench -c 1 at its share of the rate until
# DIR/stop exists, started again after every abort (after one transaction's
# interval, as a retrying app would).  Each abort appends "EPOCH_MS<TAB>error"
# to DIR/failures.  The bench ends a run by terminating its connection once
# DIR/stop exists: that abort is not a failure.
app_client() {
	local dir=$1 n=$2 run=0 rc err lines
	while [[ ! -e $dir/stop ]]; do
		run=$((run + 1))
		err=$dir/c$n.$run.err
		rc=0
		pgbench -n -c 1 -j 1 -R "$RATE_EACH" -T 86400 -D rows="$ROWS" -f "$ZD/app.sql" \
			-l --log-prefix="$dir/log$n" "$DB" >"$dir/c$n.$run.out" 2>"$err" || rc=$?
		if [[ -e $dir/stop ]] && grep -q 'terminating connection due to administrator command' "$err"; then
			break
		fi
		lines=$(sed -E -n 's/^pgbench: error: client [0-9]+ .*aborted in command [^:]*: //p' "$err")
		[[ -n $lines ]] || lines="pgbench exited with status $rc: $(grep -m1 -i 'error' "$err" || tail -n 1 "$err")"
		printf '%s\n' "$lines" | sed "s/^/$(ms)\t/; s/  */ /g" >>"$dir/failures"
		sleep "$RETRY_PAUSE"
	done
}

app_start() { # SCENARIO
	local n
	APP_DIR=$WORK/app-$1
	mkdir -p "$APP_DIR"
	: >"$APP_DIR/failures"
	APP_PIDS=()
	for ((n = 1; n <= APP_CLIENTS; n++)); do
		app_client "$APP_DIR" "$n" &
		APP_PIDS+=("$!")
	done
}

app_stop() {
	local i p alive
	touch "$APP_DIR/stop"
	for ((i = 0; i < 300; i++)); do
		qp "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		    WHERE datname = '$DB' AND application_name = 'pgbench'" >/dev/null
		alive=0
		for p in "${APP_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		((alive)) || break
		sleep 0.2
	done
	((i < 300)) || die "the app did not stop within 60 s"
	for p in "${APP_PIDS[@]}"; do wait "$p" || true; done
	APP_PIDS=()
}

sampler_start() { # FILE
	if [[ $REPLICA == 1 ]]; then
		psql -X -q -At -F ' ' -d postgres -f "$ZD/sampler.sql" >"$1" 2>"$1.err" &
		SAMPLER_PID=$!
	fi
}

sampler_stop() {
	[[ -n $SAMPLER_PID ]] || return 0
	kill -TERM "$SAMPLER_PID" 2>/dev/null || true
	wait "$SAMPLER_PID" 2>/dev/null || true
	SAMPLER_PID=""
}

# ---- one scenario
# scenario ID NAME LABEL: a fresh copy of the seed, the app and the sampler
# around run_NAME (which sets WALL_MS, ROWS_S, RSS_MB), then its line of
# results in $WORK/results.tsv.
scenario() {
	local id=$1 name=$2 label=$3 lat failed lag_s lag_mb cols ntx p50 p99 pmax
	DB=zd_$name
	qp "CREATE DATABASE $DB TEMPLATE zd_seed STRATEGY FILE_COPY"
	replica_catch_up
	say "($id) $name: app $APP_CLIENTS x pgbench -c 1 -R $RATE_EACH, migration after ${PAD_SECS}s"
	WALL_MS=0 ROWS_S=- RSS_MB=- MIG_T0=0
	sampler_start "$WORK/lag-$name"
	app_start "$name"
	sleep "$PAD_SECS"
	MIG_T0=$(ms)
	"run_$name"
	WALL_MS=$(($(ms) - MIG_T0))
	sleep "$PAD_SECS"
	app_stop
	sampler_stop

	lat=$(cat "$APP_DIR"/log* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ { print $3 }' | sort -n | awk -f "$ZD/latency.awk")
	failed=$(wc -l <"$APP_DIR/failures")
	if [[ $REPLICA == 1 ]]; then
		read -r lag_s lag_mb < <(awk 'NF == 2 { if ($1 > s) s = $1; if ($2 > b) b = $2 }
			END { printf "%.3f %.3f\n", s, b / 1048576 }' "$WORK/lag-$name")
	else
		lag_s=- lag_mb=-
	fi
	read -r ntx p50 p99 pmax <<<"$lat"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$label" "$ntx" "$p50" "$p99" "$pmax" \
		"$failed" "$lag_s" "$lag_mb" "$(awk -v m="$WALL_MS" 'BEGIN { printf "%.1f", m / 1000 }')" \
		"$ROWS_S" "$RSS_MB" >>"$WORK/results.tsv"
	say "($id) $name: $ntx transactions, p50 $p50 ms, p99 $p99 ms, max $pmax ms, $failed failed, lag ${lag_s}s/${lag_mb}MB, migration $((WALL_MS / 1000)).$(((WALL_MS % 1000) / 100)) s"
	if ((failed > 0)); then
		cut -f2 "$APP_DIR/failures" | sort | uniq -c | sort -rn | sed 's/^/    /' >&2
		awk -F '\t' -v t0="$MIG_T0" -v id="$id" '{ printf "%s\t%s\t+%.2f s\t%s\n", id, $2, ($1 - t0) / 1000, $1 }' \
			"$APP_DIR/failures" >>"$WORK/failures.tsv"
	fi
	if [[ $name == phasegate || $name == unthrottled ]] && ((WORST > 0)); then
		{
			# shellcheck disable=SC2016
			printf '\nThe slowest app transactions of %s, when they were sent (from the start of `phasegate apply`, which took %s s), after which line of its log:\n\n```\n' \
				"($id)" "$(awk -v m="$WALL_MS" 'BEGIN { printf "%.1f", m / 1000 }')"
			awk -v t0="$MIG_T0" -v k="$WORST" -f "$ZD/worst.awk" "$WORK/phasegate-$name.log" "$APP_DIR"/log*
			printf '```\n'
		} >>"$WORK/worst.md"
	fi
	if [[ $name != baseline ]]; then
		cols=$(q "SELECT string_agg(attname || CASE WHEN attnotnull THEN '!' ELSE '' END, ',' ORDER BY attnum)
		          FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attnum > 0 AND NOT attisdropped")
		[[ $cols == 'id!,repo!,created_at!,status!' ]] ||
			die "after ($id) $name, jobs has the columns $cols (! = NOT NULL), not id!,repo!,created_at!,status!"
		[[ $(q "SELECT count(*) FROM jobs") == "$ROWS" ]] || die "after ($id) $name, jobs no longer has $ROWS rows"
	fi

	qp "DROP DATABASE $DB"
	DB=""
}

run_baseline() { sleep "$BASE_SECS"; }

run_naive() {
	local rc=0 upd_ms
	psql -X -q -At --single-transaction -v ON_ERROR_STOP=1 -d "$DB" -f "$ZD/naive.sql" \
		>"$WORK/naive.log" 2>&1 &
	MIGRATION_PID=$!
	wait "$MIGRATION_PID" || rc=$?
	MIGRATION_PID=""
	if ((rc != 0)); then
		tail -n 20 "$WORK/naive.log" >&2
		die "the naive migration failed (psql exit $rc; the end of its output is above)"
	fi
	upd_ms=$(sed -n 's/^zd_update_ms \([0-9]*\)$/\1/p' "$WORK/naive.log")
	[[ -n $upd_ms ]] || die "the naive migration did not print zd_update_ms: $(cat "$WORK/naive.log")"
	((upd_ms > 0)) || upd_ms=1
	ROWS_S=$(awk -v r="$ROWS" -v m="$upd_ms" 'BEGIN { printf "%.0f", r / (m / 1000) }')
	say "(b) naive: the single UPDATE took $upd_ms ms: $ROWS_S rows/s"
}

# stamp - copy stdin to stdout, each line prefixed by the epoch time it was read at
stamp() {
	local line
	while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done
}

run_phasegate_plan() { # PLAN LOG
	local plan=$1 log=$2 rc=0 peak=0 hwm fig
	rm -f "$WORK/phasegate.fifo"
	mkfifo "$WORK/phasegate.fifo"
	stamp <"$WORK/phasegate.fifo" >"$log" &
	STAMP_PID=$!
	(cd "$WORK" && DATABASE_URL="postgresql:///$DB?host=$PGHOST&port=$PGPORT&user=postgres" \
		exec "$PHASEGATE" apply "$plan") >"$WORK/phasegate.fifo" 2>&1 &
	MIGRATION_PID=$!
	while kill -0 "$MIGRATION_PID" 2>/dev/null; do
		hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$MIGRATION_PID/status" 2>/dev/null || true)
		[[ -n $hwm ]] && ((hwm > peak)) && peak=$hwm
		sleep 0.2
	done
	wait "$MIGRATION_PID" || rc=$?
	MIGRATION_PID=""
	wait "$STAMP_PID" || true
	STAMP_PID=""
	if ((rc != 0)); then
		say "--- the end of phasegate's log ($log; BENCH_KEEP=1 keeps it) ---"
		tail -n 25 "$log" | cut -d' ' -f2- >&2
		die "phasegate apply exited $rc (see above)"
	fi
	fig=$(sed -n 's/.*backfill of jobs done: \([0-9]*\) rows in \([0-9]*\) batches, \([0-9.]*\) s, \([0-9]*\) rows\/s.*/\1 \2 \3 \4/p' "$log" | tail -n 1)
	[[ -n $fig ]] || { tail -n 25 "$log" | cut -d' ' -f2- >&2; die "no 'backfill of jobs done' line in $log"; }
	read -r bf_rows bf_batches bf_secs ROWS_S <<<"$fig"
	RSS_MB=$(awk -v k="$peak" 'BEGIN { printf "%.1f", k / 1024 }')
	say "phasegate: backfill $bf_rows rows in $bf_batches batches, $bf_secs s, $ROWS_S rows/s; peak RSS $RSS_MB MB"
}
run_phasegate() { run_phasegate_plan "$WORK/plan-phasegate.yaml" "$WORK/phasegate-phasegate.log"; }
run_unthrottled() { run_phasegate_plan "$WORK/plan-unthrottled.yaml" "$WORK/phasegate-unthrottled.log"; }

# ---- the run
: >"$WORK/results.tsv"
: >"$WORK/failures.tsv"
: >"$WORK/worst.md"
for s in "${SCENARIOS[@]}"; do
	case $s in
	baseline) scenario a baseline "(a) baseline: no migration" ;;
	naive) scenario b naive "(b) naive: one transaction" ;;
	phasegate)
		if [[ $STRIP == 1 ]]; then
			scenario c phasegate "(c) phasegate"
		else
			scenario c phasegate "(c) phasegate (throttle 2x, max_replica_lag ${PLAN_LAG}s)"
		fi ;;
	unthrottled) scenario d unthrottled "(d) phasegate, throttle: off" ;;
	esac
done

# ---- the report
rows_fmt=$(printf '%s' "$ROWS" | sed ':a; s/\B[0-9]\{3\}\>/,&/; ta')
if [[ $REPLICA == 1 ]]; then setup="one streaming replica (its lag sampled every 250 ms)"; else setup="no replica"; fi
note=""
[[ $STRIP == 0 ]] || note="; plans without the throttle and max_replica_lag settings (BENCH_STRIP_NEW_KEYS=1), so (c) and (d) ran the same plan"
{
	# shellcheck disable=SC2016
	printf '`bash tests/bench/zero_downtime.sh`: a jobs table of %s rows; the app is pgbench, %s clients, %s tx/s in all,\n' \
		"$rows_fmt" "$APP_CLIENTS" "$APP_RATE"
	# shellcheck disable=SC2016
	printf 'each a read and an update of `status` by id, from %s s before to %s s after the migration; PostgreSQL %s,\n' \
		"$PAD_SECS" "$PAD_SECS" "$PGVERSION"
	printf 'fsync off, %s; %s cores%s.\n' "$setup" "$(nproc)" "$note"
	echo
	awk -F '\t' -v max_lag="$MAX_LAG" -f "$ZD/report.awk" "$WORK/results.tsv"
	[[ ! -s $WORK/worst.md ]] || cat "$WORK/worst.md"
	if [[ -s $WORK/failures.tsv ]]; then
		echo
		echo "Failed app statements (scenario, count, error, the first one's time from the migration's start):"
		echo
		awk -F '\t' '{ k = $1 "\t" $2; if (!(k in n)) { first[k] = $3; order[++m] = k } n[k]++ }
			END { for (i = 1; i <= m; i++) { split(order[i], f, "\t"); printf "- (%s) %d × `%s` (first at %s)\n", f[1], n[order[i]], f[2], first[order[i]] } }' \
			"$WORK/failures.tsv"
	fi
} >"$WORK/report.md"
echo
cat "$WORK/report.md"
cp "$WORK/report.md" "$OUT"
say "written to $OUT"
