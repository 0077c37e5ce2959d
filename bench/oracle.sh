#!/usr/bin/env bash
# The oracle soak: SEEDS runs of the randomized oracle test (workload,
# migrations, kill -9, PostgreSQL restarts, compact, reindex, a standby
# taking over, restores into the source), every reader checked against the
# database after each (tests/it/oracle_check.rs).
#
#   bench/oracle.sh SEEDS [FIRST_SEED]        (WALY_PG_BINDIR picks the server)
#
# The last line reads: seeds=N operations=M checks=K disagreements=D.
# A failing seed prints the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:?usage: bench/oracle.sh SEEDS [FIRST_SEED]}
FIRST=${2:-1}
mkdir -p .tmp
LOG=.tmp/oracle-soak.log
status=0
WALY_ORACLE_SEEDS=$SEEDS WALY_ORACLE_FIRST=$FIRST \
    cargo test --quiet --test it oracle -- --nocapture --test-threads=1 >"$LOG" 2>&1 || status=$?
grep -E "^oracle seed [0-9]+: (operations|DISAGREEMENT)|^replay:|^first disagreement" "$LOG" || true
summary=$(grep -E "^seeds=[0-9]+ operations=[0-9]+ checks=[0-9]+ disagreements=[0-9]+$" "$LOG" | tail -n 1)
if [ -z "$summary" ]; then
    tail -n 40 "$LOG"
    echo "the oracle did not finish (exit $status); see $LOG" >&2
    exit 1
fi
echo "$summary"
