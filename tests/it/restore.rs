//! `waly restore` and `waly show` against a real PostgreSQL: the restored
//! state is compared with the source as it was, by checksum.

use crate::archive::{archive_dir, settle, spawn_run, wait_streaming};
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

pub(crate) fn ok(out: &Output) -> String {
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
            // Rows untouched since keep the default without being written.
            6 => "ALTER TABLE t ADD COLUMN extra text DEFAULT 'd,\"q\"';\n".to_string(),
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
        let time = db.now_utc();
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
    let before = db.now_utc();
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
fn undo_sql_puts_back_rows_whose_key_is_generated_always_as_identity() {
    // The usual key of a new schema: PostgreSQL refuses a value for it in a
    // plain INSERT, and the undo SQL gives the value the row had.
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE ord (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text, n int,
                           seq int GENERATED BY DEFAULT AS IDENTITY);
         INSERT INTO ord (item, n) SELECT 'item ' || g, g FROM generate_series(1, 20) g;
         CREATE PUBLICATION waly FOR TABLE ord;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    std::thread::sleep(std::time::Duration::from_millis(30));
    let before = db.now_utc();
    let want = checksum(&db, "ord");
    std::thread::sleep(std::time::Duration::from_millis(30));
    db.psql("DELETE FROM ord WHERE id IN (4, 5); UPDATE ord SET n = 0, item = 'x' WHERE id = 9");
    settle(&db, run);
    let sql = ok(&restore(
        &archive,
        &db,
        &[
            "ord", "--at", &before, "--key", "4", "--key", "5", "--key", "9", "--upsert", "--apply",
        ],
    ));
    assert!(sql.contains("OVERRIDING SYSTEM VALUE"), "{sql}");
    assert_eq!(checksum(&db, "ord"), want);
    // The sequence goes on past the rows put back.
    db.psql("INSERT INTO ord (item, n) VALUES ('after', 1)");
    assert_eq!(db.psql("SELECT id FROM ord WHERE item = 'after'"), "21");
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn bad_restore_input_is_refused_clearly_and_changes_nothing() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t VALUES (1, 'a');
         CREATE TABLE k (a int);
         ALTER TABLE k REPLICA IDENTITY FULL;
         CREATE PUBLICATION waly FOR TABLE t, k;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO t VALUES (2, 'b'); INSERT INTO k VALUES (1)");
    settle(&db, run);
    let now = db.now_utc();
    let says = |out: &Output, args: &[&str], says: &[&str]| {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} succeeded");
        for s in says {
            assert!(err.contains(s), "{args:?}: {err:?} does not say {s:?}");
        }
        // Bad input is named as such, never as the connection's settings.
        assert!(!err.contains("connection settings"), "{args:?}: {err:?}");
    };
    let fails = |args: &[&str], expect: &[&str]| says(&restore(&archive, &db, args), args, expect);
    fails(&["\"t", "--at", &now], &["unterminated quote"]);
    let history = ["history", "k", "1", "--archive", &archive];
    says(
        &run_within(waly().args(history), 60),
        &history,
        &["public.k has no primary key", "no identity to follow"],
    );
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
        &["could not connect", "127.0.0.1:1", "connection refused"],
    );
    assert_eq!(db.psql("SELECT count(*) FROM t"), "2");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_class WHERE relname LIKE 't\\_at\\_%'"),
        "0",
        "nothing was created"
    );
    // With --replace: an existing table is dropped and made again; the live
    // table keeps its definition (and indexes) and gets its rows back.
    ok(&restore(
        &archive,
        &db,
        &["t", "--at", &now, "--into", "taken", "--replace"],
    ));
    assert_eq!(
        db.psql("SELECT string_agg(id || v, ',' ORDER BY id) FROM taken"),
        "1a,2b"
    );
    db.psql("CREATE INDEX t_v ON t (v); INSERT INTO t VALUES (3, 'c'); UPDATE t SET v = 'z' WHERE id = 1;");
    let out = restore(&archive, &db, &["t", "--at", &now, "--into", "t", "--replace"]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("replacing every row of the live table"),
        "it says what it does"
    );
    assert_eq!(db.psql("SELECT string_agg(id || v, ',' ORDER BY id) FROM t"), "1a,2b");
    assert_eq!(db.psql("SELECT count(*) FROM pg_indexes WHERE indexname = 't_v'"), "1");
    // And the dry run plans without reading or writing.
    let plan = ok(&restore(&archive, &db, &["t", "--at", &now, "--dry-run"]));
    assert!(
        plan.contains("generation: 00000001") && plan.contains("segments:"),
        "{plan}"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

/// Every type the issue names, with NULLs, edge values and non-ASCII text,
/// through snapshot, inserts, updates (one leaving a 1 MB TOASTed value
/// unchanged) and deletes. The restored table must equal the source: the
/// same rows by their text form (json, xml and point have no equality
/// operator, so rows are compared as `row::text`), EXCEPT both ways empty.
#[test]
fn restore_is_exact_to_the_value_for_every_type() {
    every_type_restores_exactly(&TestDb::new());
}

/// The guarantee: values restore exactly whatever the server's settings
/// for their text (`DateStyle` with day first, `IntervalStyle`
/// `sql_standard`, `extra_float_digits` 0, which rounds floats, bytea as
/// escapes, another time zone): waly reads every value, from the stream,
/// the snapshot's COPY and the catalog (defaults, partition bounds, the
/// value of an added column), in one exact form, so a date key of a
/// snapshot row is the stream's and a float keeps every digit.
#[test]
fn values_restore_exactly_whatever_the_servers_settings_for_their_text() {
    let cluster: &'static crate::harness::Cluster = Box::leak(Box::new(crate::harness::Cluster::start(&[
        "datestyle=SQL, DMY",
        "intervalstyle=sql_standard",
        "extra_float_digits=0",
        "bytea_output=escape",
        "timezone=Asia/Kolkata",
    ])));
    every_type_restores_exactly(&TestDb::on(cluster));
    // Dates as keys and in partition bounds, and columns added with a
    // default, the DDL captured by the trigger (run in the application's
    // session, under its settings).
    let db = TestDb::on(cluster);
    db.psql(
        "CREATE TABLE dk (d date PRIMARY KEY, f float8, i interval);
         INSERT INTO dk VALUES ('2026-02-01', 0.1::float8 + 0.2::float8, '1 year -2 mons'),
                               ('2026-03-04', 1e-310, '-1 day +02:00');
         CREATE TABLE pp (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE pp_1 PARTITION OF pp FOR VALUES FROM ('2026-01-02') TO ('2026-02-03');
         INSERT INTO pp VALUES (1, '2026-01-05');",
    );
    let archive = archive_dir(&db);
    crate::schemas::init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql(
        "UPDATE dk SET f = 2.0000000000000004 WHERE d = '2026-02-01';
         ALTER TABLE dk ADD COLUMN since date DEFAULT '2026-01-02', ADD COLUMN dur interval DEFAULT '1 day -1 second';
         INSERT INTO dk (d, f) VALUES ('2026-05-06', 0.30000000000000004);
         INSERT INTO pp VALUES (2, '2026-02-02');",
    );
    settle(&db, run);
    let now = db.now_utc();
    for t in ["dk", "pp"] {
        ok(&restore(
            &archive,
            &db,
            &[t, "--at", &now, "--into", &format!("{t}_back")],
        ));
        let diff = |a: &str, b: &str| {
            db.psql(&format!(
                "SET extra_float_digits = 3; SELECT count(*) FROM (SELECT t::text FROM {a} t EXCEPT ALL SELECT t::text FROM {b} t) d"
            ))
        };
        assert_eq!(
            (diff(t, &format!("{t}_back")), diff(&format!("{t}_back"), t)),
            ("0".to_string(), "0".to_string()),
            "{t}"
        );
    }
    // The partition's bound, read from the catalog, names the same days.
    assert_eq!(
        db.psql("SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'pp_back'::regclass"),
        db.psql("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'pp_1'")
    );
    // The snapshot's row and the stream's update are one row's history.
    let h = ok(&run_within(
        waly().args(["history", "dk", "2026-02-01", "--archive", &archive]),
        120,
    ));
    assert!(
        h.contains("snapshot") && h.contains("f: '0.30000000000000004' → '2.0000000000000004'"),
        "{h}"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

/// The guarantee: `money` values restore exactly whatever the
/// `lc_monetary` of the server they came from and of the one they go into.
/// `money` prints and reads by the session's `lc_monetary` (`1.234,56 €`
/// under `de_DE`), so a new archive holds them as `C` prints them, and
/// every session waly opens, and every SQL file it writes, reads them so.
/// An archive made before that holds the source's own text: its sessions
/// keep the server's, and it restores into its source as it always did.
#[test]
fn money_restores_exactly_whatever_the_servers_lc_monetary() {
    let locales = crate::harness::german_locale();
    let cluster: &'static crate::harness::Cluster = Box::leak(Box::new(crate::harness::Cluster::start_env(
        &["lc_monetary=de_DE.UTF-8"],
        &[("LOCPATH", &locales)],
    )));
    let table = "CREATE TABLE m (id int PRIMARY KEY, price money, prices money[]);
                 INSERT INTO m VALUES (1, 1234.56, ARRAY[1.5, -2]::numeric[]::money[]), (2, -5, NULL);";
    let changes = "INSERT INTO m VALUES (3, 98765.43, ARRAY[0.01]::numeric[]::money[]); UPDATE m SET price = price + 1::money WHERE id = 1";
    let numbers = |db: &TestDb, t: &str| {
        db.psql(&format!(
            "SELECT string_agg(id || ':' || price::numeric || ':' || coalesce(prices::numeric[]::text, '-'), ' ' ORDER BY id) FROM {t}"
        ))
    };
    let want = "1:1235.56:{1.50,-2.00} 2:-5.00:- 3:98765.43:{0.01}";
    let db = TestDb::on(cluster);
    db.psql(table);
    assert_eq!(
        db.psql("SELECT price::text FROM m WHERE id = 1"),
        "1.234,56 €",
        "the server prints German money"
    );
    // A column added with a default: the rows before it take its value
    // (the DDL trigger prints it) without a change in the stream.
    let added = "ALTER TABLE m ADD COLUMN fee money DEFAULT 2.5";
    let archive = archive_dir(&db);
    crate::schemas::init(&db, &archive);
    let id: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{archive}/waly.json")).expect("waly.json"))
            .expect("json");
    assert_eq!(id["lc_monetary"], "C", "{id}");
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql(changes);
    db.psql(added);
    settle(&db, run);
    assert_eq!(numbers(&db, "m"), want);
    let fees = |db: &TestDb, t: &str| {
        db.psql(&format!(
            "SELECT string_agg(fee::numeric::text, ' ' ORDER BY id) FROM {t}"
        ))
    };
    assert_eq!(fees(&db, "m"), "2.50 2.50 2.50");
    let now = db.now_utc();
    let csv = ok(&restore(
        &archive,
        &db,
        &["m", "--at", &now, "--output", "-", "--format", "csv"],
    ));
    assert!(csv.contains(r#""1","$1,235.56","{$1.50,-$2.00}""#), "{csv}");
    // Into a database whose sessions print money as C does, and back into the German one.
    let other = TestDb::on(cluster);
    other.psql(&format!("ALTER DATABASE {} SET lc_monetary = 'C'", other.name));
    ok(&run_within(
        waly()
            .args([
                "restore",
                "--archive",
                &archive,
                "--source",
                &db.url(),
                "--target",
                &other.url(),
            ])
            .args(["m", "--at", &now, "--into", "m_back"]),
        300,
    ));
    assert_eq!(
        (numbers(&other, "m_back"), fees(&other, "m_back")),
        (want.to_string(), fees(&db, "m"))
    );
    ok(&restore(&archive, &db, &["m", "--at", &now, "--into", "m_back"]));
    assert_eq!(
        (numbers(&db, "m_back"), fees(&db, "m_back")),
        (want.to_string(), fees(&db, "m"))
    );
    // A file of SQL, run by psql in a German session.
    let file = format!("{archive}-m.sql");
    ok(&restore(
        &archive,
        &db,
        &[
            "m", "--at", &now, "--output", &file, "--format", "sql", "--into", "m_file",
        ],
    ));
    db.psql(&std::fs::read_to_string(&file).expect("the SQL file"));
    assert_eq!(
        (numbers(&db, "m_file"), fees(&db, "m_file")),
        (want.to_string(), fees(&db, "m"))
    );
    crate::schemas::verify_against_source(&db, &archive, "m");

    // An archive made before money was pinned (no `lc_monetary` in waly.json).
    let old = TestDb::on(cluster);
    old.psql(table);
    let old_archive = archive_dir(&old);
    crate::schemas::init(&old, &old_archive);
    let path = format!("{old_archive}/waly.json");
    let mut id: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("waly.json")).expect("json");
    id.as_object_mut()
        .expect("an object")
        .remove("lc_monetary")
        .expect("lc_monetary");
    std::fs::write(&path, id.to_string()).expect("waly.json");
    let run = spawn_run(&old, &old_archive);
    wait_streaming(&old, &run);
    old.psql(changes);
    settle(&old, run);
    let now = old.now_utc();
    let csv = ok(&restore(
        &old_archive,
        &old,
        &["m", "--at", &now, "--output", "-", "--format", "csv"],
    ));
    assert!(csv.contains(r#""1","1.235,56 €""#), "{csv}");
    ok(&restore(&old_archive, &old, &["m", "--at", &now, "--into", "m_back"]));
    assert_eq!(numbers(&old, "m_back"), want);
    crate::schemas::verify_against_source(&old, &old_archive, "m");
    for a in [&archive, &old_archive] {
        let _ = std::fs::remove_dir_all(a);
    }
    let _ = std::fs::remove_file(&file);
    // The server loaded its locale at start; no session of it is left to read it.
    let _ = std::fs::remove_dir_all(&locales);
}

/// `every`, a column of each type with edge values, restores exactly
/// (its snapshot's rows and the stream's).
fn every_type_restores_exactly(db: &TestDb) {
    db.psql(
        r#"CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy, "quoted"');
        CREATE DOMAIN posint AS int CHECK (VALUE > 0);
        CREATE TYPE pair AS (a int, b text);
        CREATE TABLE every (
            id int PRIMARY KEY,
            b bool, i2 int2, i4 int4, i8 int8,
            n numeric, n2 numeric(30,10), f4 float4, f8 float8, m money,
            t text, vc varchar(10), ch char(5), by bytea,
            d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
            u uuid, js json, jb jsonb, x xml,
            ip inet, cn cidr, mac macaddr,
            bt bit(4), vb varbit,
            ia int[], ta text[], a2 int[][],
            e mood, dm posint, cp pair, r4 int4range, rts tstzrange,
            tv tsvector, pt point, big text
        );
        CREATE PUBLICATION waly FOR TABLE every;"#,
    );
    let row = |id: i64, edge: bool| -> String {
        if !edge {
            return format!(
                r#"({id}, true, 1, 2, 3, 1.5, 2.25, 1.25, 2.5, 12.34, 'plain {id}', 'v', 'c', '\x00ff'::bytea,
                '2026-11-26', '12:34:56', '12:34:56+02', '2026-11-26 12:34:56', '2026-11-26 12:34:56+00', '1 day 2 hours',
                '00000000-0000-0000-0000-00000000000{}', '{{"b": 1,  "a": [1, 2]}}', '{{"b": 1, "a": 2}}', '<a>x</a>',
                '10.0.0.1', '10.0.0.0/8', '08:00:2b:01:02:03', B'1010', B'101',
                '{{1,2,3}}', '{{"a","b"}}', '{{{{1,2}},{{3,4}}}}', 'ok', 5, ROW(1, 'x'), '[1,5)', '[2026-01-01 00:00+00,2026-02-01 00:00+00)',
                'a fat cat', '(1,2)', 'small')"#,
                id % 10
            );
        }
        format!(
            r#"({id}, false, -32768, -2147483648, -9223372036854775808,
            'NaN', 12345678901234567890.0123456789, 'NaN', '-Infinity', -92233720368547758.08,
            E'ünïcødé 日本語 🎉 tab\there\nnewline \\ backslash '' quote', 'ç10charsxx', 'ab', E'\\x'::bytea,
            'infinity', '24:00:00', '00:00:00-12', '-infinity', 'infinity', '-178000000 years',
            'ffffffff-ffff-ffff-ffff-ffffffffffff', '  {{"z": null,"a" : "ü"}}  ', '{{"k": [null, "x\"y"]}}', '<r a="1">ü &amp; &lt;</r>',
            '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', B'0000', B'',
            '{{NULL,-1,2147483647}}', '{{NULL,"with,comma","with \"quote\"","NULL",""}}', '{{{{NULL,2}},{{3,NULL}}}}',
            'happy, "quoted"', 2147483647, ROW(NULL, 'a,b "c"'), 'empty', '(,2026-01-01 00:00+00]',
            'ünï:1A fat:2B,3 cat', '(-1.5e300,NaN)', repeat('big ü ', 180000))"#
        )
    };
    let nulls = |id: i64| format!("({id}{})", ", NULL".repeat(39));
    // In the snapshot: one of each kind.
    db.psql(&format!(
        "INSERT INTO every VALUES {}, {}, {};",
        row(1, false),
        row(2, true),
        nulls(3)
    ));
    let archive = archive_dir(db);
    let run = spawn_run(db, &archive);
    wait_streaming(db, &run);
    // Then through the stream: inserts, updates (one leaving `big` as it
    // is, unchanged TOAST), deletes.
    db.psql(&format!(
        "INSERT INTO every VALUES {}, {}, {}, {};",
        row(11, false),
        row(12, true),
        nulls(13),
        row(14, true)
    ));
    db.psql("UPDATE every SET t = 'changed, big untouched', f8 = 'Infinity' WHERE id IN (2, 12)");
    db.psql("UPDATE every SET big = NULL, ia = '{}' WHERE id = 14");
    db.psql("UPDATE every SET b = NULL, tstz = '1999-12-31 23:59:59.999999+14' WHERE id = 3");
    db.psql("DELETE FROM every WHERE id IN (1, 13)");
    db.psql(&format!("INSERT INTO every VALUES {}", row(13, true)));
    settle(db, run);
    let now = db.now_utc();
    ok(&restore(&archive, db, &["every", "--at", &now, "--into", "every_back"]));
    let diff = |a: &str, b: &str| {
        db.psql(&format!(
            "SET extra_float_digits = 3; SELECT count(*) FROM (SELECT t::text FROM {a} t EXCEPT ALL SELECT t::text FROM {b} t) d"
        ))
    };
    assert_eq!(
        (diff("every", "every_back"), diff("every_back", "every")),
        ("0".to_string(), "0".to_string())
    );
    assert_eq!(db.psql("SELECT count(*) FROM every_back"), "6");
    assert_eq!(
        db.psql("SELECT length(big) FROM every_back WHERE id = 12"),
        db.psql("SELECT length(big) FROM every WHERE id = 12"),
        "the unchanged TOASTed value is carried forward"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn restore_and_show_from_an_s3_archive() {
    let Some(bucket) = crate::harness::s3_bucket("restore") else {
        return;
    };
    let archive = format!("s3://{bucket}/waly");
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE users (id int, region text, name text, PRIMARY KEY (region, id));
         INSERT INTO users SELECT g, 'eu', 'user ' || g FROM generate_series(1, 300) g;
         CREATE PUBLICATION waly FOR TABLE users;",
    );
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE users SET name = 'renamed' WHERE id <= 10; DELETE FROM users WHERE id > 290;");
    std::thread::sleep(std::time::Duration::from_millis(30));
    let then = db.now_utc();
    let want = checksum(&db, "users");
    std::thread::sleep(std::time::Duration::from_millis(30));
    db.psql("DELETE FROM users; INSERT INTO users VALUES (1, 'us', 'later');");
    settle(&db, run);
    ok(&restore(
        &archive,
        &db,
        &["users", "--at", &then, "--into", "users_then"],
    ));
    assert_eq!(checksum(&db, "users_then"), want);
    let show = |args: &[&str]| {
        ok(&run_within(
            waly()
                .args(["show", "users", "--archive", &archive, "--at", &then])
                .args(args),
            120,
        ))
    };
    // Positional values follow the primary key's order, (region, id).
    let json = show(&["--key", "region=eu,id=5", "--key", "eu,7", "--format", "json"]);
    let rows: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"id": "5", "region": "eu", "name": "renamed"}),
            serde_json::json!({"id": "7", "region": "eu", "name": "renamed"})
        ],
        "named and positional (column order) keys"
    );
    let table = show(&["--limit", "3"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(header, ["id", "region", "name"], "{table}");
    assert!(table.trim_end().ends_with("(3 rows)"), "{table}");
    let csv = show(&["--format", "csv"]);
    assert_eq!(csv.lines().count(), 1 + 290, "a header and the 290 rows then");

    // Retention on S3: a snapshot from the archive, then everything older goes.
    let compact = ok(&run_within(waly().args(["compact", "--archive", &archive]), 120));
    assert!(compact.contains("compacted 1 table(s), 1 rows"), "{compact}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    ok(&run_within(
        waly().args(["prune", "--archive", &archive, "--keep", "0.1s"]),
        120,
    ));
    let now = chrono::Utc::now().to_rfc3339();
    let latest = ok(&run_within(
        waly().args(["show", "users", "--archive", &archive, "--at", &now, "--format", "csv"]),
        120,
    ));
    assert_eq!(latest, "\"id\",\"region\",\"name\"\n\"1\",\"us\",\"later\"\n");
    let gone = run_within(
        waly().args(["show", "users", "--archive", &archive, "--at", &then]),
        120,
    );
    assert!(!gone.status.success(), "a pruned point is refused");
    let verify = run_within(waly().args(["verify", "--archive", &archive]), 120);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[test]
fn a_restore_into_the_captured_database_is_not_captured_back() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, v text);
         INSERT INTO orders SELECT g, 'v' || g FROM generate_series(1, 50) g;
         CREATE TABLE parts (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
         INSERT INTO parts SELECT g, date '2026-01-01' + g % 28 FROM generate_series(1, 20) g;",
    );
    let archive = archive_dir(&db);
    let init = run_within(
        waly().args([
            "init",
            "--source",
            &db.url(),
            "--archive",
            &archive,
            "--slot",
            &crate::archive::slot(&db),
        ]),
        60,
    );
    ok(&init);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE orders SET v = 'changed' WHERE id = 1");
    crate::archive::wait_confirmed(&db, 120);
    // Restored while the sidecar captures every table of the database.
    ok(&restore(
        &archive,
        &db,
        &["orders", "--at", "now", "--into", "orders_copy"],
    ));
    ok(&restore(
        &archive,
        &db,
        &["parts", "--at", "now", "--into", "parts_copy"],
    ));
    assert_eq!(checksum(&db, "orders_copy"), checksum(&db, "orders"));
    assert_eq!(checksum(&db, "parts_copy"), checksum(&db, "parts"));
    assert_eq!(
        db.psql("SELECT string_agg(relpersistence::text, '' ORDER BY relname) FROM pg_class WHERE relname IN ('orders_copy', 'parts_copy', 'parts_copy_parts_1')"),
        "ppp",
        "ordinary logged tables once restored"
    );
    // Not at the sidecar's next start either (it snapshots every published
    // table it has none of): a restore's table is marked as one.
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE orders SET v = 'later' WHERE id = 2");
    settle(&db, run);
    let tables = ok(&run_within(
        waly().args(["tables", "--archive", &archive, "--json"]),
        60,
    ));
    assert!(
        !tables.contains("orders_copy") && !tables.contains("parts_copy"),
        "{tables}"
    );
    let log = ok(&run_within(waly().args(["log", "--archive", &archive, "--json"]), 60));
    assert_eq!(log.lines().count(), 2, "the two updates, nothing restored: {log}");
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn a_key_change_that_leaves_a_large_value_unchanged_restores_that_value() {
    // PostgreSQL sends neither the large value (unchanged TOAST) nor, under
    // REPLICA IDENTITY DEFAULT, the old row: the value is the one the row
    // had under its old key. Chains of key changes, a key that sorts before
    // the old one, several rows in one statement, and `--key` alone.
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE k (id int PRIMARY KEY, v int, big text);
         ALTER TABLE k ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO k SELECT g, g, repeat(chr(96 + g), 5000) || g FROM generate_series(1, 6) g;
         CREATE PUBLICATION waly FOR TABLE k;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE k SET big = repeat('n', 6000) WHERE id = 5"); // a changed value, sent
    db.psql("UPDATE k SET id = 10 WHERE id = 1");
    db.psql("UPDATE k SET id = 20, v = 0 WHERE id = 10");
    db.psql("UPDATE k SET id = id + 100 WHERE id IN (2, 3, 5)");
    db.psql("UPDATE k SET id = 0 WHERE id = 4");
    std::thread::sleep(std::time::Duration::from_millis(30));
    let point = db.now_utc();
    let then = checksum(&db, "k");
    std::thread::sleep(std::time::Duration::from_millis(30));
    db.psql("DELETE FROM k WHERE id = 20; UPDATE k SET id = 1 WHERE id = 0");
    let now = checksum(&db, "k");
    settle(&db, run);

    ok(&restore(&archive, &db, &["k", "--at", &point, "--into", "k_then"]));
    assert_eq!(checksum(&db, "k_then"), then, "at the point");
    ok(&restore(&archive, &db, &["k", "--at", "now", "--into", "k_now"]));
    assert_eq!(checksum(&db, "k_now"), now, "at the end");
    // One key: the rows under its old keys are read too, only it comes out.
    let shown = ok(&run_within(
        waly().args([
            "show",
            "k",
            "--archive",
            &archive,
            "--at",
            &point,
            "--key",
            "20",
            "--format",
            "csv",
        ]),
        120,
    ));
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "a header and the row: {shown}");
    let want = format!("\"20\",\"0\",\"{}1\"", "a".repeat(5000));
    assert!(
        lines[1] == want,
        "the row under key 20: {:.80}... ({} chars)",
        lines[1],
        lines[1].len()
    );
    // compact keeps the values; the restores after it agree.
    ok(&run_within(waly().args(["compact", "--archive", &archive]), 300));
    ok(&restore(&archive, &db, &["k", "--at", "now", "--into", "k_compacted"]));
    assert_eq!(checksum(&db, "k_compacted"), now, "after compact");
    let _ = std::fs::remove_dir_all(&archive);
}
