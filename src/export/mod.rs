//! `waly export`: each table's changes (and its base snapshot) as a Parquet
//! dataset in hive layout, `<table>/date=<yyyy-mm-dd>/part-<first>-<last>.parquet`,
//! written once and continued incrementally from a cursor at the
//! destination. docs/EXPORT.md describes the columns, the types and the
//! as-of query.

pub mod file;
mod read;
pub mod sink;
pub mod value;

use crate::archive::state::{self, Identity};
use crate::archive::{layout, Store};
use crate::event::{Op, Row};
use crate::log::{Bound, LogOptions};
use crate::schema::{SchemaRecord, Schemas};
use crate::{Error, Lsn};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use file::{OutColumn, OutRow};
use read::{Held, Owned};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use value::Kind;

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Only these tables (`schema.table`); all when `None`.
    pub tables: Option<Vec<String>>,
    /// Only changes committed at or after this point (and no snapshot rows).
    pub since: Option<Bound>,
    /// Only changes committed at or before this point.
    pub until: Option<Bound>,
    /// Close a file at the next transaction once it holds this many bytes.
    pub file_bytes: usize,
}

/// What an export did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExportStats {
    /// Change rows written.
    pub changes: u64,
    /// Snapshot rows written.
    pub snapshot_rows: u64,
    /// Rows saying a table was empty at a snapshot, written.
    pub empty_snapshots: u64,
    /// Rows saying the archive does not know a table's rows from there
    /// until its next snapshot, written.
    pub unknown_rows: u64,
    /// Files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files of an export that stopped before its cursor, deleted.
    pub removed: u64,
    /// Transactions too large to hold whose intent the index found.
    pub intents_indexed: u64,
    /// Those whose intent was found by reading their segments whole.
    pub intents_scanned: u64,
}

/// The cursor at the destination: where each table's export ends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    /// The archive exported here.
    archive: ArchiveId,
    /// Per table: the commit LSN its export is complete through, and the
    /// data column names its files have used.
    tables: BTreeMap<String, TableCursor>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TableCursor {
    through: Lsn,
    #[serde(default)]
    names: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ArchiveId {
    system_identifier: String,
    database: String,
    slot: String,
    created_at: String,
}

impl ArchiveId {
    fn of(id: &Identity) -> ArchiveId {
        ArchiveId {
            system_identifier: id.system_identifier.clone(),
            database: id.database.clone(),
            slot: id.slot.clone(),
            created_at: id.created_at.to_rfc3339(),
        }
    }
}

const CURSOR: &str = "_waly/cursor.json";

/// A column's identity across schema versions: its attnum (its name in
/// versions recorded before waly knew attnums).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ident {
    Attnum(i16),
    Name(String),
}

fn ident(c: &crate::schema::ColumnDef) -> Ident {
    c.attnum.map_or_else(|| Ident::Name(c.name.clone()), Ident::Attnum)
}

/// The data columns of a file whose first row is in version `from`: every
/// column of that version and the later ones, named as the newest names
/// it, its earlier names kept, typed to hold every version's values.
fn columns_from(versions: &[SchemaRecord], from: u32) -> (Vec<Ident>, Vec<OutColumn>) {
    let mut cols: BTreeMap<Ident, OutColumn> = BTreeMap::new();
    for v in versions.iter().filter(|v| v.version >= from && !v.dropped) {
        for c in &v.columns {
            let kind = Kind::of(c);
            match cols.get_mut(&ident(c)) {
                Some(o) => {
                    o.kind = Kind::unify(&o.kind, &kind);
                    if o.name != c.name {
                        let old = std::mem::replace(&mut o.name, c.name.clone());
                        if !o.earlier_names.contains(&old) {
                            o.earlier_names.push(old);
                        }
                    }
                }
                None => {
                    cols.insert(
                        ident(c),
                        OutColumn {
                            name: c.name.clone(),
                            kind,
                            earlier_names: Vec::new(),
                        },
                    );
                }
            }
        }
    }
    // Earlier names from versions before `from` too, so a file names every
    // name its column had.
    for v in versions.iter().filter(|v| v.version < from) {
        for c in &v.columns {
            if let Some(o) = cols.get_mut(&ident(c)) {
                if o.name != c.name && !o.earlier_names.contains(&c.name) {
                    o.earlier_names.insert(0, c.name.clone());
                }
            }
        }
    }
    cols.into_iter().unzip()
}

/// An open file of a table.
struct Open {
    /// The file's data columns.
    columns: Vec<OutColumn>,
    /// The least and greatest commit LSN of its rows (its name), and the
    /// last row's (a file ends only between transactions).
    lsns: Option<(u64, u64)>,
    last: Option<u64>,
    /// Bytes written so far (the writer keeps it current).
    written: Arc<std::sync::atomic::AtomicUsize>,
    /// Rows not yet handed to the writer.
    batch: Vec<OutRow>,
    date: NaiveDate,
    idents: Vec<Ident>,
    /// Per schema version of its rows: how they map onto the file's columns.
    maps: std::collections::HashMap<u32, Arc<VersionMap>>,
    /// The file's `_old_key` columns (indices into `idents`).
    key: Vec<usize>,
}

/// How rows written in one schema version map onto a file's columns.
struct VersionMap {
    /// Per file column, its name in the version (`None`: not in it).
    names: Vec<Option<Arc<str>>>,
    /// The file's key columns, when the version has each of them.
    key: Vec<usize>,
    /// Whether the file has every column of the version.
    covers: bool,
}

impl Open {
    fn map(&mut self, version: &SchemaRecord) -> Arc<VersionMap> {
        let idents = &self.idents;
        let key = &self.key;
        self.maps
            .entry(version.version)
            .or_insert_with(|| {
                let names: Vec<Option<Arc<str>>> = idents
                    .iter()
                    .map(|id| {
                        version
                            .columns
                            .iter()
                            .find(|c| ident(c) == *id)
                            .map(|c| Arc::from(c.name.as_str()))
                    })
                    .collect();
                // The key is the version's primary key, when it is the file's.
                let mut own = row_key(idents, version);
                own.sort_unstable();
                let mut file_key = key.clone();
                file_key.sort_unstable();
                Arc::new(VersionMap {
                    key: if own == file_key { key.clone() } else { Vec::new() },
                    covers: version.columns.iter().all(|c| idents.contains(&ident(c))),
                    names,
                })
            })
            .clone()
    }
}

