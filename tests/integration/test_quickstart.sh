#!/usr/bin/env bash
# test_quickstart.sh - the README's quickstart (examples/quickstart.sh) end to
# end with the suite's binaries and --log-format json: both applies' every
# stderr line validates against docs/events.schema.json (issue 14), the
# happy path exits 0 and the buggy release 3 with its automatic rollback,
# and the quickstart leaves a report and the recorded events of each run.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

PY=/usr/bin/python3
"$PY" -c 'import jsonschema' 2>/dev/null || fail "python3-jsonschema is missing"
DEMO=${PHG_BUILD_DIR:?}/examples/phasegate-demo
[[ -x $DEMO ]] || fail "no demo binary at $DEMO"

QUICKSTART_ROWS=20000 QUICKSTART_LOG_FORMAT=json QUICKSTART_OUT="$T/qs" PHG_DEMO="$DEMO" \
	PHASEGATE="$PHASEGATE" bash "$PHG_SOURCE_DIR/examples/quickstart.sh" >"$T/qs.out" 2>"$T/qs.err" ||
	fail "the quickstart failed" "$(tail -30 "$T/qs.out")" "$(tail -30 "$T/qs.err")"
assert_file_contains "$T/qs.out" "Done: the happy path completed"
assert_file_contains "$T/qs.out" "apply exited 3"
for run in happy buggy; do
	[[ -s $T/qs/$run.log && -s $T/qs/report-$run.html && -s $T/qs/events-$run.jsonl ]] ||
		fail "the quickstart left no log, report or events of the $run run" "$(ls -la "$T/qs")"
done
"$PY" - "$PHG_SOURCE_DIR/docs/events.schema.json" "$T/qs/happy.log" "$T/qs/buggy.log" \
	"$T/qs/events-happy.jsonl" "$T/qs/events-buggy.jsonl" <<'PYEOF' || fail "a line of the quickstart's streams"
import json, sys
import jsonschema
v = jsonschema.Draft202012Validator(json.load(open(sys.argv[1])))
exits = []
for path in sys.argv[2:]:
    n = 0
    for i, line in enumerate(open(path), 1):
        o = json.loads(line)
        err = next(iter(v.iter_errors(o)), None)
        assert err is None, "%s:%d: %s" % (path, i, err.message)
        if o.get("kind") == "exit":
            exits.append(o["data"]["code"])
        n += 1
    assert n > 10, (path, n)
assert exits == [0, 3], exits
PYEOF
assert_file_contains "$T/qs/report-buggy.html" "rolled_back"
pass
