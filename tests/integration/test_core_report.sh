#!/usr/bin/env bash
# test_core_report.sh - `phasegate report` (issue 14): one self-contained
# HTML page of a run, built from its recorded events, rendered in a real
# browser (Debian's chromium, headless; installed by scripts/bootstrap.sh
# chromium when missing):
#  - a run with a backup, a backfill, verify gates probing a real HTTP
#    service, lock retries, then a release whose gate fails and is rolled
#    back automatically;
#  - the file references nothing outside itself (no URL, no script);
#  - chromium renders it with no console error and no resource request; its
#    DOM has the timeline's lanes, a dot per probe, the backfill's line, the
#    backups table with the sha256 and the rollback; the screenshot is a
#    real picture (not blank);
#  - --run N, a missing -o, an unknown run, an unwritable file.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

if ! command -v chromium >/dev/null 2>&1; then
	bash "$PHG_SOURCE_DIR/scripts/bootstrap.sh" chromium >"$T/bootstrap.log" 2>&1 ||
		fail "could not install chromium" "$(tail -20 "$T/bootstrap.log")"
fi
command -v chromium >/dev/null 2>&1 || fail "chromium is not installed"
PY=/usr/bin/python3

fake_http fake healthy
port=$FAKE_PORT

new_db core_report
psql_q "CREATE TABLE rp (id int PRIMARY KEY, a int); INSERT INTO rp SELECT g, g FROM generate_series(1, 3000) g" >/dev/null
slow_updates rp 0.4
cat >"$T/plan.yaml" <<YAML
version: 1
name: report-plan
settings: { lock_timeout: 200ms, lock_retries: 30, throttle: off }
checks:
  api: { url: "http://127.0.0.1:$port/healthz", interval: 100ms, successes: 2 }
backup: { dir: "$T/backups" }
phases:
  - name: expand
    backup: true
    steps:
      - add_column: { table: rp, column: b, type: int }
    verify: [api]
  - name: fill
    steps:
      - backfill: { table: rp, set: "b = a", batch_size: 300 }
    verify: [api]
YAML
bg_run locker psql -X -q -d "$TEST_DB" -c "BEGIN; LOCK TABLE rp IN ACCESS SHARE MODE; SELECT pg_sleep(1); COMMIT"
locked() { [[ $(psql_q "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'rp' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())") -ge 1 ]]; }
wait_for -t 10 locked
assert_exit 0 phg apply "$T/plan.yaml"
# run 2, of another plan: the release whose gate fails, rolled back
sed -e 's/name: report-plan/name: report-plan2/' -e 's/column: b,/column: b2,/' -e 's/b = a/b2 = a/' \
	"$T/plan.yaml" >"$T/plan2.yaml"
cat >>"$T/plan2.yaml" <<YAML
  - name: release
    steps:
      - add_column: { table: rp, column: c, type: int }
    verify: [api]
YAML
curl -sS -m 5 -X PUT --data 'fail-after:4' "http://127.0.0.1:$port/_mode" >/dev/null
assert_exit 3 phg apply "$T/plan2.yaml"
assert_file_contains "$T/err" "automatic rollback complete"

assert_exit 0 phg report "$T/plan2.yaml" -o "$T/report.html"
assert_eq "$T/report.html" "$(cat "$T/out")" "prints the file's path"
assert_exit 0 phg report "$T/plan.yaml" --run 1 --output "$T/report1.html"
f=$T/report.html
assert_file_contains "$f" "<svg id=\"timeline\""
assert_file_contains "$f" "rolled_back"
assert_file_not_contains "$f" "<script"
assert_file_not_contains "$f" "http://"
assert_file_not_contains "$f" "https://"
assert_file_not_contains "$f" " src="
assert_file_not_contains "$f" "@import"
assert_file_contains "$T/report1.html" "sha256:"
assert_file_contains "$T/report1.html" "lockretry"

# in a real browser: no console error, no request, the timeline drawn
render() { # HTML PNG DOM LOG
	timeout 120 chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
		--no-first-run --user-data-dir="$T/chrome" --enable-logging=stderr --v=0 \
		--window-size=1200,1800 --screenshot="$2" "file://$1" >/dev/null 2>"$4" ||
		fail "chromium could not render $1" "$(tail -20 "$4")"
	timeout 120 chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
		--no-first-run --user-data-dir="$T/chrome" --enable-logging=stderr --v=0 \
		--dump-dom "file://$1" >"$3" 2>>"$4" || fail "chromium could not dump $1" "$(tail -20 "$4")"
}
render "$T/report1.html" "$T/report1.png" "$T/dom1.html" "$T/chrome1.log"
render "$f" "$T/report.png" "$T/dom.html" "$T/chrome.log"
for log in "$T/chrome1.log" "$T/chrome.log"; do
	grep -qiE 'CONSOLE.*(error|uncaught)|Failed to load resource|net::ERR_' "$log" &&
		fail "the browser reported an error" "$(grep -iE 'CONSOLE|Failed to load|net::ERR' "$log" | head)"
done
"$PY" - "$T/dom1.html" "$T/dom.html" <<'PYEOF' || fail "what the browser rendered"
import re, sys
one, two = (open(p, encoding="utf-8").read() for p in sys.argv[1:3])
def count(doc, cls):
    return len(re.findall(r'class="%s"' % cls, doc))
# run 1: two phases, a probe per gate request, a backup, lock retries, the backfill line
assert count(one, "phase") >= 2, count(one, "phase")
assert count(one, "step") >= 2, count(one, "step")
assert count(one, "probe") >= 4, count(one, "probe")
assert count(one, "backup") >= 1 and count(one, "lockretry") >= 1, (count(one, "backup"), count(one, "lockretry"))
assert count(one, "rate") == 1 and count(one, "batch") == 1, "the backfill's rows/s and batch size"
assert 'id="backups"' in one and "sha256:" in one, "the backups table"
assert "Nothing was rolled back" in one
# run 2: the failed gate and the automatic rollback
assert count(two, "gate") >= 1 and 'id="rollback"' in two, "the rollback"
assert re.search(r'id="outcome"[^>]*>failed<', two), "the outcome"
assert 'fill="#d33c3c"' in two, "something in red"
PYEOF
"$PY" - "$T/report1.png" "$T/report.png" <<'PYEOF' || fail "the screenshots"
import struct, sys, zlib
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    # a blank page is one colour: count distinct bytes of the pixel data
    assert w >= 1000 and len(set(raw)) > 20, (path, w, len(set(raw)))
PYEOF

# what it refuses
assert_exit 2 phg report "$T/plan.yaml"
assert_file_contains "$T/err" "report needs -o FILE.html"
assert_exit 1 phg report "$T/plan.yaml" --run 99 -o "$T/x.html"
assert_file_contains "$T/err" "has no run 99"
assert_exit 1 phg report "$T/plan.yaml" -o "$T/no/such/dir/x.html"
assert_file_contains "$T/err" "cannot write"
[[ ! -e $T/x.html ]] || fail "a refused report left a file"
pass
