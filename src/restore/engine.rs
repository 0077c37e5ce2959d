//! The restore engine: snapshot rows and changes into sort records, then
//! each key's records folded, in commit order, into the row at the point.

use super::sort::{decode, Kind, Merged, Rec, Sorter, Spilled};
use super::{pick, Plan};
use crate::archive::fetching::FetchAhead;
use crate::archive::{layout, Store};
use crate::event::{Op, Row};
use crate::log::Bound;
use crate::schema::keys::KeyColumns;
use crate::segment::{Record, SchemaRecord, SegmentReader};
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};
use std::io::BufRead;
use std::sync::Arc;

// ------------------------------------------------------------------ the engine

/// Which rows a restore keeps, and in which shape.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these keys (as [`KeyColumns::encode`] gives them); all if empty.
    pub keys: Vec<Vec<u8>>,
    /// The schema version the rows come out in.
    pub shape: Shape,
}

/// The columns whose values identify a row for the restore: the primary key
/// of the schema in force (in key order), or every column when there is none.
pub fn identity(schema: &SchemaRecord) -> KeyColumns {
    KeyColumns::identity(schema)
}

/// The names of [`identity`]'s columns.
pub fn identity_columns(schema: &SchemaRecord) -> Vec<String> {
    KeyColumns::identity(schema).names
}

/// Parses `--key` values (`col=val,col=val`, or values in key order) into
/// keys compared by value.
pub fn parse_keys(keys: &[String], ident: &KeyColumns, table: &str) -> Result<Vec<Vec<u8>>, Error> {
    keys.iter().map(|k| ident.parse(k, table)).collect()
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
    // Asked for some keys: a key change that gave one of them its key and
    // left a large value unchanged needs the row under its old key too
    // (and that one, perhaps, the key before); those rows are read as
    // well, and only the keys asked for come out.
    let mut wider = filter.clone();
    let mut c = collect(store, plan, &wider, &mut *progress).await?;
    for _ in 0..MOVES_BACK {
        if c.outside.is_empty() || filter.keys.is_empty() {
            break;
        }
        wider.keys.extend(std::mem::take(&mut c.outside));
        c = collect(store, plan, &wider, &mut *progress).await?;
    }
    tracing::debug!(
        runs = c.sorter.runs.len(),
        changes = c.outcome.changes,
        ms = started.elapsed().as_millis() as u64,
        "archive read and sorted"
    );
    let mut rows = Rows::new(c)?;
    if wider.keys.len() > filter.keys.len() {
        rows.only = Some(filter.keys.iter().cloned().collect());
    }
    Ok(rows)
}

/// How many key changes back a restore of some keys follows a row for a
/// large value its key changes left unchanged.
const MOVES_BACK: usize = 8;

/// Why a value is unknown when a key change left it unchanged and the row
/// it came from could not be found.
const MOVED_UNKNOWN: &str =
    "an update changed this row's key and left this large value unchanged, and the row it came from is not in the archive";

/// The values key changes left unchanged (PostgreSQL does not send them),
/// found in the row under its old key: by the key change's `(lsn, seq)`,
/// the wanted columns of that row, kept in a temporary file beside the
/// restore's sorted runs so memory holds only where each is.
#[derive(Default)]
struct Fills {
    file: Option<std::fs::File>,
    at: std::collections::HashMap<(u64, u64), (u64, usize)>,
    end: u64,
}

impl Fills {
    fn create(dir: &std::path::Path) -> Result<Fills, Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join("moved-values"))?;
        Ok(Fills {
            file: Some(file),
            ..Fills::default()
        })
    }

    fn get(&self, lsn: u64, seq: u64) -> Result<Option<Row>, Error> {
        use std::os::unix::fs::FileExt;
        let (Some(file), Some((off, len))) = (&self.file, self.at.get(&(lsn, seq))) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; *len];
        file.read_exact_at(&mut buf, *off)?;
        Ok(Some(
            serde_json::from_slice(&buf).map_err(|e| Error::Protocol(e.to_string()))?,
        ))
    }

    fn put(&mut self, lsn: u64, seq: u64, row: &Row) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.file else { return Ok(()) };
        let bytes = serde_json::to_vec(row).map_err(|e| Error::Protocol(e.to_string()))?;
        file.write_all_at(&bytes, self.end)?;
        self.at.insert((lsn, seq), (self.end, bytes.len()));
        self.end += bytes.len() as u64;
        Ok(())
    }
}

