# steps_lib.sh - helpers shared by the test_core_steps*.sh scripts (sourced
# after tests/lib.sh and new_db).

# snap [TABLE...] - every user-visible schema object of schema public, one
# per line: columns (with attnum, type, NOT NULL, default), constraints (with
# validity), indexes (with validity), triggers, relations, the phasegate sync
# functions; and a checksum of the rows of each TABLE (one query).
snap() {
	local t data=""
	for t in "$@"; do
		data+=" UNION ALL SELECT 'rows $t ' || count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '-') FROM $t x"
	done
	psql_q "SELECT string_agg(line, E'\n' ORDER BY line) FROM (
	  SELECT format('col %s.%s #%s %s notnull=%s default=%s', c.relname, a.attname, a.attnum,
	         format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)) AS line
	    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
	   WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
	     AND a.attnum > 0 AND NOT a.attisdropped
	  UNION ALL
	  SELECT format('con %s %s %s valid=%s', conrelid::regclass, conname,
	         pg_get_constraintdef(oid), convalidated)
	    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
	  UNION ALL
	  SELECT format('idx %s %s valid=%s', i.indexrelid::regclass, pg_get_indexdef(i.indexrelid),
	         i.indisvalid)
	    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	   WHERE c.relnamespace = 'public'::regnamespace
	  UNION ALL
	  SELECT format('trg %s', pg_get_triggerdef(oid)) FROM pg_trigger WHERE NOT tgisinternal
	  UNION ALL
	  SELECT format('fn %s.%s', pronamespace::regnamespace, proname) FROM pg_proc
	   WHERE proname LIKE 'phg%'
	  UNION ALL
	  SELECT format('rel %s %s', relname, relkind) FROM pg_class
	   WHERE relnamespace = 'public'::regnamespace $data) s"
}

# cols TABLE - "name type [not null] [default X], ..." in column order
cols() {
	psql_q "SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
	          || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
	          || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''), ', ' ORDER BY a.attnum)
	        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
	        WHERE a.attrelid = '$1'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
}

# st PLAN [PYEXPR] - "RUNSTATE phase=state phase=state ..." from status --json,
# then PYEXPR (over the status object s) if given.  The object is checked
# against SPEC section 3 on the way: a violation is printed instead.
st() {
	phg status "$1" --json | python3 -I -S -c '
import json, sys
s = json.load(sys.stdin)
bad = []
for k in ("plan", "checksum", "env", "state", "phases"):
    if k not in s:
        bad.append("missing key " + k)
if s.get("state") not in ("not_started", "running", "interrupted", "completed", "failed", "rolled_back"):
    bad.append("bad plan state %r" % s.get("state"))
for p in s.get("phases", []):
    if p.get("state") not in ("pending", "running", "applied", "failed", "rolled_back"):
        bad.append("bad phase state %r" % p.get("state"))
    for k in ("name", "started_at", "finished_at"):
        if k not in p:
            bad.append("phase without " + k)
    if p.get("state") == "applied" and not (p.get("started_at") and p.get("finished_at")):
        bad.append("applied phase %s without times" % p.get("name"))
    if p.get("state") == "pending" and p.get("finished_at"):
        bad.append("pending phase %s with finished_at" % p.get("name"))
out = " ".join([str(s.get("state"))] + ["%s=%s" % (p["name"], p["state"]) for p in s["phases"]])
if len(sys.argv) > 1:
    out += " " + str(eval(sys.argv[1]))
print("; ".join(bad) if bad else out)' "${@:2}"
}

plan() { cat >"$T/$1.yaml"; }
P() { printf '%s/%s.yaml' "$T" "$1"; }
contype_count() { # TABLE CONNAME
	psql_q "SELECT count(*) FROM pg_constraint WHERE conrelid = '$1'::regclass AND conname = '$2'"
}
