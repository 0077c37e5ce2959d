//! The catalog: per generation, what `waly tables` shows (each table's change
//! count, first and last change, schema versions and snapshots), kept in one
//! small object that `waly run` updates after every segment, so listing the
//! archive's tables reads no segment.
//!
//! Like the index it is derived data (`index/<gen>/catalog.json`): it names
//! the segments it has folded in (the first and last key and how many), and a
//! reader checks that against the generation's chain. Segments after the
//! last one it names are read and folded in; a catalog that is missing or
//! names segments that are not the chain's (a prune, a lost upload) is
//! rebuilt from the segments, with a warning. Schema versions and manifests
//! are checked against their listings the same way.
//!
//! Changes are counted as readers count them (docs/FORMAT.md, "Reading,
//! deduplicated"): identities `(commit_lsn, seq)` that do not grow are
//! duplicates, and a transaction counts once its commit is in the archive.
//! Each segment is summarized as runs of one table's changes with
//! consecutive `seq`s, which is all that counting needs.

use crate::archive::state::{self, parse_json, to_json, Manifest};
use crate::archive::Store;
use crate::segment::{Record, SegmentReader};
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The catalog format this waly writes and reads.
const FORMAT: u32 = 1;

/// Segments `waly run` reads to bring a catalog up to date as it starts or
/// after a prune; beyond that it leaves the catalog to `waly reindex`.
pub const WRITER_CATCH_UP: usize = 64;

/// Where generation `gen`'s catalog is kept.
pub fn key(gen: &str) -> String {
    format!("index/{gen}/catalog.json")
}

/// A segment's changes as counting needs them: runs of one table's changes
/// of one transaction with consecutive `seq`s.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    tables: Vec<std::sync::Arc<str>>,
    /// Each table's place in `tables`.
    places: HashMap<std::sync::Arc<str>, u32>,
    runs: Vec<Run>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    commit_lsn: Lsn,
    first_seq: u64,
    last_seq: u64,
    time: DateTime<Utc>,
    table: u32,
}

impl Summary {
    /// Notes a change (in the order of the segment).
    pub fn note(&mut self, table: &std::sync::Arc<str>, commit_lsn: Lsn, seq: u64, time: DateTime<Utc>) {
        if let Some(r) = self.runs.last_mut() {
            if r.commit_lsn == commit_lsn
                && r.last_seq.checked_add(1) == Some(seq)
                && *self.tables[r.table as usize] == **table
            {
                r.last_seq = seq;
                return;
            }
        }
        let next = self.tables.len() as u32;
        let t = *self.places.entry(table.clone()).or_insert(next);
        if t == next {
            self.tables.push(table.clone());
        }
        self.runs.push(Run {
            commit_lsn,
            first_seq: seq,
            last_seq: seq,
            time,
            table: t,
        });
    }
}

/// One table's changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChanges {
    /// How many.
    pub changes: u64,
    /// The first one's commit time.
    pub first: Option<DateTime<Utc>>,
    /// The last one's commit time.
    pub last: Option<DateTime<Utc>>,
}

/// Changes of a transaction whose commit is not (yet) in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    commit_lsn: Lsn,
    time: DateTime<Utc>,
    tables: BTreeMap<String, u64>,
}

/// A manifest as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// Its LSN.
    pub lsn: Lsn,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
    /// The tables it holds.
    pub tables: Vec<String>,
}

/// One generation's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    waly_catalog: u32,
    /// The generation.
    pub generation: String,
    /// The key of the first segment folded in.
    first_segment: Option<String>,
    /// The key of the last one.
    last_segment: Option<String>,
    /// How many (a prefix of the chain).
    segments: u64,
    /// The last complete transaction in them.
    last_commit: Option<Lsn>,
    /// The greatest identity counted.
    high_water: Option<(Lsn, u64)>,
    /// Per table, the changes of complete transactions.
    pub tables: BTreeMap<String, TableChanges>,
    /// Changes of transactions not complete yet, in commit order.
    pending: Vec<Pending>,
    /// Schema version objects: key, then table and version.
    pub schemas: BTreeMap<String, (String, u32)>,
    /// Snapshot manifests by key.
    pub snapshots: BTreeMap<String, SnapshotEntry>,
}

