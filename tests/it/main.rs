//! Integration tests against a real PostgreSQL (see `harness`). One binary,
//! so the cluster starts once.

mod archive;
mod auth;
mod bad_input;
mod decode;
mod encrypt;
pub(crate) mod export;
mod golden;
mod harness;
mod history;
mod messages;
mod operate;
mod oracle_check;
mod oracle_gen;
mod restore;
mod s3;
mod schemas;
mod stream;
mod synth;
mod tail_cli;
mod verify;

use harness::TestDb;
use std::time::Duration;
use waly::event::{Assembler, Change, Event, LogicalMessage};
use waly::source::{self, PgConn, ReplicationMessage, StartOptions};
use waly::Lsn;

/// Starts streaming `slot` of `db` for `publication`, from where it was confirmed.
pub async fn start_stream(db: &TestDb, slot: &str, publication: &str) -> source::ReplicationStream {
    let conn = PgConn::connect(&db.conninfo(), true).await.expect("connect");
    let opts = StartOptions {
        publications: vec![publication.to_string()],
        ..StartOptions::default()
    };
    source::start_replication(conn, slot, Lsn::ZERO, &opts)
        .await
        .expect("start replication")
}

/// Everything decoded from a slot up to `endpos`.
#[derive(Debug, Default)]
pub struct Captured {
    pub events: Vec<Event>,
}

impl Captured {
    pub fn changes(&self) -> Vec<&Change> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Change(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    pub fn messages(&self) -> Vec<&LogicalMessage> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// `(commit_lsn, end_lsn)` of every committed transaction, in order.
    pub fn commits(&self) -> Vec<(Lsn, Lsn)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Commit {
                    commit_lsn, end_lsn, ..
                } => Some((*commit_lsn, *end_lsn)),
                _ => None,
            })
            .collect()
    }
}

/// Streams `slot` of `db` from where it was confirmed until the server's
/// position passes `endpos`, and returns the events. The stream is shut down
/// cleanly, confirming `confirm_up_to` (or nothing).
pub async fn capture_with(
    db: &TestDb,
    slot: &str,
    publication: &str,
    endpos: Lsn,
    confirm_up_to: Option<Lsn>,
) -> Captured {
    let mut conn = PgConn::connect(&db.conninfo(), true).await.expect("connect");
    waly::tail::preflight(&mut conn, publication).await.expect("preflight");
    conn.close().await;
    let mut stream = start_stream(db, slot, publication).await;
    let mut asm = Assembler::new();
    let mut out = Captured::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.recv())
            .await
            .expect("stream reached endpos within 60s")
            .expect("stream open")
            .expect("no stream error");
        match msg {
            ReplicationMessage::XLogData { wal_start, data, .. } => {
                let before = out.events.len();
                asm.push(wal_start, &data, &mut out.events).expect("decodes");
                let done = out.events[before..]
                    .iter()
                    .any(|e| matches!(e, Event::Commit { end_lsn, .. } if *end_lsn >= endpos));
                if done {
                    break;
                }
            }
            ReplicationMessage::Keepalive { wal_end, .. } => {
                if wal_end >= endpos && !asm.in_transaction() && !stream.has_pending() {
                    break;
                }
            }
        }
    }
    if let Some(lsn) = confirm_up_to {
        stream.confirm(lsn);
    }
    stream.shutdown().await.expect("clean shutdown");
    out
}

/// Creates a slot, runs `sql` as one psql call, and captures what it did.
pub async fn capture_sql(db: &TestDb, publication: &str, sql: &str) -> Captured {
    let slot = format!("s_{}", db.name);
    db.create_slot(&slot);
    db.psql(sql);
    let end = db.current_lsn();
    capture_with(db, &slot, publication, end, None).await
}
