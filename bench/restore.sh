#!/usr/bin/env bash
# Restore benchmark: `waly restore` into a new table vs a plain `COPY FROM` of
# the same final rows into an empty table with the same primary key.
#
#   bench/restore.sh [ROUNDS]     (default 3; medians are reported)
#
# The table: 1,000,000 rows in the base snapshot, then 200,000 updates
# archived as changes. Both sides end with the same 1M rows; waly's time is
# the whole `waly restore` (reading and decompressing the archive, sorting,
# folding, COPY into the new table), peak RSS from /usr/bin/time. A last
# line restores the same table after 1,000,000 more updates (1.2M changes in
# all) to show that memory does not grow with the history.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
ROUNDS=${1:-3}
cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/bench-restore
pg_start "$DIR" fsync=off
trap 'pg_stop "$DIR"' EXIT
createdb bench
q() { psql -XAtq -d bench -c "$1"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }
ARCHIVE=$DIR/archive
rm -rf "$ARCHIVE"
# waly run in the background, streaming (its walsender past startup).
start_waly() {
    "$WALY" run --source "dbname=bench" --archive "$ARCHIVE" --idle-interval 10s --log warn --create-slot & pid=$!
    until [ "$(q "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
                  WHERE s.slot_name = 'waly' AND r.state IN ('catchup', 'streaming')")" = 1 ]; do sleep 0.2; done
}
# Waits (server-side) until the slot is confirmed past everything written, then stops waly.
stop_waly_when_archived() {
    local end; end=$(q "SELECT pg_current_wal_insert_lsn()")
    q "DO \$\$ BEGIN
         WHILE NOT coalesce((SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'waly'), false)
         LOOP PERFORM pg_sleep(0.05); END LOOP; END \$\$"
    kill -TERM "$pid"; wait "$pid"
}

q "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2), created timestamptz)"
q "INSERT INTO items SELECT i, 'item ' || i, i % 100, i * 0.01, now() FROM generate_series(1, 1000000) i"
q "CREATE PUBLICATION waly FOR TABLE items"
start_waly
q "UPDATE items SET qty = qty + 1, name = name || '+' WHERE id % 5 = 0"
stop_waly_when_archived
AT=$(q "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
ROWS=$(q "SELECT count(*) FROM items")
chmod 777 "$DIR"
q "COPY items TO '$DIR/items.copy'"
echo "archive: $(du -sb "$ARCHIVE" | cut -f1) bytes; $ROWS rows"

wt=(); ct=(); rss=()
for r in $(seq 1 "$ROUNDS"); do
    q "DROP TABLE IF EXISTS items_restored, items_copy"
    t0=$(now)
    /usr/bin/time -f %M -o "$DIR/rss" "$WALY" restore items --source "dbname=bench" --archive "$ARCHIVE" \
        --at "$AT" --into items_restored 2>"$DIR/restore.err" || { cat "$DIR/restore.err"; exit 1; }
    t1=$(now)
    q "CREATE TABLE items_copy (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2), created timestamptz)"
    t2=$(now)
    q "COPY items_copy FROM '$DIR/items.copy'"
    t3=$(now)
    [ "$(q "SELECT count(*) FROM (SELECT * FROM items EXCEPT SELECT * FROM items_restored) d")" = 0 ] || { echo "restored rows differ"; exit 1; }
    wt+=("$(echo "$t1 - $t0" | bc)"); ct+=("$(echo "$t3 - $t2" | bc)"); rss+=("$(cat "$DIR/rss")")
done
wm=$(printf '%s\n' "${wt[@]}" | median); cm=$(printf '%s\n' "${ct[@]}" | median)
mx=$(printf '%s\n' "${rss[@]}" | sort -n | tail -n 1)
awk -v rows="$ROWS" -v w="$wm" -v c="$cm" -v m="$mx" -v ww="${wt[*]}" -v cc="${ct[*]}" 'BEGIN {
    printf "1M rows + 200k updates   COPY FROM %8.0f rows/s  waly restore %8.0f rows/s  ratio %.2f  peak RSS %.1f MiB\n",
        rows/c, rows/w, c/w, m/1024
    printf "                         runs (s): COPY [%s]  waly [%s]\n", cc, ww
}'

# Memory with a long history: 1M more updates (every row), then one restore.
start_waly
q "UPDATE items SET qty = qty + 1"
stop_waly_when_archived
AT=$(q "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
q "DROP TABLE IF EXISTS items_restored"
t0=$(now)
/usr/bin/time -f %M -o "$DIR/rss" "$WALY" restore items --source "dbname=bench" --archive "$ARCHIVE" \
    --at "$AT" --into items_restored 2>"$DIR/restore.err" || { cat "$DIR/restore.err"; exit 1; }
t1=$(now)
[ "$(q "SELECT count(*) FROM (SELECT * FROM items EXCEPT SELECT * FROM items_restored) d")" = 0 ] || { echo "restored rows differ"; exit 1; }
awk -v rows="$ROWS" -v t="$(echo "$t1 - $t0" | bc)" -v m="$(cat "$DIR/rss")" 'BEGIN {
    printf "1M rows + 1.2M changes   waly restore %8.0f rows/s  peak RSS %.1f MiB\n", rows/t, m/1024
}'
