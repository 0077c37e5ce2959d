//! Schemas over time against a real PostgreSQL: DDL captured by waly's
//! event trigger as it happens, columns followed by attnum, and every reader
//! exact across migrations (or refusing, named, where it cannot be).

use crate::archive::{archive_dir, settle, slot, spawn_run, wait_confirmed, wait_streaming};
use crate::harness::{run_within, waly, TestDb};
use crate::restore::ok;
use std::process::Output;

pub(crate) fn init(db: &TestDb, archive: &str) -> String {
    init_with(db, archive, &[])
}

/// `waly init` with more arguments.
fn init_with(db: &TestDb, archive: &str, more: &[&str]) -> String {
    ok(&run_within(
        waly()
            .args(["init", "--source", &db.url(), "--archive", archive, "--slot", &slot(db)])
            .args(more),
        60,
    ))
}

/// Tables for DDLs whose effect on existing rows the stream does not
/// carry, by [`ddls_the_stream_misses`]: `c` (retyped with `USING`), the
/// partitioned `p` (`p_1` detached, `p_3` and its two rows attached), `o`
/// (out of the publication for a while, changed meanwhile) and `k`
/// (dropped and created again, its first rows before it is published).
/// The publication names them, so that `o` can leave it.
pub(crate) const DDL_TABLES: &str = "
CREATE TABLE c (id int PRIMARY KEY, v text, score int);
INSERT INTO c SELECT i, 'v' || i, i FROM generate_series(1, 20) i;
CREATE TABLE p (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE p_1 PARTITION OF p FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE p_2 PARTITION OF p FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
INSERT INTO p SELECT i, date '2026-01-01' + i * 2, 'p' || i FROM generate_series(1, 20) i;
CREATE TABLE p_3 (id int, at date, v text, PRIMARY KEY (id, at));
INSERT INTO p_3 VALUES (100, '2026-03-02', 'march'), (101, '2026-03-09', 'march');
CREATE TABLE o (id int PRIMARY KEY, v text);
INSERT INTO o SELECT i, 'o' || i FROM generate_series(1, 10) i;
CREATE TABLE k (id int PRIMARY KEY, v text);
INSERT INTO k SELECT i, 'k' || i FROM generate_series(1, 5) i;
CREATE PUBLICATION waly FOR TABLE c, p, o, k WITH (publish_via_partition_root = true);
";

/// The DDLs on [`DDL_TABLES`] after which `waly run` snapshots the table
/// again, each waited for. Returns a time when `o` was out of the
/// publication.
pub(crate) fn ddls_the_stream_misses(db: &TestDb) -> String {
    db.psql("ALTER TABLE c ALTER COLUMN score TYPE bigint USING score * 1000 + 7");
    db.psql("ALTER TABLE p DETACH PARTITION p_1");
    db.psql("ALTER TABLE p ATTACH PARTITION p_3 FOR VALUES FROM ('2026-03-01') TO ('2026-04-01')");
    db.psql(OUT_OF_THE_PUBLICATION);
    wait_confirmed(db, 120);
    let out = db.now_utc();
    db.psql("ALTER PUBLICATION waly ADD TABLE o");
    db.psql(DROPPED_AND_CREATED_AGAIN);
    wait_confirmed(db, 120);
    out
}

/// `o` leaves the publication, and changes while out of it.
const OUT_OF_THE_PUBLICATION: &str = "
ALTER PUBLICATION waly DROP TABLE o;
UPDATE o SET v = 'while out' WHERE id <= 3;
DELETE FROM o WHERE id = 4;
INSERT INTO o VALUES (50, 'while out');
";

/// `k` is dropped, created again with rows, and published again.
const DROPPED_AND_CREATED_AGAIN: &str = "
DROP TABLE k;
CREATE TABLE k (id int PRIMARY KEY, v text);
INSERT INTO k VALUES (1, 'again'), (7, 'again');
ALTER PUBLICATION waly ADD TABLE k;
";

fn restore(db: &TestDb, archive: &str, args: &[&str]) -> Output {
    run_within(
        waly()
            .args(["restore", "--archive", archive, "--source", &db.url()])
            .args(args),
        300,
    )
}

/// A table's own rows, for a FROM clause: `ONLY table`, not the rows of
/// tables inheriting from it, unless it is partitioned (its rows are its
/// partitions').
pub(crate) fn own_rows(db: &TestDb, table: &str) -> String {
    match db.psql(&format!("SELECT relkind FROM pg_class WHERE oid = '{table}'::regclass")) == "p" {
        true => table.to_string(),
        false => format!("ONLY {table}"),
    }
}

/// Row count and an md5 over the table's own rows ([`own_rows`]) in key
/// order, and the column list.
pub(crate) fn state(db: &TestDb, table: &str) -> (String, String) {
    let sum = db.psql(&format!(
        "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') FROM {} t",
        own_rows(db, table)
    ));
    let cols = db.psql(&format!(
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ',' ORDER BY attnum)
           FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
    ));
    (sum, cols)
}

/// A point: its time, and the table's state then.
struct Point {
    label: &'static str,
    at: String,
    state: (String, String),
}

fn point(db: &TestDb, label: &'static str, table: &str) -> Point {
    std::thread::sleep(std::time::Duration::from_millis(20));
    let at = db.now_utc();
    let state = state(db, table);
    std::thread::sleep(std::time::Duration::from_millis(20));
    Point { label, at, state }
}