impl Catalog {
    /// An empty catalog of `gen`.
    pub fn new(gen: &str) -> Catalog {
        Catalog {
            waly_catalog: FORMAT,
            generation: gen.to_string(),
            first_segment: None,
            last_segment: None,
            segments: 0,
            last_commit: None,
            high_water: None,
            tables: BTreeMap::new(),
            pending: Vec::new(),
            schemas: BTreeMap::new(),
            snapshots: BTreeMap::new(),
        }
    }

    /// Folds in the next segment of the chain: its key, the last complete
    /// transaction its header names, and its changes.
    pub fn absorb(&mut self, key: &str, last_commit: Option<Lsn>, s: &Summary) {
        for r in &s.runs {
            let from = match self.high_water {
                Some((l, _)) if l > r.commit_lsn => continue,
                Some((l, q)) if l == r.commit_lsn => r.first_seq.max(q.saturating_add(1)),
                _ => r.first_seq,
            };
            if from > r.last_seq {
                continue;
            }
            self.high_water = Some((r.commit_lsn, r.last_seq));
            let table = &s.tables[r.table as usize];
            // `pending` is in commit order (runs below the high-water mark
            // are skipped): a binary search, not a scan per run, which made
            // a segment of many small transactions quadratic.
            let i = match self.pending.binary_search_by_key(&r.commit_lsn, |p| p.commit_lsn) {
                Ok(i) => i,
                Err(i) => {
                    self.pending.insert(
                        i,
                        Pending {
                            commit_lsn: r.commit_lsn,
                            time: r.time,
                            tables: BTreeMap::new(),
                        },
                    );
                    i
                }
            };
            *self.pending[i].tables.entry(table.to_string()).or_default() += r.last_seq - from + 1;
        }
        if let Some(c) = last_commit {
            self.last_commit = Some(self.last_commit.map_or(c, |l| l.max(c)));
        }
        let done = self
            .pending
            .iter()
            .take_while(|p| self.last_commit.is_some_and(|c| p.commit_lsn <= c))
            .count();
        for p in self.pending.drain(..done) {
            for (t, n) in p.tables {
                let s = self.tables.entry(t).or_default();
                s.changes += n;
                s.first.get_or_insert(p.time);
                s.last = Some(p.time);
            }
        }
        self.first_segment.get_or_insert_with(|| key.to_string());
        self.last_segment = Some(key.to_string());
        self.segments += 1;
    }

    /// Each table's schema versions, by table.
    pub fn schema_versions(&self) -> BTreeMap<&str, u32> {
        let mut out = BTreeMap::new();
        for (t, _) in self.schemas.values() {
            *out.entry(t.as_str()).or_default() += 1;
        }
        out
    }

    /// Each table's latest snapshot `(lsn, taken_at)`.
    pub fn latest_snapshots(&self) -> BTreeMap<&str, (Lsn, DateTime<Utc>)> {
        let mut by_lsn: Vec<&SnapshotEntry> = self.snapshots.values().collect();
        by_lsn.sort_by_key(|s| s.lsn);
        let mut out = BTreeMap::new();
        for s in by_lsn {
            for t in &s.tables {
                out.insert(t.as_str(), (s.lsn, s.taken_at));
            }
        }
        out
    }

    /// How many segments it has folded in.
    pub fn segments(&self) -> u64 {
        self.segments
    }

    /// What differs between this catalog's counts and `other`'s (`None`
    /// when they agree), for `waly verify`.
    pub fn differs_from(&self, other: &Catalog) -> Option<String> {
        if self.tables != other.tables {
            let mut names: Vec<&String> = self.tables.keys().chain(other.tables.keys()).collect();
            names.sort();
            names.dedup();
            let show = |c: Option<&TableChanges>| {
                c.map_or("no changes".to_string(), |c| {
                    let at = |t: Option<DateTime<Utc>>| t.map_or("-".to_string(), |t| t.to_rfc3339());
                    format!("{} changes, first {}, last {}", c.changes, at(c.first), at(c.last))
                })
            };
            let t = names
                .into_iter()
                .find(|t| self.tables.get(*t) != other.tables.get(*t))
                .map_or(String::new(), |t| {
                    format!(
                        "table {t}: {}; the segments say {}",
                        show(self.tables.get(t)),
                        show(other.tables.get(t))
                    )
                });
            return Some(t);
        }
        if self.pending != other.pending || self.high_water != other.high_water || self.last_commit != other.last_commit
        {
            return Some("its open transactions or last commit differ from the segments'".into());
        }
        None
    }