/// The transaction being read. Its changes are kept until its end, since
/// its intent (its `waly` messages) may come after them; a transaction of
/// more than `PENDING_MAX` changes has its messages looked up in its
/// segments instead, and its changes are written as they come.
struct Pending {
    commit_lsn: Lsn,
    intent: Vec<String>,
    changes: Vec<Held>,
    /// The intent, once looked up.
    known: Option<Option<Arc<str>>>,
}

const PENDING_MAX: usize = 50_000;

struct Exporter<'a> {
    store: &'a Store,
    /// For the reads this thread makes itself (a large transaction's intent).
    runtime: tokio::runtime::Handle,
    sink: sink::Sink,
    tmp: std::path::PathBuf,
    opts: &'a ExportOptions,
    cursor: Cursor,
    /// Tables exported: given, or all with a version in the archive.
    wanted: Option<BTreeSet<String>>,
    generation: String,
    schemas: Arc<Schemas>,
    open: BTreeMap<String, Open>,
    pending: Option<Pending>,
    /// A finished transaction's emptied list, kept for the next (a large
    /// transaction's list is megabytes: growing it anew each time costs
    /// reallocations and fresh pages).
    spare: Vec<Held>,
    /// The last commit or snapshot read (a snapshot's rows are exported at
    /// its LSN): what the cursor says the export is complete through.
    through: Option<Lsn>,
    stats: ExportStats,
    names: BTreeMap<String, BTreeSet<String>>,
    /// Every table of every generation read.
    seen_tables: BTreeSet<String>,
    seq: u64,
    /// The generation's schema versions across which its rows cannot be
    /// carried ([`crate::schema::shape::breaks_rows`]) that this run
    /// writes an `unknown` row for, by commit LSN, and how many are written.
    gaps: Vec<(Lsn, String, u32)>,
    gaps_written: usize,
}

