//! `waly history`, `waly tables` and `waly schema` against a real
//! PostgreSQL; an audit trigger is the oracle.

use crate::archive::{archive_dir, settle, spawn_run, wait_streaming};
use crate::harness::{run_within, waly, TestDb};
use std::process::Output;

fn history(archive: &str, args: &[&str]) -> Output {
    run_within(waly().args(["history", "--archive", archive]).args(args), 120)
}

pub(crate) fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// `(op, old id, new id, v, length of big)` of one version or audit row.
type Step = (String, Option<String>, Option<String>, Option<String>, Option<String>);

/// The guarantee: `waly reindex` beside a live `waly run` that writes new
/// schema versions indexes every segment it lists (a version is written
/// before any segment naming it, so the versions are read after the
/// segments are listed), and history through its index is then the same
/// as without it. Forty tables' snapshots make the reindex take a while;
/// meanwhile a column of `w` is renamed back and forth, a row after each.
#[test]
fn reindex_beside_a_writer_recording_new_schema_versions_indexes_every_segment() {
    let db = TestDb::new();
    let mut setup = String::from("CREATE TABLE w (id int PRIMARY KEY, a int);\n");
    for t in 0..40 {
        setup.push_str(&format!(
            "CREATE TABLE s{t} (id int PRIMARY KEY, v text);
             INSERT INTO s{t} SELECT g, repeat('x', 40) || g FROM generate_series(1, 500) g;\n"
        ));
    }
    db.psql(&setup);
    let archive = archive_dir(&db);
    crate::schemas::init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    let mut script = String::new();
    for i in 0..1500 {
        let (from, to) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
        script.push_str(&format!(
            "ALTER TABLE w RENAME COLUMN {from} TO {to}; INSERT INTO w VALUES ({i}, {i});\n"
        ));
    }
    let writer = crate::harness::psql_in_background(db.url(), script);
    let mut rounds = 0;
    while !writer.is_finished() || rounds < 3 {
        let o = run_within(waly().args(["reindex", "--archive", &archive]), 120);
        assert!(
            o.status.success(),
            "reindex {rounds} beside the writer: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        rounds += 1;
    }
    assert!(writer.join().expect("psql").success());
    settle(&db, run);
    let o = run_within(waly().args(["reindex", "--archive", &archive]), 120);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for key in ["0", "777", "1499"] {
        let indexed = json_lines(&history(&archive, &["w", key, "--json"]));
        let scanned = json_lines(&history(&archive, &["w", key, "--json", "--scan"]));
        assert_eq!(indexed.len(), 1, "w {key}: {indexed:?}");
        assert_eq!(indexed, scanned, "w {key}");
    }
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn history_follows_a_row_through_updates_toast_a_key_change_delete_and_reinsert() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE h (id int PRIMARY KEY, v int, big text);
         ALTER TABLE h ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE audit (n serial, op text, old_id int, new_id int, v int, big_len int);
         CREATE FUNCTION audit_h() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO audit (op, old_id, new_id, v, big_len) VALUES (lower(TG_OP),
                 CASE WHEN TG_OP <> 'INSERT' THEN OLD.id END,
                 CASE WHEN TG_OP <> 'DELETE' THEN NEW.id END,
                 CASE WHEN TG_OP <> 'DELETE' THEN NEW.v END,
                 CASE WHEN TG_OP <> 'DELETE' THEN length(NEW.big) END);
             RETURN NULL;
         END $$;
         CREATE TRIGGER a AFTER INSERT OR UPDATE OR DELETE ON h FOR EACH ROW EXECUTE FUNCTION audit_h();
         INSERT INTO h VALUES (1, 0, repeat('x', 300000)), (50, 0, 'other');
         CREATE PUBLICATION waly FOR TABLE h;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    for i in 1..=5 {
        db.psql(&format!("UPDATE h SET v = {i} WHERE id = 1")); // big: unchanged TOAST
    }
    db.psql(
        "BEGIN;
         SELECT pg_logical_emit_message(true, 'waly', '{\"op\":\"REFUND\",\"actor\":\"alice\"}');
         UPDATE h SET v = 100 WHERE id = 1;
         UPDATE h SET v = 100 WHERE id = 50;
         COMMIT;",
    );
    db.psql("UPDATE h SET id = 10 WHERE id = 1");
    db.psql("UPDATE h SET v = 7, big = 'short now' WHERE id = 10");
    db.psql("UPDATE h SET v = 8 WHERE id = 50");
    db.psql("DELETE FROM h WHERE id = 10");
    db.psql("INSERT INTO h VALUES (10, 42, NULL)");
    settle(&db, run);

    let versions = json_lines(&history(&archive, &["h", "1", "--json"]));
    let steps: Vec<Step> = versions
        .iter()
        .skip(1)
        .map(|v| {
            let text = |x: &serde_json::Value| x.as_str().map(str::to_string);
            (
                v["op"].as_str().unwrap_or_default().to_string(),
                text(&v["old"]["id"]).or_else(|| {
                    // Without a key change the old key is the key itself.
                    (v["op"] == "update").then(|| text(&v["key"]["id"])).flatten()
                }),
                if v["op"] == "delete" {
                    None
                } else {
                    text(&v["new"]["id"])
                },
                text(&v["new"]["v"]),
                v["new"]["big"].as_str().map(|b| b.chars().count().to_string()),
            )
        })
        .collect();
    let audit: Vec<Step> = db
        .psql(
            "SELECT op, coalesce(old_id::text, '-'), coalesce(new_id::text, '-'), coalesce(v::text, '-'),
                    coalesce(big_len::text, '-')
               FROM audit WHERE old_id IN (1, 10) OR new_id IN (1, 10) ORDER BY n",
        )
        .lines()
        .map(|l| {
            let f: Vec<Option<String>> = l.split('|').map(|x| (x != "-").then(|| x.to_string())).collect();
            (
                f[0].clone().unwrap_or_default(),
                f[1].clone(),
                f[2].clone(),
                f[3].clone(),
                f[4].clone(),
            )
        })
        .collect();
    // The audit's first row is the insert from before waly: the snapshot version.
    assert_eq!(audit[0].0, "insert");
    assert_eq!(steps, audit[1..], "every version, with its values, as the audit saw it");
    assert_eq!(versions[0]["op"], "snapshot");
    assert_eq!(versions[0]["new"]["v"], "0");
    assert_eq!(versions[0]["snapshot"], true);
    let numbers: Vec<u64> = versions.iter().filter_map(|v| v["version"].as_u64()).collect();
    assert_eq!(numbers, (1..=versions.len() as u64).collect::<Vec<_>>());
    // Unchanged TOAST is carried forward and marked.
    assert_eq!(versions[1]["unchanged_toast"], serde_json::json!(["big"]));
    assert_eq!(versions[1]["changed"], serde_json::json!(["v"]));
    // The intent is on the version its transaction made, and only there.
    let intents: Vec<&serde_json::Value> = versions.iter().map(|v| &v["intent"]).collect();
    assert_eq!(intents[6], "{\"op\":\"REFUND\",\"actor\":\"alice\"}");
    assert_eq!(intents.iter().filter(|i| !i.is_null()).count(), 1);
    assert_eq!(
        versions[7]["key_change"],
        serde_json::json!({"from": "id=1", "to": "id=10"})
    );
    // The same row asked for by its later key has the same history.
    let later = json_lines(&history(&archive, &["h", "id=10", "--json"]));
    assert_eq!(later.len(), versions.len() - 7, "from the key change on");
    assert_eq!(
        later[0]["key_change"],
        serde_json::json!({"from": "id=1", "to": "id=10"})
    );
    // history_of_a_key_a_row_moved_to_knows_the_row_it_came_from: only the
    // key changed, and the large value the key change left alone is the
    // one the row had under its old key.
    assert_eq!(versions[7]["changed"], serde_json::json!(["id"]));
    assert_eq!(later[0]["changed"], serde_json::json!(["id"]));
    assert_eq!(later[0]["unchanged_toast"], serde_json::json!(["big"]));
    assert_eq!(later[0]["new"]["big"].as_str().map(str::len), Some(300_000));
    assert_eq!(later[0]["new"], versions[7]["new"]);
    assert_eq!(
        json_lines(&history(&archive, &["h", "id=10", "--json", "--scan"])),
        later,
        "the same without the index"
    );

    // The same without the index, after rebuilding it from nothing, and
    // through a damaged index object (with a warning).
    assert_eq!(
        json_lines(&history(&archive, &["h", "1", "--json", "--scan"])),
        versions
    );
    std::fs::remove_dir_all(std::path::Path::new(&archive).join("index")).expect("drop the index");
    assert_eq!(
        json_lines(&history(&archive, &["h", "1", "--json"])),
        versions,
        "no index: a scan"
    );
    let re = run_within(waly().args(["reindex", "--archive", &archive]), 120);
    assert!(re.status.success(), "{}", String::from_utf8_lossy(&re.stderr));
    let indexed = history(&archive, &["h", "1", "--json", "--stats"]);
    assert_eq!(json_lines(&indexed), versions, "rebuilt index");
    assert!(
        String::from_utf8_lossy(&indexed.stderr).contains("0 segments whole"),
        "the rebuilt index covers every segment: {}",
        String::from_utf8_lossy(&indexed.stderr)
    );
    let seg_index = crate::archive::files_under(&archive, "index")
        .into_iter()
        .find(|f| f.starts_with("00000001/segments/"))
        .expect("a segment index object");
    let path = std::path::Path::new(&archive).join("index").join(&seg_index);
    let mut bytes = std::fs::read(&path).expect("read index");
    for b in bytes.iter_mut().take(64) {
        *b ^= 0x5a; // the first blocks
    }
    std::fs::write(&path, bytes).expect("write index");
    let damaged = history(&archive, &["h", "1", "--json"]);
    assert_eq!(json_lines(&damaged), versions, "a damaged index gives the same answer");
    assert!(
        String::from_utf8_lossy(&damaged.stderr).contains("index is damaged"),
        "and says so: {}",
        String::from_utf8_lossy(&damaged.stderr)
    );

    // The human form says the same, one line per version.
    let text = history(&archive, &["public.h", "1"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert_eq!(text.lines().count(), 1 + versions.len(), "{text}");
    assert!(
        text.contains("v: '4' → '5'") && text.contains("REFUND") && text.contains("deleted"),
        "{text}"
    );
    assert!(
        text.contains("key id=1 → id=10") && text.contains("first known version"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "no colour off a terminal");

    // --since/--until bound it, numbers kept.
    let t = |i: usize| versions[i]["commit_time"].as_str().unwrap_or_default().to_string();
    let window = json_lines(&history(
        &archive,
        &["h", "1", "--json", "--since", &t(3), "--until", &t(6)],
    ));
    let nums: Vec<u64> = window.iter().filter_map(|v| v["version"].as_u64()).collect();
    assert_eq!(nums, [4, 5, 6, 7]);

    // Bad input.
    for (args, says) in [
        (vec!["nosuch", "1"], "not in the archive"),
        (vec!["h", "a=1"], "no key column"),
        (vec!["h", "1,2"], "give 1 value"),
        (vec!["h", "999"], "no row of public.h with key id=999"),
    ] {
        let out = history(&archive, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }

    // waly tables and waly schema.
    let tables = run_within(waly().args(["tables", "--archive", &archive, "--json"]), 60);
    let tables = json_lines(&tables);
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0]["table"], "public.h");
    // Every audited change but the two inserts from before waly (in the snapshot).
    let audited_changes: u64 = db.psql("SELECT count(*) - 2 FROM audit").parse().unwrap_or(0);
    assert_eq!(tables[0]["changes"].as_u64(), Some(audited_changes));
    assert_eq!(tables[0]["schema_versions"].as_u64(), Some(1));

    // The same history from an S3 archive (a copy of this one).
    if let Some(bucket) = crate::harness::s3_bucket("history") {
        let s3 = format!("s3://{bucket}/copy");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let from = waly::archive::Store::open(&archive).expect("local");
            let to = waly::archive::Store::open(&s3).expect("s3");
            for (key, _) in from.list("").await.expect("list") {
                to.put_once(&key, from.get(&key).await.expect("get"))
                    .await
                    .expect("put");
            }
        });
        assert_eq!(json_lines(&history(&s3, &["h", "1", "--json"])), versions);
    }
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn schema_lists_versions_with_what_each_added_dropped_or_retyped() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE s (id int PRIMARY KEY, a text, b int);
         CREATE PUBLICATION waly FOR TABLE s;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO s VALUES (1, 'x', 1)");
    db.psql("ALTER TABLE s ADD COLUMN c text; INSERT INTO s VALUES (2, 'y', 2, 'z')");
    db.psql("ALTER TABLE s DROP COLUMN a, ALTER COLUMN b TYPE bigint; INSERT INTO s VALUES (3, 3, 'w')");
    settle(&db, run);
    let out = run_within(waly().args(["schema", "s", "--archive", &archive, "--json"]), 60);
    let versions = json_lines(&out);
    let summary: Vec<(u64, serde_json::Value, serde_json::Value, serde_json::Value)> = versions
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap_or(0),
                v["added"].clone(),
                v["dropped"].clone(),
                v["retyped"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, serde_json::json!([]), serde_json::json!([]), serde_json::json!([])),
            (
                2,
                serde_json::json!(["c text"]),
                serde_json::json!([]),
                serde_json::json!([])
            ),
            (
                3,
                serde_json::json!([]),
                serde_json::json!(["a"]),
                serde_json::json!(["b: integer → bigint"])
            ),
        ]
    );
    assert!(versions.iter().all(|v| v["commit_time"].is_string()), "{versions:?}");
    let text = run_within(waly().args(["schema", "s", "--archive", &archive]), 60);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("added c text") && text.contains("dropped a") && text.contains("retyped b"),
        "{text}"
    );
    let missing = run_within(waly().args(["schema", "nosuch", "--archive", &archive]), 60);
    assert!(!missing.status.success());
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn history_through_the_index_shows_the_truncate_that_ended_a_row_and_starts_at_the_first_snapshot() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE tr (id int PRIMARY KEY, email text);
         INSERT INTO tr VALUES (1, 'ann@example.com');
         CREATE PUBLICATION waly FOR TABLE tr;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE tr SET email = 'ann@new.example' WHERE id = 1");
    crate::archive::wait_confirmed(&db, 120);
    // A compacted snapshot repeats what the changes say: it is not where
    // the row's history starts.
    let c = run_within(waly().args(["compact", "--archive", &archive]), 120);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    db.psql("UPDATE tr SET email = 'ann@third.example' WHERE id = 1");
    db.psql("INSERT INTO tr VALUES (2, 'bob@example.com')");
    db.psql("TRUNCATE tr");
    settle(&db, run);
    for scan in [false, true] {
        let mut args = vec!["tr", "1", "--json"];
        if scan {
            args.push("--scan");
        }
        let versions = json_lines(&history(&archive, &args));
        let ops: Vec<&str> = versions.iter().filter_map(|v| v["op"].as_str()).collect();
        assert_eq!(
            ops,
            ["snapshot", "update", "update", "truncate"],
            "scan {scan}: {versions:#?}"
        );
        assert_eq!(versions[1]["changed"], serde_json::json!(["email"]));
        assert_eq!(versions[1]["new"]["email"], "ann@new.example");
        assert_eq!(versions[2]["new"]["email"], "ann@third.example");
        let later = json_lines(&history(&archive, &["tr", "2", "--json"]));
        let ops: Vec<&str> = later.iter().filter_map(|v| v["op"].as_str()).collect();
        assert_eq!(ops, ["insert", "truncate"], "{later:#?}");
    }
    let _ = std::fs::remove_dir_all(&archive);
}

