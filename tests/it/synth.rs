//! `waly synth` (the benchmarks' archive generator): what it writes is an
//! archive that `waly verify` calls clean and on which every reader agrees,
//! and the same seed writes the same segments.

use crate::harness::{run_within, waly};
use std::collections::BTreeMap;

fn synth(dir: &str, seed: &str) {
    synth_of(dir, "40000", &["--seed", seed]);
}

/// A synthetic archive at `dir` of `events` changes of three tables in
/// 64 KiB segments, with `extra` options of `waly synth`.
fn synth_of(dir: &str, events: &str, extra: &[&str]) {
    let _ = std::fs::remove_dir_all(dir);
    let args = [
        &[
            "synth",
            "--archive",
            dir,
            "--events",
            events,
            "--weights",
            "100,10,1",
            "--rows",
            "300",
            "--segment-size",
            "64KiB",
        ][..],
        extra,
    ]
    .concat();
    let out = run_within(waly().args(&args), 120);
    assert!(out.status.success(), "synth: {}", String::from_utf8_lossy(&out.stderr));
}

fn stdout(args: &[&str]) -> String {
    let out = run_within(waly().args(args), 120);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Each segment's name and bytes.
fn segments(dir: &str) -> BTreeMap<String, Vec<u8>> {
    let seg_dir = std::path::Path::new(dir).join("generations/00000001/segments");
    std::fs::read_dir(&seg_dir)
        .expect("segments")
        .map(|e| {
            let p = e.expect("entry").path();
            (
                p.file_name().unwrap_or_default().to_string_lossy().to_string(),
                std::fs::read(&p).expect("read"),
            )
        })
        .collect()
}

#[test]
fn a_synthetic_archive_is_clean_and_every_reader_agrees_on_it() {
    let dir = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-a"))
        .display()
        .to_string();
    synth(&dir, "7");
    let verified = run_within(waly().args(["verify", "--archive", &dir]), 120);
    assert!(
        verified.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    let segs = segments(&dir);
    assert!(
        segs.len() >= 11,
        "index runs are merged (ten segments' at least): {} segments",
        segs.len()
    );

    // The log holds every change once; `tables` counts the same per table.
    let log = json_lines(&stdout(&["log", "--archive", &dir, "--json"]));
    assert_eq!(log.len(), 40_000);
    let mut per_table: BTreeMap<String, u64> = BTreeMap::new();
    for c in &log {
        *per_table
            .entry(c["table"].as_str().expect("table").to_string())
            .or_default() += 1;
    }
    assert_eq!(per_table.len(), 3, "{per_table:?}");
    assert!(per_table["public.t0"] > per_table["public.t1"] && per_table["public.t1"] > per_table["public.t2"]);
    for t in json_lines(&stdout(&["tables", "--archive", &dir, "--json"])) {
        let name = t["table"].as_str().expect("table");
        assert_eq!(t["changes"].as_u64(), Some(per_table[name]), "{name}");
    }
    // Two tables' log: exactly the whole log's lines of those two, in order.
    let two = stdout(&["log", "--archive", &dir, "--json", "--table", "t1,public.t2"]);
    let want: Vec<String> = log
        .iter()
        .filter(|c| c["table"] == "public.t1" || c["table"] == "public.t2")
        .map(|c| c.to_string())
        .collect();
    let got: Vec<String> = json_lines(&two).iter().map(|c| c.to_string()).collect();
    assert!(!want.is_empty() && got == want, "log --table t1,public.t2");

    // The state at the end, replayed from the log over the snapshot (ids
    // 1..=300, n = 0), is what `show` prints.
    for table in ["public.t0", "public.t2"] {
        let mut want: BTreeMap<u64, String> = (1..=300).map(|id| (id, "0".to_string())).collect();
        let mut row_changes: BTreeMap<u64, usize> = BTreeMap::new();
        for c in log.iter().filter(|c| c["table"] == table) {
            let id: u64 = c["key"]["id"].as_str().expect("id").parse().expect("number");
            *row_changes.entry(id).or_default() += 1;
            match c["op"].as_str() {
                Some("delete") => {
                    want.remove(&id);
                }
                _ => {
                    want.insert(id, c["new"]["n"].as_str().expect("n").to_string());
                }
            }
        }
        let shown: BTreeMap<u64, String> = json_lines(&stdout(&[
            "show",
            "--archive",
            &dir,
            table,
            "--at",
            "now",
            "--format",
            "json",
        ]))
        .iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id").parse().expect("number"),
                r["n"].as_str().expect("n").to_string(),
            )
        })
        .collect();
        assert_eq!(shown, want, "{table}: show disagrees with the log");

        // The most changed row's history (found through the index): its
        // snapshot version and one version per change.
        let (&id, &n) = row_changes.iter().max_by_key(|(_, n)| **n).expect("a changed row");
        let history = json_lines(&stdout(&[
            "history",
            "--archive",
            &dir,
            table,
            &id.to_string(),
            "--json",
        ]));
        assert_eq!(history.len(), 1 + n, "{table} {id}: history");
    }

    // `verify` reads the index objects' blocks: a damaged block (its
    // footer intact) is named, as harmless derived data.
    // The widest run: the first ten segments' at least.
    let merged = std::fs::read_dir(std::path::Path::new(&dir).join("index/00000001/segments"))
        .expect("index objects")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains("/0000000000-"))
        .max()
        .expect("a merged index object from segment 0");
    let name = merged.file_name().expect("name").to_string_lossy().to_string();
    assert!(
        name != "0000000000-0000000000.idx",
        "segment 0's run was merged: {name}"
    );
    let mut bytes = std::fs::read(&merged).expect("the first merged index object");
    for b in bytes.iter_mut().skip(4).take(16) {
        *b ^= 0x5a;
    }
    std::fs::write(&merged, &bytes).expect("damage it");
    let verified = run_within(waly().args(["verify", "--archive", &dir]), 120);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        said.contains(&name) && said.contains("do not decode"),
        "verify did not name the damaged index object: {said}"
    );

    // The same seed writes the same segments; another seed other ones.
    let again = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-b"))
        .display()
        .to_string();
    synth(&again, "7");
    assert!(segments(&again) == segs, "the same seed gave other segments");
    synth(&again, "8");
    assert!(segments(&again) != segs, "another seed gave the same segments");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&again);
}

/// Restores `table` of `dir` as of now to a CSV file: the file's text and
/// what the restore printed on stderr (with the bytes it read).
fn restore_csv(dir: &str, table: &str) -> (String, String) {
    let out_file = format!("{dir}.csv");
    let _ = std::fs::remove_file(&out_file);
    let out = run_within(
        waly().env("WALY_READ_STATS", "1").args([
            "restore",
            "--archive",
            dir,
            table,
            "--at",
            "now",
            "--output",
            &out_file,
        ]),
        120,
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "restore: {err}");
    let csv = std::fs::read_to_string(&out_file).expect("the restored file");
    let _ = std::fs::remove_file(&out_file);
    (csv, err)
}

/// `waly log --table` of `dir` as JSON lines, and the bytes it read.
fn table_log(dir: &str, table: &str) -> (String, u64) {
    let (out, err) = table_log_with_reads(dir, table);
    (out, bytes_read(&err))
}

/// `waly log --table` of `dir` as JSON lines with `WALY_READ_STATS=2`: its
/// output and its stderr (the reads, object by object).
fn table_log_with_reads(dir: &str, table: &str) -> (String, String) {
    let out = run_within(
        waly()
            .env("WALY_READ_STATS", "2")
            .args(["log", "--archive", dir, "--table", table, "--json"]),
        120,
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "log: {err}");
    (String::from_utf8(out.stdout).expect("utf-8"), err)
}

fn bytes_read(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("reads: ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no read statistics in {stderr}"))
}