/// One key's row as its records fold: the row (JSON) and how many copies of
/// it exist (more than one only for identical rows of a table without a
/// primary key).
type State = Option<(Vec<u8>, i64)>;

/// Folds record `r` into its key's `state`. With `capture`, a delete that
/// ends a row whose key changed records the values the key change left
/// unchanged (when this pass knows them all).
fn apply(state: &mut State, r: &Rec<'_>, fills: &Fills, capture: Option<&mut Fills>) -> Result<(), Error> {
    match r.kind {
        Kind::Base | Kind::Insert => {
            let row = if r.toast.is_empty() {
                r.row.to_vec()
            } else {
                // A key change: the unchanged values from the old row.
                let found = fills.get(r.lsn, r.seq)?;
                let unknown = crate::schema::shape::unknown_value(MOVED_UNKNOWN);
                carry_toast(r.row, r.toast, Some(found.as_ref()), &unknown)?
            };
            let n = state.as_ref().map_or(0, |s| s.1.max(0));
            *state = Some((row, n + 1));
        }
        Kind::Update => {
            let row = if r.toast.is_empty() {
                r.row.to_vec()
            } else {
                let prev: Option<Row> = match state {
                    Some((p, _)) => Some(serde_json::from_slice(p).map_err(|e| Error::Protocol(e.to_string()))?),
                    None => None,
                };
                carry_toast(r.row, r.toast, prev.as_ref().map(Some), "")?
            };
            let n = state.as_ref().map_or(1, |s| s.1.max(1));
            *state = Some((row, n));
        }
        Kind::Delete => {
            if let (Some(capture), Some((prev, _)), false) = (capture, state.as_ref(), r.toast.is_empty()) {
                let bad = |e: serde_json::Error| Error::Protocol(e.to_string());
                let names: Vec<String> = serde_json::from_slice(r.toast).map_err(bad)?;
                let prev: Row = serde_json::from_slice(prev).map_err(bad)?;
                let wanted: Vec<_> = prev
                    .0
                    .iter()
                    .filter(|(n, _)| names.iter().any(|w| **w == **n))
                    .cloned()
                    .collect();
                let moved_unknown =
                    |v: &Option<String>| v.as_deref().and_then(crate::schema::shape::unknown) == Some(MOVED_UNKNOWN);
                if wanted.len() == names.len() && !wanted.iter().any(|(_, v)| moved_unknown(v)) {
                    capture.put(r.lsn, r.seq, &Row(wanted))?;
                }
            }
            if let Some(s) = state {
                s.1 -= 1;
                if s.1 <= 0 {
                    *state = None;
                }
            }
        }
    }
    Ok(())
}

/// The rows of a restore, folded from the sorted records one key at a time.
pub struct Rows {
    merged: Merged,
    /// The sorted runs, when they are read more than once (kept until the
    /// rows are).
    _spilled: Option<Spilled>,
    fills: Fills,
    /// Only these keys come out (the others were read for key changes).
    only: Option<std::collections::BTreeSet<Vec<u8>>>,
    truncated_at: Option<(u64, u64)>,
    group: Vec<u8>,
    /// The current key's row.
    state: State,
    pending: State,
    done: bool,
    /// Columns whose unknown values are passed on instead of refused.
    tolerated: Tolerated,
    /// What was restored.
    pub outcome: Outcome,
}

