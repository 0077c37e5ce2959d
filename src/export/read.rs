//! The reading half of an export: the archive walked (fetched, decompressed,
//! parsed, deduplicated) on one thread while the export's logic runs on
//! another, the walk's items handed over in batches. With the writer's
//! thread (sink.rs), an export keeps both cores busy.

use crate::event::{Op, Row};
use crate::log::{Item, LogOptions};
use crate::schema::Schemas;
use crate::segment::{ChangeRecord, MessageRecord};
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// A walk's item, owned, on its way to the exporting thread.
pub(super) enum Owned {
    /// A generation starts.
    Generation { id: String, schemas: Arc<Schemas> },
    /// A table's snapshot starts (its rows follow).
    Snapshot {
        table: Arc<str>,
        lsn: Lsn,
        taken_at: DateTime<Utc>,
        rows: u64,
        schema_version: u32,
    },
    /// A row of a table's snapshot.
    SnapshotRow {
        table: Arc<str>,
        lsn: Lsn,
        taken_at: DateTime<Utc>,
        row: Row,
        schema_version: u32,
    },
    /// A change.
    Change(Held),
    /// A `waly` message.
    Message(MessageRecord),
    /// The walk finished without an error (nothing follows); it is
    /// complete through `through` ([`crate::log::LogStats::through`]).
    End { through: Option<Lsn> },
}

/// A change as the export keeps it: its rows taken from the walk's record
/// (which the walk is done with), never copied.
pub(super) struct Held {
    pub(super) table: Arc<str>,
    pub(super) schema_version: u32,
    pub(super) op: Op,
    pub(super) commit_lsn: Lsn,
    pub(super) seq: u64,
    pub(super) xid: u32,
    pub(super) commit_time: i64,
    pub(super) key: Option<Row>,
    pub(super) old: Option<Row>,
    pub(super) new: Option<Row>,
    pub(super) unchanged_toast: Vec<Arc<str>>,
}

impl Held {
    fn take(c: &mut ChangeRecord) -> Held {
        let ch = &mut c.change;
        Held {
            table: ch.table.clone(),
            schema_version: c.schema_version,
            op: ch.op,
            commit_lsn: ch.commit_lsn,
            seq: ch.seq,
            xid: ch.xid,
            commit_time: ch.commit_time.timestamp_micros(),
            key: ch.key.take(),
            old: ch.old.take(),
            new: ch.new.take(),
            unchanged_toast: std::mem::take(&mut ch.unchanged_toast),
        }
    }
}

/// Items per batch, and batches in flight.
const BATCH: usize = 1024;
const IN_FLIGHT: usize = 8;

/// Walks `store` with `opts` on this thread (through `runtime`) and hands
/// the items to `consume`, which runs on a thread of its own and returns
/// what it makes, with what the walk saw. The walk stops when `consume`
/// returns (its error first: it is the cause); `consume` sees
/// [`Owned::End`] only after a whole walk.
pub(super) fn walk_beside<T: Send>(
    runtime: &tokio::runtime::Handle,
    store: &crate::archive::Store,
    opts: &LogOptions,
    consume: impl FnOnce(Receiver<Vec<Owned>>) -> Result<T, Error> + Send,
) -> Result<(T, crate::log::LogStats), Error> {
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Vec<Owned>>(IN_FLIGHT);
        let consumer = std::thread::Builder::new()
            .name("waly-export".into())
            .spawn_scoped(s, move || consume(rx))?;
        let mut batch = Vec::with_capacity(BATCH);
        let mut table: Option<Arc<str>> = None;
        let gone = || Error::Io(std::io::Error::other("the export stopped reading"));
        let walked = runtime.block_on(crate::log::walk(store, opts, &mut |item| {
            batch.push(match item {
                Item::Generation { id, schemas } => Owned::Generation {
                    id: id.to_string(),
                    schemas: Arc::new(schemas.clone()),
                },
                Item::Snapshot {
                    table: t,
                    lsn,
                    taken_at,
                    rows,
                    schema_version,
                } => Owned::Snapshot {
                    table: table.insert(Arc::from(t)).clone(),
                    lsn,
                    taken_at,
                    rows,
                    schema_version,
                },
                Item::SnapshotRow {
                    table: t,
                    lsn,
                    taken_at,
                    row,
                    schema_version,
                } => Owned::SnapshotRow {
                    // One name shared by a snapshot's rows.
                    table: match &table {
                        Some(a) if **a == *t => a.clone(),
                        _ => table.insert(Arc::from(t)).clone(),
                    },
                    lsn,
                    taken_at,
                    row: std::mem::take(row),
                    schema_version,
                },
                Item::Change(c) => Owned::Change(Held::take(c)),
                Item::Message(m) => Owned::Message(m.clone()),
            });
            if batch.len() >= BATCH {
                tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                    .map_err(|_| gone())?;
            }
            Ok(())
        }));
        let handed = walked.and_then(|walked| {
            batch.push(Owned::End {
                through: walked.through,
            });
            tx.send(batch).map_err(|_| gone())?;
            Ok(walked)
        });
        drop(tx);
        let consumed = consumer
            .join()
            .unwrap_or_else(|_| Err(Error::Io(std::io::Error::other("the export's thread panicked"))));
        match (consumed, handed) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(t), Ok(walked)) => Ok((t, walked)),
        }
    })
}
