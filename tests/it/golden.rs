//! Golden fixtures: raw pgoutput messages captured from a real server, kept
//! in `testdata/pgoutput/`, and what the decoder must make of them.
//!
//! `cargo test --test it capture_golden_fixtures -- --ignored` captures them
//! afresh (then review the diff of `session.expected` before committing).

use crate::harness::TestDb;
use std::fmt::Write as _;
use std::path::PathBuf;
use waly::pgoutput::{self, Message, OldKind, TupleData};
use waly::source::ReplicationMessage;
use waly::Lsn;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/pgoutput")
}

/// Reads `session.bin`: records of `[u64 wal_start][u32 len][payload]`.
fn read_session() -> Vec<(Lsn, bytes::Bytes)> {
    let raw = std::fs::read(dir().join("session.bin")).expect("session.bin");
    let mut out = Vec::new();
    let mut rest = &raw[..];
    while !rest.is_empty() {
        let lsn = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        out.push((Lsn(lsn), bytes::Bytes::copy_from_slice(&rest[12..12 + len])));
        rest = &rest[12 + len..];
    }
    out
}

fn render(session: &[(Lsn, bytes::Bytes)]) -> String {
    let mut s = String::new();
    for (lsn, data) in session {
        let _ = writeln!(s, "{lsn} {:?}", pgoutput::decode(data));
    }
    s
}

/// The kinds of message and tuple data a session must contain to be a
/// useful fixture.
fn coverage(session: &[(Lsn, bytes::Bytes)]) -> Vec<&'static str> {
    let mut seen = std::collections::BTreeSet::new();
    let tuple = |t: &[TupleData], seen: &mut std::collections::BTreeSet<&'static str>| {
        for d in t {
            seen.insert(match d {
                TupleData::Null => "n",
                TupleData::UnchangedToast => "u",
                TupleData::Text(_) => "t",
                TupleData::Binary(_) => "b",
            });
        }
    };
    for (_, data) in session {
        match pgoutput::decode(data).expect("fixtures decode") {
            Message::Begin(_) => seen.insert("Begin"),
            Message::Commit(_) => seen.insert("Commit"),
            Message::Origin { .. } => seen.insert("Origin"),
            Message::Relation(_) => seen.insert("Relation"),
            Message::Type { .. } => seen.insert("Type"),
            Message::Insert { new, .. } => {
                tuple(&new, &mut seen);
                seen.insert("Insert")
            }
            Message::Update { old, new, .. } => {
                tuple(&new, &mut seen);
                match old.map(|o| o.kind) {
                    Some(OldKind::Key) => seen.insert("Update K"),
                    Some(OldKind::Full) => seen.insert("Update O"),
                    None => seen.insert("Update N"),
                }
            }
            Message::Delete { old, .. } => match old.kind {
                OldKind::Key => seen.insert("Delete K"),
                OldKind::Full => seen.insert("Delete O"),
            },
            Message::Truncate { .. } => seen.insert("Truncate"),
            Message::LogicalMessage(m) if m.transactional => seen.insert("Message transactional"),
            Message::LogicalMessage(_) => seen.insert("Message non-transactional"),
        };
    }
    seen.into_iter().collect()
}

const EXPECTED_COVERAGE: [&str; 17] = [
    "Begin",
    "Commit",
    "Delete K",
    "Delete O",
    "Insert",
    "Message non-transactional",
    "Message transactional",
    "Origin",
    "Relation",
    "Truncate",
    "Type",
    "Update K",
    "Update N",
    "Update O",
    "n",
    "t",
    "u",
];

#[test]
fn golden_fixtures_decode_exactly_as_recorded() {
    let session = read_session();
    assert_eq!(coverage(&session), EXPECTED_COVERAGE);
    let expected = std::fs::read_to_string(dir().join("session.expected")).expect("session.expected");
    assert_eq!(render(&session), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "captures fresh fixtures from the server; run with --ignored, then review the diff"]
async fn capture_golden_fixtures() {
    let db = TestDb::new();
    db.psql(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE k (id int PRIMARY KEY, m mood, note text, body text);
         ALTER TABLE k ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE f (id int PRIMARY KEY, v text); ALTER TABLE f REPLICA IDENTITY FULL;
         CREATE PUBLICATION waly FOR ALL TABLES;
         SELECT pg_replication_origin_create('upstream');",
    );
    let slot = format!("s_{}", db.name);
    db.create_slot(&slot);
    db.psql(
        "INSERT INTO k SELECT 1, 'ok', NULL, string_agg(md5(i::text), '') FROM generate_series(1, 100) i;
         UPDATE k SET note = 'touched' WHERE id = 1;
         UPDATE k SET id = 2 WHERE id = 1;
         DELETE FROM k WHERE id = 2;
         INSERT INTO f VALUES (1, 'a'); UPDATE f SET v = 'b'; DELETE FROM f;
         BEGIN; SELECT pg_logical_emit_message(true, 'waly', '{\"op\":\"demo\"}'); INSERT INTO f VALUES (9, 'ü'); COMMIT;
         SELECT pg_logical_emit_message(false, 'waly', 'not transactional');
         SELECT pg_replication_origin_session_setup('upstream');
         BEGIN; SELECT pg_replication_origin_xact_setup('0/ABCDEF', now()); INSERT INTO f VALUES (10, 'from elsewhere'); COMMIT;
         SELECT pg_replication_origin_session_reset();
         TRUNCATE k, f;",
    );
    let end = db.current_lsn();
    let mut stream = crate::start_stream(&db, &slot, "waly").await;
    let mut session = Vec::new();
    loop {
        match stream.recv().await.expect("open").expect("no error") {
            ReplicationMessage::XLogData { wal_start, data, .. } => {
                let commit_end = match pgoutput::decode(&data) {
                    Ok(Message::Commit(c)) => Some(Lsn(c.end_lsn)),
                    _ => None,
                };
                session.push((wal_start, data));
                if commit_end.is_some_and(|e| e >= end) {
                    break;
                }
            }
            ReplicationMessage::Keepalive { wal_end, .. } if wal_end >= end => break,
            ReplicationMessage::Keepalive { .. } => {}
        }
    }
    stream.shutdown().await.expect("shutdown");
    assert_eq!(coverage(&session), EXPECTED_COVERAGE);
    let mut raw = Vec::new();
    for (lsn, data) in &session {
        raw.extend_from_slice(&lsn.as_u64().to_be_bytes());
        raw.extend_from_slice(&(data.len() as u32).to_be_bytes());
        raw.extend_from_slice(data);
    }
    std::fs::create_dir_all(dir()).expect("testdata dir");
    std::fs::write(dir().join("session.bin"), raw).expect("write session.bin");
    std::fs::write(dir().join("session.expected"), render(&session)).expect("write session.expected");
}
