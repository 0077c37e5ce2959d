//! A table as it was at a point in history: the engine behind `waly restore`
//! and `waly show`.
//!
//! The state at a point is the table's latest snapshot at or before that
//! point, plus the changes after the snapshot up to the point. Memory stays
//! bounded whatever the table's size: every snapshot row and change becomes
//! a small record keyed by the row's primary key (all columns for a table
//! without one), records are sorted in runs of bounded size (spilled to
//! temporary files, zstd-compressed), and the runs are merged. For each key,
//! its records in commit order fold into the row's final state, which is
//! streamed out. docs/RESTORE.md has the details.

use crate::archive::state::{self, GenState, Manifest};
use crate::archive::Store;
use crate::event::{Op, Row};
use crate::log::Bound;
use crate::segment::{ColumnDef, Record, SchemaRecord, SegmentReader};
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};
use std::borrow::Cow;
use std::collections::BinaryHeap;
use std::io::{BufRead, Read, Write};
use std::sync::Arc;

/// What a restore reads, decided before reading it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `schema.table`.
    pub table: String,
    /// The point asked for.
    pub point: Bound,
    /// The generation that holds the point.
    pub generation: String,
    /// The snapshot the state starts from.
    pub snapshot: Manifest,
    /// Rows and bytes of the table in that snapshot.
    pub snapshot_rows: u64,
    /// Compressed bytes of the table's snapshot parts.
    pub snapshot_bytes: u64,
    /// Segments that may hold the table's changes between the snapshot and
    /// the point: `(key, bytes)`.
    pub segments: Vec<(String, u64)>,
    /// The generation's schema versions.
    pub gen: GenState,
    /// The latest complete transaction of the generation.
    pub last_complete: Option<crate::segment::CommitPoint>,
}

impl Plan {
    /// Bytes the restore reads.
    pub fn bytes(&self) -> u64 {
        self.snapshot_bytes + self.segments.iter().map(|(_, b)| b).sum::<u64>()
    }
}

