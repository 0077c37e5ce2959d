#!/usr/bin/env bash
# `make test`: formatting, lints, then every test, the integration suite on
# PostgreSQL 15 and 17 (`make test-matrix`: 15, 16, 17 and 18; servers 16-18
# come from the npm registry, see scripts/pg-versions.sh). PostgreSQL is
# started by the test harness itself (a throwaway cluster per test binary);
# moto (the S3 protocol) is started here for the S3 suites.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# moto (the S3 protocol), DuckDB and Apache Spark (which read the Parquet
# export; Spark needs Java 17 or later), in a venv of our own.
VENV=${WALY_VENV:-.venv}
if [ ! -x "$VENV/bin/moto_server" ] || ! "$VENV/bin/python" -c 'import duckdb, pyspark' 2>/dev/null; then
    echo "== installing moto, duckdb and pyspark into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet 'moto[s3]==5.2.5' flask flask-cors 'duckdb==2.0.1' 'pyspark==4.3.0'
fi
export WALY_TEST_PYTHON="$(cd "$VENV" && pwd)/bin/python"
export WALY_TEST_SPARK_PYTHON="$WALY_TEST_PYTHON"
MOTO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
mkdir -p .tmp
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >.tmp/moto.log 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $MOTO_PORT), 0.2)" 2>/dev/null; then break; fi
    sleep 0.1
done
# Explicit credentials: an S3 client must never fall back to instance metadata.
export WALY_TEST_S3_ENDPOINT=http://127.0.0.1:$MOTO_PORT AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT
export WALY_TEST_MOTO_BIN="$(cd "$VENV" && pwd)/bin/moto_server"
export AWS_ACCESS_KEY_ID=waly-test AWS_SECRET_ACCESS_KEY=waly-test-secret AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true

# The PostgreSQL majors the integration suite runs on: 15 (the system's)
# and 17 by default; `make test-matrix` sets WALY_PG_MAJORS="15 16 17 18".
MAJORS=${WALY_PG_MAJORS:-15 17}
system_bindir=$(ls -d /usr/lib/postgresql/15/bin 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
echo "== cargo test, unit tests and integration tests on PostgreSQL ${MAJORS%% *} (moto on $WALY_TEST_S3_ENDPOINT)"
first=1
for major in $MAJORS; do
    if [ "$major" = 15 ]; then
        bindir=$system_bindir
    else
        bindir=$(scripts/pg-versions.sh "$major")
    fi
    if [ $first = 1 ]; then
        WALY_PG_BINDIR=$bindir cargo test --all-targets -- --test-threads="${WALY_TEST_THREADS:-2}"
        first=0
    else
        echo "== cargo test --test it on PostgreSQL $major ($bindir)"
        WALY_PG_BINDIR=$bindir cargo test --test it -- --test-threads="${WALY_TEST_THREADS:-2}"
    fi
done
