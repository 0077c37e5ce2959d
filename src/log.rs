//! `waly log`: the archived changes in commit order, each once.
//!
//! Readers never trust the writer to have written each change once: a
//! transaction cut short by a crash is written again after restart. Changes
//! are deduplicated on their identity `(commit_lsn, seq)`, which only grows
//! along the chain. A transaction counts only once its commit marker is
//! archived, so the generation's trailing, incomplete transaction is held
//! back.

use crate::archive::ahead::{Ahead, Wanted};
use crate::archive::layout;
use crate::archive::state::{self, Manifest};
use crate::archive::Store;
use crate::event::Row;
use crate::segment::{ChangeRecord, MessageRecord, Record};
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};
use std::io::BufRead;

/// A point in history: a commit time or a commit LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Commit time.
    Time(DateTime<Utc>),
    /// Commit LSN.
    Lsn(Lsn),
}

impl std::str::FromStr for Bound {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('/') {
            return s.parse().map(Bound::Lsn).map_err(|e| e.to_string());
        }
        parse_time(s).map(Bound::Time)
    }
}

/// Parses RFC 3339; a date-time without an offset is UTC; a bare date is midnight UTC.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(format!(
        "invalid time {s:?}: use RFC 3339, e.g. 2026-11-20T09:30:00Z (a time without an offset is UTC), or an LSN like 0/16B6C50"
    ))
}

/// What a reader does with a change or message, by its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// New: use it.
    Keep,
    /// Written again after a restart, and already seen.
    Duplicate,
    /// Its transaction's commit marker is not archived (yet): it does not count.
    Incomplete,
}

/// Reads one generation's records as docs/FORMAT.md says: a transaction
/// counts only up to the generation's last complete one, and identities
/// `(commit_lsn, seq)` that do not grow are duplicates.
#[derive(Debug, Clone, Copy)]
pub struct Dedup {
    last_complete: Option<Lsn>,
    hwm: Option<(Lsn, u64)>,
}

impl Dedup {
    /// For a generation whose last complete transaction is `last_complete`.
    pub fn new(last_complete: Option<Lsn>) -> Dedup {
        Dedup {
            last_complete,
            hwm: None,
        }
    }

    /// Whether the transaction `commit_lsn` is complete in the archive.
    pub fn complete(&self, commit_lsn: Lsn) -> bool {
        self.last_complete.is_some_and(|c| commit_lsn <= c)
    }

    /// What to do with the record whose identity is `id`.
    pub fn admit(&mut self, id: (Lsn, u64)) -> Admit {
        if !self.complete(id.0) {
            return Admit::Incomplete;
        }
        if self.hwm.is_some_and(|h| id <= h) {
            return Admit::Duplicate;
        }
        self.hwm = Some(id);
        Admit::Keep
    }
}

/// What to print.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Only the changes and snapshots of these tables (`schema.table`);
    /// every table's when `None`.
    pub tables: Option<std::collections::BTreeSet<String>>,
    /// With `tables`, the `waly` messages too (an export's intents): of
    /// each covered segment the frames holding them are read as well. Every
    /// message is shown when `tables` is `None`.
    pub messages: bool,
    /// Every table's schema versions (in [`Item::Generation`]), even with
    /// `tables`: an export writes the as-of views of every table its
    /// destination holds. Otherwise one table's walk reads only its own.
    pub every_schema: bool,
    /// Only commits at or after this point.
    pub since: Option<Bound>,
    /// Only commits at or before this point.
    pub until: Option<Bound>,
    /// Also the snapshot rows: each table's first snapshot in a generation
    /// before the generation's changes, a later one before the first
    /// commit at or after its LSN.
    pub snapshot: bool,
    /// Of the snapshots, only those the changes do not repeat: each
    /// table's first in its generation (where its history starts), and a
    /// later one `waly run` took from the source (after a DDL whose effect
    /// on existing rows the stream does not carry: a retype with `USING`,
    /// a partition attached or detached); not those `waly compact` made
    /// from the changes.
    pub skip_repeating_snapshots: bool,
    /// Only commits, and snapshots, after this LSN (an export's cursor).
    pub after: Option<Lsn>,
}