/// Which unknown values (see [`crate::schema::shape::unknown`]) a reader of
/// [`Rows`] takes as they are.
#[derive(Debug, Clone, Default)]
enum Tolerated {
    /// None: such a row is an error.
    #[default]
    None,
    /// Those of generated columns (the database computes them again).
    Generated(Vec<String>),
    /// All (the rows are archived again, marks and all).
    All,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows")
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

fn finish_group(
    state: &mut State,
    pending: &mut State,
    key: &[u8],
    only: Option<&std::collections::BTreeSet<Vec<u8>>>,
) -> Result<(), Error> {
    if let Some((row, n)) = state.take() {
        if n > 0 && only.is_none_or(|o| o.contains(key)) {
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

    fn new(c: Collected) -> Result<Rows, Error> {
        let Collected {
            sorter,
            outcome,
            truncated_at,
            moves,
            ..
        } = c;
        if moves == 0 {
            return Ok(Rows::folding(
                sorter.finish()?,
                None,
                Fills::default(),
                truncated_at,
                outcome,
            ));
        }
        // Key changes left large values unchanged: a first pass over the
        // records finds them in the rows under the old keys (again while a
        // pass finds more: a row whose key changed twice), then the rows.
        let spilled = sorter.spill_all()?;
        let mut fills = Fills::create(spilled.dir())?;
        loop {
            let mut found = Fills {
                file: fills.file.as_ref().map(|f| f.try_clone()).transpose()?,
                at: Default::default(),
                end: fills.end,
            };
            let mut merged = spilled.merged()?;
            let mut group: Vec<u8> = Vec::new();
            let mut state: State = None;
            while let Some(b) = merged.next_record()? {
                let r = decode(b).ok_or_else(damaged)?;
                if r.key != group.as_slice() {
                    state = None;
                    group.clear();
                    group.extend_from_slice(r.key);
                }
                if truncated_at.is_some_and(|t| (r.lsn, r.seq) < t) {
                    continue;
                }
                apply(&mut state, &r, &fills, Some(&mut found))?;
            }
            let before = fills.at.len();
            fills.end = found.end;
            for (k, v) in found.at {
                fills.at.entry(k).or_insert(v);
            }
            if fills.at.len() as u64 >= moves || fills.at.len() == before {
                break;
            }
        }
        let merged = spilled.merged()?;
        Ok(Rows::folding(merged, Some(spilled), fills, truncated_at, outcome))
    }

    fn folding(
        merged: Merged,
        spilled: Option<Spilled>,
        fills: Fills,
        truncated_at: Option<(u64, u64)>,
        outcome: Outcome,
    ) -> Rows {
        Rows {
            merged,
            _spilled: spilled,
            fills,
            only: None,
            truncated_at,
            group: Vec::new(),
            state: None,
            pending: None,
            done: false,
            tolerated: Tolerated::None,
            outcome,
        }
    }

    /// For a reader that writes no generated column (the database computes
    /// it): a value of one that the archive does not know is no error.
    pub fn generated_by_database(mut self) -> Rows {
        let names = self.outcome.schema.columns.iter().filter(|c| c.generated.is_some());
        self.tolerated = Tolerated::Generated(names.map(|c| c.name.clone()).collect());
        self
    }

    /// For a reader that archives the rows again: unknown values stay
    /// marked as such, and are no error.
    pub fn keeping_unknown(mut self) -> Rows {
        self.tolerated = Tolerated::All;
        self
    }

    /// The next row as its JSON object (column name to text or `null`).
    /// A row holding a value the archive cannot know (a conversion waly
    /// cannot reproduce) is an error naming the DDL: never a wrong row.
    pub fn next_json(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let row = self.next_folded()?;
        if let Some(j) = &row {
            if !matches!(self.tolerated, Tolerated::All) && j.windows(6).any(|w| w == b"\\u0000") {
                let r: Row = serde_json::from_slice(j).map_err(|e| Error::Protocol(e.to_string()))?;
                let tolerated = |name: &str| match &self.tolerated {
                    Tolerated::Generated(names) => names.iter().any(|n| n == name),
                    _ => false,
                };
                let unknown =
                    r.0.iter()
                        .filter(|(n, _)| !tolerated(n))
                        .find_map(|(_, v)| v.as_deref().and_then(crate::schema::shape::unknown));
                if let Some(why) = unknown {
                    return Err(Error::NotInArchive(why.to_string()));
                }
            }
        }
        Ok(row)
    }

    fn next_folded(&mut self) -> Result<Option<Vec<u8>>, Error> {
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
                finish_group(&mut self.state, &mut self.pending, &self.group, self.only.as_ref())?;
                continue;
            };
            let r = decode(b).ok_or_else(damaged)?;
            if r.key != self.group.as_slice() {
                finish_group(&mut self.state, &mut self.pending, &self.group, self.only.as_ref())?;
                self.group.clear();
                self.group.extend_from_slice(r.key);
            }
            if self.truncated_at.is_some_and(|t| (r.lsn, r.seq) < t) {
                continue;
            }
            apply(&mut self.state, &r, &self.fills, None)?;
        }
    }
}

fn damaged() -> Error {
    Error::Io(std::io::Error::other("a restore record is damaged"))
}

/// The new row with its unchanged-TOAST columns taken from the previous
/// version.
/// `prev` is `None` when there is no previous version to look in (the
/// values are NULL), `Some(None)` when it is unknown (the values are
/// `unknown`).
fn carry_toast(new: &[u8], toast: &[u8], prev: Option<Option<&Row>>, unknown: &str) -> Result<Vec<u8>, Error> {
    let bad = |e: serde_json::Error| Error::Protocol(e.to_string());
    let mut row: Row = serde_json::from_slice(new).map_err(bad)?;
    let names: Vec<String> = serde_json::from_slice(toast).map_err(bad)?;
    for n in names {
        let v = match prev {
            None => None,
            Some(None) => Some(unknown.to_string()),
            Some(Some(p)) => p.0.iter().find(|(k, _)| **k == *n).and_then(|(_, v)| v.clone()),
        };
        row.0.push((Arc::from(n.as_str()), v));
    }
    serde_json::to_vec(&row).map_err(bad)
}

/// Which schema version rows come out in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shape {
    /// The version in force at the point: the table as it was.
    #[default]
    AsWas,
    /// The newest version in the archive: renamed columns under their new
    /// names, dropped columns left out, columns added since with the value
    /// existing rows got.
    Latest,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "as-was" => Ok(Shape::AsWas),
            "latest" => Ok(Shape::Latest),
            other => Err(format!("unknown shape {other:?}: use as-was or latest")),
        }
    }
}

