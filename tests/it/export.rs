//! `waly export`: the archive as a Parquet change log, read back with DuckDB
//! and compared with `waly log --json`, `waly restore --at` and the source.

use crate::archive::{archive_dir, log_json, settle, spawn_run, wait_streaming};
use crate::harness::{run_within, waly, TestDb};
use crate::restore::ok;
use crate::schemas::init;
use std::collections::BTreeMap;
use std::process::Output;

/// Runs `sql` (statements separated by `;`, the last one a query) in DuckDB
/// and returns the last query's rows, each value as DuckDB's VARCHAR cast.
pub(crate) fn duckdb(sql: &str) -> Vec<Vec<Option<String>>> {
    duckdb_result(sql).unwrap_or_else(|e| panic!("duckdb failed: {e}\n{sql}"))
}

/// [`duckdb`], or the error DuckDB gave.
pub(crate) fn duckdb_result(sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let python = std::env::var("WALY_TEST_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let script = r#"
import duckdb, json, sys
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
stmts = [s for s in sys.stdin.read().split(";\n") if s.strip()]
for s in stmts[:-1]:
    con.execute(s)
rows = con.execute(stmts[-1]).fetchall()
print(json.dumps([[None if v is None else str(v) for v in r] for r in rows]))
"#;
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} (scripts/test.sh installs DuckDB into .venv): {e}"));
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), sql.as_bytes()).expect("write the SQL");
    let out = child.wait_with_output().expect("duckdb");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("rows as JSON"))
}

fn export(archive: &str, to: &str, extra: &[&str]) -> Output {
    run_within(
        waly().args(["export", "--archive", archive, "--to", to]).args(extra),
        300,
    )
}

fn failed(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn files(dir: &str) -> String {
    format!("read_parquet('{dir}/*/*/*.parquet', hive_partitioning = true, union_by_name = true, filename = true)")
}

/// Changes per (table, op) in `waly log --json`.
fn log_counts(archive: &str) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for l in log_json(archive, &[]) {
        if let (Some(t), Some(op)) = (l["table"].as_str(), l["op"].as_str()) {
            *m.entry((t.to_string(), op.to_string())).or_default() += 1;
        }
    }
    m
}

/// Changes per (table, op) in the export (snapshot rows apart).
fn export_counts(dir: &str) -> BTreeMap<(String, String), usize> {
    duckdb(&format!(
        "SELECT regexp_extract(filename, '([^/]+)/date=', 1) AS t, _op, count(*) FROM {} WHERE _op NOT IN ('snapshot', 'empty_snapshot') GROUP BY ALL",
        files(dir)
    ))
    .into_iter()
    .map(|r| {
        (
            (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()),
            r[2].as_deref().unwrap_or("0").parse().unwrap_or(0),
        )
    })
    .collect()
}

/// Rows of `waly restore T --at AT --shape latest` as JSON objects, sorted by id.
fn restored(db: &TestDb, archive: &str, table: &str, at: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let out = ok(&run_within(
        waly()
            .args([
                "restore",
                "--archive",
                archive,
                "--source",
                &db.url(),
                table,
                "--at",
                at,
            ])
            .args(["--shape", "latest", "--output", "-", "--format", "jsonl"]),
        120,
    ));
    let mut rows: Vec<serde_json::Map<String, serde_json::Value>> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    rows.sort_by_key(|r| r["id"].as_str().and_then(|s| s.parse::<i64>().ok()));
    rows
}

