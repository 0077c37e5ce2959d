#!/usr/bin/env bash
# The oracle soak: SEEDS runs of the randomized oracle test (workload,
# migrations, kill -9, PostgreSQL restarts, compact, prune, reindex, a
# standby taking over, restores into the source, an archive outage), every
# reader checked against the database after each (tests/it/oracle_check.rs).
#
#   bench/oracle.sh SEEDS [FIRST_SEED]
#
# WALY_PG_BINDIR picks the server. The seeds are shared among
# WALY_ORACLE_JOBS test processes (default 4), each with its own cluster:
# a run mostly waits on the server and the sidecar, so four share two cores
# well. The last line reads: seeds=N operations=M checks=K disagreements=D.
# A failing seed prints the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:?usage: bench/oracle.sh SEEDS [FIRST_SEED]}
FIRST=${2:-1}
JOBS=${WALY_ORACLE_JOBS:-4}
[ "$JOBS" -ge 1 ] || JOBS=1
[ "$JOBS" -le "$SEEDS" ] || JOBS=$SEEDS
mkdir -p .tmp
cargo test --quiet --test it --no-run >/dev/null 2>&1 || cargo test --test it --no-run
pids=()
next=$FIRST
for j in $(seq 1 "$JOBS"); do
    # Job j runs a contiguous share of the seeds.
    n=$(( SEEDS / JOBS + (j <= SEEDS % JOBS ? 1 : 0) ))
    WALY_ORACLE_SEEDS=$n WALY_ORACLE_FIRST=$next \
        cargo test --quiet --test it oracle -- --nocapture --test-threads=1 >".tmp/oracle-soak-$j.log" 2>&1 &
    pids+=($!)
    next=$(( next + n ))
done
status=0
for p in "${pids[@]}"; do
    wait "$p" || status=$?
done
logs=$(for j in $(seq 1 "$JOBS"); do echo ".tmp/oracle-soak-$j.log"; done)
# shellcheck disable=SC2086
grep -h -E "^oracle seed [0-9]+: (operations|DISAGREEMENT)|^replay:|^first disagreement" $logs || true
finished=0
for l in $logs; do
    if grep -q -E "^seeds=[0-9]+ operations=[0-9]+ checks=[0-9]+ disagreements=[0-9]+$" "$l"; then
        finished=$((finished + 1))
    else
        tail -n 40 "$l"
        echo "an oracle job did not finish (exit $status); see $l" >&2
    fi
done
[ "$finished" -eq "$JOBS" ] || exit 1
# shellcheck disable=SC2086
grep -h -E "^seeds=[0-9]+ operations=[0-9]+ checks=[0-9]+ disagreements=[0-9]+$" $logs |
    awk -F'[= ]' '{ s += $2; o += $4; c += $6; d += $8 }
        END { printf "seeds=%d operations=%d checks=%d disagreements=%d\n", s, o, c, d }'
