# latency.awk - latency figures of pgbench per-transaction logs, for
# tests/bench/zero_downtime.sh.
#
#   awk '$3 ~ /^[0-9]+$/ { print $3 }' LOG... | sort -n | awk -f latency.awk
#
# Field 3 of a pgbench -l line is the transaction's latency in microseconds;
# with -R it is counted from the transaction's scheduled start, so the time
# a request spends queued behind a lock counts, as it would for an
# application's request.  Reads those values sorted, one per line, and
# prints one line:
#   N P50 P99 MAX      transactions, then milliseconds (nearest rank)
# or "0 - - -" for no transaction at all.
{ v[++n] = $1 }
END {
	if (n == 0) { print "0 - - -"; exit }
	printf "%d %.3f %.3f %.3f\n", n, v[rank(50)] / 1000, v[rank(99)] / 1000, v[n] / 1000
}
function rank(p,   r) {
	r = int(p * n / 100)
	if (r < p * n / 100) r++
	return r < 1 ? 1 : r
}
