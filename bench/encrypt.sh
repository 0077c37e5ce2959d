#!/usr/bin/env bash
# Encryption benchmark: the same workload captured into a plaintext and an
# encrypted archive in the same run (rounds alternate plain, encrypted), then
# read back from each: capture rate, restore rate, and the bytes one
# `waly history` lookup reads. Medians of ROUNDS.
#
#   bench/encrypt.sh [ROUNDS] [ROWS]   (default 5 rounds of 1,000,000 rows)
#
# The workload: ROWS rows inserted in one transaction, then every 10th row
# updated (one transaction per 10,000 rows). Capture time runs from `waly
# run`'s start until the slot is confirmed past the workload (as in
# bench/capture.sh); restore is `waly restore items --at now` to a CSV on
# /dev/null; history looks up 21 keys spread over the table (the median of
# their bytes per round: which frames hold a key follows the segment cuts,
# which vary with timing)
# after `waly reindex` (a round's segment cuts, and so the writer's index
# merges, vary with timing). Every figure is a median over rounds.
# The last line: `encrypt: capture_ratio=C restore_ratio=R
# history_bytes_ratio=H` (encrypted over plain; targets C >= 0.95, R >= 0.9,
# H within 0.9..1.1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
ROUNDS=${1:-5}
ROWS=${2:-1000000}
cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/bench-encrypt
pg_start "$DIR" fsync=off logical_decoding_work_mem=64MB
trap 'pg_stop "$DIR"' EXIT
DB=bench
createdb "$DB"
q() { psql -XAtq -d "$DB" -c "$1"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }
rm -f "$DIR/reader.key"
"$WALY" keygen -o "$DIR/reader.key" 2>/dev/null
RECIPIENT=$(sed -n 's/^# public key: //p' "$DIR/reader.key")
q "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2), created timestamptz)"
q "CREATE PUBLICATION waly FOR TABLE items"

# one MODE -> "capture_s restore_s history_bytes archive_bytes"
one() {
    local mode=$1 archive=$DIR/archive-$1
    local enc=() key=()
    if [ "$mode" = encrypted ]; then enc=(--encrypt "age:$RECIPIENT"); key=(--identity "$DIR/reader.key"); fi
    rm -rf "$archive"
    q "TRUNCATE items"
    "$WALY" init --source "dbname=$DB" --archive "$archive" --no-guard --no-ddl-capture "${enc[@]}" >/dev/null
    # The first start: generation and base snapshot; then stop.
    "$WALY" run --source "dbname=$DB" --archive "$archive" --log warn & local pid=$!
    until [ "$(q "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
                  WHERE s.slot_name = 'waly' AND r.state IN ('catchup', 'streaming')")" = 1 ]; do sleep 0.1; done
    kill -TERM $pid; wait $pid
    q "INSERT INTO items SELECT i, 'item ' || i, i % 100, i * 0.01, now() FROM generate_series(1, $ROWS) i"
    for s in $(seq 0 10000 $((ROWS - 1))); do
        q "UPDATE items SET qty = qty + 1 WHERE id > $s AND id <= $((s + 10000)) AND id % 10 = 0"
    done
    local end; end=$(q "SELECT pg_current_wal_insert_lsn()")
    local t0 t1 t2 t3
    t0=$(now)
    # --idle-interval 1s: WAL written after the last commit (a running-xacts
    # record) is confirmed by the idle heartbeat; at the default 5m one round
    # in a few waited five minutes for it.
    "$WALY" run --source "dbname=$DB" --archive "$archive" --log warn --flush-interval 200ms --idle-interval 1s & pid=$!
    q "DO \$\$ BEGIN
         WHILE NOT coalesce((SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'waly'), false)
         LOOP PERFORM pg_sleep(0.005); END LOOP; END \$\$"
    t1=$(now)
    kill -TERM $pid; wait $pid
    q "SELECT pg_drop_replication_slot('waly')" >/dev/null
    t2=$(now)
    "$WALY" restore items --at now --output /dev/null --format csv --archive "$archive" "${key[@]}" 2>/dev/null
    t3=$(now)
    # The index as `waly reindex` lays it out (one object per 128 segments),
    # so both archives' lookups meet the same index shape whatever the
    # timing of the capture's segment cuts and merges.
    "$WALY" reindex --archive "$archive" "${key[@]}" >/dev/null 2>&1
    local bytes=()
    for k in $(seq 7 $((ROWS / 21)) "$ROWS" | head -n 21); do
        "$WALY" history items "$k" --stats --archive "$archive" "${key[@]}" >/dev/null 2>"$DIR/err"
        bytes+=("$(sed -n 's/^read \([0-9]*\) bytes.*/\1/p' "$DIR/err")")
    done
    local hb; hb=$(printf '%s\n' "${bytes[@]}" | median)
    local ab; ab=$(find "$archive/generations" -path '*/segments/*' -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v h="$hb" -v ab="$ab" 'BEGIN { printf "%.3f %.3f %s %s\n", b-a, d-c, h, ab }'
}

CHANGES=$((ROWS + ROWS / 10))
declare -A cap res hist size
for r in $(seq 1 "$ROUNDS"); do
    for mode in plain encrypted; do
        read -r c x h b < <(one "$mode")
        cap[$mode]+="$c "; res[$mode]+="$x "; hist[$mode]+="$h "; size[$mode]+="$b "
        echo "round $r $mode: capture ${c}s restore ${x}s history ${h} bytes per lookup, segments ${b} bytes"
    done
done
m() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
CP=$(m "${cap[plain]}"); CE=$(m "${cap[encrypted]}")
RP=$(m "${res[plain]}"); RE=$(m "${res[encrypted]}")
HP=$(m "${hist[plain]}"); HE=$(m "${hist[encrypted]}")
SP=$(m "${size[plain]}"); SE=$(m "${size[encrypted]}")
awk -v n="$CHANGES" -v rows="$ROWS" -v cp="$CP" -v ce="$CE" -v rp="$RP" -v re="$RE" \
    -v hp="$HP" -v he="$HE" -v sp="$SP" -v se="$SE" 'BEGIN {
    printf "capture: plain %.0f changes/s, encrypted %.0f changes/s\n", n/cp, n/ce
    printf "restore: plain %.0f rows/s, encrypted %.0f rows/s\n", rows/rp, rows/re
    printf "history: plain %d bytes per lookup, encrypted %d bytes per lookup\n", hp, he
    printf "segments: plain %d bytes, encrypted %d bytes (%.3fx)\n", sp, se, se/sp
    printf "encrypt: capture_ratio=%.3f restore_ratio=%.3f history_bytes_ratio=%.3f\n", cp/ce, rp/re, he/hp
}'
