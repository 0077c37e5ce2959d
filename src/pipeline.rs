//! `waly run`: stream changes from the slot into segments, upload them
//! write-once, and confirm the slot only up to what is durably archived.
//!
//! One session = one replication connection. A session starts by reading
//! the archive's tail (nothing else is remembered between sessions), picks
//! or starts a generation, snapshots tables that have no snapshot yet, then
//! streams. Transactions already archived are skipped; a transaction that
//! was only partly archived is written again (readers deduplicate on
//! `(commit_lsn, seq)`). Transient failures (connection lost, server
//! restarting, object store down) end the session and a new one starts
//! after a backoff; the slot was never confirmed past the archive, so
//! nothing is lost.

use crate::archive::layout;
use crate::archive::state::{self, to_json, GenState, GenerationInfo, Identity};
use crate::archive::Store;
use crate::event::{Assembler, Event, RelationInfo};
use crate::metrics::{Metrics, Phase};
use crate::schema::TableMeta;
use crate::segment::{ColumnDef, CommitRecord, MessageRecord, SchemaRecord, SegmentBuilder};
use crate::snapshot::{self, TableRef};
use crate::source::{self, quote, ConnInfo, PgConn, ReplicationMessage, SnapshotAction, StartOptions};
use crate::{Error, Lsn};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How `waly run` behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The slot to stream from (created if missing).
    pub slot: String,
    /// The publication to stream.
    pub publication: String,
    /// A segment is closed this long after its first record at the latest.
    pub flush_interval: Duration,
    /// A segment is closed once it holds this many uncompressed bytes.
    pub segment_bytes: usize,
    /// With nothing published changing, record the idle WAL position (a
    /// record-less segment, so the slot can advance) at most this often:
    /// an idle archive gains one object per interval, and the slot holds
    /// at most this long's WAL.
    pub idle_interval: Duration,
    /// Warn when the slot retains more WAL than this fraction of
    /// `max_slot_wal_keep_size`...
    pub wal_warn_fraction: f64,
    /// ... or, when that is unlimited, more than this many bytes.
    pub wal_warn_bytes: u64,
    /// How often to look.
    pub wal_check_interval: Duration,
    /// While another process streams the slot, look again this often.
    pub standby_poll: Duration,
    /// Create the slot when it does not exist (otherwise that is an error).
    pub create_slot: bool,
    /// Counters and health, shared with the `/metrics` server.
    pub metrics: Arc<Metrics>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            slot: "waly".into(),
            publication: "waly".into(),
            flush_interval: Duration::from_secs(1),
            segment_bytes: 16 << 20,
            idle_interval: Duration::from_secs(300),
            wal_warn_fraction: 0.8,
            wal_warn_bytes: 10 << 30,
            wal_check_interval: Duration::from_secs(30),
            standby_poll: Duration::from_secs(2),
            create_slot: true,
            metrics: Arc::new(Metrics::default()),
        }
    }
}

/// Writes `bytes` at `key` once, retrying transient failures with backoff
/// (100 ms doubling to 10 s) until it succeeds or `stopping()` says to give up.
/// Failures and retries are counted in `metrics`.
pub async fn put_with_retry(
    store: &Store,
    key: &str,
    bytes: bytes::Bytes,
    metrics: &Metrics,
    stopping: &mut (dyn FnMut() -> bool + Send),
) -> Result<(), Error> {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1u32;
    loop {
        if attempt > 1 {
            metrics.upload_retries.fetch_add(1, Ordering::Relaxed);
        }
        let put = store.put_once(key, bytes.clone()).await;
        if let Err(e) = &put {
            metrics.upload_failed(&format!("uploading {key}: {e:#}"));
        }
        match put {
            Ok(()) => {
                metrics.upload_succeeded();
                return Ok(());
            }
            Err(e) if e.is_transient() && !stopping() => {
                tracing::warn!(key, attempt, error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "upload failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs until `stop` resolves (then flushes, confirms and returns `Ok`) or a
/// permanent error.
pub async fn run(
    info: &ConnInfo,
    store: &Store,
    opts: &RunOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // What a killed writer's merges left in scratch directories.
    crate::scratch::sweep(&std::env::temp_dir());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let metrics = &opts.metrics;
    let mut backoff = Duration::from_millis(500);
    let mut refused_backoff = Duration::from_secs(1);
    let mut last_recorded: Option<(String, Instant)> = None;
    loop {
        let started = Instant::now();
        let e = match session(info, store, opts, stop_rx.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if started.elapsed() > Duration::from_secs(60) {
            refused_backoff = Duration::from_secs(1);
        }
        if *stop_rx.borrow() {
            return Ok(());
        }
        let wait = if let Error::SlotBusy { pid, .. } = &e {
            // Another waly streams the slot: PostgreSQL's lock on an active
            // slot is the election. Wait as a standby, quietly.
            if !matches!(metrics.phase(), Phase::Standby { .. }) {
                tracing::info!(
                    slot = opts.slot,
                    holder_pid = pid,
                    poll_ms = opts.standby_poll.as_millis() as u64,
                    "standby: the slot is streamed by another process; waiting to take over"
                );
            }
            metrics.set_phase(Phase::Standby {
                holder_pid: pid.clone(),
            });
            opts.standby_poll
        } else if let Some(why) = e.archive_refuses() {
            // Nothing to gain from retrying fast, and nothing to record (the
            // archive is what refuses): say why, stay up (so /readyz says
            // it too), and look again slowly until someone fixes it.
            let message = format!("{why}: {e:#}");
            tracing::error!(error = %message, retry_in_s = refused_backoff.as_secs(), "the archive refuses waly's writes; nothing is confirmed to the slot until that is fixed (PostgreSQL keeps the WAL meanwhile)");
            metrics.session_failed(&message);
            metrics.set_phase(Phase::Reconnecting);
            let wait = refused_backoff;
            refused_backoff = (refused_backoff * 2).min(Duration::from_secs(300));
            wait
        } else if e.is_transient() {
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_millis(500);
            }
            let message = format!("{e:#}");
            tracing::warn!(error = %message, retry_in_ms = backoff.as_millis() as u64, "session ended; reconnecting");
            metrics.session_failed(&message);
            // The same failure over and over is recorded once per 10 minutes.
            if last_recorded
                .as_ref()
                .is_none_or(|(m, t)| *m != message || t.elapsed() > Duration::from_secs(600))
            {
                record_error(store, &message).await;
                last_recorded = Some((message, Instant::now()));
            }
            metrics.set_phase(Phase::Reconnecting);
            let wait = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            wait
        } else {
            // Not into an archive that belongs to another database.
            if !matches!(e, Error::ArchiveMismatch(_)) {
                record_error(store, &format!("{e:#}")).await;
            }
            return Err(e);
        };
        let mut rx = stop_rx.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = async { let _ = rx.wait_for(|s| *s).await; } => return Ok(()),
        }
    }
}

/// Leaves the error that ended a session in the archive (`errors/`), so
/// `waly status` can show it from anywhere. Best effort: the archive may be
/// what failed.
async fn record_error(store: &Store, message: &str) {
    let now = chrono::Utc::now();
    let key = layout::error_key(now);
    let body = serde_json::json!({
        "time": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "error": message,
        "host": crate::archive::lease::holder(),
    });
    let put = match store.seal_blob(to_json(&body)).await {
        Ok(bytes) => store.put_once(&key, bytes).await,
        Err(e) => Err(e),
    };
    if let Err(e) = put {
        tracing::debug!(error = %crate::error::chain(&e), "could not record the error in the archive");
    }
}

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug)]
struct SlotState {
    confirmed_flush: Option<Lsn>,
    wal_status: Option<String>,
    active_pid: Option<String>,
}

async fn slot_state(conn: &mut PgConn, slot: &str) -> Result<Option<SlotState>, Error> {
    let rows = conn
        .simple_query(&format!(
            "SELECT confirmed_flush_lsn, wal_status, active_pid, plugin, database = current_database() \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote::literal(slot)?
        ))
        .await?;
    let Some(r) = rows.into_iter().next() else {
        return Ok(None);
    };
    if r.get(3).cloned().flatten().as_deref() != Some("pgoutput") || r.get(4).cloned().flatten().as_deref() != Some("t")
    {
        return Err(Error::Prerequisite(format!(
            "replication slot {slot:?} exists but is not a pgoutput slot of this database; \
             choose another --slot, or drop it: SELECT pg_drop_replication_slot({})",
            quote::literal(slot)?
        )));
    }
    Ok(Some(SlotState {
        confirmed_flush: r.first().cloned().flatten().and_then(|s| s.parse().ok()),
        wal_status: r.get(1).cloned().flatten(),
        active_pid: r.get(2).cloned().flatten(),
    }))
}

/// The tables `publication` publishes whole (sql/published.sql), with
/// those of them that lack a usable replica identity, and the tables it
/// publishes only in part (some operations, rows or columns), which waly
/// does not archive. Asked on the SQL connection, never on the replication
/// one: `pg_publication_tables` opens each table (PostgreSQL 16 lists its
/// columns), and a walsender that did so holds the table's description of
/// now, which its decoding then takes for the description of the past (a
/// column whose type is younger than the change: "cache lookup failed for
/// type", at every restart, forever).
async fn published_tables(
    sql: &tokio_postgres::Client,
    publication: &str,
) -> Result<(Vec<TableRef>, Vec<String>, Vec<String>), Error> {
    let rows = source::tls::simple_rows(
        sql,
        &format!(
            "SELECT w.schemaname, w.tablename, w.whole,
                    c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS
                        (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
               FROM ({}) w
               JOIN pg_catalog.pg_class c ON c.oid = w.rel
              ORDER BY 1, 2",
            crate::schema::ddl::published_sql(&quote::literal(publication)?)?
        ),
        "listing the published tables",
    )
    .await?;
    let mut tables = Vec::new();
    let mut unkeyed = Vec::new();
    let mut partial = Vec::new();
    for r in rows {
        let schema = r.first().cloned().flatten().unwrap_or_default();
        let name = r.get(1).cloned().flatten().unwrap_or_default();
        if r.get(2).cloned().flatten().as_deref() != Some("t") {
            partial.push(format!("{schema}.{name}"));
            continue;
        }
        if r.get(3).cloned().flatten().as_deref() == Some("t") {
            unkeyed.push(format!("{schema}.{name}"));
        }
        tables.push(TableRef { schema, name });
    }
    Ok((tables, unkeyed, partial))
}

/// Whether `publication` publishes `schema.name` whole, under its own name
/// (sql/published.sql).
async fn publishes(sql: &tokio_postgres::Client, publication: &str, schema: &str, name: &str) -> Result<bool, Error> {
    let row = sql
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM ({}) w WHERE w.schemaname = $2 AND w.tablename = $3 AND w.whole)",
                crate::schema::ddl::published_sql("$1")?
            ),
            &[&publication, &schema, &name],
        )
        .await
        .map_err(|e| {
            source::tls::sql_failed(&format!("asking whether {publication:?} publishes {schema}.{name}"), e)
        })?;
    Ok(row.get(0))
}