    /// Whether this catalog's segments are the first ones of `chain`
    /// (`(key, number, size)` in order).
    pub fn fits(&self, chain: &[(String, u64, u64)]) -> Result<(), String> {
        let n = self.segments as usize;
        if n > chain.len() {
            return Err(format!("it names {n} segments, the chain has {}", chain.len()));
        }
        if n > 0
            && (Some(&chain[0].0) != self.first_segment.as_ref() || Some(&chain[n - 1].0) != self.last_segment.as_ref())
        {
            return Err("the segments it names are not the chain's (a prune, or an upload that was replaced)".into());
        }
        Ok(())
    }
}

/// Reads `gen`'s stored catalog: `None` when there is none, or (with a
/// warning) when it does not parse.
pub async fn load(store: &Store, gen: &str) -> Option<Catalog> {
    let k = key(gen);
    let opened = match store.get_opt(&k).await {
        Ok(Some(b)) => store.open_blob(&k, b).await.map(Some),
        other => other,
    };
    match opened {
        Ok(None) => None,
        Ok(Some(b)) => match serde_json::from_slice::<Catalog>(&b) {
            Ok(c) if c.waly_catalog == FORMAT && c.generation == gen => Some(c),
            Ok(_) => {
                tracing::warn!(
                    key = k,
                    "the catalog is of another format or generation; reading the segments instead"
                );
                None
            }
            Err(e) => {
                tracing::warn!(key = k, error = %crate::error::chain(&e), "the catalog is damaged; reading the segments instead");
                None
            }
        },
        Err(e) => {
            tracing::warn!(key = k, error = %crate::error::chain(&e), "the catalog cannot be read; reading the segments instead");
            None
        }
    }
}

/// Stores `cat` (sealed in an encrypted archive: its table names, counts
/// and times are the archive's business).
pub async fn write(store: &Store, cat: &Catalog) -> Result<(), Error> {
    let bytes = store.seal_blob(to_json(cat)).await?;
    store.put(&key(&cat.generation), bytes).await
}

/// Stores `cat` (derived data: a failure is a warning).
pub async fn save(store: &Store, cat: &Catalog) {
    if let Err(e) = write(store, cat).await {
        tracing::warn!(generation = cat.generation, error = %crate::error::chain(&e), "could not write the catalog; `waly tables` reads the segments instead");
    }
}

/// A segment's last complete transaction and its changes, read from its bytes.
pub fn summarize(key: &str, bytes: &[u8], schemas: &crate::segment::Schemas) -> Result<(Option<Lsn>, Summary), Error> {
    let mut r = SegmentReader::open(key, bytes)?;
    let last_commit = r.header.last_commit.map(|c| c.commit_lsn);
    let mut s = Summary::default();
    while let Some(rec) = r.next_record(schemas)? {
        if let Record::Change(c) = rec {
            s.note(&c.change.table, c.change.commit_lsn, c.change.seq, c.change.commit_time);
        }
    }
    Ok((last_commit, s))
}

/// How [`current`] came by its catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    /// Segments read to bring it up to date.
    pub segments_read: usize,
    /// Whether the stored one was missing or did not fit and it was built anew.
    pub rebuilt: bool,
}

/// `gen`'s catalog, up to date with its chain: the stored one plus the
/// segments after it, or built from every segment when there is none or it
/// does not fit (with a warning). `None` when that would read more than
/// `limit` segments.
pub async fn current(store: &Store, gen: &str, limit: Option<usize>) -> Result<Option<(Catalog, Freshness)>, Error> {
    let chain = state::segments(store, gen).await?;
    let mut fresh = Freshness::default();
    let mut cat = match load(store, gen).await {
        Some(c) => match c.fits(&chain) {
            Ok(()) => c,
            Err(why) => {
                tracing::warn!(
                    generation = gen,
                    why,
                    "the catalog does not fit the segments; reading them to rebuild it"
                );
                fresh.rebuilt = true;
                Catalog::new(gen)
            }
        },
        None => {
            fresh.rebuilt = true;
            Catalog::new(gen)
        }
    };
    let rest = &chain[cat.segments as usize..];
    if limit.is_some_and(|l| rest.len() > l) {
        return Ok(None);
    }
    if !rest.is_empty() {
        let st = state::load_generation_with(store, gen, state::Tail::default(), state::Shapes::All).await?;
        for (k, _, _) in rest {
            let bytes = store.get_segment(k).await?;
            let (last_commit, s) = summarize(k, &bytes, &st.schemas)?;
            cat.absorb(k, last_commit, &s);
            fresh.segments_read += 1;
        }
    }
    refresh_objects(store, gen, &mut cat).await?;
    Ok(Some((cat, fresh)))
}

