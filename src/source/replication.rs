//! Replication commands and the CopyBoth stream.
//!
//! The stream runs two tasks of its own. The *reader* pulls frames off the
//! socket into a channel bounded in messages and in bytes, and answers
//! keepalives that ask for a reply. The *status* task sends a standby status
//! update on a timer, so even when the consumer stalls (a slow upload) and
//! the reader is blocked on a full channel, the walsender keeps hearing from
//! us and never hits `wal_sender_timeout`. Every status update carries the
//! *durable* LSN the consumer reported with [`ReplicationStream::confirm`],
//! never what was merely received.

use super::conn::{FrameReader, PgConn, Stream};
use super::quote;
use crate::error::{Error, ServerError};
use crate::Lsn;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// What `IDENTIFY_SYSTEM` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique system identifier.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database the session is connected to.
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// The LSN from which the slot's changes start.
    pub consistent_point: Lsn,
    /// The exported snapshot, usable with `SET TRANSACTION SNAPSHOT` until
    /// the next command on this connection.
    pub snapshot_name: Option<String>,
}

/// What to do with the snapshot a new slot is consistent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it for other sessions (`SNAPSHOT 'export'`).
    Export,
    /// Discard it (`SNAPSHOT 'nothing'`).
    Nothing,
}

/// Runs `IDENTIFY_SYSTEM`.
pub async fn identify_system(conn: &mut PgConn) -> Result<SystemInfo, Error> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
    let col = |i: usize| row.get(i).cloned().flatten();
    Ok(SystemInfo {
        system_id: col(0).ok_or_else(|| Error::Protocol("IDENTIFY_SYSTEM: no systemid".into()))?,
        timeline: col(1).and_then(|t| t.parse().ok()).unwrap_or(0),
        xlogpos: parse_lsn(col(2))?,
        dbname: col(3),
    })
}

fn parse_lsn(v: Option<String>) -> Result<Lsn, Error> {
    let v = v.ok_or_else(|| Error::Protocol("missing LSN in server reply".into()))?;
    v.parse()
        .map_err(|_| Error::Protocol(format!("invalid LSN {v:?} in server reply")))
}

/// Runs `SHOW name` and returns the setting.
pub async fn show(conn: &mut PgConn, name: &str) -> Result<String, Error> {
    let rows = conn.simple_query(&format!("SHOW {}", quote::ident(name)?)).await?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .ok_or_else(|| Error::Protocol(format!("SHOW {name} returned nothing")))
}

/// Fails with the exact fix when the server cannot do logical decoding.
pub async fn check_wal_level(conn: &mut PgConn) -> Result<(), Error> {
    let level = show(conn, "wal_level").await?;
    if level != "logical" {
        return Err(Error::Prerequisite(format!(
            "wal_level is {level:?}, but logical decoding needs wal_level = logical.\n  to fix: {}",
            crate::error::WAL_LEVEL_FIX
        )));
    }
    Ok(())
}

/// Creates a logical slot using `pgoutput`.
pub async fn create_slot(
    conn: &mut PgConn,
    name: &str,
    temporary: bool,
    snapshot: SnapshotAction,
) -> Result<CreatedSlot, Error> {
    let sql = format!(
        "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput (SNAPSHOT {})",
        quote::slot(name)?,
        if temporary { "TEMPORARY " } else { "" },
        match snapshot {
            SnapshotAction::Export => "'export'",
            SnapshotAction::Nothing => "'nothing'",
        }
    );
    let rows = conn.simple_query(&sql).await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
    Ok(CreatedSlot {
        slot_name: row.first().cloned().flatten().unwrap_or_else(|| name.to_string()),
        consistent_point: parse_lsn(row.get(1).cloned().flatten())?,
        snapshot_name: row.get(2).cloned().flatten(),
    })
}

/// Drops a slot, waiting for it to become inactive.
pub async fn drop_slot(conn: &mut PgConn, name: &str) -> Result<(), Error> {
    conn.simple_query(&format!("DROP_REPLICATION_SLOT {} WAIT", quote::slot(name)?))
        .await?;
    Ok(())
}