/// [`publishes`], asked about a table transaction `t` changed, once `t`
/// is visible ([`await_visible`]).
async fn publishes_visible(
    sql: &tokio_postgres::Client,
    t: &mut Txn,
    publication: &str,
    schema: &str,
    name: &str,
) -> Result<bool, Error> {
    await_visible(sql, t).await?;
    publishes(sql, publication, schema, name).await
}

/// Whether transaction `xid` (its 32 bits, as the stream gives it) is
/// visible to a snapshot taken now: its full 64-bit id is the one nearest
/// below the snapshot's `xmax` (an id at or past `xmax`, or more than
/// 2^31 below it, is not finished yet, as far as this snapshot knows).
const VISIBLE_SQL: &str = "SELECT CASE WHEN d = 0 OR d > 2147483648 OR d > x THEN false
                 ELSE pg_catalog.pg_visible_in_snapshot((x - d)::text::pg_catalog.xid8, s) END
  FROM (SELECT s, x, (x % 4294967296 - $1::bigint + 4294967296) % 4294967296 AS d
          FROM (SELECT s, pg_catalog.pg_snapshot_xmax(s)::text::bigint AS x
                  FROM pg_catalog.pg_current_snapshot() s) a) b";

/// Waits until transaction `t`'s commit is visible to other sessions
/// before the catalog is asked anything about what it did. The walsender
/// decodes a commit as soon as its WAL is flushed, which comes before the
/// server shows the transaction to other sessions: by a moment, or, with
/// synchronous replication, until the synchronous standbys confirm it.
/// Asked before then, the catalog answers as it was before the
/// transaction: a table it created does not exist yet, one it added to the
/// publication is not in it, and a decision taken on that answer loses
/// rows. Asked once per transaction; one archived already (replayed after
/// a restart) asks nothing of the catalog that depends on it.
async fn await_visible(sql: &tokio_postgres::Client, t: &mut Txn) -> Result<(), Error> {
    if t.visible || t.skip {
        return Ok(());
    }
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    let mut warn_at = Duration::from_secs(10);
    loop {
        let visible: bool = sql
            .query_one(VISIBLE_SQL, &[&i64::from(t.xid)])
            .await
            .map_err(|e| source::tls::sql_failed("asking whether a decoded transaction is visible yet", e))?
            .get(0);
        if visible {
            t.visible = true;
            return Ok(());
        }
        let waited = started.elapsed();
        if waited >= warn_at {
            // The application's session waits as long: its commit returns
            // when the transaction becomes visible.
            tracing::warn!(
                xid = t.xid,
                commit_lsn = %t.commit_lsn,
                waited_s = waited.as_secs(),
                "a decoded transaction is not visible to other sessions yet (a synchronous standby that has \
                 not confirmed it?); waiting, as the catalog it changed decides how it is archived"
            );
            warn_at += Duration::from_secs(30);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The writer's state within one session.
struct Writer<'a> {
    store: &'a Store,
    /// The publication: a table joins the archive only if it publishes it.
    publication: String,
    /// The fencing token of this session's lease.
    fence: u64,
    metrics: &'a Metrics,
    /// Changes/messages and transactions in the open segment.
    pending_events: u64,
    pending_txns: u64,
    gen: GenState,
    /// The generation's catalog, folded forward segment by segment.
    catalog: crate::catalog::Keeper,
    /// Merges the index's runs in the background.
    merger: crate::index::Merger,
    builder: SegmentBuilder,
    stop: watch::Receiver<bool>,
    last_flush: Instant,
    /// When an encrypted archive's recipient sets were last looked at.
    keys_checked: Instant,
    /// The schema version each table's changes follow in this session (set
    /// by the stream's table descriptions).
    active: HashMap<String, u32>,
    /// Tables described with a later catalog: how their changes are put
    /// back into the version of their time.
    put_back: HashMap<String, PutBack>,
    /// The server's WAL position when this session started: a transaction
    /// committed before it is decoded again, and may be described with the
    /// catalog of now.
    session_start: Lsn,
    /// Whether the DDL trigger records DDL (so a DDL in a transaction comes
    /// before its changes, as a message).
    captured: bool,
    /// Each table's primary-key columns, for the index, under a schema version.
    pk: HashMap<String, (u32, crate::schema::keys::KeyColumns)>,
    /// Tables whose history ended since their last snapshot
    /// ([`GenState::history_ended`]): their changes are not archived until
    /// a snapshot starts it again.
    ended: std::collections::HashSet<String>,
    /// When the WAL the slot retains was last looked at.
    last_wal_check: Instant,
    /// The source database, for what the stream leaves out.
    sql: &'a tokio_postgres::Client,
    /// Changes waiting for their generated columns' values (computed many
    /// at a time), each with its schema version; nothing else is written
    /// before them.
    waiting: Vec<(crate::event::Change, u32)>,
    generated: crate::schema::generated::Computer,
}

/// Warns when the slot retains WAL close to `max_slot_wal_keep_size` (past
/// it, PostgreSQL invalidates the slot and history gets a gap), or, with no
/// limit, more than the absolute threshold (the disk is the limit then).
async fn check_retained_wal(sql: &tokio_postgres::Client, opts: &RunOptions) {
    let row = sql
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8,
                    pg_size_bytes(current_setting('max_slot_wal_keep_size'))
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&opts.slot],
        )
        .await;
    let (retained, keep) = match row {
        Ok(Some(r)) => (r.get::<_, Option<i64>>(0).unwrap_or(0).max(0), r.get::<_, i64>(1)),
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %crate::error::chain(&e), "could not read the WAL the slot retains");
            return;
        }
    };
    let limit = if keep >= 0 {
        (keep as f64 * opts.wal_warn_fraction) as i64
    } else {
        opts.wal_warn_bytes as i64
    };
    let warning = (retained > limit)
        .then(|| format!("the slot retains {retained} bytes of WAL, more than the warning level of {limit} bytes"));
    opts.metrics.set_retained_wal(retained as u64, warning);
    if retained > limit {
        tracing::warn!(
            slot = opts.slot,
            retained_bytes = retained,
            warn_above_bytes = limit,
            max_slot_wal_keep_size_bytes = keep,
            "the slot retains more WAL than it should: waly is behind or the archive is failing; past \
             max_slot_wal_keep_size PostgreSQL invalidates the slot and history gets a gap"
        );
    }
}

/// How often `waly run` looks for a new recipient set (`waly keys`) in an
/// encrypted archive: one listing.
const KEYS_CHECK: Duration = Duration::from_secs(10);

