#!/usr/bin/env bash
# `make demo`: a throwaway PostgreSQL, a small workload, and `waly tail`
# showing every change as it commits.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/demo
pg_start "$DIR"
trap 'kill $TAIL 2>/dev/null || true; pg_stop "$DIR"' EXIT
echo "PostgreSQL running on $PGHOST port $PGPORT (throwaway, in $DIR)"

psql -XqAt -d postgres <<'SQL'
CREATE TABLE users (id int PRIMARY KEY, name text, email text, bio text);
CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total numeric(10,2));
CREATE PUBLICATION waly FOR ALL TABLES;
SQL

echo
echo "\$ waly tail --source 'dbname=postgres' --publication waly &"
"$WALY" tail --source "dbname=postgres" --publication waly --log warn >"$DIR/tail.out" &
TAIL=$!
# Wait for the tail's temporary slot to exist before writing anything.
for _ in $(seq 1 100); do
    [ "$(psql -XAt -d postgres -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'waly_tail_%' AND active AND confirmed_flush_lsn IS NOT NULL")" = 1 ] && break
    sleep 0.1
done

echo "\$ psql <<workload>>"
psql -Xq -d postgres >/dev/null <<'SQL'
INSERT INTO users VALUES (1, 'alice', 'alice@example.com', NULL), (2, 'bob', '', 'likes ünïcode ☕');
BEGIN;
SELECT pg_logical_emit_message(true, 'waly', '{"op":"PLACE_ORDER","actor":"alice","request":"r-17"}');
INSERT INTO orders VALUES (100, 1, 42.50);
UPDATE users SET email = 'alice@new.example' WHERE id = 1;
COMMIT;
UPDATE users SET id = 20 WHERE id = 2;
DELETE FROM orders WHERE id = 100;
TRUNCATE orders;
SQL

for _ in $(seq 1 100); do
    [ "$(grep -c truncate "$DIR/tail.out" || true)" -ge 1 ] && break
    sleep 0.1
done
kill -TERM $TAIL; wait $TAIL || true
echo
echo "--- waly tail printed:"
cat "$DIR/tail.out"
echo
echo "--- with --json, one object per change (a new tail, then one more update):"
"$WALY" tail --source "dbname=postgres" --publication waly --json --log warn >"$DIR/tail.json" &
TAIL=$!
for _ in $(seq 1 100); do
    [ "$(psql -XAt -d postgres -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'waly_tail_%' AND active AND confirmed_flush_lsn IS NOT NULL")" = 1 ] && break
    sleep 0.1
done
psql -Xq -d postgres -c "UPDATE users SET name = 'Alice' WHERE id = 1"
for _ in $(seq 1 100); do [ -s "$DIR/tail.json" ] && break; sleep 0.1; done
kill -TERM $TAIL; wait $TAIL || true
cat "$DIR/tail.json"
