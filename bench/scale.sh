#!/usr/bin/env bash
# Scale benchmark: what reads cost as the archive grows, on synthetic
# archives (`waly synth`, no PostgreSQL) of each size given, with the same
# table mix: public.t0 (1M rows) takes 1,000,000 parts of the changes, t1
# (100k rows) 100,000, t2 (10k rows) 10,000 and t3 (1k rows) 1: t3 is a
# small table that changes rarely (about one change per 1.1M, so 9 at 10^7
# and 90 at 10^8) while t0 dominates. Per size it reports:
#   - one row's history (random ids of t0, skewed to low ids as the changes
#     are): objects and bytes read per lookup (medians), and the p99 time;
#   - `waly tables`: objects read and wall time;
#   - a restore of t3 to a file: the share of the archive's bytes it read;
#   - (on the line before) what an export of t3 alone reads, and what a
#     log of the last 1% of the time reads (its first segment found by the
#     headers' commit-time marks).
#
#   bench/scale.sh [SIZES] [LOOKUPS]   (default "10000000 100000000", 25)
#
# Disk: about 10 bytes of segments per event plus the index (about 1 GB and
# 0.2 GB at 10^8); writing 10^8 events takes about 10 minutes here. Archives
# are kept in .tmp/bench-scale and reused while the mix and the index
# format are the same.
# WALY_READ_STATS=1 makes waly print what a command read (requests, objects, bytes).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${1:-10000000 100000000}
LOOKUPS=${2:-25}
cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/bench-scale
mkdir -p "$DIR"
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
p99() { sort -g | awk '{a[NR]=$1} END {i = int(NR*0.99 + 0.5); if (i < 1) i = 1; print a[i]}'; }
now() { date +%s.%N; }
read_field() { sed -n "s/^reads: \([0-9]*\) bytes in \([0-9]*\) GET requests to \([0-9]*\) objects, \([0-9]*\) listings.*/\\$1/p" "$2"; }
LINES=()
for N in $SIZES; do
    MIX="--weights 1000000,100000,10000,1 --rows 1000000,100000,10000,1000 --skew 1 --row-bytes 64 --txn-changes 10 --txn-interval-ms 100"
    # The mix and the index format the archive was written with, its
    # tails directory and its segments' commit-time marks (a new format: a
    # new archive).
    ARCHIVE=$DIR/archive-$N-$(echo "$MIX index-format-5 tails-2 time-marks-1" | cksum | cut -d" " -f1)
    if [ ! -f "$ARCHIVE/.complete" ]; then
        rm -rf "$ARCHIVE"
        # shellcheck disable=SC2086
        "$WALY" synth --archive "$ARCHIVE" --events "$N" $MIX --log warn
        touch "$ARCHIVE/.complete"
    fi
    ARCHIVE_BYTES=$(find "$ARCHIVE/generations" "$ARCHIVE/waly.json" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
    INDEX_BYTES=$(find "$ARCHIVE/index" -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s + 0}')
    SEGS=$(find "$ARCHIVE/generations" -path '*/segments/*' -type f | wc -l)
    echo "archive of $N events: $ARCHIVE_BYTES bytes in $SEGS segments; index $INDEX_BYTES bytes"

    : >"$DIR/history"
    for k in $(shuf -i 1-1000000 -n "$LOOKUPS" --random-source=<(yes)); do
        t0=$(now)
        WALY_READ_STATS=1 "$WALY" history --archive "$ARCHIVE" public.t0 "$k" --json >/dev/null 2>"$DIR/err"
        t1=$(now)
        echo "$(read_field 3 "$DIR/err") $(read_field 1 "$DIR/err") $(echo "$t1 - $t0" | bc)" >>"$DIR/history"
    done
    H_OBJ=$(cut -d' ' -f1 "$DIR/history" | median)
    H_BYTES=$(cut -d' ' -f2 "$DIR/history" | median)
    H_P99=$(cut -d' ' -f3 "$DIR/history" | p99)

    t0=$(now)
    WALY_READ_STATS=1 "$WALY" tables --archive "$ARCHIVE" >/dev/null 2>"$DIR/err"
    t1=$(now)
    T_OBJ=$(read_field 3 "$DIR/err")
    T_S=$(echo "$t1 - $t0" | bc)

    rm -f "$DIR/t3.csv"
    WALY_READ_STATS=1 "$WALY" restore --archive "$ARCHIVE" public.t3 --at now --output "$DIR/t3.csv" >/dev/null 2>"$DIR/err"
    R_BYTES=$(read_field 1 "$DIR/err")
    R_PCT=$(awk -v r="$R_BYTES" -v a="$ARCHIVE_BYTES" 'BEGIN {printf "%.2f", 100 * r / a}')
    # An export of t3 alone (its frames, and those holding intents: synth
    # writes none here).
    rm -rf "$DIR/t3-export"
    WALY_READ_STATS=1 "$WALY" export --archive "$ARCHIVE" --to "$DIR/t3-export" --tables public.t3 --log warn >/dev/null 2>"$DIR/err"
    E_BYTES=$(read_field 1 "$DIR/err")
    rm -rf "$DIR/t3-export"
    # The log of the last 1% of the time: synth's N/10 transactions are
    # 100 ms apart from 2026-01-01T00:00:00Z (1767225600).
    SINCE=$(date -u -d "@$((1767225600 + N * 99 / 10000))" +%FT%TZ)
    WALY_READ_STATS=1 "$WALY" log --archive "$ARCHIVE" --since "$SINCE" --json 2>"$DIR/err" | wc -l >"$DIR/since-lines"
    S_BYTES=$(read_field 1 "$DIR/err")
    S_REQ=$(read_field 2 "$DIR/err")
    pct() { awk -v r="$1" -v a="$ARCHIVE_BYTES" 'BEGIN {printf "%.2f", 100 * r / a}'; }
    echo "history: p99 ${H_P99}s; restore of t3: $R_BYTES bytes read; export of t3: $E_BYTES bytes read ($(pct "$E_BYTES")% of the archive); log --since $SINCE: $(cat "$DIR/since-lines") changes, $S_BYTES bytes read ($(pct "$S_BYTES")%) in $S_REQ requests"
    LINES+=("scale: events=$N history_objects_median=$H_OBJ history_bytes_median=$H_BYTES tables_objects=$T_OBJ tables_s=$T_S restore_small_fraction_pct=$R_PCT")
done
printf '%s\n' "${LINES[@]}"