impl Writer<'_> {
    /// An encrypted archive whose recipients changed (`waly keys`): seal
    /// from the next segment on under a new data key wrapped for them,
    /// without a restart.
    async fn follow_rotation(&mut self) -> Result<(), Error> {
        let Some(before) = self.store.sealer()? else {
            return Ok(());
        };
        if self.keys_checked.elapsed() < KEYS_CHECK {
            return Ok(());
        }
        self.keys_checked = Instant::now();
        let Some(now) = self.store.prepare_writing().await? else {
            return Ok(());
        };
        if now.key_id() != before.key_id() {
            tracing::info!(
                key_id = now.key_id(),
                "the recipients changed: sealing under a new data key from the next segment on"
            );
            crate::crypt::shapes::keep_schema_keys(self.sql, self.store).await?;
            if self.builder.is_empty() {
                self.builder = SegmentBuilder::sealed_by(Some(now))?;
            }
        }
        Ok(())
    }

    /// Records a new schema version: its object now, its line in the
    /// transaction (unless the transaction was archived before), and the
    /// version changes of the table follow from here on.
    async fn new_version(&mut self, txn: Option<&mut Txn>, rec: SchemaRecord) -> Result<(), Error> {
        let (schema, name) = rec.table.split_once('.').unwrap_or(("", rec.table.as_str()));
        let seg = layout::table_segment(schema, name);
        self.store
            .put_once(
                &layout::schema_key(&self.gen.id, &seg, rec.version),
                self.store.schema_bytes(&rec)?,
            )
            .await?;
        tracing::info!(
            table = rec.table,
            version = rec.version,
            source = rec.source.as_deref().unwrap_or(""),
            dropped = rec.dropped,
            "new schema version"
        );
        if let Some(t) = txn {
            if !t.skip {
                self.builder.push_schema(&rec)?;
                t.versions.push((rec.table.clone(), rec.version));
            }
        }
        self.active.insert(rec.table.clone(), rec.version);
        if rec.dropped {
            self.ended.insert(rec.table.clone());
        }
        self.gen.schemas.insert(rec);
        Ok(())
    }

    /// An archived table known by `oid` under another name than `table`
    /// was renamed (or moved to another schema): its old name's history
    /// ends in transaction `t` (a version marked dropped, naming `ddl`),
    /// unless a snapshot of the old name is newer. Returns the old name.
    async fn end_renamed(
        &mut self,
        t: &mut Txn,
        oid: u32,
        table: &str,
        source: &str,
        ddl: crate::schema::Ddl,
    ) -> Result<Option<String>, Error> {
        let old = self.gen.schemas.tables().find_map(|name| {
            let v = self.gen.schemas.latest(name)?;
            (name != table && !v.dropped && v.meta.oid == Some(oid)).then(|| name.to_string())
        });
        let Some(old) = old else { return Ok(None) };
        if self.gen.snapshots.get(&old).is_none_or(|s| t.commit_lsn < *s) {
            return Ok(Some(old));
        }
        let meta = TableMeta {
            oid: Some(oid),
            ..TableMeta::default()
        };
        let reusable = self
            .gen
            .schemas
            .reusable_definition(&old, t.commit_lsn, ddl.message_lsn, &[], &meta, true)
            .map(|s| s.version);
        match reusable {
            Some(v) => self.reuse_version(Some(t), &old, v)?,
            None => {
                let rec = SchemaRecord {
                    commit_lsn: t.commit_lsn,
                    commit_time: Some(t.commit_time),
                    table: old.clone(),
                    version: self.gen.schemas.next_version(&old),
                    columns: Vec::new(),
                    source: Some(source.into()),
                    meta,
                    ddl: Some(ddl),
                    dropped: true,
                    sealed: None,
                };
                self.new_version(Some(t), rec).await?;
            }
        }
        Ok(Some(old))
    }

    /// Snapshots `tables` now, once what waits is written. Each table's
    /// history goes on from it if it had ended ([`GenState::archived_from`]).
    async fn snapshot_now(&mut self, info: &ConnInfo, tables: &[TableRef]) -> Result<(), Error> {
        self.flush().await?;
        for taken in snapshot_tables(info, self.store, &mut self.gen, tables, self.metrics).await? {
            self.ended.remove(&taken);
        }
        Ok(())
    }

    /// A table transaction `t` created, published whole at its commit:
    /// archived from `t`'s commit, empty. Its DDL messages after the
    /// first record versions at that commit; the snapshot that starts its
    /// history is written when the commit is (see [`Writer::write_created`]).
    fn created(&mut self, t: &mut Txn, table: TableRef) {
        let q = table.qualified();
        self.ended.remove(&q);
        self.gen.snapshots.insert(q, t.commit_lsn);
        t.created.push(table);
    }

    /// The snapshot of the tables transaction `t` created, each empty in
    /// the version `t` left it in.
    async fn write_created(&mut self, t: &Txn) -> Result<(), Error> {
        let tables: Vec<(TableRef, SchemaRecord)> = t
            .created
            .iter()
            .filter_map(|r| Some((r.clone(), self.gen.schemas.at(&r.qualified(), t.commit_lsn)?.clone())))
            .collect();
        let manifest = snapshot::write_created(
            self.store,
            &self.gen.id,
            (t.commit_lsn, t.commit_time),
            &tables,
            self.metrics,
        )
        .await?;
        tracing::info!(tables = ?manifest.tables.iter().map(|e| e.table.as_str()).collect::<Vec<_>>(), lsn = %t.commit_lsn, "tables created: archived from their creation");
        self.gen.manifests.push(manifest);
        for r in &t.created {
            let q = r.qualified();
            if let Some(from) = self.gen.archived_from(&q) {
                self.gen.snapshots.insert(q, from);
            }
        }
        Ok(())
    }

    /// Rewrites a version that is not history yet (its transaction is not
    /// archived) to take effect at another transaction. Killed between the
    /// delete and the write, the next session records it again.
    async fn move_version(&mut self, rec: SchemaRecord) -> Result<(), Error> {
        let (schema, name) = rec.table.split_once('.').unwrap_or(("", rec.table.as_str()));
        let key = layout::schema_key(&self.gen.id, &layout::table_segment(schema, name), rec.version);
        self.store.delete(&key).await?;
        self.store.put_once(&key, self.store.schema_bytes(&rec)?).await?;
        tracing::info!(table = rec.table, version = rec.version, commit_lsn = %rec.commit_lsn, "schema version moved to the first transaction with its shape");
        self.gen.schemas.insert(rec);
        Ok(())
    }

    /// A version that already exists is taken again. When it is this
    /// transaction's own (recorded by an earlier session of the writer that
    /// stopped before the transaction was archived), the transaction
    /// carries it, as [`Writer::new_version`] would have: otherwise a DDL
    /// transaction replayed after a crash would leave no commit marker, and
    /// readers would not count its version as history until a later
    /// transaction of the table.
    fn reuse_version(&mut self, txn: Option<&mut Txn>, table: &str, version: u32) -> Result<(), Error> {
        self.active.insert(table.to_string(), version);
        let Some(t) = txn.filter(|t| !t.skip) else {
            return Ok(());
        };
        if t.versions.iter().any(|(n, v)| n == table && *v == version) {
            return Ok(());
        }
        let own = self
            .gen
            .schemas
            .versions(table)
            .iter()
            .find(|s| s.version == version && s.commit_lsn == t.commit_lsn);
        if let Some(rec) = own {
            self.builder.push_schema(rec)?;
            t.versions.push((table.to_string(), version));
        }
        Ok(())
    }

    /// Writes a change (after the ones waiting for generated values).
    async fn push_change(&mut self, c: &crate::event::Change, schema_version: u32) -> Result<(), Error> {
        if self.generated.needs(&self.gen.schemas, c, schema_version) {
            self.waiting.push((c.clone(), schema_version));
            if self.waiting.len() >= 500 {
                self.write_waiting().await?;
            }
            return Ok(());
        }
        self.write_waiting().await?;
        self.builder.push_change(c, schema_version)?;
        self.index_change(c, schema_version);
        Ok(())
    }

    /// Computes the generated values the waiting changes lack, and writes them.
    async fn write_waiting(&mut self) -> Result<(), Error> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let mut waiting = std::mem::take(&mut self.waiting);
        self.generated.fill(self.sql, &self.gen.schemas, &mut waiting).await?;
        for (c, v) in &waiting {
            self.builder.push_change(c, *v)?;
            self.index_change(c, *v);
        }
        Ok(())
    }

    /// Notes the change's row key(s) for the segment's index.
    fn index_change(&mut self, c: &crate::event::Change, schema_version: u32) {
        let table: &str = &c.table;
        if c.op == crate::event::Op::Truncate {
            let h = self.builder.hasher().truncate(table);
            self.builder.note_key(crate::index::RowKey::Hash(h));
            return;
        }
        let fresh = self.pk.get(table).is_none_or(|(v, _)| *v != schema_version);
        if fresh {
            let pk = crate::index::pk_of(&self.gen.schemas, table, schema_version);
            self.pk.insert(table.to_string(), (schema_version, pk));
        }
        let Some((_, pk)) = self.pk.get(table) else { return };
        if pk.is_empty() {
            return;
        }
        let new = c.new.as_ref().map(|r| self.builder.hasher().row(table, pk, r));
        let old = c.old.as_ref().map(|r| self.builder.hasher().row(table, pk, r));
        if let Some(h) = new {
            self.builder.note_key(h);
        }
        if let Some(h) = old.filter(|h| Some(*h) != new) {
            self.builder.note_key(h);
        }
    }

    /// Flushes, then confirms to the server what that made durable.
    async fn flush_and_confirm(&mut self, stream: &source::ReplicationStream) -> Result<(), Error> {
        if let Some(lsn) = self.flush().await? {
            stream.confirm(lsn);
            self.metrics.set_confirmed(lsn);
            stream.report_now();
        }
        Ok(())
    }

    /// Seals and uploads the current segment (if it has anything), then
    /// returns the position that may now be confirmed.
    async fn flush(&mut self) -> Result<Option<Lsn>, Error> {
        self.write_waiting().await?;
        self.follow_rotation().await?;
        if self.builder.is_empty() {
            return Ok(None);
        }
        let builder = std::mem::replace(&mut self.builder, SegmentBuilder::sealed_by(self.store.sealer()?)?);
        let number = self.gen.tail.next_number;
        let tail = &self.gen.tail;
        let sealed = builder.seal(
            &self.gen.id,
            number,
            tail.prev_sha256.clone(),
            tail.time_high,
            self.fence,
        )?;
        let key = layout::segment_key(
            &self.gen.id,
            number,
            sealed.header.first_lsn,
            sealed.header.last_lsn,
            self.fence,
        );
        let stop = self.stop.clone();
        put_with_retry(self.store, &key, sealed.bytes.clone(), self.metrics, &mut || {
            *stop.borrow()
        })
        .await?;
        self.metrics
            .segment_uploaded(sealed.bytes.len() as u64, self.pending_events, self.pending_txns);
        self.metrics.pending_commit_ms.store(0, Ordering::Relaxed);
        (self.pending_events, self.pending_txns) = (0, 0);
        tracing::debug!(
            key,
            records = sealed.header.records,
            bytes = sealed.bytes.len(),
            "segment archived"
        );
        if crate::index::write_segment_index(self.store, &self.gen.id, number, self.fence, &sealed).await {
            self.merger.indexed(&self.gen.id, number + 1);
        }
        let last_commit = sealed.header.last_commit.map(|c| c.commit_lsn);
        self.catalog
            .stored(
                self.store,
                &self.gen.id,
                &key,
                last_commit,
                &sealed.summary,
                self.gen.schemas.count() + self.gen.manifests.len(),
            )
            .await;
        self.gen.tail.stored(number, &sealed);
        if let Some(c) = sealed.header.last_commit {
            self.gen.tail.last_commit = Some(c);
        }
        if let Some(d) = sealed.header.durable_lsn {
            self.gen.tail.durable_lsn = Some(d);
        }
        self.last_flush = Instant::now();
        Ok(sealed.header.durable_lsn)
    }
}

