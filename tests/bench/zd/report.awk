# report.awk - the results table and the targets of
# tests/bench/zero_downtime.sh, in markdown.
#
#   awk -F '\t' -v max_lag=10 -f report.awk RESULTS.tsv
#
# RESULTS.tsv: one line per scenario that ran, tab-separated, "-" where a
# figure does not apply:
#   id label transactions p50_ms p99_ms max_ms failed lag_s lag_mb wall_s rows_s rss_mb
# with id a (baseline), b (naive: its rows_s is the single UPDATE's), c
# (phasegate) or d (phasegate, throttle off).  max_lag: the plan's
# max_replica_lag in seconds, "-" when it does not apply.  Targets whose
# figures are missing print "n/a"; nothing here fails: it only reports.
function has(x) { return x != "" && x != "-" }
function num(x, d) { return has(x) ? sprintf("%." d "f", x) : "—" }
function ms(x) { if (!has(x)) return "—"; return x < 10 ? sprintf("%.2f", x) : x < 1000 ? sprintf("%.1f", x) : sprintf("%.0f", x) }
function commas(x,   s, r) {
	if (!has(x)) return "—"
	s = sprintf("%.0f", x); r = ""
	while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
	return s r
}
function target(ok, text, fig) {
	printf "- %s %s%s\n", ok == "" ? "n/a" : ok ? "**met**" : "**missed**", text, fig == "" ? "" : " — " fig
}
{
	id = $1; seen[id] = 1
	label[id] = $2; ntx[id] = $3; p50[id] = $4; p99[id] = $5; mx[id] = $6; failed[id] = $7
	lag_s[id] = $8; lag_mb[id] = $9; wall[id] = $10; rows_s[id] = $11; rss[id] = $12
	order[++n] = id
}
END {
	base = has(rows_s["b"]) ? rows_s["b"] : ""
	print "| scenario | app p50 (ms) | app p99 (ms) | app max (ms) | failed app statements | max replica lag (s) | max replica lag (MB) | wall time (s) | backfill rows/s | × single UPDATE | phasegate peak RSS (MB) |"
	print "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
	for (i = 1; i <= n; i++) {
		id = order[i]
		ratio = (base != "" && has(rows_s[id])) ? sprintf("%.2f", rows_s[id] / base) : "—"
		printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", label[id], ms(p50[id]), ms(p99[id]), ms(mx[id]),
		       has(failed[id]) ? failed[id] : "—", num(lag_s[id], 2), num(lag_mb[id], 1), num(wall[id], 1),
		       commas(rows_s[id]), ratio, num(rss[id], 1)
	}
	print ""
	print "Targets:"
	print ""
	c = seen["c"]; d = seen["d"]
	target(c ? failed["c"] == 0 : "", "0 failed app statements during (c)", c ? failed["c"] : "")
	ok = (c && seen["a"] && has(p99["c"]) && has(p99["a"])) ? (p99["c"] <= 2 * p99["a"]) : ""
	target(ok, "(c) app p99 ≤ 2 × (a) app p99", ok == "" ? "" : sprintf("%s ms vs 2 × %s ms", ms(p99["c"]), ms(p99["a"])))
	ok = (c && has(mx["c"])) ? (mx["c"] < 50) : ""
	target(ok, "(c) app max < 50 ms", ok == "" ? "" : ms(mx["c"]) " ms")
	ok = (c && has(lag_s["c"]) && has(max_lag)) ? (lag_s["c"] < max_lag) : ""
	target(ok, "(c) replica lag under max_replica_lag" (has(max_lag) ? " (" max_lag " s)" : ""), ok == "" ? "" : num(lag_s["c"], 2) " s")
	ok = (c && base != "" && has(rows_s["c"])) ? (rows_s["c"] >= 0.5 * base) : ""
	target(ok, "(c) backfill ≥ 0.5 × the single UPDATE's rows/s", ok == "" ? "" : sprintf("%.2f ×", rows_s["c"] / base))
	ok = (d && base != "" && has(rows_s["d"])) ? (rows_s["d"] >= 0.9 * base) : ""
	target(ok, "(d) backfill ≥ 0.9 × the single UPDATE's rows/s", ok == "" ? "" : sprintf("%.2f ×", rows_s["d"] / base))
	peak = ""
	if (c && has(rss["c"])) peak = rss["c"]
	if (d && has(rss["d"]) && (peak == "" || rss["d"] > peak)) peak = rss["d"]
	target(peak == "" ? "" : peak < 20, "phasegate peak RSS < 20 MB", peak == "" ? "" : num(peak, 1) " MB")
}
