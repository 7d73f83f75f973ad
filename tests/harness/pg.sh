#!/usr/bin/env bash
# pg.sh - a throwaway PostgreSQL cluster for the tests.
#
#   pg.sh start STATE_FILE   initdb + start a server in /tmp/phasegate-pg.XXXXXX,
#                            listening only on a unix socket in that directory;
#                            writes STATE_FILE (shell `export` lines)
#   pg.sh stop  STATE_FILE   stop it, remove its directory and STATE_FILE
#                            (idempotent: a missing STATE_FILE is fine)
#   pg.sh env   STATE_FILE   print STATE_FILE
#   pg.sh replica STATE_FILE add a streaming hot standby of that (running)
#                            cluster: pg_basebackup into PHG_TEST_PGDIR/replica,
#                            started on the same socket directory with port
#                            PGPORT+1, connected as application_name
#                            phg_replica; returns once pg_stat_replication on
#                            the primary shows it 'streaming'; appends its
#                            port and data directory to STATE_FILE (nothing
#                            to do if it is already running).  `stop` stops
#                            it first; it lives in the primary's directory.
#
# STATE_FILE exports PGHOST (the socket directory), PGPORT, PGUSER=postgres,
# PHG_TEST_PGDIR (the temp directory), PHG_TEST_PGDATA (its data directory)
# and PHG_TEST_PGBIN (the server's bin directory, which also has psql,
# createdb, pg_dump, pg_restore of the same version); after `replica` also
# PHG_TEST_REPLICA_PORT and PHG_TEST_REPLICA_PGDATA (same PGHOST and PGUSER).
#
# Environment: PG_BINDIR (use these binaries), PHG_TEST_PGPORT (default 54329;
# the port only names the socket file, so clusters in different directories
# never collide), PHG_TEST_REPLICA_PORT (the replica's, default PGPORT+1).
# PostgreSQL refuses to run as root: as root, the directory is given to the
# `postgres` user and initdb/pg_ctl/pg_basebackup run as that user.
set -euo pipefail

PROG=pg.sh
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
	printf 'usage: %s start|stop|env|replica STATE_FILE\n' "$PROG" >&2
	exit 2
}

find_bindir() {
	local d best=""
	if [[ -n ${PG_BINDIR:-} ]]; then
		[[ -x $PG_BINDIR/pg_ctl && -x $PG_BINDIR/initdb ]] ||
			die "PG_BINDIR=$PG_BINDIR has no pg_ctl/initdb"
		printf '%s\n' "$PG_BINDIR"
		return
	fi
	# Newest version first (sort -V: 9.6 < 10 < 15 < 16).
	for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV); do
		if [[ -x $d/pg_ctl && -x $d/initdb ]]; then
			best=$d
			break
		fi
	done
	if [[ -z $best ]] && command -v initdb >/dev/null 2>&1; then
		best=$(dirname "$(command -v initdb)")
	fi
	[[ -n $best ]] ||
		die "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; run scripts/bootstrap.sh (or set PG_BINDIR)"
	printf '%s\n' "$best"
}

# as_owner USER CMD... - run CMD as USER (via runuser when we are root).
as_owner() {
	local user=$1
	shift
	if [[ $(id -u) -eq 0 && $user != root ]]; then
		runuser -u "$user" -- "$@"
	else
		"$@"
	fi
}

# Remove a directory this script created, and nothing else.
remove_dir() {
	local dir=$1
	[[ -n $dir && -e $dir ]] || return 0
	if [[ $dir != /tmp/phasegate-pg.* ]]; then
		warn "refusing to remove unexpected directory '$dir'"
		return 0
	fi
	rm -rf -- "$dir"
}

postmaster_pid() {
	local f=$1/postmaster.pid pid
	[[ -r $f ]] || return 1
	read -r pid <"$f" || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	printf '%s\n' "$pid"
}