#[test]
fn the_export_holds_every_change_typed_and_its_as_of_query_equals_restore() {
    let db = TestDb::new();
    db.psql(
        "SET TimeZone = 'Europe/Paris';
         CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE typed (id int PRIMARY KEY, i2 smallint, i8 bigint, dec numeric(12,3), big numeric,
             r real, d double precision, b boolean, t text, vc varchar(20), day date, ts timestamp,
             tstz timestamptz, u uuid, j json, jb jsonb, by bytea, ints int[], texts text[],
             decs numeric(10,2)[], m mood);
         CREATE TABLE acct (id int PRIMARY KEY, email text, n int);",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql(
        "INSERT INTO typed VALUES (1, -7, 9007199254740993, 1234.5, 123456789012345678901234567890.5,
             1.5, -2.25, true, 'héllo', 'v', '2026-01-02', '2026-01-02 03:04:05.123456',
             '2026-01-02 03:04:05+01', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{\"a\": 1}', '{\"b\": [2]}',
             '\\xdeadbeef', '{1,2,NULL}', '{\"a b\",c}', '{1.50,NULL}', 'happy');
         INSERT INTO typed (id) VALUES (2);
         INSERT INTO acct SELECT g, 'u' || g || '@example.com', g FROM generate_series(1, 50) g;",
    );
    let t1 = db.now_utc();
    // A key change, a delete, and a transaction whose intent comes last.
    db.psql(
        "UPDATE acct SET id = 1000 WHERE id = 7;
         DELETE FROM acct WHERE id = 8;
         BEGIN; UPDATE acct SET n = n + 100 WHERE id <= 5;
         SELECT pg_logical_emit_message(true, 'waly', 'bonus for the first five'); COMMIT;",
    );
    let t2 = db.now_utc();
    db.psql(
        "ALTER TABLE acct ADD COLUMN plan text DEFAULT 'free';
         UPDATE acct SET plan = 'pro' WHERE id = 2;
         ALTER TABLE acct RENAME COLUMN email TO email_address;
         UPDATE acct SET email_address = 'new@example.com' WHERE id = 3;",
    );
    let t3 = db.now_utc();
    settle(&db, run);
    let dest = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&dest);
    ok(&export(&archive, &dest, &[]));

    // The same changes as the log: per table and operation, each once.
    let want = log_counts(&archive);
    assert_eq!(export_counts(&dest), want);
    let dup = duckdb(&format!(
        "SELECT count(*) - count(DISTINCT (_commit_lsn, _seq)) FROM {} WHERE _op NOT IN ('snapshot', 'empty_snapshot')",
        files(&dest)
    ));
    assert_eq!(dup, vec![vec![Some("0".to_string())]], "no change twice");

    // Every type as its Parquet type, and its value.
    let types = duckdb(&format!(
        "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{dest}/public.typed/*/*.parquet'))"
    ));
    let types: BTreeMap<String, String> = types
        .into_iter()
        .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
        .collect();
    for (col, ty) in [
        ("id", "INTEGER"),
        ("i2", "SMALLINT"),
        ("i8", "BIGINT"),
        ("dec", "DECIMAL(12,3)"),
        ("big", "VARCHAR"),
        ("r", "FLOAT"),
        ("d", "DOUBLE"),
        ("b", "BOOLEAN"),
        ("t", "VARCHAR"),
        ("vc", "VARCHAR"),
        ("day", "DATE"),
        ("ts", "TIMESTAMP"),
        ("tstz", "TIMESTAMP WITH TIME ZONE"),
        ("u", "UUID"),
        ("j", "VARCHAR"),
        ("jb", "VARCHAR"),
        ("by", "BLOB"),
        ("ints", "INTEGER[]"),
        ("texts", "VARCHAR[]"),
        ("decs", "DECIMAL(10,2)[]"),
        ("m", "VARCHAR"),
        ("_commit_lsn", "BIGINT"),
        ("_commit_time", "TIMESTAMP WITH TIME ZONE"),
    ] {
        assert_eq!(types.get(col).map(String::as_str), Some(ty), "{col}: {types:?}");
    }
    let row = duckdb(&format!(
        "SELECT i2::VARCHAR, i8::VARCHAR, dec::VARCHAR, big, r::VARCHAR, d::VARCHAR, b::VARCHAR, t, vc,
                day::VARCHAR, ts::VARCHAR, tstz::VARCHAR, u::VARCHAR, j, jb, hex(\"by\"), ints::VARCHAR,
                texts::VARCHAR, decs::VARCHAR, m
           FROM read_parquet('{dest}/public.typed/*/*.parquet') WHERE id = 1"
    ));
    let want: Vec<Option<String>> = [
        "-7",
        "9007199254740993",
        "1234.500",
        "123456789012345678901234567890.5",
        "1.5",
        "-2.25",
        "true",
        "héllo",
        "v",
        "2026-01-02",
        "2026-01-02 03:04:05.123456",
        "2026-01-02 02:04:05+00",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "{\"a\": 1}",
        "{\"b\": [2]}",
        "DEADBEEF",
        "[1, 2, NULL]",
        "[a b, c]",
        "[1.50, NULL]",
        "happy",
    ]
    .iter()
    .map(|s| Some(s.to_string()))
    .collect();
    assert_eq!(row, vec![want]);
    let nulls = duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{dest}/public.typed/*/*.parquet') WHERE id = 2 AND i2 IS NULL AND ints IS NULL AND u IS NULL"
    ));
    assert_eq!(nulls, vec![vec![Some("1".to_string())]]);

    // Commit identity, intents, the old key, schema versions.
    let bonus = duckdb(&format!(
        "SELECT string_agg(id::VARCHAR, ',' ORDER BY id), min(_intent), max(_intent) FROM {} WHERE _intent IS NOT NULL",
        files(&dest)
    ));
    assert_eq!(
        bonus,
        vec![vec![
            Some("1,2,3,4,5".to_string()),
            Some("bonus for the first five".to_string()),
            Some("bonus for the first five".to_string())
        ]]
    );
    let moved = duckdb(&format!(
        "SELECT id, _old_key.id FROM read_parquet('{dest}/public.acct/*/*.parquet', union_by_name = true) WHERE _old_key IS NOT NULL"
    ));
    assert_eq!(moved, vec![vec![Some("1000".to_string()), Some("7".to_string())]]);

    // The as-of query (the view file the export wrote) equals restore.
    for at in [&t1, &t2, &t3] {
        let rows = duckdb(&format!(
            "{};\nSELECT id::VARCHAR, email_address, n::VARCHAR, plan FROM \"public.acct_as_of\"(TIMESTAMPTZ '{at}') ORDER BY id",
            std::fs::read_to_string(format!("{dest}/_waly/as_of_duckdb.sql"))
                .expect("the view file")
                .trim_end()
                .trim_end_matches(';')
        ));
        let want: Vec<Vec<Option<String>>> = restored(&db, &archive, "acct", at)
            .iter()
            .map(|r| {
                ["id", "email_address", "n", "plan"]
                    .iter()
                    .map(|c| r.get(*c).and_then(|v| v.as_str()).map(str::to_string))
                    .collect()
            })
            .collect();
        // A column added later has the value ADD COLUMN gave existing rows,
        // as restore --shape latest gives it.
        assert_eq!(rows, want, "as of {at}");
    }

    // Incremental: more changes, the export continues, nothing twice.
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE acct SET n = -1 WHERE id = 9; INSERT INTO typed (id) VALUES (3); TRUNCATE typed;");
    settle(&db, run);
    let before: Vec<String> = crate::archive::files_under(&dest, "public.acct");
    ok(&export(&archive, &dest, &[]));
    assert_eq!(export_counts(&dest), log_counts(&archive));
    let after: Vec<String> = crate::archive::files_under(&dest, "public.acct");
    assert!(
        before.iter().all(|f| after.contains(f)),
        "files are written once: {before:?} {after:?}"
    );
    assert!(after.len() > before.len());
    // A file an export left before writing its cursor (killed) is removed
    // and its changes written again, once.
    let leftover = after.iter().max().expect("a file").clone();
    let stray = format!("{dest}/public.acct/date=2099-01-01");
    std::fs::create_dir_all(&stray).expect("mkdir");
    std::fs::copy(
        format!("{dest}/public.acct/{leftover}"),
        format!("{stray}/part-7FFFFFFFFFFFFFFF-7FFFFFFFFFFFFFFF.parquet"),
    )
    .expect("copy");
    let out = export(&archive, &dest, &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("removed 1 files of an export that did not finish"),
        "{}",
        ok(&out)
    );
    assert_eq!(export_counts(&dest), log_counts(&archive));

    // Bad input: a clear error and exit 1.
    let e = failed(&export(
        &archive,
        &dest,
        &["--since", "2026-02-01T00:00:00Z", "--until", "2026-01-01T00:00:00Z"],
    ));
    assert!(e.contains("--since is after --until"), "{e}");
    let e = failed(&export(&archive, &dest, &["--tables", "nosuch"]));
    assert!(e.contains("public.nosuch is not in the archive"), "{e}");
    let other = TestDb::new();
    other.psql("CREATE TABLE o (id int PRIMARY KEY)");
    let other_archive = archive_dir(&other);
    init(&other, &other_archive);
    let e = failed(&export(&other_archive, &dest, &[]));
    assert!(e.contains("holds the export of another archive"), "{e}");
    let locked = format!("{archive}-locked");
    std::fs::create_dir_all(&locked).expect("mkdir");
    if crate::harness::freeze(&locked, true) {
        let e = failed(&export(&archive, &locked, &[]));
        crate::harness::freeze(&locked, false);
        assert!(e.contains("cannot use the export destination"), "{e}");
    } else {
        eprintln!("SKIPPED the unwritable destination: this filesystem cannot make a directory unwritable");
    }
    for d in [&dest, &archive, &other_archive, &locked] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A database with `rows` rows in `big`, in transactions of 50,000, and