impl LogOptions {
    /// Whether `table`'s changes and snapshots are shown.
    fn wants(&self, table: &str) -> bool {
        self.tables.as_ref().is_none_or(|t| t.contains(table))
    }

    /// Whether a record committed at `lsn` (at time `t`) is shown.
    fn shows(&self, lsn: Lsn, t: DateTime<Utc>) -> bool {
        after(self.since, lsn, t) && before(self.until, lsn, t) && self.after.is_none_or(|a| lsn > a)
    }

    /// Whether segment `key` may hold a record these options show. Its name
    /// gives the commit LSNs of its first and last records, and a segment's
    /// records lie between them in commit order (`waly verify` checks
    /// both); so one that ends before `since` (or at or before `after`), or
    /// starts after `until`, given as LSNs, is not read. Times say nothing
    /// here: a commit time is the source's clock, which may step back.
    fn may_show(&self, key: &str) -> bool {
        let Some((_, first, last)) = layout::parse_segment_key(key) else {
            return true;
        };
        let ends_before =
            matches!(self.since, Some(Bound::Lsn(l)) if last < l) || self.after.is_some_and(|a| last <= a);
        let starts_after = matches!(self.until, Some(Bound::Lsn(l)) if first > l);
        !(ends_before || starts_after)
    }
}

/// One thing `waly log` shows.
#[derive(Debug)]
pub enum Item<'a> {
    /// The start of a generation (what follows belongs to it).
    Generation {
        /// Its id.
        id: &'a str,
        /// Its schema versions, which the rows that follow are written in.
        schemas: &'a crate::segment::Schemas,
    },
    /// A table's snapshot starts: its rows, if any, follow. A table empty
    /// at the snapshot has this item and no rows.
    Snapshot {
        /// `schema.table`.
        table: &'a str,
        /// The snapshot's LSN.
        lsn: Lsn,
        /// When the snapshot was taken.
        taken_at: DateTime<Utc>,
        /// Rows the table had (what its rows that follow number).
        rows: u64,
        /// The schema version its rows are written in.
        schema_version: u32,
    },
    /// A row of a snapshot.
    SnapshotRow {
        /// `schema.table`.
        table: &'a str,
        /// The snapshot's LSN.
        lsn: Lsn,
        /// When the snapshot was taken.
        taken_at: DateTime<Utc>,
        /// The row (the walk is done with it).
        row: &'a mut Row,
        /// The schema version it is written in.
        schema_version: u32,
    },
    /// A change, with the schema version it is written in. The walk is done
    /// with it: a reader may take its rows rather than copy them.
    Change(&'a mut ChangeRecord),
    /// A `waly` message.
    Message(&'a MessageRecord),
}

/// What a log walk saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogStats {
    /// Items shown.
    pub shown: u64,
    /// Duplicates skipped.
    pub duplicates: u64,
    /// Records held back because their transaction has no commit marker.
    pub incomplete: u64,
    /// The walk is complete through this commit LSN: every commit at or
    /// before it that the options show was shown, though the walk may have
    /// read only some tables' frames. Each generation's last complete
    /// commit, or `until` given as an LSN where that comes first (with
    /// `until` given as a time: the last commit shown).
    pub through: Option<Lsn>,
}

/// Whether a commit at `lsn` and time `t` is at or after `b` (`--since`).
pub(crate) fn after(b: Option<Bound>, lsn: Lsn, t: DateTime<Utc>) -> bool {
    match b {
        None => true,
        Some(Bound::Lsn(l)) => lsn >= l,
        Some(Bound::Time(x)) => t >= x,
    }
}

/// Whether a commit at `lsn` and time `t` is at or before `b` (`--until`).
pub(crate) fn before(b: Option<Bound>, lsn: Lsn, t: DateTime<Utc>) -> bool {
    match b {
        None => true,
        Some(Bound::Lsn(l)) => lsn <= l,
        Some(Bound::Time(x)) => t <= x,
    }
}