#[test]
fn a_rename_carries_values_and_every_migration_step_restores_exactly() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE customer (id int PRIMARY KEY, email text NOT NULL, name text, note text, score int);
         INSERT INTO customer SELECT g, 'c' || g || '@example.com', 'name ' || g, 'note ' || g, g FROM generate_series(1, 600) g;",
    );
    let archive = archive_dir(&db);
    let said = init(&db, &archive);
    assert!(said.contains("DDL capture"), "{said}");
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    let t = "customer";
    let mut points = vec![point(&db, "start", t)];
    db.psql("UPDATE customer SET email = 'early' || id || '@example.com' WHERE id % 50 = 0");
    points.push(point(&db, "before the rename", t));
    db.psql("ALTER TABLE customer RENAME COLUMN email TO email_address");
    // Between the ALTER and the table's next change: the new shape already.
    points.push(point(&db, "after the rename, no change since", t));
    db.psql("UPDATE customer SET email_address = 'new' || id || '@example.com' WHERE id % 7 = 0");
    points.push(point(&db, "after the rename", t));
    db.psql("ALTER TABLE customer ADD COLUMN plan text NOT NULL DEFAULT 'free'");
    points.push(point(&db, "after add column with a default", t));
    db.psql("UPDATE customer SET plan = 'pro', name = name || '!' WHERE id % 11 = 0");
    db.psql("ALTER TABLE customer DROP COLUMN note");
    points.push(point(&db, "after drop column", t));
    db.psql("ALTER TABLE customer ALTER COLUMN id TYPE bigint");
    points.push(point(&db, "after a widening retype (a rewrite)", t));
    db.psql("ALTER TABLE customer ALTER COLUMN plan SET DEFAULT 'trial'; INSERT INTO customer (id, email_address) VALUES (1001, 'x@y')");
    points.push(point(&db, "after set default", t));
    db.psql("ALTER TABLE customer ALTER COLUMN plan DROP DEFAULT");
    db.psql("ALTER TABLE customer DROP CONSTRAINT customer_pkey, ADD PRIMARY KEY (email_address)");
    points.push(point(&db, "after a new primary key", t));
    db.psql(
        "UPDATE customer SET name = 'renamed ' || id WHERE id % 13 = 0;
         DELETE FROM customer WHERE id % 17 = 0;
         UPDATE customer SET email_address = 'moved' || id || '@example.com' WHERE id % 19 = 0;",
    );
    points.push(point(&db, "changes under the new key", t));
    db.psql("ALTER TABLE customer REPLICA IDENTITY FULL; UPDATE customer SET score = score + 1 WHERE id % 5 = 0");
    points.push(point(&db, "after replica identity full", t));
    db.psql("CREATE ROLE schema_owner_test; ALTER TABLE customer OWNER TO schema_owner_test");
    points.push(point(&db, "after owner to", t));
    db.psql("UPDATE customer SET score = 0 WHERE id = 1");
    points.push(point(&db, "a change after owner to", t));
    // A conversion waly cannot reproduce: restores across it refuse, and
    // waly snapshots the table again so later points restore exactly.
    db.psql("ALTER TABLE customer ALTER COLUMN score TYPE numeric USING score + random()");
    wait_confirmed(&db, 120);
    db.psql("UPDATE customer SET name = 'after the snapshot' WHERE id % 23 = 0");
    let after_resnapshot = point(&db, "after the volatile retype, past the new snapshot", t);
    settle(&db, run);
    let schema = ok(&run_within(
        waly().args(["schema", "customer", "--archive", &archive, "--json"]),
        30,
    ));
    let volatile_at = schema
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|v| v["ddl"]["command"].as_str().is_some_and(|c| c.contains("random()")))
        .and_then(|v| v["commit_time"].as_str().map(str::to_string))
        .expect("the volatile retype is a version");

    for (i, p) in points.iter().enumerate() {
        let into = format!("customer_p{i}");
        ok(&restore(&db, &archive, &[t, "--at", &p.at, "--into", &into]));
        let got = state(&db, &into);
        assert_eq!(got.0, p.state.0, "point {i} ({}): rows", p.label);
        assert_eq!(got.1, p.state.1, "point {i} ({}): columns", p.label);
        let nulls = db.psql(&format!(
            "SELECT count(*) FROM {into} WHERE {} IS NULL",
            if i < 2 { "email" } else { "email_address" }
        ));
        assert_eq!(nulls, "0", "point {i} ({}): no value lost to the rename", p.label);
    }

    // The unreproducible conversion: refused, naming the DDL and where.
    let out = restore(&db, &archive, &[t, "--at", &volatile_at, "--into", "customer_volatile"]);
    assert!(!out.status.success(), "a restore across a volatile USING must refuse");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ALTER TABLE customer ALTER COLUMN score TYPE numeric USING score + random()"),
        "{err}"
    );
    assert!(err.contains("score"), "{err}");
    let missing = db.psql("SELECT to_regclass('customer_volatile') IS NULL");
    assert_eq!(missing, "t", "no table is left behind by a refused restore");
    ok(&restore(
        &db,
        &archive,
        &[t, "--at", &after_resnapshot.at, "--into", "customer_later"],
    ));
    assert_eq!(
        state(&db, "customer_later"),
        after_resnapshot.state,
        "exact again after the new snapshot"
    );
    // verify --against-source compares the latest state, through the new snapshot.
    let out = run_within(
        waly().args([
            "verify",
            "--archive",
            &archive,
            "--against-source",
            &db.url(),
            "--table",
            t,
        ]),
        120,
    );
    ok(&out);

    // `waly schema` tells the story: a rename, not a drop and an add; one
    // version for OWNER TO, and none for the change after it.
    let schema = ok(&run_within(
        waly().args(["schema", "customer", "--archive", &archive, "--json"]),
        30,
    ));
    let versions: Vec<serde_json::Value> = schema.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let renamed: Vec<&serde_json::Value> = versions
        .iter()
        .filter(|v| v["renamed"].as_array().is_some_and(|a| !a.is_empty()))
        .collect();
    assert_eq!(renamed.len(), 1, "{schema}");
    assert_eq!(renamed[0]["renamed"][0], "email → email_address");
    assert!(
        renamed[0]["dropped"].as_array().is_some_and(|a| a.is_empty()),
        "{schema}"
    );
    let owners: Vec<&str> = versions.iter().filter_map(|v| v["owner"].as_str()).collect();
    assert_eq!(owners.last(), Some(&"schema_owner_test"), "{schema}");
    let owner_versions = versions.iter().filter(|v| v["owner"] == "schema_owner_test").count();
    assert_eq!(
        owner_versions, 3,
        "OWNER TO is one version, the USING retype another, the snapshot after it the third: {schema}"
    );
    assert!(
        versions.iter().all(|v| v["source"] != "relation"),
        "with the event trigger no version comes from a Relation message: {schema}"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn shape_latest_puts_rows_from_before_a_migration_back_into_the_live_table() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE acct (id int PRIMARY KEY, mail text, legacy text, balance int);
         INSERT INTO acct SELECT g, 'm' || g, 'l' || g, g * 10 FROM generate_series(1, 20) g;",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE acct SET balance = 999 WHERE id = 5");
    let before = point(&db, "before the migration", "acct");
    db.psql(
        "ALTER TABLE acct RENAME COLUMN mail TO email;
         ALTER TABLE acct DROP COLUMN legacy;
         ALTER TABLE acct ADD COLUMN tier text DEFAULT 'basic';
         UPDATE acct SET balance = 0, email = 'changed' WHERE id IN (5, 6);
         DELETE FROM acct WHERE id = 7;",
    );
    settle(&db, run);

    // As it was: the old columns.
    let was = ok(&restore(
        &db,
        &archive,
        &[
            "acct", "--at", &before.at, "--key", "5", "--output", "-", "--format", "jsonl",
        ],
    ));
    let was: serde_json::Value = serde_json::from_str(was.trim()).expect("one row");
    assert_eq!(was["mail"], "m5");
    assert_eq!(was["legacy"], "l5");
    assert_eq!(was["balance"], "999");
    // Today's shape: the renamed column under its new name, the dropped one
    // left out, the added one with the value existing rows got.
    let latest = ok(&restore(
        &db,
        &archive,
        &[
            "acct", "--at", &before.at, "--key", "5", "--shape", "latest", "--output", "-", "--format", "jsonl",
        ],
    ));
    let latest: serde_json::Value = serde_json::from_str(latest.trim()).expect("one row");
    assert_eq!(
        latest,
        serde_json::json!({"id": "5", "email": "m5", "balance": "999", "tier": "basic"})
    );
    // ... which --upsert --apply puts straight back.
    for key in ["5", "6", "7"] {
        ok(&restore(
            &db,
            &archive,
            &[
                "acct", "--at", &before.at, "--key", key, "--shape", "latest", "--upsert", "--apply",
            ],
        ));
    }
    assert_eq!(
        db.psql("SELECT string_agg(id || ':' || email || ':' || balance || ':' || tier, ',' ORDER BY id) FROM acct WHERE id IN (5, 6, 7)"),
        "5:m5:999:basic,6:m6:60:basic,7:m7:70:basic"
    );
    // waly status says how DDL reaches the archive.
    let st = crate::archive::status_json(&db, &archive);
    assert_eq!(st["slot"]["ddl_capture"], "event trigger", "{st}");
    assert!(st["slot"].get("invalidation_reason").is_some(), "{st}");
    // Triggers of an earlier waly (their function does not record
    // publication commands) are named as such; `waly init` replaces them.
    db.psql(
        "CREATE OR REPLACE FUNCTION public.waly_capture_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$",
    );
    let st = crate::archive::status_json(&db, &archive);
    assert!(
        st["slot"]["ddl_capture"]
            .as_str()
            .is_some_and(|s| s.starts_with("event trigger of an earlier waly") && s.contains("waly init")),
        "{st}"
    );
    init(&db, &archive);
    let st = crate::archive::status_json(&db, &archive);
    assert_eq!(st["slot"]["ddl_capture"], "event trigger", "{st}");
    db.psql("ALTER EVENT TRIGGER waly_capture_ddl DISABLE");
    let st = crate::archive::status_json(&db, &archive);
    assert_eq!(
        st["slot"]["ddl_capture"], "relation messages (no event trigger)",
        "{st}"
    );
    // A shape that does not exist is an error.
    let out = restore(
        &db,
        &archive,
        &["acct", "--at", &before.at, "--shape", "sideways", "--into", "x"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown shape \"sideways\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn history_follows_a_row_across_a_rename_and_an_added_default() {
    let db = TestDb::new();
    db.psql("CREATE TABLE member (id int PRIMARY KEY, email text, name text); INSERT INTO member VALUES (1, 'ann@example.com', 'Ann');");
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE member SET email = 'ann@new.example' WHERE id = 1");
    db.psql("ALTER TABLE member RENAME COLUMN email TO email_address");
    db.psql("ALTER TABLE member ADD COLUMN plan text DEFAULT 'free', ADD COLUMN region text DEFAULT 'eu'");
    db.psql("UPDATE member SET name = 'Ann B' WHERE id = 1");
    settle(&db, run);
    let out = ok(&run_within(
        waly().args(["history", "member", "1", "--archive", &archive, "--json"]),
        60,
    ));
    let versions: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(versions.len(), 3, "{out}");
    assert_eq!(versions[1]["changed"], serde_json::json!(["email"]), "{out}");
    // The last update changed the name only: the rename and the added
    // columns are not changes of value.
    assert_eq!(versions[2]["changed"], serde_json::json!(["name"]), "{out}");
    assert_eq!(versions[2]["new"]["email_address"], "ann@new.example", "{out}");
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn a_partitioned_table_is_archived_restored_and_followed_under_its_own_name() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE payment (id int, paid date, amount numeric(10,2), note text, PRIMARY KEY (id, paid)) PARTITION BY RANGE (paid);
         CREATE TABLE payment_2026_01 PARTITION OF payment FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
         CREATE TABLE payment_2026_02 PARTITION OF payment FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
         INSERT INTO payment SELECT g, date '2026-01-01' + (g % 50), g * 1.5, 'n' || g FROM generate_series(1, 60) g;",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    let t = "payment";
    let mut points = vec![point(&db, "start", t)];
    db.psql("UPDATE payment SET amount = amount + 1 WHERE id % 3 = 0");
    // Row 4 (paid 2026-01-05) moves to February's partition.
    db.psql("UPDATE payment SET paid = '2026-02-20', note = 'moved' WHERE id = 4");
    points.push(point(&db, "after a row moved partitions", t));
    db.psql(
        "CREATE TABLE payment_2026_03 PARTITION OF payment FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
         INSERT INTO payment VALUES (1000, '2026-03-05', 5, 'march');",
    );
    points.push(point(&db, "after a partition was created", t));
    // Detaching takes January's rows out of the table without a change in
    // the stream: waly snapshots the table again.
    db.psql("ALTER TABLE payment DETACH PARTITION payment_2026_01");
    wait_confirmed(&db, 120);
    db.psql("INSERT INTO payment VALUES (1001, '2026-02-07', 7, 'after detach')");
    let after_detach = point(&db, "after detach, past the new snapshot", t);
    settle(&db, run);

    for (i, p) in points.iter().enumerate() {
        let into = format!("payment_p{i}");
        ok(&restore(&db, &archive, &[t, "--at", &p.at, "--into", &into]));
        assert_eq!(state(&db, &into), p.state, "point {i} ({})", p.label);
        assert_eq!(
            db.psql(&format!("SELECT relkind FROM pg_class WHERE oid = '{into}'::regclass")),
            "p"
        );
    }
    let partitions = |table: &str| {
        db.psql(&format!(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = '{table}'::regclass"
        ))
    };
    assert_eq!(partitions("payment_p1"), "2");
    assert_eq!(partitions("payment_p2"), "3", "the partition created later is restored");
    ok(&restore(
        &db,
        &archive,
        &[t, "--at", &after_detach.at, "--into", "payment_later"],
    ));
    assert_eq!(state(&db, "payment_later"), after_detach.state);
    assert_eq!(partitions("payment_later"), "2", "the detached partition is not there");
    // Between the DETACH and the snapshot after it, the rows that left
    // cannot be known: refused, naming the DDL.
    let schema = ok(&run_within(
        waly().args(["schema", t, "--archive", &archive, "--json"]),
        30,
    ));
    let detach_at = schema
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|v| v["ddl"]["command"].as_str().is_some_and(|c| c.contains("DETACH")))
        .and_then(|v| v["commit_time"].as_str().map(str::to_string))
        .expect("the detach is a version");
    let out = restore(&db, &archive, &[t, "--at", &detach_at, "--into", "payment_gap"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DETACH PARTITION payment_2026_01") && err.contains("detached"),
        "{err}"
    );

    // The parent's name for every reader; the partitions are not tables of
    // the archive. The detached one is a table of its own now (published
    // `FOR ALL TABLES`), snapshotted at the DETACH.
    let tables = ok(&run_within(waly().args(["tables", "--archive", &archive]), 30));
    assert!(tables.contains("public.payment "), "{tables}");
    assert!(tables.contains("public.payment_2026_01 "), "{tables}");
    assert_eq!(tables.matches("payment_2026").count(), 1, "{tables}");
    let shown = ok(&run_within(
        waly().args([
            "show",
            t,
            "--archive",
            &archive,
            "--at",
            &points[1].at,
            "--key",
            "4,2026-02-20",
            "--format",
            "json",
        ]),
        60,
    ));
    assert!(shown.contains("moved"), "{shown}");
    // The move between partitions is one update in the row's history.
    let out = ok(&run_within(
        waly().args(["history", t, "4,2026-01-05", "--archive", &archive, "--json"]),
        60,
    ));
    let versions: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let ops: Vec<&str> = versions.iter().filter_map(|v| v["op"].as_str()).collect();
    assert_eq!(ops, ["snapshot", "update"], "{out}");
    assert_eq!(versions[1]["new"]["note"], "moved", "{out}");
    assert!(versions[1]["key_change"].is_object(), "{out}");
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn tables_inheriting_from_another_keep_their_own_rows_and_take_its_ddl_with_their_defaults() {
    let db = TestDb::new();
    // Three generations of plain inheritance (not partitions): each is a
    // table of its own in the stream, and a parent's SELECT sees its
    // heirs' rows too.
    db.psql(
        "CREATE TABLE animal (id int PRIMARY KEY, name text);
         CREATE TABLE dog (breed text) INHERITS (animal);
         ALTER TABLE dog ADD PRIMARY KEY (id);
         CREATE TABLE puppy (weeks int) INHERITS (dog);
         ALTER TABLE puppy ADD PRIMARY KEY (id);
         INSERT INTO animal VALUES (1, 'cat'), (2, 'owl');
         INSERT INTO dog VALUES (10, 'rex', 'collie'), (11, 'fido', 'pug'), (12, 'max', 'boxer');
         INSERT INTO puppy VALUES (20, 'bit', 'pug', 6), (21, 'bob', 'collie', 9);",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    let tables = ["animal", "dog", "puppy"];
    // (label, time, each table's own state then)
    type Point = (&'static str, String, Vec<(String, String)>);
    let mut points: Vec<Point> = Vec::new();
    let mut mark = |label| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let at = db.now_utc();
        let states = tables.iter().map(|t| state(&db, t)).collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        points.push((label, at, states));
    };
    mark("start");
    db.psql("UPDATE dog SET name = 'rex II' WHERE id = 10; DELETE FROM puppy WHERE id = 21; UPDATE animal SET name = 'cat II' WHERE id = 1");
    mark("after changes in each");
    // A column added to the root reaches every heir with its default: rows
    // no change touches afterwards (dog 11 and 12, puppy 20) have it too.
    db.psql("ALTER TABLE animal ADD COLUMN legs int DEFAULT 4");
    db.psql("ALTER TABLE animal ADD COLUMN born date DEFAULT '2026-01-02'");
    db.psql("UPDATE dog SET legs = 3 WHERE id = 10");
    mark("after columns added with defaults");
    db.psql("ALTER TABLE animal RENAME COLUMN name TO called");
    db.psql("INSERT INTO puppy VALUES (22, 'new', 'pug', 1, 4, '2026-05-01')");
    mark("after a rename");
    db.psql("ALTER TABLE dog ADD COLUMN good boolean DEFAULT true");
    db.psql("ALTER TABLE animal DROP COLUMN born");
    db.psql("UPDATE puppy SET called = 'bit II' WHERE id = 20; INSERT INTO animal VALUES (3, 'ant', 6)");
    mark("after a column of the middle one and a drop");
    // A retype rewrites every heir: each is snapshotted again.
    db.psql("ALTER TABLE animal ALTER COLUMN legs TYPE bigint");
    wait_confirmed(&db, 120);
    db.psql("UPDATE dog SET breed = 'mutt' WHERE id = 12");
    mark("after a retype");
    settle(&db, run);

    for (i, (label, at, states)) in points.iter().enumerate() {
        for (t, expected) in tables.iter().zip(states) {
            let into = format!("{t}_p{i}");
            ok(&restore(&db, &archive, &[t, "--at", at, "--into", &into]));
            assert_eq!(&state(&db, &into), expected, "{t} at point {i} ({label})");
        }
    }
    for t in tables {
        verify_against_source(&db, &archive, t);
    }
    // A row no change touched after the columns came: its history and its
    // value as shown have the default.
    let shown = ok(&run_within(
        waly().args([
            "show",
            "puppy",
            "--archive",
            &archive,
            "--key",
            "20",
            "--at",
            &points[2].1,
            "--format",
            "csv",
        ]),
        60,
    ));
    assert!(shown.contains(r#""20","bit","pug","6","4","2026-01-02""#), "{shown}");
    // The same after a compact (a snapshot from the archive alone).
    ok(&run_within(waly().args(["compact", "--archive", &archive]), 120));
    for (i, t) in tables.iter().enumerate() {
        let into = format!("{t}_compacted");
        ok(&restore(&db, &archive, &[t, "--at", "now", "--into", &into]));
        assert_eq!(state(&db, &into), points[points.len() - 1].2[i], "{t} after compact");
    }
    let _ = std::fs::remove_dir_all(&archive);
}

/// A point of `table` (see [`point`]), with its rows then as a JSON array
/// of objects, every value in its text (as `restore --format jsonl` gives
/// them), in `id` order.
fn rows_as_text_then(db: &TestDb, label: &'static str, table: &str) -> (Point, serde_json::Value) {
    let p = point(db, label, table);
    let columns = db.psql(&format!(
        "SELECT string_agg(format('%L, %I::text', attname, attname), ', ' ORDER BY attnum) FROM pg_attribute
          WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
    ));
    let rows = db.psql(&format!(
        "SELECT coalesce(json_agg(json_build_object({columns}) ORDER BY id), '[]') FROM {table}"
    ));
    (p, serde_json::from_str(&rows).expect("json"))
}

/// Each point's restore to a file (`--format jsonl`) is its rows in the
/// text of then (`points`: each point with its rows as a JSON array), the
/// last point's restore into a table is the table then, and
/// `verify --against-source` finds it equal; returns `waly schema --json`.
fn restores_as_then(db: &TestDb, archive: &str, table: &str, points: &[(Point, serde_json::Value)]) -> String {
    for (p, want) in points {
        let out = ok(&restore(
            db,
            archive,
            &[table, "--at", &p.at, "--output", "-", "--format", "jsonl"],
        ));
        let got: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(&serde_json::Value::Array(got), want, "{}", p.label);
    }
    if let Some((last, _)) = points.last() {
        assert_restores(db, archive, table, last, &format!("{table}_now"));
    }
    verify_against_source(db, archive, table);
    ok(&run_within(
        waly().args(["schema", table, "--archive", archive, "--json"]),
        30,
    ))
}

#[test]
fn values_of_an_enum_or_composite_type_altered_under_them_restore_as_the_type_reads_them_now() {
    // An enum label renamed, or a composite type's attribute added or
    // dropped, changes how values already written read, without a change
    // in the stream: waly snapshots the tables that use the type (directly,
    // in an array, through a domain). A label added, or an attribute
    // renamed, changes no value and takes no snapshot.
    let db = TestDb::new();
    db.psql(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TYPE pt AS (x int, y int);
         CREATE DOMAIN feeling AS mood;
         CREATE TABLE t (id int PRIMARY KEY, m mood, p pt, ms mood[], ps pt[], f feeling);
         INSERT INTO t VALUES (1, 'sad', '(1,2)', '{sad,ok}', '{\"(1,2)\"}', 'sad'),
                              (2, 'ok', '(3,4)', '{happy}', '{\"(5,6)\"}', 'happy'),
                              (3, 'happy', NULL, NULL, NULL, NULL);",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    // Each point: its time, and the rows in the text of then (a restore
    // into a table takes the types of now: a file for the earlier points).
    let rows_then = |label: &'static str| rows_as_text_then(&db, label, "t");
    let mut points = vec![rows_then("start")];
    db.psql("ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'");
    wait_confirmed(&db, 120);
    points.push(rows_then("after a label renamed"));
    db.psql("ALTER TYPE mood ADD VALUE 'ecstatic'");
    db.psql("UPDATE t SET m = 'ecstatic', f = 'ecstatic' WHERE id = 3");
    points.push(rows_then("after a label added"));
    db.psql("ALTER TYPE pt ADD ATTRIBUTE z int");
    wait_confirmed(&db, 120);
    points.push(rows_then("after an attribute added"));
    db.psql("ALTER TYPE pt RENAME ATTRIBUTE x TO xx");
    db.psql("INSERT INTO t VALUES (4, 'blue', '(7,8,9)', '{blue}', '{\"(9,10,11)\"}', 'ok')");
    points.push(rows_then("after an attribute renamed"));
    db.psql("ALTER TYPE pt DROP ATTRIBUTE y");
    wait_confirmed(&db, 120);
    db.psql("UPDATE t SET p = '(70,90)' WHERE id = 4");
    points.push(rows_then("after an attribute dropped"));
    settle(&db, run);

    let schema = restores_as_then(&db, &archive, "t", &points);
    let sources: Vec<String> = schema
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .map(|v| v["source"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        sources.iter().filter(|s| *s == "snapshot").count(),
        4,
        "the base snapshot and one after each rename of a label, attribute added and dropped: {schema}"
    );
    assert!(
        schema.contains("its type's enum labels or composite attributes"),
        "{schema}"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn values_of_a_type_nested_in_another_or_of_a_tables_row_type_restore_as_the_types_read_them_now() {
    // The same, where the altered type is reached only through another
    // type: an enum or a composite inside a composite (in an array too), and
    // a table's row type as another table's column. waly snapshots every
    // table whose values the change reaches, at any depth.
    let db = TestDb::new();
    db.psql(
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TYPE inner_t AS (a int, m mood);
         CREATE TYPE outer_t AS (i inner_t, n text);
         CREATE DOMAIN outer_d AS outer_t;
         CREATE TABLE addr (id int PRIMARY KEY, city text);
         CREATE TABLE t (id int PRIMARY KEY, o outer_t, os outer_t[], od outer_d, home addr);
         INSERT INTO addr VALUES (1, 'Oslo');
         INSERT INTO t VALUES (1, '(\"(1,sad)\",x)', ARRAY['(\"(2,ok)\",y)']::outer_t[], '(\"(3,sad)\",z)', '(1,Oslo)'),
                              (2, '(\"(4,ok)\",w)', NULL, NULL, '(2,Bergen)'),
                              (3, NULL, NULL, NULL, NULL);",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    // Each point: its time, and the rows in the text of then (a restore
    // into a table takes the types of now: a file for the earlier points).
    let rows_then = |label: &'static str| rows_as_text_then(&db, label, "t");
    let mut points = vec![rows_then("start")];
    for (label, ddl) in [
        (
            "after a label renamed two types down",
            "ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'",
        ),
        (
            "after an attribute added to an inner type",
            "ALTER TYPE inner_t ADD ATTRIBUTE b int",
        ),
        (
            "after a column added to a table whose row type is a column",
            "ALTER TABLE addr ADD COLUMN zip text",
        ),
        (
            "after an attribute of an inner type dropped",
            "ALTER TYPE inner_t DROP ATTRIBUTE a",
        ),
    ] {
        db.psql(ddl);
        wait_confirmed(&db, 120);
        db.psql(&format!("UPDATE t SET o.n = '{label}' WHERE id = 2"));
        points.push(rows_then(label));
    }
    settle(&db, run);

    let schema = restores_as_then(&db, &archive, "t", &points);
    let snapshots = schema
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|v| v["source"] == "snapshot")
        .count();
    assert_eq!(snapshots, 5, "the base snapshot and one after each change: {schema}");
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn a_generated_columns_new_expression_is_what_every_reader_shows_after_it() {
    // `ALTER COLUMN ... SET EXPRESSION` (PostgreSQL 17) computes every
    // row's value again: a stored column's by rewriting the table, a
    // virtual one's (18) as it is read, with no change in the stream.
    // waly snapshots the table at it.
    let db = TestDb::new();
    if db.psql("SELECT current_setting('server_version_num')::int >= 170000") != "t" {
        eprintln!("skipped: SET EXPRESSION needs PostgreSQL 17 (make test runs this suite on 17 too)");
        return;
    }
    let pg18 = db.psql("SELECT current_setting('server_version_num')::int >= 180000") == "t";
    let (virtual_column, virtual_value) = match pg18 {
        true => (", v int GENERATED ALWAYS AS (x + 1) VIRTUAL", ", 'v', v::text"),
        false => ("", ""),
    };
    db.psql(&format!(
        "CREATE TABLE g (id int PRIMARY KEY, x int, s int GENERATED ALWAYS AS (x * 2) STORED{virtual_column});
         INSERT INTO g (id, x) SELECT n, n * 10 FROM generate_series(1, 20) n;"
    ));
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    let row_then = |label: &'static str| {
        let p = point(&db, label, "g");
        let row: serde_json::Value = serde_json::from_str(&db.psql(&format!(
            "SELECT json_build_object('id', id::text, 'x', x::text, 's', s::text{virtual_value}) FROM g WHERE id = 2"
        )))
        .expect("json");
        (p, row)
    };
    db.psql("UPDATE g SET x = x + 1 WHERE id = 1");
    let mut points = vec![row_then("before")];
    db.psql("ALTER TABLE g ALTER COLUMN s SET EXPRESSION AS (x * 3)");
    if pg18 {
        db.psql("ALTER TABLE g ALTER COLUMN v SET EXPRESSION AS (x + 100)");
    }
    db.psql("UPDATE g SET x = x + 1 WHERE id = 3");
    wait_confirmed(&db, 120);
    points.push(row_then("after a new expression"));
    settle(&db, run);

    for (i, (p, want)) in points.iter().enumerate() {
        let out = ok(&run_within(
            waly().args([
                "show",
                "g",
                "--archive",
                &archive,
                "--at",
                &p.at,
                "--key",
                "id=2",
                "--format",
                "json",
            ]),
            60,
        ));
        let got: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("null")).expect("json");
        assert_eq!(&got, want, "show --key id=2 {}", p.label);
        assert_restores(&db, &archive, "g", p, &format!("g_back{i}"));
    }
    let out = ok(&run_within(
        waly().args(["history", "g", "2", "--archive", &archive, "--json", "--full"]),
        60,
    ));
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("null")).expect("json");
    assert_eq!(last["new"], points[1].1, "history of id 2: {out}");
    verify_against_source(&db, &archive, "g");
    let _ = std::fs::remove_dir_all(&archive);
}

/// The guarantee: every committed change is history, though the walsender
/// decodes a commit as soon as its WAL is flushed, before the server shows
/// it to other sessions. A synchronous standby that confirms every two
/// seconds holds each commit out of sight that long after waly can decode
/// it. Each decision waly takes from the catalog of now waits until the
/// transaction it decodes is visible: a table created, published and
/// filled in one transaction keeps its rows (from a snapshot), whether the
/// publication took it in by its schema or by name; a table
/// that joins the publication starts from a snapshot at that command,
/// not at its next change; one created in a schema the publication
/// publishes is history from its creation.
#[test]
fn a_commit_decoded_before_other_sessions_see_it_is_archived_by_the_catalog_it_made() {
    let Some(cluster) = crate::harness::own_cluster(&[]) else {
        return;
    };
    let db = TestDb::on(cluster);
    db.psql(
        "CREATE TABLE keep (id int PRIMARY KEY, v text); INSERT INTO keep VALUES (1, 'k1');
         CREATE TABLE late (id int PRIMARY KEY, v text); INSERT INTO late VALUES (1, 'l1'), (2, 'l2');
         CREATE SCHEMA side; CREATE PUBLICATION waly FOR TABLE keep, TABLES IN SCHEMA side;",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let _standby = crate::harness::SlowStandby::start(&db, 2);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql(
        "BEGIN; CREATE TABLE filled (id int PRIMARY KEY, v text); ALTER PUBLICATION waly ADD TABLE filled;
         INSERT INTO filled VALUES (3, 'f3'); COMMIT;",
    );
    db.psql("BEGIN; CREATE TABLE side.filled (id int PRIMARY KEY, v text); INSERT INTO side.filled VALUES (5, 'f5'); COMMIT;");
    db.psql("ALTER PUBLICATION waly ADD TABLE late");
    // Its snapshot comes with the command, before any change of it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = run_within(waly().args(["history", "late", "1", "--archive", &archive]), 60);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("snapshot") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "late was not archived when it joined the publication: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            run.stderr_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    db.psql("UPDATE late SET v = 'l1b' WHERE id = 1");
    db.psql("CREATE TABLE side.born (id int PRIMARY KEY)");
    db.psql("INSERT INTO side.born VALUES (4); UPDATE keep SET v = 'k1b'");
    settle(&db, run);
    let history = |t: &str, key: &str| -> Vec<String> {
        let out = ok(&run_within(
            waly().args(["history", t, key, "--archive", &archive, "--json"]),
            60,
        ));
        out.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["op"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(history("filled", "3"), ["snapshot"]);
    assert_eq!(history("side.filled", "5"), ["snapshot"]);
    assert_eq!(history("late", "1"), ["snapshot", "update"]);
    assert_eq!(history("side.born", "4"), ["insert"]);
    assert_eq!(history("keep", "1"), ["snapshot", "update"]);
    for t in ["keep", "late", "filled", "side.filled", "side.born"] {
        verify_against_source(&db, &archive, t);
    }
    let _ = std::fs::remove_dir_all(&archive);
}

/// The guarantee: every committed change is history. A table created
/// while `waly run` runs is archived from its `CREATE TABLE`, empty: its
/// first rows are `insert`s with their own commit, transaction and intent,
/// not a snapshot taken when its first change came, and a point between
/// its creation and its first rows restores it empty. It holds across a
/// restart of the writer, for a table dropped and created again, and for
/// the tables one transaction creates together. A table whose creating
/// transaction also fills it (rows, or a partition attached with rows)
/// starts from a snapshot, as before, and a restore's output, created in
/// the database waly captures, is never archived.
#[test]
fn a_table_created_while_waly_runs_is_history_from_its_creation() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE keep (id int PRIMARY KEY); INSERT INTO keep VALUES (1);
         CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);
         INSERT INTO parted VALUES (1, 'p1'), (2, 'p2');
         CREATE TABLE loose (id int PRIMARY KEY, v text); INSERT INTO loose VALUES (5, 'l5'), (6, 'l6');",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("CREATE TABLE born (id int PRIMARY KEY, v text)");
    let empty = point(&db, "created, no row yet", "born");
    db.psql("BEGIN; SELECT pg_logical_emit_message(true, 'waly', 'first rows'); INSERT INTO born VALUES (1, 'a'), (2, 'b'); COMMIT;");
    let first = point(&db, "first rows", "born");
    settle(&db, run);
    // The writer starts again; the table goes on.
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE born SET v = 'a2' WHERE id = 1; DELETE FROM born WHERE id = 2;");
    db.psql("BEGIN; CREATE TABLE pair_a (id int PRIMARY KEY); CREATE TABLE pair_b (id int PRIMARY KEY); COMMIT;");
    db.psql("INSERT INTO pair_a VALUES (7); INSERT INTO pair_b VALUES (8);");
    // Dropped and created again in one transaction: from a snapshot.
    db.psql("BEGIN; DROP TABLE pair_a; CREATE TABLE pair_a (id int PRIMARY KEY, z text); COMMIT;");
    db.psql("INSERT INTO pair_a VALUES (9, 'z')");
    db.psql("DROP TABLE born");
    db.psql("CREATE TABLE born (id int PRIMARY KEY, w int)");
    db.psql("INSERT INTO born VALUES (1, 10)");
    db.psql("BEGIN; CREATE TABLE filled (id int PRIMARY KEY); INSERT INTO filled VALUES (3); COMMIT;");
    // A new partitioned table given, in its creating transaction, a
    // partition that holds rows: its rows were never streamed.
    db.psql(
        "BEGIN; CREATE TABLE grown (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         ALTER TABLE grown ATTACH PARTITION loose FOR VALUES FROM (0) TO (100); COMMIT;",
    );
    db.psql("INSERT INTO grown VALUES (7, 'g7')");
    // A restore into the database waly captures (a partitioned table: its
    // root is created permanent).
    ok(&restore(
        &db,
        &archive,
        &["parted", "--at", &empty.at, "--into", "parted_copy"],
    ));
    db.psql("INSERT INTO parted_copy VALUES (3, 'c3')");
    settle(&db, run);
    for (p, into) in [(&empty, "born_empty"), (&first, "born_first")] {
        assert_restores(&db, &archive, "born", p, into);
    }
    assert_eq!(db.psql("SELECT count(*) FROM born_empty"), "0");
    let history = |t: &str, key: &str| -> Vec<serde_json::Value> {
        let out = ok(&run_within(
            waly().args(["history", t, key, "--archive", &archive, "--json"]),
            60,
        ));
        out.lines().map(|l| serde_json::from_str(l).expect("json")).collect()
    };
    let ops = |vs: &[serde_json::Value]| -> Vec<String> {
        vs.iter().map(|v| v["op"].as_str().unwrap_or("?").to_string()).collect()
    };
    let h = history("born", "1");
    // Dropped (no delete in the stream), the row is no longer in the
    // table at the new table's creation, which starts empty.
    assert_eq!(ops(&h), ["insert", "update", "snapshot", "insert"], "{h:#?}");
    assert_eq!(h[0]["intent"], "first rows", "{h:#?}");
    assert!(h[1]["new"].is_object() && h[2]["new"].is_null(), "{h:#?}");
    assert_eq!(ops(&history("born", "2")), ["insert", "delete"]);
    assert_eq!(ops(&history("pair_a", "7"))[0], "insert");
    assert_eq!(ops(&history("pair_b", "8")), ["insert"]);
    // Filled by the transaction that created it: from a snapshot.
    assert_eq!(ops(&history("filled", "3")), ["snapshot"]);
    assert_eq!(ops(&history("grown", "5")), ["snapshot"]);
    assert_eq!(ops(&history("grown", "7")), ["insert"]);
    let tables = ok(&run_within(waly().args(["tables", "--archive", &archive]), 60));
    assert!(
        !tables.contains("parted_copy"),
        "a restore's output is archived: {tables}"
    );
    assert!(tables.contains("public.pair_b"), "{tables}");
    let log = ok(&run_within(
        waly().args(["log", "--table", "born", "--archive", &archive]),
        60,
    ));
    assert_eq!(log.lines().filter(|l| l.contains(" insert ")).count(), 3, "{log}");
    for t in ["born", "pair_a", "pair_b", "filled", "keep", "grown", "parted"] {
        verify_against_source(&db, &archive, t);
    }
    let v = ok(&run_within(waly().args(["verify", "--archive", &archive]), 120));
    assert!(v.contains("clean"), "{v}");
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn a_table_out_of_the_publication_or_dropped_is_refused_there_and_exact_from_its_next_snapshot() {
    let db = TestDb::new();
    db.psql(DDL_TABLES);
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE o SET v = 'before' WHERE id = 9; UPDATE k SET v = 'before' WHERE id = 2");
    wait_confirmed(&db, 120);
    let before_o = point(&db, "before o left", "o");
    let before_k = point(&db, "before k was dropped", "k");
    db.psql(OUT_OF_THE_PUBLICATION);
    wait_confirmed(&db, 120);
    let out = db.now_utc();
    db.psql("ALTER PUBLICATION waly ADD TABLE o");
    // k dropped and created again, published only by the last statement.
    let (create, publish) = DROPPED_AND_CREATED_AGAIN
        .rsplit_once("ALTER")
        .expect("the script ends with the ALTER PUBLICATION");
    db.psql(create);
    wait_confirmed(&db, 120);
    let unpublished = db.now_utc();
    db.psql(&format!("ALTER{publish}"));
    wait_confirmed(&db, 120);
    db.psql("UPDATE o SET v = 'after' WHERE id IN (1, 50); UPDATE k SET v = 'after' WHERE id = 7");
    wait_confirmed(&db, 120);
    let after_o = point(&db, "after o came back", "o");
    let after_k = point(&db, "after k was published again", "k");
    // Published in part (a row filter): out again, though in the publication.
    db.psql("ALTER PUBLICATION waly SET TABLE c, p, o WHERE (id < 5), k");
    db.psql("UPDATE o SET v = 'filtered' WHERE id IN (2, 8)");
    wait_confirmed(&db, 120);
    let filtered = db.now_utc();
    db.psql("ALTER PUBLICATION waly SET TABLE c, p, o, k");
    wait_confirmed(&db, 120);
    db.psql("UPDATE o SET v = 'whole again' WHERE id = 3");
    let whole_again = point(&db, "after o was published whole again", "o");
    settle(&db, run);

    let refused = |table: &str, at: &str, why: &str| {
        let out = restore(&db, &archive, &[table, "--at", at, "--output", "-"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{table} at {at}: {err}");
    };
    let check = |compacted: &str| {
        for (i, p) in [&before_o, &after_o, &whole_again].into_iter().enumerate() {
            assert_restores(&db, &archive, "o", p, &format!("o_{compacted}{i}"));
        }
        for (i, p) in [&before_k, &after_k].into_iter().enumerate() {
            assert_restores(&db, &archive, "k", p, &format!("k_{compacted}{i}"));
        }
        refused("o", &out, "public.o left the publication");
        refused("o", &out, "ALTER PUBLICATION waly DROP TABLE o");
        refused("o", &filtered, "public.o left the publication");
        refused("k", &unpublished, "DROP TABLE k");
    };
    check("");
    // The other readers.
    let schema = ok(&run_within(waly().args(["schema", "o", "--archive", &archive]), 30));
    assert_eq!(schema.matches("table left the publication").count(), 2, "{schema}");
    let shown = ok(&run_within(
        waly().args([
            "show",
            "o",
            "--archive",
            &archive,
            "--at",
            &after_o.at,
            "--key",
            "50",
            "--format",
            "json",
        ]),
        60,
    ));
    assert!(shown.contains("\"after\""), "{shown}");
    let tables = ok(&run_within(waly().args(["tables", "--archive", &archive]), 30));
    assert!(tables.contains("public.o ") && tables.contains("public.k "), "{tables}");
    for table in ["o", "k"] {
        verify_against_source(&db, &archive, table);
    }
    // Compaction passes a table whose rows the archive cannot give at its
    // point, and the readers give the same answers after it.
    ok(&run_within(waly().args(["compact", "--archive", &archive]), 120));
    check("compacted_");
    let _ = std::fs::remove_dir_all(&archive);
}

/// Partitions move tables in and out of a publication that publishes
/// through the partition root (as `waly init` makes it, for all tables): a
/// table attached as a partition is published as the root from then on,
/// so its own history ends there (refused after it, never its rows of
/// before); a partition detached is a table of its own, snapshotted at
/// once. A table made unlogged for a bulk load (`SET UNLOGGED`, allowed
/// under `FOR ALL TABLES`) streams no change until `SET LOGGED`: refused
/// in between, exact from the snapshot taken then. Every reader agrees,
/// also after `waly compact`.
#[test]
fn a_table_attached_as_a_partition_or_made_unlogged_ends_its_history_there_and_one_detached_starts_from_a_snapshot() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE pt (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE pt_1 PARTITION OF pt FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
         CREATE TABLE pt_2 PARTITION OF pt FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
         INSERT INTO pt SELECT i, date '2026-01-01' + i * 2, 'pt' || i FROM generate_series(1, 20) i;
         CREATE TABLE pt_3 (id int, at date, v text, PRIMARY KEY (id, at));
         INSERT INTO pt_3 VALUES (100, '2026-03-02', 'march'), (101, '2026-03-09', 'march');
         CREATE TABLE u (id int PRIMARY KEY, v text);
         INSERT INTO u SELECT i, 'u' || i FROM generate_series(1, 10) i;",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE pt_3 SET v = 'on its own' WHERE id = 100; UPDATE pt SET v = 'before' WHERE id = 1");
    wait_confirmed(&db, 120);
    let alone = point(&db, "pt_3 on its own", "pt_3");
    db.psql("ALTER TABLE pt ATTACH PARTITION pt_3 FOR VALUES FROM ('2026-03-01') TO ('2026-04-01')");
    // Changed through either name, pt_3's rows are pt's now.
    db.psql("UPDATE pt_3 SET v = 'attached'; DELETE FROM pt WHERE id = 101");
    db.psql("ALTER TABLE pt DETACH PARTITION pt_1");
    wait_confirmed(&db, 120);
    let attached = point(&db, "pt with pt_3 attached and pt_1 detached", "pt");
    let detached = point(&db, "pt_1 detached, not changed since", "pt_1");
    db.psql("UPDATE pt_1 SET v = 'detached' WHERE id < 4; DELETE FROM pt_1 WHERE id = 5");
    let changed = point(&db, "pt_1 changed on its own", "pt_1");
    db.psql("UPDATE u SET v = 'logged' WHERE id = 1");
    let logged = point(&db, "u before it was made unlogged", "u");
    db.psql(
        "ALTER TABLE u SET UNLOGGED;
         UPDATE u SET v = 'unlogged' WHERE id = 2; DELETE FROM u WHERE id = 3; INSERT INTO u VALUES (11, 'bulk');",
    );
    wait_confirmed(&db, 120);
    let unlogged = db.now_utc();
    db.psql("ALTER TABLE u SET LOGGED; UPDATE u SET v = 'logged again' WHERE id = 4");
    let logged_again = point(&db, "u logged again", "u");
    settle(&db, run);

    let check = |compacted: &str| {
        assert_restores(&db, &archive, "pt_3", &alone, &format!("pt_3_{compacted}"));
        assert_restores(&db, &archive, "pt", &attached, &format!("pt_{compacted}"));
        for (i, p) in [&detached, &changed].into_iter().enumerate() {
            assert_restores(&db, &archive, "pt_1", p, &format!("pt_1_{compacted}{i}"));
        }
        // Never pt_3's rows of before it was attached.
        let out = restore(&db, &archive, &["pt_3", "--at", &changed.at, "--output", "-"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("public.pt_3 became a partition published through its root")
                && err.contains("ATTACH PARTITION pt_3"),
            "{err}"
        );
        for (i, p) in [&logged, &logged_again].into_iter().enumerate() {
            assert_restores(&db, &archive, "u", p, &format!("u_{compacted}{i}"));
        }
        let out = restore(&db, &archive, &["u", "--at", &unlogged, "--output", "-"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("public.u was made unlogged") && err.contains("SET UNLOGGED"),
            "{err}"
        );
    };
    check("");
    let schema = ok(&run_within(waly().args(["schema", "u", "--archive", &archive]), 30));
    assert!(schema.contains("table made unlogged"), "{schema}");
    let schema = ok(&run_within(waly().args(["schema", "pt_3", "--archive", &archive]), 30));
    assert!(schema.contains("table attached as a partition"), "{schema}");
    let json = ok(&run_within(
        waly().args(["schema", "pt_3", "--archive", &archive, "--json"]),
        30,
    ));
    assert!(json.contains("\"left_publication\":true"), "{json}");
    for table in ["pt", "pt_1", "u"] {
        verify_against_source(&db, &archive, table);
    }
    ok(&run_within(waly().args(["compact", "--archive", &archive]), 120));
    check("compacted_");
    let _ = std::fs::remove_dir_all(&archive);
}

/// Renaming a schema renames its tables: the archive ends each old name's
/// history at the `ALTER SCHEMA` and follows the table under its new name
/// from a snapshot then, as for `ALTER TABLE ... RENAME` and `SET SCHEMA`
/// (renamed back, the old name goes on from a snapshot). Restores are
/// exact under each name while it is the table's, refused (naming the
/// command) where it is not, also after `waly compact`. Without the DDL
/// trigger a table moved to another schema ends its old name at its first
/// change under the new one.
#[test]
fn a_table_renamed_with_its_schema_is_followed_under_its_new_name_and_never_answered_stale_under_the_old() {
    const TABLES: &str = "CREATE SCHEMA s; CREATE SCHEMA o;
         CREATE TABLE s.a (id int PRIMARY KEY, v text);
         CREATE TABLE s.b (id int PRIMARY KEY, v text);
         INSERT INTO s.a SELECT i, 'a' || i FROM generate_series(1, 8) i;
         INSERT INTO s.b SELECT i, 'b' || i FROM generate_series(1, 8) i;";
    let refused = |db: &TestDb, archive: &str, table: &str, at: &str, command: &str| {
        let out = restore(db, archive, &[table, "--at", at, "--output", "-"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("{table} was renamed away")) && err.contains(command),
            "{table} at {at}: {err}"
        );
    };
    let db = TestDb::new();
    db.psql(TABLES);
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE s.a SET v = 'before' WHERE id = 1; DELETE FROM s.b WHERE id = 8");
    wait_confirmed(&db, 120);
    let before = point(&db, "s.a before its schema was renamed", "s.a");
    db.psql("ALTER SCHEMA s RENAME TO s2");
    wait_confirmed(&db, 120);
    let renamed = point(&db, "s2.a right after the rename, not changed since", "s2.a");
    db.psql("UPDATE s2.a SET v = 'renamed' WHERE id = 2; DELETE FROM s2.a WHERE id = 3; UPDATE s2.b SET v = 'renamed'");
    let changed = point(&db, "s2.a changed under its new name", "s2.a");
    db.psql("ALTER TABLE s2.b SET SCHEMA o; UPDATE o.b SET v = 'moved' WHERE id = 1");
    // (o.b's history starts at the snapshot waly takes when it reads that.)
    wait_confirmed(&db, 120);
    let moved = point(&db, "o.b moved out of s2", "o.b");
    db.psql("ALTER SCHEMA s2 RENAME TO s");
    wait_confirmed(&db, 120);
    let back = point(&db, "s.a renamed back, not changed since", "s.a");
    settle(&db, run);

    let check = |compacted: &str| {
        assert_restores(&db, &archive, "s.a", &before, &format!("public.a_{compacted}0"));
        for (i, p) in [&renamed, &changed].into_iter().enumerate() {
            assert_restores(&db, &archive, "s2.a", p, &format!("public.a_{compacted}{}", i + 1));
        }
        assert_restores(&db, &archive, "o.b", &moved, &format!("public.b_{compacted}"));
        assert_restores(&db, &archive, "s.a", &back, &format!("public.a_{compacted}3"));
        // Never the old name's rows once it is another's.
        refused(&db, &archive, "s.a", &renamed.at, "ALTER SCHEMA s RENAME TO s2");
        refused(&db, &archive, "s.b", &changed.at, "ALTER SCHEMA s RENAME TO s2");
        refused(&db, &archive, "s2.a", &back.at, "ALTER SCHEMA s2 RENAME TO s");
        refused(&db, &archive, "s2.b", &moved.at, "SET SCHEMA o");
    };
    check("");
    let schema = ok(&run_within(waly().args(["schema", "s2.a", "--archive", &archive]), 30));
    assert!(schema.contains("table renamed away"), "{schema}");
    for table in ["s.a", "o.b"] {
        verify_against_source(&db, &archive, table);
    }
    ok(&run_within(waly().args(["compact", "--archive", &archive]), 120));
    check("compacted_");
    let _ = std::fs::remove_dir_all(&archive);

    // No trigger: the rename is learned from the first change under the new name.
    let db = TestDb::new();
    db.psql(TABLES);
    let archive = archive_dir(&db);
    init_with(&db, &archive, &["--no-ddl-capture"]);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("ALTER TABLE s.b SET SCHEMA o; UPDATE o.b SET v = 'moved' WHERE id = 2");
    wait_confirmed(&db, 120);
    let moved = point(&db, "o.b changed under its new name (no trigger)", "o.b");
    settle(&db, run);
    assert_restores(&db, &archive, "o.b", &moved, "public.b_untriggered");
    refused(&db, &archive, "s.b", &moved.at, "renamed to o.b");
    let _ = std::fs::remove_dir_all(&archive);
}

/// A table swapped for a new one in one transaction (`t` renamed away, the
/// new table renamed onto it, the old one dropped), and a table renamed
/// twice: by the time `waly run` reads the first rename, no table has the
/// name it would snapshot. It goes on (it used to fail on that snapshot
/// again at every restart, holding the slot), the old names end at the
/// commit, and `t` restores exactly before and after the swap. A type
/// renamed is followed too: a restore creates the column with its name of
/// then.
#[test]
fn a_table_swapped_or_renamed_twice_in_one_transaction_is_followed_and_waly_run_goes_on() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 't' || i FROM generate_series(1, 6) i;
         CREATE TABLE u (id int PRIMARY KEY, v text);
         INSERT INTO u SELECT i, 'u' || i FROM generate_series(1, 4) i;
         CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TABLE w (id int PRIMARY KEY, m mood, ms mood[]);
         INSERT INTO w SELECT i, 'sad', '{ok}' FROM generate_series(1, 4) i;",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE t SET v = 'before' WHERE id = 1");
    let before = point(&db, "t before the swap", "t");
    db.psql(
        "CREATE TABLE t_new (LIKE t INCLUDING ALL);
         INSERT INTO t_new SELECT id * 10, v || ' new' FROM t;
         BEGIN;
         ALTER TABLE t RENAME TO t_old;
         ALTER TABLE t_new RENAME TO t;
         DROP TABLE t_old;
         ALTER TABLE u RENAME TO u_tmp;
         ALTER TABLE u_tmp RENAME TO u2;
         COMMIT;
         ALTER TYPE mood RENAME TO feeling;
         UPDATE w SET m = 'ok' WHERE id = 1;
         UPDATE t SET v = 'after' WHERE id = 10;
         UPDATE u2 SET v = 'after' WHERE id = 1;",
    );
    wait_confirmed(&db, 120);
    let after = point(&db, "t after the swap", "t");
    let u2 = point(&db, "u renamed twice", "u2");
    let w = point(&db, "w, its type renamed", "w");
    settle(&db, run);
    assert_restores(&db, &archive, "w", &w, "w_after");
    assert_restores(&db, &archive, "t", &before, "t_before");
    assert_restores(&db, &archive, "t", &after, "t_after");
    assert_restores(&db, &archive, "u2", &u2, "u2_after");
    // (t_new is archived only if waly snapshotted it before the swap.)
    let out = restore(&db, &archive, &["u", "--at", &after.at, "--output", "-"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("public.u was renamed away") && err.contains("RENAME TO u_tmp"),
        "{err}"
    );
    for table in ["t", "u2"] {
        verify_against_source(&db, &archive, table);
    }
    let _ = std::fs::remove_dir_all(&archive);
}

/// The guarantee: rows of a table that publishes with `REPLICA IDENTITY
/// USING INDEX` are followed by that index, as the stream identifies them
/// (PostgreSQL sends only its old values, and none when they did not
/// change, even when the primary key did). `ua` has no primary key; `ub`
/// has one and switches to the index and back. Every point restores
/// exactly, history follows a row through deletes, key changes and
/// updates of the index's column, and the export's as-of query agrees,
/// before and after `waly compact`.
#[test]
fn rows_are_followed_by_the_replica_identity_index_a_table_publishes_with() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE ua (code text NOT NULL, v text, n int);
         CREATE UNIQUE INDEX ua_code ON ua (code);
         ALTER TABLE ua REPLICA IDENTITY USING INDEX ua_code;
         CREATE TABLE ub (id int PRIMARY KEY, code text NOT NULL UNIQUE, v text);
         INSERT INTO ua SELECT 'c' || i, 'v' || i, i FROM generate_series(1, 6) i;
         INSERT INTO ub SELECT i, 'code' || i, 'v' || i FROM generate_series(1, 6) i;
         CREATE TABLE uc (id int PRIMARY KEY, code text NOT NULL UNIQUE, v text);
         INSERT INTO uc SELECT i, 'code' || i, 'v' || i FROM generate_series(1, 6) i;",
    );
    let archive = archive_dir(&db);
    let dest = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&dest);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql(
        "UPDATE ua SET v = 'x' WHERE code = 'c1';
         UPDATE ua SET code = 'c2b' WHERE code = 'c2';
         DELETE FROM ua WHERE code = 'c3';
         UPDATE ua SET n = 40 WHERE code = 'c4';
         UPDATE ub SET v = 'before' WHERE id = 6;",
    );
    let (ua1, ub1) = (
        point(&db, "ua changed", "ua"),
        point(&db, "ub by its primary key", "ub"),
    );
    db.psql("ALTER TABLE ub REPLICA IDENTITY USING INDEX ub_code_key");
    db.psql(
        "UPDATE ub SET v = 'x' WHERE id = 1;
         UPDATE ub SET code = 'recoded' WHERE id = 2;
         DELETE FROM ub WHERE id = 3;
         UPDATE ub SET id = 40 WHERE id = 4;
         UPDATE ub SET id = 50, code = 'both' WHERE id = 5;",
    );
    let ub2 = point(&db, "ub by its replica identity index", "ub");
    // uc keyed by the index and back while `waly run` is down: it snapshots
    // uc at the first switch when it reads it, after the second committed
    // (the snapshot's version is numbered before the second's); a point
    // between the second and that snapshot restores across both.
    let mut run = run;
    let _ = run.child.kill();
    let _ = run.child.wait();
    db.psql(
        "ALTER TABLE uc REPLICA IDENTITY USING INDEX uc_code_key;
         UPDATE uc SET code = 'recoded' WHERE id = 2;
         DELETE FROM uc WHERE id = 3;
         UPDATE uc SET id = 40 WHERE id = 4;
         ALTER TABLE uc REPLICA IDENTITY DEFAULT;",
    );
    let uc = point(&db, "uc by its index and back", "uc");
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("ALTER TABLE ub REPLICA IDENTITY DEFAULT");
    db.psql("UPDATE ub SET code = 'again' WHERE id = 40; DELETE FROM ub WHERE id = 1; UPDATE ua SET code = 'c5b' WHERE code = 'c5'");
    wait_confirmed(&db, 120);
    let (ua3, ub3) = (
        point(&db, "ua at the end", "ua"),
        point(&db, "ub by its primary key again", "ub"),
    );
    settle(&db, run);
    let history = |args: &[&str]| {
        ok(&run_within(
            waly().args(["history", "--archive", &archive]).args(args),
            120,
        ))
    };
    let check = |round: &str| {
        for (t, p) in [
            ("ua", &ua1),
            ("ua", &ua3),
            ("ub", &ub1),
            ("ub", &ub2),
            ("ub", &ub3),
            ("uc", &uc),
        ] {
            assert_restores(&db, &archive, t, p, &format!("{t}_{round}_{}", p.label.len()));
        }
        // Deleted in the index's time: by its primary key, the delete
        // carried only the old code.
        let h = history(&["ub", "3"]);
        assert!(h.contains("delete"), "{round}: history ub 3:\n{h}");
        // Given its key without an old row sent: it came from row 4.
        let h = history(&["ub", "40"]);
        assert!(
            h.contains("id: '4' → '40'") && h.contains("code: 'code4' → 'again'"),
            "{round}: history ub 40:\n{h}"
        );
        let h = history(&["ub", "2"]);
        assert!(
            h.contains("code: 'code2' → 'recoded'") && !h.contains("NULL"),
            "{round}: history ub 2:\n{h}"
        );
        let h = history(&["ub", "5"]);
        assert!(h.contains("key id=5 → id=50"), "{round}: history ub 5:\n{h}");
        // Without a primary key, the index is the key.
        let h = history(&["ua", "c5b"]);
        assert!(h.contains("key code=c5 → code=c5b"), "{round}: history ua c5b:\n{h}");
        let shown = ok(&run_within(
            waly().args(["show", "ua", "--archive", &archive, "--at", &ua3.at, "--key", "c4"]),
            120,
        ));
        assert!(
            shown.contains("c4") && shown.contains("40") && !shown.contains("c1"),
            "{round}: {shown}"
        );
        for t in ["ua", "ub", "uc"] {
            verify_against_source(&db, &archive, t);
        }
    };
    check("captured");
    ok(&run_within(
        waly().args(["export", "--archive", &archive, "--to", &dest]),
        300,
    ));
    let views = std::fs::read_to_string(format!("{dest}/_waly/as_of_duckdb.sql")).expect("the views");
    for (t, cols) in [("ua", "code, v, n::VARCHAR"), ("ub", "id::VARCHAR, code, v")] {
        let mut want: Vec<Vec<Option<String>>> = db
            .psql(&format!("SELECT {} FROM {t}", cols.replace("::VARCHAR", "")))
            .lines()
            .map(|l| l.split('|').map(|s| Some(s.to_string())).collect())
            .collect();
        want.sort();
        let got = crate::export::duckdb(&format!(
            "{views};\nSELECT {cols} FROM \"public.{t}_as_of\"(now()::TIMESTAMPTZ) ORDER BY ALL"
        ));
        assert_eq!(got, want, "the export's as-of query of {t}");
    }
    // While ub was keyed by its index, its changes do not name the
    // primary key the query partitions by: it refuses that time.
    let refused = crate::export::duckdb_result(&format!(
        "{views};\nSELECT * FROM \"public.ub_as_of\"(TIMESTAMPTZ '{}')",
        ub2.at
    ));
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("identified by another key")),
        "the as-of query of ub in its index's time: {refused:?}"
    );
    ok(&run_within(waly().args(["compact", "--archive", &archive]), 120));
    check("compacted");
    for d in [&dest, &archive] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A table whose history ended before the prune's window (dropped here)
/// holds nothing back: its last snapshot starts no point in the window,
/// so `waly prune` deletes it and the segments before the newer snapshots
/// the other tables start from, and every point in the window restores as
/// before; the export's as-of queries still load.
#[test]
fn prune_frees_what_a_table_dropped_before_the_window_held() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 10) i;
         CREATE TABLE d (id int PRIMARY KEY, v text); INSERT INTO d SELECT i, 'd' || i FROM generate_series(1, 10) i;",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE a SET v = 'early' WHERE id < 4; UPDATE d SET v = 'early' WHERE id < 4");
    db.psql("DROP TABLE d");
    db.psql("UPDATE a SET v = 'after the drop' WHERE id = 5");
    wait_confirmed(&db, 120);
    ok(&run_within(waly().args(["compact", "--archive", &archive]), 120));
    let snapshots = |dir: &str| -> Vec<String> {
        let mut s: Vec<String> = crate::archive::files_under(dir, "generations/00000001/snapshots")
            .into_iter()
            .filter_map(|f| f.split('/').next().map(str::to_string))
            .collect();
        s.dedup();
        s
    };
    let before = snapshots(&archive);
    assert_eq!(before.len(), 2, "the first snapshot and compact's: {before:?}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let window = std::time::Instant::now();
    db.psql("UPDATE a SET v = 'in the window' WHERE id = 6");
    let inside = point(&db, "inside the window", "a");
    settle(&db, run);
    let segments = |dir: &str| crate::archive::files_under(dir, "generations/00000001/segments").len();
    let segments_before = segments(&archive);
    let keep = format!("{:.3}s", window.elapsed().as_secs_f64() + 0.3);
    ok(&run_within(
        waly().args(["prune", "--archive", &archive, "--keep", &keep]),
        120,
    ));
    assert_eq!(
        snapshots(&archive),
        before[1..],
        "the snapshot only d started from is gone"
    );
    assert!(
        segments(&archive) < segments_before,
        "segments before compact's snapshot are gone: {} of {segments_before} left",
        segments(&archive)
    );
    assert_restores(&db, &archive, "a", &inside, "a_inside");
    ok(&run_within(waly().args(["verify", "--archive", &archive]), 120));
    verify_against_source(&db, &archive, "a");
    // The export's as-of queries load (d's files hold only the row saying
    // the archive does not know its rows: it gets no query) and answer.
    let dest = format!("{archive}-export");
    ok(&run_within(
        waly().args(["export", "--archive", &archive, "--to", &dest]),
        120,
    ));
    let views = std::fs::read_to_string(format!("{dest}/_waly/as_of_duckdb.sql")).expect("the as-of queries");
    assert!(!views.contains("public.d_as_of"), "{views}");
    let got = crate::export::duckdb(&format!(
        "{views};\nSELECT count(*), count(*) FILTER (WHERE v = 'in the window') FROM \"public.a_as_of\"(now()::TIMESTAMPTZ)"
    ));
    assert_eq!(got, [[Some("10".to_string()), Some("1".to_string())]]);
    let _ = std::fs::remove_dir_all(&dest);
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn keys_are_found_by_value_in_any_text_form_of_their_type() {
    let db = TestDb::new();
    // The server prints timestamps in New York time; the key's columns are
    // declared in another order than the table's.
    db.psql(&format!(
        "ALTER DATABASE {} SET timezone = 'America/New_York';
         CREATE TABLE ev (site text, at timestamptz, amount numeric, note text, PRIMARY KEY (at, site));
         INSERT INTO ev VALUES ('x', '2026-01-05 09:00:00+00', 1.50, 'a'), ('y', '2026-01-05 09:00:00+00', 2, 'b');
         CREATE TABLE price (amount numeric PRIMARY KEY, label text);
         INSERT INTO price VALUES (1.0, 'one');",
        db.name
    ));
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE ev SET note = 'a2' WHERE site = 'x'; UPDATE price SET label = 'uno'");
    settle(&db, run);
    let printed = db.psql("SELECT at::text FROM ev WHERE site = 'x'");
    assert_eq!(printed, "2026-01-05 04:00:00-05", "the server prints New York time");
    let history = |key: &str| run_within(waly().args(["history", "ev", key, "--archive", &archive, "--json"]), 60);
    for key in [
        format!("{printed},x"),
        "2026-01-05T09:00:00Z,x".to_string(),
        "2026-01-05 10:00:00+01:00,x".to_string(),
        "site=x,at=2026-01-05 09:00:00".to_string(),
    ] {
        let out = ok(&history(&key));
        let notes: Vec<String> = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["new"]["note"].to_string())
            .collect();
        assert_eq!(notes, ["\"a\"", "\"a2\""], "key {key}: {out}");
    }
    // numeric by value: 1 finds 1.0.
    let out = ok(&run_within(
        waly().args(["history", "price", "1", "--archive", &archive, "--json"]),
        60,
    ));
    assert_eq!(out.lines().count(), 2, "{out}");
    // show --key and restore --key take the same forms.
    let shown = ok(&run_within(
        waly().args([
            "show",
            "ev",
            "--archive",
            &archive,
            "--at",
            "now",
            "--key",
            "2026-01-05T09:00:00Z,y",
            "--format",
            "json",
        ]),
        60,
    ));
    assert!(shown.contains("\"note\":\"b\""), "{shown}");
    let restored = ok(&restore(
        &db,
        &archive,
        &[
            "ev",
            "--at",
            "now",
            "--key",
            "2026-01-05 10:00:00+01,x",
            "--output",
            "-",
            "--format",
            "jsonl",
        ],
    ));
    assert_eq!(restored.lines().count(), 1, "{restored}");
    assert!(restored.contains("a2"), "{restored}");
    // A value that is not of the column's type names the column and type.
    let out = history("not a time,x");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("column at (type timestamp with time zone)"), "{err}");
    // A key that matches nothing: history fails, show says so.
    let out = history("2026-01-06T09:00:00Z,x");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no row of public.ev with key"));
    let out = run_within(
        waly().args([
            "show",
            "ev",
            "--archive",
            &archive,
            "--at",
            "now",
            "--key",
            "2026-01-06T09:00:00Z,x",
        ]),
        60,
    );
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no row of public.ev has the key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&archive);
}

/// `waly verify --against-source` of `table`: the archive whole, and its
/// latest state the live table's.
pub(crate) fn verify_against_source(db: &TestDb, archive: &str, table: &str) {
    ok(&run_within(
        waly().args([
            "verify",
            "--archive",
            archive,
            "--against-source",
            &db.url(),
            "--table",
            table,
        ]),
        120,
    ));
}

/// Restores `table` at `p` into a new table and compares it with the
/// source's state then, column by column and row by row.
fn assert_restores(db: &TestDb, archive: &str, table: &str, p: &Point, into: &str) {
    ok(&restore(db, archive, &[table, "--at", &p.at, "--into", into]));
    let got = state(db, into);
    assert_eq!(got.1, p.state.1, "{} ({table}): columns", p.label);
    assert_eq!(got.0, p.state.0, "{} ({table}): rows", p.label);
}

#[test]
fn a_real_world_schema_and_its_migrations_restore_exactly_at_every_step() {
    let db = TestDb::new();
    db.psql(&format!(
        "ALTER DATABASE {} SET timezone = 'Europe/Berlin';
         CREATE EXTENSION citext; CREATE EXTENSION hstore;
         CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
         CREATE DOMAIN tags AS text[];
         CREATE TYPE addr AS (street text, zip int);
         CREATE TABLE account (
             id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
             mail email NOT NULL, handle citext, attrs hstore, feeling mood, labels tags,
             nums int[], prices numeric[], doc jsonb, search tsvector, blob bytea, uid uuid,
             big numeric, seen timestamptz, span int4range, spans int4multirange, home addr,
             price numeric(10,2), qty int,
             total int GENERATED ALWAYS AS (qty * 2) STORED);
         INSERT INTO account (mail, handle, attrs, feeling, labels, nums, prices, doc, search, blob, uid,
                              big, seen, span, spans, home, price, qty)
         SELECT 'u' || g || '@example.com', 'User' || g, hstore('k', g::text),
                (ARRAY['sad','ok','happy'])[1 + g % 3]::mood, ARRAY['a' || g, NULL, ''], ARRAY[g, -g],
                ARRAY[g * 1.5, 0.001], jsonb_build_object('n', g, 'nested', jsonb_build_array(g, 'x')),
                to_tsvector('english', 'the quick brown fox ' || g), decode(md5(g::text), 'hex'),
                md5(g::text)::uuid, 9007199254740993 + g, timestamptz '2026-03-29 01:30:00+00' + g * interval '7 minutes',
                int4range(g, g + 10), int4multirange(int4range(1, g + 2), int4range(g + 5, g + 9)),
                ROW('Main St ' || g, 10000 + g)::addr, g * 0.25, g % 7
           FROM generate_series(1, 200) g;
         CREATE TABLE payment (id int, paid date, amount numeric(12,2), PRIMARY KEY (id, paid)) PARTITION BY RANGE (paid);
         CREATE TABLE payment_01 PARTITION OF payment FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
         CREATE TABLE payment_02 PARTITION OF payment FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
         INSERT INTO payment SELECT g, date '2026-01-01' + (g % 59), g FROM generate_series(1, 120) g;",
        db.name
    ));
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    let churn = |table: &str, n: u32| {
        db.psql(&format!(
            "UPDATE {table} SET price = price + 1, doc = doc || jsonb_build_object('step', {n}) WHERE id % 5 = {m};
             DELETE FROM {table} WHERE id % 41 = {n};
             INSERT INTO {table} (mail, price, qty, uid) VALUES ('new{n}@example.com', {n}, 2, md5('new{n}')::uuid);",
            m = n % 5
        ))
    };
    // (table, point) pairs to restore afterwards.
    // The restore drill after every step: the archive's latest state equals
    // the live table.
    let drill = |table: &str| {
        wait_confirmed(&db, 120);
        verify_against_source(&db, &archive, table);
    };
    let mut points: Vec<(&str, Point)> = Vec::new();
    points.push(("account", point(&db, "start", "account")));
    drill("account");
    churn("account", 1);
    db.psql("ALTER TABLE account ADD COLUMN tier text DEFAULT 'basic'");
    points.push(("account", point(&db, "add a column with a default", "account")));
    drill("account");
    churn("account", 2);
    // A per-row default rewrites the table; waly snapshots it again.
    db.psql("ALTER TABLE account ADD COLUMN created timestamptz NOT NULL DEFAULT clock_timestamp()");
    wait_confirmed(&db, 120);
    points.push((
        "account",
        point(&db, "add a NOT NULL column with a volatile default", "account"),
    ));
    churn("account", 3);
    db.psql("ALTER TABLE account RENAME COLUMN handle TO username");
    points.push(("account", point(&db, "rename a column", "account")));
    drill("account");
    churn("account", 4);
    db.psql("ALTER TABLE account RENAME TO member");
    wait_confirmed(&db, 120);
    points.push(("member", point(&db, "rename the table", "member")));
    drill("member");
    churn("member", 5);
    db.psql("ALTER TABLE member DROP COLUMN attrs");
    points.push(("member", point(&db, "drop a column", "member")));
    drill("member");
    churn("member", 6);
    db.psql("ALTER TABLE member ALTER COLUMN price TYPE numeric(12,2)");
    points.push(("member", point(&db, "retype without USING", "member")));
    drill("member");
    churn("member", 7);
    db.psql("ALTER TABLE member ALTER COLUMN feeling TYPE text USING upper(feeling::text)");
    wait_confirmed(&db, 120);
    points.push(("member", point(&db, "retype with USING", "member")));
    drill("member");
    churn("member", 8);
    db.psql("ALTER TABLE member ALTER COLUMN tier SET DEFAULT 'gold'; INSERT INTO member (mail, uid) VALUES ('d@x', md5('d')::uuid)");
    points.push(("member", point(&db, "set a default", "member")));
    drill("member");
    db.psql("ALTER TABLE member ALTER COLUMN tier DROP DEFAULT; INSERT INTO member (mail, uid) VALUES ('e@x', md5('e')::uuid)");
    points.push(("member", point(&db, "drop a default", "member")));
    drill("member");
    db.psql("ALTER TABLE member DROP CONSTRAINT account_pkey, ADD PRIMARY KEY (uid)");
    points.push(("member", point(&db, "drop and add a primary key", "member")));
    drill("member");
    db.psql(
        "UPDATE member SET mail = 'pk' || id || '@example.com' WHERE id % 9 = 0; DELETE FROM member WHERE id % 43 = 0",
    );
    points.push(("member", point(&db, "changes under the new key", "member")));
    drill("member");
    db.psql("ALTER TABLE member REPLICA IDENTITY FULL; UPDATE member SET qty = qty + 1 WHERE id % 4 = 0");
    points.push(("member", point(&db, "replica identity full", "member")));
    drill("member");
    // Partitions: created, attached, detached.
    points.push(("payment", point(&db, "partitions at the start", "payment")));
    drill("payment");
    db.psql(
        "CREATE TABLE payment_03 PARTITION OF payment FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
         INSERT INTO payment VALUES (500, '2026-03-03', 5);
         UPDATE payment SET paid = '2026-03-09' WHERE id = 7;",
    );
    points.push(("payment", point(&db, "create a partition", "payment")));
    drill("payment");
    db.psql(
        "CREATE TABLE payment_04 (id int, paid date, amount numeric(12,2), PRIMARY KEY (id, paid));
         INSERT INTO payment_04 VALUES (600, '2026-04-02', 6), (601, '2026-04-20', 7);
         ALTER TABLE payment ATTACH PARTITION payment_04 FOR VALUES FROM ('2026-04-01') TO ('2026-05-01');",
    );
    wait_confirmed(&db, 120);
    points.push(("payment", point(&db, "attach a partition", "payment")));
    drill("payment");
    db.psql("ALTER TABLE payment DETACH PARTITION payment_01");
    wait_confirmed(&db, 120);
    db.psql("UPDATE payment SET amount = amount * 2 WHERE id % 3 = 0");
    points.push(("payment", point(&db, "detach a partition", "payment")));
    drill("payment");
    let before_drop = point(&db, "before dropping the table", "payment");
    db.psql("DROP TABLE payment");
    let after_drop = db.now_utc();
    wait_confirmed(&db, 120);
    settle(&db, run);

    for (i, (table, p)) in points.iter().enumerate() {
        assert_restores(&db, &archive, table, p, &format!("rw_{i}"));
    }
    assert_restores(&db, &archive, "payment", &before_drop, "rw_before_drop");
    // Gone tables say how they went.
    let out = restore(&db, &archive, &["payment", "--at", &after_drop, "--into", "rw_dropped"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DROP TABLE payment"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = restore(
        &db,
        &archive,
        &["account", "--at", &points[5].1.at, "--into", "rw_renamed"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RENAME TO member"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The restore drill on today's table is clean.
    ok(&run_within(
        waly().args([
            "verify",
            "--archive",
            &archive,
            "--against-source",
            &db.url(),
            "--table",
            "member",
        ]),
        120,
    ));
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn generated_columns_are_recomputed_by_restore_and_shown_by_every_reader() {
    let db = TestDb::new();
    // `label` reads a column the update sends and one it may leave out
    // (unchanged TOAST); `size` reads only the latter.
    let table = |name: &str, identity: &str| {
        format!(
            "CREATE TABLE {name} (id int PRIMARY KEY, price numeric, qty int,
                 total numeric GENERATED ALWAYS AS (price * qty) STORED,
                 body text,
                 size int GENERATED ALWAYS AS (length(body)) STORED,
                 label text GENERATED ALWAYS AS (qty::text || ':' || left(body, 3)) STORED);
             ALTER TABLE {name} REPLICA IDENTITY {identity};
             INSERT INTO {name} (id, price, qty, body) VALUES (1, 2.5, 2, 'abc');"
        )
    };
    db.psql(&table("line", "DEFAULT"));
    db.psql(&table("line_full", "FULL"));
    let pg18 = db.psql("SELECT current_setting('server_version_num')::int >= 180000") == "t";
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    let big = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g)";
    for t in ["line", "line_full"] {
        db.psql(&format!(
            "UPDATE {t} SET qty = 3 WHERE id = 1;
             INSERT INTO {t} (id, price, qty, body) VALUES (2, 1, 1, 'xyz'), (3, 1, 1, {big});
             UPDATE {t} SET price = 4 WHERE id = 3;"
        ));
    }
    // Many rows in one transaction: computed in batches.
    db.psql("INSERT INTO line (id, price, qty, body) SELECT g, g, 2, 'b' || g FROM generate_series(10, 1300) g");
    settle(&db, run);
    let history = |t: &str, key: &str| -> Vec<serde_json::Value> {
        let out = ok(&run_within(
            waly().args(["history", t, key, "--archive", &archive, "--json", "--full"]),
            60,
        ));
        out.lines().map(|l| serde_json::from_str(l).expect("json")).collect()
    };
    let shown = |t: &str| {
        run_within(
            waly().args(["show", t, "--archive", &archive, "--at", "now", "--format", "json"]),
            60,
        )
    };
    let check = |stage: &str| {
        // A restore recreates the columns as generated; the database computes them.
        for t in ["line", "line_full"] {
            ok(&restore(
                &db,
                &archive,
                &[t, "--at", "now", "--into", "copy", "--replace"],
            ));
            assert_eq!(state(&db, "copy"), state(&db, t), "{stage}: {t}");
        }
        assert_eq!(
            db.psql("SELECT attgenerated FROM pg_attribute WHERE attrelid = 'copy'::regclass AND attname = 'total'"),
            "s"
        );
        // History and show carry the values the database stored, streamed
        // (PostgreSQL 18) or computed by waly run on the source (before).
        let versions = history("line", "1");
        assert_eq!(versions[0]["new"]["total"], "5.0", "{stage}: {versions:?}");
        assert_eq!(versions[1]["new"]["total"], "7.5", "{stage}: {versions:?}");
        assert_eq!(versions[1]["new"]["label"], "3:abc", "{stage}: {versions:?}");
        let versions = history("line_full", "3");
        let last = &versions[versions.len() - 1]["new"];
        assert_eq!(last["total"], "4", "{stage}: {versions:?}");
        assert_eq!(last["size"], "12800", "{stage}: {versions:?}");
        assert_eq!(last["label"], "1:c4c", "{stage}: {versions:?}");
        let full = ok(&shown("line_full"));
        let expected = db.psql(
            "SELECT string_agg(id || ' ' || total || ' ' || size || ' ' || label, ',' ORDER BY id) FROM line_full",
        );
        let rows: Vec<serde_json::Value> = full.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        let got: Vec<String> = rows
            .iter()
            .map(|r| {
                let v = |c: &str| r[c].as_str().unwrap_or("NULL").to_string();
                format!("{} {} {} {}", v("id"), v("total"), v("size"), v("label"))
            })
            .collect();
        assert_eq!(got.join(","), expected, "{stage}");
        let many = ok(&run_within(
            waly().args([
                "show",
                "line",
                "--archive",
                &archive,
                "--at",
                "now",
                "--key",
                "1300",
                "--format",
                "json",
            ]),
            60,
        ));
        assert!(many.contains(r#""total":"2600""#), "{stage}: row 1300 computed: {many}");
        // Without REPLICA IDENTITY FULL, a generated column that reads an
        // unchanged TOASTed value and a sent one cannot be computed before
        // PostgreSQL 18: show refuses, saying how to fix it; history says
        // the value is unknown; the others are exact.
        let versions = history("line", "3");
        let last = &versions[versions.len() - 1]["new"];
        assert_eq!(last["total"], "4", "{stage}: {versions:?}");
        assert_eq!(last["size"], "12800", "{stage}: {versions:?}");
        if pg18 {
            assert_eq!(last["label"], "1:c4c", "{stage}: {versions:?}");
            ok(&shown("line"));
        } else {
            let label = last["label"].as_str().unwrap_or_default();
            assert!(
                label.starts_with('\0') && label.contains("REPLICA IDENTITY FULL"),
                "{stage}: {label}"
            );
            let refused = shown("line");
            assert!(!refused.status.success());
            let err = String::from_utf8_lossy(&refused.stderr);
            assert!(
                err.contains("label") && err.contains("REPLICA IDENTITY FULL"),
                "{stage}: {err}"
            );
            let human = ok(&run_within(
                waly().args(["history", "line", "3", "--archive", &archive]),
                60,
            ));
            assert!(human.contains("→ unknown (the generated column label"), "{human}");
        }
        ok(&run_within(
            waly().args(["verify", "--archive", &archive, "--against-source", &db.url()]),
            120,
        ));
    };
    check("as archived");
    // Compacting keeps every value, unknown ones as unknown.
    ok(&run_within(waly().args(["compact", "--archive", &archive]), 120));
    check("after compact");
    if pg18 {
        // A virtual column: never streamed, computed by waly run; a restore
        // recreates it as virtual.
        db.psql(
            "CREATE TABLE vline (id int PRIMARY KEY, qty int, twice int GENERATED ALWAYS AS (qty * 2) VIRTUAL);
                 INSERT INTO vline VALUES (1, 1);",
        );
        let run = spawn_run(&db, &archive);
        wait_streaming(&db, &run);
        db.psql("INSERT INTO vline VALUES (2, 5); UPDATE vline SET qty = 7 WHERE id = 1;");
        settle(&db, run);
        let versions = history("vline", "1");
        assert_eq!(versions[0]["new"]["twice"], "2", "{versions:?}");
        assert_eq!(versions[versions.len() - 1]["new"]["twice"], "14", "{versions:?}");
        ok(&restore(&db, &archive, &["vline", "--at", "now", "--into", "vcopy"]));
        assert_eq!(state(&db, "vcopy"), state(&db, "vline"));
        assert_eq!(
            db.psql("SELECT attgenerated FROM pg_attribute WHERE attrelid = 'vcopy'::regclass AND attname = 'twice'"),
            "v"
        );
    }
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn archives_written_before_ddl_capture_and_value_keys_keep_reading() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE old (id int PRIMARY KEY, email text, n int);
         INSERT INTO old SELECT g, 'e' || g, g FROM generate_series(1, 30) g;
         CREATE PUBLICATION waly FOR TABLE old;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE old SET n = n + 100 WHERE id % 3 = 0; DELETE FROM old WHERE id = 7;");
    db.psql("ALTER TABLE old ADD COLUMN tier text DEFAULT 'basic'");
    db.psql("UPDATE old SET email = 'x' WHERE id = 2");
    let at = point(&db, "the end", "old");
    settle(&db, run);
    let answers = |archive: &str| {
        let restored = ok(&restore(
            &db,
            archive,
            &["old", "--at", &at.at, "--output", "-", "--format", "jsonl"],
        ));
        let history = ok(&run_within(
            waly().args(["history", "old", "3", "--archive", archive, "--json"]),
            60,
        ));
        let shown = ok(&run_within(
            waly().args([
                "show",
                "old",
                "--at",
                &at.at,
                "--key",
                "2",
                "--archive",
                archive,
                "--format",
                "json",
            ]),
            60,
        ));
        (restored, history, shown)
    };
    let now = answers(&archive);
    // The same archive as an older waly wrote it: schema versions without
    // attnums or sources, index objects of format 2.
    for rel in crate::archive::files_under(&archive, "generations/00000001/schemas") {
        let f = format!("{archive}/generations/00000001/schemas/{rel}");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).expect("read")).expect("json");
        for k in ["source", "oid", "relkind", "owner", "replica_identity"] {
            v.as_object_mut().expect("object").remove(k);
        }
        for c in v["columns"].as_array_mut().expect("columns") {
            for k in ["attnum", "key_position", "default"] {
                c.as_object_mut().expect("column").remove(k);
            }
        }
        std::fs::write(&f, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
    }
    for rel in crate::archive::files_under(&archive, "index") {
        let f = format!("{archive}/index/{rel}");
        let mut b = std::fs::read(&f).expect("read");
        let n = b.len();
        b[n - 8..].copy_from_slice(b"WALYIDX2");
        std::fs::write(&f, b).expect("write");
    }
    assert_eq!(answers(&archive), now, "the same answers from the older archive");
    let v = run_within(waly().args(["verify", "--archive", &archive]), 120);
    assert_eq!(
        v.status.code(),
        Some(0),
        "stale index objects are harmless: {}",
        stdout_of(&v)
    );
    assert!(stdout_of(&v).contains("waly reindex"), "{}", stdout_of(&v));
    ok(&run_within(waly().args(["reindex", "--archive", &archive]), 120));
    assert_eq!(answers(&archive), now, "and after reindex");
    let _ = std::fs::remove_dir_all(&archive);
}

fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn a_ddl_transaction_replayed_after_a_crash_is_history_at_its_own_commit() {
    // The writer records a DDL's schema version (its object) as it reads
    // the DDL, and the transaction's commit marker with the next segment.
    // Killed in between, it reads the DDL again after the restart and finds
    // the version already there: the transaction must still be archived,
    // or readers do not count the version until the table's next change.
    // Found by the oracle (seed 157: restore acct --at now still had the
    // dropped column `n`).
    let db = TestDb::new();
    db.psql("CREATE TABLE d (id int PRIMARY KEY, a int, b int); INSERT INTO d VALUES (1, 1, 1);");
    let archive = archive_dir(&db);
    init(&db, &archive);
    let mut run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE d SET a = 2");
    wait_confirmed(&db, 120);
    // Segments can no longer be written; schema objects still can.
    let segments = format!("{archive}/generations/00000001/segments");
    if !crate::harness::freeze(&segments, true) {
        crate::harness::freeze(&segments, false);
        let _ = run.terminate(60);
        eprintln!("SKIPPED: this filesystem cannot make a directory unwritable for this user");
        return;
    }
    db.psql("ALTER TABLE d DROP COLUMN b");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !crate::archive::files_under(&archive, "generations/00000001/schemas")
        .iter()
        .any(|f| f.ends_with("000002.json"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no version 2: {}",
            run.stderr_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = run.child.kill(); // SIGKILL: the segment with the DDL's commit is never written
    let _ = run.child.wait();
    assert!(crate::harness::freeze(&segments, false), "the segments stay unwritable");
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    wait_confirmed(&db, 120);
    // No change of d since the DDL: its version is history all the same.
    let csv = ok(&restore(
        &db,
        &archive,
        &["d", "--at", "now", "--output", "-", "--format", "csv"],
    ));
    assert_eq!(csv.lines().next(), Some("\"id\",\"a\""), "{csv}");
    let log = crate::archive::log_json(&archive, &[]);
    assert_eq!(log.len(), 1, "the update only: {log:?}");
    settle(&db, run);
    // The replayed transaction is in the chain once: verify (exit 0) agrees.
    ok(&run_within(waly().args(["verify", "--archive", &archive]), 120));
    let _ = std::fs::remove_dir_all(&archive);
}

/// The guarantee: a restore holds every row the table had. A table
/// created while `waly run` runs starts empty only if waly's publication
/// published it from its creation on. One created outside a `FOR TABLE`
/// publication and added to it in the same transaction, after a row went
/// in (never streamed: it was not published then), starts from a snapshot
/// that holds it; one created in a schema the publication publishes (`FOR
/// TABLES IN SCHEMA`) is history from its creation.
#[test]
fn a_table_that_joins_the_publication_in_its_creating_transaction_keeps_the_rows_it_had() {
    let db = TestDb::new();
    db.psql(
        "CREATE SCHEMA app; CREATE TABLE keep (id int PRIMARY KEY); INSERT INTO keep VALUES (1);
         CREATE PUBLICATION waly FOR TABLE keep, TABLES IN SCHEMA app WITH (publish_via_partition_root = true);",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("BEGIN; CREATE TABLE k (id int PRIMARY KEY); INSERT INTO k VALUES (1); ALTER PUBLICATION waly ADD TABLE k; COMMIT;");
    db.psql("INSERT INTO k VALUES (2)");
    db.psql("CREATE TABLE app.n (id int PRIMARY KEY)");
    db.psql("INSERT INTO app.n VALUES (1)");
    settle(&db, run);
    for t in ["k", "app.n", "keep"] {
        verify_against_source(&db, &archive, t);
    }
    let h = ok(&run_within(
        waly().args(["history", "app.n", "1", "--archive", &archive, "--json"]),
        60,
    ));
    let first: serde_json::Value = serde_json::from_str(h.lines().next().unwrap_or("null")).expect("json");
    assert_eq!(first["op"], "insert", "{h}");
    let _ = std::fs::remove_dir_all(&archive);
}

/// The guarantee: every column is known by its attnum, whatever changes
/// it. A typed table (`OF` a composite type) changes with its type:
/// `ALTER TYPE ... ADD`, `RENAME` and `DROP ATTRIBUTE ... CASCADE` reach it
/// through the DDL trigger, a typed table created while `waly run` runs is
/// history from its creation, and one made an ordinary table (`NOT OF`)
/// goes on. Every reader agrees at every step.
#[test]
fn a_typed_table_follows_its_type_and_restores_exactly_at_every_step() {
    let db = TestDb::new();
    db.psql(
        "CREATE TYPE pt AS (id int, v text);
         CREATE TABLE tt OF pt (PRIMARY KEY (id));
         INSERT INTO tt VALUES (1, 'a'), (2, 'b');",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE tt SET v = 'a1' WHERE id = 1");
    let mut points = vec![point(&db, "before the type changes", "tt")];
    db.psql("ALTER TYPE pt ADD ATTRIBUTE w int CASCADE");
    db.psql("UPDATE tt SET w = 7 WHERE id = 2");
    points.push(point(&db, "attribute added", "tt"));
    db.psql("ALTER TYPE pt RENAME ATTRIBUTE v TO vv CASCADE");
    db.psql("UPDATE tt SET vv = 'b2' WHERE id = 2");
    points.push(point(&db, "attribute renamed", "tt"));
    db.psql("ALTER TYPE pt DROP ATTRIBUTE w CASCADE");
    points.push(point(&db, "attribute dropped", "tt"));
    db.psql("CREATE TABLE tt2 OF pt (PRIMARY KEY (id))");
    db.psql("INSERT INTO tt2 VALUES (5, 'x')");
    db.psql("ALTER TABLE tt NOT OF");
    db.psql("UPDATE tt SET vv = 'a3' WHERE id = 1");
    points.push(point(&db, "no longer typed", "tt"));
    settle(&db, run);
    for (i, p) in points.iter().enumerate() {
        assert_restores(&db, &archive, "tt", p, &format!("tt_back{i}"));
    }
    let history = |t: &str, key: &str| {
        ok(&run_within(
            waly().args(["history", t, key, "--archive", &archive, "--json"]),
            60,
        ))
    };
    let h = history("tt", "2");
    let last: serde_json::Value = serde_json::from_str(h.lines().last().unwrap_or("null")).expect("json");
    assert_eq!(last["new"]["vv"], "b2", "{h}");
    let h = history("tt2", "5");
    let first: serde_json::Value = serde_json::from_str(h.lines().next().unwrap_or("null")).expect("json");
    assert_eq!(first["op"], "insert", "{h}");
    for t in ["tt", "tt2"] {
        verify_against_source(&db, &archive, t);
    }
    ok(&run_within(waly().args(["verify", "--archive", &archive]), 120));
    let _ = std::fs::remove_dir_all(&archive);
}

/// The guarantee: every committed change is history, across a crash. A
/// table created while `waly run` runs, its key given in the same
/// transaction, is archived empty at that commit; killed before the
/// segment with the commit was written, the writer reads the transaction
/// again and finds that snapshot: the key given there needs no snapshot of
/// its own, and rows inserted meanwhile are `insert`s, not a snapshot's.
#[test]
fn a_created_tables_transaction_replayed_after_a_crash_keeps_its_history_from_creation() {
    let db = TestDb::new();
    db.psql("CREATE TABLE keep (id int PRIMARY KEY); INSERT INTO keep VALUES (1);");
    let archive = archive_dir(&db);
    init(&db, &archive);
    // Segments are written every 30 s: the writer is killed between its
    // snapshot of the new table and the segment with the commit.
    let mut run = crate::archive::spawn_run_as(
        &db,
        &db.url(),
        &archive,
        &["--flush-interval", "30s", "--idle-interval", "10m"],
    );
    wait_streaming(&db, &run);
    db.psql("BEGIN; CREATE TABLE fresh (id int NOT NULL, v text); ALTER TABLE fresh ADD PRIMARY KEY (id); COMMIT;");
    let snapshots_of_fresh = || {
        let dir = format!("{archive}/generations/00000001/snapshots");
        crate::archive::files_under(&dir, "")
            .iter()
            .filter(|f| f.ends_with("manifest.json"))
            .filter(|f| {
                std::fs::read_to_string(format!("{dir}/{f}"))
                    .expect("a manifest")
                    .contains("\"public.fresh\"")
            })
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(25);
    while snapshots_of_fresh() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot of fresh: {}",
            run.stderr_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = run.child.kill(); // SIGKILL: the segment with the commit is never written
    let _ = run.child.wait();
    let segments = crate::archive::files_under(&archive, "generations/00000001/segments");
    assert!(
        segments.iter().all(|f| !f.ends_with(".jsonl.zst")),
        "a segment was written before the kill: {segments:?}"
    );
    // Rows while the writer is down: decoded after the replayed creation.
    db.psql("INSERT INTO fresh VALUES (1, 'a'), (2, 'b')");
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE fresh SET v = 'a2' WHERE id = 1");
    settle(&db, run);
    assert_eq!(snapshots_of_fresh(), 1, "fresh snapshotted again after the replay");
    let out = ok(&run_within(
        waly().args(["history", "fresh", "1", "--archive", &archive, "--json"]),
        60,
    ));
    let ops: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["op"].to_string())
        .collect();
    assert_eq!(ops, ["\"insert\"", "\"update\""], "{out}");
    verify_against_source(&db, &archive, "fresh");
    ok(&run_within(waly().args(["verify", "--archive", &archive]), 120));
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn one_schema_version_per_shape_when_a_replay_meets_the_shape_before_a_crashed_session_did() {
    // Without the DDL trigger, a table's new shape is learned from pgoutput's
    // description, at the first transaction that has it. A session killed
    // after recording such a version for a later transaction (before
    // archiving either) left an object the replay meets only after an
    // earlier transaction of the same shape: that version belongs to the
    // earlier transaction, not a second version of the same shape. Found by
    // the kill -9 test on PostgreSQL 18 (versions 2 and 3 alike, 3 at the
    // earlier LSN). The crashed session's object is written here as it
    // would have left it.
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE item (id int PRIMARY KEY, v int); INSERT INTO item VALUES (1, 1);
         CREATE PUBLICATION waly FOR ALL TABLES;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE item SET v = 2");
    settle(&db, run);
    let dir = format!("{archive}/generations/00000001/schemas/public.item");
    let v1: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/000001.json")).expect("version 1")).expect("json");
    let later = waly::Lsn(db.current_lsn().0 + (64 << 20));
    let mut v2 = v1.clone();
    v2["version"] = 2.into();
    v2["source"] = "relation".into();
    v2["commit_lsn"] = later.to_string().into();
    v2["columns"].as_array_mut().expect("columns").push(
        serde_json::json!({"attnum": 3, "name": "c1", "type": "integer", "type_oid": 23,
            "type_modifier": -1, "key": false, "primary_key": false, "not_null": false}),
    );
    std::fs::write(format!("{dir}/000002.json"), v2.to_string()).expect("write version 2");
    db.psql("ALTER TABLE item ADD COLUMN c1 int; INSERT INTO item VALUES (2, 2, 3);");
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    settle(&db, run);
    let files = crate::archive::files_under(&archive, "generations/00000001/schemas/public.item");
    assert_eq!(files.len(), 2, "one version per shape: {files:?}");
    let moved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/000002.json")).expect("version 2")).expect("json");
    let at: waly::Lsn = moved["commit_lsn"].as_str().expect("an LSN").parse().expect("an LSN");
    assert!(
        at < later,
        "version 2 takes effect with the insert, at {at}, not at {later}"
    );
    let csv = ok(&restore(
        &db,
        &archive,
        &["item", "--at", "now", "--output", "-", "--format", "csv"],
    ));
    assert_eq!(csv, "\"id\",\"v\",\"c1\"\n\"1\",\"2\",\n\"2\",\"2\",\"3\"\n");
    ok(&run_within(waly().args(["verify", "--archive", &archive]), 120));
    let _ = std::fs::remove_dir_all(&archive);
}

/// A new archive of `db`, `waly run` streaming while `sql` runs, then
/// stopped once it is archived: what follows is decoded in its next session.
fn captured_then_down(db: &TestDb, sql: &str) -> String {
    let archive = archive_dir(db);
    init(db, &archive);
    let run = spawn_run(db, &archive);
    wait_streaming(db, &run);
    db.psql(sql);
    settle(db, run);
    archive
}

/// Found by the oracle test on PostgreSQL 17 (seed 12006): a change
/// decoded again after a restart, whose table later lost a column that a
/// generated column read (dropped with it, `CASCADE`), has that input
/// unknown (PostgreSQL did not send it); waly run computes generated values
/// on the source and put the unknown marker in the query, which refused it,
/// and waly run stopped. The generated value is unknown too, saying why,
/// and the capture goes on. The export gives both values as null, named in
/// `_unknown` (it used to stop at the integer column, and to export the
/// marker as a text column's value).
#[test]
fn a_generated_column_reading_a_value_that_could_not_be_sent_is_unknown_and_capture_goes_on() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE gen_item (id int PRIMARY KEY, n int, g int GENERATED ALWAYS AS (n * 2) STORED);
         INSERT INTO gen_item (id, n) VALUES (1, 1);",
    );
    let archive = captured_then_down(&db, "UPDATE gen_item SET n = 2 WHERE id = 1");
    // The sidecar is down: all of this is decoded in its next session.
    db.psql("INSERT INTO gen_item (id, n) VALUES (2, 7)");
    db.psql("ALTER TABLE gen_item DROP COLUMN n CASCADE");
    db.psql("INSERT INTO gen_item (id) VALUES (3)");
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    crate::archive::wait_logged_ids(&archive, "gen_item", &["1", "2", "3"], &run);
    settle(&db, run);
    let out = ok(&run_within(
        waly().args(["history", "gen_item", "2", "--archive", &archive, "--json"]),
        60,
    ));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().expect("a version")).expect("json");
    let (n, g) = (
        v["new"]["n"].as_str().unwrap_or_default(),
        v["new"]["g"].as_str().unwrap_or_default(),
    );
    // Known (PostgreSQL 15 sends what the row held), or unknown saying why
    // (16 and later): never another value.
    let known = (n, g) == ("7", "14");
    let unknown = n.starts_with("\0the column n was dropped later")
        && g.starts_with("\0the generated column g ")
        && g.contains("reads the column n, whose value is not known: the column n was dropped later");
    assert!(known || unknown, "item 2: n {n:?}, g {g:?}:\n{out}");
    let out = ok(&run_within(
        waly().args(["history", "gen_item", "3", "--archive", &archive, "--json"]),
        60,
    ));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().expect("a version")).expect("json");
    assert_eq!(v["new"], serde_json::json!({"id": "3"}), "{out}");
    // The export: an unknown value is null and named in `_unknown`, never
    // exported as a value (and the integer column does not stop it).
    let dest = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&dest);
    ok(&run_within(
        waly().args(["export", "--archive", &archive, "--to", &dest]),
        120,
    ));
    let rows = crate::export::duckdb(&format!(
        "SELECT n::text, g::text, _unknown::text FROM read_parquet('{dest}/*/*/*.parquet', union_by_name = true)
          WHERE id = 2 AND _op = 'insert'"
    ));
    let want_known = vec![vec![Some("7".to_string()), Some("14".to_string()), None]];
    let want_unknown = vec![vec![None, None, Some("[n, g]".to_string())]];
    assert_eq!(
        rows,
        if known { want_known } else { want_unknown },
        "the export of item 2"
    );
    let _ = std::fs::remove_dir_all(&dest);
    ok(&run_within(waly().args(["verify", "--archive", &archive]), 120));
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn changes_decoded_again_after_a_restart_keep_the_columns_of_their_time() {
    // PostgreSQL 16 and later describe a table, the first time a walsender
    // meets it, with the catalog of the moment the walsender started, also
    // for transactions committed before (decoded again after a restart, or
    // after the sidecar was down), and form their values with it. Found by
    // the oracle test on PostgreSQL 17: an insert made before a rename was
    // archived under the new name, as a version of its own; a column
    // retyped later came as a wrong value, one dropped later not at all.
    // The changes stay in the columns of their time, what PostgreSQL could
    // not send is unknown (never a wrong value), and each later version is
    // its DDL's.
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE item (id int PRIMARY KEY, note text, n int, qty int); INSERT INTO item VALUES (1, 'a', 1, 1);",
    );
    let archive = captured_then_down(&db, "UPDATE item SET note = 'b' WHERE id = 1");
    // The sidecar is down: all of this is decoded in its next session.
    db.psql("INSERT INTO item VALUES (2, 'before', 7, 5)");
    db.psql("ALTER TABLE item RENAME COLUMN note TO remark");
    db.psql("INSERT INTO item VALUES (3, 'between', 8, 6)");
    db.psql("ALTER TABLE item ADD COLUMN tier text DEFAULT 'basic'");
    db.psql("ALTER TABLE item DROP COLUMN n");
    db.psql("ALTER TABLE item ALTER COLUMN qty TYPE bigint");
    db.psql("INSERT INTO item (id, remark, qty) VALUES (4, 'after', 9)");
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    settle(&db, run);
    let schema = ok(&run_within(waly().args(["schema", "item", "--archive", &archive]), 60));
    assert_eq!(
        schema.lines().count(),
        5,
        "first version, rename, added column, dropped column, retype:\n{schema}"
    );
    assert!(
        schema.lines().skip(1).all(|l| l.contains("by ALTER TABLE")),
        "each later version is its DDL's:\n{schema}"
    );
    for (key, want) in [
        (
            "2",
            serde_json::json!({"id": "2", "note": "before", "n": "7", "qty": "5"}),
        ),
        (
            "3",
            serde_json::json!({"id": "3", "remark": "between", "n": "8", "qty": "6"}),
        ),
        (
            "4",
            serde_json::json!({"id": "4", "remark": "after", "qty": "9", "tier": "basic"}),
        ),
    ] {
        let out = ok(&run_within(
            waly().args(["history", "item", key, "--archive", &archive, "--json"]),
            60,
        ));
        let v: serde_json::Value = serde_json::from_str(out.lines().next().expect("a version")).expect("json");
        let got = v["new"].as_object().expect("a row");
        let want = want.as_object().expect("a row");
        let names = |o: &serde_json::Map<String, serde_json::Value>| o.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(got),
            names(want),
            "item {key}: the columns of its time:\n{out}\n{schema}"
        );
        for (name, w) in want {
            // The value, or (PostgreSQL 16 and later, for a column dropped
            // or retyped later) unknown, saying why: never another value.
            let g = got[name].as_str().unwrap_or_default();
            let unknown = g.starts_with('\0') && (g.contains("dropped later") || g.contains("retyped later"));
            assert!(
                g == w.as_str().unwrap_or_default() || (unknown && ["n", "qty"].contains(&name.as_str())),
                "item {key} {name}: {g:?}, not {w}:\n{out}"
            );
        }
    }
    ok(&run_within(waly().args(["verify", "--archive", &archive]), 120));
    let _ = std::fs::remove_dir_all(&archive);
}
