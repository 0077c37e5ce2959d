"""What a copy of an archive's changes clustered by row key would cost.

Issue 13's last two targets (one row's history in <= 10 objects at 10^8
events, and in <= 0.1% of the archive's bytes at 10M) need a row's versions
stored together, since the segments hold them in commit order. This
measures what such a copy costs against the segments it copies, on any
archive of `waly synth`'s tables (`id` key): it reads every segment (with the
`zstd` command), sorts the changes by table, key and commit LSN with `sort`
(on disk: memory stays small), codes each change against the one before it
in that order (key, commit LSN, commit time and xid as differences, the
other columns as JSON), and compresses the result with `zstd -3` in blocks
of 32 KiB, as a lookup would read it. It also counts, per row of
`public.t0`, the segments that hold its changes: what a history lookup
reads now, one frame in each.

    python3 bench/clustered-cost.py ARCHIVE_DIR

Its last line: `clustered: events=N segments_bytes=S clustered_bytes=C
clustered_ratio=R t0_segments_per_row_median=M t0_segments_per_row_p90=P`
(M and P over 1,001 ids of t0 drawn uniformly from 1 to 1,000,000, as
bench/scale.sh's lookups are).
"""

import glob
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime

BLOCK = 32768


def lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def micros(text):
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1_000_000)


def zstd_size(data):
    return len(subprocess.run(["zstd", "-3", "-c", "-q"], input=data, capture_output=True, check=True).stdout)


def main():
    root = sys.argv[1]
    segments = sorted(glob.glob(f"{root}/generations/*/segments/*.jsonl.zst"))
    if not segments:
        sys.exit(f"no segments under {root}/generations")
    segment_bytes = 0
    changes = 0
    with tempfile.TemporaryDirectory() as tmp:
        flat = os.path.join(tmp, "changes.tsv")
        with open(flat, "w") as out:
            for number, path in enumerate(segments):
                segment_bytes += os.path.getsize(path)
                data = subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout
                commit = None
                for line in data.split(b"\n")[1:]:
                    if line.startswith(b'{"type":"begin"'):
                        b = json.loads(line)
                        commit = (lsn(b["commit_lsn"]), micros(b["commit_time"]), b["xid"])
                    elif line.startswith(b'{"type":"change"'):
                        c = json.loads(line)
                        row = c.get("new") or c.get("old") or {}
                        rest = {k: v for k, v in (c.get("new") or {}).items() if k != "id"}
                        out.write(
                            f"{c['table']}\t{row['id']}\t{commit[0]}\t{commit[1]}\t{commit[2]}\t{c['op'][0]}\t"
                            f"{number}\t{json.dumps(rest, separators=(',', ':'))}\n"
                        )
                        changes += 1
        ordered = subprocess.Popen(
            ["sort", "-t", "\t", "-k1,1", "-k2,2n", "-k3,3n", "-S", "512M", "-T", tmp, flat],
            stdout=subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C"},
            text=True,
        )
        clustered = 0
        block, size, prev = [], 0, None
        t0_segments = {}
        for line in ordered.stdout:
            table, key, commit_lsn, at, xid, op, number, rest = line.rstrip("\n").split("\t")
            key, commit_lsn, at, xid = int(key), int(commit_lsn), int(at), int(xid)
            if table == "public.t0":
                t0_segments.setdefault(key, set()).add(int(number))
            if prev and prev[0] == table:
                step = key - prev[1]
                same = step == 0
                coded = (
                    f"{step} {commit_lsn - prev[2] if same else commit_lsn} {at - prev[3] if same else at} "
                    f"{xid - prev[4] if same else xid} {op} {rest}"
                )
            else:
                coded = f"{table} {key} {commit_lsn} {at} {xid} {op} {rest}"
            prev = (table, key, commit_lsn, at, xid)
            block.append(coded)
            size += len(coded) + 1
            if size >= BLOCK:
                clustered += zstd_size("\n".join(block).encode())
                block, size, prev = [], 0, None
        if block:
            clustered += zstd_size("\n".join(block).encode())
        if ordered.wait() != 0:
            sys.exit("sort failed")
    rng = random.Random(1)
    per_row = sorted(len(t0_segments.get(rng.randint(1, 1_000_000), ())) for _ in range(1001))
    print(
        f"clustered: events={changes} segments_bytes={segment_bytes} clustered_bytes={clustered} "
        f"clustered_ratio={clustered / segment_bytes:.2f} t0_segments_per_row_median={statistics.median(per_row):g} "
        f"t0_segments_per_row_p90={per_row[900]}"
    )


main()
