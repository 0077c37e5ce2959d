//! Every kind of change arrives decoded with the right values.

use crate::capture_sql;
use crate::harness::TestDb;
use waly::event::{Change, Op, Row};

fn val<'a>(r: &'a Option<Row>, col: &str) -> Option<&'a str> {
    r.as_ref()
        .and_then(|r| r.get(col))
        .unwrap_or_else(|| panic!("column {col} missing from {r:?}"))
        .as_deref()
}

fn ops(changes: &[&Change]) -> Vec<(String, Op)> {
    changes.iter().map(|c| (c.table.to_string(), c.op)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_update_delete_and_key_change_arrive_with_their_values() {
    let db = TestDb::new();
    db.psql("CREATE TABLE users (id int PRIMARY KEY, name text, note text); CREATE PUBLICATION waly FOR ALL TABLES");
    let cap = capture_sql(
        &db,
        "waly",
        "INSERT INTO users VALUES (1, 'alice', NULL), (2, '', 'x');
         UPDATE users SET name = 'alicia' WHERE id = 1;
         UPDATE users SET id = 10 WHERE id = 2;
         DELETE FROM users WHERE id = 1;",
    )
    .await;
    let c = cap.changes();
    assert_eq!(c.len(), 5, "{c:#?}");
    assert_eq!(
        c.iter().map(|c| c.op).collect::<Vec<_>>(),
        [Op::Insert, Op::Insert, Op::Update, Op::Update, Op::Delete]
    );
    // Insert: values in text form; NULL and '' stay distinct.
    assert_eq!(&*c[0].table, "public.users");
    assert_eq!(val(&c[0].new, "id"), Some("1"));
    assert_eq!(val(&c[0].new, "name"), Some("alice"));
    assert_eq!(val(&c[0].new, "note"), None);
    assert_eq!(val(&c[1].new, "name"), Some(""));
    assert_eq!(val(&c[0].key, "id"), Some("1"));
    assert!(c[0].old.is_none());
    // Both inserts are one transaction: same commit LSN, seq 0 and 1.
    assert_eq!(c[0].commit_lsn, c[1].commit_lsn);
    assert_eq!((c[0].seq, c[1].seq), (0, 1));
    assert!(c[0].lsn < c[1].lsn);
    // Plain update under REPLICA IDENTITY DEFAULT: no old tuple.
    assert_eq!(val(&c[2].new, "name"), Some("alicia"));
    assert!(c[2].old.is_none());
    // A key change sends the old key.
    assert_eq!(val(&c[3].key, "id"), Some("10"));
    assert_eq!(val(&c[3].old, "id"), Some("2"));
    assert_eq!(c[3].old.as_ref().map(|r| r.0.len()), Some(1), "old key only");
    // Delete carries the key of the deleted row.
    assert_eq!(val(&c[4].key, "id"), Some("1"));
    assert!(c[4].new.is_none());
    // Four separate transactions in commit order.
    let commits = cap.commits();
    assert_eq!(commits.len(), 4);
    assert!(commits.windows(2).all(|w| w[0].0 < w[1].0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_of_several_tables_and_cascade_names_every_table() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent);
         INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
         CREATE PUBLICATION waly FOR ALL TABLES",
    );
    let cap = capture_sql(&db, "waly", "TRUNCATE a, b; TRUNCATE parent CASCADE;").await;
    let c = cap.changes();
    let got: Vec<_> = c.iter().map(|c| (&*c.table, c.op)).collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(c
        .iter()
        .all(|c| c.op == Op::Truncate && c.key.is_none() && c.new.is_none()));
    let mut t1: Vec<_> = c
        .iter()
        .filter(|x| x.commit_lsn == c[0].commit_lsn)
        .map(|x| &*x.table)
        .collect();
    t1.sort();
    assert_eq!(t1, ["public.a", "public.b"]);
    let mut t2: Vec<_> = c
        .iter()
        .filter(|x| x.commit_lsn != c[0].commit_lsn)
        .map(|x| &*x.table)
        .collect();
    t2.sort();
    assert_eq!(
        t2,
        ["public.child", "public.parent"],
        "CASCADE names the referencing table too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_touching_several_tables_shares_one_identity() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric); CREATE TABLE lines (id int PRIMARY KEY, qty int);
         CREATE PUBLICATION waly FOR ALL TABLES",
    );
    let cap = capture_sql(
        &db,
        "waly",
        "BEGIN; INSERT INTO orders VALUES (1, 9.99); INSERT INTO lines VALUES (1, 3), (2, 4);
         UPDATE orders SET total = 19.98 WHERE id = 1; COMMIT;",
    )
    .await;
    let c = cap.changes();
    assert_eq!(
        ops(&c),
        [
            ("public.orders".to_string(), Op::Insert),
            ("public.lines".to_string(), Op::Insert),
            ("public.lines".to_string(), Op::Insert),
            ("public.orders".to_string(), Op::Update)
        ]
    );
    assert!(c.iter().all(|x| x.commit_lsn == c[0].commit_lsn && x.xid == c[0].xid));
    assert_eq!(c.iter().map(|x| x.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(val(&c[3].new, "total"), Some("19.98"));
    let commits = cap.commits();
    assert_eq!(commits.len(), 1);
    assert_eq!(
        commits[0].0, c[0].commit_lsn,
        "commit_lsn comes from Begin and matches Commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_identity_sends_what_it_promises() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE d (id int PRIMARY KEY, v text);
         CREATE TABLE f (id int PRIMARY KEY, v text); ALTER TABLE f REPLICA IDENTITY FULL;
         CREATE TABLE i (id int NOT NULL, code text NOT NULL, v text); CREATE UNIQUE INDEX i_code ON i (code);
         ALTER TABLE i REPLICA IDENTITY USING INDEX i_code;
         CREATE TABLE n (id int, v text); ALTER TABLE n REPLICA IDENTITY NOTHING;
         INSERT INTO d VALUES (1, 'a'); INSERT INTO f VALUES (1, 'a'); INSERT INTO i VALUES (1, 'c1', 'a');
         CREATE PUBLICATION waly FOR ALL TABLES",
    );
    let slot = format!("s_{}", db.name);
    db.create_slot(&slot);
    db.psql(
        "UPDATE d SET v = 'b'; DELETE FROM d;
         UPDATE f SET v = 'b'; DELETE FROM f;
         UPDATE i SET v = 'b'; UPDATE i SET code = 'c2'; DELETE FROM i;
         INSERT INTO n VALUES (1, 'a');",
    );
    // With NOTHING, an UPDATE on a published table fails on the primary:
    // the hazard `waly init` will guard against.
    let err = db
        .try_psql("UPDATE n SET v = 'b'")
        .expect_err("update without identity fails");
    assert!(err.contains("does not have a replica identity"), "{err}");
    let end = db.current_lsn();
    let cap = crate::capture_with(&db, &slot, "waly", end, None).await;
    let c = cap.changes();
    let by = |t: &str| c.iter().filter(|x| &*x.table == t).copied().collect::<Vec<_>>();

    let d = by("public.d");
    assert!(d[0].old.is_none(), "DEFAULT sends no old row on a plain update");
    assert_eq!(val(&d[0].key, "id"), Some("1"));
    assert_eq!(
        d[1].old.as_ref().map(|r| r.0.len()),
        Some(1),
        "DEFAULT delete sends the key only"
    );

    let f = by("public.f");
    assert_eq!(val(&f[0].old, "v"), Some("a"), "FULL sends the whole old row");
    assert_eq!(val(&f[0].new, "v"), Some("b"));
    assert_eq!(val(&f[1].old, "v"), Some("b"));
    assert_eq!(val(&f[1].old, "id"), Some("1"));

    let i = by("public.i");
    assert_eq!(i.len(), 3);
    assert_eq!(
        val(&i[0].key, "code"),
        Some("c1"),
        "USING INDEX keys on the index columns"
    );
    assert_eq!(i[0].key.as_ref().map(|k| k.0.len()), Some(1));
    assert!(i[0].old.is_none());
    assert_eq!(val(&i[1].old, "code"), Some("c1"), "index key change sends the old key");
    assert_eq!(val(&i[1].key, "code"), Some("c2"));
    assert_eq!(val(&i[2].key, "code"), Some("c2"));

    let n = by("public.n");
    assert_eq!(n.len(), 1, "only the insert reaches the stream");
    assert!(n[0].key.is_none(), "NOTHING has no key");
    assert_eq!(val(&n[0].new, "v"), Some("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_marked_not_resent() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT 1, 't', string_agg(md5(i::text), '') FROM generate_series(1, 32768) i;
         CREATE PUBLICATION waly FOR ALL TABLES",
    );
    let body_len: usize = db.psql("SELECT length(body) FROM docs").parse().expect("a number");
    assert_eq!(body_len, 1 << 20, "a 1 MB value");
    let cap = capture_sql(
        &db,
        "waly",
        "UPDATE docs SET title = 'new' WHERE id = 1; UPDATE docs SET body = 'short' WHERE id = 1;",
    )
    .await;
    let c = cap.changes();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].unchanged_toast.iter().map(|s| &**s).collect::<Vec<_>>(), ["body"]);
    assert!(
        c[0].new.as_ref().is_some_and(|r| r.get("body").is_none()),
        "the unchanged value is not sent"
    );
    assert_eq!(val(&c[0].new, "title"), Some("new"));
    assert!(c[1].unchanged_toast.is_empty());
    assert_eq!(val(&c[1].new, "body"), Some("short"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_text_and_special_characters_survive() {
    let db = TestDb::new();
    db.psql("CREATE TABLE t (id int PRIMARY KEY, s text, j jsonb, a text[]); CREATE PUBLICATION waly FOR ALL TABLES");
    let cap = capture_sql(
        &db,
        "waly",
        r#"INSERT INTO t VALUES (1, 'héllo wörld — 日本語 🎉 "q" ''s'' \n', '{"k": "ü"}', ARRAY['a,b', NULL, '"x"'])"#,
    )
    .await;
    let c = cap.changes();
    assert_eq!(val(&c[0].new, "s"), Some(r#"héllo wörld — 日本語 🎉 "q" 's' \n"#));
    assert_eq!(val(&c[0].new, "j"), Some(r#"{"k": "ü"}"#));
    assert_eq!(val(&c[0].new, "a"), Some(r#"{"a,b",NULL,"\"x\""}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_messages_arrive_transactional_or_not() {
    let db = TestDb::new();
    db.psql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION waly FOR ALL TABLES");
    let cap = capture_sql(
        &db,
        "waly",
        r#"BEGIN;
           SELECT pg_logical_emit_message(true, 'waly', '{"op":"CREATE_ACCOUNT","actor":"alice"}');
           INSERT INTO t VALUES (1);
           COMMIT;
           SELECT pg_logical_emit_message(false, 'other', 'outside');"#,
    )
    .await;
    let m = cap.messages();
    assert_eq!(m.len(), 2, "{m:#?}");
    assert_eq!(m[0].prefix, "waly");
    assert_eq!(m[0].content, r#"{"op":"CREATE_ACCOUNT","actor":"alice"}"#);
    assert!(m[0].transactional);
    let c = cap.changes();
    let t = m[0].txn.expect("attached to its transaction");
    assert_eq!(
        (t.commit_lsn, t.xid, t.commit_time),
        (c[0].commit_lsn, c[0].xid, c[0].commit_time)
    );
    assert_eq!(
        (t.seq, c[0].seq),
        (0, 1),
        "message and change share the transaction's ordinals"
    );
    assert_eq!(m[1].prefix, "other");
    assert_eq!(m[1].content, "outside");
    assert!(!m[1].transactional);
    assert!(m[1].txn.is_none());
}
