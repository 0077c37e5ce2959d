#!/usr/bin/env bash
# Big-table memory benchmark: `waly run`'s first snapshot of one table of
# ROWS rows keyed by `uuid` (a hash per row in the snapshot's index, so the
# index has an entry per row), then `waly restore` of it to CSV, each with
# its peak RSS from /usr/bin/time. With WALY_BASELINE=path/to/waly, the same
# for that binary in the same run (a ratio is only fair within one run).
#
#   bench/big-table.sh [ROWS]     (default 10000000)
#
# Last line: big-table: rows=N snapshot_rss_kb=S restore_rss_kb=R restore_s=T
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
ROWS=${1:-10000000}
cargo build --release --quiet
DIR=$PWD/.tmp/bench-big-table
pg_start "$DIR" fsync=off
trap 'pg_stop "$DIR"' EXIT
createdb bench
q() { psql -XAtq -d bench -c "$1"; }
q "CREATE TABLE big (id uuid PRIMARY KEY, v text)"
q "INSERT INTO big SELECT gen_random_uuid(), 'x' || g FROM generate_series(1, $ROWS) g"
rss() { sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$1"; }
measure() {
    local waly=$1 archive=$DIR/archive
    rm -rf "$archive"
    q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'waly'" >/dev/null
    q "DROP PUBLICATION IF EXISTS waly" 2>/dev/null
    "$waly" init --source "dbname=bench" --archive "$archive" >/dev/null
    /usr/bin/time -v "$waly" run --source "dbname=bench" --archive "$archive" --log warn 2>"$DIR/run.err" &
    local pid=$!
    # The snapshot is done once its index object is written.
    until compgen -G "$archive/index/*/snapshots/*.idx" >/dev/null; do
        kill -0 "$pid" 2>/dev/null || { cat "$DIR/run.err"; exit 1; }
        sleep 0.5
    done
    sleep 1
    pkill -INT -P "$pid"   # waly, under /usr/bin/time (which ignores SIGINT)
    wait "$pid" || true
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -v "$waly" restore --archive "$archive" public.big --at now --output "$DIR/big.csv" --format csv 2>"$DIR/restore.err" >/dev/null
    t1=$(date +%s.%N)
    local lines; lines=$(wc -l <"$DIR/big.csv")
    [ "$lines" -eq $((ROWS + 1)) ] || { echo "restored $lines lines for $ROWS rows" >&2; exit 1; }
    echo "rows=$ROWS snapshot_rss_kb=$(rss "$DIR/run.err") restore_rss_kb=$(rss "$DIR/restore.err") restore_s=$(echo "$t1 - $t0" | bc)"
}
if [ -n "${WALY_BASELINE:-}" ]; then
    echo "baseline $WALY_BASELINE: $(measure "$WALY_BASELINE")"
fi
echo "big-table: $(measure "$PWD/target/release/waly")"