fn describe(lsn: Lsn, time: Option<DateTime<Utc>>) -> String {
    match time {
        Some(t) => format!("{} (LSN {lsn})", t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        None => format!("LSN {lsn}"),
    }
}

fn at_or_after(point: Bound, lsn: Lsn, time: DateTime<Utc>) -> bool {
    match point {
        Bound::Lsn(p) => p >= lsn,
        Bound::Time(t) => t >= time,
    }
}

/// Works out which generation, snapshot and segments hold `table` at `point`.
pub async fn plan(store: &Store, table: &str, point: Bound) -> Result<Plan, Error> {
    let gens = state::generations(store).await?;
    if gens.is_empty() {
        return Err(Error::NotInArchive(format!(
            "{} holds no history yet (no generation): is `waly run` archiving into it?",
            store.url()
        )));
    }
    // Each generation's restorable range for the table.
    let mut loaded = Vec::new();
    let mut known_tables = std::collections::BTreeSet::new();
    for g in &gens {
        let st = state::load_generation(store, g).await?;
        for m in &st.manifests {
            for t in &m.tables {
                known_tables.insert(t.table.clone());
            }
        }
        loaded.push(st);
    }
    if !known_tables.contains(table) {
        return Err(not_in_archive(table, &known_tables));
    }
    let ranges: Vec<String> = loaded
        .iter()
        .filter_map(|st| {
            let first = st
                .manifests
                .iter()
                .find(|m| m.tables.iter().any(|t| t.table == table))?;
            let end = st
                .tail
                .last_commit
                .filter(|c| c.commit_lsn >= first.lsn)
                .map(|c| describe(c.commit_lsn, Some(c.commit_time)))
                .unwrap_or_else(|| describe(first.lsn, Some(first.taken_at)));
            Some(format!(
                "generation {}: from {} to {end}",
                st.id,
                describe(first.lsn, Some(first.taken_at))
            ))
        })
        .collect();
    let ranges = ranges.join("; ");
    // The last generation whose first snapshot of the table is at or before the point.
    let chosen = loaded.iter().rposition(|st| {
        st.manifests
            .iter()
            .any(|m| m.tables.iter().any(|t| t.table == table) && at_or_after(point, m.lsn, m.taken_at))
    });
    let Some(i) = chosen else {
        return Err(Error::NotInArchive(format!(
            "{} is before the archive's history of {table} begins; restorable: {ranges}",
            show_point(point)
        )));
    };
    let st = loaded.swap_remove(i);
    let is_last = i + 1 == gens.len();
    if !is_last {
        let end = st.tail.last_commit;
        let beyond = match (point, end) {
            (_, None) => true,
            (Bound::Lsn(p), Some(c)) => p > c.commit_lsn,
            (Bound::Time(t), Some(c)) => t > c.commit_time,
        };
        if beyond {
            return Err(Error::NotInArchive(format!(
                "{} falls in a gap between generation {} and the next: what happened there is not in the \
                 archive; restorable: {ranges}",
                show_point(point),
                st.id
            )));
        }
    }
    let snapshot = st
        .manifests
        .iter()
        .rev()
        .find(|m| m.tables.iter().any(|t| t.table == table) && at_or_after(point, m.lsn, m.taken_at))
        .cloned()
        .ok_or_else(|| Error::NotInArchive(format!("no snapshot of {table} before {}", show_point(point))))?;
    let entry = snapshot.tables.iter().find(|t| t.table == table);
    let (snapshot_rows, snapshot_bytes) = entry.map_or((0, 0), |t| (t.rows, t.parts.iter().map(|p| p.bytes).sum()));
    let mut segments = Vec::new();
    for (key, _, size) in state::segments(store, &st.id).await? {
        let Some((_, first, last)) = crate::archive::layout::parse_segment_key(&key) else {
            continue;
        };
        // Entirely before the snapshot, or (for an LSN point) entirely after it.
        if last < snapshot.lsn && first < snapshot.lsn {
            continue;
        }
        if let Bound::Lsn(p) = point {
            if first > p {
                break;
            }
        }
        segments.push((key, size));
    }
    Ok(Plan {
        table: table.to_string(),
        point,
        generation: st.id.clone(),
        snapshot,
        snapshot_rows,
        snapshot_bytes,
        segments,
        last_complete: st.tail.last_commit,
        gen: st,
    })
}

/// The error for a table the archive does not hold, listing those it does.
pub fn not_in_archive(table: &str, known: &std::collections::BTreeSet<String>) -> Error {
    let list: Vec<&str> = known.iter().map(String::as_str).collect();
    Error::NotInArchive(format!(
        "table {table} is not in the archive; archived tables: {}",
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    ))
}

/// A point, for messages.
pub fn show_point(p: Bound) -> String {
    match p {
        Bound::Lsn(l) => format!("LSN {l}"),
        Bound::Time(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    }
}

// ------------------------------------------------------------------ sorting

/// What a sort record says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// A snapshot row.
    Base = 0,
    /// An inserted row.
    Insert = 1,
    /// An updated row (same key).
    Update = 2,
    /// A deleted row.
    Delete = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Base,
            1 => Kind::Insert,
            2 => Kind::Update,
            3 => Kind::Delete,
            _ => return None,
        })
    }
}

/// One record, encoded: `key_len u32, key, lsn u64, seq u64, kind u8,
/// toast_len u32, toast (JSON array), row_len u32, row (JSON object)`,
/// preceded by its total length as u32.
fn encode(out: &mut Vec<u8>, key: &[u8], lsn: u64, seq: u64, kind: Kind, toast: &[u8], row: &[u8]) {
    let total = 4 + key.len() + 8 + 8 + 1 + 4 + toast.len() + 4 + row.len();
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&(toast.len() as u32).to_le_bytes());
    out.extend_from_slice(toast);
    out.extend_from_slice(&(row.len() as u32).to_le_bytes());
    out.extend_from_slice(row);
}

/// A view of one encoded record (without its length prefix).
#[derive(Debug, Clone, Copy)]
struct Rec<'a> {
    key: &'a [u8],
    lsn: u64,
    seq: u64,
    kind: Kind,
    toast: &'a [u8],
    row: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn decode(b: &[u8]) -> Option<Rec<'_>> {
    let kl = u32_at(b, 0)?;
    let key = b.get(4..4 + kl)?;
    let mut at = 4 + kl;
    let lsn = u64_at(b, at)?;
    let seq = u64_at(b, at + 8)?;
    let kind = Kind::from_u8(*b.get(at + 16)?)?;
    at += 17;
    let tl = u32_at(b, at)?;
    let toast = b.get(at + 4..at + 4 + tl)?;
    at += 4 + tl;
    let rl = u32_at(b, at)?;
    let row = b.get(at + 4..at + 4 + rl)?;
    Some(Rec {
        key,
        lsn,
        seq,
        kind,
        toast,
        row,
    })
}

