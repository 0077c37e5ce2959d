# Sourced by bench/history.sh and bench/export.sh (after scripts/pg.sh and
# pg_start): build_10m_archive WALY ARCHIVE makes the 10M-change bench
# archive: pgbench_accounts at scale 10 (1M rows) in the base snapshot, then
# 10 updates of every row (10M changes), with 2 MiB segments. Any further
# arguments go to `waly init` (e.g. --encrypt age:RECIPIENT), run first; a
# database "bench" and a slot "waly" from an earlier build are dropped.
build_10m_archive() {
    local waly=$1 archive=$2 pid end
    shift 2
    psql -XAtq -d postgres -c "SELECT pg_drop_replication_slot('waly') FROM pg_replication_slots WHERE slot_name = 'waly'" >/dev/null
    dropdb --if-exists bench
    createdb bench
    rm -rf "$archive"
    pgbench -i -q -s 10 bench >/dev/null 2>&1
    psql -XAtq -d bench -c "CREATE PUBLICATION waly FOR TABLE pgbench_accounts"
    if [ $# -gt 0 ]; then
        "$waly" init --source "dbname=bench" --archive "$archive" --no-guard --no-ddl-capture "$@" >/dev/null
    fi
    "$waly" run --source "dbname=bench" --archive "$archive" --segment-size 2MiB --idle-interval 10s --log warn --create-slot & pid=$!
    until [ "$(psql -XAtq -d bench -c "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
                  WHERE s.slot_name = 'waly' AND r.state IN ('catchup', 'streaming')")" = 1 ]; do sleep 0.2; done
    for i in $(seq 1 10); do
        psql -XAtq -d bench -c "UPDATE pgbench_accounts SET abalance = abalance + $i"
    done
    # The wait below may need an idle heartbeat (WAL after the last commit):
    # --idle-interval 10s keeps it short.
    end=$(psql -XAtq -d bench -c "SELECT pg_current_wal_insert_lsn()")
    psql -XAtq -d bench -c "DO \$\$ BEGIN
         WHILE NOT coalesce((SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'waly'), false)
         LOOP PERFORM pg_sleep(0.2); END LOOP; END \$\$"
    # Its peak resident set (merges of the index included) while it built the archive.
    echo "waly run peak RSS while building the archive: $(sed -n 's/^VmHWM:[[:space:]]*//p' "/proc/$pid/status")"
    kill -TERM "$pid"
    wait "$pid"
}
