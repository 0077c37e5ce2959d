#!/usr/bin/env bash
# Idle benchmark: what an idle source costs the archive. `waly run` streams a
# database whose published table does not change, while another database on
# the same server writes WAL (a small transaction every 2 seconds), for
# MINUTES minutes at the default `--idle-interval` (5 minutes). Reports the
# objects the archive gained and how far the slot's confirmed LSN moved, and
# whether it passed the other database's WAL as it was when the wait began.
#
#   bench/idle.sh [MINUTES]    (default 10)
#
# The last line: `idle: minutes=M objects_gained=N segments_gained=S
# confirmed_advanced_bytes=B passed_other_wal=yes|no`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
MINUTES=${1:-10}
cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/bench-idle
pg_start "$DIR" fsync=off
ARCHIVE=$DIR/archive
createdb app
createdb other
psql -XAtq -d app -c "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'); CREATE PUBLICATION waly FOR TABLE t"
psql -XAtq -d other -c "CREATE TABLE noise (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"
"$WALY" run --source "dbname=app" --archive "$ARCHIVE" --create-slot --log warn & PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; pg_stop "$DIR"' EXIT
confirmed() { psql -XAtq -d app -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'waly'"; }
until [ -n "$(confirmed)" ] && [ "$(psql -XAtq -d app -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" = 1 ]; do sleep 0.5; done
sleep 5 # the base snapshot and its first segment
objects() { find "$ARCHIVE" -type f | wc -l; }
segments() { find "$ARCHIVE/generations" -path '*/segments/*' -type f | wc -l; }
O0=$(objects); S0=$(segments); C0=$(confirmed)
OTHER=$(psql -XAtq -d other -c "SELECT pg_current_wal_insert_lsn()")
END=$(($(date +%s) + MINUTES * 60))
while [ "$(date +%s)" -lt "$END" ]; do
    psql -XAtq -d other -c "INSERT INTO noise DEFAULT VALUES"
    sleep 2
done
O1=$(objects); S1=$(segments); C1=$(confirmed)
ADV=$(psql -XAtq -d app -c "SELECT pg_wal_lsn_diff('$C1', '$C0')")
PASSED=$(psql -XAtq -d app -c "SELECT CASE WHEN '$C1'::pg_lsn > '$OTHER'::pg_lsn THEN 'yes' ELSE 'no' END")
echo "archive objects: $O0 -> $O1 (segments $S0 -> $S1); confirmed LSN $C0 -> $C1 (the other database's WAL was at $OTHER)"
echo "idle: minutes=$MINUTES objects_gained=$((O1 - O0)) segments_gained=$((S1 - S0)) confirmed_advanced_bytes=$ADV passed_other_wal=$PASSED"