fn order<'a>(r: &Rec<'a>) -> (&'a [u8], u64, u64) {
    (r.key, r.lsn, r.seq)
}

/// Sorts records by `(key, lsn, seq)` in bounded memory: runs of at most
/// `budget` bytes are sorted in memory and spilled to temporary files.
struct Sorter {
    arena: Vec<u8>,
    offsets: Vec<u32>,
    budget: usize,
    dir: Option<TempDir>,
    runs: Vec<std::path::PathBuf>,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Sorter {
    fn new(budget: usize) -> Sorter {
        Sorter {
            arena: Vec::new(),
            offsets: Vec::new(),
            budget,
            dir: None,
            runs: Vec::new(),
        }
    }

    fn push(&mut self, key: &[u8], lsn: u64, seq: u64, kind: Kind, toast: &[u8], row: &[u8]) -> Result<(), Error> {
        self.offsets.push(self.arena.len() as u32);
        encode(&mut self.arena, key, lsn, seq, kind, toast, row);
        if self.arena.len() >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn sorted_offsets(&mut self) {
        let arena = &self.arena;
        let view = |o: &u32| decode(&arena[*o as usize + 4..]).map(|r| order(&r));
        self.offsets.sort_by(|a, b| view(a).cmp(&view(b)));
    }

    fn spill(&mut self) -> Result<(), Error> {
        self.sorted_offsets();
        if self.dir.is_none() {
            let dir = std::env::temp_dir().join(format!(
                "waly-restore-{}-{}",
                std::process::id(),
                chrono::Utc::now().timestamp_micros()
            ));
            std::fs::create_dir_all(&dir)?;
            self.dir = Some(TempDir(dir));
        }
        let dir = self.dir.as_ref().map(|d| d.0.clone()).unwrap_or_default();
        let path = dir.join(format!("run-{:06}", self.runs.len()));
        let file = std::fs::File::create(&path)?;
        let mut enc = zstd::stream::write::Encoder::new(std::io::BufWriter::new(file), 1)?;
        for o in &self.offsets {
            let o = *o as usize;
            let total = u32_at(&self.arena, o).unwrap_or(0);
            enc.write_all(&self.arena[o..o + 4 + total])?;
        }
        enc.finish()?.flush()?;
        self.runs.push(path);
        self.arena.clear();
        self.offsets.clear();
        Ok(())
    }

    /// Everything pushed, in order.
    fn finish(mut self) -> Result<Merged, Error> {
        if self.runs.is_empty() {
            self.sorted_offsets();
            return Ok(Merged {
                source: Source::Memory {
                    arena: self.arena,
                    offsets: self.offsets,
                    next: 0,
                },
                _dir: None,
            });
        }
        if !self.offsets.is_empty() {
            self.spill()?;
        }
        let mut readers = Vec::new();
        for p in &self.runs {
            let f = std::fs::File::open(p)?;
            readers.push(RunReader {
                input: Box::new(std::io::BufReader::new(zstd::stream::read::Decoder::new(f)?)),
                current: Vec::new(),
            });
        }
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if r.advance()? {
                heap.push(std::cmp::Reverse(HeapKey::of(&r.current, i)?));
            }
        }
        Ok(Merged {
            source: Source::Runs {
                readers,
                heap,
                last: Vec::new(),
            },
            _dir: self.dir.take(),
        })
    }
}

struct RunReader {
    input: Box<dyn Read + Send>,
    current: Vec<u8>,
}

impl RunReader {
    /// Loads the next record (without its length prefix); false at the end.
    fn advance(&mut self) -> Result<bool, Error> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        self.current.resize(u32::from_le_bytes(len) as usize, 0);
        self.input.read_exact(&mut self.current)?;
        Ok(true)
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HeapKey {
    key: Vec<u8>,
    lsn: u64,
    seq: u64,
    run: usize,
}

impl HeapKey {
    fn of(b: &[u8], run: usize) -> Result<HeapKey, Error> {
        let r = decode(b).ok_or_else(|| Error::Io(std::io::Error::other("a restore run file is damaged")))?;
        Ok(HeapKey {
            key: r.key.to_vec(),
            lsn: r.lsn,
            seq: r.seq,
            run,
        })
    }
}

enum Source {
    Memory {
        arena: Vec<u8>,
        offsets: Vec<u32>,
        next: usize,
    },
    Runs {
        readers: Vec<RunReader>,
        heap: BinaryHeap<std::cmp::Reverse<HeapKey>>,
        last: Vec<u8>,
    },
}

/// The sorted records.
struct Merged {
    source: Source,
    _dir: Option<TempDir>,
}

impl Merged {
    /// The next record, encoded (without the length prefix).
    fn next_record(&mut self) -> Result<Option<&[u8]>, Error> {
        match &mut self.source {
            Source::Memory { arena, offsets, next } => {
                let Some(o) = offsets.get(*next) else {
                    return Ok(None);
                };
                *next += 1;
                let o = *o as usize;
                let total = u32_at(arena, o).unwrap_or(0);
                Ok(Some(&arena[o + 4..o + 4 + total]))
            }
            Source::Runs { readers, heap, last } => {
                let Some(std::cmp::Reverse(top)) = heap.pop() else {
                    return Ok(None);
                };
                let r = &mut readers[top.run];
                std::mem::swap(last, &mut r.current);
                if r.advance()? {
                    heap.push(std::cmp::Reverse(HeapKey::of(&r.current, top.run)?));
                }
                Ok(Some(&last[..]))
            }
        }
    }
}

// ------------------------------------------------------------------ the engine

/// Which rows a restore keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these keys (encoded as [`encode_key`] does); all if empty.
    pub keys: Vec<Vec<u8>>,
}

/// The columns whose values identify a row for the restore: the primary key
/// of the schema in force, or every column when there is none.
pub fn identity_columns(schema: &SchemaRecord) -> Vec<String> {
    let pk: Vec<String> = schema
        .columns
        .iter()
        .filter(|c| c.primary_key)
        .map(|c| c.name.clone())
        .collect();
    if pk.is_empty() {
        schema.columns.iter().map(|c| c.name.clone()).collect()
    } else {
        pk
    }
}

/// The sort key of a row: the identity columns' values as a JSON array.
pub fn encode_key(columns: &[String], value: impl Fn(&str) -> Option<Option<String>>) -> Vec<u8> {
    let vals: Vec<Option<String>> = columns.iter().map(|c| value(c).unwrap_or(None)).collect();
    serde_json::to_vec(&vals).unwrap_or_default()
}

fn row_key(columns: &[String], row: &Row) -> Vec<u8> {
    encode_key(columns, |c| {
        row.0.iter().find(|(n, _)| &**n == c).map(|(_, v)| v.clone())
    })
}

/// Parses `--key` values: `col=val,col=val`, or values in key order
/// (`42,7`). Returns the encoded keys.
pub fn parse_keys(keys: &[String], columns: &[String], table: &str) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    for k in keys {
        let parts: Vec<&str> = k.split(',').collect();
        let named = parts.iter().all(|p| p.contains('='));
        let mut vals: Vec<Option<String>> = vec![None; columns.len()];
        if named {
            for p in &parts {
                let (c, v) = p.split_once('=').unwrap_or((p, ""));
                let Some(i) = columns.iter().position(|x| x == c.trim()) else {
                    return Err(Error::Config(format!(
                        "--key {k:?}: {table} has no key column {:?}; its key is ({})",
                        c.trim(),
                        columns.join(", ")
                    )));
                };
                vals[i] = Some(v.to_string());
            }
        } else {
            if parts.len() != columns.len() {
                return Err(Error::Config(format!(
                    "--key {k:?}: {table}'s key is ({}), so give {} value(s), or col=val pairs",
                    columns.join(", "),
                    columns.len()
                )));
            }
            for (i, p) in parts.iter().enumerate() {
                vals[i] = Some(p.to_string());
            }
        }
        if let Some(i) = vals.iter().position(|v| v.is_none()) {
            return Err(Error::Config(format!(
                "--key {k:?}: no value for key column {}",
                columns[i]
            )));
        }
        out.push(serde_json::to_vec(&vals).unwrap_or_default());
    }
    Ok(out)
}

