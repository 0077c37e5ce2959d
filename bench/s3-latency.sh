#!/usr/bin/env bash
# Round trips on S3: history lookups on a synthetic archive of EVENTS events
# (the scale bench's mix) in moto, read through a proxy that adds DELAY_MS
# to every request (scripts/latency_proxy.py), and directly. Per lookup it
# reports the requests (GETs and listings, as the proxy saw them) and the
# wall time through the proxy; the sequential round trips are the extra wall
# time of the same lookup through a second proxy adding twice the delay,
# divided by the delay (so the proxy's own cost cancels out).
#
#   bench/s3-latency.sh [EVENTS] [LOOKUPS] [DELAY_MS]   (default 10000000, 15, 30)
#
# Then a restore of the small table t3 the same way (a line of its own).
# The last line: `s3: events=N delay_ms=D lookup_requests_median=R
# lookup_s_median=S round_trips_median=T`.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-10000000}
LOOKUPS=${2:-15}
DELAY=${3:-30}
PY=${WALY_TEST_PYTHON:-$PWD/.venv/bin/python}
MOTO=${WALY_TEST_MOTO_BIN:-$PWD/.venv/bin/moto_server}
cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/bench-s3-latency
rm -rf "$DIR"; mkdir -p "$DIR"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
M=$(free_port); P=$(free_port); P2=$(free_port)
"$MOTO" -H 127.0.0.1 -p "$M" >"$DIR/moto.log" 2>&1 & MOTO_PID=$!
"$PY" scripts/latency_proxy.py "$P" "$M" "$DELAY" "$DIR/requests" & PROXY_PID=$!
"$PY" scripts/latency_proxy.py "$P2" "$M" "$((2 * DELAY))" "$DIR/requests2" & PROXY2_PID=$!
trap 'kill $MOTO_PID $PROXY_PID $PROXY2_PID 2>/dev/null' EXIT
export AWS_ACCESS_KEY_ID=waly-bench AWS_SECRET_ACCESS_KEY=waly-bench-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
until curl -s "http://127.0.0.1:$M/" >/dev/null; do sleep 0.2; done
curl -s -X PUT "http://127.0.0.1:$M/bench" >/dev/null
ARCHIVE=s3://bench/archive
AWS_ENDPOINT_URL=http://127.0.0.1:$M "$WALY" synth --archive "$ARCHIVE" --events "$EVENTS" \
    --weights 1000000,100000,10000,1 --rows 1000000,100000,10000,1000 --skew 1 --row-bytes 64 --txn-changes 10 --log warn
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }
: >"$DIR/lookups"
for k in $(shuf -i 1-1000000 -n "$LOOKUPS" --random-source=<(yes)); do
    AWS_ENDPOINT_URL=http://127.0.0.1:$M "$WALY" history --archive "$ARCHIVE" public.t0 "$k" --json >"$DIR/direct.out"
    : >"$DIR/requests"
    t0=$(now)
    AWS_ENDPOINT_URL=http://127.0.0.1:$P "$WALY" history --archive "$ARCHIVE" public.t0 "$k" --json >"$DIR/proxied.out"
    t1=$(now)
    AWS_ENDPOINT_URL=http://127.0.0.1:$P2 "$WALY" history --archive "$ARCHIVE" public.t0 "$k" --json >"$DIR/proxied2.out"
    t2=$(now)
    cmp -s "$DIR/direct.out" "$DIR/proxied.out" && cmp -s "$DIR/direct.out" "$DIR/proxied2.out" || { echo "key $k: the answers differ"; exit 1; }
    echo "$(wc -l <"$DIR/requests") $(echo "$t1 - $t0" | bc) $(echo "($t2 - $t1 - ($t1 - $t0)) * 1000 / $DELAY" | bc -l)" >>"$DIR/lookups"
done
# A restore of the small table t3 (`waly show`; its few changes lie in few
# segments, whose headers and frames are read several segments at once):
# requests, wall time and sequential round trips, measured as above; with
# WALY_BENCH_BASELINE=/path/to/an/older/waly, that binary's the same way.
restore_t3() { # WALY NAME
    : >"$DIR/requests"
    local t0 t1 t2
    t0=$(now)
    AWS_ENDPOINT_URL=http://127.0.0.1:$P "$1" show --archive "$ARCHIVE" public.t3 --at now --format json >"$DIR/show.out" 2>/dev/null
    t1=$(now)
    AWS_ENDPOINT_URL=http://127.0.0.1:$P2 "$1" show --archive "$ARCHIVE" public.t3 --at now --format json >"$DIR/show2.out" 2>/dev/null
    t2=$(now)
    cmp -s "$DIR/show.out" "$DIR/show2.out" || { echo "the restores of t3 differ"; exit 1; }
    echo "s3 restore of t3 ($2): rows=$(wc -l <"$DIR/show.out") requests=$(wc -l <"$DIR/requests") s=$(echo "$t1 - $t0" | bc) round_trips=$(printf '%.1f' "$(echo "($t2 - $t1 - ($t1 - $t0)) * 1000 / $DELAY" | bc -l)")"
}
if [ -n "${WALY_BENCH_BASELINE:-}" ]; then
    restore_t3 "$WALY_BENCH_BASELINE" baseline
    cp "$DIR/show.out" "$DIR/show-baseline.out"
fi
restore_t3 "$WALY" this
if [ -n "${WALY_BENCH_BASELINE:-}" ]; then
    cmp -s "$DIR/show.out" "$DIR/show-baseline.out" || { echo "the baseline restores t3 otherwise"; exit 1; }
fi
R=$(cut -d' ' -f1 "$DIR/lookups" | median)
S=$(cut -d' ' -f2 "$DIR/lookups" | median)
T=$(cut -d' ' -f3 "$DIR/lookups" | median)
echo "s3: events=$EVENTS delay_ms=$DELAY lookup_requests_median=$R lookup_s_median=$S round_trips_median=$(printf '%.1f' "$T")"