/// Options for `START_REPLICATION ... LOGICAL`.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The publications to stream.
    pub publications: Vec<String>,
    /// The pgoutput protocol version (1 or 2; streaming is never requested).
    pub proto_version: u32,
    /// Whether to receive `pg_logical_emit_message` messages.
    pub messages: bool,
    /// How often to send a status update even when nothing happens. `None`
    /// picks a third of the server's `wal_sender_timeout`, at most 10 s.
    pub status_interval: Option<Duration>,
    /// Upper bound on the bytes of messages waiting for the consumer.
    pub buffer_bytes: usize,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            publications: vec!["waly".into()],
            proto_version: 1,
            messages: true,
            status_interval: None,
            buffer_bytes: 8 << 20,
        }
    }
}

/// One message from the walsender.
#[derive(Debug, Clone)]
pub enum ReplicationMessage {
    /// WAL data: one pgoutput message.
    XLogData {
        /// The WAL position of this message.
        wal_start: Lsn,
        /// The server's current WAL end.
        wal_end: Lsn,
        /// The server's clock when sending (microseconds since 2000-01-01).
        server_time: i64,
        /// The pgoutput message.
        data: Bytes,
    },
    /// A keepalive: nothing to decode, but the server's WAL end moved.
    Keepalive {
        /// The server's current WAL end.
        wal_end: Lsn,
        /// Whether the server asked for a reply now: it does when it shuts
        /// down (and waits until the reply confirms everything it sent) or
        /// when it heard nothing for half of `wal_sender_timeout`.
        reply: bool,
    },
}

struct Shared {
    durable: AtomicU64,
    wake: Notify,
}

type Item = (Result<Vec<ReplicationMessage>, Error>, Option<OwnedSemaphorePermit>);

/// A running logical replication stream.
pub struct ReplicationStream {
    rx: mpsc::Receiver<Item>,
    /// The batch being handed out, and the budget it holds until drained.
    current: std::collections::VecDeque<ReplicationMessage>,
    current_permit: Option<OwnedSemaphorePermit>,
    budget: Arc<Semaphore>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    status: Option<JoinHandle<Result<WriteHalf<Stream>, Error>>>,
    reader: Option<JoinHandle<Result<FrameReader<ReadHalf<Stream>>, Error>>>,
    /// The interval status updates are sent at.
    pub status_interval: Duration,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("durable", &self.durable())
            .field("status_interval", &self.status_interval)
            .finish_non_exhaustive()
    }
}

/// Starts streaming changes from `slot` at `start` (`0/0`: where the slot
/// was last confirmed).
pub async fn start_replication(
    mut conn: PgConn,
    slot: &str,
    start: Lsn,
    opts: &StartOptions,
) -> Result<ReplicationStream, Error> {
    let status_interval = match opts.status_interval {
        Some(i) => i,
        None => {
            let timeout = show(&mut conn, "wal_sender_timeout").await.ok();
            interval_for_timeout(timeout.as_deref())
        }
    };
    let pubs = opts
        .publications
        .iter()
        .map(|p| quote::ident(p))
        .collect::<Result<Vec<_>, _>>()?
        .join(",");
    let sql = format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version {}, publication_names {}, messages {})",
        quote::slot(slot)?,
        quote::replication_literal(&opts.proto_version.to_string())?,
        quote::replication_literal(&pubs)?,
        if opts.messages { "'true'" } else { "'false'" },
    );
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::query(&sql, &mut buf)?;
    conn.send(&buf).await?;
    loop {
        let frame = conn.reader.read().await?;
        match frame.tag {
            b'W' => break,
            b'N' => {}
            b'E' => {
                let err = ServerError::parse_during(&frame.body, ServerError::running(&sql));
                // The walsender follows an error with ReadyForQuery.
                let _ = conn.reader.read().await;
                return Err(Error::Server(Box::new(err)));
            }
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected message {:?} in reply to START_REPLICATION",
                    other as char
                )))
            }
        }
    }
    let shared = Arc::new(Shared {
        durable: AtomicU64::new(start.as_u64()),
        wake: Notify::new(),
    });
    let budget_bytes = opts.buffer_bytes.clamp(64 << 10, u32::MAX as usize >> 1);
    let budget = Arc::new(Semaphore::new(budget_bytes));
    let (tx, rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = oneshot::channel();
    let PgConn { reader, writer, .. } = conn;
    let status = tokio::spawn(status_task(writer, shared.clone(), stop_rx, status_interval));
    let reader = tokio::spawn(reader_task(reader, shared.clone(), tx, budget.clone(), budget_bytes));
    Ok(ReplicationStream {
        rx,
        current: Default::default(),
        current_permit: None,
        budget,
        shared,
        stop: Some(stop_tx),
        status: Some(status),
        reader: Some(reader),
        status_interval,
    })
}