/// What a restore produced, besides the rows.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The schema of the restored table (the version in force at the point).
    pub schema: SchemaRecord,
    /// The last transaction included (`None`: only the snapshot).
    pub cut: Option<(Lsn, DateTime<Utc>)>,
    /// Changes applied.
    pub changes: u64,
}

/// Progress, for a progress bar: bytes read so far.
pub type Progress<'a> = &'a mut (dyn FnMut(u64) + Send);

/// Reads what `plan` names; the returned [`Rows`] yields the table's rows
/// at the point, in key order.
pub async fn rows(store: &Store, plan: &Plan, filter: &Filter, progress: Progress<'_>) -> Result<Rows, Error> {
    let started = std::time::Instant::now();
    let (sorter, outcome, truncated_at) = collect(store, plan, filter, progress).await?;
    tracing::debug!(
        runs = sorter.runs.len(),
        changes = outcome.changes,
        ms = started.elapsed().as_millis() as u64,
        "archive read and sorted"
    );
    Ok(Rows {
        merged: sorter.finish()?,
        truncated_at,
        group: Vec::new(),
        state: None,
        pending: None,
        done: false,
        outcome,
    })
}

/// The rows of a restore, folded from the sorted records one key at a time.
pub struct Rows {
    merged: Merged,
    truncated_at: Option<(u64, u64)>,
    group: Vec<u8>,
    /// The current key's row (JSON) and how many copies of it exist (more
    /// than one only for identical rows of a table without a primary key).
    state: Option<(Vec<u8>, i64)>,
    pending: Option<(Vec<u8>, i64)>,
    done: bool,
    /// What was restored.
    pub outcome: Outcome,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows")
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

fn finish_group(state: &mut Option<(Vec<u8>, i64)>, pending: &mut Option<(Vec<u8>, i64)>) -> Result<(), Error> {
    if let Some((row, n)) = state.take() {
        if n > 0 {
            *pending = Some((row, n));
        }
    }
    Ok(())
}

impl Rows {
    /// The next row, `None` after the last.
    pub fn next_row(&mut self) -> Result<Option<Row>, Error> {
        match self.next_json()? {
            None => Ok(None),
            Some(j) => Ok(Some(
                serde_json::from_slice(&j).map_err(|e| Error::Protocol(e.to_string()))?,
            )),
        }
    }

