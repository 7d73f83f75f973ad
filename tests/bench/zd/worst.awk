# worst.awk - where the slowest application transactions of a phasegate
# scenario fell, for tests/bench/zero_downtime.sh.
#
#   awk -v t0=EPOCH_MS -v k=5 -f worst.awk PHASEGATE.log PGBENCH_LOG...
#
# PHASEGATE.log: phasegate's output, each line prefixed by the epoch time
# (seconds, microseconds after the point) the bench read it at.  The pgbench
# -l lines: field 3 the latency (us), 5 and 6 the completion time (epoch s,
# us), 7 the schedule lag (us, with -R).  Prints the k slowest transactions,
# slowest first: latency, when the statement was sent (completion - latency
# + lag) in seconds from t0 (the migration's start), and the last line
# phasegate printed before then (its own time stamp cut off).
FILENAME == ARGV[1] {
	t[++m] = $1 + 0
	line = $0
	sub(/^[^ ]+ /, "", line)               # our time stamp
	# phasegate's: HH:MM:SS on a terminal, ISO 8601 otherwise
	sub(/^[0-9][0-9]:[0-9][0-9]:[0-9][0-9] /, "", line)
	sub(/^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[^ ]+ /, "", line)
	msg[m] = line
	next
}
$3 ~ /^[0-9]+$/ {
	lat = $3 / 1000
	if (n == k && lat <= L[n]) next
	sent = $5 + $6 / 1e6 - $3 / 1e6 + ($7 ~ /^[0-9]+$/ ? $7 / 1e6 : 0)
	if (n < k) n++
	for (i = n; i > 1 && L[i - 1] < lat; i--) { L[i] = L[i - 1]; S[i] = S[i - 1] }
	L[i] = lat; S[i] = sent
}
END {
	for (i = 1; i <= n; i++) {
		at = "(before phasegate's first line)"
		for (j = 1; j <= m && t[j] <= S[i]; j++) at = "after: " msg[j]
		printf "  %8.1f ms  sent at %+7.2f s  %s\n", L[i], S[i] - t0 / 1000, at
	}
}
