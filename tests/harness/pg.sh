#!/usr/bin/env bash
# pg.sh - a throwaway PostgreSQL cluster for the tests.
#
#   pg.sh start STATE_FILE   initdb + start a server in /tmp/phasegate-pg.XXXXXX,
#                            listening only on a unix socket in that directory;
#                            writes STATE_FILE (shell `export` lines)
#   pg.sh stop  STATE_FILE   stop it, remove its directory and STATE_FILE
#                            (idempotent: a missing STATE_FILE is fine)
#   pg.sh env   STATE_FILE   print STATE_FILE
#
# STATE_FILE exports PGHOST (the socket directory), PGPORT, PGUSER=postgres,
# PHG_TEST_PGDIR (the temp directory), PHG_TEST_PGDATA (its data directory)
# and PHG_TEST_PGBIN (the server's bin directory, which also has psql,
# createdb, pg_dump, pg_restore of the same version).
#
# Environment: PG_BINDIR (use these binaries), PHG_TEST_PGPORT (default 54329;
# the port only names the socket file, so clusters in different directories
# never collide).  PostgreSQL refuses to run as root: as root, the directory
# is given to the `postgres` user and initdb/pg_ctl run as that user.
set -euo pipefail

PROG=pg.sh
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
	printf 'usage: %s start|stop|env STATE_FILE\n' "$PROG" >&2
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
	if [[ -n $dir && -d $data ]]; then
		user=$(stat -c %U "$data")
		stop_server "$data" "$user" "$bindir"
	fi
	remove_dir "$dir"
	rm -f -- "$state" "$state.tmp"
	say "stopped${dir:+ and removed $dir}"
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
*) usage ;;
esac
