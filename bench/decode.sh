#!/usr/bin/env bash
# Decode benchmark: waly's replication client + decoder vs pg_recvlogical,
# draining the same WAL from separate slots created before the workload.
#
#   bench/decode.sh [ROUNDS]      (default 3; medians are reported)
#
# Workloads: one transaction inserting 1,000,000 rows; 200,000 single-row
# UPDATE transactions from pgbench. pg_recvlogical writes the raw pgoutput
# stream to /dev/null; waly decodes every message into change events and
# serializes them as JSON lines to /dev/null. Both stop at the same --endpos.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
ROUNDS=${1:-3}
cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/bench-decode
pg_start "$DIR" fsync=off logical_decoding_work_mem=64MB
trap 'pg_stop "$DIR"' EXIT
DB=bench
createdb "$DB"
q() { psql -XAtq -d "$DB" -c "$1"; }

# drain TOOL SLOT ENDPOS -> prints "seconds maxrss_kb"
drain() {
    local tool=$1 slot=$2 end=$3 t
    t=$(mktemp)
    if [ "$tool" = recv ]; then
        /usr/bin/time -f '%e %M' -o "$t" pg_recvlogical -d "$DB" --slot "$slot" --start --endpos "$end" --no-loop \
            -o proto_version=1 -o publication_names=waly -f /dev/null
    else
        /usr/bin/time -f '%e %M' -o "$t" "$WALY" tail --source "dbname=$DB" --slot "$slot" --endpos "$end" \
            --json --log warn >/dev/null
    fi
    tail -n 1 "$t"; rm -f "$t"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# run_workload NAME ROWS SQL-OR-COMMAND...
bench() {
    local name=$1 rows=$2; shift 2
    for r in $(seq 1 "$ROUNDS"); do
        q "SELECT pg_create_logical_replication_slot('recv_$r', 'pgoutput')" >/dev/null
        q "SELECT pg_create_logical_replication_slot('waly_$r', 'pgoutput')" >/dev/null
    done
    "$@" >/dev/null
    local end; end=$(q "SELECT pg_current_wal_insert_lsn()")
    local rt=() wt=() wm=()
    for r in $(seq 1 "$ROUNDS"); do
        # Alternate who goes first, so neither always meets a cold cache.
        if [ $((r % 2)) = 1 ]; then
            read -r s m < <(drain recv "recv_$r" "$end"); rt+=("$s")
            read -r s m < <(drain waly "waly_$r" "$end"); wt+=("$s"); wm+=("$m")
        else
            read -r s m < <(drain waly "waly_$r" "$end"); wt+=("$s"); wm+=("$m")
            read -r s m < <(drain recv "recv_$r" "$end"); rt+=("$s")
        fi
        q "SELECT pg_drop_replication_slot('recv_$r'), pg_drop_replication_slot('waly_$r')" >/dev/null
    done
    local rmed wmed wmax
    rmed=$(printf '%s\n' "${rt[@]}" | median)
    wmed=$(printf '%s\n' "${wt[@]}" | median)
    wmax=$(printf '%s\n' "${wm[@]}" | sort -n | tail -n 1)
    awk -v n="$name" -v rows="$rows" -v r="$rmed" -v w="$wmed" -v m="$wmax" -v rr="${rt[*]}" -v ww="${wt[*]}" 'BEGIN {
        printf "%-26s pg_recvlogical %8.0f/s (%.2fs)   waly %8.0f/s (%.2fs)   ratio %.2f   waly peak RSS %.1f MiB\n",
            n, rows/r, r, rows/w, w, r/w, m/1024
        printf "%-26s runs: pg_recvlogical [%s]  waly [%s]\n", "", rr, ww
    }'
}

q "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2), created timestamptz)"
q "CREATE PUBLICATION waly FOR ALL TABLES"
echo "rounds: $ROUNDS (median seconds per drain; both drain the same WAL from their own slots)"
bench "1M-row insert (1 txn)" 1000000 \
    q "INSERT INTO items SELECT i, 'item ' || i, i % 100, i * 0.01, now() FROM generate_series(1, 1000000) i"

pgbench -i -q -s 2 "$DB" >/dev/null 2>&1
q "ALTER TABLE pgbench_history REPLICA IDENTITY FULL"
printf '\\set aid random(1, 200000)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n' >"$DIR/update.sql"
bench "200k pgbench updates" 200000 \
    pgbench -n -c 4 -j 2 -t 50000 -f "$DIR/update.sql" "$DB"
