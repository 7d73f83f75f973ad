#!/usr/bin/env bash
# test_gates_backup.sh - the backup gate (SPEC section 2 "Gates", issue 3
# "Backup gate", README "Restoring a backup").
#
# 1. A real pg_dump: a row in phasegate.backups whose path, size and sha256
#    match the file; `pg_restore --list` shows the touched table (and not an
#    untouched one: scope tables); the README's restore command into a fresh
#    database gives back the rows as they were before the phase.
# 2. A fake pg_dump (PHG_PG_DUMP) that fails, hangs past `backup.timeout`,
#    writes garbage, or writes nothing: exit 3, the message names the cause,
#    no step of the phase ran, no file is left in the backup directory, the
#    hung fake is not left running (and it ran at nice 10: pg_dump gets a
#    lower CPU priority than the application).
# 3. A backup directory that cannot be created (under a regular file):
#    exit 3, the directory is named, no step ran.
# 4. scope: database dumps every table.
# 5. kill -9 of phasegate during pg_dump: the dump dies with it (setpriv
#    --pdeathsig), and the next apply removes the .partial file it left.
# 6. Durable before recorded (strace): phasegate fsyncs the verified
#    .partial file before it renames it, and the directory after.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

cols() {
	psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
		WHERE attrelid = '$1'::regclass AND attnum > 0 AND NOT attisdropped"
}
plan_states() {
	psql_q "SELECT r.state || ' ' || string_agg(p.name || '=' || p.state, ' ' ORDER BY p.idx)
		FROM phasegate.runs r JOIN phasegate.phases p ON p.run_id = r.id
		WHERE r.plan = '$1' GROUP BY r.id, r.state ORDER BY r.id DESC LIMIT 1"
}
rows_md5() {
	psql -X -A -t -q -v ON_ERROR_STOP=1 -d "$1" -c \
		"SELECT count(*) || ':' || md5(string_agg(id || '|' || coalesce(name, '~') || '|' || n, ',' ORDER BY id)) FROM $2"
}

