#!/usr/bin/env bash
# `make demo`: a throwaway PostgreSQL; `waly init`; `waly run` capturing a
# workload into a local archive; `waly log` reading it back; and `waly tail`
# watching live.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/demo
ARCHIVE=$DIR/archive
pg_start "$DIR"
RUN=; TAIL=
trap 'kill $RUN $TAIL 2>/dev/null || true; pg_stop "$DIR"' EXIT
export WALY_SOURCE="dbname=postgres"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
echo "PostgreSQL running on $PGHOST port $PGPORT (throwaway, in $DIR)"

psql -XqAt -d postgres <<'SQL'
CREATE TABLE users (id int PRIMARY KEY, name text, email text, bio text);
CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total numeric(10,2));
CREATE TABLE events_no_key (at timestamptz, what text);
INSERT INTO users VALUES (1, 'alice', 'alice@example.com', NULL);
SQL

say "waly init --archive $ARCHIVE          # refuses: a table without a key would break"
"$WALY" init --archive "$ARCHIVE" || true
say "waly init --archive $ARCHIVE --replica-identity-full"
"$WALY" init --archive "$ARCHIVE" --replica-identity-full

say "waly run --archive $ARCHIVE --metrics-addr 127.0.0.1:19187 &"
"$WALY" run --archive "$ARCHIVE" --log warn --metrics-addr 127.0.0.1:19187 &
RUN=$!
for _ in $(seq 1 300); do
    [ "$(psql -XAt -d postgres -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'waly' AND active")" = 1 ] && break
    sleep 0.1
done

say "psql <<workload>>"
psql -Xq -d postgres >/dev/null <<'SQL'
INSERT INTO users VALUES (2, 'bob', '', 'likes ünïcode ☕');
BEGIN;
SELECT pg_logical_emit_message(true, 'waly', '{"op":"PLACE_ORDER","actor":"alice","request":"r-17"}');
INSERT INTO orders VALUES (100, 1, 42.50);
UPDATE users SET email = 'alice@new.example' WHERE id = 1;
COMMIT;
UPDATE users SET id = 20 WHERE id = 2;
DELETE FROM orders WHERE id = 100;
INSERT INTO events_no_key VALUES (now(), 'signup');
SQL
sleep 1
BEFORE=$(psql -XAt -d postgres -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
sleep 1
say "psql -c \"DELETE FROM users WHERE id = 1\"   # oops (at $BEFORE everything was fine)"
psql -Xq -d postgres -c "DELETE FROM users WHERE id = 1"
sleep 2
say "GET http://127.0.0.1:19187/metrics   # Prometheus; /healthz and /readyz too"
{ exec 3<>/dev/tcp/127.0.0.1/19187 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 \
    && grep -E '^waly_(events|transactions)_archived_total|^waly_ready ' <&3; exec 3<&-; } || echo "(metrics not reachable)"
say "kill -TERM \$RUN   # flushes, confirms the slot, exits 0"
kill -TERM $RUN; wait $RUN; RUN=

say "waly log --archive $ARCHIVE"
"$WALY" log --archive "$ARCHIVE"
say "waly log --archive $ARCHIVE --table users --json"
"$WALY" log --archive "$ARCHIVE" --table users --json
say "waly log --archive $ARCHIVE --snapshot --table users   # the base snapshot is not a change; shown on request"
"$WALY" log --archive "$ARCHIVE" --snapshot --table users | head -3
say "waly history users 1   # every version of one row: when, which transaction, what changed, why"
"$WALY" history users 1 --archive "$ARCHIVE"
say "waly history users 2   # the key changed to 20: the history follows it"
"$WALY" history users 2 --archive "$ARCHIVE"
say "waly tables; waly schema users"
"$WALY" tables --archive "$ARCHIVE"
"$WALY" schema users --archive "$ARCHIVE"
say "waly show users --at $BEFORE   # the table as it was"
"$WALY" show users --archive "$ARCHIVE" --at "$BEFORE"
say "waly restore users --at $BEFORE --into users_before   # into a new table"
"$WALY" restore users --archive "$ARCHIVE" --at "$BEFORE" --into users_before
psql -X -d postgres -c "TABLE users_before"
say "waly restore users --at $BEFORE --key 1 --upsert   # row-level undo; --apply runs it"
"$WALY" restore users --archive "$ARCHIVE" --at "$BEFORE" --key 1 --upsert
say "waly verify   # checksums, the hash chain, order, commit markers, manifests, index"
"$WALY" verify --archive "$ARCHIVE"
say "find $ARCHIVE -type f"
(cd "$ARCHIVE" && find . -type f | sort)

say "waly tail --publication waly &   # a live view from a temporary slot"
"$WALY" tail --log warn >"$DIR/tail.out" &
TAIL=$!
for _ in $(seq 1 300); do
    [ "$(psql -XAt -d postgres -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'waly_tail_%' AND active AND confirmed_flush_lsn IS NOT NULL")" = 1 ] && break
    sleep 0.1
done
psql -Xq -d postgres -c "UPDATE users SET name = 'Bob' WHERE id = 20" -c "TRUNCATE orders"
for _ in $(seq 1 100); do [ "$(wc -l <"$DIR/tail.out")" -ge 2 ] && break; sleep 0.1; done
kill -TERM $TAIL; wait $TAIL || true; TAIL=
cat "$DIR/tail.out"