/// The schema version a restore of `plan` gives its rows in.
pub fn target_schema(plan: &Plan, shape: Shape) -> Result<SchemaRecord, Error> {
    let table = plan.table.as_str();
    let schemas = &plan.gen.schemas;
    // Versions whose transaction the archive holds complete (a version is
    // written ahead of its transaction's commit marker).
    let archived = plan
        .last_complete
        .map_or(plan.snapshot.lsn, |c| c.commit_lsn.max(plan.snapshot.lsn));
    let v = match shape {
        Shape::AsWas => schemas.at_point(table, plan.point, archived),
        Shape::Latest => schemas.versions(table).iter().rev().find(|s| s.commit_lsn <= archived),
    }
    .or_else(|| schemas.versions(table).first())
    .cloned()
    .ok_or_else(|| Error::NotInArchive(format!("{table} has no schema in generation {}", plan.generation)))?;
    if v.dropped {
        return Err(match shape {
            Shape::AsWas => crate::schema::shape::dropped_error(table, &v),
            Shape::Latest => Error::NotInArchive(format!(
                "{table} no longer exists (dropped or renamed at {}), so it has no latest shape; use --shape as-was",
                v.commit_lsn
            )),
        });
    }
    Ok(v)
}

/// The newest version after `after` and up to the point that changed the
/// row key (the primary key, or the replica identity index; see
/// [`SchemaRecord::row_key`]): changes before it were keyed by another key,
/// so the state just before it is rebuilt first and re-keyed. Each such
/// rebuild's point is before the last one's, so they end.
fn last_key_change(plan: &Plan, after: Lsn) -> Option<&SchemaRecord> {
    let within = |v: &&SchemaRecord| {
        let time = v.commit_time.unwrap_or(DateTime::<Utc>::MIN_UTC);
        v.commit_lsn > after && !past(plan.point, v.commit_lsn, time)
    };
    plan.gen.schemas.row_key_changes(&plan.table).into_iter().rfind(within)
}

/// What a scan gathered: the sorted records, what was restored, and the
/// position of the last truncate.
/// What a read of the archive gathered.
struct Collected {
    sorter: Sorter,
    outcome: Outcome,
    /// Records before this `(lsn, seq)` were truncated away.
    truncated_at: Option<(u64, u64)>,
    /// Key changes that left large values unchanged: their values are in
    /// the rows under the old keys.
    moves: u64,
    /// Old keys of such key changes that the filter left out.
    outside: std::collections::BTreeSet<Vec<u8>>,
}