/// some updates and deletes, archived.
fn big_archive(rows: usize) -> (TestDb, String) {
    let db = TestDb::new();
    db.psql("CREATE TABLE big (id int PRIMARY KEY, v text, n int)");
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    for start in (0..rows).step_by(50_000) {
        // Each load's intent comes last: the export looks it up for
        // transactions too large to hold.
        db.psql(&format!(
            "BEGIN; INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text), g FROM generate_series({}, {}) g;
             SELECT pg_logical_emit_message(true, 'waly', 'load {start}'); COMMIT;",
            start + 1,
            (start + 50_000).min(rows)
        ));
    }
    db.psql("UPDATE big SET n = -n WHERE id % 10 = 0; DELETE FROM big WHERE id % 97 = 0;");
    settle(&db, run);
    (db, archive)
}

/// Changes per (commit_lsn, seq) in the export: (rows, distinct identities).
fn identities(dest: &str) -> (usize, usize) {
    let r = duckdb(&format!(
        "SELECT count(*), count(DISTINCT (_commit_lsn, _seq)) FROM {} WHERE _op NOT IN ('snapshot', 'empty_snapshot')",
        files(dest)
    ));
    let n = |i: usize| r[0][i].as_deref().unwrap_or("0").parse().unwrap_or(0);
    (n(0), n(1))
}