    /// The next row as its JSON object (column name to text or `null`).
    pub fn next_json(&mut self) -> Result<Option<Vec<u8>>, Error> {
        loop {
            if let Some((row, n)) = &mut self.pending {
                if *n > 1 {
                    *n -= 1;
                    return Ok(Some(row.clone()));
                }
                return Ok(self.pending.take().map(|p| p.0));
            }
            if self.done {
                return Ok(None);
            }
            let Some(b) = self.merged.next_record()? else {
                self.done = true;
                finish_group(&mut self.state, &mut self.pending)?;
                continue;
            };
            let r = decode(b).ok_or_else(|| Error::Io(std::io::Error::other("a restore record is damaged")))?;
            if r.key != self.group.as_slice() {
                finish_group(&mut self.state, &mut self.pending)?;
                self.group.clear();
                self.group.extend_from_slice(r.key);
            }
            if self.truncated_at.is_some_and(|t| (r.lsn, r.seq) < t) {
                continue;
            }
            let state = &mut self.state;
            match r.kind {
                Kind::Base | Kind::Insert => {
                    let n = state.as_ref().map_or(0, |s| s.1.max(0));
                    *state = Some((r.row.to_vec(), n + 1));
                }
                Kind::Update => {
                    let row = if r.toast.is_empty() {
                        r.row.to_vec()
                    } else {
                        carry_toast(r.row, r.toast, state.as_ref().map(|s| s.0.as_slice()))?
                    };
                    let n = state.as_ref().map_or(1, |s| s.1.max(1));
                    *state = Some((row, n));
                }
                Kind::Delete => {
                    if let Some(s) = state {
                        s.1 -= 1;
                        if s.1 <= 0 {
                            *state = None;
                        }
                    }
                }
            }
        }
    }
}

/// The new row with its unchanged-TOAST columns taken from the previous
/// version.
fn carry_toast(new: &[u8], toast: &[u8], prev: Option<&[u8]>) -> Result<Vec<u8>, Error> {
    let bad = |e: serde_json::Error| Error::Protocol(e.to_string());
    let mut row: Row = serde_json::from_slice(new).map_err(bad)?;
    let names: Vec<String> = serde_json::from_slice(toast).map_err(bad)?;
    let prev: Option<Row> = prev.map(serde_json::from_slice).transpose().map_err(bad)?;
    for n in names {
        let v = prev
            .as_ref()
            .and_then(|p| p.0.iter().find(|(k, _)| **k == *n))
            .and_then(|(_, v)| v.clone());
        row.0.push((Arc::from(n.as_str()), v));
    }
    serde_json::to_vec(&row).map_err(bad)
}

async fn collect(
    store: &Store,
    plan: &Plan,
    filter: &Filter,
    progress: Progress<'_>,
) -> Result<(Sorter, Outcome, Option<(u64, u64)>), Error> {
    let table = plan.table.as_str();
    let schemas = &plan.gen.schemas;
    let mut sorter = Sorter::new(16 << 20);
    let mut read = 0u64;
    let keep = |k: &[u8]| filter.keys.is_empty() || filter.keys.iter().any(|f| f.as_slice() == k);
    // The identity columns come from the schema in force at the point; it is
    // known only after the scan, so the scan keys rows by the latest schema
    // and the final schema is checked against it below.
    let latest = schemas
        .latest(table)
        .ok_or_else(|| Error::NotInArchive(format!("{table} has no schema in generation {}", plan.generation)))?;
    let ident = identity_columns(latest);
    let ident_names: Vec<&str> = ident.iter().map(String::as_str).collect();
    // The snapshot.
    if let Some(entry) = plan.snapshot.tables.iter().find(|t| t.table == table) {
        for part in &entry.parts {
            let bytes = store.get(&part.key).await?;
            if crate::segment::sha256_hex(&bytes) != part.sha256 {
                return Err(Error::Corrupt {
                    key: part.key.clone(),
                    why: "its SHA-256 differs from the manifest's".into(),
                });
            }
            read += bytes.len() as u64;
            progress(read);
            let corrupt = |why: String| Error::Corrupt {
                key: part.key.clone(),
                why,
            };
            let dec = zstd::stream::read::Decoder::new(&bytes[..]).map_err(|e| corrupt(e.to_string()))?;
            let mut lines = std::io::BufReader::with_capacity(256 * 1024, dec);
            let mut line = String::new();
            lines.read_line(&mut line).map_err(|e| corrupt(e.to_string()))?; // the part header
            loop {
                line.clear();
                if lines.read_line(&mut line).map_err(|e| corrupt(e.to_string()))? == 0 {
                    break;
                }
                let text = line.trim_end_matches('\n');
                let vals = pick(text.as_bytes(), &ident_names, &[]).map_err(|e| corrupt(e.to_string()))?;
                let key = serde_json::to_vec(&vals).unwrap_or_default();
                if keep(&key) {
                    sorter.push(&key, 0, 0, Kind::Base, b"", text.as_bytes())?;
                }
            }
        }
    }
    // The changes after it.
    let start = plan.snapshot.lsn;
    let mut dedup = crate::log::Dedup::new(plan.last_complete.map(|c| c.commit_lsn));
    let mut cut: Option<(Lsn, DateTime<Utc>)> = None;
    let mut changes = 0u64;
    let mut truncated_at: Option<(u64, u64)> = None;
    let mut buf = Vec::new();
    let mut toast_buf = Vec::new();
    'segments: for (key, _) in &plan.segments {
        let bytes = store.get(key).await?;
        read += bytes.len() as u64;
        progress(read);
        let mut r = SegmentReader::open(key, &bytes)?;
        while let Some(rec) = r.next_record(schemas)? {
            let (lsn, time) = match &rec {
                Record::Commit(c) => (c.commit_lsn, c.commit_time),
                other => match other.identity() {
                    Some((id, time)) => (id.0, time),
                    None => continue,
                },
            };
            if lsn < start {
                continue;
            }
            if !dedup.complete(lsn) {
                break 'segments; // the incomplete tail
            }
            let past = match plan.point {
                Bound::Lsn(p) => lsn > p,
                Bound::Time(t) => time > t,
            };
            if past {
                break 'segments;
            }
            if let Record::Commit(c) = &rec {
                cut = Some((c.commit_lsn, c.commit_time));
                continue;
            }
            if let Some((id, _)) = rec.identity() {
                if dedup.admit(id) != crate::log::Admit::Keep {
                    continue; // written twice (a restart); already seen
                }
            }
            let Record::Change(c) = rec else { continue };
            let c = c.change;
            if &*c.table != table {
                continue;
            }
            changes += 1;
            let (lsn, seq) = (c.commit_lsn.as_u64(), c.seq);
            let mut put = |sorter: &mut Sorter, kind: Kind, row: &Row, toast: &[Arc<str>]| -> Result<(), Error> {
                let k = row_key(&ident, row);
                if !keep(&k) {
                    return Ok(());
                }
                buf.clear();
                serde_json::to_writer(&mut buf, row).map_err(|e| Error::Protocol(e.to_string()))?;
                toast_buf.clear();
                if !toast.is_empty() {
                    serde_json::to_writer(&mut toast_buf, toast).map_err(|e| Error::Protocol(e.to_string()))?;
                }
                sorter.push(&k, lsn, seq, kind, &toast_buf, &buf)
            };
            match (c.op, &c.old, &c.new) {
                (Op::Insert, _, Some(new)) => put(&mut sorter, Kind::Insert, new, &c.unchanged_toast)?,
                (Op::Update, Some(old), Some(new)) if row_key(&ident, old) != row_key(&ident, new) => {
                    // The key changed (or, without a primary key, the row):
                    // the old one goes, the new one comes, with unchanged
                    // large values taken from the old row when it has them.
                    put(&mut sorter, Kind::Delete, old, &[])?;
                    let mut whole = new.clone();
                    let mut missing = Vec::new();
                    for t in &c.unchanged_toast {
                        match old.0.iter().find(|(n, _)| n == t) {
                            Some(v) => whole.0.push(v.clone()),
                            None => missing.push(t.clone()),
                        }
                    }
                    put(&mut sorter, Kind::Insert, &whole, &missing)?;
                }
                (Op::Update, _, Some(new)) => put(&mut sorter, Kind::Update, new, &c.unchanged_toast)?,
                (Op::Delete, Some(old), _) => put(&mut sorter, Kind::Delete, old, &[])?,
                (Op::Truncate, _, _) => truncated_at = Some((lsn, seq)),
                _ => {}
            }
        }
    }
    let at = cut.map_or(start, |c| c.0);
    let schema = schemas
        .at(table, at)
        .or_else(|| schemas.latest(table))
        .cloned()
        .ok_or_else(|| Error::NotInArchive(format!("{table} has no schema at {at}")))?;
    if identity_columns(&schema) != ident {
        return Err(Error::NotInArchive(format!(
            "{table}'s primary key changed after {}; restoring across a primary-key change is not supported",
            show_point(plan.point)
        )));
    }
    Ok((sorter, Outcome { schema, cut, changes }, truncated_at))
}

