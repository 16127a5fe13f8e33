#!/usr/bin/env bash
# Runs the same `longship bench` cases with two builds, alternating them so
# that both see the same machine load, and prints one markdown row per case
# and build. Use it for before/after figures in docs/benchmarks.md.
#
#   scripts/bench-compare.sh OLD_LONGSHIP NEW_LONGSHIP [SECONDS] [ROUNDS]
#
# Each case runs ROUNDS times per build (default 2, 4 s measured each); the
# row gives every run's figure, so the spread is visible. CASES (cases
# separated by ';') replaces the default list of cases.
set -euo pipefail

old=${1:?usage: bench-compare.sh OLD_LONGSHIP NEW_LONGSHIP [SECONDS] [ROUNDS]}
new=${2:?usage: bench-compare.sh OLD_LONGSHIP NEW_LONGSHIP [SECONDS] [ROUNDS]}
seconds=${3:-4}
rounds=${4:-2}
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-compare.XXXXXX")
trap 'rm -rf "$work"' EXIT

cases=(
    "--clients 1"
    "--clients 64"
    "--clients 256"
    "--clients 1024"
    "--clients 1024 --read-ratio 1"
    "--transport mem --logdb mem --shards 1 --clients 1024"
)
# CASES="--clients 1;--clients 64" runs only those cases.
if [ -n "${CASES:-}" ]; then
    IFS=';' read -ra cases <<<"$CASES"
fi

# Prints "writes/s reads/s p50_us cpu_us voluntary_switches" of one run.
measure() {
    local bin=$1 args=$2
    (cd "$work" && "$bin" bench $args --duration "$seconds" --json 2>/dev/null) | python3 -c '
import json, sys
r = json.load(sys.stdin)
lat = r.get("write_latency_us") or r.get("read_latency_us") or {}
def g(*keys):
    for k in keys:
        if k in r:
            return r[k]
    return 0
print("%.0f %.0f %.0f %.1f %.2f" % (
    g("writes_per_s"), g("reads_per_s"),
    (r.get("write_latency_us") or {}).get("p50", 0) or (r.get("read_latency_us") or {}).get("p50", 0),
    g("cpu_us_per_request"), g("voluntary_switches_per_request")))
'
}

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "old: $old"
echo "new: $new"
echo
echo "| case | build | writes/s | reads/s | p50 µs | CPU µs/req | vol. switches/req |"
echo "|---|---|---|---|---|---|---|"
for c in "${cases[@]}"; do
    for round in $(seq "$rounds"); do
        for which in old new; do
            bin=$old
            [ "$which" = new ] && bin=$new
            read -r w r p cpu sw <<<"$(measure "$bin" "$c")"
            echo "| \`$c\` | $which | $w | $r | $p | $cpu | $sw |"
        done
    done
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
