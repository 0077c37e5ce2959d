#!/usr/bin/env bash
# Capture benchmark: `waly run` into a local archive vs `pg_recvlogical -P
# pgoutput` to /dev/null, draining the same WAL from separate slots created
# before the workload; archive size (segment bytes) vs `pg_recvlogical -P
# wal2json | zstd -3`.
#
#   bench/capture.sh [ROUNDS]     (default 3; medians are reported)
#
# Workloads: one transaction inserting 1,000,000 rows; 200,000 single-row
# UPDATE transactions from pgbench. waly's time runs from its start until the
# slot is confirmed past the workload's last transaction (that is: until the
# last change is durably archived). `--flush-interval 200ms` keeps the final
# segment's age bound (1 s by default, a latency setting) from dominating the
# shorter workload.
#
# With WALY_BENCH_ENCRYPT=1 each round also captures the same workload into
# an encrypted archive (`waly init --encrypt age:...`), rounds alternating
# plain and encrypted, and the last line reads `encrypt: capture_ratio=C`:
# the encrypted capture rate over the plain one (both workloads' median
# times summed; issue 12's target: C >= 0.95).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
ROUNDS=${1:-3}
if [ ! -f "$PG_BINDIR/../lib/wal2json.so" ] && ! ls /usr/lib/postgresql/*/lib/wal2json.so >/dev/null 2>&1; then
    echo "installing wal2json for the size comparison"; apt-get install -y -qq postgresql-15-wal2json >/dev/null
fi
cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/bench-capture
pg_start "$DIR" fsync=off logical_decoding_work_mem=64MB
trap 'pg_stop "$DIR"' EXIT
DB=bench
createdb "$DB"
q() { psql -XAtq -d "$DB" -c "$1"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }

printf '\\set aid random(1, 200000)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n' >"$DIR/update.sql"
pgbench -i -q -s 2 "$DB" >/dev/null 2>&1
q "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2), created timestamptz)"
q "ALTER TABLE pgbench_history REPLICA IDENTITY FULL"
q "CREATE PUBLICATION waly FOR ALL TABLES"

ENCRYPT=${WALY_BENCH_ENCRYPT:-0}
if [ "$ENCRYPT" = 1 ]; then
    rm -f "$DIR/reader.key"
    "$WALY" keygen -o "$DIR/reader.key" 2>/dev/null
    RECIPIENT=$(sed -n 's/^# public key: //p' "$DIR/reader.key")
fi

# one NAME ROWS WITH_WAL2JSON MODE COMMAND... -> "recv_s waly_s rss_kb archive_bytes w2j_bytes"
# (MODE: plain, or encrypted: the archive made by `waly init --encrypt`)
one() {
    local name=$1 rows=$2 w2j=$3 mode=$4; shift 4
    local archive=$DIR/archive-$name-$mode
    rm -rf "$archive"
    q "TRUNCATE items"
    q "SELECT pg_create_logical_replication_slot('recv', 'pgoutput')" >/dev/null
    [ "$w2j" = 1 ] && q "SELECT pg_create_logical_replication_slot('w2j', 'wal2json')" >/dev/null
    # Compared with encryption, both archives are made by `waly init` alike.
    if [ "$ENCRYPT" = 1 ]; then
        local enc=()
        [ "$mode" = encrypted ] && enc=(--encrypt "age:$RECIPIENT")
        "$WALY" init --source "dbname=$DB" --archive "$archive" --no-guard --no-ddl-capture "${enc[@]}" >/dev/null
    fi
    # waly's first start: slot, generation, base snapshot; then stop.
    "$WALY" run --source "dbname=$DB" --archive "$archive" --log warn --create-slot & local pid=$!
    # Streaming, not just active: the slot is active while being created too,
    # before the base snapshot.
    until [ "$(q "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
                  WHERE s.slot_name = 'waly' AND r.state IN ('catchup', 'streaming')")" = 1 ]; do sleep 0.1; done
    kill -TERM $pid; wait $pid
    "$@" >/dev/null 2>&1
    local m0; m0=$(q "SELECT pg_current_wal_insert_lsn()")
    q "INSERT INTO items VALUES (-1, 'end marker', 0, 0, now()) ON CONFLICT (id) DO UPDATE SET qty = items.qty + 1"
    local end; end=$(q "SELECT pg_current_wal_insert_lsn()")
    local t0 t1 t2
    t0=$(now)
    pg_recvlogical -d "$DB" --slot recv --start --endpos "$end" --no-loop -o proto_version=1 -o publication_names=waly -f /dev/null
    t1=$(now)
    # --idle-interval 1s: WAL written after the last commit (a running-xacts
    # record) is confirmed by the idle heartbeat; at the default 5m one round
    # in a few waited five minutes for it.
    "$WALY" run --source "dbname=$DB" --archive "$archive" --log warn --flush-interval 200ms --idle-interval 1s --create-slot & pid=$!
    # One server-side loop, not a psql per poll: psql is a Perl wrapper here,
    # and starting one every few milliseconds takes CPU from what is measured.
    q "DO \$\$ BEGIN
         WHILE NOT coalesce((SELECT confirmed_flush_lsn > '$m0' FROM pg_replication_slots WHERE slot_name = 'waly'), false)
         LOOP PERFORM pg_sleep(0.005); END LOOP; END \$\$"
    t2=$(now)
    # Peak resident memory of the whole run so far (the kernel's high-water mark).
    awk '/^VmHWM/ {print $2}' "/proc/$pid/status" >"$DIR/rss"
    kill -TERM $pid; wait $pid
    local w2jb=0
    if [ "$w2j" = 1 ]; then
        pg_recvlogical -d "$DB" --slot w2j --start --endpos "$end" --no-loop -f - | zstd -3 -q -c >"$DIR/w2j.zst"
        w2jb=$(stat -c %s "$DIR/w2j.zst")
        q "SELECT pg_drop_replication_slot('w2j')" >/dev/null
    fi
    q "SELECT pg_drop_replication_slot('recv'), pg_drop_replication_slot('waly')" >/dev/null
    # The changes: segment bytes (the base snapshot is not part of the comparison).
    local ab; ab=$(find "$archive/generations" -path '*/segments/*' -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    awk -v a="$t0" -v b="$t1" -v c="$t2" -v r="$(cat "$DIR/rss")" -v ab="$ab" -v wb="$w2jb" \
        'BEGIN { printf "%.3f %.3f %s %s %s\n", b-a, c-b, r, ab, wb }'
}

PLAIN_S=0 ENCRYPTED_S=0
bench() {
    local name=$1 rows=$2 w2j=$3; shift 3
    local rt=() wt=() et=() rss=() ab=0 wb=0
    for r in $(seq 1 "$ROUNDS"); do
        read -r a b m x y < <(one "$name" "$rows" "$w2j" plain "$@")
        rt+=("$a"); wt+=("$b"); rss+=("$m"); ab=$x; wb=$y
        if [ "$ENCRYPT" = 1 ]; then
            read -r _ b _ _ _ < <(one "$name" "$rows" 0 encrypted "$@")
            et+=("$b")
        fi
    done
    local rm wm mx
    rm=$(printf '%s\n' "${rt[@]}" | median); wm=$(printf '%s\n' "${wt[@]}" | median)
    mx=$(printf '%s\n' "${rss[@]}" | sort -n | tail -n 1)
    awk -v n="$name" -v rows="$rows" -v r="$rm" -v w="$wm" -v m="$mx" -v ab="$ab" -v wb="$wb" -v rr="${rt[*]}" -v ww="${wt[*]}" 'BEGIN {
        printf "%-24s pg_recvlogical %8.0f/s  waly run %8.0f/s  ratio %.2f  peak RSS %.1f MiB  archive %.1f B/change",
            n, rows/r, rows/w, r/w, m/1024, ab/rows
        if (wb > 0) printf "  (wal2json|zstd -3: %.1f B/change, %.1f MB per 1M rows)", wb/rows, wb/rows
        printf "\n%-24s runs (s): pg_recvlogical [%s]  waly [%s]\n", "", rr, ww
    }'
    if [ "$ENCRYPT" = 1 ]; then
        local em; em=$(printf '%s\n' "${et[@]}" | median)
        awk -v rows="$rows" -v w="$wm" -v e="$em" -v ee="${et[*]}" 'BEGIN {
            printf "%-24s encrypted: waly run %8.0f/s, %.3f of plain; runs (s) [%s]\n", "", rows/e, w/e, ee
        }'
        PLAIN_S=$(awk -v a="$PLAIN_S" -v b="$wm" 'BEGIN {print a + b}')
        ENCRYPTED_S=$(awk -v a="$ENCRYPTED_S" -v b="$em" 'BEGIN {print a + b}')
    fi
}

echo "rounds: $ROUNDS (medians)"
bench "1M-row insert (1 txn)" 1000000 1 \
    q "INSERT INTO items SELECT i, 'item ' || i, i % 100, i * 0.01, now() FROM generate_series(1, 1000000) i"
bench "200k pgbench updates" 200000 0 \
    pgbench -n -c 4 -j 2 -t 50000 -f "$DIR/update.sql" "$DB"
if [ "$ENCRYPT" = 1 ]; then
    awk -v p="$PLAIN_S" -v e="$ENCRYPTED_S" 'BEGIN {printf "encrypt: capture_ratio=%.3f\n", p/e}'
fi