/// The open transaction, as the writer sees it.
struct Txn {
    commit_lsn: Lsn,
    xid: u32,
    commit_time: chrono::DateTime<chrono::Utc>,
    /// Already archived in an earlier session: skip it whole.
    skip: bool,
    /// Its commit is visible to other sessions ([`await_visible`]).
    visible: bool,
    records: u64,
    /// Schema versions it made (a DDL transaction archives its commit
    /// marker even with no change, so its point in time is known), as
    /// `(table, version)`.
    versions: Vec<(String, u32)>,
    /// Tables it created (`CREATE TABLE`, permanent), by OID, with their
    /// DDL messages, held until its commit decides whether each starts its
    /// history there, empty ([`settle_born`]).
    born: Vec<Born>,
    /// Tables archived from its commit, empty: no snapshot from the source
    /// (written at its commit).
    created: Vec<TableRef>,
}

/// A table the open transaction created, and what its DDL messages said
/// of it so far.
struct Born {
    oid: u32,
    /// Its DDL messages in this transaction, in order, with their LSNs.
    messages: Vec<(crate::schema::ddl::DdlMessage, Lsn)>,
    /// Whether the publication publishes it whole, as the last message
    /// that says (its own, or a publication command's) left it.
    published: bool,
    /// Some message said it was not: its changes then were not streamed,
    /// so a table that joins the publication later in the transaction
    /// cannot start empty.
    unpublished: bool,
    /// Rows may have come into it other than as changes (a partition
    /// attached to it): it cannot start empty.
    filled: bool,
}

impl Born {
    /// `schema.table` as its last message names it.
    fn name(&self) -> Option<String> {
        self.messages.last().and_then(|(m, _)| m.qualified())
    }
}

impl Txn {
    /// Holds DDL message `msg` to the commit if it is about a table this
    /// transaction created (`created_in` says so); `false` for any other.
    fn hold(&mut self, publication: &str, msg: &crate::schema::ddl::DdlMessage, lsn: Lsn) -> bool {
        if self.skip {
            return false;
        }
        let i = match self.born.iter().position(|b| b.oid == msg.oid) {
            Some(i) => i,
            None if msg.created_in.is_some() && msg.table.is_some() => {
                self.born.push(Born {
                    oid: msg.oid,
                    messages: Vec::new(),
                    published: false,
                    unpublished: false,
                    filled: false,
                });
                self.born.len() - 1
            }
            None => return false,
        };
        let b = &mut self.born[i];
        b.published = msg
            .created_in
            .as_ref()
            .is_some_and(|p| p.iter().any(|p| p == publication));
        b.unpublished |= !b.published;
        // ALTER TABLE of a partitioned table may attach a partition that
        // holds rows; its rows are never streamed as changes.
        b.filled |= !b.messages.is_empty()
            && msg.tag == "ALTER TABLE"
            && msg.table.as_ref().is_some_and(|d| d.meta.partition_key.is_some());
        b.messages.push((msg.clone(), lsn));
        true
    }

    /// A publication command in this transaction: each table it created
    /// that the command left unpublished (`named`: the tables the
    /// publication publishes whole) was out of it.
    fn note_publications(&mut self, named: &std::collections::BTreeSet<String>) {
        for b in &mut self.born {
            if let Some(q) = b.name() {
                b.published = named.contains(&q);
                b.unpublished |= !b.published;
            }
        }
    }

    /// Whether `table` is the name of a table this transaction created
    /// and holds.
    fn holds(&self, table: &str) -> bool {
        self.born.iter().any(|b| b.name().as_deref() == Some(table))
    }
}

pub(crate) async fn start_generation(
    store: &Store,
    previous: Option<&str>,
    reason: &str,
    slot_lsn: Lsn,
    timeline: u32,
    source: Option<state::Source>,
) -> Result<GenState, Error> {
    let n = previous.and_then(|g| g.parse::<u32>().ok()).map_or(1, |n| n + 1);
    let id = layout::generation_id(n);
    let info = GenerationInfo {
        generation: id.clone(),
        started_at: chrono::Utc::now(),
        reason: reason.to_string(),
        slot_lsn,
        timeline,
        source,
    };
    match store.put_once(&layout::generation_meta(&id), to_json(&info)).await {
        Err(Error::Conflict { .. }) => {
            return Err(Error::Contended(format!(
                "generation {id} was started by another writer at the same moment"
            )))
        }
        r => r?,
    }
    if previous.is_some() {
        tracing::error!(
            generation = id,
            reason,
            "STARTING A NEW GENERATION: history before this point cannot be joined to history after it"
        );
    } else {
        tracing::info!(generation = id, reason, "starting the first generation");
    }
    Ok(GenState {
        id,
        ..Default::default()
    })
}

/// A column as pgoutput's Relation message alone describes it.
fn streamed_column(c: &crate::event::Column) -> ColumnDef {
    ColumnDef {
        name: c.name.to_string(),
        type_name: c.type_name.clone(),
        type_oid: c.type_oid,
        type_modifier: c.type_modifier,
        key: c.key,
        ..ColumnDef::default()
    }
}

/// The columns of a relation as the stream describes them, completed from
/// the catalog (type names, attnums, NOT NULL, primary key, defaults) where
/// the catalog still agrees, with the generated columns pgoutput leaves out
/// before PostgreSQL 18; and the table's other properties.
async fn relation_columns(sql: &tokio_postgres::Client, rel: &RelationInfo) -> (Vec<ColumnDef>, TableMeta) {
    let def = crate::schema::ddl::catalog_definition(sql, &rel.schema, &rel.name)
        .await
        .ok()
        .flatten();
    let catalog = def.as_ref().map_or(&[][..], |d| d.columns.as_slice());
    let agrees = |c: &crate::event::Column| {
        catalog
            .iter()
            .find(|k| k.name == *c.name && k.type_oid == c.type_oid && k.type_modifier == c.type_modifier)
    };
    let mut columns: Vec<ColumnDef> = rel
        .columns
        .iter()
        .map(|c| match agrees(c) {
            Some(k) => ColumnDef {
                key: c.key,
                ..k.clone()
            },
            None => streamed_column(c),
        })
        .collect();
    let all_agree = rel.columns.iter().all(|c| agrees(c).is_some());
    if all_agree {
        for k in catalog {
            if k.generated.is_some() && !columns.iter().any(|c| c.name == k.name) {
                columns.push(k.clone());
            }
        }
        columns.sort_by_key(|c| c.attnum);
    }
    let mut meta = def.map(|d| d.meta).unwrap_or_default();
    // The stream's replica identity, not the catalog's of now: it says which
    // old values the changes described by it carry.
    meta.replica_identity = Some(
        match rel.replica_identity {
            crate::event::ReplicaIdentity::Default => "default",
            crate::event::ReplicaIdentity::Nothing => "nothing",
            crate::event::ReplicaIdentity::Full => "full",
            crate::event::ReplicaIdentity::Index => "index",
        }
        .to_string(),
    );
    (columns, meta)
}