impl Exporter<'_> {
    fn wants(&self, table: &str) -> bool {
        self.wanted.as_ref().is_none_or(|w| w.contains(table))
    }

    fn exported_through(&self, table: &str) -> Option<Lsn> {
        self.cursor.tables.get(table).map(|t| t.through)
    }

    /// Whether this run exports `table`'s snapshot at `lsn`: a table's
    /// snapshot is exported once, by the run whose cursor it passes, and
    /// not when `--since` is given. A snapshot taken after `--until` (a
    /// pruned archive keeps a segment of commits before its first
    /// snapshot) is past the point like a later commit: a later run
    /// exports it.
    fn takes_snapshot(&mut self, table: &str, lsn: Lsn, taken_at: DateTime<Utc>) -> bool {
        let past_until = match self.opts.until {
            Some(Bound::Lsn(p)) => lsn > p,
            Some(Bound::Time(t)) => taken_at > t,
            None => false,
        };
        if past_until {
            return false;
        }
        self.see(lsn);
        let exported = self.exported_through(table).is_some_and(|t| t >= lsn);
        self.wants(table) && !exported && self.opts.since.is_none()
    }

    /// Writes a snapshot row of `table` (`op`: `snapshot`, with its `row`,
    /// or `empty_snapshot`, without).
    fn write_snapshot(
        &mut self,
        table: &str,
        op: &'static str,
        lsn: Lsn,
        taken_at: DateTime<Utc>,
        schema_version: u32,
        row: Option<Row>,
    ) -> Result<(), Error> {
        let schemas = self.schemas.clone();
        let version = schemas
            .version(table, schema_version)
            .ok_or_else(|| missing_version(table, schema_version))?;
        let out = OutRow::snapshot(op, lsn, taken_at, schema_version);
        self.write(table, version, out, row, None, &[])
    }

    /// The schema versions of the generation whose `schemas` these are
    /// that this run writes an `unknown` row for: of the tables exported,
    /// past their cursor and within `--since` and `--until`.
    fn gaps_of(&self, schemas: &Schemas) -> Vec<(Lsn, String, u32)> {
        let mut gaps: Vec<(Lsn, String, u32)> = schemas
            .tables()
            .filter(|t| self.wants(t))
            .flat_map(|t| schemas.versions(t).iter().map(move |v| (t, v)))
            .filter(|(t, v)| self.exported_through(t).is_none_or(|c| v.commit_lsn > c))
            .filter(|(_, v)| {
                v.commit_time.is_some_and(|t| {
                    crate::log::after(self.opts.since, v.commit_lsn, t)
                        && crate::log::before(self.opts.until, v.commit_lsn, t)
                })
            })
            .filter(|(t, v)| crate::schema::shape::breaks_rows(schemas, t, v.version))
            .map(|(t, v)| (v.commit_lsn, t.to_string(), v.version))
            .collect();
        gaps.sort();
        gaps
    }

    /// Writes an `unknown` row for each gap version committed before
    /// `upto` not written yet: from there the as-of query answers nothing
    /// for the table (it fails, saying why) until a later snapshot row.
    /// Its `_seq` is the largest, so it comes after its transaction's own
    /// changes.
    fn write_gaps(&mut self, upto: Lsn) -> Result<(), Error> {
        while let Some((lsn, table, version)) = self.gaps.get(self.gaps_written).cloned() {
            if lsn >= upto {
                break;
            }
            self.gaps_written += 1;
            let schemas = self.schemas.clone();
            let v = schemas
                .version(&table, version)
                .ok_or_else(|| missing_version(&table, version))?;
            let mut out = OutRow::snapshot("unknown", lsn, v.commit_time.unwrap_or_default(), version);
            out.seq = i64::MAX;
            self.write(&table, v, out, None, None, &[])?;
            self.stats.unknown_rows += 1;
        }
        Ok(())
    }

    fn item(&mut self, item: Owned) -> Result<(), Error> {
        let at = match &item {
            Owned::Snapshot { lsn, .. } | Owned::SnapshotRow { lsn, .. } => Some(*lsn),
            Owned::Change(held) => Some(held.commit_lsn),
            Owned::Message(m) => Some(m.commit_lsn),
            // The generation before is over: all of its gaps.
            Owned::Generation { .. } => Some(Lsn(u64::MAX)),
            Owned::End { through } => through.map(|t| Lsn(t.0.saturating_add(1))),
        };
        if let Some(upto) = at {
            self.write_gaps(upto)?;
        }
        match item {
            Owned::Generation { id, schemas } => {
                self.finish_pending()?;
                self.close_all()?;
                self.generation = id;
                self.seen_tables.extend(schemas.tables().map(str::to_string));
                self.gaps = self.gaps_of(&schemas);
                self.gaps_written = 0;
                self.schemas = schemas;
            }
            Owned::End { .. } => {
                self.finish_pending()?;
                self.close_all()?;
            }
            Owned::Snapshot {
                table,
                lsn,
                taken_at,
                rows,
                schema_version,
            } => {
                // A table empty at the snapshot has no rows to stand for it:
                // one row says the snapshot was taken, so that what came
                // before it stops counting after it.
                if rows > 0 || !self.takes_snapshot(&table, lsn, taken_at) {
                    return Ok(());
                }
                self.write_snapshot(&table, "empty_snapshot", lsn, taken_at, schema_version, None)?;
                self.stats.empty_snapshots += 1;
            }
            Owned::SnapshotRow {
                table,
                lsn,
                taken_at,
                row,
                schema_version,
            } => {
                if !self.takes_snapshot(&table, lsn, taken_at) {
                    return Ok(());
                }
                self.write_snapshot(&table, "snapshot", lsn, taken_at, schema_version, Some(row))?;
                self.stats.snapshot_rows += 1;
            }
            Owned::Change(held) => {
                self.see(held.commit_lsn);
                let table = &*held.table;
                if !self.wants(table) || self.exported_through(table).is_some_and(|t| held.commit_lsn <= t) {
                    return Ok(());
                }
                self.pend(held.commit_lsn)?;
                let Some(p) = self.pending.as_mut() else { return Ok(()) };
                if let Some(intent) = p.known.clone() {
                    return self.change(held, intent);
                }
                p.changes.push(held);
                if p.changes.len() >= PENDING_MAX {
                    let lsn = p.commit_lsn;
                    let (found, indexed) =
                        self.runtime
                            .block_on(intent_of(self.store, &self.generation, &self.schemas, lsn))?;
                    match indexed {
                        true => self.stats.intents_indexed += 1,
                        false => self.stats.intents_scanned += 1,
                    }
                    let intent: Option<Arc<str>> = (!found.is_empty()).then(|| Arc::from(found.join("; ")));
                    let held = std::mem::take(&mut p.changes);
                    p.known = Some(intent.clone());
                    self.write_held(held, intent)?;
                }
            }
            Owned::Message(m) => {
                self.see(m.commit_lsn);
                self.pend(m.commit_lsn)?;
                if let Some(p) = self.pending.as_mut().filter(|p| p.known.is_none()) {
                    p.intent.push(m.content);
                }
            }
        }
        Ok(())
    }

    fn see(&mut self, lsn: Lsn) {
        self.through = Some(self.through.map_or(lsn, |t| t.max(lsn)));
    }

    /// Starts collecting transaction `lsn` (writing the one before).
    fn pend(&mut self, lsn: Lsn) -> Result<(), Error> {
        if self.pending.as_ref().is_some_and(|p| p.commit_lsn == lsn) {
            return Ok(());
        }
        self.finish_pending()?;
        self.pending = Some(Pending {
            commit_lsn: lsn,
            intent: Vec::new(),
            changes: std::mem::take(&mut self.spare),
            known: None,
        });
        Ok(())
    }

    /// Writes the collected transaction's changes, each with its intent.
    fn finish_pending(&mut self) -> Result<(), Error> {
        let Some(p) = self.pending.take() else { return Ok(()) };
        if p.known.is_some() {
            return Ok(());
        }
        let intent: Option<Arc<str>> = (!p.intent.is_empty()).then(|| Arc::from(p.intent.join("; ")));
        self.write_held(p.changes, intent)
    }

    /// Writes held changes with their transaction's intent, keeping the emptied list.
    fn write_held(&mut self, mut held: Vec<Held>, intent: Option<Arc<str>>) -> Result<(), Error> {
        for c in held.drain(..) {
            self.change(c, intent.clone())?;
        }
        if held.capacity() > self.spare.capacity() {
            self.spare = held;
        }
        Ok(())
    }

    fn change(&mut self, c: Held, intent: Option<Arc<str>>) -> Result<(), Error> {
        let table = &*c.table;
        let schemas = self.schemas.clone();
        let Some(version) = schemas.version(table, c.schema_version) else {
            return Err(missing_version(table, c.schema_version));
        };
        let out = OutRow {
            op: c.op.as_str(),
            commit_lsn: c.commit_lsn.0,
            seq: c.seq as i64,
            xid: c.xid,
            commit_time: c.commit_time,
            schema_version: c.schema_version,
            intent,
            values: Vec::new(),
            old_key: None,
            unchanged: Vec::new(),
            unknown: Vec::new(),
        };
        // A delete's row is its old row when the replica identity sent it,
        // else its key.
        let (row, old) = match c.op {
            Op::Insert => (c.new, None),
            Op::Update => (c.new, c.old),
            Op::Delete => (c.old.or(c.key), None),
            Op::Truncate => (None, None),
        };
        let unchanged: Vec<&str> = c.unchanged_toast.iter().map(|s| &**s).collect();
        self.write(table, version, out, row, old.as_ref(), &unchanged)?;
        self.stats.changes += 1;
        Ok(())
    }

    /// Puts a row in `table`'s open file (opening or rolling it as needed),
    /// its values carried by column identity from `version`'s names.
    fn write(
        &mut self,
        table: &str,
        version: &SchemaRecord,
        mut out: OutRow,
        row: Option<Row>,
        old: Option<&Row>,
        unchanged: &[&str],
    ) -> Result<(), Error> {
        let date = chrono::DateTime::from_timestamp_micros(out.commit_time)
            .unwrap_or_default()
            .date_naive();
        let roll = self.open.get_mut(table).is_some_and(|o| {
            o.date != date
                || !o.map(version).covers
                || (o.written.load(std::sync::atomic::Ordering::Relaxed) >= self.opts.file_bytes
                    && o.last.is_some_and(|last| last != out.commit_lsn))
        });
        if roll {
            self.close(table)?;
        }
        if !self.open.contains_key(table) {
            self.open_file(table, version.version, date)?;
        }
        let o = self.open.get_mut(table).expect("an open file");
        let map = o.map(version);
        let value = |r: &Row, name: &Option<Arc<str>>| -> Option<String> {
            let name = name.as_deref()?;
            let v = r.0.iter().find(|(n, _)| **n == *name).and_then(|(_, v)| v.clone());
            // An old key's value the archive cannot know: null.
            v.filter(|v| crate::schema::shape::unknown(v).is_none())
        };
        out.values = match row {
            // Values moved from the row, found by name (a row lists its
            // columns in attnum order, as the file mostly does: look from
            // where the last one was found).
            Some(mut r) => {
                let mut at = 0;
                map.names
                    .iter()
                    .map(|name| {
                        let name = name.as_deref()?;
                        let n = r.0.len();
                        let i = (0..n).map(|k| (at + k) % n).find(|&i| *r.0[i].0 == *name)?;
                        at = i + 1;
                        r.0[i].1.take()
                    })
                    .collect()
            }
            None => vec![None; map.names.len()],
        };
        // A value the archive cannot know is null, and named in `_unknown`
        // (never exported as a value).
        for (i, v) in out.values.iter_mut().enumerate() {
            if v.as_deref().and_then(crate::schema::shape::unknown).is_some() {
                *v = None;
                out.unknown.push(o.columns[i].name.clone());
            }
        }
        // The old key, when an update changed the key (and PostgreSQL sent it).
        if let (Some(old), false) = (old, map.key.is_empty()) {
            let sent = map.key.iter().all(|&i| {
                map.names[i]
                    .as_deref()
                    .is_some_and(|n| old.0.iter().any(|(m, _)| **m == *n))
            });
            let old_key: Vec<Option<String>> = map.key.iter().map(|&i| value(old, &map.names[i])).collect();
            if sent && map.key.iter().zip(&old_key).any(|(&i, o)| out.values[i] != *o) {
                out.old_key = Some(old_key);
            }
        }
        out.unchanged = unchanged
            .iter()
            .filter_map(|n| {
                let i = map.names.iter().position(|m| m.as_deref() == Some(*n))?;
                Some(o.columns[i].name.clone())
            })
            .collect();
        o.lsns = Some(match o.lsns {
            None => (out.commit_lsn, out.commit_lsn),
            Some((least, most)) => (least.min(out.commit_lsn), most.max(out.commit_lsn)),
        });
        o.last = Some(out.commit_lsn);
        o.batch.push(out);
        if o.batch.len() >= sink::BATCH {
            // A batch at its full size from the start: grown row by row, it
            // costs reallocations and fresh pages each time.
            let rows = std::mem::replace(&mut o.batch, Vec::with_capacity(sink::BATCH));
            self.sink.send(sink::Cmd::Rows {
                table: table.to_string(),
                rows,
            })?;
        }
        Ok(())
    }

    fn open_file(&mut self, table: &str, from: u32, date: NaiveDate) -> Result<(), Error> {
        let versions = self.schemas.versions(table);
        let (idents, columns) = columns_from(versions, from);
        let latest = versions.iter().rev().find(|v| !v.dropped);
        let key = latest.map(|v| row_key(&idents, v)).unwrap_or_default();
        // `_old_key` holds the key of the versions from `from` on.
        let names = self.names.entry(table.to_string()).or_default();
        names.extend(columns.iter().map(|c| c.name.clone()));
        self.seq += 1;
        let path = self.tmp.join(format!("part-{}.parquet", self.seq));
        let last = versions.iter().map(|v| v.version).max().unwrap_or(from);
        let meta = vec![
            ("waly.table".to_string(), table.to_string()),
            ("waly.generation".to_string(), self.generation.clone()),
            ("waly.schema_version".to_string(), last.to_string()),
            ("waly.schema_versions".to_string(), format!("{from}-{last}")),
        ];
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        self.sink.send(sink::Cmd::Open {
            table: table.to_string(),
            path,
            columns: columns.clone(),
            key: key.clone(),
            meta,
            written: written.clone(),
        })?;
        self.open.insert(
            table.to_string(),
            Open {
                columns,
                lsns: None,
                last: None,
                written,
                batch: Vec::new(),
                date,
                idents,
                maps: std::collections::HashMap::new(),
                key,
            },
        );
        Ok(())
    }

    /// Has the writer finish `table`'s open file and upload it.
    fn close(&mut self, table: &str) -> Result<(), Error> {
        let Some(o) = self.open.remove(table) else {
            return Ok(());
        };
        if !o.batch.is_empty() {
            self.sink.send(sink::Cmd::Rows {
                table: table.to_string(),
                rows: o.batch,
            })?;
        }
        // A file without rows is not uploaded (the writer deletes it at the end).
        if let Some((first, last)) = o.lsns {
            self.sink.send(sink::Cmd::Close {
                table: table.to_string(),
                key: part_key(table, o.date, Lsn(first), Lsn(last)),
            })?;
        }
        Ok(())
    }

    fn close_all(&mut self) -> Result<(), Error> {
        let tables: Vec<String> = self.open.keys().cloned().collect();
        for t in tables {
            self.close(&t)?;
        }
        Ok(())
    }
}