/// Appends values as a line of COPY's text format (`\N` is NULL).
pub fn copy_text_line<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = Option<&'a str>>) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match v {
            None => out.extend_from_slice(b"\\N"),
            Some(v) => {
                for &b in v.as_bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        _ => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

/// Appends a CSV line as `COPY ... FROM ... (FORMAT csv)` reads it: NULL is
/// an unquoted empty field, every value is quoted (so `""` is the empty string).
pub fn csv_line<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = Option<&'a str>>) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(v) = v {
            out.push(b'"');
            out.extend_from_slice(v.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        }
    }
    out.push(b'\n');
}

/// `CREATE TABLE` for `schema` under the name `target` (already quoted):
/// column names, types, NOT NULL and the primary key.
pub fn create_table_sql(target: &str, schema: &SchemaRecord) -> Result<String, Error> {
    let mut cols = Vec::new();
    for c in &schema.columns {
        cols.push(format!(
            "{} {}{}",
            crate::source::quote::ident(&c.name)?,
            c.type_name,
            if c.not_null { " NOT NULL" } else { "" }
        ));
    }
    let pk: Vec<String> = schema
        .columns
        .iter()
        .filter(|c| c.primary_key)
        .map(|c| crate::source::quote::ident(&c.name))
        .collect::<Result<_, _>>()?;
    if !pk.is_empty() {
        cols.push(format!("PRIMARY KEY ({})", pk.join(", ")));
    }
    Ok(format!("CREATE TABLE {target} (\n    {}\n)", cols.join(",\n    ")))
}