async fn session(info: &ConnInfo, store: &Store, opts: &RunOptions, stop: watch::Receiver<bool>) -> Result<(), Error> {
    let metrics = &*opts.metrics;
    let mut conn = PgConn::connect(info, true).await?;
    source::check_wal_level(&mut conn).await?;
    crate::tail::preflight(&mut conn, &opts.publication).await?;
    let system = source::identify_system(&mut conn).await?;
    let database = system.dbname.clone().unwrap_or_else(|| info.dbname.clone());
    let id = state::claim(
        store,
        &Identity::new(&system.system_id, &database, &opts.slot, &opts.publication),
    )
    .await?;
    // Every session from here on prints `money` as the archive's values are.
    let pinned = info.for_archive(&id);
    let info = &pinned;
    if let Some(m) = &info.lc_monetary {
        conn.simple_query(&format!("SET lc_monetary = {}", quote::literal(m)?))
            .await?;
    }
    // An encrypted archive: a data key for this session, wrapped for the
    // recipients (refuses to go on without valid ones).
    if let Some(s) = store.prepare_writing().await? {
        tracing::info!(
            key_id = s.key_id(),
            "the archive is encrypted: this session seals under a new data key"
        );
    }

    // The slot, and whether history continues from the archive.
    let mut reason = None;
    let slot = slot_state(&mut conn, &opts.slot).await?;
    if let Some(s) = &slot {
        if let Some(pid) = &s.active_pid {
            return Err(Error::SlotBusy {
                slot: opts.slot.clone(),
                pid: pid.clone(),
            });
        }
    }
    // Not a standby's poll: the SQL connection, and (format 4) the schema
    // keys this writer keeps in the source database, to read the shapes it
    // resumes from and to seal new ones.
    let sql = source::tls::connect_sql(info).await?;
    crate::crypt::shapes::keep_schema_keys(&sql, store).await?;
    let lost = slot.as_ref().and_then(|s| s.wal_status.as_deref()) == Some("lost");
    if lost {
        tracing::error!(slot = opts.slot, "the slot was invalidated: PostgreSQL removed WAL it still needed (max_slot_wal_keep_size); changes in that WAL are lost to the archive");
        conn.simple_query(&format!(
            "SELECT pg_drop_replication_slot({})",
            quote::literal(&opts.slot)?
        ))
        .await?;
        reason = Some("the slot was invalidated (WAL it needed was removed)".to_string());
    }
    if slot.is_none() && !opts.create_slot {
        let history = match state::generations(store).await?.last() {
            Some(g) => {
                let st = state::load_generation(store, g).await?;
                format!(
                    " This archive's history (generation {}) ends at LSN {}: a slot created now starts a new \
                     generation, and what committed in between is not archived.",
                    st.id,
                    st.durable_position()
                )
            }
            None => String::new(),
        };
        return Err(Error::Prerequisite(format!(
            "replication slot {:?} does not exist on this server. `waly init` creates it (with the \
             publication and triggers); or pass --create-slot to have waly run create it. A slot holds WAL \
             only from its creation on.{history} (Is --slot spelled right? `SELECT slot_name FROM \
             pg_replication_slots` lists the slots.)",
            opts.slot
        )));
    }
    if slot.is_none() || lost {
        let created = source::create_slot(&mut conn, &opts.slot, false, SnapshotAction::Nothing).await?;
        tracing::info!(slot = opts.slot, lsn = %created.consistent_point, "created the replication slot");
        reason.get_or_insert_with(|| "the replication slot did not exist".to_string());
    }
    let gens = state::generations(store).await?;
    let mut gen = match gens.last() {
        Some(g) => state::load_generation(store, g).await?,
        None => GenState::default(),
    };
    // The database this session reads, and whether the archive's last
    // generation followed another (`waly init --source-moved`): its
    // history cannot go on from a slot of another cluster's WAL.
    let here = id.source();
    if let Some(last) = gens.last() {
        let info = state::generation_info(store, last).await?;
        let before = match info.source {
            Some(s) => s,
            None => state::read_identity(store)
                .await?
                .map(|i| i.source())
                .unwrap_or_else(|| here.clone()),
        };
        if before != here {
            let end = gen.durable_position();
            if system.xlogpos <= end {
                return Err(Error::Prerequisite(format!(
                    "{here} writes WAL at LSN {}, before the end of the archive's history (LSN {end}) \
                     from {before}: run `waly init --source-moved` against it, which says how to fix this",
                    system.xlogpos
                )));
            }
            reason = Some(format!(
                "the source moved from {before} to {here} (`waly init --source-moved`): history goes on \
                 from a new snapshot of the new source"
            ));
        }
    }
    if gens.is_empty() {
        reason = Some("first start".into());
    } else if reason.is_none() {
        let confirmed = slot.as_ref().and_then(|s| s.confirmed_flush).unwrap_or_default();
        let durable = gen.durable_position();
        if confirmed > durable {
            reason = Some(format!(
                "the slot is confirmed to {confirmed} but the archive holds only up to {durable}: changes in \
                 between were never archived (was the slot dropped and recreated, or advanced by someone else?)"
            ));
        }
    }
    if let Some(r) = &reason {
        let slot_lsn = slot_state(&mut conn, &opts.slot)
            .await?
            .and_then(|s| s.confirmed_flush)
            .unwrap_or_default();
        gen = start_generation(
            store,
            gens.last().map(|s| s.as_str()),
            r,
            slot_lsn,
            system.timeline,
            Some(here.clone()),
        )
        .await?;
    }

    // Every published table needs a snapshot in this generation.
    let (tables, unkeyed, partial) = published_tables(&sql, &opts.publication).await?;
    for t in &unkeyed {
        tracing::warn!(table = t, "published table has no usable replica identity: UPDATE and DELETE on it fail on the primary; give it a primary key or REPLICA IDENTITY FULL");
    }
    for t in &partial {
        tracing::warn!(
            table = t,
            publication = opts.publication,
            "the publication publishes this table only in part (not every operation, or with a row filter or \
             a column list), so waly does not archive it: its archive would not be the table; publish it \
             whole to archive it (ALTER PUBLICATION ... SET (publish = 'insert, update, delete, truncate'), \
             and the table without a WHERE clause or column list)"
        );
    }
    // (And those whose history ended, published whole again while waly
    // was away without the stream saying so: no DDL capture.)
    let missing: Vec<TableRef> = tables
        .into_iter()
        .filter(|t| !gen.snapshots.contains_key(&t.qualified()) || gen.history_ended(&t.qualified()))
        .collect();
    if !missing.is_empty() {
        metrics.set_phase(Phase::Snapshotting);
        snapshot_tables(info, store, &mut gen, &missing, metrics).await?;
    }

    let start_opts = StartOptions {
        publications: vec![opts.publication.clone()],
        ..StartOptions::default()
    };
    let mut stream = match source::start_replication(conn, &opts.slot, Lsn::ZERO, &start_opts).await {
        Ok(s) => s,
        // Lost the election to a process that started streaming meanwhile.
        Err(Error::Server(e)) if e.code == "55006" => {
            let pid = e.message.rsplit(' ').next().unwrap_or("?").to_string();
            return Err(Error::SlotBusy {
                slot: opts.slot.clone(),
                pid,
            });
        }
        Err(e) => return Err(e),
    };
    // This process holds the slot now: a writer before it can no longer
    // confirm anything, so the archive's tail, read again now, holds all it
    // confirmed. Segments from here on are ours under a new fencing token;
    // whatever an earlier writer still uploads is ignored by readers.
    gen.tail = state::load_tail(store, &gen.id).await?;
    let lease = crate::archive::lease::acquire(store, &gen.id, gen.tail.next_number).await?;
    if matches!(metrics.phase(), Phase::Standby { .. }) {
        tracing::info!(
            slot = opts.slot,
            fence = lease.token,
            "standby: the slot was released; taking over"
        );
    }
    metrics.set_phase(Phase::Streaming);
    metrics.set_generation(&gen.id);
    let resume = gen.durable_position();
    metrics.set_confirmed(resume);
    if !resume.is_zero() {
        stream.confirm(resume);
    }
    tracing::info!(generation = gen.id, slot = opts.slot, archive = store.url(), resume = %resume, fence = lease.token, "streaming");
    let catalog = crate::catalog::Keeper::start(store, &gen.id).await;
    let mode = crate::schema::ddl::capture_mode(&sql).await?;
    if mode == crate::schema::ddl::CaptureMode::EarlierEventTrigger {
        tracing::warn!(
            "the DDL capture trigger was installed by an earlier waly and does not record publication \
             commands or partitions attached and detached: a table that leaves the publication (or is \
             attached as a partition published through its root) is not seen to; run `waly init` again \
             to install the current one"
        );
    }
    let captured = mode != crate::schema::ddl::CaptureMode::RelationMessages;
    let ended = gen
        .schemas
        .tables()
        .filter(|t| gen.history_ended(t))
        .map(str::to_string)
        .collect();
    let mut w = Writer {
        store,
        catalog,
        merger: crate::index::Merger::start(store),
        publication: opts.publication.clone(),
        fence: lease.token,
        metrics,
        pending_events: 0,
        pending_txns: 0,
        gen,
        builder: SegmentBuilder::sealed_by(store.sealer()?)?,
        stop: stop.clone(),
        last_flush: Instant::now(),
        keys_checked: Instant::now(),
        active: HashMap::new(),
        put_back: HashMap::new(),
        session_start: system.xlogpos,
        captured,
        pk: HashMap::new(),
        ended,
        last_wal_check: Instant::now(),
        sql: &sql,
        waiting: Vec::new(),
        generated: Default::default(),
    };
    let mut consumer = Consumer {
        asm: Assembler::new(),
        events: Vec::new(),
        txn: None,
    };
    let mut stop_rx = stop.clone();
    // One timer for the age bound, moved as segments open, not one per message.
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    let result: Result<(), Error> = 'session: loop {
        let deadline = w.builder.opened_at.map(|t| t + opts.flush_interval);
        if deadline != armed {
            if let Some(d) = deadline {
                timer.as_mut().reset(tokio::time::Instant::from_std(d));
            }
            armed = deadline;
        }
        let mut next = tokio::select! {
            _ = async { let _ = stop_rx.wait_for(|s| *s).await; } => break Ok(()),
            _ = &mut timer, if deadline.is_some() => {
                if let Err(e) = w.flush_and_confirm(&stream).await {
                    break Err(e);
                }
                continue;
            }
            m = stream.recv() => m,
        };
        // Then whatever else has already arrived, without a trip through
        // `select!` per message; the stop signal and the age bound are
        // looked at every so often.
        let mut n = 0u32;
        loop {
            let msg = match next {
                None => break 'session Err(Error::ConnectionClosed),
                Some(Err(e)) => break 'session Err(e),
                Some(Ok(m)) => m,
            };
            if let Err(e) = consumer.on_message(info, &sql, &mut w, &stream, msg, opts).await {
                break 'session Err(e);
            }
            n += 1;
            let due = || w.builder.opened_at.is_some_and(|t| t.elapsed() >= opts.flush_interval);
            if n.is_multiple_of(256) && (*stop.borrow() || due()) {
                break;
            }
            next = match stream.try_recv() {
                Some(m) => Some(m),
                None => break,
            };
        }
    };
    // Whatever happened, make what we have durable before leaving: a partial
    // transaction is harmless (it counts only with its commit marker).
    let flushed = w.flush().await;
    w.merger.finish().await;
    match (&result, flushed) {
        (Ok(()), Ok(d)) => {
            if let Some(lsn) = d {
                stream.confirm(lsn);
                metrics.set_confirmed(lsn);
            }
            tracing::info!(confirmed = %stream.durable(), "stopping: archive flushed, slot confirmed");
            stream.shutdown().await?;
            Ok(())
        }
        (Ok(()), Err(e)) => Err(e),
        (Err(_), Ok(d)) => {
            if let Some(lsn) = d {
                stream.confirm(lsn);
            }
            result
        }
        (Err(_), Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "could not flush after a failure");
            result
        }
    }
}

