#!/usr/bin/env bash
# test_harness_replica.sh - `pg.sh replica` gives a streaming hot standby:
# rows written on the primary show up on it, pg_stat_replication shows it as
# phg_replica / streaming, and replay_lag there grows while its replay is
# paused (pg_wal_replay_pause) and falls back once replay resumes.  `pg.sh
# stop` stops both servers and removes their directory.
#
# The replica is added to a primary of this test's own (other tests share
# the PHG_TEST_STATE cluster); its port only names its socket file.
# shellcheck source=/dev/null
source "${PHG_TEST_LIB:?run through ctest, or set PHG_TEST_LIB=tests/lib.sh}"

pgsh=$PHG_SOURCE_DIR/tests/harness/pg.sh
state=$T/pg.state
# Registered before the start: stop is a no-op without the state file.
on_exit "bash '$pgsh' stop '$state' >/dev/null"

assert_exit 0 env PHG_TEST_PGPORT="${PHG_TEST_REPLICA_TEST_PGPORT:-55431}" \
	bash "$pgsh" start "$state"
assert_exit 0 bash "$pgsh" replica "$state"
assert_file_contains "$T/out" "started a streaming replica"

# The state file's values, without touching this shell's PGHOST/PGPORT.
state_var() {
	(set +u; source "$state"; printf '%s' "${!1:-}")
}
host=$(state_var PGHOST)
pport=$(state_var PGPORT)
rport=$(state_var PHG_TEST_REPLICA_PORT)
rdata=$(state_var PHG_TEST_REPLICA_PGDATA)
pgdir=$(state_var PHG_TEST_PGDIR)
assert_eq "$((pport + 1))" "$rport" "the replica's port is the primary's + 1"
assert_eq "$pgdir/replica" "$rdata" "the replica's data directory"
assert_eq 1 "$(grep -c '^export PHG_TEST_REPLICA_PORT=' "$state")" "one replica port line"

# at PORT SQL - one trimmed value from the server on PORT.
at() {
	psql -X -A -t -q -v ON_ERROR_STOP=1 -h "$host" -p "$1" -U postgres \
		-d postgres -c "$2"
}
primary() { at "$pport" "$1"; }
replica() { at "$rport" "$1"; }

assert_eq f "$(primary 'SELECT pg_is_in_recovery()')" "the primary is a primary"
assert_eq t "$(replica 'SELECT pg_is_in_recovery()')" "the replica is in recovery"
assert_eq "$host" "$(replica 'SHOW unix_socket_directories')" "replica socket directory"
assert_eq "" "$(replica 'SHOW listen_addresses')" "no TCP listener on the replica"
assert_eq "on|off|1s|off" \
	"$(replica "SELECT current_setting('hot_standby') || '|' || current_setting('hot_standby_feedback') || '|' || current_setting('wal_receiver_status_interval') || '|' || current_setting('fsync')")" \
	"replica settings"
assert_eq "phg_replica|streaming" \
	"$(primary "SELECT application_name || '|' || state FROM pg_stat_replication")" \
	"pg_stat_replication on the primary"

# Again: it is running, nothing to do.
assert_exit 0 bash "$pgsh" replica "$state"
assert_file_contains "$T/out" "already running"
assert_eq 1 "$(grep -c '^export PHG_TEST_REPLICA_PORT=' "$state")" "still one replica port line"

# Rows written on the primary are replayed on the replica.
primary "CREATE TABLE items (id int PRIMARY KEY, pad text NOT NULL)" >/dev/null
primary "INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 100) g" >/dev/null
replica_count_is() {
	[[ $(replica "SELECT count(*) FROM items" 2>/dev/null) == "$1" ]]
}
wait_for -t 30 replica_count_is 100
assert_eq "100|row 100" "$(replica 'SELECT count(*), max(pad) FILTER (WHERE id = 100) FROM items')" \
	"the rows on the replica"
assert_exit '!' psql -X -h "$host" -p "$rport" -U postgres -d postgres \
	-v ON_ERROR_STOP=1 -c "INSERT INTO items VALUES (0, 'no')"
assert_file_contains "$T/err" "read-only transaction"
assert_eq "phg_replica|streaming" \
	"$(primary "SELECT application_name || '|' || state FROM pg_stat_replication")" \
	"still streaming"

# Replay paused: ~5 MB of WAL arrive but are not applied, and replay_lag on
# the primary grows (it is refreshed at each status message of the replica,
# every wal_receiver_status_interval = 1 s).
lag_sql="SELECT coalesce(round(extract(epoch from replay_lag), 3)::text, 'null') FROM pg_stat_replication WHERE application_name = 'phg_replica'"
replica "SELECT pg_wal_replay_pause()" >/dev/null
primary "INSERT INTO items SELECT g, repeat('x', 1000) FROM generate_series(101, 5100) g" >/dev/null
samples=""
for ((i = 1; i <= 6; i++)); do
	sleep 0.5
	samples+="$((i * 5 / 10)).$((i * 5 % 10))s=$(primary "$lag_sql") "
done
lag=$(primary "$lag_sql")
printf 'replay_lag while replay is paused: %s\n' "$samples"
assert_eq 100 "$(replica 'SELECT count(*) FROM items')" "nothing replayed while paused"
assert_eq t "$(primary "SELECT extract(epoch from replay_lag) > 1 FROM pg_stat_replication WHERE application_name = 'phg_replica'")" \
	"replay_lag > 1 s after 3 s of paused replay (now $lag; samples: $samples)"
assert_eq t "$(primary "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) > 5000000 FROM pg_stat_replication")" \
	"more than 5 MB of WAL not replayed"

# Resumed: it catches up and replay_lag falls under 1 s (null once the
# replica has replayed everything for a while).
replica "SELECT pg_wal_replay_resume()" >/dev/null
lag_under_1s() {
	[[ $(primary "SELECT coalesce(extract(epoch from replay_lag), 0) < 1 FROM pg_stat_replication WHERE application_name = 'phg_replica'") == t ]]
}
wait_for -t 20 lag_under_1s
wait_for -t 20 replica_count_is 5100

# stop: both servers gone, the directory removed.
ppid=$(head -n 1 "$pgdir/data/postmaster.pid")
rpid=$(head -n 1 "$rdata/postmaster.pid")
kill -0 "$ppid" || fail "the primary's postmaster $ppid is not running"
kill -0 "$rpid" || fail "the replica's postmaster $rpid is not running"
assert_exit 0 bash "$pgsh" stop "$state"
# an exited postmaster not yet reaped by its parent (a zombie) is gone
alive() { kill -0 "$1" 2>/dev/null && [[ $(ps -o stat= -p "$1" 2>/dev/null) != Z* ]]; }
if alive "$ppid"; then fail "the primary ($ppid) survived stop"; fi
if alive "$rpid"; then fail "the replica ($rpid) survived stop"; fi
[[ ! -e $pgdir ]] || fail "stop left $pgdir behind"
[[ ! -e $state ]] || fail "stop left $state behind"

pass