new_db gates_backup
psql_q "CREATE TABLE bk (id int PRIMARY KEY, name text, n numeric NOT NULL);
	INSERT INTO bk SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'row ''' || g || E'''\\t' END, g * 1.5
	FROM generate_series(1, 5000) g;
	CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1)" >/dev/null
orig=$(rows_md5 "$TEST_DB" bk)

# mkplan NAME TABLE DIR [BACKUP_EXTRA] - phase "keep" (add_column k), then
# phase "guarded" (backup: true; add_column g, then a backfill)
mkplan() {
	cat >"$T/$1.yaml" <<EOF
version: 1
name: backup-$1
backup: { dir: "$3"${4:+, $4} }
phases:
  - name: keep
    steps:
      - add_column: { table: $2, column: k, type: int }
  - name: guarded
    backup: true
    steps:
      - add_column: { table: $2, column: g, type: int }
      - backfill: { table: $2, set: "g = 1", down: "g = NULL" }
EOF
}

# ---------------------------------------------------------------- 1. real pg_dump
mkplan real bk "$T/backups"
assert_exit 0 phg apply "$T/real.yaml"
assert_file_contains "$T/err" "backup verified"
assert_eq 1 "$(psql_q "SELECT count(*) FROM phasegate.backups")" "one backup recorded"
IFS='|' read -r b_path b_size b_sum b_scope b_phase b_ms < <(psql_q \
	"SELECT path, size, sha256, scope, phase, duration_ms FROM phasegate.backups")
[[ -f $b_path ]] || fail "the recorded backup file '$b_path' does not exist"
[[ $b_path == "$T/backups/"* ]] || fail "backup '$b_path' is not in the backup directory"
assert_eq "guarded tables" "$b_phase $b_scope" "the backup's phase and scope"
assert_eq "$(stat -c %s "$b_path")" "$b_size" "the recorded size is the file's"
((b_size > 0)) || fail "empty backup"
sum=$(sha256sum "$b_path" | cut -d' ' -f1)
[[ $b_sum == "$sum" || $b_sum == "sha256:$sum" ]] ||
	fail "recorded sha256 '$b_sum' is not the file's ($sum)"
[[ $b_ms =~ ^[0-9]+$ ]] || fail "duration_ms '$b_ms'"
pg_restore --list "$b_path" >"$T/list.txt"
grep -E 'TABLE DATA public bk ' "$T/list.txt" >/dev/null || fail "no TABLE DATA of bk in the backup"
if grep -E 'TABLE (DATA )?public other ' "$T/list.txt" >/dev/null; then
	fail "scope tables: the backup holds table 'other', which the phase does not touch"
fi
assert_eq 1 "$(find "$T/backups" -type f | wc -l)" "one file in the backup directory (no .partial)"
# the backup was taken before the steps: it holds the rows as they were, with
# phase keep's column k but not g; restore it with the README's command
assert_eq "id,name,n,k,g" "$(cols bk)" "the plan completed"
restore_db="${TEST_DB}_restore"
createdb "$restore_db"
on_exit "_phg_drop_db '$restore_db'"
restore_url="postgresql:///${restore_db}?host=${PGHOST}&port=${PGPORT}&user=postgres"
pg_restore --clean --if-exists --single-transaction -d "$restore_url" "$b_path"
assert_eq "$orig" "$(rows_md5 "$restore_db" bk)" "the restored rows are the rows before the phase"
assert_eq "id,name,n,k" "$(psql -X -A -t -q -d "$restore_db" -c "SELECT string_agg(attname, ','
	ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'bk'::regclass AND attnum > 0
	AND NOT attisdropped")" "the backup was taken before the phase's steps"

# ---------------------------------------------------------------- 2. fake pg_dump
cat >"$T/fake_pg_dump" <<'EOF'
#!/usr/bin/env bash
# a fake pg_dump for test_gates_backup.sh: FAKE_DUMP_MODE says what it does
file=
for a in "$@"; do
	case $a in --file=*) file=${a#--file=} ;; esac
done
case ${FAKE_DUMP_MODE:?} in
fail)
	echo "pg_dump: error: simulated failure (fake pg_dump)" >&2
	exit 1 ;;
hang)
	echo $$ >"$FAKE_DUMP_DIR/hang.pid"
	# phasegate lowers pg_dump's CPU priority right after the spawn
	sleep 0.3
	ps -o ni= -p $$ | tr -d ' ' >"$FAKE_DUMP_DIR/hang.nice"
	sleep 600 &
	echo $! >"$FAKE_DUMP_DIR/hang.sleep.pid"
	wait
	exit 0 ;;
garbage)
	head -c 8192 /dev/urandom >"$file"
	exit 0 ;;
empty)
	: >"$file"
	exit 0 ;;
esac
echo "fake pg_dump: unknown mode" >&2
exit 2
EOF
chmod +x "$T/fake_pg_dump"
export FAKE_DUMP_DIR=$T
# pid_alive PIDFILE - the process runs (a zombie nobody reaps is not running)
pid_alive() {
	local pid st
	[[ -s $1 ]] || return 1
	pid=$(cat "$1")
	st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
	[[ -n $st && $st != Z && $st != X ]]
}
# whatever happens, no fake is left behind by this test (by pid, and only if
# that pid still runs the fake or its sleep)
stop_fakes() {
	local f pid
	for f in "$T/hang.pid" "$T/hang.sleep.pid"; do
		pid_alive "$f" || continue
		pid=$(cat "$f")
		if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -Eq 'fake_pg_dump|sleep 600'; then
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
}
on_exit stop_fakes

# fake_case MODE TIMEOUT MESSAGE...
fake_case() {
	local mode=$1 timeout=$2 tbl=f_$1 dir=$T/fb_$1
	shift 2
	psql_q "CREATE TABLE $tbl (id int PRIMARY KEY, v int); INSERT INTO $tbl VALUES (1, 1), (2, 2)" >/dev/null
	mkplan "$mode" "$tbl" "$dir" "${timeout:+timeout: $timeout}"
	assert_exit 3 env PHG_PG_DUMP="$T/fake_pg_dump" FAKE_DUMP_MODE="$mode" "$PHASEGATE" apply "$T/$mode.yaml"
	cp "$T/err" "$T/$mode.err"
	for m in "$@"; do
		assert_file_contains "$T/$mode.err" "$m" "$mode: the message names the cause"
	done
	assert_file_contains "$T/$mode.err" "no step of the phase runs"
	# no step of the phase ran; the earlier phase is applied
	assert_eq "id,v,k" "$(cols "$tbl")" "$mode: no step of the guarded phase ran"
	assert_eq "applied pending pending" "$(psql_q "SELECT string_agg(s.state, ' ' ORDER BY s.phase_idx, s.idx)
		FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id
		WHERE r.plan = 'backup-$mode'")" "$mode: the guarded phase's steps are still pending"
	assert_eq 0 "$(psql_q "SELECT count(*) FROM phasegate.events e JOIN phasegate.runs r
		ON r.id = e.run_id WHERE r.plan = 'backup-$mode' AND e.phase = 'guarded'
		AND e.kind = 'step_state'")" "$mode: no step of the guarded phase changed state"
	assert_eq "failed keep=applied guarded=rolled_back" "$(plan_states "backup-$mode")" "$mode: states"
	assert_eq 1 "$(psql_q "SELECT count(*) FROM phasegate.events e JOIN phasegate.runs r
		ON r.id = e.run_id WHERE r.plan = 'backup-$mode' AND e.kind = 'gate_failed'")" \
		"$mode: a gate_failed event"
	assert_eq 0 "$(psql_q "SELECT count(*) FROM phasegate.backups b JOIN phasegate.runs r
		ON r.id = b.run_id WHERE r.plan = 'backup-$mode'")" "$mode: no backup recorded"
	if [[ -d $dir ]]; then
		assert_eq "" "$(find "$dir" -mindepth 1 -print)" "$mode: a file is left in the backup directory"
	fi
}

fake_case fail "" "pg_dump failed with exit code 1" "simulated failure (fake pg_dump)"

t0=${EPOCHREALTIME//[.,]/}
fake_case hang 1s "timed out"
ms=$(((${EPOCHREALTIME//[.,]/} - t0) / 1000))
((ms < 20000)) || fail "hang: the gate took ${ms} ms with backup timeout 1s"
[[ -s $T/hang.pid ]] || fail "hang: the fake never ran"
assert_eq "10" "$(cat "$T/hang.nice" 2>/dev/null)" "pg_dump runs at nice 10"
pid_alive "$T/hang.pid" && fail "hang: the fake pg_dump ($(cat "$T/hang.pid")) is still running"
# its own child too (a wrapper's real pg_dump would hold its table locks for
# good): checked at the end, so that the other cases run first
hang_child_left=0
pid_alive "$T/hang.sleep.pid" && hang_child_left=1

fake_case garbage "" "pg_restore --list cannot read"
fake_case empty "" "is empty"

# ---------------------------------------------------------------- 3. unusable dir
: >"$T/afile"
fake_case_dir() {
	psql_q "CREATE TABLE f_dir (id int PRIMARY KEY, v int)" >/dev/null
	mkplan baddir f_dir "$T/afile/backups"
	assert_exit 3 phg apply "$T/baddir.yaml"
	assert_file_contains "$T/err" "could not create backup directory \"$T/afile/backups\"" \
		"the directory is named"
	assert_eq "id,v,k" "$(cols f_dir)" "baddir: no step of the guarded phase ran"
	assert_eq "failed keep=applied guarded=rolled_back" "$(plan_states backup-baddir)" "baddir: states"
	[[ -f $T/afile && ! -s $T/afile ]] || fail "the regular file was changed"
}
fake_case_dir

# ---------------------------------------------------------------- 4. scope database
psql_q "CREATE TABLE sd (id int PRIMARY KEY, v int); INSERT INTO sd VALUES (1, 1)" >/dev/null
mkplan scopedb sd "$T/backups_db" "scope: database"
assert_exit 0 phg apply "$T/scopedb.yaml"
IFS='|' read -r d_path d_size d_scope < <(psql_q "SELECT b.path, b.size, b.scope FROM phasegate.backups b
	JOIN phasegate.runs r ON r.id = b.run_id WHERE r.plan = 'backup-scopedb'")
assert_eq database "$d_scope" "scope recorded"
assert_eq "$(stat -c %s "$d_path")" "$d_size" "scope database: size"
pg_restore --list "$d_path" >"$T/dblist.txt"
for t in sd bk other; do
	grep -E "TABLE DATA public $t " "$T/dblist.txt" >/dev/null ||
		fail "scope database: table $t is not in the backup"
done
assert_eq "id,v,k,g" "$(cols sd)" "scope database: the plan completed"

# ---------------------------------------------------------------- 5. kill -9 during pg_dump
# (issue 15) the dump dies with phasegate -- it would hold its lock on the
# table -- and the next apply removes the .partial file the killed run left
psql_q "CREATE TABLE f_kill (id int PRIMARY KEY, v int); INSERT INTO f_kill VALUES (1, 1)" >/dev/null
mkplan kill9 f_kill "$T/fb_kill" "timeout: 120s"
rm -f "$T/hang.pid" "$T/hang.sleep.pid"
PHG_PG_DUMP="$T/fake_pg_dump" FAKE_DUMP_MODE=hang "$PHASEGATE" apply "$T/kill9.yaml" >"$T/kill9.out" 2>&1 &
k9=$!
wait_for -t 20 test -s "$T/hang.pid"
kill -KILL "$k9"
wait "$k9" 2>/dev/null || true
dump_gone() { ! pid_alive "$T/hang.pid"; }
wait_for -t 10 dump_gone
partials=$(find "$T/fb_kill" -name '*.dump.partial' | wc -l)
assert_eq 1 "$partials" "the killed run left its .partial file"
assert_exit 0 phg apply "$T/kill9.yaml"
assert_file_contains "$T/err" "a partial backup an interrupted run left"
assert_eq 0 "$(find "$T/fb_kill" -name '*.dump.partial' | wc -l)" "the next apply removed it"
assert_eq 1 "$(find "$T/fb_kill" -name '*.dump' | wc -l)" "and took its own, verified backup"

# ---------------------------------------------------------------- 6. fsync, then rename, then fsync the directory
psql_q "CREATE TABLE f_sync (id int PRIMARY KEY); INSERT INTO f_sync VALUES (1)" >/dev/null
mkplan sync f_sync "$T/fb_sync"
# (LeakSanitizer cannot work under ptrace: off for this one run in an ASan build)
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
	strace -f -y -qq -o "$T/strace.txt" -e trace=fsync,rename,renameat,renameat2,execve \
	"$PHASEGATE" apply "$T/sync.yaml" >"$T/sync.out" 2>&1 || fail "apply under strace: $(cat "$T/sync.out")"
# line numbers of: pg_restore --list started, our fsync of the .partial,
# the rename to the final name, and an fsync of the directory
n_list=$(grep -n 'execve(.*pg_restore' "$T/strace.txt" | tail -1 | cut -d: -f1)
n_fsync=$(grep -n 'fsync([0-9]*</.*fb_sync/.*\.dump\.partial>' "$T/strace.txt" | tail -1 | cut -d: -f1)
n_rename=$(grep -n 'rename.*\.dump\.partial".*\.dump"' "$T/strace.txt" | tail -1 | cut -d: -f1)
n_dirsync=$(grep -n "fsync([0-9]*<$T/fb_sync>)" "$T/strace.txt" | tail -1 | cut -d: -f1)
[[ -n $n_list && -n $n_fsync && -n $n_rename && -n $n_dirsync ]] ||
	fail "strace shows no pg_restore ($n_list), fsync of the file ($n_fsync), rename ($n_rename) or fsync of the directory ($n_dirsync): $(grep -v execve "$T/strace.txt" | tail -20)"
((n_list < n_fsync && n_fsync < n_rename && n_rename < n_dirsync)) ||
	fail "order: pg_restore at $n_list, fsync(file) at $n_fsync, rename at $n_rename, fsync(dir) at $n_dirsync"

if ((hang_child_left)); then
	fail "hang: the fake pg_dump's child process ($(cat "$T/hang.sleep.pid"): its sleep 600) was left running after the backup timed out (only the direct child is signalled)"
fi

pass