/// Turns the stream's messages into archive records.
struct Consumer {
    asm: Assembler,
    events: Vec<Event>,
    txn: Option<Txn>,
}

impl Consumer {
    async fn on_message(
        &mut self,
        info: &ConnInfo,
        sql: &tokio_postgres::Client,
        w: &mut Writer<'_>,
        stream: &source::ReplicationStream,
        msg: ReplicationMessage,
        opts: &RunOptions,
    ) -> Result<(), Error> {
        if w.last_wal_check.elapsed() >= opts.wal_check_interval {
            w.last_wal_check = Instant::now();
            check_retained_wal(sql, opts).await;
        }
        let wal_end = match &msg {
            ReplicationMessage::Keepalive { wal_end, .. } | ReplicationMessage::XLogData { wal_end, .. } => *wal_end,
        };
        w.metrics.server_wal_end.fetch_max(wal_end.as_u64(), Ordering::Relaxed);
        match msg {
            ReplicationMessage::Keepalive { wal_end, reply } => {
                let idle = self.txn.is_none() && w.builder.records() == 0;
                let behind = w.gen.durable_position() < wal_end;
                // A server that shuts down waits until a reply confirms all
                // it sent: when it asks, nothing waits for the interval
                // (at most once a second, should it ask again and again).
                let due = w.last_flush.elapsed() >= opts.idle_interval
                    || (reply && w.last_flush.elapsed() >= Duration::from_secs(1));
                if idle && behind && due {
                    // Nothing published changed, but WAL flowed: record that
                    // the archive is complete up to here so the slot can move.
                    w.builder.mark_idle(wal_end);
                    w.flush_and_confirm(stream).await?;
                }
            }
            ReplicationMessage::XLogData { wal_start, data, .. } => {
                self.events.clear();
                self.asm.push(wal_start, &data, &mut self.events)?;
                handle_events(info, sql, w, &mut self.txn, &self.events).await?;
                if w.builder.uncompressed_bytes() >= opts.segment_bytes {
                    w.flush_and_confirm(stream).await?;
                }
            }
        }
        Ok(())
    }
}

/// Snapshots `tables` into the generation; returns those taken (a table
/// no longer there under its name is not).
async fn snapshot_tables(
    info: &ConnInfo,
    store: &Store,
    gen: &mut GenState,
    tables: &[TableRef],
    metrics: &Metrics,
) -> Result<Vec<String>, Error> {
    let next: BTreeMap<String, u32> = tables
        .iter()
        .map(|t| {
            let q = t.qualified();
            let v = gen.schemas.next_version(&q);
            (q, v)
        })
        .collect();
    let (manifest, schemas) = snapshot::take(info, store, &gen.id, tables, &next, metrics).await?;
    for s in schemas {
        gen.schemas.insert(s);
    }
    let taken: Vec<String> = manifest.tables.iter().map(|e| e.table.clone()).collect();
    if !taken.is_empty() {
        gen.manifests.push(manifest);
    }
    for q in &taken {
        if let Some(from) = gen.archived_from(q) {
            gen.snapshots.insert(q.clone(), from);
        }
    }
    Ok(taken)
}

/// How a table's changes are put back into the version of their time when
/// pgoutput described the table with a later catalog.
#[derive(Debug, Default)]
struct PutBack {
    /// `(described, archived)` names.
    names: Vec<(Arc<str>, Arc<str>)>,
    /// Columns added after the changes: left out of their rows.
    added: Vec<Arc<str>>,
    /// Columns retyped later: `(described, archived, unknown marker)`; a
    /// value sent for them is not the row's.
    retyped: Vec<(Arc<str>, Arc<str>, String)>,
    /// Columns dropped later, not sent: `(name, position, unknown marker)`.
    dropped: Vec<(Arc<str>, usize, String)>,
}

impl From<crate::schema::later::LaterDescription> for PutBack {
    fn from(d: crate::schema::later::LaterDescription) -> Self {
        let arc = |s: &str| Arc::<str>::from(s);
        let mut r = PutBack {
            names: d.renames.iter().map(|(a, b)| (arc(a), arc(b))).collect(),
            added: d.added.iter().map(|a| arc(a)).collect(),
            ..PutBack::default()
        };
        for u in d.unknown {
            let marker = crate::schema::shape::unknown_value(&u.why);
            match u.described {
                Some(sent) => r.retyped.push((arc(&sent), arc(&u.name), marker)),
                None => r.dropped.push((arc(&u.name), u.position, marker)),
            }
        }
        r
    }
}

impl PutBack {
    fn is_empty(&self) -> bool {
        self.names.is_empty() && self.added.is_empty() && self.retyped.is_empty() && self.dropped.is_empty()
    }

    /// `c` in the columns of its time: named back, the later columns left
    /// out, and what PostgreSQL could not send marked unknown (in the new
    /// row, which holds every column).
    fn apply(&self, c: &crate::event::Change) -> crate::event::Change {
        let back = |n: &Arc<str>| {
            self.names
                .iter()
                .find(|(from, _)| from == n)
                .map_or_else(|| n.clone(), |(_, to)| to.clone())
        };
        let kept = |n: &Arc<str>| !self.added.contains(n);
        let column = |(n, v): &(Arc<str>, Option<String>)| match self.retyped.iter().find(|(sent, _, _)| sent == n) {
            // NULL is NULL in any type.
            Some((_, name, marker)) => (name.clone(), v.as_ref().map(|_| marker.clone())),
            None => (back(n), v.clone()),
        };
        let row = |r: &crate::event::Row| crate::event::Row(r.0.iter().filter(|(n, _)| kept(n)).map(column).collect());
        let new = c.new.as_ref().map(|r| {
            let mut r = row(r);
            for (name, position, marker) in &self.dropped {
                r.0.insert((*position).min(r.0.len()), (name.clone(), Some(marker.clone())));
            }
            r
        });
        crate::event::Change {
            key: c.key.as_ref().map(row),
            old: c.old.as_ref().map(row),
            new,
            unchanged_toast: c.unchanged_toast.iter().filter(|n| kept(n)).map(back).collect(),
            ..c.clone()
        }
    }
}

/// A DDL message: a new schema version for an archived table, at the DDL's
/// transaction. A table renamed away from an archived name ends that name's
/// history (a version marked dropped) and is snapshotted under its new one.
async fn on_ddl(
    info: &ConnInfo,
    w: &mut Writer<'_>,
    t: &mut Txn,
    msg: &crate::schema::ddl::DdlMessage,
    message_lsn: Lsn,
) -> Result<(), Error> {
    let Some(table) = msg.qualified() else { return Ok(()) };
    let renamed_from = match msg.table.as_ref().and_then(|d| d.meta.oid) {
        Some(oid) => w.end_renamed(t, oid, &table, "ddl", msg.ddl(message_lsn)).await?,
        None => None,
    };
    let Some(snapshot) = w.gen.snapshots.get(&table).copied() else {
        if renamed_from.is_some() && !t.skip {
            // Its rows, under the new name, from a snapshot now.
            if let Some(d) = &msg.table {
                w.snapshot_now(info, &[d.table_ref()]).await?;
            }
        }
        return Ok(()); // not archived (not published, or not yet)
    };
    if t.commit_lsn < snapshot {
        return Ok(()); // the snapshot already has it
    }
    let (columns, meta, dropped) = match &msg.table {
        Some(d) => (d.columns.clone(), d.meta.clone(), false),
        None => (
            Vec::new(),
            TableMeta {
                oid: Some(msg.oid),
                ..TableMeta::default()
            },
            true,
        ),
    };
    let (version, _) = ddl_version(w, t, msg, message_lsn, &table, (columns, meta, dropped)).await?;
    if born_at(w, t, &table) {
        return Ok(()); // created by this transaction: empty, its key from the start
    }
    if w.ended.contains(&table) {
        // The table's history had ended (it was dropped, renamed away or
        // left the publication) and it is defined again: created again
        // under the name, or renamed onto it. Published whole, its rows
        // come from a snapshot now; otherwise from one when it joins.
        if let (Some(d), false) = (&msg.table, t.skip) {
            if publishes_visible(w.sql, t, &w.publication, &d.schema, &d.name).await? {
                w.snapshot_now(info, &[d.table_ref()]).await?;
            }
        }
        return Ok(());
    }
    // A DDL whose effect on existing rows the archive cannot reproduce (a
    // conversion, a default computed per row, a partition attached or
    // detached): a snapshot now makes the table restorable again from here.
    let unknowable = !dropped && crate::schema::shape::breaks_rows(&w.gen.schemas, &table, version);
    // A DDL that changed the row key (another primary key, or replica
    // identity index): rows are identified anew from here, and a snapshot
    // gives readers that key from the start (restore re-keys across it
    // anyway; the export's as-of query answers only from a snapshot).
    let rekeyed = !dropped
        && w.gen
            .schemas
            .row_key_changes(&table)
            .iter()
            .any(|v| v.version == version);
    // (Taken from the source: one `waly compact` made from the archive
    // knows no more than the archive.)
    let snapshotted_since = w
        .gen
        .manifests
        .iter()
        .any(|m| m.lsn > t.commit_lsn && m.compacted_at.is_none() && m.tables.iter().any(|e| e.table == table));
    if (unknowable || rekeyed) && !snapshotted_since {
        if let Some(d) = &msg.table {
            let why = match unknowable {
                true => "this DDL changed rows in a way the archive cannot reproduce; taking a snapshot of the table",
                false => "this DDL changed the key rows are identified by; taking a snapshot of the table",
            };
            tracing::info!(table, lsn = %t.commit_lsn, "{why}");
            // Changes streamed after this keep the DDL's version (the
            // snapshot's has the same columns) until their next description.
            w.snapshot_now(info, &[d.table_ref()]).await?;
        }
    }
    Ok(())
}