/// The guarantee: history ends where restore does after a DDL whose effect
/// on existing rows the stream does not carry (a retype with `USING`, a
/// partition detached or attached). `waly run` snapshots the table again;
/// history shows, at that snapshot, a version with what the DDL did to the
/// row (`after_ddl`), through the index and by a full scan alike, also for
/// a row that came to the key by an update before it.
#[test]
fn history_shows_what_a_ddl_did_to_the_row_from_the_snapshot_after_it() {
    let db = TestDb::new();
    db.psql(crate::schemas::DDL_TABLES);
    let archive = archive_dir(&db);
    crate::schemas::init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE c SET v = 'before' WHERE id <= 5; UPDATE p SET v = 'before' WHERE id <= 5");
    db.psql("UPDATE c SET id = 105 WHERE id = 4");
    crate::archive::wait_confirmed(&db, 120);
    let _out = crate::schemas::ddls_the_stream_misses(&db);
    db.psql("UPDATE c SET v = 'after' WHERE id IN (5, 105); UPDATE p SET v = 'after' WHERE id = 100");
    settle(&db, run);
    let ops = |vs: &[serde_json::Value]| -> Vec<(String, bool)> {
        vs.iter()
            .map(|v| (v["op"].as_str().unwrap_or_default().to_string(), v["after_ddl"] == true))
            .collect()
    };
    let o = |op: &str, ddl: bool| (op.to_string(), ddl);
    for scan in [false, true] {
        let get = |table: &str, key: &str| {
            let mut args = vec![table, key, "--json"];
            if scan {
                args.push("--scan");
            }
            json_lines(&history(&archive, &args))
        };
        // Changed before and after the retype.
        let five = get("c", "5");
        assert_eq!(
            ops(&five),
            [
                o("snapshot", false),
                o("update", false),
                o("snapshot", true),
                o("update", false)
            ],
            "scan {scan}: {five:#?}"
        );
        assert_eq!(five[2]["changed"], serde_json::json!(["score"]), "scan {scan}");
        assert_eq!(five[2]["new"]["score"], "5007");
        assert_eq!(five[3]["new"]["score"], "5007");
        assert_eq!(five[3]["new"]["v"], "after");
        // Moved to its key before the retype (its history starts there).
        let moved = get("c", "105");
        assert_eq!(
            ops(&moved),
            [o("update", false), o("snapshot", true), o("update", false)],
            "scan {scan}: {moved:#?}"
        );
        assert_eq!(moved[0]["key_change"]["to"], "id=105", "scan {scan}");
        assert_eq!(moved[1]["new"]["score"], "4007", "scan {scan}");
        assert_eq!(moved[2]["new"]["score"], "4007", "scan {scan}");
        // Changed by the retype alone.
        let twelve = get("c", "12");
        assert_eq!(ops(&twelve), [o("snapshot", false), o("snapshot", true)], "scan {scan}");
        assert_eq!(twelve[1]["new"]["score"], "12007");
        // In the partition detached: gone from the table.
        let detached = get("p", "id=3,at=2026-01-07");
        assert_eq!(
            ops(&detached),
            [o("snapshot", false), o("update", false), o("snapshot", true)],
            "scan {scan}: {detached:#?}"
        );
        assert_eq!(detached[2]["new"], serde_json::Value::Null);
        // In the partition attached: in the table from that snapshot on.
        let attached = get("p", "id=100,at=2026-03-02");
        assert_eq!(
            ops(&attached),
            [o("snapshot", true), o("update", false)],
            "scan {scan}: {attached:#?}"
        );
        assert_eq!(attached[0]["new"]["v"], "march");
        assert_eq!(attached[1]["new"]["v"], "after");
        // A row in a partition kept: no version from the snapshot.
        let kept = get("p", "id=20,at=2026-02-10");
        assert_eq!(ops(&kept), [o("snapshot", false)], "scan {scan}: {kept:#?}");
        // Out of the publication for a while: what changed meanwhile comes
        // with the snapshot taken when it was back.
        let out = get("o", "2");
        assert_eq!(
            ops(&out),
            [o("snapshot", false), o("snapshot", true)],
            "scan {scan}: {out:#?}"
        );
        assert_eq!(out[1]["new"]["v"], "while out", "scan {scan}");
        assert_eq!(out[1]["changed"], serde_json::json!(["v"]), "scan {scan}");
        let deleted = get("o", "4");
        assert_eq!(
            ops(&deleted),
            [o("snapshot", false), o("snapshot", true)],
            "scan {scan}"
        );
        assert_eq!(deleted[1]["new"], serde_json::Value::Null, "scan {scan}");
        let inserted = get("o", "50");
        assert_eq!(ops(&inserted), [o("snapshot", true)], "scan {scan}: {inserted:#?}");
        let untouched = get("o", "9");
        assert_eq!(ops(&untouched), [o("snapshot", false)], "scan {scan}: {untouched:#?}");
        // Dropped and created again: the new table's row from its snapshot,
        // its columns taken for the old ones of the same name.
        let again = get("k", "1");
        assert_eq!(
            ops(&again),
            [o("snapshot", false), o("snapshot", true)],
            "scan {scan}: {again:#?}"
        );
        assert_eq!(again[1]["new"]["v"], "again", "scan {scan}");
        assert_eq!(again[1]["changed"], serde_json::json!(["v"]), "scan {scan}");
        let gone = get("k", "3");
        assert_eq!(
            ops(&gone),
            [o("snapshot", false), o("snapshot", true)],
            "scan {scan}: {gone:#?}"
        );
        assert_eq!(gone[1]["new"], serde_json::Value::Null, "scan {scan}");
    }
    // The text form says what the snapshot is.
    let text = String::from_utf8_lossy(&history(&archive, &["c", "12"]).stdout).to_string();
    assert!(
        text.contains("score: '12' → '12007'") && text.contains("a new snapshot"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

/// The index runs a writer leaves when the count of segments is `n`: one
/// per non-zero decimal digit of `n`, largest first (docs/FORMAT.md,
/// "Index runs and levels").
fn runs_of(n: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut start, mut p) = (0, 1u64);
    while p * 10 <= n {
        p *= 10;
    }
    while p >= 1 {
        let d = (n / p) % 10;
        if d > 0 {
            out.push((start, start + d * p - 1));
            start += d * p;
        }
        p /= 10;
    }
    out
}

/// A writer stopped right after a burst of segments (its last one written
/// as it stops) leaves its index merged as the levels say: the merges its
/// last segments queued are done before it exits, not cut off half way.
#[test]
fn a_stopped_writer_leaves_its_index_runs_merged_one_per_digit_of_its_segment_count() {
    assert_eq!(runs_of(27), [(0, 19), (20, 26)]);
    assert_eq!(runs_of(1), [(0, 0)]);
    assert_eq!(runs_of(110), [(0, 99), (100, 109)]);
    let db = TestDb::new();
    db.psql("CREATE TABLE burst (id int PRIMARY KEY, v text); CREATE PUBLICATION waly FOR TABLE burst;");
    let archive = archive_dir(&db);
    let run = crate::archive::spawn_run_as(&db, &db.url(), &archive, &["--segment-size", "4KiB"]);
    wait_streaming(&db, &run);
    // One segment per transaction (each holds more than 4 KiB); no wait
    // before the stop, so the last ones are written as the writer stops.
    let sql: String = (1..=37)
        .map(|i| format!("INSERT INTO burst VALUES ({i}, repeat(md5('{i}'), 150));\n"))
        .collect();
    db.psql(&sql);
    let (s, e) = run.terminate(60);
    assert!(s.success(), "{e}");
    assert!(!e.contains("could not merge"), "{e}");
    let segments = crate::archive::files_under(&archive, "generations/00000001/segments");
    let n = segments.len() as u64;
    assert!(n >= 10, "a burst of segments: {segments:?}");
    let mut runs: Vec<(u64, u64)> = crate::archive::files_under(&archive, "index/00000001/segments")
        .iter()
        .filter_map(|f| {
            let (a, b) = f.strip_suffix(".idx")?.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    runs.sort();
    assert_eq!(runs, runs_of(n), "{n} segments");
    let _ = std::fs::remove_dir_all(&archive);
}