/// Brings the catalog's schema versions and snapshots in line with their
/// listings: drops what is gone, reads what is new.
pub async fn refresh_objects(store: &Store, gen: &str, cat: &mut Catalog) -> Result<(), Error> {
    let listed: BTreeSet<String> = state::schema_keys(store, gen).await?.into_iter().collect();
    cat.schemas.retain(|k, _| listed.contains(k));
    for k in listed {
        if let std::collections::btree_map::Entry::Vacant(e) = cat.schemas.entry(k) {
            let bytes = store.get(e.key()).await?;
            if let Some(rec) = store.read_schema(e.key(), bytes, false).await? {
                e.insert((rec.table, rec.version));
            }
        }
    }
    let listed: BTreeSet<String> = state::manifest_keys(store, gen).await?.into_iter().collect();
    cat.snapshots.retain(|k, _| listed.contains(k));
    for k in listed {
        if let std::collections::btree_map::Entry::Vacant(e) = cat.snapshots.entry(k) {
            let m: Manifest = parse_json(e.key(), &store.get(e.key()).await?)?;
            e.insert(SnapshotEntry {
                lsn: m.lsn,
                taken_at: m.taken_at,
                tables: m.tables.into_iter().map(|t| t.table).collect(),
            });
        }
    }
    Ok(())
}

/// What `waly run` keeps: its generation's catalog, folded forward as it
/// stores segments (`None` when it could not be brought up to date cheaply:
/// `waly reindex` builds it).
#[derive(Debug, Default)]
pub struct Keeper {
    cat: Option<Catalog>,
    /// Schema versions and snapshots the writer knew of at the last listing.
    known: usize,
    /// Segments stored since the last listing.
    unlisted: u32,
}

/// Segments after which `waly run` lists the schema versions and snapshots
/// again even if it wrote none (others, like `waly compact`, may have).
const RELIST_EVERY: u32 = 64;

impl Keeper {
    /// The catalog of `gen` as the writer starts (or resumes) it.
    pub async fn start(store: &Store, gen: &str) -> Keeper {
        if matches!(store.sealer(), Ok(Some(_))) {
            tracing::info!(
                "the archive is encrypted: the writer, holding no key, cannot read the catalog to keep it; `waly tables` reads the segments after the one `waly reindex` last wrote"
            );
            return Keeper::default();
        }
        match current(store, gen, Some(WRITER_CATCH_UP)).await {
            Ok(Some((cat, fresh))) => {
                if fresh.segments_read > 0 || fresh.rebuilt {
                    save(store, &cat).await;
                }
                Keeper {
                    cat: Some(cat),
                    ..Default::default()
                }
            }
            Ok(None) => {
                tracing::warn!(
                    generation = gen,
                    "the catalog is missing or behind by more than {WRITER_CATCH_UP} segments; `waly tables` reads the segments until `waly reindex` builds it"
                );
                Keeper::default()
            }
            Err(e) => {
                tracing::warn!(generation = gen, error = %crate::error::chain(&e), "could not bring the catalog up to date; `waly tables` reads the segments until `waly reindex`");
                Keeper::default()
            }
        }
    }

    /// Folds in segment `key` (just stored), then stores the catalog. The
    /// stored catalog is read first: if a prune rebuilt it at the same point
    /// it is taken as it is; if it is elsewhere it is brought up to date
    /// from the chain. `known` counts the schema versions and snapshots the
    /// writer knows of: when it changes (or every [`RELIST_EVERY`] segments)
    /// their listings are read again.
    pub async fn stored(
        &mut self,
        store: &Store,
        gen: &str,
        key: &str,
        last_commit: Option<Lsn>,
        s: &Summary,
        known: usize,
    ) {
        let Some(mine) = self.cat.as_mut() else { return };
        self.unlisted += 1;
        let stored = load(store, gen).await.unwrap_or_else(|| Catalog::new(gen));
        if stored.last_segment == mine.last_segment {
            *mine = stored;
            mine.absorb(key, last_commit, s);
        } else {
            match current(store, gen, Some(WRITER_CATCH_UP)).await {
                Ok(Some((c, _))) => *mine = c,
                _ => {
                    tracing::warn!(generation = gen, "the stored catalog moved (a prune?) and is far behind; `waly tables` reads the segments until `waly reindex`");
                    self.cat = None;
                    return;
                }
            }
        }
        if known != self.known || self.unlisted >= RELIST_EVERY {
            match refresh_objects(store, gen, mine).await {
                Ok(()) => (self.known, self.unlisted) = (known, 0),
                Err(e) => {
                    tracing::warn!(generation = gen, error = %crate::error::chain(&e), "could not list the schema versions and snapshots for the catalog")
                }
            }
        }
        save(store, mine).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Admit, Dedup};