/// Walks the archive, calling `f` for each item in commit order.
pub async fn walk(
    store: &Store,
    opts: &LogOptions,
    f: &mut (dyn FnMut(Item<'_>) -> Result<(), Error> + Send),
) -> Result<LogStats, Error> {
    let mut stats = LogStats::default();
    let gens = state::generations(store).await?;
    if gens.is_empty() && state::read_identity(store).await?.is_none() {
        return Err(Error::ArchiveMismatch(format!(
            "{} is not a waly archive (no waly.json); check --archive",
            store.url()
        )));
    }
    for gen in gens {
        // Its segments, listed once: for its tail, and to read.
        // One table's log needs only that table's schema versions.
        let one = opts.tables.as_ref().filter(|t| t.len() == 1 && !opts.every_schema);
        let shapes = match one.and_then(|t| t.first()) {
            Some(table) => state::Shapes::Table(table.clone()),
            None => state::Shapes::All,
        };
        let (st, segments) = state::load_generation_listing(store, &gen, shapes, |_| {}).await?;
        f(Item::Generation {
            id: &gen,
            schemas: &st.schemas,
        })?;
        // Each table's first snapshot comes first; a later one where the
        // commits after it start.
        let mut later: std::collections::VecDeque<(&Manifest, &crate::archive::state::ManifestTable)> =
            Default::default();
        if opts.snapshot {
            let mut seen = std::collections::BTreeSet::new();
            for m in &st.manifests {
                for t in &m.tables {
                    if !opts.wants(&t.table) {
                        continue;
                    }
                    let first = seen.insert(t.table.clone());
                    if !first && opts.skip_repeating_snapshots && m.compacted_at.is_some() {
                        continue;
                    }
                    // Taken at or before `after`: its rows are not wanted (it
                    // still counts as the table's first).
                    if opts.after.is_some_and(|a| m.lsn <= a) {
                        continue;
                    }
                    match first {
                        true => snapshot_rows(store, m, t, f, &mut stats).await?,
                        false => later.push_back((m, t)),
                    }
                }
            }
            later.make_contiguous().sort_by_key(|(m, _)| m.lsn);
        }
        let mut dedup = Dedup::new(st.tail.last_commit.map(|c| c.commit_lsn));
        let complete = st.tail.last_commit.and_then(|c| match opts.until {
            None => Some(c.commit_lsn),
            Some(Bound::Lsn(u)) => Some(c.commit_lsn.min(u)),
            Some(Bound::Time(_)) => None,
        });
        stats.through = stats.through.max(complete);
        // Some tables' log reads, of each segment the index covers, only
        // the frames with those tables' changes (and, with `messages`, the
        // frames holding messages).
        // Where the index's frame tables place those frames, they are read
        // without the segment's header.
        let (frames, mut places) = match (&opts.tables, segments.first(), segments.last()) {
            (Some(t), Some(first), Some(last)) => {
                let want = crate::index::Want {
                    tables: t.iter().map(String::as_str).collect(),
                    messages: opts.messages,
                    after: opts.after.map(Lsn::as_u64),
                };
                crate::index::frames_placed(store, &gen, &want, first.1..=last.1, true).await
            }
            _ => Default::default(),
        };
        // What committed since a time starts at the first segment whose
        // chain may hold such a commit.
        let skip = match opts.since {
            Some(Bound::Time(t)) => committed_before(store, &segments, t).await?,
            _ => 0,
        };
        let wanted = segments
            .into_iter()
            .skip(skip)
            .filter(|(key, _, _)| opts.may_show(key))
            .map(|(key, number, size)| {
                let at = (number, layout::segment_fence(&key));
                Wanted {
                    frames: frames.get(&at).cloned(),
                    places: places.remove(&at),
                    key,
                    size,
                }
            })
            .collect();
        let mut ahead = Ahead::start(store, wanted, st.schemas.clone())?;
        while let Some(batch) = ahead.next().await? {
            for mut rec in batch {
                let Some((id, t)) = rec.identity() else { continue };
                match dedup.admit(id) {
                    Admit::Incomplete => {
                        stats.incomplete += 1;
                        continue;
                    }
                    Admit::Duplicate => {
                        stats.duplicates += 1;
                        continue;
                    }
                    Admit::Keep => {}
                }
                // A later snapshot holds every commit before its LSN.
                while let Some((m, table)) = later.front().copied().filter(|(m, _)| m.lsn <= id.0) {
                    later.pop_front();
                    snapshot_rows(store, m, table, f, &mut stats).await?;
                }
                if !opts.shows(id.0, t) {
                    continue;
                }
                stats.through = stats.through.max(Some(id.0));
                match &mut rec {
                    Record::Change(c) => {
                        if !opts.wants(&c.change.table) {
                            continue;
                        }
                        f(Item::Change(c))?;
                    }
                    Record::Message(m) => {
                        if opts.tables.is_some() && !opts.messages {
                            continue;
                        }
                        f(Item::Message(m))?;
                    }
                    _ => {}
                }
                stats.shown += 1;
            }
        }
        // Those after the generation's last commit, up to `until`.
        for (m, table) in later {
            if before(opts.until, m.lsn, m.taken_at) {
                snapshot_rows(store, m, table, f, &mut stats).await?;
            }
        }
    }
    Ok(stats)
}

/// How many of `segments` (a generation's chain as `(key, number, size)`,
/// in order) hold only records committed before `t`, as their headers'
/// commit-time marks ([`crate::segment::TimeHigh`]) tell: a segment's mark
/// bounds its records and every earlier segment's, and never decreases
/// along the chain, so a binary search over headers finds the last segment
/// whose mark is before `t`. It reads about log2 of the chain's length
/// headers (their first bytes). A segment whose mark is missing (written
/// by an earlier release) says nothing: the search counts only through a
/// segment whose own header it read and whose mark is before `t`, so it
/// never skips a segment that could hold such a commit.
pub async fn committed_before(
    store: &Store,
    segments: &[(String, u64, u64)],
    t: DateTime<Utc>,
) -> Result<usize, Error> {
    let (mut lo, mut hi) = (0, segments.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (key, _, size) = &segments[mid];
        let (header, _) = crate::index::segment_header(store, key, *size).await?;
        if crate::segment::TimeHigh::of(&header).before(t) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// One table's rows of snapshot `m`, after an [`Item::Snapshot`].
async fn snapshot_rows(
    store: &Store,
    m: &Manifest,
    t: &crate::archive::state::ManifestTable,
    f: &mut (dyn FnMut(Item<'_>) -> Result<(), Error> + Send),
    stats: &mut LogStats,
) -> Result<(), Error> {
    f(Item::Snapshot {
        table: &t.table,
        lsn: m.lsn,
        taken_at: m.taken_at,
        rows: t.rows,
        schema_version: t.schema_version,
    })?;
    for part in &t.parts {
        let bytes = store.get(&part.key).await?;
        if crate::segment::sha256_hex(&bytes) != part.sha256 {
            return Err(Error::Corrupt {
                key: part.key.clone(),
                why: "its SHA-256 differs from the manifest's".into(),
            });
        }
        let bytes = store.open_frames(&part.key, bytes).await?;
        let corrupt = |why: String| Error::Corrupt {
            key: part.key.clone(),
            why,
        };
        let dec = zstd::stream::read::Decoder::new(&bytes[..]).map_err(|e| corrupt(e.to_string()))?;
        let mut lines = std::io::BufReader::new(dec).lines();
        lines.next(); // the part header
        for line in lines {
            let line = line.map_err(|e| corrupt(e.to_string()))?;
            let mut row: Row = serde_json::from_str(&line).map_err(|e| corrupt(e.to_string()))?;
            f(Item::SnapshotRow {
                table: &t.table,
                lsn: m.lsn,
                taken_at: m.taken_at,
                row: &mut row,
                schema_version: t.schema_version,
            })?;
            stats.shown += 1;
        }
    }
    Ok(())
}
