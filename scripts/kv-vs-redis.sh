#!/usr/bin/env bash
# longship-kv against one Redis that fsyncs every write, in one run on this
# machine: redis-benchmark, 16-byte SETs on random keys, no pipelining, at
# 1, 64 and 256 clients, plus linearizable GETs at 64 clients. Starts both
# servers in a scratch directory and stops them (by pid) when it ends.
#
#   scripts/kv-vs-redis.sh            # the table (markdown) on stdout
#   KV_BENCH_SECONDS=5 scripts/kv-vs-redis.sh
#   KV_BIN=/path/to/older/longship-kv scripts/kv-vs-redis.sh   # another build
#
# Needs redis-server and redis-benchmark (apt-get install redis-server
# redis-tools); builds longship-kv in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in redis-server redis-benchmark redis-cli; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$tool not found: apt-get install redis-server redis-tools" >&2
        exit 1
    fi
done

seconds=${KV_BENCH_SECONDS:-4}
redis_port=${REDIS_PORT:-6399}
kv_port=7379 # longship-kv with no arguments serves 7379-7381

if [ -n "${KV_BIN:-}" ]; then
    kv_bin=$(realpath "$KV_BIN")
else
    cargo build --release -q -p longship-kv
    kv_bin=$(realpath "${CARGO_TARGET_DIR:-target}/release/longship-kv")
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/kv-vs-redis.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$scratch"
}
trap cleanup EXIT

mkdir -p "$scratch/redis" "$scratch/kv"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$scratch/redis" \
    --appendonly yes --appendfsync always --save "" --daemonize no \
    >"$scratch/redis.log" 2>&1 &
pids+=($!)
(cd "$scratch/kv" && exec "$kv_bin") >"$scratch/kv.log" 2>&1 &
pids+=($!)

# Ready when a write goes through (longship-kv: every shard has a leader).
ready() {
    local port=$1 deadline=$((SECONDS + 60))
    until [ "$(redis-cli -p "$port" SET kv-vs-redis-probe 1 2>/dev/null)" = "OK" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "server on port $port not ready; its log:" >&2
            cat "$scratch"/*.log >&2
            exit 1
        fi
        sleep 0.2
    done
}
ready "$redis_port"
ready "$kv_port"
# Every shard of the kv takes a write (leaders elected, sessions warm).
redis-benchmark -p "$kv_port" -t set -d 16 -r 100000 -c 16 -n 2000 -q >/dev/null 2>&1 || true

fsync_probe_us() {
    python3 - "$scratch" <<'EOF'
import os, sys, time
path = os.path.join(sys.argv[1], "probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT)
samples = []
for _ in range(64):
    os.write(fd, b"x" * 128)
    t = time.perf_counter()
    os.fdatasync(fd)
    samples.append(time.perf_counter() - t)
os.close(fd)
samples.sort()
print(int(samples[len(samples) // 2] * 1e6))
EOF
}

# One redis-benchmark run: prints "rps p50_ms p99_ms".
run() {
    local port=$1 test=$2 clients=$3 n
    # About $seconds seconds of work at the expected rate.
    case $clients in
        1) n=$((3000 * seconds)) ;;
        *) n=$((40000 * seconds)) ;;
    esac
    redis-benchmark -p "$port" -t "$test" -d 16 -r 100000 -P 1 -c "$clients" -n "$n" --csv 2>/dev/null |
        awk -F'","' 'NR==2 { gsub(/"/, "", $0); split($0, f, ","); printf "%.0f %s %s\n", f[2], f[5], f[7] }'
}

echo "## longship-kv vs redis-server --appendfsync always"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average before: $(cut -d' ' -f1-3 /proc/loadavg), fdatasync probe p50: $(fsync_probe_us) us"
if [ -n "${KV_BIN:-}" ]; then
    built="given by KV_BIN"
else
    built="built from commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) in $(pwd)"
fi
echo "longship-kv: $kv_bin ($built); redis-benchmark -d 16 -r 100000 -P 1"
echo
echo "| test | clients | redis+fsync ops/s | p50 ms | p99 ms | longship-kv ops/s | p50 ms | p99 ms | kv / redis |"
echo "|---|---|---|---|---|---|---|---|---|"
for spec in "set 1" "set 64" "set 256" "get 64"; do
    read -r test clients <<<"$spec"
    read -r r_rps r_p50 r_p99 <<<"$(run "$redis_port" "$test" "$clients")"
    read -r k_rps k_p50 k_p99 <<<"$(run "$kv_port" "$test" "$clients")"
    ratio=$(awk -v k="$k_rps" -v r="$r_rps" 'BEGIN { if (r > 0) printf "%.2f", k / r; else print "-" }')
    echo "| ${test^^} | $clients | $r_rps | $r_p50 | $r_p99 | $k_rps | $k_p50 | $k_p99 | $ratio |"
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