/// The `waly` messages of transaction `lsn`, in order, read from the
/// segments of `generation` whose commit-LSN range (in their names) holds
/// it: only the message lines are parsed.
/// The `waly` messages of transaction `lsn`, and whether the index found them.
async fn intent_of(store: &Store, generation: &str, schemas: &Schemas, lsn: Lsn) -> Result<(Vec<String>, bool), Error> {
    let segments: Vec<(String, u64, u64)> = state::segments(store, generation)
        .await?
        .into_iter()
        .filter(|(key, _, _)| {
            layout::parse_segment_key(key).is_some_and(|(_, first, last)| first <= lsn && lsn <= last)
        })
        .collect();
    if let Some(found) = indexed_intent(store, generation, schemas, lsn, &segments).await? {
        return Ok((found, true));
    }
    Ok((scanned_intent(store, lsn, &segments).await?, false))
}

/// [`intent_of`] through the index, reading only the frames it names;
/// `None` when the index does not cover every segment the transaction may
/// be in (or cannot be read): they are scanned instead.
async fn indexed_intent(
    store: &Store,
    generation: &str,
    schemas: &Schemas,
    lsn: Lsn,
    segments: &[(String, u64, u64)],
) -> Result<Option<Vec<String>>, Error> {
    let (listed, known) = crate::index::segment_indexes_known(store, generation).await?;
    let mut indexes = Vec::new();
    for (key, size, first, last) in listed {
        if segments.iter().any(|(_, n, _)| (first..=last).contains(n)) {
            match crate::index::Index::open_known(store, &key, size, &known).await {
                Ok(idx) => indexes.push(idx),
                Err(_) => return Ok(None),
            }
        }
    }
    let covered = |(key, n, _): &(String, u64, u64)| {
        let fence = layout::segment_fence(key);
        indexes
            .iter()
            .any(|i| i.footer.objects.iter().any(|o| o.number == *n && o.fence == fence))
    };
    if !segments.iter().all(covered) {
        return Ok(None);
    }
    let mut reads = crate::index::MessageReads::default();
    Ok(
        crate::index::transaction_messages(store, &indexes, segments, schemas, lsn, &mut reads)
            .await?
            .ok()
            .map(|found| found.into_iter().map(|(_, content)| content).collect()),
    )
}

