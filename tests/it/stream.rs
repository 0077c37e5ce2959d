//! The replication stream under pressure: stalled consumers, restarts, and
//! the rule that only the durable LSN is ever confirmed.

use crate::harness::TestDb;
use crate::{capture_with, Captured};
use std::time::Duration;
use waly::event::{Assembler, Event, Op};
use waly::source::{self, PgConn, ReplicationMessage, StartOptions};
use waly::Lsn;

/// 100k rows of ~200 bytes: far more than the stream's buffer and the
/// socket's, so a stalled consumer really does block the walsender.
fn big_table(db: &TestDb) -> String {
    db.psql("CREATE TABLE t (id int PRIMARY KEY, pad text); CREATE PUBLICATION waly FOR ALL TABLES");
    let slot = format!("s_{}", db.name);
    db.create_slot(&slot);
    db.psql("INSERT INTO t SELECT i, repeat(md5(i::text), 6) FROM generate_series(1, 100000) i");
    slot
}

/// Reads one message, stalls for three times `wal_sender_timeout`, then
/// drains to the transaction's commit; returns the number of inserts, or the
/// error that ended the stream.
async fn stall_then_drain(db: &TestDb, slot: &str, status_interval: Option<Duration>) -> Result<usize, String> {
    let mut info = db.conninfo();
    info.options = Some("-c wal_sender_timeout=2s".into());
    let conn = PgConn::connect(&info, true).await.map_err(|e| e.to_string())?;
    let opts = StartOptions {
        publications: vec!["waly".into()],
        status_interval,
        buffer_bytes: 64 << 10,
        ..StartOptions::default()
    };
    let mut stream = source::start_replication(conn, slot, Lsn::ZERO, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let first = stream.recv().await.ok_or("stream ended")?.map_err(|e| e.to_string())?;
    let mut asm = Assembler::new();
    let mut events = Vec::new();
    if let ReplicationMessage::XLogData { wal_start, data, .. } = first {
        asm.push(wal_start, &data, &mut events).map_err(|e| e.to_string())?;
    }
    // The stall itself is the scenario: three times wal_sender_timeout.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.recv())
            .await
            .map_err(|_| "no end within 60s".to_string())?
            .ok_or("stream ended")?
            .map_err(|e| e.to_string())?;
        if let ReplicationMessage::XLogData { wal_start, data, .. } = msg {
            let before = events.len();
            asm.push(wal_start, &data, &mut events).map_err(|e| e.to_string())?;
            // The slot sees one transaction: its commit is the end. (Other
            // tests write WAL too, so `endpos` may lie beyond it.)
            if events[before..].iter().any(|e| matches!(e, Event::Commit { .. })) {
                break;
            }
        }
    }
    stream.shutdown().await.map_err(|e| e.to_string())?;
    Ok(events
        .iter()
        .filter(|e| matches!(e, Event::Change(c) if c.op == Op::Insert))
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_stalled_past_wal_sender_timeout_keeps_its_connection() {
    let db = TestDb::new();
    let slot = big_table(&db);
    let got = stall_then_drain(&db, &slot, None).await;
    assert_eq!(
        got,
        Ok(100_000),
        "every row arrives after the stall, on the same connection"
    );
}

/// The control experiment: the same stall without timely status updates is
/// killed by the walsender, which shows the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_status_updates_the_same_stall_is_disconnected() {
    let db = TestDb::new();
    let slot = big_table(&db);
    let got = stall_then_drain(&db, &slot, Some(Duration::from_secs(60))).await;
    assert!(got.is_err(), "expected the walsender to time out, got {got:?}");
}

fn confirmed_flush(db: &TestDb, slot: &str) -> String {
    db.psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
}

fn five_transactions(db: &TestDb) -> (String, Captured, Lsn) {
    db.psql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION waly FOR ALL TABLES");
    let slot = format!("s_{}", db.name);
    db.create_slot(&slot);
    for i in 1..=5 {
        db.psql(&format!("INSERT INTO t VALUES ({i})"));
    }
    let end = db.current_lsn();
    (slot, Captured::default(), end)
}

fn inserted_ids(cap: &Captured) -> Vec<String> {
    cap.changes()
        .iter()
        .map(|c| {
            c.new
                .as_ref()
                .and_then(|r| r.get("id").cloned().flatten())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_clean_shutdown_redelivers_exactly_the_unconfirmed() {
    let db = TestDb::new();
    let (slot, _, end) = five_transactions(&db);
    // First pass: everything arrives, but only the first three are "durable".
    let first = capture_with(&db, &slot, "waly", end, None).await;
    let commits = first.commits();
    assert_eq!(commits.len(), 5);
    let third_end = commits[2].1;
    let again = capture_with(&db, &slot, "waly", end, Some(third_end)).await;
    assert_eq!(again.commits(), commits, "nothing was confirmed by the first pass");
    assert_eq!(
        confirmed_flush(&db, &slot),
        third_end.to_string(),
        "the slot is confirmed exactly to the durable LSN, not to what was received"
    );
    let rest = capture_with(&db, &slot, "waly", end, None).await;
    assert_eq!(inserted_ids(&rest), ["4", "5"]);
    assert_eq!(rest.commits(), commits[3..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_abrupt_disconnect_redelivers_exactly_the_unconfirmed() {
    let db = TestDb::new();
    let (slot, _, end) = five_transactions(&db);
    let mut stream = crate::start_stream(&db, &slot, "waly").await;
    let mut asm = Assembler::new();
    let mut events = Vec::new();
    let mut ends = Vec::new();
    while ends.len() < 5 {
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.recv())
            .await
            .expect("data within 30s")
            .expect("open")
            .expect("no error");
        if let ReplicationMessage::XLogData { wal_start, data, .. } = msg {
            events.clear();
            asm.push(wal_start, &data, &mut events).expect("decodes");
            for e in &events {
                if let Event::Commit { end_lsn, .. } = e {
                    ends.push(*end_lsn);
                }
            }
        }
    }
    stream.confirm(ends[1]);
    stream.report_now();
    db.wait_for(
        &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        &ends[1].to_string(),
        10,
    );
    // A crash: no final status update, no CopyDone.
    drop(stream);
    db.wait_for(
        &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        "f",
        10,
    );
    let rest = capture_with(&db, &slot, "waly", end, None).await;
    assert_eq!(inserted_ids(&rest), ["3", "4", "5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_publication_and_slot_names_are_quoted_not_executed() {
    let db = TestDb::new();
    let publication = r#"Pub "x"; DROP TABLE t; --"#;
    db.psql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION {} FOR ALL TABLES",
        waly::source::quote::ident(publication).expect("quotes")
    ));
    let mut conn = PgConn::connect(&db.conninfo(), true).await.expect("connect");
    waly::tail::preflight(&mut conn, publication)
        .await
        .expect("the publication is found by its exact name");
    // A slot name that could change the command is refused before sending.
    let bad_slot = source::create_slot(
        &mut conn,
        "x\" LOGICAL pgoutput; --",
        true,
        source::SnapshotAction::Nothing,
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(bad_slot.contains("invalid replication slot name"), "{bad_slot}");
    let slot = format!("s_{}", db.name);
    source::create_slot(&mut conn, &slot, false, source::SnapshotAction::Nothing)
        .await
        .expect("slot");
    conn.close().await;
    db.psql("INSERT INTO t VALUES (1)");
    let end = db.current_lsn();
    let cap = capture_with(&db, &slot, publication, end, None).await;
    assert_eq!(inserted_ids(&cap), ["1"]);
    assert_eq!(db.psql("SELECT count(*) FROM t"), "1", "the table is still there");
}

/// The groundwork of guarantee 4: the exported snapshot plus the slot's
/// changes is exactly the table, with nothing missed or seen twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_snapshot_and_slot_changes_meet_exactly() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);
         CREATE PUBLICATION waly FOR ALL TABLES",
    );
    let mut repl = PgConn::connect(&db.conninfo(), true).await.expect("connect");
    let slot = format!("s_{}", db.name);
    let created = source::create_slot(&mut repl, &slot, false, source::SnapshotAction::Export)
        .await
        .expect("slot");
    let snapshot = created.snapshot_name.clone().expect("an exported snapshot");
    // Writes after the slot's consistent point: in the stream, not the snapshot.
    db.psql("INSERT INTO t VALUES (101); DELETE FROM t WHERE id = 1;");
    let sql = source::tls::connect_sql(&db.conninfo()).await.expect("sql connection");
    sql.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
        source::quote::literal(&snapshot).expect("quotes")
    ))
    .await
    .expect("snapshot imported");
    let row = sql
        .query_one("SELECT count(*), min(id), max(id) FROM t", &[])
        .await
        .expect("query");
    let (n, lo, hi): (i64, i32, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (n, lo, hi),
        (100, 1, 100),
        "the snapshot is the state at the consistent point"
    );
    sql.batch_execute("COMMIT").await.expect("commit");
    repl.close().await;
    let end = db.current_lsn();
    let cap = capture_with(&db, &slot, "waly", end, None).await;
    let ops: Vec<_> = cap.changes().iter().map(|c| c.op).collect();
    assert_eq!(ops, [Op::Insert, Op::Delete], "exactly the later writes");
    assert!(cap.changes()[0].commit_lsn >= created.consistent_point);
}