/// A third of `wal_sender_timeout`, clamped to [100 ms, 10 s].
fn interval_for_timeout(setting: Option<&str>) -> Duration {
    let default = Duration::from_secs(10);
    let Some(s) = setting else { return default };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let Ok(n) = num.parse::<u64>() else { return default };
    let ms = match unit.trim() {
        "ms" => n,
        "s" | "" => n * 1000,
        "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return default,
    };
    if ms == 0 {
        return default; // 0 disables the timeout
    }
    Duration::from_millis(ms / 3).clamp(Duration::from_millis(100), default)
}

impl ReplicationStream {
    /// The next message, or `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Result<ReplicationMessage, Error>> {
        loop {
            if let Some(m) = self.current.pop_front() {
                return Some(Ok(m));
            }
            self.current_permit = None;
            match self.rx.recv().await? {
                (Ok(batch), permit) => {
                    self.current = batch.into();
                    self.current_permit = permit;
                }
                (Err(e), _) => return Some(Err(e)),
            }
        }
    }

    /// The next message if one has already arrived; `None` if none has
    /// (or the stream has ended: [`ReplicationStream::recv`] says which).
    pub fn try_recv(&mut self) -> Option<Result<ReplicationMessage, Error>> {
        loop {
            if let Some(m) = self.current.pop_front() {
                return Some(Ok(m));
            }
            self.current_permit = None;
            match self.rx.try_recv() {
                Ok((Ok(batch), permit)) => {
                    self.current = batch.into();
                    self.current_permit = permit;
                }
                Ok((Err(e), _)) => return Some(Err(e)),
                Err(_) => return None,
            }
        }
    }

    /// Whether a message is ready without waiting.
    pub fn has_pending(&self) -> bool {
        !self.current.is_empty() || !self.rx.is_empty()
    }

    /// Records that everything before `lsn` is durably stored; status updates
    /// from now on report it. Never moves backwards.
    pub fn confirm(&self, lsn: Lsn) {
        self.shared.durable.fetch_max(lsn.as_u64(), Ordering::SeqCst);
    }

    /// Asks the status task to report the durable LSN now, not at the next tick.
    pub fn report_now(&self) {
        self.shared.wake.notify_one();
    }

    /// The durable LSN reported to the server.
    pub fn durable(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::SeqCst))
    }

    /// Ends replication cleanly: a last status update with the durable LSN,
    /// then CopyDone; waits for the server to finish and closes the session.
    /// Messages not yet consumed are dropped (the server will send them again).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.rx.close();
        self.budget.close();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let (Some(status), Some(reader)) = (self.status.take(), self.reader.take()) else {
            return Err(Error::Protocol("replication stream already shut down".into()));
        };
        let writer = status
            .await
            .map_err(|e| Error::Protocol(format!("status task failed: {e}")))??;
        let reader = match tokio::time::timeout(Duration::from_secs(10), reader).await {
            Ok(joined) => joined.map_err(|e| Error::Protocol(format!("reader task failed: {e}")))??,
            Err(_) => return Err(Error::Protocol("the server did not end replication within 10s".into())),
        };
        let mut stream = reader.into_inner().unsplit(writer);
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::terminate(&mut buf);
        let _ = stream.write_all(&buf).await;
        let _ = stream.shutdown().await;
        Ok(())
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        // Without a clean shutdown, stop both tasks; the socket closes with them.
        for task in [
            self.status.as_ref().map(|t| t.abort_handle()),
            self.reader.as_ref().map(|t| t.abort_handle()),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
}

/// Microseconds since 2000-01-01 UTC, the protocol's clock.
fn pg_now() -> i64 {
    const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
    chrono::Utc::now().timestamp_micros() - PG_EPOCH_OFFSET_US
}

