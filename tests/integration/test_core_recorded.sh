#!/usr/bin/env bash
# test_core_recorded.sh - plan identity and drift (issue 13).  Every run
# records the plan as applied (its canonical form).  A re-spelled file
# (comments, quoting, CRLF) is the same plan.  apply of a changed file
# refuses (exit 2), naming the phases that changed and how to continue;
# status and rollback work from the recorded plan, so a drifted or deleted
# file never blocks a rollback.  Runs of an older phasegate (no recorded
# plan, the byte checksum) still match their file.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_recorded
psql_q "CREATE TABLE t (id int PRIMARY KEY, a int); INSERT INTO t SELECT g, g FROM generate_series(1, 100) g" >/dev/null
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: recorded-plan
phases:
  - name: one
    steps:
      - add_column: { table: t, column: b, type: int }
  - name: two
    steps:
      - create_index: { table: t, columns: [b], name: t_b_idx }
YAML
cp "$T/plan.yaml" "$T/orig.yaml"
indexes() { psql_q "SELECT coalesce(string_agg(indexname, ',' ORDER BY indexname), '') FROM pg_indexes WHERE tablename = 't'"; }
has_b() { psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'b' AND NOT attisdropped"; }

assert_exit 0 phg apply "$T/plan.yaml"
canon=$(psql_q "SELECT plan_json FROM phasegate.runs")
assert_contains "$canon" '"name": "recorded-plan"' "the run records the plan as applied"
assert_contains "$canon" '"t_b_idx"' "the recorded plan has its steps"
sum=$(psql_q "SELECT checksum FROM phasegate.runs")
assert_eq "sha256:$(printf '%s' "$canon" | sha256sum | cut -d' ' -f1)" "$sum" \
	"the checksum is that of the recorded canonical form"

# the same plan re-spelled: not a drift
{ printf '# a comment\n'; sed "s/name: t_b_idx/name: 't_b_idx'/" "$T/orig.yaml"; } | sed 's/$/\r/' >"$T/plan.yaml"
assert_exit 0 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "nothing to do"

# a changed phase: apply refuses, naming it, and says how to go on
sed 's/t_b_idx/t_b_idx2/' "$T/orig.yaml" >"$T/plan.yaml"
assert_exit 2 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" 'Phases that differ from the plan as applied: "two" (changed)'
assert_file_contains "$T/err" "rollback"
assert_file_not_contains "$T/err" '"one" (changed)'
cat "$T/orig.yaml" >"$T/plan.yaml"
printf '  - name: three\n    steps:\n      - add_column: { table: t, column: c, type: int }\n' >>"$T/plan.yaml"
assert_exit 2 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" '"three" (added)'
sed 's/t_b_idx/t_b_idx2/' "$T/orig.yaml" >"$T/plan.yaml"

# status shows the recorded plan, and the drift
assert_exit 0 phg status "$T/plan.yaml"
assert_file_contains "$T/out" "shown: the plan as the run recorded it"
assert_file_contains "$T/err" '"two" (changed)'
assert_exit 0 phg status "$T/plan.yaml" --json
python3 -I -S -c '
import json, sys
s = json.load(open(sys.argv[1]))
assert s["drift"] is True and s["file_checksum"] != s["checksum"], s
assert s["phases"][1]["steps"][0]["name"].find("t_b_idx2") < 0, s["phases"][1]' "$T/out" ||
	fail "status --json of a drifted file shows the recorded plan"

# rollback of the drifted file works from the recorded plan: the index the
# run made (t_b_idx), not the file's new name
assert_eq "t_b_idx,t_pkey" "$(indexes)" "before the rollback"
assert_exit 0 phg rollback "$T/plan.yaml" --to one
assert_file_contains "$T/err" "rollback works from the plan as recorded"
assert_eq "t_pkey" "$(indexes)" "rollback --to one dropped the recorded index"

# the file is gone: status and rollback by the plan's name
rm "$T/plan.yaml"
cd "$T"
assert_exit 0 phg status recorded-plan
assert_file_contains "$T/out" "the plan file is gone"
assert_file_contains "$T/out" "one"
assert_exit 0 phg status recorded-plan --json
assert_eq "None True" "$(python3 -I -S -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["file_checksum"], s["drift"])' "$T/out")" \
	"status --json without the file"
assert_exit 0 phg rollback recorded-plan
assert_file_contains "$T/err" "does not exist: rollback works from the plan as run 1 recorded it"
assert_eq "0 rolled_back" "$(has_b) $(psql_q "SELECT state FROM phasegate.runs")" "rolled back without the file"
# what it cannot do without the file, said (exit 2)
assert_exit 2 phg rollback no-such-plan
assert_file_contains "$T/err" "no plan of that name has run on this database"
assert_exit 2 phg rollback recorded-plan --env prod
assert_file_contains "$T/err" "--url-env"
assert_exit 2 phg rollback "../$(basename "$T")/nothing here.yaml"
assert_file_contains "$T/err" "No such file or directory"
cp "$T/orig.yaml" "$T/plan.yaml"
assert_exit 2 phg rollback "$T/plan.yaml" --url-env DATABASE_URL
assert_file_contains "$T/err" "--url-env is for a plan whose file is gone"
# --url-env names the variable (history of every plan too)
OTHER_URL=$DATABASE_URL DATABASE_URL= assert_exit 0 phg status recorded-plan --url-env OTHER_URL
assert_file_contains "$T/out" "rolled_back"
OTHER_URL=$DATABASE_URL DATABASE_URL= assert_exit 0 phg history --url-env OTHER_URL
assert_file_contains "$T/out" "recorded-plan"

# a run of an older phasegate: no recorded plan, the checksum of the file's
# bytes. Its own file still matches it; a changed file is a drift as before.
assert_exit 0 phg apply "$T/plan.yaml" --to one
psql_q "UPDATE phasegate.runs SET plan_json = NULL, checksum = 'sha256:$(sha256sum "$T/plan.yaml" | cut -d' ' -f1)' WHERE id = 2" >/dev/null
assert_exit 0 phg apply "$T/plan.yaml"
assert_eq "t_b_idx,t_pkey completed" "$(indexes) $(psql_q "SELECT state FROM phasegate.runs WHERE id = 2")" \
	"an older run resumed with its own file"
# history: an apply and its later rollback are entries of their own (run 1:
# applied completely, then rolled back in two goes by one rollback entry)
assert_exit 0 phg history recorded-plan --url-env DATABASE_URL --json
assert_eq "1 apply completed 2/2|1 rollback rolled_back 0/2|2 apply completed 2/2|None" "$(python3 -I -S -c '
import json, sys
h = json.load(open(sys.argv[1]))
print("|".join("%d %s %s %d/%d" % (e["run_id"], e["action"], e["state"], e["phases_applied"], e["phases"]) for e in h) + "|" + str(h[0]["env"]))' "$T/out")" \
	"history: one entry per apply and per rollback"
assert_exit 0 phg history "$T/plan.yaml"
assert_eq "apply rollback" "$(grep -E '^1 +recorded-plan +' "$T/out" | awk '{print $3}' | xargs)" \
	"history text: run 1 has an apply entry and a rollback entry"
printf '# edited\n' >>"$T/plan.yaml"
sed -i 's/t_b_idx/t_b_idx3/' "$T/plan.yaml"
assert_exit 2 phg rollback "$T/plan.yaml"
assert_file_contains "$T/err" "changed since run 2"
assert_eq "t_b_idx,t_pkey" "$(indexes)" "the refused rollback touched nothing"
rm "$T/plan.yaml"
assert_exit 2 phg rollback recorded-plan
assert_file_contains "$T/err" "has no recorded plan"
assert_file_contains "$T/err" "Give the plan file as it was applied"
pass