/// A synthetic archive at `dir` of 700,000 changes where `public.t1`
/// changes about once per 100,000 changes of `public.t0` (and `extra`
/// options of `waly synth`).
fn synth_rare(dir: &str, extra: &[&str]) {
    let _ = std::fs::remove_dir_all(dir);
    let args = [
        &[
            "synth",
            "--archive",
            dir,
            "--events",
            "700000",
            "--weights",
            "100000,1",
            "--rows",
            "300",
            "--segment-size",
            "4MiB",
            "--seed",
            "3",
        ][..],
        extra,
    ]
    .concat();
    let out = run_within(waly().args(&args), 120);
    assert!(out.status.success(), "synth: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_rarely_changed_tables_restore_and_log_read_only_the_frames_that_hold_it() {
    let dir = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-rare"))
        .display()
        .to_string();
    synth_rare(&dir, &[]);
    let (indexed, err) = restore_csv(&dir, "public.t1");
    let with_index = bytes_read(&err);
    let (log_indexed, log_with_index) = table_log(&dir, "public.t1");
    // Without the index, every segment is read whole: the same rows.
    let index = std::path::Path::new(&dir).join("index");
    let aside = std::path::Path::new(&dir).join("index-aside");
    std::fs::rename(&index, &aside).expect("move the index aside");
    let (scanned, err) = restore_csv(&dir, "public.t1");
    let without = bytes_read(&err);
    assert_eq!(indexed, scanned, "the index changed the restored rows");
    let (log_scanned, log_without) = table_log(&dir, "public.t1");
    assert!(
        log_scanned.lines().count() > 2,
        "the rare table has changes: {log_scanned}"
    );
    assert_eq!(log_indexed, log_scanned, "the index changed the table's log");
    assert!(
        log_with_index * 4 < log_without,
        "log --table: {log_with_index} bytes with the index, {log_without} without"
    );
    assert!(
        with_index * 4 < without,
        "the index should spare most of the reading: {with_index} bytes with it, {without} without"
    );
    // A damaged index object: a warning, and still the same rows.
    std::fs::rename(&aside, &index).expect("put the index back");
    let segs = index.join("00000001/segments");
    let victim = std::fs::read_dir(&segs)
        .expect("index objects")
        .next()
        .expect("one")
        .expect("entry")
        .path();
    let bytes = std::fs::read(&victim).expect("read");
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).expect("truncate");
    let (damaged, err) = restore_csv(&dir, "public.t1");
    assert_eq!(damaged, scanned, "a damaged index changed the restored rows");
    assert_eq!(
        table_log(&dir, "public.t1").0,
        log_scanned,
        "a damaged index changed the table's log"
    );
    assert!(err.contains("index object is damaged"), "no warning: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `waly tables` with the stats of a read (`WALY_READ_STATS`): stdout, stderr.
fn tables_with_stats(dir: &str, scan: bool) -> (String, String) {
    let mut args = vec!["tables", "--archive", dir, "--json"];
    if scan {
        args.push("--scan");
    }
    let out = run_within(waly().env("WALY_READ_STATS", "1").args(&args), 120);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "tables: {err}");
    (String::from_utf8_lossy(&out.stdout).to_string(), err)
}

/// The segment index objects of generation 1: name and bytes.
fn index_runs(dir: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(std::path::Path::new(dir).join("index/00000001/segments"))
        .expect("index objects")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            (
                p.file_name().unwrap_or_default().to_string_lossy().to_string(),
                std::fs::read(&p).expect("read"),
            )
        })
        .collect()
}

/// Objects a command read, from its `WALY_READ_STATS` line.
fn objects_read(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("reads: "))
        .and_then(|l| l.split(" objects").next())
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no read stats in: {stderr}"))
}

#[test]
fn tables_answers_from_the_catalog_as_a_scan_does_and_a_wrong_catalog_is_named() {
    let dir = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-catalog"))
        .display()
        .to_string();
    synth(&dir, "11");
    let (scanned, scan_err) = tables_with_stats(&dir, true);
    let (listed, err) = tables_with_stats(&dir, false);
    assert_eq!(listed, scanned, "the catalog and a scan disagree");
    assert!(objects_read(&scan_err) > 10, "the scan reads the segments: {scan_err}");
    // The catalog, and waly.json: whether the archive is encrypted decides
    // whether a catalog must be sealed (a reader never guesses).
    assert_eq!(
        objects_read(&err),
        2,
        "tables reads the catalog and waly.json alone: {err}"
    );

    // Without it, tables reads the segments, says so, and answers the same.
    let catalog = std::path::Path::new(&dir).join("index/00000001/catalog.json");
    let kept = std::fs::read(&catalog).expect("the catalog");
    std::fs::remove_file(&catalog).expect("remove the catalog");
    let (listed, err) = tables_with_stats(&dir, false);
    assert_eq!(listed, scanned);
    assert!(err.contains("no catalog fits"), "{err}");

    // A catalog whose counts are not the segments' is named by verify and
    // rebuilt by reindex.
    let mut wrong: serde_json::Value = serde_json::from_slice(&kept).expect("catalog JSON");
    let n = wrong["tables"]["public.t1"]["changes"].as_u64().expect("a count");
    wrong["tables"]["public.t1"]["changes"] = (n + 1).into();
    std::fs::write(&catalog, serde_json::to_vec(&wrong).expect("JSON")).expect("write");
    let verified = run_within(waly().args(["verify", "--archive", &dir]), 120);
    let said = String::from_utf8_lossy(&verified.stdout).to_string();
    assert!(
        said.contains("catalog.json") && said.contains("public.t1"),
        "verify did not name the catalog: {said}"
    );
    let runs = index_runs(&dir);
    assert!(
        runs.len() >= 2 && runs.keys().any(|k| k.starts_with("0000000000-")),
        "{:?}",
        runs.keys()
    );
    let reindexed = run_within(waly().args(["reindex", "--archive", &dir]), 120);
    assert!(reindexed.status.success());
    assert_eq!(
        std::fs::read(&catalog).expect("rebuilt"),
        kept,
        "reindex rebuilds the same catalog"
    );
    // Reindex leaves the runs the writer's level merges left, byte for byte.
    let rebuilt = index_runs(&dir);
    assert_eq!(
        rebuilt.keys().collect::<Vec<_>>(),
        runs.keys().collect::<Vec<_>>(),
        "reindex leaves other runs"
    );
    assert!(rebuilt == runs, "reindex wrote other bytes in the same runs");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `waly history --json` of `key` of `table` with `extra` arguments and
/// `WALY_READ_STATS=2`: its output and its stderr (the reads).
fn history_with_reads(dir: &str, table: &str, key: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["history", "--archive", dir, table, key, "--json"];
    args.extend_from_slice(extra);
    let out = run_within(waly().env("WALY_READ_STATS", "2").args(&args), 120);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    )
}