/// The quoted column list of `schema`.
pub fn column_list(schema: &SchemaRecord) -> Result<String, Error> {
    Ok(schema
        .columns
        .iter()
        .map(|c| crate::source::quote::ident(&c.name))
        .collect::<Result<Vec<_>, _>>()?
        .join(", "))
}

/// A JSON text that borrows from its input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The values of the columns `names` (in that order) from a row's JSON
/// object, borrowed where possible; a column the row lacks gets its entry in
/// `absent` (the value rows written before the column existed have), or NULL.
pub fn pick<'a>(
    json: &'a [u8],
    names: &[&str],
    absent: &[Option<&'a str>],
) -> Result<Vec<Option<Cow<'a, str>>>, serde_json::Error> {
    struct Seed<'n, 'a>(&'n [&'n str], &'n [Option<&'a str>]);
    impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_, 'de> {
        type Value = Vec<Option<Cow<'de, str>>>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> serde::de::Visitor<'de> for Seed<'_, 'de> {
        type Value = Vec<Option<Cow<'de, str>>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a row object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<Option<Cow<'de, str>>> = (0..self.0.len())
                .map(|i| self.1.get(i).copied().flatten().map(Cow::Borrowed))
                .collect();
            while let Some(Text(k)) = m.next_key::<Text<'de>>()? {
                match self.0.iter().position(|n| *n == k) {
                    Some(i) => out[i] = m.next_value::<Option<Text<'de>>>()?.map(|t| t.0),
                    None => {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    serde::de::DeserializeSeed::deserialize(Seed(names, absent), &mut de)
}

/// Values of `row` in the order of `columns`; a column the row lacks has
/// the value rows written before it existed have (or NULL).
pub fn values<'a>(columns: &'a [ColumnDef], row: &'a Row) -> impl Iterator<Item = Option<&'a str>> + 'a {
    columns
        .iter()
        .map(move |c| match row.0.iter().find(|(n, _)| **n == *c.name) {
            Some((_, v)) => v.as_deref(),
            None => c.missing.as_deref(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut m: Merged) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        while let Some(b) = m.next_record().expect("record") {
            let r = decode(b).expect("decodes");
            out.push((r.key.to_vec(), r.lsn));
        }
        out
    }

    #[test]
    fn spilled_runs_merge_in_key_then_commit_order() {
        let mut x = 12345u64;
        let mut want = Vec::new();
        let mut small = Sorter::new(4096); // many runs
        let mut big = Sorter::new(1 << 30); // one, in memory
        for i in 0..5000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("[\"{}\"]", x % 97).into_bytes();
            let lsn = x % 1000;
            small.push(&key, lsn, i, Kind::Insert, b"", b"{}").expect("push");
            big.push(&key, lsn, i, Kind::Insert, b"", b"{}").expect("push");
            want.push((key, lsn, i));
        }
        want.sort();
        let want: Vec<(Vec<u8>, u64)> = want.into_iter().map(|(k, l, _)| (k, l)).collect();
        assert!(small.runs.len() > 10, "{} runs", small.runs.len());
        let dir = small.dir.as_ref().map(|d| d.0.clone()).expect("a spill directory");
        assert_eq!(drain(small.finish().expect("merge")), want);
        assert_eq!(drain(big.finish().expect("merge")), want);
        assert!(!dir.exists(), "runs are removed once merged");
    }

    #[test]
    fn keys_parse_named_or_positional_and_refuse_the_rest() {
        let cols = vec!["a".to_string(), "b".to_string()];
        let k = parse_keys(&["a=1,b=x".into(), "1,x".into(), "b=x,a=1".into()], &cols, "t").expect("keys");
        assert!(k.iter().all(|v| v == br#"["1","x"]"#), "{k:?}");
        for bad in ["1", "a=1", "c=1,a=2", "1,2,3"] {
            assert!(parse_keys(&[bad.into()], &cols, "t").is_err(), "{bad}");
        }
    }
}