/// A standby status update carrying `durable` as written, flushed and applied.
pub fn status_update(durable: Lsn) -> BytesMut {
    let mut payload = BytesMut::with_capacity(34);
    payload.put_u8(b'r');
    payload.put_u64(durable.as_u64());
    payload.put_u64(durable.as_u64());
    payload.put_u64(durable.as_u64());
    payload.put_i64(pg_now());
    payload.put_u8(0);
    let mut frame = BytesMut::with_capacity(39);
    frame.put_u8(b'd');
    frame.put_u32(4 + payload.len() as u32);
    frame.extend_from_slice(&payload);
    frame
}

async fn status_task(
    mut w: WriteHalf<Stream>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
    every: Duration,
) -> Result<WriteHalf<Stream>, Error> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => {
                send_status(&mut w, &shared).await?;
                let mut done = BytesMut::new();
                postgres_protocol::message::frontend::copy_done(&mut done);
                w.write_all(&done).await?;
                w.flush().await?;
                return Ok(w);
            }
            _ = tick.tick() => send_status(&mut w, &shared).await?,
            _ = shared.wake.notified() => send_status(&mut w, &shared).await?,
        }
    }
}

async fn send_status(w: &mut WriteHalf<Stream>, shared: &Shared) -> Result<(), Error> {
    let msg = status_update(Lsn(shared.durable.load(Ordering::SeqCst)));
    w.write_all(&msg).await?;
    w.flush().await?;
    Ok(())
}

/// How many bytes of messages the reader hands over at once at most.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// What one frame means for the reader.
enum Step {
    Message(ReplicationMessage, usize),
    Ignore,
    End,
    Fail(Error),
}

fn step(frame: super::conn::Frame, shared: &Shared) -> Step {
    match frame.tag {
        b'd' => match parse_copy_data(frame.body) {
            Ok(CopyMessage::XLogData(m)) => {
                let size = match &m {
                    ReplicationMessage::XLogData { data, .. } => data.len() + 64,
                    ReplicationMessage::Keepalive { .. } => 64,
                };
                Step::Message(m, size)
            }
            Ok(CopyMessage::Keepalive { wal_end, reply }) => {
                if reply {
                    shared.wake.notify_one();
                }
                Step::Message(ReplicationMessage::Keepalive { wal_end, reply }, 64)
            }
            Err(e) => Step::Fail(e),
        },
        b'c' | b'C' | b'N' | b'S' => Step::Ignore,
        b'Z' => Step::End,
        b'E' => Step::Fail(Error::Server(Box::new(ServerError::parse_during(
            &frame.body,
            "streaming changes (the server's logical decoding)",
        )))),
        other => Step::Fail(Error::Protocol(format!(
            "unexpected message {:?} during replication",
            other as char
        ))),
    }
}

/// Reads frames and hands them to the consumer in batches (one socket read
/// usually holds many messages; one channel operation per batch keeps the
/// per-message cost low). The batches are bounded by a byte budget.
async fn reader_task(
    mut r: FrameReader<ReadHalf<Stream>>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Item>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
) -> Result<FrameReader<ReadHalf<Stream>>, Error> {
    // Once the consumer is gone we only drain to the end of the copy.
    let mut draining = false;
    loop {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut outcome: Option<Result<(), Error>> = None;
        let mut frame = r.read().await.map(Some);
        loop {
            let f = match frame {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    outcome = Some(Err(e));
                    break;
                }
            };
            match step(f, &shared) {
                Step::Message(m, size) => {
                    if !draining {
                        batch.push(m);
                        bytes += size;
                    }
                }
                Step::Ignore => {}
                Step::End => {
                    outcome = Some(Ok(()));
                    break;
                }
                Step::Fail(e) => {
                    outcome = Some(Err(e));
                    break;
                }
            }
            if bytes >= MAX_BATCH_BYTES {
                break;
            }
            frame = match r.buffered() {
                // Keep the socket drained while data is there: the walsender
                // then never waits on us, and batches grow.
                Ok(None) => match r.try_fill() {
                    Ok(true) => r.buffered(),
                    Ok(false) => Ok(None),
                    Err(e) => Err(e),
                },
                other => other,
            };
        }
        if !batch.is_empty() {
            let permits = bytes.clamp(1, budget_bytes) as u32;
            match budget.clone().acquire_many_owned(permits).await {
                Ok(permit) => {
                    if tx.send((Ok(batch), Some(permit))).await.is_err() {
                        draining = true;
                    }
                }
                Err(_) => draining = true,
            }
        }
        match outcome {
            None => {}
            Some(Ok(())) => return Ok(r),
            Some(Err(e)) => {
                if !draining {
                    let _ = tx.send((Err(clone_err(&e)), None)).await;
                }
                return Err(e);
            }
        }
    }
}

