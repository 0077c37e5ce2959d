//! `waly restore` and `waly show` against a real PostgreSQL: the restored
//! state is compared with the source as it was, by checksum.

use crate::archive::{archive_dir, spawn_run, wait_streaming};
use crate::harness::{run_within, waly, TestDb};
use std::process::Output;

fn restore(archive: &str, db: &TestDb, args: &[&str]) -> Output {
    run_within(
        waly()
            .args(["restore", "--archive", archive, "--source", &db.url()])
            .args(args),
        300,
    )
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "waly failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn checksum(db: &TestDb, table: &str) -> String {
    db.psql(&format!(
        "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') FROM {table} t"
    ))
}

/// Waits until the slot has confirmed everything written so far (the
/// archive holds it), then stops `waly run` cleanly.
fn settle(db: &TestDb, run: crate::harness::Running) {
    let end = db.current_lsn();
    db.wait_for(
        &format!(
            "SELECT confirmed_flush_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = '{}'",
            crate::archive::slot(db)
        ),
        "t",
        120,
    );
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
}

#[test]
fn restore_reproduces_the_table_at_every_point_through_truncate_and_schema_changes() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);
         INSERT INTO t SELECT g, g, 'before ' || g FROM generate_series(1, 200) g;
         CREATE PUBLICATION waly FOR TABLE t;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    let mut points: Vec<(String, String, String)> = Vec::new(); // (time, checksum, columns)
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for burst in 0..12 {
        // Schema changes open a burst: the archive learns a table's new
        // shape with its next change (see docs/RESTORE.md).
        let mut sql = match burst {
            6 => "ALTER TABLE t ADD COLUMN extra text;\n".to_string(),
            8 => "ALTER TABLE t DROP COLUMN note;\n".to_string(),
            _ => String::new(),
        };
        let has_note = burst < 8;
        for _ in 0..40 {
            let id = 1 + rnd(400);
            match (rnd(4), has_note) {
                (0, true) => sql.push_str(&format!(
                    "INSERT INTO t (id, v, note) VALUES ({id}, {burst}, 'b{burst}') ON CONFLICT (id) DO NOTHING;\n"
                )),
                (0, false) => sql.push_str(&format!(
                    "INSERT INTO t (id, v) VALUES ({id}, {burst}) ON CONFLICT (id) DO NOTHING;\n"
                )),
                (1 | 2, true) => sql.push_str(&format!(
                    "UPDATE t SET v = v + 1, note = note || '+' WHERE id = {id};\n"
                )),
                (1 | 2, false) => sql.push_str(&format!("UPDATE t SET v = v + 1 WHERE id = {id};\n")),
                _ => sql.push_str(&format!("DELETE FROM t WHERE id = {id};\n")),
            }
        }
        match burst {
            4 => sql.push_str("TRUNCATE t;\n"),
            6 => sql.push_str("UPDATE t SET extra = 'x' || id WHERE id % 3 = 0;\n"),
            _ => {}
        }
        db.psql(&sql);
        std::thread::sleep(std::time::Duration::from_millis(30));
        let time = db.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
        let columns = db.psql(
            "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped",
        );
        points.push((time, checksum(&db, "t"), columns));
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    settle(&db, run);
    for (i, (time, want, columns)) in points.iter().enumerate() {
        let into = format!("t_point_{i}");
        let out = restore(&archive, &db, &["t", "--at", time, "--into", &into]);
        ok(&out);
        assert_eq!(&checksum(&db, &into), want, "point {i} at {time}");
        let got_columns = db.psql(&format!(
            "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = '{into}'::regclass AND attnum > 0"
        ));
        assert_eq!(&got_columns, columns, "point {i}: the columns then");
    }
    // The same through a file: CSV that COPY reads back.
    let (time, want, _) = &points[9];
    let csv = ok(&restore(
        &archive,
        &db,
        &["t", "--at", time, "--output", "-", "--format", "csv"],
    ));
    db.psql("CREATE TABLE t_csv (LIKE t_point_9)");
    let path = std::env::temp_dir().join(format!("waly-{}.csv", db.name));
    std::fs::write(&path, csv).expect("write csv");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    db.psql(&format!(
        "COPY t_csv FROM '{}' WITH (FORMAT csv, HEADER true)",
        path.display()
    ));
    assert_eq!(&checksum(&db, "t_csv"), want);
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn upsert_with_key_brings_back_a_deleted_row_and_reverts_an_updated_one() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE acct (id int PRIMARY KEY, owner text NOT NULL, balance numeric);
         INSERT INTO acct SELECT g, 'owner ' || g, g * 10 FROM generate_series(1, 50) g;
         CREATE PUBLICATION waly FOR TABLE acct;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE acct SET balance = balance + 1 WHERE id = 3");
    std::thread::sleep(std::time::Duration::from_millis(30));
    let before = db.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    let want = checksum(&db, "acct");
    std::thread::sleep(std::time::Duration::from_millis(30));
    db.psql(
        "DELETE FROM acct WHERE id = 7;
         UPDATE acct SET owner = 'mallory', balance = 0 WHERE id = 3;
         INSERT INTO acct VALUES (51, 'new', 1);",
    );
    settle(&db, run);
    // Printed, not applied: nothing changes.
    let sql = ok(&restore(
        &archive,
        &db,
        &[
            "acct", "--at", &before, "--key", "7", "--key", "id=3", "--key", "51", "--upsert",
        ],
    ));
    assert!(
        sql.contains("ON CONFLICT (\"id\") DO UPDATE") && sql.contains("DELETE FROM"),
        "{sql}"
    );
    assert_eq!(db.psql("SELECT count(*) FROM acct WHERE id = 7"), "0");
    // Applied: rows 3 and 7 as they were, 51 gone again, the rest untouched.
    db.psql("UPDATE acct SET balance = balance + 100 WHERE id = 20");
    ok(&restore(
        &archive,
        &db,
        &[
            "acct", "--at", &before, "--key", "7", "--key", "id=3", "--key", "51", "--upsert", "--apply",
        ],
    ));
    db.psql("UPDATE acct SET balance = balance - 100 WHERE id = 20");
    assert_eq!(checksum(&db, "acct"), want);
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn bad_restore_input_is_refused_clearly_and_changes_nothing() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t VALUES (1, 'a');
         CREATE PUBLICATION waly FOR TABLE t;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO t VALUES (2, 'b')");
    settle(&db, run);
    let now = db.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    let fails = |args: &[&str], says: &[&str]| {
        let out = restore(&archive, &db, args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} succeeded");
        for s in says {
            assert!(err.contains(s), "{args:?}: {err:?} does not say {s:?}");
        }
    };
    fails(&["nosuch", "--at", &now], &["nosuch", "not in the archive", "public.t"]);
    fails(
        &["t", "--at", "2001-01-01T00:00:00Z"],
        &["before the archive", "restorable", "generation 00000001"],
    );
    fails(&["t", "--at", "yesterday"], &["invalid time"]);
    fails(&["t", "--at", &now, "--key", "a=1"], &["no key column", "id"]);
    fails(&["t", "--at", &now, "--key", "1,2"], &["give 1 value"]);
    fails(&["t"], &["--at"]);
    db.psql("CREATE TABLE taken (x int); INSERT INTO taken VALUES (42);");
    fails(
        &["t", "--at", &now, "--into", "taken"],
        &["already exists", "--replace"],
    );
    assert_eq!(db.psql("SELECT x FROM taken"), "42");
    fails(
        &["t", "--at", &now, "--into", "t"],
        &["already exists", "--replace", "live table"],
    );
    fails(
        &[
            "t",
            "--at",
            &now,
            "--target",
            "postgres://nobody@127.0.0.1:1/nowhere?connect_timeout=2",
        ],
        &["could not connect", "127.0.0.1", "port=1"],
    );
    assert_eq!(db.psql("SELECT count(*) FROM t"), "2");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_class WHERE relname LIKE 't\\_at\\_%'"),
        "0",
        "nothing was created"
    );
    // And the dry run plans without reading or writing.
    let plan = ok(&restore(&archive, &db, &["t", "--at", &now, "--dry-run"]));
    assert!(
        plan.contains("generation: 00000001") && plan.contains("segments:"),
        "{plan}"
    );
    let _ = std::fs::remove_dir_all(&archive);
}