/// [`intent_of`] by reading `segments` whole.
async fn scanned_intent(store: &Store, lsn: Lsn, segments: &[(String, u64, u64)]) -> Result<Vec<String>, Error> {
    #[derive(Deserialize)]
    struct Begin {
        commit_lsn: Lsn,
    }
    #[derive(Deserialize)]
    struct Message {
        prefix: String,
        content: String,
    }
    let mut found: BTreeMap<u64, String> = BTreeMap::new();
    for (key, _, _) in segments {
        let bytes = store.get_segment(key).await?;
        let text = zstd::stream::decode_all(&bytes[..]).map_err(|e| Error::Corrupt {
            key: key.clone(),
            why: e.to_string(),
        })?;
        // Records of the transaction, and their `seq` (written only where
        // it is not the previous one plus 1).
        let mut inside = false;
        let mut next_seq = 0u64;
        for line in text.split(|b| *b == b'\n').skip(1) {
            if line.starts_with(br#"{"type":"begin""#) {
                inside = serde_json::from_slice::<Begin>(line).is_ok_and(|b| b.commit_lsn == lsn);
                next_seq = 0;
                continue;
            }
            let record = line.starts_with(br#"{"type":"change""#) || line.starts_with(br#"{"type":"message""#);
            if !inside || !record {
                continue;
            }
            let written = line
                .strip_prefix(br#"{"type":"change","seq":"#)
                .or_else(|| line.strip_prefix(br#"{"type":"message","seq":"#))
                .and_then(|rest| {
                    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                    std::str::from_utf8(&rest[..digits]).ok()?.parse::<u64>().ok()
                });
            let seq = written.unwrap_or(next_seq);
            next_seq = seq + 1;
            if line.starts_with(br#"{"type":"message""#) {
                if let Ok(m) = serde_json::from_slice::<Message>(line) {
                    if m.prefix == "waly" {
                        found.insert(seq, m.content);
                    }
                }
            }
        }
    }
    Ok(found.into_values().collect())
}

/// The indices (into `idents`) of `version`'s row key columns (see
/// [`SchemaRecord::row_key`]), in key order.
fn row_key(idents: &[Ident], version: &SchemaRecord) -> Vec<usize> {
    version
        .row_key()
        .iter()
        .filter_map(|c| idents.iter().position(|i| *i == ident(c)))
        .collect()
}

fn missing_version(table: &str, version: u32) -> Error {
    Error::Corrupt {
        key: format!("schemas/{table}/{version:06}.json"),
        why: "a change names this schema version, which the archive does not have".into(),
    }
}

/// A table's directory at the destination.
fn table_dir(table: &str) -> String {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    layout::table_segment(schema, name)
}

/// Where a file of `table` with commits `first..=last` on `date` goes: its
/// name depends on the LSN range only.
fn part_key(table: &str, date: NaiveDate, first: Lsn, last: Lsn) -> String {
    format!(
        "{}/date={}/part-{:016X}-{:016X}.parquet",
        table_dir(table),
        date.format("%Y-%m-%d"),
        first.0,
        last.0
    )
}

/// The first commit LSN in a part's name.
fn part_first(key: &str) -> Option<Lsn> {
    let name = key.rsplit('/').next()?;
    let hex = name.strip_prefix("part-")?.get(..16)?;
    u64::from_str_radix(hex, 16).ok().map(Lsn)
}

fn destination(dest: &Store, e: Error) -> Error {
    let hint = e.archive_refuses().map(|h| format!("; {h}")).unwrap_or_default();
    match e {
        Error::Store { key, source } => Error::ArchiveMismatch(format!(
            "cannot use the export destination {} ({key}): {source}{hint}",
            dest.url()
        )),
        e => e,
    }
}

/// Exports `store`'s archive to `dest`.
pub async fn export(store: &Store, dest: &Store, opts: &ExportOptions) -> Result<ExportStats, Error> {
    let Some(identity) = state::read_identity(store).await? else {
        return Err(Error::ArchiveMismatch(format!(
            "{} is not a waly archive (no waly.json); check --archive",
            store.url()
        )));
    };
    if let (Some(since), Some(until)) = (opts.since, opts.until) {
        let after = match (since, until) {
            (Bound::Lsn(a), Bound::Lsn(b)) => a > b,
            (Bound::Time(a), Bound::Time(b)) => a > b,
            _ => false,
        };
        if after {
            return Err(Error::NotInArchive(
                "--since is after --until: nothing can be exported".into(),
            ));
        }
    }
    let wanted = match &opts.tables {
        Some(ts) => {
            for t in ts {
                crate::restore::check_archived(store, t).await?;
            }
            Some(ts.iter().cloned().collect::<BTreeSet<_>>())
        }
        None => None,
    };
    let me = ArchiveId::of(&identity);
    let cursor = match dest.get_opt(CURSOR).await.map_err(|e| destination(dest, e))? {
        Some(b) => {
            let c: Cursor = serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                key: format!("{}/{CURSOR}", dest.url()),
                why: e.to_string(),
            })?;
            if c.archive != me {
                return Err(Error::ArchiveMismatch(format!(
                    "the destination {} holds the export of another archive (database {:?} of system {}, slot {:?}, created {}); export this archive to another place",
                    dest.url(),
                    c.archive.database,
                    c.archive.system_identifier,
                    c.archive.slot,
                    c.archive.created_at
                )));
            }
            c
        }
        None => Cursor {
            archive: me.clone(),
            tables: BTreeMap::new(),
        },
    };
    // A cursor first: it marks the destination as this archive's, and an
    // unwritable destination says so before any work.
    dest.put(
        CURSOR,
        Bytes::from(serde_json::to_vec_pretty(&cursor).unwrap_or_default()),
    )
    .await
    .map_err(|e| destination(dest, e))?;
    // The Parquet files before upload: removed when done, and swept after
    // a killed export.
    let scratch = crate::scratch::Scratch::new("export")?;
    let runtime = tokio::runtime::Handle::current();
    let mut ex = Exporter {
        store,
        runtime: runtime.clone(),
        sink: sink::Sink::start(dest.clone(), runtime.clone())?,
        tmp: scratch.path().to_path_buf(),
        opts,
        cursor,
        wanted,
        generation: String::new(),
        schemas: Arc::default(),
        open: BTreeMap::new(),
        pending: None,
        spare: Vec::new(),
        through: None,
        stats: ExportStats::default(),
        names: BTreeMap::new(),
        seen_tables: BTreeSet::new(),
        seq: 0,
        gaps: Vec::new(),
        gaps_written: 0,
    };
    ex.stats.removed = remove_unfinished(dest, &ex.cursor).await?;
    // Where every table this run exports has a cursor, what all of them
    // hold is not read again: neither the snapshots nor the segments at or
    // before the earliest cursor.
    let after = exported_through_all(store, &ex.cursor, ex.wanted.as_ref()).await?;
    // Some tables: of each segment the index covers, only the frames with
    // their changes, and those holding intents, are read.
    let log_opts = LogOptions {
        tables: ex.wanted.clone(),
        messages: true,
        every_schema: true,
        since: opts.since,
        until: opts.until,
        snapshot: opts.since.is_none(),
        skip_repeating_snapshots: true,
        after,
    };
    // The walk on this thread, the export's logic on another, the writing
    // on a third. After a failed walk nothing more is closed or uploaded.
    let result = tokio::task::block_in_place(|| {
        let ex = &mut ex;
        read::walk_beside(&runtime, store, &log_opts, move |batches| {
            for batch in batches {
                for item in batch {
                    ex.item(item)?;
                }
            }
            Ok(())
        })
    });
    let written = ex.sink.finish();
    drop(scratch);
    let ((), walked) = result?;
    // Complete through what the walk covered, though it read only the
    // frames of the tables exported.
    ex.through = ex.through.max(walked.through);
    (ex.stats.files, ex.stats.bytes) = written?;
    // Every table exported is complete through the last commit read.
    let tables: Vec<String> = match &ex.wanted {
        Some(w) => w.iter().cloned().collect(),
        None => ex.seen_tables.iter().cloned().collect(),
    };
    let schemas = ex.schemas.clone();
    let mut cursor = ex.cursor.clone();
    if let Some(through) = ex.through {
        for t in &tables {
            let entry = cursor.tables.entry(t.clone()).or_default();
            entry.through = entry.through.max(through);
            entry.names.extend(ex.names.get(t).into_iter().flatten().cloned());
        }
    }
    let stats = ex.stats;
    dest.put(
        CURSOR,
        Bytes::from(serde_json::to_vec_pretty(&cursor).unwrap_or_default()),
    )
    .await
    .map_err(|e| destination(dest, e))?;
    let views = views(dest.url(), &cursor, &schemas);
    dest.put("_waly/as_of_duckdb.sql", Bytes::from(views.0))
        .await
        .map_err(|e| destination(dest, e))?;
    dest.put("_waly/as_of_spark.sql", Bytes::from(views.1))
        .await
        .map_err(|e| destination(dest, e))?;
    Ok(stats)
}

/// Runs the export to `dest` every `interval` on a thread of its own (and
/// its own runtime), so the capture never waits for it; a failed run is
/// logged and tried again at the next interval.
pub fn keep_current(store: Store, dest: Store, interval: std::time::Duration) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("waly-export")
        .enable_all()
        .build()?;
    std::thread::Builder::new().name("waly-export".into()).spawn(move || {
        runtime.block_on(async {
            let opts = ExportOptions {
                file_bytes: 128 << 20,
                ..ExportOptions::default()
            };
            loop {
                tokio::time::sleep(interval).await;
                match export(&store, &dest, &opts).await {
                    Ok(s) => tracing::info!(
                        changes = s.changes,
                        snapshot_rows = s.snapshot_rows,
                        files = s.files,
                        bytes = s.bytes,
                        to = dest.url(),
                        "export brought up to date"
                    ),
                    Err(e) => {
                        tracing::warn!(to = dest.url(), error = %crate::error::chain(&e), "export failed; trying again at the next interval")
                    }
                }
            }
        })
    })?;
    Ok(())
}

/// The earliest cursor of the tables an export of `wanted` (`None`: every
/// table the archive has a schema version of) writes, if every one has a
/// cursor: the changes at or before it are exported already, and so are the
/// tables' snapshots. `None` when one has none (it starts at its snapshot).
async fn exported_through_all(
    store: &Store,
    cursor: &Cursor,
    wanted: Option<&BTreeSet<String>>,
) -> Result<Option<Lsn>, Error> {
    let all;
    let tables = match wanted {
        Some(w) => w,
        None => {
            let mut found = BTreeSet::new();
            for gen in state::generations(store).await? {
                for key in state::schema_keys(store, &gen).await? {
                    // A schema version whose name does not parse names no
                    // table it can be checked against: read everything.
                    let Some(table) = state::schema_key_table(&key) else {
                        return Ok(None);
                    };
                    found.insert(table);
                }
            }
            all = found;
            &all
        }
    };
    let cursors: Option<Vec<Lsn>> = tables.iter().map(|t| cursor.tables.get(t).map(|c| c.through)).collect();
    Ok(cursors.and_then(|c| c.into_iter().min()))
}

/// Deletes the files an export that stopped before writing its cursor
/// left: those of changes after a table's cursor (they are written again).
async fn remove_unfinished(dest: &Store, cursor: &Cursor) -> Result<u64, Error> {
    let mut removed = 0;
    for (key, _) in dest.list("").await.map_err(|e| destination(dest, e))? {
        let Some(first) = part_first(&key) else { continue };
        let Some(dir) = key.split('/').next() else { continue };
        let through = cursor
            .tables
            .iter()
            .find(|(t, _)| table_dir(t) == dir)
            .map(|(_, c)| c.through);
        if through.is_none_or(|t| first > t) {
            tracing::info!(key, "removing a file of an export that did not finish");
            dest.delete(&key).await.map_err(|e| destination(dest, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The SQL type (the same name in DuckDB and Spark) of a kind, for the
/// kinds a missing value is given for.
fn sql_type(k: &Kind) -> Option<String> {
    Some(match k {
        Kind::Int16 => "SMALLINT".into(),
        Kind::Int32 => "INTEGER".into(),
        Kind::Int64 => "BIGINT".into(),
        Kind::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
        Kind::Float32 => "FLOAT".into(),
        Kind::Float64 => "DOUBLE".into(),
        Kind::Bool => "BOOLEAN".into(),
        Kind::Text => "STRING".into(),
        Kind::Date => "DATE".into(),
        _ => return None,
    })
}

/// Whether PostgreSQL may store a value of this kind out of line (TOAST),
/// and so leave it out of an update that did not change it.
fn toastable(k: &Kind) -> bool {
    matches!(k, Kind::Text | Kind::Bytes | Kind::List(_))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The as-of query per table with a primary key, for DuckDB (a table
/// macro `"<table>_as_of"(t)`) and for Spark SQL (a view over the files
/// and a query with the parameter `:as_of`).
fn views(root: &str, cursor: &Cursor, schemas: &Schemas) -> (String, String) {
    let root = root.trim_end_matches('/');
    let mut duck = String::from(
        "-- waly export: each table as it was at a time, from the change log.\n\
         -- DuckDB: .read this file, then SELECT * FROM \"public.t_as_of\"(TIMESTAMPTZ '2026-11-27 10:00:00+00');\n",
    );
    let mut spark = String::from(
        "-- waly export: each table as it was at a time, for Spark SQL.\n\
         -- Run each view statement, then its query with spark.sql(query, args={\"as_of\": ...}).\n",
    );
    for (table, tc) in &cursor.tables {
        let versions = schemas.versions(table);
        let Some(latest) = versions.iter().rev().find(|v| !v.dropped) else {
            continue;
        };
        let (idents, columns) = columns_from(versions, 1);
        let key = row_key(&idents, latest);
        if key.is_empty() {
            continue;
        }
        // The names each column's files used, newest first.
        let written: Vec<Vec<&String>> = columns
            .iter()
            .map(|c| {
                std::iter::once(&c.name)
                    .chain(c.earlier_names.iter().rev())
                    .filter(|n| tc.names.contains(*n))
                    .collect()
            })
            .collect();
        // Files of only `unknown` rows (a table whose rows a prune took,
        // with its history ended before): no row to answer from, and no
        // key for the query to read.
        if written.iter().all(Vec::is_empty) {
            continue;
        }
        // Each column under its newest name, from whichever name each file used.
        let select: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let written: Vec<String> = written[i].iter().map(|n| quote(n)).collect();
                let value = match written.len() {
                    0 => "NULL".to_string(),
                    1 => written[0].clone(),
                    _ => format!("coalesce({})", written.join(", ")),
                };
                // Rows from before the column was added have the value
                // `ADD COLUMN ... DEFAULT` gave existing rows.
                let added = versions
                    .iter()
                    .find_map(|v| v.columns.iter().find(|d| ident(d) == idents[i]).map(|d| (v.version, d)));
                match (added, sql_type(&c.kind)) {
                    (Some((since, d)), Some(ty)) if d.missing.is_some() => format!(
                        "CASE WHEN _schema_version < {since} THEN CAST('{}' AS {ty}) ELSE {value} END AS {}",
                        d.missing.as_deref().unwrap_or_default().replace('\'', "''"),
                        quote(&c.name)
                    ),
                    _ => format!("{value} AS {}", quote(&c.name)),
                }
            })
            .collect();
        let select = select.join(", ");
        let key_cols: Vec<String> = key.iter().map(|&i| quote(&columns[i].name)).collect();
        let moved = key
            .iter()
            .map(|&i| format!("m._old_key.{0} = r.{0}", quote(&columns[i].name)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let later = "(m._commit_lsn > r._commit_lsn OR (m._commit_lsn = r._commit_lsn AND m._seq > r._seq))";
        let keys = key_cols.join(", ");
        // A large value an update left unchanged (named in
        // `_unchanged_toast`, under whichever name the file used) is the
        // row's latest earlier value that was sent: a value PostgreSQL
        // stores out of line is never null, so the latest non-null one.
        // First within the row's run under this key (`_run`: from its
        // insert, snapshot row, or the update that moved it to the key),
        // never from a row the key held before; then, for a run an update
        // started by moving the row from another key, the value the row
        // had under that key just before, followed back through every
        // move (`carry`, recursive).
        let large: Vec<(usize, Vec<String>)> = columns
            .iter()
            .zip(&written)
            .enumerate()
            .filter(|(_, (c, written))| toastable(&c.kind) && !written.is_empty())
            .map(|(i, (_, written))| (i, written.iter().map(|n| n.to_string()).collect()))
            .collect();
        // From an `unknown` row until the next snapshot row the archive
        // does not know the table's rows: the query fails, saying so.
        let unknown = format!(
            "{table}: the archive does not know the rows of the table at this time (it left the publication, was \
             dropped, or a DDL changed its rows where the stream does not show it, and no snapshot was taken \
             since: waly schema {table} names it); choose another time"
        );
        // The row key changed (another primary key, or replica identity
        // index) at this LSN, last: changes before it identify their rows
        // by another key than the one the query partitions by, so it
        // answers only from a snapshot taken since (`waly run` takes one).
        let rekeyed = schemas.row_key_changes(table).last().map(|v| v.commit_lsn);
        let rekeyed_why = rekeyed.map(|lsn| {
            format!(
                "{table}: its rows were identified by another key before {lsn} (its primary key or replica identity \
                 index changed there), and the archive has no snapshot of it between that and this time; choose a \
                 later time, or waly restore {table} --at it"
            )
        });
        let body = |from: &str, as_of: &str, spark: bool| {
            let lit = |n: &str| match spark {
                true => format!("'{}'", n.replace('\\', "\\\\").replace('\'', "\\'")),
                false => format!("'{}'", n.replace('\'', "''")),
            };
            let raise = |why: &str| match spark {
                true => format!("raise_error({})", lit(why)),
                false => format!("error({})", lit(why)),
            };
            let fail = raise(&unknown);
            let rekeyed = match (rekeyed, &rekeyed_why) {
                (Some(lsn), Some(why)) => format!(" WHEN l < {} THEN {}", lsn.as_u64(), raise(why)),
                _ => String::new(),
            };
            let head = format!(
                "log AS (SELECT _op, _commit_lsn, _seq, _commit_time, _old_key, _unchanged_toast, {select} FROM {from}),\n\
                 upto AS (SELECT * FROM log WHERE _commit_time <= {as_of}),\n\
                 cut_row AS (SELECT _op AS o, _commit_lsn AS l, _seq AS s FROM upto WHERE _op IN ('truncate', 'snapshot', 'empty_snapshot', 'unknown') ORDER BY _commit_lsn DESC, _seq DESC LIMIT 1),\n\
                 cut AS (SELECT CASE WHEN o = 'unknown' THEN {fail}{rekeyed} ELSE l END AS l, s FROM cut_row),\n\
                 live AS (SELECT * FROM upto u WHERE _op NOT IN ('truncate', 'empty_snapshot', 'unknown') AND NOT EXISTS (SELECT 1 FROM cut WHERE u._commit_lsn < cut.l OR (u._commit_lsn = cut.l AND u._seq < cut.s))),\n\
                 runs AS (SELECT *, sum(CASE WHEN _old_key IS NOT NULL OR _op IN ('insert', 'snapshot') THEN 1 ELSE 0 END) OVER (PARTITION BY {keys} ORDER BY _commit_lsn, _seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS _run FROM live),\n"
            );
            let rank = |p: &str| {
                let keys: Vec<String> = key_cols.iter().map(|k| format!("{p}{k}")).collect();
                format!(
                    "row_number() OVER (PARTITION BY {} ORDER BY {p}_commit_lsn DESC, {p}_seq DESC) AS _rank",
                    keys.join(", ")
                )
            };
            let tail = format!(
                "SELECT {cols} FROM ranked r WHERE _rank = 1 AND _op <> 'delete'\n  AND NOT EXISTS (SELECT 1 FROM live m WHERE m._old_key IS NOT NULL AND {moved} AND {later})",
                cols = columns.iter().map(|c| format!("r.{}", quote(&c.name))).collect::<Vec<_>>().join(", "),
            );
            if large.is_empty() {
                let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
                return format!(
                    "WITH {head}ranked AS (SELECT _op, _commit_lsn, _seq, {}, {} FROM runs)\n{tail}",
                    names.join(", "),
                    rank("")
                );
            }
            // Per large column: whether the row left it out, and its
            // value within the run (`_u<i>`, `_f<i>`).
            let local: Vec<String> = large
                .iter()
                .map(|(i, written)| {
                    let name = quote(&columns[*i].name);
                    let names: Vec<String> = written.iter().map(|n| lit(n)).collect();
                    let unsent = match spark {
                        true => format!("coalesce(arrays_overlap(_unchanged_toast, array({})), false)", names.join(", ")),
                        false => format!("coalesce(list_has_any(_unchanged_toast, [{}]), false)", names.join(", ")),
                    };
                    let sent = format!("CASE WHEN {unsent} THEN NULL ELSE {name} END");
                    let window = format!(
                        "OVER (PARTITION BY {keys}, _run ORDER BY _commit_lsn, _seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
                    );
                    let latest = match spark {
                        true => format!("last({sent}, true) {window}"),
                        false => format!("last_value({sent} IGNORE NULLS) {window}"),
                    };
                    format!("{unsent} AS _u{i}, CASE WHEN {unsent} THEN {latest} ELSE {name} END AS _f{i}")
                })
                .collect();
            let on = |a: &str, b: &str| -> String {
                key.iter()
                    .map(|&k| format!("{a}{0} = {b}{0}", quote(&columns[k].name)))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            };
            let src_keys: Vec<String> = key
                .iter()
                .enumerate()
                .map(|(j, &k)| format!("s.{} AS _k{j}", quote(&columns[k].name)))
                .collect();
            let src_on: Vec<String> = key
                .iter()
                .enumerate()
                .map(|(j, &k)| format!("s._k{j} = c.{}", quote(&columns[k].name)))
                .collect();
            let m_keys: Vec<String> = key_cols.iter().map(|k| format!("m.{k}")).collect();
            let s_keys: Vec<String> = key_cols.iter().map(|k| format!("s.{k}")).collect();
            let vs = |f: &dyn Fn(usize) -> String| large.iter().map(|(i, _)| f(*i)).collect::<Vec<_>>().join(", ");
            let values: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let name = quote(&c.name);
                    match large.iter().any(|(j, _)| *j == i) {
                        true => format!("CASE WHEN l._u{i} THEN coalesce(l._f{i}, c._v{i}) ELSE l._f{i} END AS {name}"),
                        false => format!("l.{name}"),
                    }
                })
                .collect();
            format!(
                "WITH RECURSIVE {head}\
                 local AS (SELECT *, {local}, max(CASE WHEN _old_key IS NOT NULL THEN 1 ELSE 0 END) OVER (PARTITION BY {keys}, _run) AS _moved_in FROM runs),\n\
                 src AS (SELECT {m_keys}, m._run, s._run AS _src_run, {src_keys}, s._moved_in AS _src_moved, {src_vs},\n\
                           row_number() OVER (PARTITION BY {m_keys}, m._run ORDER BY s._commit_lsn DESC, s._seq DESC) AS _n\n\
                         FROM local m JOIN local s ON {old_on} AND (s._commit_lsn < m._commit_lsn OR (s._commit_lsn = m._commit_lsn AND s._seq < m._seq))\n\
                         WHERE m._old_key IS NOT NULL),\n\
                 carry AS (SELECT {keys}, _run, {vs} FROM src WHERE _n = 1 AND _src_moved = 0\n\
                           UNION ALL SELECT {s_keys}, s._run, {carried} FROM src s JOIN carry c ON {src_on} AND s._src_run = c._run WHERE s._n = 1 AND s._src_moved = 1),\n\
                 ranked AS (SELECT l._op, l._commit_lsn, l._seq, {values}, {rank} FROM local l LEFT JOIN carry c ON {carry_on} AND l._run = c._run)\n{tail}",
                local = local.join(", "),
                m_keys = m_keys.join(", "),
                src_keys = src_keys.join(", "),
                src_vs = vs(&|i| format!("s._f{i} AS _v{i}")),
                old_on = on("s.", "m._old_key."),
                vs = vs(&|i| format!("_v{i}")),
                s_keys = s_keys.join(", "),
                carried = vs(&|i| format!("coalesce(s._v{i}, c._v{i}) AS _v{i}")),
                src_on = src_on.join(" AND "),
                values = values.join(", "),
                rank = rank("l."),
                carry_on = on("l.", "c."),
            )
        };
        let dir = format!("{root}/{}", table_dir(table));
        duck.push_str(&format!(
            "\nCREATE OR REPLACE MACRO {}(as_of) AS TABLE\n{};\n",
            quote(&format!("{table}_as_of")),
            body(
                &format!("read_parquet('{dir}/*/*.parquet', hive_partitioning = true, union_by_name = true)"),
                "as_of",
                false
            )
        ));
        let view = quote(&format!("{table}_log")).replace('"', "`");
        spark.push_str(&format!(
            "\n-- {table}\nCREATE OR REPLACE TEMPORARY VIEW {view} USING parquet OPTIONS (path '{dir}', mergeSchema 'true');\n{};\n",
            body(&view, "CAST(:as_of AS TIMESTAMP)", true).replace('"', "`")
        ));
    }
    (duck, spark)
}