/// The reader both reports an error to the consumer and returns it.
fn clone_err(e: &Error) -> Error {
    match e {
        Error::Server(s) => Error::Server(s.clone()),
        Error::ConnectionClosed => Error::ConnectionClosed,
        Error::Io(io) => Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => Error::Protocol(other.to_string()),
    }
}

enum CopyMessage {
    XLogData(ReplicationMessage),
    Keepalive { wal_end: Lsn, reply: bool },
}

fn parse_copy_data(body: Bytes) -> Result<CopyMessage, Error> {
    let short = |what: &str| Error::Protocol(format!("truncated {what} message"));
    let be64 = |b: &[u8], at: usize| -> Option<u64> {
        b.get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_be_bytes)
    };
    match body.first() {
        Some(b'w') => {
            if body.len() < 25 {
                return Err(short("XLogData"));
            }
            let wal_start = Lsn(be64(&body, 1).ok_or_else(|| short("XLogData"))?);
            let wal_end = Lsn(be64(&body, 9).ok_or_else(|| short("XLogData"))?);
            let server_time = be64(&body, 17).ok_or_else(|| short("XLogData"))? as i64;
            Ok(CopyMessage::XLogData(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time,
                data: body.slice(25..),
            }))
        }
        Some(b'k') => {
            if body.len() < 18 {
                return Err(short("keepalive"));
            }
            Ok(CopyMessage::Keepalive {
                wal_end: Lsn(be64(&body, 1).ok_or_else(|| short("keepalive"))?),
                reply: body[17] != 0,
            })
        }
        other => Err(Error::Protocol(format!(
            "unknown CopyData message {:?} in replication stream",
            other.map(|&b| b as char)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_interval_follows_the_server_timeout() {
        assert_eq!(interval_for_timeout(Some("60s")), Duration::from_secs(10));
        assert_eq!(interval_for_timeout(Some("2s")), Duration::from_millis(666));
        assert_eq!(interval_for_timeout(Some("1min")), Duration::from_secs(10));
        assert_eq!(interval_for_timeout(Some("150ms")), Duration::from_millis(100));
        assert_eq!(interval_for_timeout(Some("0")), Duration::from_secs(10));
        assert_eq!(interval_for_timeout(None), Duration::from_secs(10));
    }

    #[test]
    fn status_update_carries_the_durable_lsn_three_times() {
        let f = status_update(Lsn(0x1_0000_00AB));
        assert_eq!(f[0], b'd');
        assert_eq!(u32::from_be_bytes([f[1], f[2], f[3], f[4]]), 38);
        assert_eq!(f[5], b'r');
        for at in [6, 14, 22] {
            let v = u64::from_be_bytes(f[at..at + 8].try_into().unwrap_or_default());
            assert_eq!(v, 0x1_0000_00AB);
        }
        assert_eq!(f[38], 0, "no reply requested");
    }

    #[test]
    fn parses_xlogdata_and_keepalives() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(10);
        w.put_u64(20);
        w.put_i64(30);
        w.extend_from_slice(b"Bxyz");
        match parse_copy_data(w.freeze()) {
            Ok(CopyMessage::XLogData(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            })) => {
                assert_eq!((wal_start, wal_end, &data[..]), (Lsn(10), Lsn(20), &b"Bxyz"[..]));
            }
            _ => panic!("not XLogData"),
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(99);
        k.put_i64(0);
        k.put_u8(1);
        assert!(matches!(
            parse_copy_data(k.freeze()),
            Ok(CopyMessage::Keepalive {
                wal_end: Lsn(99),
                reply: true
            })
        ));
        assert!(parse_copy_data(Bytes::from_static(b"w123")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"q")).is_err());
    }
}
