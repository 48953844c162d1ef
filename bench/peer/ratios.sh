#!/usr/bin/env bash
# ratios.sh RESULT.tsv [router-name] [other-router-name]: issue 8 §2's paired ratios from one
# run.sh result, per policy — each ratio is taken within a round, then the median over
# rounds is printed with the [min-max] of the per-round values.
#   json  rps router/nginx, rps router/gostd, CPU µs per request router/nginx
#   sse   streams/s router/nginx, CPU per stream router/nginx
#   c1    p50 router - nginx (µs), p99 router/nginx
#   rate  p99 router/nginx, CPU per request router/nginx
# With a second router name (e.g. the same binary with features off): router/other rps and
# CPU per request, i.e. what the features cost.
set -euo pipefail
f=$1 r=${2:-router} o=${3:-}
awk -F'\t' -v R="$r" -v O="$o" '
  NR == 1 { next }
  { k = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4; rps[k] = $5; p50[k] = $6; p99[k] = $8; cpu[k] = ($5 > 0) ? $13 * 10000 / $5 : 0
    err[$1 SUBSEP $2 SUBSEP $3] += $11; if ($2 != "-") split_[$1 SUBSEP $2 SUBSEP $3] += $20
    if ($4 > maxr) maxr = $4 }
  function stat(a, n,   i, j, t, m) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    return sprintf(FMT, m) " [" sprintf(FMT, a[1]) "–" sprintf(FMT, a[n]) "]" }
  function line(label, what, pol, mode, ref, kind,   i, n, v, a, b) { n = 0; split("", v)
    for (i = 1; i <= maxr; i++) { a = R SUBSEP pol SUBSEP mode SUBSEP i; b = ref SUBSEP pol SUBSEP mode SUBSEP i
      if (ref == "-") b = "direct" SUBSEP "-" SUBSEP mode SUBSEP i
      if (!(a in rps) || !(b in rps) || rps[b] == 0) continue
      if (kind == "rps") v[++n] = rps[a] / rps[b]
      else if (kind == "cpu") v[++n] = (cpu[b] > 0) ? cpu[a] / cpu[b] : 0
      else if (kind == "p50d") v[++n] = (p50[a] - p50[b]) * 1000
      else if (kind == "p99") v[++n] = p99[a] / p99[b] }
    if (!n) return
    FMT = (kind == "p50d") ? "%+.0f" : "%.2f"
    printf "%-5s %-4s %-34s %s   (rounds: %d)\n", mode, pol, label, stat(v, n), n }
  END {
    for (q = 1; q <= 2; q++) { pol = (q == 1) ? "hash" : "rr"
      line("rps ÷ nginx", "", pol, "json", "nginx", "rps"); line("rps ÷ gostd", "", pol, "json", "gostd", "rps")
      line("CPU/req ÷ nginx", "", pol, "json", "nginx", "cpu")
      line("streams/s ÷ nginx", "", pol, "sse", "nginx", "rps"); line("CPU/stream ÷ nginx", "", pol, "sse", "nginx", "cpu")
      line("p50 − nginx p50 (µs)", "", pol, "c1", "nginx", "p50d"); line("p99 ÷ nginx p99", "", pol, "c1", "nginx", "p99")
      line("CPU/req ÷ nginx", "", pol, "c1", "nginx", "cpu")
      line("p99 ÷ nginx p99", "", pol, "rate", "nginx", "p99"); line("CPU/req ÷ nginx", "", pol, "rate", "nginx", "cpu")
      if (O != "") { line("rps ÷ " O, "", pol, "json", O, "rps"); line("CPU/req ÷ " O, "", pol, "json", O, "cpu")
                     line("streams/s ÷ " O, "", pol, "sse", O, "rps"); line("CPU/stream ÷ " O, "", pol, "sse", O, "cpu") }
      for (m = 1; m <= 4; m++) { mode = (m == 1) ? "json" : (m == 2) ? "sse" : (m == 3) ? "c1" : "rate"
        if ((R SUBSEP pol SUBSEP mode) in err) printf "%-5s %-4s %-34s errors %d%s\n", mode, pol, R " guards", err[R SUBSEP pol SUBSEP mode], (pol == "hash") ? sprintf(", split sessions %d", split_[R SUBSEP pol SUBSEP mode]) : "" }
    }
  }' "$f"