/// Whether `table`'s archive starts empty at transaction `t`'s commit: `t`
/// created it ([`settle_born`]), in this session or, replayed after a
/// crash, in the one that wrote that empty snapshot. Its DDL in `t` needs
/// no snapshot of its own: there were no rows for it to change.
fn born_at(w: &Writer<'_>, t: &Txn, table: &str) -> bool {
    t.created.iter().any(|r| r.qualified() == table)
        || w.gen.manifests.iter().any(|m| {
            m.lsn == t.commit_lsn
                && m.compacted_at.is_none()
                && m.tables.iter().any(|e| e.table == table && e.rows == 0)
        })
}

/// Decides, at the commit of transaction `t`, how table `b` it created is
/// archived. Published whole from its creation on, under the one name it had in
/// `t`, with no rows but its changes (none streamed before its messages,
/// no partition attached), and not a name whose history `t` itself ended
/// (dropped and created again in one transaction: its end and its start
/// would share an LSN), it is archived from `t`'s commit, empty, and its
/// messages record its versions there. Otherwise its messages are taken as
/// any other's, in order: it starts from a snapshot, as a table joining
/// the publication does. Publication membership comes from the messages,
/// which the trigger wrote inside `t`: never from the catalog of now,
/// where the table may have joined a publication after its rows.
async fn settle_born(info: &ConnInfo, w: &mut Writer<'_>, t: &mut Txn, b: Born) -> Result<(), Error> {
    let first = b.messages.first().and_then(|(m, _)| m.table.clone());
    let name = b.name();
    let one_name = b.messages.iter().all(|(m, _)| m.qualified() == name);
    let born = match (&first, &name) {
        (Some(d), Some(q)) => {
            b.published
                && !b.unpublished
                && !b.filled
                && one_name
                && d.qualified() == *q
                && !b.messages.iter().any(|(m, _)| m.dropped)
                && q != crate::crypt::shapes::TABLE
                && (!w.gen.snapshots.contains_key(q) || w.ended.contains(q))
                && !w
                    .gen
                    .schemas
                    .versions(q)
                    .iter()
                    .any(|v| v.dropped && v.commit_lsn == t.commit_lsn)
        }
        _ => false,
    };
    let mut rest = b.messages.as_slice();
    if let (true, Some(d), Some(q)) = (born, &first, &name) {
        let (m, lsn) = &b.messages[0];
        ddl_version(w, t, m, *lsn, q, (d.columns.clone(), d.meta.clone(), false)).await?;
        w.created(t, d.table_ref());
        rest = &b.messages[1..];
    }
    for (m, lsn) in rest {
        on_ddl(info, w, t, m, *lsn).await?;
    }
    // Published but not born empty: from a snapshot now, as a table that
    // joins the publication.
    let last = b.messages.last().and_then(|(m, _)| m.table.as_ref());
    if let (false, true, Some(d)) = (born, b.published, last) {
        let q = d.qualified();
        let archived = w.gen.snapshots.contains_key(&q) && !w.ended.contains(&q);
        if !archived && publishes_visible(w.sql, t, &w.publication, &d.schema, &d.name).await? {
            w.snapshot_now(info, &[d.table_ref()]).await?;
        }
    }
    Ok(())
}

/// The schema version a DDL message makes of `table` in transaction `t`:
/// `(columns, meta, dropped)` as the message leaves it. The version an
/// earlier session recorded for the same message is taken again (the
/// transaction streamed again after a restart); else a new one is
/// written. Returns it, and whether it is new.
async fn ddl_version(
    w: &mut Writer<'_>,
    t: &mut Txn,
    msg: &crate::schema::ddl::DdlMessage,
    message_lsn: Lsn,
    table: &str,
    (columns, meta, dropped): (Vec<ColumnDef>, TableMeta, bool),
) -> Result<(u32, bool), Error> {
    let reusable = w
        .gen
        .schemas
        .reusable_definition(table, t.commit_lsn, Some(message_lsn), &columns, &meta, dropped)
        .map(|s| s.version);
    if let Some(v) = reusable {
        // A version an earlier session wrote, read back without its data
        // key: its statement text and literals are sealed. The message
        // (the same DDL, decoded again) says them: what the writer decides
        // next (a snapshot?) reads them.
        let sealed = |s: &SchemaRecord| s.sealed.is_some() || s.ddl.as_ref().is_some_and(|d| d.sealed.is_some());
        if let Some(stored) = w.gen.schemas.version(table, v).filter(|s| sealed(s)).cloned() {
            w.gen.schemas.insert(SchemaRecord {
                columns,
                meta,
                ddl: Some(msg.ddl(message_lsn)),
                sealed: None,
                ..stored
            });
        }
        w.reuse_version(Some(t), table, v)?;
        return Ok((v, false));
    }
    let rec = SchemaRecord {
        commit_lsn: t.commit_lsn,
        commit_time: Some(t.commit_time),
        table: table.to_string(),
        version: w.gen.schemas.next_version(table),
        columns,
        source: Some("ddl".into()),
        meta,
        ddl: Some(msg.ddl(message_lsn)),
        dropped,
        sealed: None,
    };
    let v = rec.version;
    w.new_version(Some(t), rec).await?;
    Ok((v, true))
}

/// A publication command (`CREATE`, `ALTER` or `DROP PUBLICATION`), or an
/// `ALTER TABLE` of a partitioned table (a partition attached is published
/// through its root from then on, not as itself; one detached is a table
/// of its own), with the tables each publication publishes whole as it
/// left them. Each
/// archived table that waly's publication no longer publishes whole ends
/// its history here: a version marked dropped, naming the command (readers
/// refuse points from there until a snapshot starts it again). Each table
/// it publishes whole that is not archived, or whose history ended, is
/// snapshotted now (if the catalog of now still publishes it whole: else
/// a later command or description will).
async fn on_publication(
    info: &ConnInfo,
    w: &mut Writer<'_>,
    t: &mut Txn,
    msg: &crate::schema::ddl::DdlMessage,
    pubs: &BTreeMap<String, Vec<(String, String)>>,
    message_lsn: Lsn,
) -> Result<(), Error> {
    if t.skip {
        return Ok(()); // archived: the session that archived it did this
    }
    let whole: &[(String, String)] = pubs.get(&w.publication).map_or(&[], |v| v.as_slice());
    let named: std::collections::BTreeSet<String> = whole.iter().map(|(s, n)| format!("{s}.{n}")).collect();
    t.note_publications(&named);
    let leaving: Vec<String> = w
        .gen
        .snapshots
        .keys()
        .filter(|table| !named.contains(*table) && !w.ended.contains(*table))
        // A snapshot newer than the command already says what the table held.
        .filter(|table| w.gen.last_snapshot(table).is_some_and(|s| t.commit_lsn >= s))
        .cloned()
        .collect();
    for table in leaving {
        // The table goes on (only its archive stops): its version keeps
        // its columns, for readers that follow a row across.
        let (columns, meta) = w
            .gen
            .schemas
            .latest(&table)
            .map(|v| (v.columns.clone(), v.meta.clone()))
            .unwrap_or_default();
        let (_, new) = ddl_version(w, t, msg, message_lsn, &table, (columns, meta, true)).await?;
        if new {
            tracing::warn!(
                table,
                publication = w.publication,
                lsn = %t.commit_lsn,
                command = msg.command,
                "the publication no longer publishes this table whole: its history in the archive ends \
                 here, and goes on from a snapshot if it is published whole again"
            );
        }
    }
    let mut joining = Vec::new();
    for (schema, name) in whole {
        let q = format!("{schema}.{name}");
        // (A table this transaction created is settled at its commit.)
        if (!w.gen.snapshots.contains_key(&q) || w.ended.contains(&q))
            && !t.holds(&q)
            && publishes_visible(w.sql, t, &w.publication, schema, name).await?
        {
            joining.push(TableRef {
                schema: schema.clone(),
                name: name.clone(),
            });
        }
    }
    if !joining.is_empty() {
        w.snapshot_now(info, &joining).await?;
    }
    Ok(())
}

