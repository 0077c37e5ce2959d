# Shared shell helpers: start and stop a throwaway PostgreSQL (sourced by the
# demo and the benchmarks). As root, the server runs as the postgres user.

PG_BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# pg_start DIR [postgres -c settings...]: initdb + start; sets PGHOST, PGPORT, PGUSER.
pg_start() {
    local dir=$1; shift
    rm -rf "$dir"; mkdir -p "$dir/sock"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
    as_pg "$PG_BINDIR/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
    PGPORT=$(free_port)
    local opts="-p $PGPORT -k $dir/sock -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20"
    for s in "$@"; do opts="$opts -c $s"; done
    as_pg "$PG_BINDIR/pg_ctl" -D "$dir/data" -o "$opts" -l "$dir/server.log" -w start >/dev/null
    export PGHOST=$dir/sock PGPORT PGUSER=postgres
}

pg_stop() {
    as_pg "$PG_BINDIR/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
}