/// [`collect_inner`], boxed: a restore across a primary-key change first
/// restores the point before it.
fn collect<'a>(
    store: &'a Store,
    plan: &'a Plan,
    filter: &'a Filter,
    progress: Progress<'a>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Collected, Error>> + Send + 'a>> {
    Box::pin(collect_inner(store, plan, filter, progress))
}

/// Whether a commit at `lsn` and `time` is after `point`.
fn past(point: Bound, lsn: Lsn, time: DateTime<Utc>) -> bool {
    match point {
        Bound::Lsn(p) => lsn > p,
        Bound::Time(t) => time > t,
    }
}

/// What a restore reads of a segment ahead of folding it.
enum Ahead {
    /// A segment the index covers, wholly at or before the point: its last
    /// commit (as its header records it) and the frames that hold the
    /// table's changes.
    Part(Option<crate::segment::CommitPoint>, Vec<bytes::Bytes>),
    /// A time point's end: the segment's first transaction committed after
    /// the point (its header says so without reading, or decrypting, the
    /// rest), so the walk stops there.
    Stop,
    /// To be read whole: not covered, or holding the point.
    Whole,
}

/// Reads what a restore needs of segment `key` (of `size` bytes as listed)
/// ahead of folding it: with `frames` (where the index covers it, the
/// frames holding the table), its header, and those frames when it lies
/// wholly at or before `point` (its last record is its last commit, at or
/// before the point by LSN and by the last commit time it records). Records
/// before `start` are not folded, so a segment that starts before it never
/// stops the walk.
async fn read_ahead(
    store: Store,
    key: String,
    size: u64,
    frames: Option<Vec<u32>>,
    point: Bound,
    start: Lsn,
) -> Result<Ahead, Error> {
    let header = match (&frames, point) {
        (Some(_), _) | (None, Bound::Time(_)) => Some(crate::index::segment_header(&store, &key, size).await?),
        (None, Bound::Lsn(_)) => None,
    };
    if let (Some(frames), Some((header, offsets))) = (&frames, &header) {
        let before = header.last_commit.is_some_and(|c| {
            let time = header.last_commit_time.map_or(c.commit_time, |t| t.max(c.commit_time));
            header.last_lsn <= c.commit_lsn && !past(point, c.commit_lsn, time)
        });
        if before {
            let z = crate::index::read_frames(&store, &key, offsets, frames).await?;
            return Ok(Ahead::Part(header.last_commit, z));
        }
    }
    if let (Bound::Time(t), Some((header, _))) = (point, &header) {
        if header.first_lsn >= start && header.first_commit_time.is_some_and(|f| f > t) {
            return Ok(Ahead::Stop);
        }
    }
    Ok(Ahead::Whole)
}