# wait_gone PID SECONDS - wait for the process to exit.
wait_gone() {
	local pid=$1 i
	for ((i = 0; i < $2 * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		# exited, waiting for its parent to reap it: gone
		[[ $(ps -o stat= -p "$pid" 2>/dev/null) != Z* ]] || return 0
		sleep 0.1
	done
	! kill -0 "$pid" 2>/dev/null
}

cmd_start() {
	local state=$1 bindir port dir data user rc version
	if [[ -e $state ]]; then
		say "stale state file $state found: stopping that cluster first"
		cmd_stop "$state"
	fi
	bindir=$(find_bindir)
	port=${PHG_TEST_PGPORT:-54329}
	[[ $port =~ ^[0-9]+$ ]] || die "PHG_TEST_PGPORT must be a number, not '$port'"

	dir=$(mktemp -d /tmp/phasegate-pg.XXXXXX)
	data=$dir/data
	user=$(id -un)
	if [[ $(id -u) -eq 0 ]]; then
		getent passwd postgres >/dev/null ||
			{ remove_dir "$dir"; die "running as root but there is no 'postgres' user to run the server; run scripts/bootstrap.sh"; }
		chown postgres:postgres "$dir"
		user=postgres
	fi
	# /tmp is world-traversable; the directory itself stays 0700 and is
	# owned by the server's user (root can reach it anyway).

	rc=0
	(cd "$dir" && as_owner "$user" "$bindir/initdb" -D "$data" -A trust \
		-U postgres --no-sync -E UTF8 --locale=C) >"$dir/initdb.log" 2>&1 || rc=$?
	if [[ $rc -ne 0 ]]; then
		warn "initdb failed (exit $rc):"
		cat "$dir/initdb.log" >&2 || true
		remove_dir "$dir"
		exit 1
	fi

	# trust for everyone but the members of phg_pw_users (a test creates
	# it), who log in with a password: the authentication-failure path
	{ printf 'local all +phg_pw_users scram-sha-256\n'; cat "$data/pg_hba.conf"; } >"$dir/hba.tmp" &&
		cat "$dir/hba.tmp" >"$data/pg_hba.conf" && rm -f "$dir/hba.tmp"

	rc=0
	(cd "$dir" && as_owner "$user" "$bindir/pg_ctl" -D "$data" -w -t 60 \
		-l "$dir/server.log" \
		-o "-c listen_addresses='' -c unix_socket_directories=$dir -c port=$port -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c log_min_messages=warning" \
		start) >"$dir/pg_ctl.log" 2>&1 || rc=$?
	if [[ $rc -ne 0 ]]; then
		warn "the server failed to start (pg_ctl exit $rc):"
		cat "$dir/pg_ctl.log" >&2 || true
		warn "--- $dir/server.log ---"
		cat "$dir/server.log" >&2 || true
		stop_server "$data" "$user" "$bindir"
		remove_dir "$dir"
		exit 1
	fi

	{
		printf 'export PGHOST=%q\n' "$dir"
		printf 'export PGPORT=%q\n' "$port"
		printf 'export PGUSER=postgres\n'
		printf 'export PHG_TEST_PGDIR=%q\n' "$dir"
		printf 'export PHG_TEST_PGDATA=%q\n' "$data"
		printf 'export PHG_TEST_PGBIN=%q\n' "$bindir"
	} >"$state.tmp"
	mv -f -- "$state.tmp" "$state"
	version=$("$bindir/postgres" --version 2>/dev/null || echo postgres)
	say "started $version in $dir (socket port $port, user $user); state in $state"
}

# stop_server DATA USER - fast, then immediate, then SIGKILL; never fails.
stop_server() {
	local data=$1 user=$2 bindir=${3:-} pid pg_ctl
	pid=$(postmaster_pid "$data") || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	pg_ctl=${bindir:+$bindir/}pg_ctl
	[[ -n $bindir ]] || pg_ctl=$(find_bindir)/pg_ctl
	if (cd / && as_owner "$user" "$pg_ctl" -D "$data" -m fast -w -t 30 stop) >/dev/null 2>&1 &&
		wait_gone "$pid" 5; then
		return 0
	fi
	warn "fast shutdown failed; trying immediate"
	if (cd / && as_owner "$user" "$pg_ctl" -D "$data" -m immediate -w -t 15 stop) >/dev/null 2>&1 &&
		wait_gone "$pid" 5; then
		return 0
	fi
	warn "immediate shutdown failed; killing postmaster $pid"
	kill -KILL "$pid" 2>/dev/null || true
	wait_gone "$pid" 10 || warn "postmaster $pid is still alive"
}

cmd_stop() {
	local state=$1 dir data bindir user
	if [[ ! -e $state ]]; then
		say "no state file $state: nothing to stop"
		return 0
	fi
	# The state file is ours: plain export lines.  Read it in a subshell so
	# nothing leaks into this one.
	# shellcheck source=/dev/null
	dir=$(set +u; . "$state" >/dev/null 2>&1; printf '%s' "${PHG_TEST_PGDIR:-}")
	# shellcheck source=/dev/null
	bindir=$(set +u; . "$state" >/dev/null 2>&1; printf '%s' "${PHG_TEST_PGBIN:-}")
	data=$dir/data
	# The replica first: a primary's fast shutdown waits for its walsenders.
	if [[ -n $dir && -d $dir/replica ]]; then
		user=$(stat -c %U "$dir/replica")
		stop_server "$dir/replica" "$user" "$bindir"
	fi
	if [[ -n $dir && -d $data ]]; then
		user=$(stat -c %U "$data")
		stop_server "$data" "$user" "$bindir"
	fi
	remove_dir "$dir"
	rm -f -- "$state" "$state.tmp"
	say "stopped${dir:+ and removed $dir}"
}

# state_var STATE_FILE NAME - print NAME as STATE_FILE sets it (or nothing).
state_var() {
	# shellcheck source=/dev/null
	(set +u; . "$1" >/dev/null 2>&1; printf '%s' "${!2:-}")
}

# psql_at DIR PORT SQL - one value from the server on socket DIR:PORT
# (uses the caller's $bindir).
psql_at() {
	"$bindir/psql" -X -A -t -q -h "$1" -p "$2" -U postgres -d postgres \
		-c "$3" 2>/dev/null
}

# replica_failed DIR USER MESSAGE LOG... - report, show the logs, stop and
# remove the replica, exit 1 (uses the caller's $bindir).
replica_failed() {
	local dir=$1 user=$2 msg=$3 log
	shift 3
	warn "$msg"
	for log in "$@"; do
		[[ -s $log ]] || continue
		warn "--- $log ---"
		cat "$log" >&2 || true
	done
	stop_server "$dir/replica" "$user" "$bindir"
	remove_dir "$dir/replica"
	exit 1
}

cmd_replica() {
	local state=$1 bindir dir data port rport replica user rc pid st conninfo deadline
	[[ -r $state ]] || die "no state file $state (start the primary with: $PROG start $state)"
	dir=$(state_var "$state" PHG_TEST_PGDIR)
	port=$(state_var "$state" PGPORT)
	bindir=$(state_var "$state" PHG_TEST_PGBIN)
	[[ -n $dir && -n $port && -n $bindir ]] ||
		die "$state does not describe a cluster (no PHG_TEST_PGDIR/PGPORT/PHG_TEST_PGBIN)"
	[[ -x $bindir/pg_basebackup ]] || die "no pg_basebackup in $bindir"
	data=$dir/data
	replica=$dir/replica
	if ! pid=$(postmaster_pid "$data") || ! kill -0 "$pid" 2>/dev/null ||
		[[ $(psql_at "$dir" "$port" 'SELECT 1') != 1 ]]; then
		die "the primary of $state (socket $dir port $port) is not running"
	fi
	user=$(stat -c %U "$data")

	if [[ -d $replica ]]; then
		if pid=$(postmaster_pid "$replica") && kill -0 "$pid" 2>/dev/null &&
			[[ -n $(state_var "$state" PHG_TEST_REPLICA_PORT) ]]; then
			say "a replica of $state is already running ($replica, port $(state_var "$state" PHG_TEST_REPLICA_PORT))"
			return 0
		fi
		say "stale replica $replica found: removing it"
		stop_server "$replica" "$user" "$bindir"
		remove_dir "$replica"
	fi

	rport=${PHG_TEST_REPLICA_PORT:-$((port + 1))}
	[[ $rport =~ ^[0-9]+$ ]] || die "PHG_TEST_REPLICA_PORT must be a number, not '$rport'"
	[[ $rport != "$port" ]] || die "the replica's port $rport is the primary's"

	# -R writes standby.signal and primary_conninfo (from this connection
	# string, application_name included) to postgresql.auto.conf.
	rc=0
	(cd "$dir" && as_owner "$user" "$bindir/pg_basebackup" -D "$replica" -R \
		-X stream -c fast --no-sync \
		-d "host=$dir port=$port user=postgres application_name=phg_replica") \
		>"$dir/basebackup.log" 2>&1 || rc=$?
	if [[ $rc -ne 0 ]]; then
		replica_failed "$dir" "$user" "pg_basebackup failed (exit $rc):" \
			"$dir/basebackup.log" "$dir/server.log"
	fi
	conninfo=$(grep '^primary_conninfo' "$replica/postgresql.auto.conf" || true)
	if [[ $conninfo != *application_name=phg_replica* ]]; then
		replica_failed "$dir" "$user" \
			"pg_basebackup -R wrote no application_name=phg_replica into primary_conninfo: '$conninfo'"
	fi

	# max_connections: a hot standby needs at least the primary's.
	rc=0
	(cd "$dir" && as_owner "$user" "$bindir/pg_ctl" -D "$replica" -w -t 60 \
		-l "$dir/replica.log" \
		-o "-c listen_addresses='' -c unix_socket_directories=$dir -c port=$rport -c hot_standby=on -c hot_standby_feedback=off -c wal_receiver_status_interval=1s -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c log_min_messages=warning" \
		start) >"$dir/replica_pg_ctl.log" 2>&1 || rc=$?
	if [[ $rc -ne 0 ]]; then
		replica_failed "$dir" "$user" "the replica failed to start (pg_ctl exit $rc):" \
			"$dir/replica_pg_ctl.log" "$dir/replica.log"
	fi

	st=""
	deadline=$((SECONDS + 60))
	while :; do
		st=$(psql_at "$dir" "$port" \
			"SELECT state FROM pg_stat_replication WHERE application_name = 'phg_replica'") || st=""
		[[ $st != streaming && $SECONDS -lt $deadline ]] || break
		sleep 0.1
	done
	if [[ $st != streaming ]]; then
		replica_failed "$dir" "$user" \
			"the replica did not reach state 'streaming' in pg_stat_replication within 60 s (last state: '${st:-none}')" \
			"$dir/replica.log"
	fi

	{
		grep -v '^export PHG_TEST_REPLICA_' -- "$state" || true
		printf 'export PHG_TEST_REPLICA_PORT=%q\n' "$rport"
		printf 'export PHG_TEST_REPLICA_PGDATA=%q\n' "$replica"
	} >"$state.tmp"
	mv -f -- "$state.tmp" "$state"
	say "started a streaming replica in $replica (socket port $rport, application_name phg_replica); state in $state"
}

cmd_env() {
	[[ -r $1 ]] || die "no state file $1 (is the cluster started?)"
	cat -- "$1"
}

[[ $# -eq 2 ]] || usage
case $1 in
start) cmd_start "$2" ;;
stop) cmd_stop "$2" ;;
env) cmd_env "$2" ;;
replica) cmd_replica "$2" ;;
*) usage ;;
esac
