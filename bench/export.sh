#!/usr/bin/env bash
# Export benchmark: the 10M-change bench archive (pgbench_accounts at scale
# 10 in the base snapshot, then 10 updates of every row, 2 MiB segments:
# bench/archive-10m.sh) exported to Parquet, against `waly log --json`
# over the same archive in the same run; then one DuckDB query over the whole
# export (changes per minute per table), and the same export read by Apache
# Spark in local mode (counts per operation compared with DuckDB's).
#
#   bench/export.sh [ROUNDS]   (default 3; medians)
#
# DuckDB comes from .venv (scripts/test.sh installs it); pyspark is installed
# into .venv-spark on first use (Java 17 is needed). WALY_BENCH_NO_SPARK=1
# skips Spark.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
ROUNDS=${1:-3}
cargo build --release --quiet
WALY=$PWD/target/release/waly
DIR=$PWD/.tmp/bench-export
PY=$PWD/.venv/bin/python
"$PY" -c 'import duckdb' 2>/dev/null || { python3 -m venv .venv && .venv/bin/pip install --quiet 'duckdb==2.0.1'; }
pg_start "$DIR" fsync=off max_wal_size=4GB
trap 'pg_stop "$DIR"' EXIT
ARCHIVE=$DIR/archive
. bench/archive-10m.sh
build_10m_archive "$WALY" "$ARCHIVE"
SEGMENT_BYTES=$(find "$ARCHIVE/generations" -path '*/segments/*' -type f -printf '%s\n' | awk '{s += $1} END {print s}')
SNAPSHOT_BYTES=$(find "$ARCHIVE/generations" -path '*/snapshots/*' -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')

secs() { local t0 t1; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
: >"$DIR/log.t"; : >"$DIR/export.t"
for r in $(seq 1 "$ROUNDS"); do
    secs sh -c "'$WALY' log --archive '$ARCHIVE' --json > /dev/null" >>"$DIR/log.t"
    rm -rf "$DIR/export"
    secs sh -c "'$WALY' export --archive '$ARCHIVE' --to '$DIR/export' 2>'$DIR/export.err'" >>"$DIR/export.t"
done
CHANGES=$(sed -n 's/^exported \([0-9]*\) changes.*/\1/p' "$DIR/export.err")
SNAP_ROWS=$(sed -n 's/^exported [0-9]* changes and \([0-9]*\) snapshot rows.*/\1/p' "$DIR/export.err")
LOG_S=$(median <"$DIR/log.t")
EXPORT_S=$(median <"$DIR/export.t")
PARQUET_BYTES=$(find "$DIR/export" -name '*.parquet' -printf '%s\n' | awk '{s += $1} END {print s}')
# Rates per change (the export also writes the snapshot's rows; log --json does not print them).
RATE=$(echo "$CHANGES / $EXPORT_S" | bc)
LOG_RATE=$(echo "$CHANGES / $LOG_S" | bc)
echo "waly log --json: ${LOG_S}s (median of $ROUNDS) = $LOG_RATE changes/s; waly export: ${EXPORT_S}s = $RATE changes/s ($CHANGES changes + $SNAP_ROWS snapshot rows)"
echo "segments: $SEGMENT_BYTES bytes (+ $SNAPSHOT_BYTES snapshot bytes); parquet: $PARQUET_BYTES bytes"

# DuckDB: changes per minute per table over the whole export.
DUCK_S=$("$PY" - "$DIR/export" <<'PY'
import duckdb, sys, time
con = duckdb.connect()
t0 = time.time()
rows = con.execute(f"""
  SELECT regexp_extract(filename, '([^/]+)/date=', 1) AS t, date_trunc('minute', _commit_time) AS m, count(*)
    FROM read_parquet('{sys.argv[1]}/*/*/*.parquet', filename = true, hive_partitioning = true)
   WHERE _op NOT IN ('snapshot', 'empty_snapshot') GROUP BY ALL ORDER BY ALL""").fetchall()
t = time.time() - t0
print(f"{t:.3f}")
print(f"duckdb: {len(rows)} (table, minute) groups, {sum(r[2] for r in rows)} changes", file=sys.stderr)
PY
)
DUCK_OPS=$("$PY" -c "
import duckdb, sys
print(sorted(duckdb.sql(\"SELECT _op, count(*) FROM read_parquet('$DIR/export/*/*/*.parquet') GROUP BY ALL\").fetchall()))")
echo "duckdb per operation: $DUCK_OPS"
if [ -z "${WALY_BENCH_NO_SPARK:-}" ]; then
    [ -x .venv-spark/bin/python ] && .venv-spark/bin/python -c 'import pyspark' 2>/dev/null ||
        { python3 -m venv .venv-spark && .venv-spark/bin/pip install --quiet pyspark; }
    SPARK_OPS=$(.venv-spark/bin/python - "$DIR/export" 2>"$DIR/spark.err" <<'PY'
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
df = spark.read.option("mergeSchema", "true").parquet(sys.argv[1] + "/public.pgbench_accounts")
print(sorted((r[0], r[1]) for r in df.groupBy("_op").count().collect()))
PY
) || { cat "$DIR/spark.err"; exit 1; }
    echo "spark per operation:  $SPARK_OPS"
    [ "$SPARK_OPS" = "$DUCK_OPS" ] || { echo "Spark and DuckDB disagree"; exit 1; }
fi
echo "export: changes=$CHANGES rate_per_s=$RATE parquet_bytes=$PARQUET_BYTES segment_bytes=$SEGMENT_BYTES duckdb_agg_s=$DUCK_S"