    /// A segment: its `(table, commit_lsn, seq)` changes and the last commit its header names.
    type Seg<'a> = (Vec<(&'a str, u64, u64)>, Option<u64>);

    /// Segments' changes counted by the catalog and by a reader's dedup.
    fn both(segments: &[Seg<'_>]) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let time = |lsn: u64| DateTime::from_timestamp(lsn as i64, 0).unwrap_or_default();
        let mut cat = Catalog::new("00000001");
        for (n, (changes, last)) in segments.iter().enumerate() {
            let mut s = Summary::default();
            for (t, lsn, seq) in changes {
                s.note(&std::sync::Arc::from(*t), Lsn(*lsn), *seq, time(*lsn));
            }
            cat.absorb(&format!("seg{n}"), last.map(Lsn), &s);
        }
        let got = cat.tables.iter().map(|(t, c)| (t.clone(), c.changes)).collect();
        let last_complete = segments.iter().filter_map(|s| s.1).max().map(Lsn);
        let mut dedup = Dedup::new(last_complete);
        let mut want = BTreeMap::new();
        for (changes, _) in segments {
            for (t, lsn, seq) in changes {
                if dedup.admit((Lsn(*lsn), *seq)) == Admit::Keep {
                    *want.entry(t.to_string()).or_default() += 1;
                }
            }
        }
        (got, want)
    }

    #[test]
    fn the_catalog_counts_changes_as_readers_deduplicate_them() {
        // A transaction cut by a crash and written again whole after the
        // restart, one spanning two segments, and one never committed.
        let (got, want) = both(&[
            (
                vec![
                    ("a", 100, 1),
                    ("a", 100, 2),
                    ("b", 100, 3),
                    ("a", 200, 1),
                    ("b", 200, 2),
                ],
                Some(100),
            ),
            (
                vec![
                    ("a", 200, 1),
                    ("b", 200, 2),
                    ("b", 200, 3),
                    ("a", 200, 4),
                    ("a", 300, 1),
                ],
                Some(200),
            ),
            (vec![("a", 300, 1), ("a", 300, 2)], None),
            (vec![("b", 300, 3)], Some(300)),
            (vec![("a", 400, 1), ("b", 400, 2)], None),
        ]);
        assert_eq!(got, want);
        assert_eq!(want.get("a"), Some(&(2 + 2 + 2)));
        assert_eq!(want.get("b"), Some(&(1 + 2 + 1)));
    }

    #[test]
    fn a_segment_of_many_small_transactions_is_counted_as_readers_count_it() {
        // 3,000 one- and two-table transactions, the last one cut across
        // the segment boundary and committed in the next.
        let mut first = Vec::new();
        for t in 1..=3000u64 {
            first.push(("a", t * 10, 1));
            if t % 3 == 0 {
                first.push(("b", t * 10, 2));
            }
        }
        first.push(("a", 30_010, 1));
        let (got, want) = both(&[
            (first, Some(30_000)),
            (vec![("b", 30_010, 2), ("a", 30_020, 1)], Some(30_020)),
        ]);
        assert_eq!(got, want);
        assert_eq!(want.get("a"), Some(&3002));
        assert_eq!(want.get("b"), Some(&1001));
    }

    #[test]
    fn a_catalog_fits_only_a_chain_that_starts_and_runs_through_its_segments() {
        let mut cat = Catalog::new("00000001");
        cat.absorb("s0", None, &Summary::default());
        cat.absorb("s1", None, &Summary::default());
        let chain = |keys: &[&str]| -> Vec<(String, u64, u64)> {
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.to_string(), i as u64, 0))
                .collect()
        };
        assert!(cat.fits(&chain(&["s0", "s1"])).is_ok());
        assert!(cat.fits(&chain(&["s0", "s1", "s2"])).is_ok());
        assert!(cat.fits(&chain(&["s1", "s2"])).is_err(), "after a prune");
        assert!(cat.fits(&chain(&["s0", "x1"])).is_err(), "another second segment");
        assert!(cat.fits(&chain(&["s0"])).is_err(), "a shorter chain");
    }
}