#[test]
fn an_export_killed_midway_and_run_again_has_every_change_once() {
    let (_db, archive) = big_archive(400_000);
    let changes: usize = log_counts(&archive).values().sum();
    let dest = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&dest);
    // Small files, so the first is uploaded long before the export ends.
    let mut child = waly()
        .args(["export", "--archive", &archive, "--to", &dest, "--file-mib", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the export");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !crate::archive::files_under(&dest, "public.big")
        .iter()
        .any(|f| f.ends_with(".parquet"))
    {
        assert!(std::time::Instant::now() < deadline, "no file within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the export was still running when killed"
    );
    let _ = child.kill(); // SIGKILL: no cursor written
    let _ = child.wait();
    let (rows, distinct) = identities(&dest);
    assert_eq!(rows, distinct, "no change twice, even from a killed export");
    assert!(rows < changes, "the killed export was partial: {rows} of {changes}");
    let out = export(&archive, &dest, &["--file-mib", "1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("files of an export that did not finish"),
        "{}",
        ok(&out)
    );
    assert_eq!(
        identities(&dest),
        (changes, changes),
        "every change once after the rerun"
    );
    assert_eq!(export_counts(&dest), log_counts(&archive));
    let loads = duckdb(&format!(
        "SELECT count(*), count(DISTINCT _intent) FROM {} WHERE _op = 'insert' AND _intent = 'load ' || ((id - 1) // 50000 * 50000)",
        files(&dest)
    ));
    assert_eq!(
        loads,
        vec![vec![Some("400000".to_string()), Some("8".to_string())]],
        "each inserted row has its load's intent"
    );
    // The intents were found through the index (the frames it names);
    // without one, by reading the transactions' segments: the same.
    let looked_up = |out: &Output| -> String {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| l.starts_with("looked up the intent"))
            .unwrap_or_default()
            .to_string()
    };
    let fresh = format!("{archive}-export-indexed");
    let _ = std::fs::remove_dir_all(&fresh);
    let said = looked_up(&export(&archive, &fresh, &[]));
    assert!(
        said.contains(" of 8 large transactions through the index and of 0 "),
        "{said}"
    );
    std::fs::remove_dir_all(std::path::Path::new(&archive).join("index")).expect("rm index");
    let again = format!("{archive}-export-scanned");
    let _ = std::fs::remove_dir_all(&again);
    let said = looked_up(&export(&archive, &again, &[]));
    assert!(
        said.contains(" of 0 large transactions through the index and of 8 "),
        "{said}"
    );
    let intents = |d: &str| {
        duckdb(&format!(
            "SELECT _commit_lsn, _seq, _intent FROM {} WHERE _intent IS NOT NULL ORDER BY 1, 2",
            files(d)
        ))
    };
    let scanned = intents(&again);
    assert_eq!(scanned.len(), 400_000, "each load's rows carry its intent");
    assert_eq!(scanned, intents(&dest));
    for d in [&dest, &archive, &again, &fresh] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn an_export_to_s3_writes_the_same_files_as_to_a_directory() {
    let Some(bucket) = crate::harness::s3_bucket("export") else {
        panic!("WALY_TEST_S3_ENDPOINT is not set: run the tests with make test");
    };
    let (_db, archive) = big_archive(60_000);
    let local = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&local);
    ok(&export(&archive, &local, &[]));
    let s3 = format!("s3://{bucket}/exports/app");
    ok(&export(&archive, &s3, &[]));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = waly::archive::Store::open(&s3).expect("open");
    let objects = rt.block_on(store.list("")).expect("list");
    let parts: Vec<&String> = objects
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.ends_with(".parquet"))
        .collect();
    assert!(!parts.is_empty(), "{objects:?}");
    let local_parts: Vec<String> = crate::archive::files_under(&local, "public.big")
        .into_iter()
        .map(|f| format!("public.big/{f}"))
        .collect();
    assert_eq!(parts.iter().map(|s| s.as_str()).collect::<Vec<_>>(), local_parts);
    for p in &parts {
        let there = rt.block_on(store.get(p)).expect("get");
        let here = std::fs::read(format!("{local}/{p}")).expect("read");
        assert!(there[..] == here[..], "{p} differs between S3 and the directory");
    }
    // Again: nothing new, nothing rewritten, and the cursor says so.
    let out = export(&archive, &s3, &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exported 0 changes and 0 snapshot rows in 0 files"),
        "{}",
        ok(&out)
    );
    for d in [&local, &archive] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn waly_run_keeps_an_export_current_without_holding_back_the_slot() {
    let db = TestDb::new();
    db.psql("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 100) g;");
    let archive = archive_dir(&db);
    init(&db, &archive);
    let dest = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&dest);
    let run = crate::archive::spawn_run_as(
        &db,
        &db.url(),
        &archive,
        &["--export-to", &dest, "--export-interval", "1s"],
    );
    wait_streaming(&db, &run);
    for round in 0..3 {
        db.psql(&format!(
            "UPDATE t SET v = v + 1 WHERE id % 3 = {round}; DELETE FROM t WHERE id = {}",
            50 + round
        ));
        // The slot is confirmed as the archive grows, whatever the export does.
        crate::archive::wait_confirmed(&db, 60);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let want = log_counts(&archive);
        let parts = crate::archive::files_under(&dest, "public.t");
        if parts.iter().any(|f| f.ends_with(".parquet")) && export_counts(&dest) == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the export did not catch up: {:?} vs {want:?}; {}",
            export_counts(&dest),
            run.stderr_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let snapshot = duckdb(&format!("SELECT count(*) FROM {} WHERE _op = 'snapshot'", files(&dest)));
    assert_eq!(snapshot, vec![vec![Some("100".to_string())]]);
    settle(&db, run);
    for d in [&dest, &archive] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_value_parquet_cannot_hold_stops_the_export_and_names_it() {
    // numeric(5,2) holds NaN; Parquet's DECIMAL does not. The export stops
    // (never a null or a rounded value in its place) and says where.
    let db = TestDb::new();
    db.psql("CREATE TABLE nums (id int PRIMARY KEY, x numeric(5,2))");
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO nums VALUES (1, 1.5), (2, 'NaN')");
    settle(&db, run);
    let dest = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&dest);
    for _ in 0..2 {
        let e = failed(&export(&archive, &dest, &[]));
        assert!(e.contains("public.nums.x") && e.contains("NaN"), "{e}");
        let parts: Vec<String> = crate::archive::files_under(&dest, "")
            .into_iter()
            .filter(|f| f.ends_with(".parquet"))
            .collect();
        assert!(parts.is_empty(), "no file of the failed export: {parts:?}");
    }
    for d in [&dest, &archive] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The table as the export's as-of query gives it now, ordered by id.
pub(crate) fn as_of_now(dest: &str, table: &str) -> Vec<Vec<Option<String>>> {
    duckdb(&format!(
        "{};\nSELECT id::VARCHAR, v FROM \"{table}_as_of\"(now()::TIMESTAMPTZ) ORDER BY id",
        std::fs::read_to_string(format!("{dest}/_waly/as_of_duckdb.sql")).expect("the views")
    ))
}

/// The guarantee: an export's as-of query holds what the archive holds
/// even where the archive skips changes: an export continued after a prune
/// deleted changes it had not read yet (its destination was unreachable
/// for longer than the retention) answers from the snapshot that starts
/// the archive since, so rows deleted meanwhile are gone from it.
#[test]
fn an_export_continued_past_a_prune_of_changes_it_had_not_read_answers_from_the_snapshot_after() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE g (id int PRIMARY KEY, v text); INSERT INTO g SELECT i, 'v' || i FROM generate_series(1, 20) i;
         CREATE TABLE e (id int PRIMARY KEY, v text); INSERT INTO e SELECT i, 'e' || i FROM generate_series(1, 4) i;
         CREATE PUBLICATION waly FOR TABLE g, e;",
    );
    let archive = archive_dir(&db);
    let dest = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&dest);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE g SET v = 'first' WHERE id <= 10");
    crate::archive::wait_confirmed(&db, 120);
    ok(&export(&archive, &dest, &[]));
    let table_state = |db: &TestDb, table: &str| -> Vec<Vec<Option<String>>> {
        db.psql(&format!("SELECT id || '|' || v FROM {table} ORDER BY id"))
            .lines()
            .map(|l| l.split('|').map(|s| Some(s.to_string())).collect())
            .collect()
    };
    let state = |db: &TestDb| table_state(db, "g");
    assert_eq!(as_of_now(&dest, "public.g"), state(&db));
    assert_eq!(as_of_now(&dest, "public.e").len(), 4);
    // What the export does not read before the prune: deletes among it.
    db.psql("DELETE FROM g WHERE id <= 5");
    // A table every row of which goes in the gap: empty at the snapshot
    // after it, it has no snapshot rows to cut at.
    db.psql("DELETE FROM e");
    db.psql("UPDATE g SET v = 'second' WHERE id = 6; INSERT INTO g VALUES (21, 'new')");
    crate::archive::wait_confirmed(&db, 120);
    ok(&run_within(waly().args(["compact", "--archive", &archive]), 120));
    // The window (the last second) starts after the compacted snapshot.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    db.psql("UPDATE g SET v = 'third' WHERE id = 7");
    crate::archive::wait_confirmed(&db, 120);
    let pruned = ok(&run_within(
        waly().args(["prune", "--archive", &archive, "--keep", "1s"]),
        120,
    ));
    assert!(pruned.contains("/segments/"), "the prune deletes segments: {pruned}");
    settle(&db, run);
    ok(&export(&archive, &dest, &[]));
    assert_eq!(as_of_now(&dest, "public.g"), state(&db), "continued past the prune");
    assert_eq!(table_state(&db, "e"), Vec::<Vec<Option<String>>>::new());
    assert_eq!(
        as_of_now(&dest, "public.e"),
        table_state(&db, "e"),
        "a table empty at the snapshot, continued past the prune"
    );
    // A new export of the pruned archive says the same.
    let fresh = format!("{archive}-export-fresh");
    let _ = std::fs::remove_dir_all(&fresh);
    ok(&export(&archive, &fresh, &[]));
    assert_eq!(as_of_now(&fresh, "public.g"), state(&db), "a new export");
    assert_eq!(
        as_of_now(&fresh, "public.e"),
        table_state(&db, "e"),
        "a new export's empty table"
    );
    for d in [&dest, &fresh, &archive] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The guarantee: the as-of query gives a table as `waly restore` does
/// after a DDL whose effect on existing rows the change stream does not
/// carry (a retype with `USING`, a partition detached or attached):
/// `waly run` snapshots the table again, and the export writes that
/// snapshot's rows, from which the query answers.
#[test]
fn the_as_of_query_answers_from_the_snapshot_a_ddl_made_waly_take() {
    let db = TestDb::new();
    db.psql(crate::schemas::DDL_TABLES);
    let archive = archive_dir(&db);
    let dest = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&dest);
    crate::schemas::init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE c SET v = 'before' WHERE id <= 5; UPDATE p SET v = 'before' WHERE id <= 5");
    crate::archive::wait_confirmed(&db, 120);
    // The first run reads up to here; the second reads the new snapshots.
    ok(&export(&archive, &dest, &[]));
    let out = crate::schemas::ddls_the_stream_misses(&db);
    db.psql("UPDATE c SET v = 'after' WHERE id IN (5, 6); UPDATE p SET v = 'after' WHERE id IN (20, 100)");
    crate::archive::wait_confirmed(&db, 120);
    settle(&db, run);
    let want = |sql: &str| -> Vec<Vec<Option<String>>> {
        db.psql(sql)
            .lines()
            .map(|l| l.split('|').map(|s| Some(s.to_string())).collect())
            .collect()
    };
    let want_c = want("SELECT id, v, score FROM c ORDER BY id::text COLLATE \"C\"");
    let want_p = want("SELECT id, at, v FROM p ORDER BY id::text COLLATE \"C\"");
    let want_o = want("SELECT id, v FROM o ORDER BY id::text COLLATE \"C\"");
    let want_k = want("SELECT id, v FROM k ORDER BY id::text COLLATE \"C\"");
    assert_eq!(want_c.len(), 20);
    assert_eq!(want_p.len(), 7, "p_1's 15 rows left, p_3's 2 came");
    assert_eq!(want_o.len(), 10, "one row deleted and one inserted while out");
    assert_eq!(want_k.len(), 2, "the rows of the table created again");
    let as_of = |dest: &str, table: &str, cols: &str| {
        duckdb(&format!(
            "{};\nSELECT {cols} FROM \"{table}_as_of\"(now()::TIMESTAMPTZ) ORDER BY 1",
            std::fs::read_to_string(format!("{dest}/_waly/as_of_duckdb.sql")).expect("the views")
        ))
    };
    let c_cols = "id::VARCHAR, v, score::VARCHAR";
    let p_cols = "id::VARCHAR, strftime(\"at\", '%Y-%m-%d'), v";
    // Continued across the DDLs, and a fresh export of the whole archive.
    ok(&export(&archive, &dest, &[]));
    let fresh = format!("{archive}-export-fresh");
    let _ = std::fs::remove_dir_all(&fresh);
    ok(&export(&archive, &fresh, &[]));
    for d in [&dest, &fresh] {
        assert_eq!(as_of(d, "public.c", c_cols), want_c, "{d}: c after a retype with USING");
        assert_eq!(
            as_of(d, "public.p", p_cols),
            want_p,
            "{d}: p after a detach and an attach"
        );
        let o_cols = "id::VARCHAR, v";
        assert_eq!(as_of(d, "public.o", o_cols), want_o, "{d}: o back in the publication");
        let k = duckdb_result(&format!(
            "{};\nSELECT {o_cols} FROM \"public.k_as_of\"(now()::TIMESTAMPTZ) ORDER BY 1",
            std::fs::read_to_string(format!("{d}/_waly/as_of_duckdb.sql")).expect("the views")
        ));
        if k.as_ref() != Ok(&want_k) {
            // What the export and the archive hold of k, to tell which is wrong.
            let rows = duckdb(&format!(
                "SELECT _op, _commit_lsn, _seq, _commit_time, _schema_version, id::VARCHAR
                   FROM read_parquet('{d}/public.k/*/*.parquet', union_by_name = true, hive_partitioning = true)
                  ORDER BY _commit_lsn, _seq"
            ));
            let schema = run_within(waly().args(["schema", "k", "--archive", &archive]), 30);
            panic!(
                "{d}: k created again: {k:?}, want {want_k:?}\nexported: {rows:?}\nschema:\n{}",
                String::from_utf8_lossy(&schema.stdout)
            );
        }
        // While o was out, the archive does not know its rows: the query
        // fails, as a restore there is refused.
        let gap = duckdb_result(&format!(
            "{};\nSELECT id FROM \"public.o_as_of\"(TIMESTAMPTZ '{out}')",
            std::fs::read_to_string(format!("{d}/_waly/as_of_duckdb.sql")).expect("the views")
        ));
        assert!(
            gap.as_ref()
                .is_err_and(|e| e.contains("public.o: the archive does not know the rows")),
            "{d}: o while out: {gap:?}"
        );
    }
    let spark = spark_as_of_now(
        &fresh,
        &[
            ("public.c", "CAST(id AS STRING), v, CAST(score AS STRING)"),
            ("public.p", "CAST(id AS STRING), CAST(`at` AS STRING), v"),
            ("public.o", "CAST(id AS STRING), v"),
            ("public.k", "CAST(id AS STRING), v"),
        ],
    );
    if let Some(got) = spark_as_of(&fresh, &out, &[("public.o", "CAST(id AS STRING)")]) {
        assert!(
            got[0].len() == 1
                && got[0][0][0].as_deref() == Some("error")
                && got[0][0][1]
                    .as_ref()
                    .is_some_and(|e| e.contains("public.o: the archive does not know the rows")),
            "Spark, o while out: {got:?}"
        );
    }
    match spark {
        Some(got) => assert_eq!(got, vec![want_c, want_p, want_o, want_k], "Spark"),
        None => eprintln!("WALY_TEST_SPARK_PYTHON is not set: Spark's as-of query is not run"),
    }
    for d in [&dest, &fresh, &archive] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Runs the export's `_waly/as_of_spark.sql` in Apache Spark (local mode,
/// one session) as of now: for each `(table, select)`, `select` of that
/// table's rows, each value as its string, sorted. `None` when
/// `WALY_TEST_SPARK_PYTHON` (a Python with pyspark; scripts/test.sh
/// installs it) is not set.
pub(crate) fn spark_as_of_now(dest: &str, queries: &[(&str, &str)]) -> Option<Vec<Vec<Vec<Option<String>>>>> {
    spark_as_of(dest, "2999-01-01 00:00:00", queries)
}

/// [`spark_as_of_now`] as of `at`; a query that fails gives one row,
/// `["error", its message]`.
pub(crate) fn spark_as_of(dest: &str, at: &str, queries: &[(&str, &str)]) -> Option<Vec<Vec<Vec<Option<String>>>>> {
    let python = std::env::var("WALY_TEST_SPARK_PYTHON").ok()?;
    let script = r#"
import json, sys
from pyspark.sql import SparkSession
dest, queries, at = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
spark = (SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
         .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.sql.session.timeZone", "UTC").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
text = open(dest + "/_waly/as_of_spark.sql").read()
stmts = [s for s in text.split(";\n") if s.strip()]
out = []
for table, select in queries:
    # Each table's view statement is followed by its query.
    i = next(i for i, s in enumerate(stmts) if ("-- " + table + "\n") in s)
    spark.sql(stmts[i])
    spark.sql(stmts[i + 1], args={"as_of": at}).createOrReplaceTempView("as_of")
    try:
        rows = spark.sql("SELECT " + select + " FROM as_of").collect()
    except Exception as e:
        out.append([["error", str(e)]])
        continue
    out.append(sorted([[None if v is None else str(v) for v in r] for r in rows], key=lambda r: [x or "" for x in r]))
print(json.dumps(out))
"#;
    let queries = serde_json::to_string(queries).expect("queries as JSON");
    let out = std::process::Command::new(&python)
        .args(["-c", script, dest, &queries, at])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "spark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    Some(serde_json::from_str(&last).expect("rows as JSON"))
}

/// The guarantee: the as-of query gives a table as `waly restore` does,
/// large values included. PostgreSQL leaves a large (TOASTed) value that
/// an update did not change out of the update; the query takes the row's
/// latest value that was sent, under whichever name its file used and
/// under whichever key the row had then (following updates that moved it),
/// and never fills a value that was set to null. DuckDB and Spark agree.
#[test]
fn the_as_of_query_gives_a_large_value_an_update_left_unchanged() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE big (id int PRIMARY KEY, n int, v text, b bytea);
         ALTER TABLE big ALTER COLUMN v SET STORAGE EXTERNAL, ALTER COLUMN b SET STORAGE EXTERNAL;
         INSERT INTO big SELECT i, 0, repeat('v' || i, 3000), decode(repeat(to_hex(i * 17), 4000), 'hex')
           FROM generate_series(1, 7) i;
         CREATE PUBLICATION waly FOR TABLE big;",
    );
    let archive = archive_dir(&db);
    let dest = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&dest);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql(
        "UPDATE big SET n = 1;
         UPDATE big SET v = repeat('new', 3000) WHERE id = 2;
         UPDATE big SET n = 2 WHERE id = 2;
         UPDATE big SET v = NULL WHERE id = 3;
         UPDATE big SET n = 3 WHERE id = 3;
         INSERT INTO big VALUES (8, 0, repeat('eight', 3000), decode(repeat('ff', 4000), 'hex'));
         UPDATE big SET n = 8 WHERE id = 8;
         DELETE FROM big WHERE id = 6;
         UPDATE big SET id = 6 WHERE id = 7;
         UPDATE big SET id = 105 WHERE id = 5;
         UPDATE big SET n = 5 WHERE id = 105;
         UPDATE big SET id = 205 WHERE id = 105;
         UPDATE big SET id = 104, v = repeat('four', 3000) WHERE id = 4;",
    );
    crate::archive::wait_confirmed(&db, 120);
    // A rename between files: later updates name the column by its new name.
    ok(&export(&archive, &dest, &[]));
    db.psql("ALTER TABLE big RENAME COLUMN v TO w");
    // Moves in the second run, of rows the first run moved too: a third
    // move, one back onto the row's first key, a row whose large value
    // was set to null, and two moves in one transaction.
    db.psql(
        "UPDATE big SET id = 305 WHERE id = 205;
         UPDATE big SET id = 4 WHERE id = 104;
         UPDATE big SET id = 103 WHERE id = 3;
         BEGIN; UPDATE big SET id = 401 WHERE id = 1; UPDATE big SET id = 1 WHERE id = 401; COMMIT;",
    );
    db.psql("UPDATE big SET n = n + 10 WHERE id IN (1, 8)");
    crate::archive::wait_confirmed(&db, 120);
    settle(&db, run);
    ok(&export(&archive, &dest, &[]));
    let unchanged = duckdb(&format!(
        "SELECT count(*) FROM {} WHERE len(_unchanged_toast) > 0",
        files(&dest)
    ));
    assert_ne!(
        unchanged,
        vec![vec![Some("0".to_string())]],
        "the updates left large values out"
    );
    // Rows moved to other keys leaving their large values alone: the
    // values were sent under the first key, and the query follows the
    // moves back to them (never to the values key 6 held before its
    // delete).
    let want: Vec<Vec<Option<String>>> = db
        .psql("SELECT id, n, coalesce(md5(w), 'null'), coalesce(length(b)::text, 'null') FROM big ORDER BY id::text COLLATE \"C\"")
        .lines()
        .map(|l| l.split('|').map(|s| Some(s.to_string())).collect())
        .collect();
    assert_eq!(want.len(), 7);
    let got = duckdb(&format!(
        "{};\nSELECT id::VARCHAR, n::VARCHAR, coalesce(md5(w), 'null'), coalesce(octet_length(b)::VARCHAR, 'null')
           FROM \"public.big_as_of\"(now()::TIMESTAMPTZ) ORDER BY 1",
        std::fs::read_to_string(format!("{dest}/_waly/as_of_duckdb.sql")).expect("the views")
    ));
    assert_eq!(got, want, "DuckDB");
    let spark = spark_as_of_now(
        &dest,
        &[(
            "public.big",
            "CAST(id AS STRING), CAST(n AS STRING), coalesce(md5(w), 'null'), coalesce(CAST(length(b) AS STRING), 'null')",
        )],
    );
    match spark.and_then(|mut r| r.pop()) {
        Some(rows) => assert_eq!(rows, want, "Spark"),
        None => eprintln!("WALY_TEST_SPARK_PYTHON is not set: Spark's as-of query is not run"),
    }
    for d in [&dest, &archive] {
        let _ = std::fs::remove_dir_all(d);
    }
}
