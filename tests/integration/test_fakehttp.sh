#!/usr/bin/env bash
# test_fakehttp.sh - smoke test of the fake health endpoint (tests/fakehttp).
#
# Env: FAKEHTTP = the binary (default ${PHG_BUILD_DIR}/tests/fakehttp/fakehttp).
# Needs curl.  Exits non-zero on the first failed check, printing both sides.
set -euo pipefail

FAKEHTTP=${FAKEHTTP:-${PHG_BUILD_DIR:?set FAKEHTTP or PHG_BUILD_DIR}/tests/fakehttp/fakehttp}

tmp=$(mktemp -d)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do
		if kill -0 "$p" 2>/dev/null; then
			kill -TERM "$p" 2>/dev/null || true
			wait "$p" 2>/dev/null || true
		fi
	done
	rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	if [ -f "$tmp/out" ]; then
		echo "--- fakehttp output:" >&2
		cat "$tmp/out" >&2
	fi
	exit 1
}

check() { # NAME EXPECTED ACTUAL
	if [ "$2" != "$3" ]; then
		fail "$1: expected '$2', got '$3'"
	fi
	echo "ok - $1"
}

# start ARGS...: run fakehttp in the background, set $pid and $base.
start() {
	local name=$1
	shift
	rm -f "$tmp/$name.port"
	"$FAKEHTTP" --port 0 --port-file "$tmp/$name.port" "$@" >"$tmp/$name.out" 2>&1 &
	pid=$!
	pids+=("$pid")
	local _
	for _ in $(seq 100); do
		[ -s "$tmp/$name.port" ] && break
		kill -0 "$pid" 2>/dev/null || fail "$name: fakehttp exited early: $(cat "$tmp/$name.out")"
		sleep 0.05
	done
	[ -s "$tmp/$name.port" ] || fail "$name: no port file after 5 s"
	base="http://127.0.0.1:$(cat "$tmp/$name.port")"
}

# stop: SIGTERM the last started instance; it must exit 0.
stop() {
	local rc=0
	kill -TERM "$pid"
	wait "$pid" || rc=$?
	check "exit status after SIGTERM" 0 "$rc"
}

code() { # curl args...: the HTTP status, "000" when there is none
	curl -sS -m 2 -o /dev/null -w '%{http_code}' "$@" 2>/dev/null || true
}

mode() {
	check "switch to $1" 200 "$(code -X PUT --data-binary "$1" "$base/_mode")"
}

start main --log "$tmp/probes.log"
ln -sf "$tmp/main.out" "$tmp/out"
grep -q "^listening on 127.0.0.1:[0-9][0-9]*$" "$tmp/main.out" ||
	fail "no 'listening on' line: $(cat "$tmp/main.out")"
echo "ok - listening line"

# healthy (default), with a custom header that must be recorded
check "healthy status" 200 "$(code -H 'X-Phasegate-Test: hello-123' -H 'Authorization: Bearer s3cr3t' "$base/healthz")"
check "healthy body" '{"status":"ok"}' "$(curl -sS -m 2 "$base/healthz")"

mode status:503
check "status:503" 503 "$(code "$base/healthz")"
check "status:503 body" '{"status":"error"}' "$(curl -sS -m 2 "$base/healthz")"

mode flap
check "flap 1" 200 "$(code "$base/healthz")"
check "flap 2" 503 "$(code "$base/healthz")"
check "flap 3" 200 "$(code "$base/healthz")"
check "count after mode switch" 3 "$(curl -sS -m 2 "$base/_count" | tr -d '\n')"

mode fail-after:2
check "fail-after 1" 200 "$(code "$base/healthz")"
check "fail-after 2" 200 "$(code "$base/healthz")"
check "fail-after 3" 503 "$(code "$base/healthz")"

mode slow:400
t=$(curl -sS -m 2 -o /dev/null -w '%{http_code} %{time_total}' "$base/healthz")
check "slow status" 200 "${t% *}"
awk -v t="${t#* }" 'BEGIN { exit !(t >= 0.35) }' || fail "slow:400 answered after ${t#* } s"
echo "ok - slow took ${t#* } s"

mode 'body:{"status":"degraded"}'
check "body mode" '{"status":"degraded"}' "$(curl -sS -m 2 "$base/healthz")"

mode reset
rc=0
curl -sS -m 2 -o /dev/null "$base/healthz" 2>/dev/null || rc=$?
case $rc in
52 | 56) echo "ok - reset: curl exit $rc" ;;
*) fail "reset: expected curl exit 52 or 56, got $rc" ;;
esac

mode hang
rc=0
curl -sS -m 2 -o /dev/null "$base/healthz" 2>/dev/null || rc=$?
check "hang: curl times out" 28 "$rc"

mode healthy
check "unknown mode refused" 400 "$(code -X PUT --data-binary 'bogus' "$base/_mode")"
check "healthy again" 200 "$(code "$base/healthz")"

# malformed input and limits
exec 3<>"/dev/tcp/127.0.0.1/${base##*:}"
printf 'NOT HTTP AT ALL\r\n\r\n' >&3
line=$(head -n 1 <&3 | tr -d '\r')
exec 3<&-
check "malformed request" "HTTP/1.1 400 Bad Request" "$line"
head -c 70000 /dev/zero | tr '\0' x >"$tmp/big"
check "body over 64 KiB" 413 "$(code -X POST --data-binary @"$tmp/big" "$base/healthz")"

# what was received
reqs=$(curl -sS -m 2 "$base/_requests")
case $reqs in
*'"X-Phasegate-Test":"hello-123"'*) echo "ok - /_requests shows the custom header" ;;
*) fail "/_requests lacks the custom header: ${reqs:0:400}" ;;
esac
case $reqs in
*'"Authorization":"Bearer s3cr3t"'*) echo "ok - /_requests shows Authorization" ;;
*) fail "/_requests lacks Authorization: ${reqs:0:400}" ;;
esac
nprobes=$(grep -o '"method":' <<<"$reqs" | wc -l)

stop
check "one log line per probe" "$nprobes" "$(wc -l <"$tmp/probes.log" | tr -d ' ')"

# --mode sets the initial mode
start second --mode status:500
ln -sf "$tmp/second.out" "$tmp/out"
check "--mode status:500" 500 "$(code "$base/")"
stop

echo "all fakehttp checks passed"
