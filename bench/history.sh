#!/usr/bin/env bash
# History benchmark: one row's history in an archive of >= 10M change events
# over >= 500 segments, through the index and by a full scan.
#
#   bench/history.sh [KEYS] [SCAN_KEYS]   (default 100 keys through the index, 5 by full scan)
#
# The archive: pgbench_accounts at scale 10 (1M rows) in the base snapshot,
# then 10 updates of every row (10M changes), with 2 MiB segments. Reports
# the median and p99 latency of `waly history pgbench_accounts <aid>`, the
# bytes each lookup read (also as a fraction of the archive), and the same
# for a full scan (`--scan`), which reads everything.
# The last line: `history: events=N segments=S archive_bytes=A index_bytes=I
# lookup_objects_median=O lookup_bytes_median=B lookup_fraction_pct=F
# lookup_p99_s=P` (objects: distinct objects a lookup read, WALY_READ_STATS).
#
# With WALY_BENCH_ENCRYPT=1 the same archive is built again encrypted
# (`waly init --encrypt age:...`) in the same run, the same keys looked up in
# it with the identity, and the line before the last reads `encrypt:
# history_bytes_ratio=H lookup_objects_plain=O lookup_objects_encrypted=E`
# (medians, encrypted over plain; issue 12's target: H within 0.9..1.1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
KEYS=${1:-100}
SCAN_KEYS=${2:-5}
cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/bench-history
pg_start "$DIR" fsync=off max_wal_size=4GB
trap 'pg_stop "$DIR"' EXIT
ARCHIVE=$DIR/archive
. bench/archive-10m.sh
build_10m_archive "$WALY" "$ARCHIVE"
# The archive proper (segments and snapshots); the index is derived and counted apart.
TOTAL=$(find "$ARCHIVE/generations" "$ARCHIVE/waly.json" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
SEGS=$(find "$ARCHIVE/generations" -path '*/segments/*' -type f | wc -l)
IDX=$(find "$ARCHIVE/index" -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s + 0}')
echo "archive: $TOTAL bytes in $SEGS segments and a snapshot (10M changes + 1M rows); index: $IDX bytes more"

lookup() { # KEY FLAGS... -> "seconds bytes objects" (in $ARCHIVE)
    local key=$1; shift
    local t0 t1
    t0=$(date +%s.%N)
    WALY_READ_STATS=1 "$WALY" history pgbench_accounts "$key" --archive "$ARCHIVE" --json --stats "$@" >"$DIR/out" 2>"$DIR/err"
    t1=$(date +%s.%N)
    [ "$(wc -l <"$DIR/out")" = 11 ] || { echo "key $key: expected 11 versions, got $(wc -l <"$DIR/out")"; cat "$DIR/err"; exit 1; }
    echo "$(echo "$t1 - $t0" | bc) $(sed -n 's/^read \([0-9]*\) bytes.*/\1/p' "$DIR/err") $(sed -n 's/^reads: [0-9]* bytes in [0-9]* GET requests to \([0-9]*\) objects.*/\1/p' "$DIR/err")"
}
stats() { # file -> "median p99" of column 1 (seconds), median of column 2 (bytes)
    local t b
    t=$(cut -d' ' -f1 "$1" | sort -g | awk '{a[NR]=$1} END {i = int(NR*0.99 + 0.5); if (i < 1) i = 1
        printf "%s %s", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[i]}')
    b=$(cut -d' ' -f2 "$1" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    echo "$t $b"
}
: >"$DIR/indexed"; : >"$DIR/scanned"
for k in $(shuf -i 1-1000000 -n "$KEYS" --random-source=<(yes)); do lookup "$k" >>"$DIR/indexed"; done
for k in $(shuf -i 1-1000000 -n "$SCAN_KEYS" --random-source=<(yes)); do lookup "$k" --scan >>"$DIR/scanned"; done
read -r im ip ib < <(stats "$DIR/indexed")
IO=$(cut -d' ' -f3 "$DIR/indexed" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
EVENTS=$("$WALY" tables --archive "$ARCHIVE" --json | sed -n 's/.*"changes":\([0-9]*\).*/\1/p' | awk '{s += $1} END {print s}')
read -r sm sp sb < <(stats "$DIR/scanned")
if [ "${WALY_BENCH_ENCRYPT:-0}" = 1 ]; then
    rm -f "$DIR/reader.key"
    "$WALY" keygen -o "$DIR/reader.key" 2>/dev/null
    PLAIN=$ARCHIVE
    ARCHIVE=$DIR/archive-encrypted
    build_10m_archive "$WALY" "$ARCHIVE" --encrypt "age:$(sed -n 's/^# public key: //p' "$DIR/reader.key")"
    : >"$DIR/encrypted"
    for k in $(shuf -i 1-1000000 -n "$KEYS" --random-source=<(yes)); do
        lookup "$k" --identity "$DIR/reader.key" >>"$DIR/encrypted"
    done
    ARCHIVE=$PLAIN
    read -r _ _ eb < <(stats "$DIR/encrypted")
    EO=$(cut -d' ' -f3 "$DIR/encrypted" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    ENC_LINE="encrypt: history_bytes_ratio=$(awk -v e="$eb" -v p="$ib" 'BEGIN {printf "%.3f", e/p}') lookup_objects_plain=$IO lookup_objects_encrypted=$EO"
fi
awk -v im="$im" -v ip="$ip" -v ib="$ib" -v sm="$sm" -v sp="$sp" -v sb="$sb" -v total="$TOTAL" -v k="$KEYS" -v sk="$SCAN_KEYS" 'BEGIN {
    printf "index (%d keys):     median %.3f s  p99 %.3f s  read %d bytes per lookup (%.3f%% of the archive)\n", k, im, ip, ib, 100*ib/total
    printf "full scan (%d keys): median %.3f s  p99 %.3f s  read %d bytes per lookup (%.1f%% of the archive)\n", sk, sm, sp, sb, 100*sb/total
    printf "ratio: the index reads %.0fx fewer bytes and answers %.1fx faster (medians)\n", sb/ib, sm/im
}'
if [ -n "${ENC_LINE:-}" ]; then echo "$ENC_LINE"; fi
echo "history: events=$EVENTS segments=$SEGS archive_bytes=$TOTAL index_bytes=$IDX lookup_objects_median=$IO lookup_bytes_median=$ib lookup_fraction_pct=$(awk -v b="$ib" -v t="$TOTAL" 'BEGIN {printf "%.3f", 100*b/t}') lookup_p99_s=$ip"