async fn collect_inner(
    store: &Store,
    plan: &Plan,
    filter: &Filter,
    progress: Progress<'_>,
) -> Result<Collected, Error> {
    let table = plan.table.as_str();
    let schemas = &plan.gen.schemas;
    let mut sorter = Sorter::new(16 << 20);
    let mut read = 0u64;
    let keep = |k: &[u8]| filter.keys.is_empty() || filter.keys.iter().any(|f| f.as_slice() == k);
    // Every row is carried into the target version's shape (by attnum)
    // before it is keyed, so renames, drops and added columns fold as the
    // database applied them.
    let target = target_schema(plan, filter.shape)?;
    let mut shaper = crate::schema::shape::Shaper::new(schemas, table, target.version);
    let ident = KeyColumns::identity(&target);
    let ident_names: Vec<&str> = ident.names.iter().map(String::as_str).collect();
    let mut start = plan.snapshot.lsn;
    // Across a primary-key change, the rows just before it (rebuilt under
    // the old key) are the base, and only later changes are folded.
    if let Some(barrier) = last_key_change(plan, plan.snapshot.lsn) {
        let before = Plan {
            point: Bound::Lsn(Lsn(barrier.commit_lsn.as_u64().saturating_sub(1))),
            ..plan.clone()
        };
        let inner = Filter {
            keys: Vec::new(),
            shape: Shape::AsWas,
        };
        let mut base = Rows::new(collect(store, &before, &inner, &mut *progress).await?)?;
        let from = base.outcome.schema.version;
        while let Some(row) = base.next_row()? {
            let row = shaper.row(from, &row)?;
            let key = ident.encode(&row);
            if keep(&key) {
                let json = serde_json::to_vec(&row).map_err(|e| Error::Protocol(e.to_string()))?;
                sorter.push(&key, 0, 0, Kind::Base, b"", &json)?;
            }
        }
        start = barrier.commit_lsn;
    }
    // The snapshot.
    let snapshot_entry = plan.snapshot.tables.iter().find(|t| t.table == table);
    if let Some(entry) = snapshot_entry.filter(|_| start == plan.snapshot.lsn) {
        if let Some(why) = shaper.from(entry.schema_version)?.barrier() {
            return Err(Error::NotInArchive(why.to_string()));
        }
        let as_is = shaper.from(entry.schema_version)?.is_identity();
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
            let bytes = store.open_frames(&part.key, bytes).await?;
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
                if as_is {
                    let vals = pick(text.as_bytes(), &ident_names, &[]).map_err(|e| corrupt(e.to_string()))?;
                    let key = ident.encode_with(|c| {
                        let i = ident_names.iter().position(|n| *n == c)?;
                        Some(vals.get(i).cloned().flatten().map(|v| v.into_owned()))
                    });
                    if keep(&key) {
                        sorter.push(&key, 0, 0, Kind::Base, b"", text.as_bytes())?;
                    }
                    continue;
                }
                let row: Row = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
                let row = shaper.row(entry.schema_version, &row)?;
                let key = ident.encode(&row);
                if keep(&key) {
                    let json = serde_json::to_vec(&row).map_err(|e| Error::Protocol(e.to_string()))?;
                    sorter.push(&key, 0, 0, Kind::Base, b"", &json)?;
                }
            }
        }
    }
    // The changes after it.
    let mut dedup = crate::log::Dedup::new(plan.last_complete.map(|c| c.commit_lsn));
    let mut cut: Option<(Lsn, DateTime<Utc>)> = None;
    let mut changes = 0u64;
    let mut truncated_at: Option<(u64, u64)> = None;
    let (mut moves, mut outside) = (0u64, std::collections::BTreeSet::new());
    let mut buf = Vec::new();
    let mut toast_buf = Vec::new();
    // Which frames hold the table's changes, where the index says.
    let numbers = || {
        plan.segments
            .iter()
            .filter_map(|(k, _)| layout::parse_segment_key(k).map(|(n, _, _)| n))
    };
    let by_table = match (numbers().min(), numbers().max()) {
        (Some(first), Some(last)) => crate::index::table_frames(store, &plan.generation, table, first..=last).await,
        _ => Default::default(),
    };
    let past_point = |lsn: Lsn, time: DateTime<Utc>| past(plan.point, lsn, time);
    // Folds one record in; true when the walk is done.
    let mut fold = |rec: Record| -> Result<bool, Error> {
        let (lsn, time) = match &rec {
            Record::Commit(c) => (c.commit_lsn, c.commit_time),
            other => match other.identity() {
                Some((id, time)) => (id.0, time),
                None => return Ok(false),
            },
        };
        if lsn < start {
            return Ok(false);
        }
        if !dedup.complete(lsn) {
            return Ok(true); // the incomplete tail
        }
        if past_point(lsn, time) {
            return Ok(true);
        }
        if let Record::Commit(c) = &rec {
            cut = Some((c.commit_lsn, c.commit_time));
            return Ok(false);
        }
        if let Some((id, _)) = rec.identity() {
            if dedup.admit(id) != crate::log::Admit::Keep {
                return Ok(false); // written twice (a restart); already seen
            }
        }
        let Record::Change(c) = rec else { return Ok(false) };
        let from = c.schema_version;
        let mut c = c.change;
        if &*c.table != table {
            return Ok(false);
        }
        let p = shaper.from(from)?;
        if !p.is_identity() {
            c.new = c.new.as_ref().map(|r| p.apply(r));
            c.old = c.old.as_ref().map(|r| p.apply(r));
            c.unchanged_toast = c.unchanged_toast.iter().filter_map(|t| p.rename(t)).collect();
        }
        changes += 1;
        let (lsn, seq) = (c.commit_lsn.as_u64(), c.seq);
        let mut put = |sorter: &mut Sorter, kind: Kind, row: &Row, toast: &[Arc<str>]| -> Result<bool, Error> {
            let k = ident.encode(row);
            if !keep(&k) {
                return Ok(false);
            }
            buf.clear();
            serde_json::to_writer(&mut buf, row).map_err(|e| Error::Protocol(e.to_string()))?;
            toast_buf.clear();
            if !toast.is_empty() {
                serde_json::to_writer(&mut toast_buf, toast).map_err(|e| Error::Protocol(e.to_string()))?;
            }
            sorter.push(&k, lsn, seq, kind, &toast_buf, &buf)?;
            Ok(true)
        };
        match (c.op, &c.old, &c.new) {
            (Op::Insert, _, Some(new)) => {
                put(&mut sorter, Kind::Insert, new, &c.unchanged_toast)?;
            }
            (Op::Update, Some(old), Some(new)) if ident.encode(old) != ident.encode(new) => {
                // The key changed (or, without a primary key, the row):
                // the old one goes, the new one comes. Large values the
                // update left unchanged come from the old row: sent
                // with it (REPLICA IDENTITY FULL), or else the row as
                // it was under the old key (the delete record names
                // them, and `Rows` finds them there).
                let mut whole = new.clone();
                let mut missing = Vec::new();
                for t in &c.unchanged_toast {
                    match old.0.iter().find(|(n, _)| n == t) {
                        Some(v) => whole.0.push(v.clone()),
                        None => missing.push(t.clone()),
                    }
                }
                let left = put(&mut sorter, Kind::Delete, old, &missing)?;
                if put(&mut sorter, Kind::Insert, &whole, &missing)? && !missing.is_empty() {
                    moves += 1;
                    if !left {
                        outside.insert(ident.encode(old));
                    }
                }
            }
            (Op::Update, _, Some(new)) => {
                put(&mut sorter, Kind::Update, new, &c.unchanged_toast)?;
            }
            (Op::Delete, Some(old), _) => {
                put(&mut sorter, Kind::Delete, old, &[])?;
            }
            (Op::Truncate, _, _) => truncated_at = Some((lsn, seq)),
            _ => {}
        }
        Ok(false)
    };
    // Each segment's header and frames read ahead of the folding, several
    // segments at once (see [`Ahead`]); one read whole is read here.
    let mut ahead = FetchAhead::default();
    let upcoming = plan.segments.clone().into_iter().map(|(key, size)| {
        let frames = layout::parse_segment_key(&key)
            .and_then(|(n, _, _)| by_table.get(&(n, layout::segment_fence(&key))))
            .cloned();
        // A segment's header is a few KiB; its table's frames at most all of it.
        let bytes = match &frames {
            Some(f) if f.is_empty() => 16 << 10,
            _ => size,
        };
        (bytes, read_ahead(store.clone(), key, size, frames, plan.point, start))
    });
    let mut upcoming = upcoming.peekable();
    'segments: for (key, _) in &plan.segments {
        let Some(got) = ahead.next_of(&mut upcoming).await else {
            break;
        };
        match got? {
            Ahead::Part(last_commit, frames) => {
                for z in frames {
                    read += z.len() as u64;
                    progress(read);
                    let mut r = SegmentReader::frame(key, &z)?;
                    while let Some(rec) = r.next_record(schemas)? {
                        if fold(rec)? {
                            break 'segments;
                        }
                    }
                }
                if let Some(c) = last_commit {
                    let marker = crate::segment::CommitRecord {
                        commit_lsn: c.commit_lsn,
                        end_lsn: c.end_lsn,
                        xid: 0,
                        commit_time: c.commit_time,
                        records: 0,
                    };
                    if fold(Record::Commit(marker))? {
                        break 'segments;
                    }
                }
            }
            Ahead::Stop => break 'segments,
            Ahead::Whole => {
                let bytes = store.get_segment(key).await?;
                read += bytes.len() as u64;
                progress(read);
                let mut r = SegmentReader::open(key, &bytes)?;
                while let Some(rec) = r.next_record(schemas)? {
                    if fold(rec)? {
                        break 'segments;
                    }
                }
            }
        }
    }
    Ok(Collected {
        sorter,
        outcome: Outcome {
            schema: target,
            cut,
            changes,
        },
        truncated_at,
        moves,
        outside,
    })
}