async fn handle_events(
    info: &ConnInfo,
    sql: &tokio_postgres::Client,
    w: &mut Writer<'_>,
    txn: &mut Option<Txn>,
    events: &[Event],
) -> Result<(), Error> {
    for ev in events {
        if !matches!(ev, Event::Change(_)) {
            w.write_waiting().await?;
        }
        match ev {
            Event::Begin {
                xid,
                commit_lsn,
                commit_time,
            } => {
                let skip = w.gen.tail.last_commit.is_some_and(|c| *commit_lsn <= c.commit_lsn);
                if !skip {
                    // The oldest committed transaction not archived yet (lag
                    // in seconds), noted once per transaction.
                    let _ = w.metrics.pending_commit_ms.compare_exchange(
                        0,
                        commit_time.timestamp_millis(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                *txn = Some(Txn {
                    commit_lsn: *commit_lsn,
                    xid: *xid,
                    commit_time: *commit_time,
                    skip,
                    visible: false,
                    records: 0,
                    versions: Vec::new(),
                    born: Vec::new(),
                    created: Vec::new(),
                });
            }
            Event::Relation(rel) => {
                let table = rel.qualified().to_string();
                let snapshot = match w.gen.snapshots.get(&table).copied() {
                    Some(s) if !w.ended.contains(&table) => s,
                    _ => {
                        // pgoutput describes a partition after its root when
                        // it publishes via the root: the partition is not a
                        // table of the archive; nor is a table published in
                        // part. (Asked each time: Relation messages are
                        // rare, and a table may join the publication.)
                        // Asked once this transaction is visible: it may
                        // have created the table, or published it.
                        if let Some(t) = txn.as_mut() {
                            await_visible(sql, t).await?;
                        }
                        if !publishes(sql, &w.publication, &rel.schema, &rel.name).await? {
                            continue;
                        }
                        // An archived table under another name, renamed
                        // without a DDL message saying so (no trigger, or
                        // it failed): the old name's history ends here, the
                        // first the archive knows of it. (Not for a
                        // transaction of an earlier session: PostgreSQL 16
                        // may describe it with the names of now.)
                        if let Some(t) = txn.as_mut().filter(|t| !t.skip && t.commit_lsn >= w.session_start) {
                            let ddl = crate::schema::Ddl {
                                tag: "ALTER".into(),
                                command: format!("renamed to {table} (not recorded: seen in a change under that name)"),
                                rewritten: false,
                                message_lsn: None,
                                sealed: None,
                            };
                            w.end_renamed(t, rel.oid, &table, "relation", ddl).await?;
                        }
                        // A table that joined the publication, or whose
                        // history ended (dropped, renamed away, or published
                        // only in part) and that is published whole again
                        // without a DDL message saying so: snapshot it now.
                        // Its snapshot is newer than this transaction,
                        // which it therefore already contains.
                        let t = TableRef {
                            schema: rel.schema.clone(),
                            name: rel.name.clone(),
                        };
                        w.snapshot_now(info, &[t]).await?;
                        if let Some(s) = w.gen.schemas.latest(&table) {
                            w.active.insert(table, s.version);
                        }
                        continue;
                    }
                };
                let commit_lsn = txn.as_ref().map(|t| t.commit_lsn).unwrap_or_default();
                if commit_lsn < snapshot {
                    // This transaction is in the snapshot; the changes after
                    // it follow the snapshot's columns until the next
                    // description.
                    if let Some(s) = w.gen.schemas.at(&table, snapshot) {
                        w.active.insert(table, s.version);
                    }
                    continue;
                }
                let streamed: Vec<ColumnDef> = rel.columns.iter().map(streamed_column).collect();
                w.put_back.remove(&table);
                if let Some(v) = w.gen.schemas.reusable(&table, commit_lsn, &streamed).map(|s| s.version) {
                    w.reuse_version(txn.as_mut(), &table, v)?;
                    continue;
                }
                // A transaction committed before this session started may be
                // described with the catalog of now (PostgreSQL 16 and later):
                // with the DDL trigger on, matched to the version in force by
                // attnum; else when only names differ.
                let replayed = commit_lsn < w.session_start;
                let mut later = None;
                if replayed && w.captured && !txn.as_ref().is_some_and(|t| t.skip) {
                    if let Some(now) = w.gen.schemas.in_force(&table, commit_lsn).cloned() {
                        // A lost connection ends the session (nothing is
                        // confirmed past it); a query the server refuses
                        // leaves the names-only rule below.
                        if let Some(t) = txn.as_mut() {
                            await_visible(sql, t).await?;
                        }
                        let catalog = match crate::schema::ddl::catalog_definition(sql, &rel.schema, &rel.name).await {
                            Ok(c) => c,
                            Err(e) if e.is_transient() => return Err(e),
                            Err(e) => {
                                tracing::warn!(table, error = %crate::error::chain(&e), "cannot read the table's catalog to match a later description by attnum");
                                None
                            }
                        };
                        later = catalog.and_then(|c| crate::schema::later::from_catalog(&now, &streamed, &c.columns));
                    }
                }
                let later = later.or_else(|| w.gen.schemas.described_later(&table, commit_lsn, &streamed, replayed));
                if let Some(later) = later {
                    for u in &later.unknown {
                        tracing::warn!(table, column = u.name, commit_lsn = %commit_lsn, "{}; archived as unknown", u.why);
                    }
                    tracing::debug!(
                        table,
                        version = later.version,
                        "a description from a later catalog; archiving under the columns of the time"
                    );
                    w.active.insert(table.clone(), later.version);
                    w.put_back.insert(table, PutBack::from(later));
                    continue;
                }
                if let Some(t) = txn.as_mut().filter(|t| !t.skip) {
                    if let Some(later) = w.gen.schemas.described_earlier(&table, commit_lsn, &streamed) {
                        // A session killed after recording this shape for a
                        // later transaction, before archiving it: the
                        // version moves to this one, the first with its
                        // shape (neither transaction is archived yet).
                        let version = later.version;
                        let rec = SchemaRecord {
                            commit_lsn,
                            commit_time: Some(t.commit_time),
                            ..later.clone()
                        };
                        w.move_version(rec).await?;
                        w.reuse_version(Some(t), &table, version)?;
                        continue;
                    }
                }
                if txn.as_ref().is_some_and(|t| t.skip) {
                    // A transaction the archive has (streamed again after a
                    // restart): no version is made for it. PostgreSQL 16 may
                    // describe it with the catalog of a later moment; the
                    // changes that follow take the archive's version at
                    // their own commit.
                    w.active.remove(&table);
                    continue;
                }
                // The DDL was not captured (no event trigger, or it failed):
                // learn the new shape from the description and the catalog
                // (once this transaction, which may have made it, is visible).
                if let Some(t) = txn.as_mut() {
                    await_visible(sql, t).await?;
                }
                let (columns, meta) = relation_columns(sql, rel).await;
                let rec = SchemaRecord {
                    commit_lsn,
                    commit_time: txn.as_ref().map(|t| t.commit_time),
                    table: table.clone(),
                    version: w.gen.schemas.next_version(&table),
                    columns,
                    source: Some("relation".into()),
                    meta,
                    ddl: None,
                    dropped: false,
                    sealed: None,
                };
                w.new_version(txn.as_mut(), rec).await?;
            }
            Event::Message(m) if m.prefix == crate::schema::ddl::PREFIX => {
                let (Some(t), true) = (txn.as_mut(), m.transactional) else {
                    continue;
                };
                let Some(msg) = crate::schema::ddl::DdlMessage::parse(&m.content)? else {
                    tracing::warn!(lsn = %m.lsn, "a DDL message of a version this waly does not know; relying on the next change's description");
                    continue;
                };
                match &msg.publications {
                    Some(pubs) => on_publication(info, w, t, &msg, pubs, m.lsn).await?,
                    None if t.hold(&w.publication, &msg, m.lsn) => {}
                    None => on_ddl(info, w, t, &msg, m.lsn).await?,
                }
            }
            Event::Change(c) => {
                let Some(t) = txn.as_mut() else { continue };
                let before_snapshot = w.gen.snapshots.get(&*c.table).is_none_or(|s| c.commit_lsn < *s);
                if t.skip || before_snapshot || w.ended.contains(&*c.table) {
                    continue;
                }
                let schema_version = match w.active.get(&*c.table) {
                    Some(v) => *v,
                    None => w.gen.schemas.at(&c.table, c.commit_lsn).map_or(0, |s| s.version),
                };
                let put_back;
                let c = match w.put_back.get(&*c.table) {
                    Some(r) if !r.is_empty() => {
                        put_back = r.apply(c);
                        &put_back
                    }
                    _ => c,
                };
                w.push_change(c, schema_version).await?;
                t.records += 1;
                w.pending_events += 1;
            }
            Event::Message(m) => {
                let (Some(t), Some(r)) = (txn.as_mut(), m.txn) else {
                    continue;
                };
                if t.skip || m.prefix != "waly" {
                    continue;
                }
                w.builder.push_message(&MessageRecord {
                    commit_lsn: r.commit_lsn,
                    seq: r.seq,
                    lsn: m.lsn,
                    xid: r.xid,
                    commit_time: r.commit_time,
                    prefix: m.prefix.clone(),
                    content: m.content.clone(),
                })?;
                t.records += 1;
                w.pending_events += 1;
            }
            Event::Commit {
                commit_lsn, end_lsn, ..
            } => {
                w.metrics.set_received(*end_lsn);
                let Some(mut t) = txn.take() else { continue };
                for b in std::mem::take(&mut t.born) {
                    settle_born(info, w, &mut t, b).await?;
                }
                if !t.created.is_empty() {
                    w.write_created(&t).await?;
                }
                if !t.skip && (t.records > 0 || !t.versions.is_empty()) {
                    w.builder.push_commit(&CommitRecord {
                        commit_lsn: *commit_lsn,
                        end_lsn: *end_lsn,
                        xid: t.xid,
                        commit_time: t.commit_time,
                        records: t.records,
                    })?;
                    w.pending_txns += 1;
                } else if w.builder.is_empty() {
                    // Nothing of it to archive, and nothing else waiting.
                    w.metrics.pending_commit_ms.store(0, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}