#[test]
fn history_reads_only_its_own_tables_schema_versions_and_answers_as_a_scan_does() {
    let dir = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-own-schemas"))
        .display()
        .to_string();
    synth(&dir, "11");
    let history = |table: &str, key: &str, extra: &[&str]| history_with_reads(&dir, table, key, extra);
    for table in ["public.t0", "public.t1", "public.t2"] {
        // A row the log shows changed (so it has versions after the snapshot).
        let log = json_lines(&stdout(&["log", "--archive", &dir, "--table", table, "--json"]));
        let changed = log.iter().find_map(|c| c["key"]["id"].as_str()).expect("a change");
        let key = changed.to_string();
        let key = key.as_str();
        let (indexed, err) = history(table, key, &[]);
        let schemas_read: Vec<&str> = err
            .lines()
            .filter_map(|l| l.split(" from ").nth(1))
            .filter(|k| k.contains("/schemas/"))
            .collect();
        assert!(
            !schemas_read.is_empty() && schemas_read.iter().all(|k| k.contains(&format!("/schemas/{table}/"))),
            "{table}: history read these schema versions: {schemas_read:?}"
        );
        // Its frames hold other tables' changes, read without their key.
        let (scanned, _) = history(table, key, &["--scan"]);
        assert!(json_lines(&indexed).len() > 1, "{table} {key}: {indexed}");
        assert_eq!(indexed, scanned, "{table} {key}: the index changed the history");
    }
    // A table not in the archive: the error still names every table.
    let out = run_within(waly().args(["history", "--archive", &dir, "public.nope", "1"]), 120);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "history of a missing table succeeded");
    assert!(
        err.contains("archived tables: public.t0, public.t1, public.t2"),
        "the error should name the archived tables: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plaintext index object's footer: its offset and length (from the
/// trailer) and its JSON.
fn index_footer(bytes: &[u8]) -> (usize, usize, serde_json::Value) {
    let n = bytes.len();
    let at = u64::from_le_bytes(bytes[n - 24..n - 16].try_into().expect("8 bytes")) as usize;
    let len = u64::from_le_bytes(bytes[n - 16..n - 8].try_into().expect("8 bytes")) as usize;
    let json = zstd::decode_all(&bytes[at..at + len]).expect("footer");
    (at, len, serde_json::from_slice(&json).expect("footer JSON"))
}

/// Rewrites the footer of the plaintext index object at `path` with
/// `frame_table` (its blocks' pointers, `None` to drop it), after first
/// appending `block` (a frame table block) to its blocks.
fn rewrite_frame_table(path: &std::path::Path, block: Option<&[u8]>) {
    let bytes = std::fs::read(path).expect("index object");
    let (at, _, mut footer) = index_footer(&bytes);
    let n = bytes.len();
    let mut out = bytes[..at].to_vec();
    match block {
        Some(b) => {
            let z = zstd::encode_all(b, 1).expect("compress");
            footer["frame_table"] = serde_json::json!([{"first": 0, "offset": out.len(), "len": z.len()}]);
            out.extend_from_slice(&z);
        }
        None => {
            footer.as_object_mut().expect("an object").remove("frame_table");
        }
    }
    let z = zstd::encode_all(&serde_json::to_vec(&footer).expect("JSON")[..], 1).expect("compress");
    let footer_at = out.len() as u64;
    out.extend_from_slice(&z);
    out.extend_from_slice(&footer_at.to_le_bytes());
    out.extend_from_slice(&(z.len() as u64).to_le_bytes());
    out.extend_from_slice(&bytes[n - 8..]);
    std::fs::write(path, out).expect("write");
}

/// GET requests to segments, by `WALY_READ_STATS=2`'s lines.
fn segment_requests(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.ends_with(".jsonl.zst") && l.contains("/segments/"))
        .filter_map(|l| l.split(" GET requests").next()?.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The key of a row of `table` that `waly log` shows changed.
fn a_changed_key(dir: &str, table: &str) -> String {
    let log = json_lines(&stdout(&["log", "--archive", dir, "--table", table, "--json"]));
    log.iter()
        .find_map(|c| c["key"]["id"].as_str())
        .expect("a change")
        .to_string()
}

#[test]
fn history_and_table_logs_find_frames_by_the_index_frame_table_and_a_wrong_table_costs_only_time() {
    let dir = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-frame-table"))
        .display()
        .to_string();
    synth(&dir, "12");
    let key = a_changed_key(&dir, "public.t0");
    let history = |extra: &[&str]| history_with_reads(&dir, "public.t0", &key, extra);
    let (scanned, _) = history(&["--scan"]);
    assert!(json_lines(&scanned).len() > 1, "{key}: {scanned}");
    let (with_table, err) = history(&[]);
    assert_eq!(with_table, scanned, "the frame table changed the history");
    let with_requests = segment_requests(&err);
    // `log --table` places its frames by the tables too.
    let table_log = || table_log_with_reads(&dir, "public.t1");
    let (log_with, err) = table_log();
    assert!(json_lines(&log_with).len() > 10, "{log_with}");
    assert!(!err.contains("WARN"), "{err}");
    let log_with_requests = segment_requests(&err);
    // The key in another text form: its lookups started early, under the
    // text as given, are not taken for the key's.
    let plus = format!("+{key}");
    let out = run_within(
        waly().args(["history", "--archive", &dir, "public.t0", &plus, "--json"]),
        120,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), scanned, "key {plus}");
    let runs: Vec<std::path::PathBuf> = index_runs(&dir)
        .keys()
        .map(|k| std::path::Path::new(&dir).join("index/00000001/segments").join(k))
        .collect();
    assert!(!runs.is_empty(), "no index runs");
    // Without frame tables (as older index objects are), each segment's
    // header is read before its frames: the same answer, more requests.
    for run in &runs {
        rewrite_frame_table(run, None);
    }
    let (without, err) = history(&[]);
    assert_eq!(without, scanned, "the index without frame tables changed the history");
    let without_requests = segment_requests(&err);
    assert!(
        with_requests > 0 && with_requests < without_requests,
        "segment GETs: {with_requests} with the frame tables, {without_requests} without"
    );
    let (log_without, err) = table_log();
    assert_eq!(log_without, log_with, "the frame tables changed log --table");
    let log_without_requests = segment_requests(&err);
    assert!(
        log_with_requests > 0 && log_with_requests < log_without_requests,
        "log --table's segment GETs: {log_with_requests} with the frame tables, {log_without_requests} without"
    );
    // A table that places every segment's one frame at its first byte:
    // verify names it, and history, finding such a frame unreadable, reads
    // the archive without the index and answers the same.
    let verify = run_within(waly().args(["verify", "--archive", &dir]), 120);
    assert!(
        verify.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    for run in &runs {
        let (_, _, footer) = index_footer(&std::fs::read(run).expect("read"));
        let objects = footer["objects"].as_array().expect("objects").len();
        // Per object: its position's step, one frame, at 0, 1 byte long.
        let mut raw = vec![0u8, 1, 0, 1];
        for _ in 1..objects {
            raw.extend_from_slice(&[1, 1, 0, 1]);
        }
        rewrite_frame_table(run, Some(&raw));
    }
    let verify = run_within(waly().args(["verify", "--archive", &dir]), 120);
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(
        report.contains("its frame table places segment") && report.contains("`waly reindex` rebuilds it"),
        "verify should name the wrong frame table: {report}"
    );
    let (wrong, err) = history(&[]);
    assert_eq!(wrong, scanned, "a wrong frame table changed the history");
    assert!(err.contains("frame table is damaged"), "no warning: {err}");
    let (log_wrong, err) = table_log();
    assert_eq!(log_wrong, log_with, "a wrong frame table changed log --table");
    assert!(err.contains("frame table is damaged"), "no warning: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Copies the directory `from` into `to`, whole.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        match e.file_type().expect("type").is_dir() {
            true => copy_tree(&e.path(), &dest),
            false => {
                std::fs::copy(e.path(), &dest).expect("copy");
            }
        }
    }
}

/// The trailers' magics of every index object of `dir`.
fn index_magics(dir: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for kind in ["segments", "snapshots"] {
        let path = std::path::Path::new(dir).join("index/00000001").join(kind);
        for e in std::fs::read_dir(&path).expect("index objects") {
            let bytes = std::fs::read(e.expect("entry").path()).expect("read");
            out.insert(String::from_utf8_lossy(&bytes[bytes.len() - 8..]).to_string());
        }
    }
    out
}

/// An archive whose index the release before index format 5 wrote
/// (testdata/index-format4, by `waly synth`: blocks of format 4, coded
/// entry after entry) keeps working: `verify` calls it clean, and history
/// answers by its index as the scan does, reading fewer segments, without
/// a warning. `waly reindex` rewrites it as format 5, and the answers stay
/// the same.
#[test]
fn an_archive_indexed_in_format_4_is_read_by_its_index_and_reindexed_as_format_5() {
    let dir = std::env::temp_dir().join(crate::harness::unique("waly-index-format4"));
    let _ = std::fs::remove_dir_all(&dir);
    copy_tree(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/index-format4/archive"),
        &dir,
    );
    let dir = dir.display().to_string();
    assert_eq!(index_magics(&dir), ["WALYIDX4".to_string()].into());
    let clean = |when: &str| {
        let out = stdout(&["verify", "--archive", &dir]);
        assert!(out.contains(" 0 problem(s)"), "{when}: {out}");
    };
    clean("format 4");
    // Its segments carry no commit-time mark (written before it): a log
    // since a time reads them all, and shows what committed since.
    let all = stdout(&["log", "--archive", &dir, "--json"]);
    let time_of = |l: &str| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["commit_time"].to_string();
    let since = all
        .lines()
        .nth(all.lines().count() * 2 / 3)
        .map(time_of)
        .expect("a line");
    let since = since.trim_matches('"');
    let want: Vec<&str> = all.lines().filter(|l| time_of(l).trim_matches('"') >= since).collect();
    let part = stdout(&["log", "--archive", &dir, "--json", "--since", since]);
    assert!(!want.is_empty() && want.len() < all.lines().count());
    assert_eq!(
        part.lines().collect::<Vec<_>>(),
        want,
        "log --since on unmarked segments"
    );
    let mut keys = Vec::new();
    for table in ["public.t0", "public.t1", "public.t2"] {
        let log = json_lines(&stdout(&["log", "--archive", &dir, "--table", table, "--json"]));
        let changed: std::collections::BTreeSet<String> = log
            .iter()
            .filter_map(|c| Some(c["key"]["id"].as_str()?.to_string()))
            .collect();
        assert!(!changed.is_empty(), "{table} has changes");
        keys.extend(changed.into_iter().take(4).map(|k| (table, k)));
    }
    let answers = |when: &str| -> Vec<String> {
        let mut out = Vec::new();
        for (table, key) in &keys {
            let (indexed, err) = history_with_reads(&dir, table, key, &[]);
            let (scanned, scan_err) = history_with_reads(&dir, table, key, &["--scan"]);
            assert_eq!(indexed, scanned, "{when}: {table} {key}");
            assert!(json_lines(&indexed).len() > 1, "{when}: {table} {key}: {indexed}");
            assert!(!err.contains("WARN"), "{when}: {table} {key}: {err}");
            assert!(
                segment_requests(&err) < segment_requests(&scan_err),
                "{when}: {table} {key} read as many segments by the index as by the scan: {err}"
            );
            out.push(indexed);
        }
        out
    };
    let before = answers("format 4");
    let out = run_within(waly().args(["reindex", "--archive", &dir]), 120);
    assert!(
        out.status.success(),
        "reindex: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(index_magics(&dir), ["WALYIDX5".to_string()].into());
    clean("reindexed");
    assert_eq!(
        answers("format 5"),
        before,
        "the answers changed with the index's format"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads of the index's objects (not the tails directory), by
/// `WALY_READ_STATS=2`'s lines (`read B bytes in N GET requests from
/// KEY`): `(object, (bytes, requests))`.
fn index_requests(stderr: &str) -> BTreeMap<String, (u64, u64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let (count, key) = l.split_once(" GET requests from ")?;
            let n = count.rsplit(' ').next()?.parse().ok()?;
            let bytes = count.strip_prefix("read ")?.split(' ').next()?.parse().ok()?;
            key.ends_with(".idx").then(|| (key.to_string(), (bytes, n)))
        })
        .collect()
}

/// The tails directory `bytes` with each tail passed through `edit`
/// (`(key, tail)`), coded again as waly codes it (a zstd frame with its
/// checksum): a directory as a writer with another notion of the tails
/// would leave it.
fn edit_tails(bytes: &[u8], edit: impl Fn(&str, &mut Vec<u8>)) -> Vec<u8> {
    let raw = zstd::decode_all(bytes).expect("the directory decompresses");
    let nl = raw.iter().position(|b| *b == b'\n').expect("a header line");
    let mut header: serde_json::Value = serde_json::from_slice(&raw[..nl]).expect("header JSON");
    let mut body = Vec::new();
    let mut at = nl + 1;
    for o in header["objects"].as_array_mut().expect("objects") {
        let len = o["len"].as_u64().expect("len") as usize;
        let mut tail = raw[at..at + len].to_vec();
        at += len;
        edit(o["key"].as_str().expect("key"), &mut tail);
        o["len"] = (tail.len() as u64).into();
        body.extend_from_slice(&tail);
    }
    assert_eq!(at, raw.len(), "the tails fill the directory");
    let mut out = serde_json::to_vec(&header).expect("JSON");
    out.push(b'\n');
    out.extend_from_slice(&body);
    let mut z = zstd::bulk::Compressor::new(3).expect("zstd");
    z.include_checksum(true).expect("checksum");
    z.compress(&out).expect("compress")
}

/// The tails the directory `bytes` holds, by object key.
fn directory_tails(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let raw = zstd::decode_all(bytes).expect("the directory decompresses");
    let nl = raw.iter().position(|b| *b == b'\n').expect("a header line");
    let header: serde_json::Value = serde_json::from_slice(&raw[..nl]).expect("header JSON");
    let mut at = nl + 1;
    let mut out = BTreeMap::new();
    for o in header["objects"].as_array().expect("objects") {
        let len = o["len"].as_u64().expect("len") as usize;
        out.insert(o["key"].as_str().expect("key").to_string(), raw[at..at + len].to_vec());
        at += len;
    }
    out
}

/// Where the plain index object `object`'s first fence block or frame
/// table block starts, by its footer.
fn fenced_from(object: &[u8]) -> Option<usize> {
    let t = &object[object.len() - 24..];
    let at = u64::from_le_bytes(t[0..8].try_into().expect("8 bytes")) as usize;
    let len = u64::from_le_bytes(t[8..16].try_into().expect("8 bytes")) as usize;
    let footer: serde_json::Value =
        serde_json::from_slice(&zstd::decode_all(&object[at..at + len]).expect("footer")).expect("footer JSON");
    [
        "key_fences",
        "message_fences",
        "table_fences",
        "bucket_fences",
        "frame_table",
    ]
    .iter()
    .filter_map(|f| footer[f].as_array())
    .flatten()
    .filter_map(|b| b["offset"].as_u64())
    .map(|o| o as usize)
    .min()
}

/// History opens the merged index runs and the first snapshot's index
/// object from the tails directory, read beside the index's listing: at
/// least one GET fewer per object than without it (none for one held
/// whole; a tail holds the fence blocks and frame table when they are
/// small), and the same answer. A directory that does not decode, a tail in it that
/// does not open, or one left by objects since written again cost only
/// time: the same answer (with a warning for the damage); verify names
/// the damage, and reindex writes it anew.
#[test]
fn index_runs_open_from_the_tails_directory_and_a_wrong_one_costs_only_time() {
    let dir = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-tails"))
        .display()
        .to_string();
    synth(&dir, "13");
    let tails = std::path::Path::new(&dir).join("index/tails");
    let good = std::fs::read(&tails).expect("synth leaves a tails directory");
    let merged: Vec<String> = index_runs(&dir)
        .keys()
        .filter(|k| k.split_once('-').is_some_and(|(a, b)| a != b.trim_end_matches(".idx")))
        .map(|k| format!("index/00000001/segments/{k}"))
        .collect();
    assert!(
        !merged.is_empty(),
        "synth merged no runs: {:?}",
        index_runs(&dir).keys()
    );
    let key = a_changed_key(&dir, "public.t1");
    let history = |extra: &[&str]| history_with_reads(&dir, "public.t1", &key, extra);
    let (scanned, _) = history(&["--scan"]);
    assert!(json_lines(&scanned).len() > 1, "{key}: {scanned}");
    let (with, err) = history(&[]);
    assert_eq!(with, scanned, "the tails directory changed the history");
    assert!(!err.contains("WARN"), "{err}");
    assert!(
        err.contains("from index/tails"),
        "history did not read the directory: {err}"
    );
    let with_requests = index_requests(&err);
    // `log --table` (as restore and show) opens them from it too.
    let table_log = || table_log_with_reads(&dir, "public.t2");
    let (log_with, err) = table_log();
    assert!(json_lines(&log_with).len() > 1, "{log_with}");
    assert!(!err.contains("WARN"), "{err}");
    let log_with_requests = index_requests(&err);
    // Without it, each run's tail is read from the run.
    std::fs::remove_file(&tails).expect("remove the directory");
    let (without, err) = history(&[]);
    assert_eq!(without, scanned);
    assert!(!err.contains("WARN"), "a missing directory is no damage: {err}");
    let without_requests = index_requests(&err);
    let (log_without, err) = table_log();
    assert_eq!(log_without, log_with, "the tails directory changed log --table");
    let log_without_requests = index_requests(&err);
    // An object it holds whole costs no read at all; any other, fewer
    // bytes: none of those a reader opens it with (its trailer, footer and
    // fence blocks), only the data blocks it looks in. (`log --table`
    // opens no snapshot's.)
    let held = directory_tails(&good);
    assert_eq!(
        held.keys()
            .filter(|k| k.contains("/segments/"))
            .cloned()
            .collect::<Vec<_>>(),
        merged,
        "the directory should hold every merged run"
    );
    assert!(
        held.keys().any(|k| k.contains("/snapshots/")),
        "the directory should hold the first snapshot's index object: {:?}",
        held.keys()
    );
    for (key, tail) in &held {
        let object = std::fs::read(std::path::Path::new(&dir).join(key)).expect("index object");
        assert!(object.ends_with(tail), "{key}: its tail is not its last bytes");
        let whole = object.len() <= 8192;
        match whole {
            true => assert_eq!(tail.len(), object.len(), "{key}: a small object is held whole"),
            false => assert!(
                tail.len()
                    >= object.len()
                        - fenced_from(&object)
                            .filter(|f| object.len() - f <= 16384)
                            .unwrap_or(object.len()),
                "{key}: the tail of {} bytes should hold the fence blocks and frame table",
                tail.len()
            ),
        }
        let readers = match key.contains("/snapshots/") {
            true => vec![("history", &with_requests, &without_requests)],
            false => vec![
                ("history", &with_requests, &without_requests),
                ("log --table", &log_with_requests, &log_without_requests),
            ],
        };
        for (what, with, without) in readers {
            let (w, wo) = (
                with.get(key).copied().unwrap_or_default(),
                without.get(key).copied().unwrap_or_default(),
            );
            assert!(
                w.0 < wo.0 && (!whole || w.1 == 0),
                "{what}: {key}: (bytes, GETs) with the directory {w:?}, without {wo:?}"
            );
        }
    }
    let verify = || {
        let out = run_within(waly().args(["verify", "--archive", &dir]), 120);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // A directory that does not decode.
    let mut cut = good.clone();
    let mid = cut.len() / 2;
    cut[mid] ^= 0x10;
    std::fs::write(&tails, &cut).expect("write");
    let (damaged, err) = history(&[]);
    assert_eq!(damaged, scanned, "a damaged directory changed the history");
    assert!(err.contains("tails directory is damaged"), "no warning: {err}");
    assert_eq!(index_requests(&err), without_requests, "{err}");
    let (log_damaged, err) = table_log();
    assert_eq!(log_damaged, log_with, "a damaged directory changed log --table");
    assert!(err.contains("tails directory is damaged"), "no warning: {err}");
    let report = verify();
    assert!(
        report.contains("index/tails"),
        "verify should name the directory: {report}"
    );
    // A tail that is not its object's (its trailer's magic changed), in a
    // directory that decodes: warned about, the object's own tail read.
    let first = merged[0].clone();
    let wrong = edit_tails(&good, |k, tail| {
        if k == first {
            let n = tail.len();
            tail[n - 8..].copy_from_slice(b"NOTWALY!");
        }
    });
    std::fs::write(&tails, wrong).expect("write");
    let (wrong, err) = history(&[]);
    assert_eq!(wrong, scanned, "a wrong tail changed the history");
    assert!(err.contains("holds a damaged tail"), "no warning: {err}");
    let report = verify();
    assert!(
        report.contains(&format!("its tail of {first} is not that object's last bytes")),
        "verify should name the wrong tail: {report}"
    );
    // The tails of objects since written again (a reindex, with the old
    // directory put back): not those objects', so not used, and no damage.
    let out = run_within(waly().args(["reindex", "--archive", &dir]), 120);
    assert!(
        out.status.success(),
        "reindex: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rewritten = std::fs::read(&tails).expect("reindex writes the directory");
    assert!(verify().contains(" 0 problem(s)"), "{}", verify());
    std::fs::write(&tails, &good).expect("write");
    let (stale, err) = history(&[]);
    assert_eq!(stale, scanned, "a stale directory changed the history");
    assert!(!err.contains("WARN"), "a stale directory is no damage: {err}");
    assert_eq!(index_requests(&err), without_requests, "{err}");
    assert!(verify().contains(" 0 problem(s)"), "{}", verify());
    std::fs::write(&tails, &rewritten).expect("write");
    let (again, err) = history(&[]);
    assert_eq!(again, scanned);
    assert_eq!(index_requests(&err), with_requests, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `waly verify` tells a transaction a crash cut short and its replay then
/// stored whole (committed after all: no note) from one that never
/// committed (one harmless note, naming it), however the cut halves fall
/// across segments; readers show the same changes as an archive without
/// the crashes. Verify holds only the transactions still open, not every
/// transaction of the generation.
#[test]
fn verify_notes_only_the_transactions_a_crash_left_without_a_commit() {
    let base = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-crash"))
        .display()
        .to_string();
    let make = |name: &str, extra: &[&str]| {
        let dir = format!("{base}-{name}");
        let _ = std::fs::remove_dir_all(&dir);
        let mut args = vec![
            "synth",
            "--archive",
            &dir,
            "--events",
            "2000",
            "--weights",
            "10,1",
            "--rows",
            "50",
            "--segment-size",
            "16KiB",
        ];
        args.extend_from_slice(extra);
        stdout(&args);
        dir
    };
    let whole = make("whole", &[]);
    let replayed = make("replayed", &["--crash-at", "7"]);
    let orphaned = make("orphaned", &["--crash-at", "7", "--orphan-at-end"]);
    let verify = |dir: &str| -> serde_json::Value {
        let out = run_within(waly().args(["verify", "--archive", dir, "--json"]), 120);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("verify's JSON")
    };
    let problems = |v: &serde_json::Value| v["report"]["problems"].as_array().cloned().unwrap_or_default();
    for dir in [&whole, &replayed] {
        let v = verify(dir);
        assert_eq!(v["clean"], true, "{v}");
        assert_eq!(problems(&v), Vec::<serde_json::Value>::new(), "{dir}: {v}");
    }
    let v = verify(&orphaned);
    assert_eq!(v["clean"], true, "an orphan partial transaction is harmless: {v}");
    let found = problems(&v);
    assert_eq!(found.len(), 1, "{v}");
    assert_eq!(found[0]["kind"], "orphan_partial");
    assert_eq!(found[0]["harmless"], true);
    let last = std::fs::read_dir(std::path::Path::new(&orphaned).join("generations/00000001/segments"))
        .expect("segments")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .max()
        .expect("a segment");
    assert!(
        found[0]["object"].as_str().is_some_and(|o| o.ends_with(&last)),
        "the note names the last segment {last}: {v}"
    );
    // Readers hold back what never committed and count a replay once.
    let log = |dir: &str| stdout(&["log", "--archive", dir, "--json"]);
    let want = log(&whole);
    assert_eq!(json_lines(&want).len(), 2000);
    assert_eq!(log(&replayed), want, "a replay after a crash changed the log");
    assert_eq!(log(&orphaned), want, "a transaction without its commit reached the log");
    for dir in [whole, replayed, orphaned] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// An LSN as `waly` prints it (`0/16B6C50`), as a number.
fn lsn_value(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

/// The segments and snapshot parts a command read, by `WALY_READ_STATS=2`'s
/// lines: each segment's `(number, first, last)` (its commit LSNs, by its
/// name), and how many snapshot parts.
fn data_read(stderr: &str) -> (Vec<(u64, u64, u64)>, usize) {
    let keys: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("read ")?.split(" from ").nth(1))
        .filter(|k| k.starts_with("generations/"))
        .collect();
    let segments = keys
        .iter()
        .filter(|k| k.contains("/segments/"))
        .map(|k| {
            let name = k.rsplit('/').next().unwrap_or_default();
            let parts: Vec<&str> = name.trim_end_matches(".jsonl.zst").split('-').collect();
            let hex = |s: &str| u64::from_str_radix(s, 16).expect("an LSN in the name");
            (parts[0].parse().expect("a number"), hex(parts[1]), hex(parts[2]))
        })
        .collect();
    let parts = keys
        .iter()
        .filter(|k| k.contains("/snapshots/") && k.ends_with(".jsonl.zst"))
        .count();
    (segments, parts)
}

/// Every exported row's table, operation and identity, as a DuckDB query
/// over the export at `dest`.
/// A segment's bytes with its header (its first frame) edited by `edit`;
/// the records' frames are kept as they are.
fn with_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = zstd::zstd_safe::find_frame_compressed_size(bytes).expect("the header frame");
    let text = String::from_utf8(zstd::decode_all(&bytes[..n]).expect("the header")).expect("utf-8");
    let mut header: serde_json::Value = serde_json::from_str(text.trim_end()).expect("the header's JSON");
    edit(&mut header);
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).expect("zstd");
    enc.include_checksum(true).expect("zstd");
    std::io::Write::write_all(
        &mut enc,
        format!("{header}{}", &text[text.trim_end().len()..]).as_bytes(),
    )
    .expect("zstd");
    let mut out = enc.finish().expect("zstd");
    out.extend_from_slice(&bytes[n..]);
    out
}

/// `waly log --since <time>` (and `export --since`, on the same walk)
/// starts at the first segment whose chain may hold a commit at or after
/// the time: each header's commit-time mark bounds its records and every
/// earlier segment's, and a binary search over headers finds where. The
/// source's clock steps back here, so later segments hold older commits
/// than earlier ones: what it shows is still exactly the whole log's
/// records committed at or after the time, in order; and a header whose
/// mark is wrong is named by `waly verify`.
#[test]
fn a_log_since_a_time_shows_every_commit_at_or_after_it_though_the_clock_steps_back() {
    let dir = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-clock-back"))
        .display()
        .to_string();
    // 20,000 transactions, 100 ms apart; before every 5,000th the clock
    // steps back 5 minutes.
    synth_of(
        &dir,
        "200000",
        &["--clock-back-every", "5000", "--clock-back-ms", "300000"],
    );
    let all = stdout(&["log", "--archive", &dir, "--json"]);
    let time_of = |l: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
        v["commit_time"].as_str().expect("a commit time").to_string()
    };
    // 00:13:20 is passed three times: before the third step back, and
    // twice after it (the second time past the clock's earlier peak).
    let since = "2026-01-01T00:13:20Z";
    let at = "2026-01-01T00:13:20.000000Z";
    let want: Vec<&str> = all.lines().filter(|l| time_of(l).as_str() >= at).collect();
    let first = all
        .lines()
        .position(|l| time_of(l).as_str() >= at)
        .expect("commits since");
    assert!(
        all.lines().skip(first).any(|l| time_of(l).as_str() < at),
        "the clock never stepped back past the time"
    );
    let out = run_within(
        waly()
            .env("WALY_READ_STATS", "1")
            .args(["log", "--archive", &dir, "--json", "--since", since]),
        120,
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "log --since: {err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(),
        want,
        "log --since differs from the whole log's commits since"
    );
    let whole = run_within(
        waly()
            .env("WALY_READ_STATS", "1")
            .args(["log", "--archive", &dir, "--json"]),
        120,
    );
    let (part, every) = (bytes_read(&err), bytes_read(&String::from_utf8_lossy(&whole.stderr)));
    assert!(
        part * 2 < every,
        "log --since read {part} bytes, the whole log {every}: it should start near 70% of the archive"
    );
    // The export walks the same way: as many rows as the log's lines.
    let dest = format!("{dir}-export");
    let _ = std::fs::remove_dir_all(&dest);
    stdout(&["export", "--archive", &dir, "--to", &dest, "--since", since]);
    let rows = crate::export::duckdb(&format!("SELECT count(*) FROM ({})", exported_rows(&dest)));
    assert_eq!(rows[0][0], Some(want.len().to_string()), "export --since");
    let clean = stdout(&["verify", "--archive", &dir, "--json"]);
    assert!(clean.contains("\"clean\":true"), "{clean}");

    // The last segment's mark set back before its own records: verify
    // names it (no later segment chains to it, so its hash says nothing).
    let seg_dir = std::path::Path::new(&dir).join("generations/00000001/segments");
    let last = segments(&dir).into_keys().next_back().expect("segments");
    let wrong = with_header(&std::fs::read(seg_dir.join(&last)).expect("read"), |h| {
        h["commit_time_high"] = serde_json::json!("2026-01-01T00:00:00.000000Z");
    });
    std::fs::write(seg_dir.join(&last), wrong).expect("write");
    let out = run_within(waly().args(["verify", "--archive", &dir, "--json"]), 120);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify's JSON");
    let named = v["report"]["problems"].as_array().into_iter().flatten().any(|p| {
        p["object"].as_str().is_some_and(|o| o.ends_with(&last))
            && p["detail"].as_str().is_some_and(|d| d.contains("commit-time mark"))
    });
    assert!(named, "verify does not name the wrong mark of {last}: {v}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dest);
}

fn exported_rows(dest: &str) -> String {
    format!(
        "SELECT regexp_extract(filename, '([^/]+)/date=', 1), _op, _commit_lsn, _seq FROM read_parquet('{dest}/*/*/*.parquet', hive_partitioning = true, union_by_name = true, filename = true)"
    )
}

/// The exports at `twice` (continued from a cursor) and `once` (one run)
/// hold the same rows, each as often.
fn assert_same_export(twice: &str, once: &str) {
    let differ = |x: &str, y: &str| {
        let q = format!(
            "SELECT count(*) FROM ({} EXCEPT ALL {})",
            exported_rows(x),
            exported_rows(y)
        );
        crate::export::duckdb(&q)[0][0].clone()
    };
    assert_eq!(
        differ(twice, once),
        Some("0".into()),
        "rows exported twice or not in one run"
    );
    assert_eq!(
        differ(once, twice),
        Some("0".into()),
        "rows missing from the continued export"
    );
}

/// A pruned archive keeps the segment before its first snapshot (the
/// chain's anchor), whose commits the log and an export show. An export up
/// to one of those commits exports the snapshot, taken after it; continued,
/// it still exports the commits between the point and the snapshot: the
/// cursor never passes commits it did not read. The two runs together are
/// the export of one run.
#[test]
fn an_export_up_to_a_point_before_its_snapshot_continues_with_every_change_once() {
    let dir = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-pruned"))
        .display()
        .to_string();
    synth(&dir, "5");
    stdout(&["compact", "--archive", &dir]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    stdout(&["prune", "--archive", &dir, "--keep", "1s"]);
    let log = json_lines(&stdout(&["log", "--archive", &dir, "--json"]));
    assert!(log.len() >= 2, "the kept segment's commits: {}", log.len());
    let point = log[log.len() / 2]["commit_lsn"]
        .as_str()
        .expect("commit_lsn")
        .to_string();
    let snapshots: Vec<u64> = std::fs::read_dir(std::path::Path::new(&dir).join("generations/00000001/snapshots"))
        .expect("snapshots")
        .map(|e| u64::from_str_radix(&e.expect("entry").file_name().to_string_lossy(), 16).expect("an LSN"))
        .collect();
    assert!(
        snapshots.iter().all(|s| *s > lsn_value(&point)),
        "the snapshot is after {point}: {snapshots:x?}"
    );
    let (twice, once) = (format!("{dir}-export-twice"), format!("{dir}-export-once"));
    for d in [&twice, &once] {
        let _ = std::fs::remove_dir_all(d);
    }
    stdout(&["export", "--archive", &dir, "--to", &twice, "--until", &point]);
    stdout(&["export", "--archive", &dir, "--to", &twice]);
    stdout(&["export", "--archive", &dir, "--to", &once]);
    assert_same_export(&twice, &once);
    let q = format!(
        "SELECT count(*) FROM ({}) WHERE _op NOT IN ('snapshot', 'empty_snapshot')",
        exported_rows(&once)
    );
    assert_eq!(
        crate::export::duckdb(&q)[0][0],
        Some(log.len().to_string()),
        "every change of the log"
    );
    for d in [&dir, &twice, &once] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Readers that want only commits from (or up to) an LSN leave unread the
/// segments whose commit-LSN range, by their name, lies outside it: `waly
/// log --since/--until` given as LSNs, and an export that continues from
/// its cursor (which reads no snapshot either, every table having one). They
/// show what a whole read shows, and `waly verify` checks what that relies
/// on: a segment's records lie in its range, in commit order.
#[test]
fn reads_after_an_lsn_leave_earlier_segments_unread_and_show_what_a_whole_read_shows() {
    let dir = std::env::temp_dir()
        .join(crate::harness::unique("waly-synth-since"))
        .display()
        .to_string();
    synth(&dir, "11");
    let total = segments(&dir).len();
    let whole = stdout(&["log", "--archive", &dir, "--json"]);
    let lines: Vec<&str> = whole.lines().collect();
    let lsn_of = |l: &str| {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
        v["commit_lsn"].as_str().expect("commit_lsn").to_string()
    };
    let (since, until) = (lsn_of(lines[lines.len() / 2]), lsn_of(lines[lines.len() * 3 / 4]));
    let (a, b) = (lsn_value(&since), lsn_value(&until));

    let out = run_within(
        waly().env("WALY_READ_STATS", "2").args([
            "log",
            "--archive",
            &dir,
            "--json",
            "--since",
            &since,
            "--until",
            &until,
        ]),
        120,
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "log: {err}");
    let want: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| (a..=b).contains(&lsn_value(&lsn_of(l))))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(), want);
    // The last segment's header is read all the same: it says where the
    // generation's complete transactions end.
    let tail = total as u64 - 1;
    let (read, _) = data_read(&err);
    assert!(!read.is_empty());
    for (n, first, last) in &read {
        assert!(
            *n == tail || (*last >= a && *first <= b),
            "a segment outside {since}..{until} was read: {err}"
        );
    }
    assert!(
        read.len() * 3 < total,
        "{} of {total} segments read for a quarter of the log",
        read.len()
    );

    // An export up to `until`, then continued: the second run reads only
    // the segments after its cursor, and no snapshot; both together are
    // the export of one run.
    let export = |to: &str, extra: &[&str]| -> String {
        let out = run_within(
            waly()
                .env("WALY_READ_STATS", "2")
                .args(["export", "--archive", &dir, "--to", to])
                .args(extra),
            300,
        );
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "export: {err}");
        err
    };
    let (twice, once) = (format!("{dir}-export-twice"), format!("{dir}-export-once"));
    for d in [&twice, &once] {
        let _ = std::fs::remove_dir_all(d);
    }
    let first_run = export(&twice, &["--until", &until]);
    assert!(
        data_read(&first_run).1 > 0,
        "the first run exports the snapshot: {first_run}"
    );
    let (read, parts) = data_read(&export(&twice, &[]));
    assert_eq!(parts, 0, "a continued export read a snapshot");
    assert!(!read.is_empty());
    for (_, _, last) in &read {
        assert!(*last > b, "a segment at or before the cursor {until} was read again");
    }
    export(&once, &[]);
    assert_same_export(&twice, &once);
    let rows = crate::export::duckdb(&format!("SELECT count(*) FROM ({})", exported_rows(&once)));
    assert_eq!(
        rows[0][0],
        Some((lines.len() + 900).to_string()),
        "every change and snapshot row"
    );

    // A segment whose header and name (renamed with it) give a range that
    // leaves out its later records: verify names it.
    let seg_dir = std::path::Path::new(&dir).join("generations/00000001/segments");
    let name = segments(&dir).into_keys().nth(3).expect("a fourth segment");
    let narrowed = with_header(&std::fs::read(seg_dir.join(&name)).expect("read"), |header| {
        header["last_lsn"] = header["first_lsn"].clone();
    });
    let mut parts: Vec<&str> = name.trim_end_matches(".jsonl.zst").split('-').collect();
    parts[2] = parts[1];
    let renamed = format!("{}.jsonl.zst", parts.join("-"));
    std::fs::remove_file(seg_dir.join(&name)).expect("remove");
    std::fs::write(seg_dir.join(&renamed), &narrowed).expect("write");
    let out = run_within(waly().args(["verify", "--archive", &dir, "--json"]), 120);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify's JSON");
    assert_eq!(v["clean"], false, "{v}");
    let named = v["report"]["problems"].as_array().into_iter().flatten().any(|p| {
        p["object"].as_str().is_some_and(|o| o.ends_with(&renamed))
            && p["detail"]
                .as_str()
                .is_some_and(|d| d.contains("lies outside the segment's range"))
    });
    assert!(named, "verify does not name the record outside {renamed}'s range: {v}");
    for d in [&dir, &twice, &once] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Every exported row of the tables in the export at `one` (its table,
/// operation, identity, intent and values), and the same of the export at
/// `whole` restricted to those tables: DuckDB statements that make tables
/// `one` and `whole` of them.
fn exported_tables(one: &str, whole: &str) -> String {
    let rows = |d: &str| {
        format!(
            "SELECT regexp_extract(filename, '([^/]+)/date=', 1) AS dir, _op, _commit_lsn, _seq, _intent, id, n, pad
               FROM read_parquet('{d}/*/*/*.parquet', filename = true, union_by_name = true, hive_partitioning = true)"
        )
    };
    format!(
        "CREATE TABLE one AS {};\nCREATE TABLE whole AS SELECT * FROM ({}) WHERE dir IN (SELECT dir FROM one);\n",
        rows(one),
        rows(whole)
    )
}

/// `waly export` with the stats of a read: stderr.
fn export_with_reads(dir: &str, dest: &str, extra: &[&str]) -> String {
    let out = run_within(
        waly()
            .env("WALY_READ_STATS", "1")
            .args([&["export", "--archive", dir, "--to", dest][..], extra].concat()),
        120,
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "export {extra:?}: {err}");
    err
}

/// An export of some tables reads, of each segment the index covers, only
/// the frames with their changes and the frames holding intents (a
/// transaction's intent may lie in a later frame than its changes), and
/// holds exactly what a whole export holds of those tables, intents
/// included; without the index, the same. Two archives: a rare table's
/// changes among a busy one's, and the same with large transactions
/// (spanning frames) every second of which carries an intent after its
/// changes.
#[test]
fn an_export_of_some_tables_reads_their_frames_and_those_with_intents_and_holds_what_a_whole_export_holds() {
    let rare: &[&str] = &[];
    let intents: &[&str] = &["--txn-changes", "3000", "--intent-every", "2"];
    for (name, extra) in [("rare", rare), ("intents", intents)] {
        let dir = std::env::temp_dir()
            .join(format!("waly-synth-export-{name}"))
            .display()
            .to_string();
        synth_rare(&dir, extra);
        let (whole, one, scan) = (format!("{dir}-whole"), format!("{dir}-t1"), format!("{dir}-t1-scan"));
        for d in [&whole, &one, &scan] {
            let _ = std::fs::remove_dir_all(d);
        }
        let all = bytes_read(&export_with_reads(&dir, &whole, &[]));
        let err = export_with_reads(&dir, &one, &["--tables", "public.t1"]);
        let indexed = bytes_read(&err);
        // Without the index every segment is read whole.
        let index = std::path::Path::new(&dir).join("index");
        let aside = std::path::Path::new(&dir).join("index-aside");
        std::fs::rename(&index, &aside).expect("move the index aside");
        let scanned = bytes_read(&export_with_reads(&dir, &scan, &["--tables", "public.t1"]));
        std::fs::rename(&aside, &index).expect("put the index back");
        let r = crate::export::duckdb(&format!(
            "{}CREATE TABLE scan AS SELECT * FROM read_parquet('{scan}/*/*/*.parquet', union_by_name = true);
             SELECT (SELECT count(*) FROM (SELECT * FROM one EXCEPT ALL SELECT * FROM whole)),
                    (SELECT count(*) FROM (SELECT * FROM whole EXCEPT ALL SELECT * FROM one)),
                    (SELECT count(*) FROM (SELECT _op, _commit_lsn, _seq, _intent, id, n, pad FROM one
                      EXCEPT ALL SELECT _op, _commit_lsn, _seq, _intent, id, n, pad FROM scan)),
                    (SELECT count(*) FROM scan),
                    (SELECT count(*) FROM one WHERE _op NOT IN ('snapshot', 'empty_snapshot')), (SELECT count(_intent) FROM one),
                    (SELECT count(DISTINCT dir) FROM one)",
            exported_tables(&one, &whole)
        ));
        let n = |i: usize| r[0][i].as_deref().unwrap_or("-").parse::<u64>().expect("a count");
        assert_eq!((n(0), n(1), n(2)), (0, 0, 0), "{name}: the export of t1 differs: {r:?}");
        assert_eq!(
            (n(3), n(6)),
            (n(4) + 300, 1),
            "{name}: t1's rows and snapshot only: {r:?}"
        );
        assert!(n(4) > 2, "{name}: the rare table has changes: {r:?}");
        match name {
            "rare" => assert!(
                indexed * 10 < scanned && indexed * 10 < all,
                "{name}: {indexed} bytes read with the index, {scanned} without, {all} for every table"
            ),
            _ => {
                assert!(n(5) > 0, "{name}: some of t1's changes carry intents: {r:?}");
                assert!(
                    indexed * 2 < scanned,
                    "{name}: {indexed} bytes read with the index, {scanned} without"
                );
            }
        }
        // A run of one table into the destination of every table keeps
        // every table's as-of view.
        let views = |d: &str| std::fs::read_to_string(format!("{d}/_waly/as_of_duckdb.sql")).expect("the views");
        let before = views(&whole);
        assert!(before.contains("public.t0") && before.contains("public.t1"), "{before}");
        export_with_reads(&dir, &whole, &["--tables", "public.t1"]);
        assert_eq!(views(&whole), before, "{name}: a run of t1 alone changed the views");
        // Continued: nothing new, and little read.
        let again = export_with_reads(&dir, &one, &["--tables", "public.t1"]);
        assert!(
            again.contains("exported 0 changes and 0 snapshot rows"),
            "{name}: {again}"
        );
        assert!(bytes_read(&again) * 4 < indexed, "{name}: continued: {again}");
        for d in [&dir, &whole, &one, &scan] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// What the readers of `dir` answer about the points a prune test asks
/// about, each as `Ok(output)` or `Err(stderr)`.
fn prune_answers(dir: &str, points: &[(&str, String)], window: &str) -> BTreeMap<String, Result<String, String>> {
    let mut asks: Vec<(String, Vec<String>)> = Vec::new();
    for (name, at) in points {
        for t in ["public.t0", "public.t1", "public.t2"] {
            asks.push((
                format!("show {t} at {name}"),
                ["show", t, "--at", at, "--format", "csv"].map(String::from).to_vec(),
            ));
        }
    }
    for (t, key) in [("public.t0", "1"), ("public.t0", "250"), ("public.t2", "7")] {
        asks.push((
            format!("history {t} {key} since the window"),
            ["history", t, key, "--since", window, "--json"]
                .map(String::from)
                .to_vec(),
        ));
    }
    asks.push((
        "log since the window".into(),
        ["log", "--since", window, "--json"].map(String::from).to_vec(),
    ));
    asks.into_iter()
        .map(|(name, args)| {
            let out = run_within(waly().args(&args).args(["--archive", dir]), 120);
            let answer = match out.status.success() {
                // A version's number counts the versions the archive holds
                // before it: a prune renumbers them.
                true if args[0] == "history" => Ok(json_lines(&String::from_utf8_lossy(&out.stdout))
                    .into_iter()
                    .map(|mut v| {
                        v.as_object_mut().map(|o| o.remove("version"));
                        v.to_string() + "\n"
                    })
                    .collect()),
                true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
                false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            };
            (name, answer)
        })
        .collect()
}

/// Asserts `waly tables` of `dir` (from its catalog where it fits) says
/// what a scan of its segments says.
fn tables_as_scanned(dir: &str, what: &str) {
    let (catalog, _) = tables_with_stats(dir, false);
    let (scan, _) = tables_with_stats(dir, true);
    assert_eq!(catalog, scan, "{what}: tables");
}

/// Asserts `got` holds `want`'s answers, naming the first line that differs.
fn same_answers(
    got: &BTreeMap<String, Result<String, String>>,
    want: &BTreeMap<String, Result<String, String>>,
    what: &str,
) {
    for (name, w) in want {
        let g = got.get(name);
        if g == Some(w) {
            continue;
        }
        let (Some(Ok(g)), Ok(w)) = (g, w) else {
            panic!("{what}: {name}: {g:?}, not {w:?}");
        };
        let first = g.lines().zip(w.lines()).position(|(a, b)| a != b);
        panic!(
            "{what}: {name}: {} lines, not {}; the first that differs ({first:?}): {:?} for {:?}",
            g.lines().count(),
            w.lines().count(),
            first.and_then(|i| g.lines().nth(i)),
            first.and_then(|i| w.lines().nth(i))
        );
    }
}

/// The guarantee: a prune cut short after any number of its deletions (a
/// crash, a kill, an outage) leaves an archive that `waly verify` calls
/// clean, whose readers answer every point inside the window as before and
/// a point before it as before or with a refusal, never wrongly; and
/// running prune again finishes it, to the archive an uninterrupted prune
/// leaves.
#[test]
fn a_prune_cut_short_after_any_deletion_answers_as_before_or_refuses_and_a_second_run_finishes_it() {
    let base = std::env::temp_dir().join(crate::harness::unique("waly-prune-cut"));
    let _ = std::fs::remove_dir_all(&base);
    let pristine = base.join("pristine").display().to_string();
    // 4,000 transactions, 100 ms apart, in 64 KiB segments.
    synth_of(&pristine, "40000", &["--seed", "11"]);
    let log = json_lines(&stdout(&["log", "--archive", &pristine, "--json"]));
    let txn = |n: usize| -> (String, String) {
        let v = &log[n * 10];
        let s = |f: &str| v[f].as_str().expect(f).to_string();
        (s("commit_lsn"), s("commit_time"))
    };
    // Snapshots made from the archive at 40% and 70%; the window starts at
    // 50%: the 40% snapshot is where every table starts from then on.
    for n in [1600, 2800] {
        let out = run_within(
            waly().args(["compact", "--archive", &pristine, "--lsn", &txn(n).0]),
            120,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let window = txn(2000).1;
    let points = [
        ("the window's start", window.clone()),
        ("inside the window, after the 70% snapshot", txn(3400).1),
        ("the end", "now".to_string()),
    ];
    let before_window = [("before the window", txn(800).1)];
    let want = prune_answers(&pristine, &points, &window);
    let want_before = prune_answers(&pristine, &before_window, &window);
    for (name, a) in want.iter().chain(&want_before) {
        assert!(a.as_ref().is_ok_and(|o| !o.is_empty()), "{name}: {a:?}");
    }

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let open = |dir: &str| waly::archive::Store::open(dir).expect("store");
    let window_start = chrono::DateTime::parse_from_rfc3339(&window)
        .expect("time")
        .with_timezone(&chrono::Utc);
    let plan = rt
        .block_on(waly::prune::plan(&open(&pristine), window_start))
        .expect("plan");
    let objects: Vec<String> = plan.objects.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(plan.marks.len(), 1, "{:?}", plan.marks);
    for kind in ["/manifest.json", "/snapshots/", "/segments/", "index/"] {
        assert!(
            objects.iter().any(|k| k.contains(kind)),
            "a prune that deletes no {kind}: {objects:?}"
        );
    }

    // The archive an uninterrupted prune leaves.
    let whole = base.join("whole").display().to_string();
    copy_tree(std::path::Path::new(&pristine), std::path::Path::new(&whole));
    rt.block_on(waly::prune::execute(&open(&whole), &plan)).expect("prune");
    let after_whole = crate::archive::files_under(&whole, "");
    same_answers(&prune_answers(&whole, &points, &window), &want, "after a whole prune");
    tables_as_scanned(&whole, "after a whole prune");

    // Cut short after k deletions: the mark written, the first k objects
    // deleted, nothing after (not the catalog, not the tails directory).
    let n = objects.len();
    let mut cuts: Vec<usize> = (0..=n).step_by((n / 8).max(1)).collect();
    // Where one kind of deletion gives way to the next, and the last.
    for (i, w) in objects.windows(2).enumerate() {
        let kind = |k: &str| {
            (
                k.ends_with("/manifest.json"),
                k.contains("/snapshots/"),
                k.contains("/segments/"),
            )
        };
        if kind(&w[0]) != kind(&w[1]) {
            cuts.extend([i + 1, i + 2]);
        }
    }
    cuts.extend([1, n - 1]);
    cuts.sort();
    cuts.dedup();
    for k in cuts {
        let dir = base.join(format!("cut-{k}")).display().to_string();
        copy_tree(std::path::Path::new(&pristine), std::path::Path::new(&dir));
        let store = open(&dir);
        rt.block_on(async {
            for m in &plan.marks {
                let mark = serde_json::to_vec(m).expect("json");
                store
                    .put_once(&waly::prune::mark_key(&m.generation, m.first_kept), mark.into())
                    .await?;
            }
            for key in &objects[..k] {
                store.delete(key).await?;
            }
            Ok::<_, waly::Error>(())
        })
        .expect("the first deletions");
        let cut = format!(
            "cut short after {k} of {n} deletions (the last: {:?})",
            objects[..k].last()
        );
        let (code, report) = crate::operate::verify_json(&dir);
        let problems = report["report"]["problems"].as_array().cloned().unwrap_or_default();
        assert!(
            code == 0 && problems.iter().all(|p| p["harmless"] == true),
            "{cut}: verify: {report}"
        );
        same_answers(&prune_answers(&dir, &points, &window), &want, &cut);
        tables_as_scanned(&dir, &cut);
        for (name, answer) in prune_answers(&dir, &before_window, &window) {
            match answer {
                Err(e) => assert!(e.contains("before the archive's history"), "{cut}: {name}: {e}"),
                ok => assert_eq!(Some(&ok), want_before.get(&name), "{cut}: {name}"),
            }
        }
        // Running prune again finishes it.
        rt.block_on(async {
            let again = waly::prune::plan(&store, window_start).await?;
            waly::prune::execute(&store, &again).await
        })
        .unwrap_or_else(|e| panic!("{cut}: prune again: {e}"));
        assert_eq!(
            crate::archive::files_under(&dir, ""),
            after_whole,
            "{cut}: the second run's archive"
        );
        assert_eq!(
            prune_answers(&dir, &points, &window),
            want,
            "{cut}: after the second run"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&base);
}
