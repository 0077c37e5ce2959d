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
//!
//! [`plan`] decides what to read; the engine ([`rows`]) reads it through
//! the external sort (`sort`) and folds each key's records; `text` writes
//! values as COPY, CSV or SQL.

mod engine;
mod sort;
mod text;

pub use engine::{identity, identity_columns, parse_keys, rows, target_schema, Filter, Outcome, Progress, Rows, Shape};
pub use text::{
    column_list, copy_text_line, create_table_sql, csv_line, pick, restored_comment_sql, set_logged_sql, values,
    writable, RESTORED_COMMENT,
};

use crate::archive::state::{self, GenState, Manifest};
use crate::archive::Store;
use crate::log::Bound;
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};

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
    /// The generation's state, with the schema versions of the table alone.
    pub gen: GenState,
    /// The latest complete transaction of the generation.
    pub last_complete: Option<crate::segment::CommitPoint>,
    /// Where the archive ends, when the point is past its last transaction.
    pub past_end: Option<String>,
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
    // Each generation's segments, listed with its state (for its tail).
    let mut listed = Vec::new();
    let mut known_tables = std::collections::BTreeSet::new();
    for g in &gens {
        // Only the table's own schema versions: the others are not needed.
        let shapes = state::Shapes::Table(table.to_string());
        let (st, segments) = state::load_generation_listing(store, g, shapes, |_| {}).await?;
        listed.push(segments);
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
    let listed = listed.swap_remove(i);
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
    let mut past_end = None;
    if is_last {
        if let Bound::Time(t) = point {
            let now = Utc::now();
            if t > now + chrono::Duration::seconds(1) {
                return Err(Error::NotInArchive(format!(
                    "{} is in the future (it is {} now); give a point up to now (or `--at now`); restorable: {ranges}",
                    show_point(point),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
        }
        if let Some(c) = st.tail.last_commit {
            let beyond = match point {
                Bound::Lsn(p) => p > c.commit_lsn && p.0 != u64::MAX,
                Bound::Time(t) => t > c.commit_time,
            };
            if beyond {
                past_end = Some(format!(
                    "{} is past the archive's last transaction ({}, committed {}): the rows are as of that \
                     transaction. The archive is complete to LSN {}; anything committed after that is not \
                     archived yet (`waly status` shows whether waly run is running and how far behind it is)",
                    show_point(point),
                    c.commit_lsn,
                    c.commit_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    st.tail.durable_lsn.unwrap_or(c.commit_lsn)
                ));
            }
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
    for (key, _, size) in listed {
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
        past_end,
        gen: st,
    })
}

/// An error unless the archive holds `table` (in some generation's
/// snapshot), listing the tables it does hold.
pub async fn check_archived(store: &Store, table: &str) -> Result<(), Error> {
    let mut known = std::collections::BTreeSet::new();
    for g in state::generations(store).await? {
        let st = state::load_generation(store, &g).await?;
        if st.schemas.tables().any(|t| t == table) {
            return Ok(());
        }
        for m in &st.manifests {
            if m.tables.iter().any(|t| t.table == table) {
                return Ok(());
            }
            known.extend(m.tables.iter().map(|t| t.table.clone()));
        }
    }
    Err(not_in_archive(table, &known))
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
