//! `waly history`: every version of one row, in commit order.
//!
//! The archive is walked in order (deduplicated, complete transactions only,
//! as `waly log` does). The row is followed by its primary key; when an
//! update changes the key, the history continues under the new one. A
//! snapshot row is the first known version of each generation; unchanged
//! TOAST values are carried forward from the version before; `waly` logical
//! messages of a transaction are the intent of every version it made.

use crate::archive::state;
use crate::archive::Store;
use crate::event::{Change, Op, Row};
use crate::log::{self, Bound, Item, LogOptions};
use crate::schema::keys::KeyColumns;
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};

/// One version of the row.
#[derive(Debug, Clone)]
pub struct Version {
    /// 1, 2, 3, ... for this row.
    pub version: u64,
    /// The generation it is in.
    pub generation: String,
    /// `snapshot`, `insert`, `update`, `delete` or `truncate`.
    pub op: &'static str,
    /// The commit LSN (the snapshot's LSN for a snapshot version).
    pub commit_lsn: Lsn,
    /// The commit time (when the snapshot was taken, for a snapshot version).
    pub commit_time: DateTime<Utc>,
    /// The change itself (`None` for a snapshot version).
    pub change: Option<Change>,
    /// The whole row after this version (unchanged TOAST values carried
    /// forward); `None` once deleted.
    pub row: Option<Row>,
    /// The row before it.
    pub before: Option<Row>,
    /// The columns whose value changed (for an insert or snapshot: all).
    pub changed: Vec<String>,
    /// Columns whose value was carried forward (unchanged TOAST).
    pub unchanged_toast: Vec<String>,
    /// The key, when this version changed it: `(old, new)`, as text.
    pub key_change: Option<(String, String)>,
    /// The transaction's `waly` messages, joined by `; `.
    pub intent: Option<String>,
    /// A snapshot version from a later snapshot `waly run` took after a
    /// DDL whose effect on existing rows the stream does not carry: the
    /// row as the DDL left it (`row: None`: no longer in the table).
    pub after_ddl: bool,
}

/// Where to look.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// `schema.table`.
    pub table: String,
    /// The key, as given: `col=val,...` or values in key order.
    pub key: String,
    /// Only versions committed at or after this point.
    pub since: Option<Bound>,
    /// Only versions committed at or before this point.
    pub until: Option<Bound>,
}

fn value<'a>(row: &'a Row, col: &str) -> Option<&'a Option<String>> {
    row.0.iter().find(|(n, _)| &**n == col).map(|(_, v)| v)
}

/// Follows one row through the archive's items, in order.
struct Tracker {
    table: String,
    ident: KeyColumns,
    current: Vec<u8>,
    row: Option<Row>,
    /// The schema version `row` is written in.
    row_version: u32,
    /// The LSN of the snapshot the table's history starts from in this
    /// generation: changes before it are in the snapshot already.
    start_lsn: Option<Lsn>,
    /// The generation's schema versions: rows are carried between versions
    /// by attnum, so a rename or an added column is not a change of value.
    schemas: crate::segment::Schemas,
    /// Projections between the generation's versions, as they are needed.
    projections: std::cell::RefCell<std::collections::HashMap<(u32, u32), Option<crate::schema::shape::Projection>>>,
    generation: String,
    txn: Option<Lsn>,
    intent: Option<String>,
    pending: Vec<Version>,
    out: Vec<Version>,
    n: u64,
    /// The row as it was just before an update gave it the followed key,
    /// by that update's `(commit LSN, seq)`: found by following the old key
    /// (`moved_in`), so the update's changed columns and unchanged large
    /// values come from the row it really changed.
    arrived: std::collections::HashMap<(Lsn, u64), Row>,
    /// Updates that gave a row the followed key with no row known before
    /// (the old key, encoded, and the key columns it is of), to look up in
    /// `arrived`.
    moved_in: Vec<(Lsn, u64, Vec<u8>, KeyColumns)>,
    /// A later snapshot of the table being read (`waly run` took it again
    /// after a DDL whose effect on existing rows the stream does not
    /// carry): its LSN, when it was taken, and whether it held the row.
    resnapshot: Option<(Lsn, DateTime<Utc>, bool)>,
    /// Such snapshots the index path has yet to read (their LSNs, in
    /// order), and the items from the first commit at or after the next
    /// one, held until its rows are read.
    awaiting: std::collections::VecDeque<Lsn>,
    held: Vec<Held>,
}

/// An item held back until a later snapshot before it is read.
enum Held {
    Change(crate::segment::ChangeRecord),
    Message(crate::segment::MessageRecord),
}

impl Tracker {
    /// `r`, written in version `from`, in the shape of version `to`; values
    /// the archive cannot know keep their old text (history shows what was
    /// archived).
    fn carry(&self, from: u32, to: u32, r: &Row) -> Row {
        if from == to || from == 0 || to == 0 {
            return r.clone();
        }
        // Built once per pair of versions, not per change.
        let mut cache = self.projections.borrow_mut();
        let p = cache
            .entry((from, to))
            .or_insert_with(|| crate::schema::shape::projection(&self.schemas, &self.table, from, to).ok());
        match p {
            Some(p) => p.apply_lenient(r),
            None => r.clone(),
        }
    }

    /// The key of `r` (written in version `from`), under the key columns'
    /// names in the generation's newest version.
    fn row_key(&self, from: u32, r: &Row) -> Vec<u8> {
        let latest = self.schemas.latest(&self.table).map_or(0, |s| s.version);
        let r = self.carry(from, latest, r);
        self.ident.encode(&r)
    }

    fn flush(&mut self) {
        self.end_resnapshot();
        for mut v in self.pending.drain(..) {
            v.intent = self.intent.clone();
            self.out.push(v);
        }
    }

    fn enter_txn(&mut self, lsn: Lsn) {
        if self.txn != Some(lsn) {
            self.flush();
            self.txn = Some(lsn);
            self.intent = None;
        }
    }

    /// Whether the index path must read the next later snapshot before
    /// it goes on: an item from after it is held.
    fn due(&self) -> bool {
        !self.held.is_empty()
    }

    fn on(&mut self, item: Item<'_>) {
        if !matches!(item, Item::SnapshotRow { .. }) {
            self.end_resnapshot();
        }
        // The index path holds what comes after a snapshot it has yet to read.
        let at = match &item {
            Item::Change(c) => Some(c.change.commit_lsn),
            Item::Message(m) => Some(m.commit_lsn),
            _ => None,
        };
        if let (Some(at), Some(&next)) = (at, self.awaiting.front()) {
            if at >= next {
                match item {
                    Item::Change(c) => self.held.push(Held::Change(c.clone())),
                    Item::Message(m) => self.held.push(Held::Message(m.clone())),
                    _ => {}
                }
                return;
            }
        }
        match item {
            Item::Generation { id, schemas } => {
                self.flush();
                self.generation = id.to_string();
                self.schemas = schemas.clone();
                self.projections.borrow_mut().clear();
                self.start_lsn = None;
                self.row = None;
                self.txn = None;
                self.intent = None;
            }
            // Its rows, if any, follow. A later one than the history's
            // start (`waly run` took it again after a DDL) says what the
            // DDL did to the row.
            Item::Snapshot {
                table, lsn, taken_at, ..
            } => {
                if table == self.table {
                    match self.start_lsn {
                        None => self.start_lsn = Some(lsn),
                        Some(s) if s != lsn => {
                            self.flush();
                            self.resnapshot = Some((lsn, taken_at, false));
                        }
                        Some(_) => {}
                    }
                }
            }
            Item::SnapshotRow {
                table: t,
                lsn,
                taken_at,
                row: r,
                schema_version,
            } => {
                if t != self.table {
                    return;
                }
                if self.resnapshot.is_some_and(|(l, _, _)| l == lsn) {
                    if self.row_key(schema_version, r) == self.current {
                        self.resnapshot = Some((lsn, taken_at, true));
                        self.snapshot_version(lsn, taken_at, Some(r), schema_version);
                    }
                    return;
                }
                // Only the first snapshot of the generation starts the
                // history; a later one `waly compact` made repeats what
                // the changes say.
                if self.start_lsn.is_some_and(|s| s != lsn) {
                    return;
                }
                self.start_lsn = Some(lsn);
                if self.row_key(schema_version, r) == self.current {
                    let changed = r.0.iter().map(|(c, _)| c.to_string()).collect();
                    self.push_snapshot(lsn, taken_at, Some(r), schema_version, changed, false);
                }
            }
            Item::Message(m) => {
                self.enter_txn(m.commit_lsn);
                self.intent = Some(match self.intent.take() {
                    Some(i) => format!("{i}; {}", m.content),
                    None => m.content.clone(),
                });
            }
            Item::Change(c) => {
                self.enter_txn(c.change.commit_lsn);
                if *c.change.table != *self.table || self.start_lsn.is_some_and(|s| c.change.commit_lsn < s) {
                    return;
                }
                self.change(&c.change, c.schema_version);
            }
        }
    }

    /// The later snapshot read ends: a row it did not hold is gone (a
    /// partition detached).
    fn end_resnapshot(&mut self) {
        if let Some((lsn, taken_at, found)) = self.resnapshot.take() {
            if !found && self.row.is_some() {
                self.snapshot_version(lsn, taken_at, None, self.row_version);
            }
        }
    }

    /// A version where a later snapshot holds the row (`r`, in schema
    /// version `v`), or not (`None`), otherwise than the changes left it.
    fn snapshot_version(&mut self, lsn: Lsn, taken_at: DateTime<Utc>, r: Option<&Row>, v: u32) {
        let before = self.row.as_ref().map(|b| self.carry(self.row_version, v, b));
        if before.as_ref() == r {
            return;
        }
        let changed: Vec<String> = match (r, &before) {
            (Some(r), Some(b)) => {
                r.0.iter()
                    .filter(|(c, val)| value(b, c) != Some(val))
                    .map(|(c, _)| c.to_string())
                    .collect()
            }
            (Some(r), None) => r.0.iter().map(|(c, _)| c.to_string()).collect(),
            (None, Some(b)) => b.0.iter().map(|(c, _)| c.to_string()).collect(),
            (None, None) => Vec::new(),
        };
        self.push_snapshot(lsn, taken_at, r, v, changed, true);
    }

    /// A snapshot version: the row (`r`, in schema version `v`) becomes
    /// the one followed.
    fn push_snapshot(
        &mut self,
        lsn: Lsn,
        taken_at: DateTime<Utc>,
        r: Option<&Row>,
        v: u32,
        changed: Vec<String>,
        after_ddl: bool,
    ) {
        self.n += 1;
        self.out.push(Version {
            version: self.n,
            generation: self.generation.clone(),
            op: "snapshot",
            commit_lsn: lsn,
            commit_time: taken_at,
            change: None,
            before: self.row.take(),
            row: r.cloned(),
            changed,
            unchanged_toast: Vec::new(),
            key_change: None,
            intent: None,
            after_ddl,
        });
        self.row = r.cloned();
        self.row_version = v;
    }

    /// After the index path read the next later snapshot: the items held
    /// for it, again (those past a further one are held again).
    fn replay(&mut self) {
        self.awaiting.pop_front();
        for h in std::mem::take(&mut self.held) {
            match h {
                Held::Change(mut c) => self.on(Item::Change(&mut c)),
                Held::Message(m) => self.on(Item::Message(&m)),
            }
        }
    }

    /// The row key of version `v` (see [`crate::schema::SchemaRecord::row_key`])
    /// where it is not the key followed: PostgreSQL then sends, for an
    /// update or delete, the old values of that key only (none when they
    /// did not change), so the followed key's old value is not in them.
    fn own_key(&self, v: u32) -> Option<KeyColumns> {
        let own = KeyColumns::row_key(self.schemas.version(&self.table, v)?);
        (!own.is_empty() && own.names != self.ident.names).then_some(own)
    }

    fn change(&mut self, c: &Change, v: u32) {
        let mut old_key = c.old.as_ref().map(|r| self.row_key(v, r));
        let new_key = c.new.as_ref().map(|r| self.row_key(v, r));
        // Under another row key, a change is the followed row's when it
        // names that row's value of that key; an update that leaves that
        // key alone sends no old values, and its new row has it unchanged.
        let own = self.own_key(v).filter(|_| matches!(c.op, Op::Update | Op::Delete));
        let own_old = own
            .as_ref()
            .and_then(|k| c.old.as_ref().or(c.new.as_ref()).map(|r| k.encode(r)));
        let by_own = match (&own, &own_old, &self.row) {
            (Some(k), Some(theirs), Some(row)) => Some(k.encode(&self.carry(self.row_version, v, row)) == *theirs),
            _ => None,
        };
        if by_own == Some(true) {
            old_key = Some(self.current.clone());
        } else if own.is_some() {
            // Not the followed row: its old value of the followed key is
            // unknown (an update may give it the followed key).
            old_key = None;
        }
        // In a partitioned table, an UPDATE that moves a row to another
        // partition reaches the stream as a delete and, next in the same
        // transaction, an insert: it is one update.
        let partitioned = self
            .schemas
            .latest(&self.table)
            .is_some_and(|s| s.meta.relkind.as_deref() == Some("p"));
        if c.op == Op::Insert && partitioned {
            let moved = self.pending.last().is_some_and(|last| {
                last.op == "delete"
                    && last
                        .change
                        .as_ref()
                        .is_some_and(|d| d.commit_lsn == c.commit_lsn && d.seq + 1 == c.seq)
            });
            if let Some(deleted) = self.pending.pop().filter(|_| moved) {
                self.n -= 1;
                self.row = deleted.before;
                let mut update = c.clone();
                update.op = Op::Update;
                update.old = deleted.change.and_then(|d| d.old);
                return self.change(&update, v);
            }
        }
        let current = &self.current;
        let mine = match c.op {
            _ if by_own == Some(true) => true,
            Op::Insert => new_key.as_ref() == Some(current),
            // Also an update that gave a row this key: the history of the
            // key starts there, saying where the row came from.
            Op::Update => old_key.as_ref() == Some(current) || new_key.as_ref() == Some(current),
            Op::Delete => old_key.as_ref() == Some(current),
            Op::Truncate => self.row.is_some(),
        };
        if !mine {
            return;
        }
        // The row before, in this change's shape; for an update that gave
        // a row the followed key, the row under its old key.
        let mut before = self.row.as_ref().map(|r| self.carry(self.row_version, v, r));
        if before.is_none() && c.op == Op::Update {
            // Where the row came from: its old key, or under another row
            // key the value of that key it had.
            let from = match (&own, own_old) {
                (Some(k), Some(theirs)) => Some((theirs, k.clone())),
                _ => old_key
                    .as_ref()
                    .filter(|ok| **ok != self.current)
                    .map(|ok| (ok.clone(), self.ident.clone())),
            };
            if let Some((ok, by)) = from {
                before = self.arrived.get(&(c.commit_lsn, c.seq)).cloned();
                if before.is_none() {
                    self.moved_in.push((c.commit_lsn, c.seq, ok, by));
                }
            }
        }
        let mut key_change = None;
        let after = match c.op {
            Op::Insert | Op::Update => {
                let mut whole = c.new.clone().unwrap_or_default();
                for t in &c.unchanged_toast {
                    let carried = before.as_ref().and_then(|b| value(b, t)).cloned().flatten();
                    whole.0.push((t.clone(), carried));
                }
                // Carried values go back to their place in the row.
                if let Some(b) = &before {
                    whole
                        .0
                        .sort_by_key(|(n, _)| b.0.iter().position(|(m, _)| m == n).unwrap_or(usize::MAX));
                }
                if let (Some(ok), Some(nk)) = (&old_key, &new_key) {
                    if ok != nk {
                        key_change = Some((self.ident.show(ok), self.ident.show(nk)));
                        self.current = nk.clone();
                    }
                }
                Some(whole)
            }
            Op::Delete | Op::Truncate => None,
        };
        let changed: Vec<String> = match (&before, &after) {
            (Some(b), Some(a)) if c.op == Op::Update => {
                a.0.iter()
                    .filter(|(n, v)| value(b, n) != Some(v))
                    .map(|(n, _)| n.to_string())
                    .collect()
            }
            (_, Some(a)) => a.0.iter().map(|(n, _)| n.to_string()).collect(),
            _ => Vec::new(),
        };
        self.n += 1;
        self.pending.push(Version {
            version: self.n,
            generation: self.generation.clone(),
            op: c.op.as_str(),
            commit_lsn: c.commit_lsn,
            commit_time: c.commit_time,
            change: Some(c.clone()),
            before,
            row: after.clone(),
            changed,
            unchanged_toast: c.unchanged_toast.iter().map(|t| t.to_string()).collect(),
            key_change,
            intent: None,
            after_ddl: false,
        });
        self.row = after;
        self.row_version = v;
    }
}

/// How a history lookup went.
#[derive(Debug, Clone, Copy, Default)]
pub struct LookupStats {
    /// Bytes read from the archive.
    pub bytes_read: u64,
    /// Segments read whole (not covered by a usable index object).
    pub segments_scanned: u64,
    /// Frames read through the index.
    pub frames_read: u64,
}

/// Every version of the row with `query.key` in `query.table`, oldest first.
/// With `use_index`, the index narrows what is read; segments it does not
/// cover (or whose index object is damaged, with a warning) are read whole.
pub async fn history(
    store: &Store,
    query: &HistoryQuery,
    use_index: bool,
) -> Result<(Vec<String>, Vec<Version>, LookupStats), Error> {
    let started_at = store.bytes_read();
    let table = query.table.as_str();
    // The key columns, from the table's newest schema.
    let mut latest = None;
    // The index objects are listed beside the generations: their first
    // reads need no generation's listing.
    let indexes = async {
        match use_index {
            true => crate::index::all_index_objects(store).await,
            false => Ok(Default::default()),
        }
    };
    // Whether the archive is encrypted (`waly.json`) too: opening an index
    // object from the tails directory needs nothing else.
    let (gens, (mut indexes, known), _) =
        futures_util::future::try_join3(state::generations(store), indexes, store.is_encrypted()).await?;
    let known = &known;
    let mut states = Vec::new();
    // Generations a few at once, in order.
    use futures_util::StreamExt;
    let guess = guess_key(&query.key);
    let loaded: Vec<Result<Gen, Error>> = futures_util::stream::iter(gens.clone())
        .map(|g: String| {
            let listed = indexes.remove(&g).unwrap_or_default();
            let guess = guess.clone();
            async move { load_gen(store, &g, table, use_index.then_some(listed), known, guess).await }
        })
        .buffered(GENERATIONS_AT_ONCE)
        .collect()
        .await;
    for g in loaded {
        let g = g?;
        if let Some(s) = g.st.schemas.latest(table) {
            latest = Some(s.clone());
        }
        states.push(g);
    }
    let Some(schema) = latest else {
        // Only the table's own schema versions were read: the others are
        // named by their listing.
        let mut known = std::collections::BTreeSet::new();
        for g in &gens {
            known.extend(
                state::schema_keys(store, g)
                    .await?
                    .iter()
                    .filter_map(|k| state::schema_key_table(k)),
            );
        }
        return Err(crate::restore::not_in_archive(table, &known));
    };
    if schema.row_key().is_empty() {
        return Err(Error::Invalid(format!(
            "{table} has no primary key (nor a replica identity index), so its rows have no identity to follow"
        )));
    }
    let ident = KeyColumns::identity(&schema);
    // The index holds each change under the row key of its own version: a
    // table whose row key changed (another primary key, or replica identity
    // index) has entries under the old key that the one followed now does
    // not find, so its history is read by a scan. So is that of a table
    // keyed by a replica identity index: releases before waly keyed rows
    // by it indexed them by their primary key.
    let versions = || states.iter().flat_map(|g| g.st.schemas.versions(table));
    let keys: std::collections::BTreeSet<_> = versions().map(|v| v.row_key_identity()).collect();
    let by_identity_index = versions().any(|v| v.meta.replica_identity.as_deref() == Some("index"));
    let use_index = use_index && keys.len() <= 1 && !by_identity_index;
    let key = crate::restore::parse_keys(std::slice::from_ref(&query.key), &ident, table)?
        .pop()
        .unwrap_or_default();
    let (mut out, mut stats) = follow_row(store, &states, table, &ident, &key, use_index, 0).await?;
    if out.is_empty() {
        return Err(Error::NotInArchive(format!(
            "no row of {table} with key {} in the archive",
            ident.show(&key)
        )));
    }
    let inside = |v: &Version| {
        let after = match query.since {
            None => true,
            Some(Bound::Lsn(l)) => v.commit_lsn >= l,
            Some(Bound::Time(t)) => v.commit_time >= t,
        };
        let before = match query.until {
            None => true,
            Some(Bound::Lsn(l)) => v.commit_lsn <= l,
            Some(Bound::Time(t)) => v.commit_time <= t,
        };
        after && before
    };
    out.retain(inside);
    stats.bytes_read = store.bytes_read() - started_at;
    Ok((ident.names, out, stats))
}

/// The largest frame table (compressed) `history` reads whole, beside the
/// index object's first blocks: about 2 bytes per frame, so the tables of
/// runs of up to a few hundred segments. A larger one costs more bytes
/// than the headers it saves; those segments' headers are read instead.
const FRAME_TABLE_READ: u64 = 64 << 10;

/// Generations whose state `history` loads at once.
const GENERATIONS_AT_ONCE: usize = 4;

/// How many key changes back `history` follows a row to find what it was
/// before it came to the followed key.
const MOVED_IN_DEPTH: u32 = 8;

type Followed = (Vec<Version>, LookupStats);

/// The versions of the row with `key`, oldest first. Where an update gave
/// the row this key, the row it was under its old key is looked up (that
/// key followed the same way, up to `MOVED_IN_DEPTH` moves back) and the
/// archive read again with it known, so the update's changed columns and
/// unchanged large values are the real ones.
fn follow_row<'a>(
    store: &'a Store,
    states: &'a [Gen],
    table: &'a str,
    ident: &'a KeyColumns,
    key: &'a [u8],
    use_index: bool,
    depth: u32,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Followed, Error>> + Send + 'a>> {
    Box::pin(async move {
        let mut arrived = std::collections::HashMap::new();
        let mut stats = LookupStats::default();
        loop {
            let (t, s) = track(store, states, table, ident, key, use_index, arrived.clone()).await?;
            stats.segments_scanned += s.segments_scanned;
            stats.frames_read += s.frames_read;
            let unknown: Vec<_> = t
                .moved_in
                .iter()
                .filter(|(lsn, seq, _, _)| !arrived.contains_key(&(*lsn, *seq)))
                .cloned()
                .collect();
            if unknown.is_empty() || depth >= MOVED_IN_DEPTH {
                return Ok((t.out, stats));
            }
            let before_count = arrived.len();
            for (lsn, seq, old, by) in unknown {
                let (theirs, s) = follow_row(store, states, table, &by, &old, use_index, depth + 1).await?;
                stats.segments_scanned += s.segments_scanned;
                stats.frames_read += s.frames_read;
                let found = theirs
                    .into_iter()
                    .find(|v| v.change.as_ref().is_some_and(|c| c.commit_lsn == lsn && c.seq == seq));
                if let Some(b) = found.and_then(|v| v.before) {
                    arrived.insert((lsn, seq), b);
                }
            }
            if arrived.len() == before_count {
                // The old key's history does not know the row either.
                return Ok((t.out, stats));
            }
        }
    })
}

/// One pass over the archive following `key`, with the rows known from
/// before key changes in `arrived`.
async fn track(
    store: &Store,
    states: &[Gen],
    table: &str,
    ident: &KeyColumns,
    key: &[u8],
    use_index: bool,
    arrived: std::collections::HashMap<(Lsn, u64), Row>,
) -> Result<(Tracker, LookupStats), Error> {
    let fresh = || Tracker {
        table: table.to_string(),
        ident: ident.clone(),
        current: key.to_vec(),
        row: None,
        row_version: 0,
        start_lsn: None,
        schemas: crate::segment::Schemas::default(),
        projections: Default::default(),
        generation: String::new(),
        txn: None,
        intent: None,
        pending: Vec::new(),
        out: Vec::new(),
        n: 0,
        arrived: arrived.clone(),
        moved_in: Vec::new(),
        resnapshot: None,
        awaiting: Default::default(),
        held: Vec::new(),
    };
    let mut t = fresh();
    let mut stats = LookupStats::default();
    let mut scan = !use_index;
    if use_index {
        for g in states {
            if let Err(trouble) = indexed_generation(store, g, &mut t, &mut stats).await? {
                // A damaged index never gives a wrong answer: start over
                // without it.
                tracing::warn!("{trouble}; reading the whole archive instead");
                t = fresh();
                stats = LookupStats::default();
                scan = true;
                break;
            }
        }
    }
    if scan {
        let opts = LogOptions {
            tables: None,
            messages: false,
            every_schema: false,
            since: None,
            until: None,
            snapshot: true,
            skip_repeating_snapshots: true,
            after: None,
        };
        log::walk(store, &opts, &mut |item| {
            t.on(item);
            Ok(())
        })
        .await?;
    }
    t.flush();
    Ok((t, stats))
}

/// One generation, read through its index where it has one.
/// A covered segment's frame offsets and the frames read of it, by number.
type Fetched = (Vec<(u64, u64)>, std::collections::BTreeMap<u32, bytes::Bytes>);

/// Reads of the covered segments ahead that hold the row's frames: at most
/// [`ReadAhead::DEPTH`] segments in flight or waiting, each its header and
/// then its listed frames, on tasks of their own.
#[derive(Default)]
struct ReadAhead {
    pending: std::collections::VecDeque<(u64, tokio::task::JoinHandle<Result<Fetched, Error>>)>,
    /// The last segment number asked for.
    upto: Option<u64>,
}

impl ReadAhead {
    /// A segment's read holds the frames of it the row is in (about 16 KiB
    /// compressed each, 1 MiB in older segments), so this many stay within
    /// a few MiB; on an object store each round trip then brings several.
    const DEPTH: usize = 32;

    /// Starts reads of the next segments of `rest` (this one first) that
    /// `hits` lists frames of, up to the depth: each segment's header
    /// first, unless `located` gives where its frames lie.
    fn refill(
        &mut self,
        store: &Store,
        rest: &[(String, u64, u64)],
        covered: &std::collections::BTreeMap<u64, usize>,
        located: &Located<'_>,
        hits: &std::collections::BTreeMap<u64, std::collections::BTreeSet<u32>>,
    ) {
        for (key, number, size) in rest {
            if self.pending.len() >= Self::DEPTH {
                break;
            }
            if self.upto.is_some_and(|u| *number <= u) {
                continue;
            }
            self.upto = Some(*number);
            let Some(frames) = hits
                .get(number)
                .filter(|f| !f.is_empty() && covered.contains_key(number))
            else {
                continue;
            };
            let (store, key, size) = (store.clone(), key.clone(), *size);
            let frames = frames.iter().copied().collect::<Vec<u32>>();
            let known = located.get(number).map(|f| f.to_vec());
            self.pending.push_back((
                *number,
                tokio::spawn(async move {
                    let offsets = match known {
                        Some(offsets) => offsets,
                        None => crate::index::segment_frames(&store, &key, size).await?,
                    };
                    let read = crate::index::read_frames(&store, &key, &offsets, &frames).await?;
                    Ok((offsets, frames.into_iter().zip(read).collect()))
                }),
            ));
        }
    }

    /// What was read ahead of segment `number`, if anything.
    async fn take(&mut self, number: u64) -> Result<Option<Fetched>, Error> {
        if self.pending.front().is_none_or(|(n, _)| *n != number) {
            return Ok(None);
        }
        let Some((_, task)) = self.pending.pop_front() else {
            return Ok(None);
        };
        let fetched = task
            .await
            .map_err(|e| Error::Protocol(format!("a read of the archive failed: {e}")))??;
        Ok(Some(fetched))
    }
}

/// A lookup's result: `(object, frame)` of the entries found.
type Found = Result<Vec<(u32, u32)>, Error>;

/// Index lookups started before they are asked for, by index object and
/// key: the table's truncates' and a key guessed from the key as given
/// (see [`guess_key`]), started as each index object opens, while the
/// table's schema (which says how its key's values are written) is still
/// being read. A lookup asked for later takes the one started for the same
/// object and key bytes, so a wrong guess costs only its reads. Those never
/// asked for are stopped when this is dropped.
#[derive(Default)]
struct Early(std::sync::Mutex<std::collections::HashMap<(String, Vec<u8>), Started>>);

/// A lookup started: on a task of its own.
type Started = tokio::task::JoinHandle<Found>;

impl Early {
    /// Starts the lookups of `keys` of `table` in `idx`.
    fn start(&self, store: &Store, idx: &crate::index::Index, table: &str, keys: &[&[u8]]) {
        let Ok(mut started) = self.0.lock() else { return };
        for k in keys {
            let (store, idx, table, key) = (store.clone(), idx.clone(), table.to_string(), k.to_vec());
            let at = (idx.key.clone(), key.clone());
            let task = tokio::spawn(async move { idx.lookup_key(&store, &table, &key).await });
            if let Some(earlier) = started.insert(at, task) {
                earlier.abort();
            }
        }
    }

    /// The lookup of `key` of `table` in `idx`: the one started, or now.
    async fn lookup(&self, store: &Store, idx: &crate::index::Index, table: &str, key: &[u8]) -> Found {
        let started = self
            .0
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&(idx.key.clone(), key.to_vec())));
        match started {
            Some(task) => task
                .await
                .map_err(|e| Error::Protocol(format!("a read of the archive failed: {e}")))?,
            None => idx.lookup_key(store, table, key).await,
        }
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        if let Ok(started) = self.0.get_mut() {
            started.values().for_each(|t| t.abort());
        }
    }
}

/// The key as given, read as if each of its values were already in its
/// type's canonical text (`7`, not `+007`): the bytes
/// [`KeyColumns::parse`] gives then. `None` for `col=val` pairs, whose
/// order only the schema gives.
fn guess_key(input: &str) -> Option<Vec<u8>> {
    if input.contains('=') {
        return None;
    }
    let values: Vec<Option<&str>> = input.split(',').map(Some).collect();
    serde_json::to_vec(&values).ok()
}

/// Where the record frames of covered segments lie, by segment number, as
/// their index objects' frame tables give them.
type Located<'a> = std::collections::BTreeMap<u64, &'a [(u64, u64)]>;

/// Adds to `hits` the `(segment, frame)` of every entry for `key` of
/// `table` (once per key), asking every index object at once (an object
/// store answers many small reads in parallel).
async fn follow(
    store: &Store,
    indexes: &[crate::index::Index],
    early: &Early,
    table: &str,
    keys: &[&[u8]],
    looked: &mut std::collections::HashSet<Vec<u8>>,
    hits: &mut std::collections::BTreeMap<u64, std::collections::BTreeSet<u32>>,
) -> Result<(), String> {
    let fresh: Vec<&[u8]> = keys.iter().copied().filter(|k| !looked.contains(*k)).collect();
    if fresh.is_empty() {
        return Ok(());
    }
    // Every key in every index object at once.
    let lookups = fresh.iter().flat_map(|k| {
        indexes
            .iter()
            .map(move |i| async move { (i, early.lookup(store, i, table, k).await) })
    });
    let found = futures_util::future::join_all(lookups).await;
    looked.extend(fresh.iter().map(|k| k.to_vec()));
    for (idx, r) in found {
        match r {
            Ok(entries) => {
                for (o, f) in entries {
                    if let Some(obj) = idx.footer.objects.get(o as usize) {
                        hits.entry(obj.number).or_default().insert(f);
                    }
                }
            }
            Err(e) => return Err(format!("the index is damaged ({}: {e})", idx.key)),
        }
    }
    Ok(())
}

/// The rows of `t`'s key in the generation's first snapshot of its table
/// (which starts its history there).
async fn snapshot_rows(
    store: &Store,
    st: &state::GenState,
    opened: Option<&(Lsn, Option<crate::index::Index>)>,
    early: &Early,
    t: &mut Tracker,
    stats: &mut LookupStats,
) -> Result<(), Error> {
    if let Some((m, entry)) = st
        .manifests
        .iter()
        .find_map(|m| m.tables.iter().find(|e| e.table == t.table).map(|e| (m, e)))
    {
        t.start_lsn = Some(m.lsn);
        let opened = opened.filter(|(lsn, _)| *lsn == m.lsn).map(|(_, idx)| idx.clone());
        snapshot_key_rows(store, &st.id, m, entry, opened, early, t, stats).await?;
    }
    Ok(())
}

/// The later snapshots of `t`'s table in the generation that history
/// reads (those `waly run` took again after a DDL; not `waly compact`'s,
/// which repeat the changes), in order.
fn later_snapshots<'a>(
    st: &'a state::GenState,
    table: &str,
) -> std::collections::VecDeque<(&'a state::Manifest, &'a state::ManifestTable)> {
    let mut found: Vec<_> = st
        .manifests
        .iter()
        .filter_map(|m| m.tables.iter().find(|e| e.table == table).map(|e| (m, e)))
        .skip(1)
        .filter(|(m, _)| m.compacted_at.is_none())
        .collect();
    found.sort_by_key(|(m, _)| m.lsn);
    found.into()
}

/// Reads the later snapshots the tracker holds items for (`all`: every
/// one left, at the generation's end), each for the key followed then,
/// and gives it the held items again.
async fn read_later(
    store: &Store,
    gen: &str,
    later: &mut std::collections::VecDeque<(&state::Manifest, &state::ManifestTable)>,
    all: bool,
    early: &Early,
    t: &mut Tracker,
    stats: &mut LookupStats,
) -> Result<(), Error> {
    while t.due() || (all && !later.is_empty()) {
        let Some((m, entry)) = later.pop_front() else { break };
        t.on(Item::Snapshot {
            table: &entry.table,
            lsn: m.lsn,
            taken_at: m.taken_at,
            rows: entry.rows,
            schema_version: entry.schema_version,
        });
        snapshot_key_rows(store, gen, m, entry, None, early, t, stats).await?;
        t.replay();
    }
    Ok(())
}

/// The rows of `t`'s key (the one followed now) in `entry` of snapshot
/// `m`: the frame that holds the key, by the snapshot's index (`opened`,
/// or opened here), or every row.
#[allow(clippy::too_many_arguments)]
async fn snapshot_key_rows(
    store: &Store,
    gen: &str,
    m: &state::Manifest,
    entry: &state::ManifestTable,
    opened: Option<Option<crate::index::Index>>,
    early: &Early,
    t: &mut Tracker,
    stats: &mut LookupStats,
) -> Result<(), Error> {
    use crate::index::{self, Index};
    // Its index object is named by the snapshot: no listing.
    let ikey = index::snapshot_index_key(gen, m.lsn);
    let found = async {
        let idx = match opened {
            Some(idx) => idx,
            None => Index::open_unlisted(store, &ikey).await?,
        };
        match idx {
            Some(idx) => {
                let hits = early.lookup(store, &idx, &t.table, &t.current).await?;
                Ok::<_, Error>(Some((idx, hits)))
            }
            None => Ok(None),
        }
    }
    .await
    .unwrap_or_else(|e| {
        tracing::warn!(index = ikey, error = %crate::error::chain(&e), "the index is damaged; reading the snapshot instead");
        None
    });
    let mut rows = Vec::new();
    match found {
        Some((idx, hits)) => {
            for (o, f) in hits {
                let Some(obj) = idx.footer.objects.get(o as usize) else {
                    continue;
                };
                let Some((off, len)) = obj.frames.get(f as usize) else {
                    continue;
                };
                let part = entry.parts.iter().find(|p| p.key == obj.key);
                if part.is_none() {
                    continue; // another table's part
                }
                let z = store.get_range_frames(&obj.key, *off..off + len).await?;
                stats.frames_read += 1;
                let text = zstd::decode_all(&z[..]).map_err(|e| Error::Corrupt {
                    key: obj.key.clone(),
                    why: e.to_string(),
                })?;
                for line in String::from_utf8_lossy(&text).lines() {
                    if line.starts_with("{\"waly_snapshot_part\"") {
                        continue;
                    }
                    if let Ok(r) = serde_json::from_str::<Row>(line) {
                        rows.push(r);
                    }
                }
            }
        }
        None => {
            for part in &entry.parts {
                let bytes = store.get_frames(&part.key).await?;
                let text = zstd::decode_all(&bytes[..]).map_err(|e| Error::Corrupt {
                    key: part.key.clone(),
                    why: e.to_string(),
                })?;
                for line in String::from_utf8_lossy(&text).lines().skip(1) {
                    if let Ok(r) = serde_json::from_str::<Row>(line) {
                        rows.push(r);
                    }
                }
            }
        }
    }
    for r in &mut rows {
        t.on(Item::SnapshotRow {
            table: &entry.table.clone(),
            lsn: m.lsn,
            taken_at: m.taken_at,
            row: r,
            schema_version: entry.schema_version,
        });
    }
    Ok(())
}

/// A generation as history reads it: its state, its segments and its
/// index objects, opened (once for every pass over it).
struct Gen {
    st: state::GenState,
    segments: Vec<(String, u64, u64)>,
    indexes: Vec<crate::index::Index>,
    /// Their frame tables (`None`: none, or too large to read whole).
    tables: Vec<Option<crate::index::FrameTable>>,
    /// The generation's first snapshot (its LSN) and its index object,
    /// opened (`None`: none found, or damaged).
    first_snapshot: Option<(Lsn, Option<crate::index::Index>)>,
    /// Lookups in its index objects started before they were asked for.
    early: Early,
}

/// Generation `gen` as history reads it. Its segments are listed once, for
/// its tail (the last segments' headers) and for what the index covers
/// alike. While its state (schema versions, manifests) loads, its index
/// objects (`listed`: their listing, `None` when the index is not used) are
/// opened (one that does not open is left out, so its segments are read
/// whole), and its first snapshot's index object too.
async fn load_gen(
    store: &Store,
    gen: &str,
    table: &str,
    listed: Option<Vec<(String, u64)>>,
    known: &crate::index::Known,
    guess: Option<Vec<u8>>,
) -> Result<Gen, Error> {
    use crate::index::{self, Index};
    let use_index = listed.is_some();
    // The truncates' and the guessed key's lookups start as each index
    // object opens, while the generation's state loads.
    let owned = Early::default();
    let mut first_keys: Vec<&[u8]> = vec![crate::index::TRUNCATE_KEY];
    first_keys.extend(guess.as_deref());
    let (early, first_keys) = (&owned, &first_keys);
    let listed = listed.unwrap_or_default();
    // The first snapshot's index object is named by its LSN, which the
    // manifests' listing gives: the state's load lists them and hands the
    // keys over (when that listing fails, so does the load).
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<String>>();
    let shapes = state::Shapes::Table(table.to_string());
    let state = state::load_generation_listing(store, gen, shapes, move |keys| {
        let _ = tx.send(keys.to_vec());
    });
    // Listed (the oldest), it opens from the tails directory when that
    // holds it; named by the manifests alone, with a read of its last bytes.
    let open_snapshot = |ikey: String, size: Option<u64>| async move {
        let opened = match size {
            Some(size) => Index::open_known(store, &ikey, size, known).await.map(Some),
            None => Index::open_unlisted(store, &ikey).await,
        };
        opened.unwrap_or_else(|e| {
            tracing::warn!(index = ikey, error = %crate::error::chain(&e), "the index is damaged; reading the snapshot instead");
            None
        })
    };
    // The oldest snapshot index object listed is opened before the
    // manifests are listed, as the first snapshot's likely one.
    let oldest = listed.iter().filter(|(k, _)| k.contains("/snapshots/")).min().cloned();
    let first_snapshot = async {
        if !use_index {
            return Ok(None);
        }
        let guess = async {
            let (k, size) = oldest.as_ref()?;
            let idx = open_snapshot(k.clone(), Some(*size)).await;
            if let Some(idx) = &idx {
                early.start(store, idx, table, &first_keys[1..]);
            }
            Some((k.clone(), idx))
        };
        let (keys, guess) = tokio::join!(rx, guess);
        let Ok(keys) = keys else {
            return Ok(None);
        };
        let first = keys
            .first()
            .and_then(|k| k.split('/').nth(3).and_then(|l| u64::from_str_radix(l, 16).ok()));
        let Some(lsn) = first.map(Lsn) else {
            return Ok::<_, Error>(None);
        };
        let ikey = index::snapshot_index_key(gen, lsn);
        let idx = match guess {
            Some((k, idx)) if k == ikey => idx,
            _ => open_snapshot(ikey, None).await,
        };
        Ok(Some((lsn, idx)))
    };
    let indexes = async {
        if !use_index {
            return Ok(Vec::new());
        }
        let listed = index::segment_indexes_of(&listed);
        // Each object opened, then its frame table read when small.
        let opened = futures_util::future::join_all(listed.iter().map(|(key, size, _, _)| async move {
            let idx = Index::open_known(store, key, *size, known).await?;
            early.start(store, &idx, table, first_keys);
            let table = match idx.frame_table_len() <= FRAME_TABLE_READ {
                true => idx.frame_table(store).await.unwrap_or_else(|e| {
                    tracing::warn!(index = key, error = %crate::error::chain(&e), "the index's frame table is damaged; reading segment headers instead");
                    None
                }),
                false => None,
            };
            Ok::<_, Error>((idx, table))
        }))
        .await;
        let mut indexes = Vec::new();
        for ((key, _, _, _), r) in listed.iter().zip(opened) {
            match r {
                Ok(i) => indexes.push(i),
                Err(e) => {
                    tracing::warn!(index = key, error = %crate::error::chain(&e), "the index is damaged; reading its segments instead")
                }
            }
        }
        Ok::<_, Error>(indexes)
    };
    let ((st, segments), indexes, first_snapshot) =
        futures_util::future::try_join3(state, indexes, first_snapshot).await?;
    let (indexes, tables) = indexes.into_iter().unzip();
    Ok(Gen {
        st,
        segments,
        indexes,
        tables,
        first_snapshot,
        early: owned,
    })
}

/// `Ok(Err(why))` when an index object turned out damaged part-way.
async fn indexed_generation(
    store: &Store,
    g: &Gen,
    t: &mut Tracker,
    stats: &mut LookupStats,
) -> Result<Result<(), String>, Error> {
    let (st, segments, indexes, tables, early) = (&g.st, &g.segments, &g.indexes, &g.tables, &g.early);
    let damaged = |key: &str, e: &Error| format!("the index is damaged ({key}: {e})");
    use crate::index;
    use crate::segment::{Record, SegmentReader};
    use std::collections::{BTreeMap, BTreeSet, HashSet};
    let gen = st.id.as_str();
    t.on(Item::Generation {
        id: gen,
        schemas: &st.schemas,
    });
    // The snapshot's rows and the segments' first index lookups at once
    // (they need only the key).
    // Which index covers which segment (by the footers): an entry counts
    // only for the segment of its number written under its fencing token.
    let fences: BTreeMap<u64, (u64, u64)> = segments
        .iter()
        .map(|(k, n, size)| (*n, (crate::archive::layout::segment_fence(k), *size)))
        .collect();
    let mut covered: BTreeMap<u64, usize> = BTreeMap::new();
    // Where a covered segment's frames lie, when its index object's frame
    // table says (each range inside the segment as listed).
    let mut located: Located<'_> = BTreeMap::new();
    for (i, idx) in indexes.iter().enumerate() {
        for (p, o) in idx.footer.objects.iter().enumerate() {
            let Some((_, size)) = fences.get(&o.number).filter(|(fence, _)| *fence == o.fence) else {
                continue;
            };
            covered.insert(o.number, i);
            located.remove(&o.number);
            if let Some(frames) = tables[i].as_ref().and_then(|t| t.get(&(p as u32))) {
                if !index::placed_inside(frames, *size) {
                    return Ok(Err(format!(
                        "the index is damaged ({}: its frame table places a frame outside the segment)",
                        idx.key
                    )));
                }
                located.insert(o.number, frames);
            }
        }
    }
    let (table, row_key) = (t.table.clone(), t.current.clone());
    let lookups = async {
        // The segments: through the index where covered, whole where not.
        // The row's frames, and its table's truncates (they end any row's
        // life): in the covered segments ahead they are read a few segments
        // at a time while earlier ones are fed (bounded memory).
        let mut hits: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        let mut looked: HashSet<Vec<u8>> = HashSet::new();
        let first = [crate::index::TRUNCATE_KEY, &row_key];
        let followed = follow(store, indexes, early, &table, &first, &mut looked, &mut hits).await;
        // The first segments' reads start now, not after the snapshot's rows.
        let mut ahead = ReadAhead::default();
        ahead.refill(store, segments, &covered, &located, &hits);
        Ok::<_, Error>((hits, looked, followed, ahead))
    };
    let (rows, lookups) = tokio::join!(
        snapshot_rows(store, st, g.first_snapshot.as_ref(), early, t, stats),
        lookups
    );
    rows?;
    let (mut hits, mut looked, followed, mut ahead) = lookups?;
    if let Err(why) = followed {
        return Ok(Err(why));
    }
    // The table's later snapshots are read where the commits after each
    // start, for the key followed then.
    let mut later = later_snapshots(st, &t.table);
    t.awaiting = later.iter().map(|(m, _)| m.lsn).collect();
    let mut dedup = log::Dedup::new(st.tail.last_commit.map(|c| c.commit_lsn));
    for (i, (key, number, size)) in segments.iter().enumerate() {
        read_later(store, gen, &mut later, false, early, t, stats).await?;
        // Look up every key followed so far (a key change adds one).
        if let Err(why) = follow(store, indexes, early, &t.table, &[&t.current], &mut looked, &mut hits).await {
            return Ok(Err(why));
        }
        ahead.refill(store, &segments[i..], &covered, &located, &hits);
        let whole = !covered.contains_key(number);
        let mut feed = |bytes: &[u8], frame: bool, t: &mut Tracker| -> Result<(), Error> {
            let mut r = if frame {
                SegmentReader::frame(key, bytes)?
            } else {
                SegmentReader::open(key, bytes)?
            };
            while let Some(mut rec) = r.next_record(&st.schemas)? {
                let Some((id, _)) = rec.identity() else { continue };
                if dedup.admit(id) != log::Admit::Keep {
                    continue;
                }
                match &mut rec {
                    Record::Change(c) => t.on(Item::Change(c)),
                    Record::Message(m) => t.on(Item::Message(m)),
                    _ => {}
                }
            }
            Ok(())
        };
        if whole {
            let bytes = store.get_segment(key).await?;
            stats.segments_scanned += 1;
            feed(&bytes, false, t)?;
            continue;
        }
        // Frame by frame; a key change inside this segment adds frames. A
        // frame the frame table placed that does not read is the index's
        // damage (the segment's own header is then read, by the scan).
        let table = located.get(number).copied();
        let by_table = |e: Error| match table {
            Some(_) => Ok(format!("the index's frame table is damaged ({key}: {e})")),
            None => Err(e),
        };
        let mut done: BTreeSet<u32> = BTreeSet::new();
        let (mut frames, mut read) = match ahead.take(*number).await {
            Ok(Some((offsets, read))) => (Some(offsets), read),
            Ok(None) => (None, BTreeMap::new()),
            Err(e) => return by_table(e).map(Err),
        };
        loop {
            let next = hits
                .get(number)
                .and_then(|fs| fs.iter().find(|f| !done.contains(f)).copied());
            let Some(f) = next else { break };
            done.insert(f);
            if frames.is_none() {
                frames = Some(match table {
                    Some(t) => t.to_vec(),
                    None => index::segment_frames(store, key, *size).await?,
                });
            }
            let Some((off, len)) = frames.as_ref().and_then(|fr| fr.get(f as usize)).copied() else {
                continue;
            };
            let z = match read.remove(&f) {
                Some(z) => z,
                None => match store.get_range_frames(key, off..off + len).await {
                    Ok(z) => z,
                    Err(e) => return by_table(e).map(Err),
                },
            };
            stats.frames_read += 1;
            if let Err(e) = feed(&z, true, t) {
                return by_table(e).map(Err);
            }
            read_later(store, gen, &mut later, false, early, t, stats).await?;
            if let Err(why) = follow(store, indexes, early, &t.table, &[&t.current], &mut looked, &mut hits).await {
                return Ok(Err(why));
            }
        }
    }
    read_later(store, gen, &mut later, true, early, t, stats).await?;
    t.flush();
    // Intents: the `waly` messages of the transactions that made versions,
    // where they sit in frames that were not read.
    let txns: BTreeSet<Lsn> = t
        .out
        .iter()
        .filter(|v| v.generation == gen && v.change.is_some())
        .map(|v| v.commit_lsn)
        .collect();
    let mut reads = index::MessageReads::default();
    for lsn in txns {
        let missing: Vec<usize> = t
            .out
            .iter()
            .enumerate()
            .filter(|(_, v)| v.generation == gen && v.commit_lsn == lsn && v.intent.is_none() && v.change.is_some())
            .map(|(i, _)| i)
            .collect();
        if missing.is_empty() {
            continue;
        }
        let found = index::transaction_messages(store, indexes, segments, &st.schemas, lsn, &mut reads).await?;
        let contents = match found {
            Ok(c) => c,
            Err((key, e)) => {
                stats.frames_read += reads.frames_read;
                return Ok(Err(damaged(&key, &e)));
            }
        };
        if contents.is_empty() {
            continue;
        }
        let intent = contents.into_iter().map(|(_, c)| c).collect::<Vec<_>>().join("; ");
        for i in missing {
            t.out[i].intent = Some(intent.clone());
        }
    }
    stats.frames_read += reads.frames_read;
    Ok(Ok(()))
}

impl Version {
    /// The `--json` form: the fields of `waly log --json`, plus `version`,
    /// `changed` and `intent` (and `snapshot`, `generation`, `key_change`).
    pub fn to_json(&self, table: &str) -> serde_json::Value {
        let mut v = match &self.change {
            Some(c) => serde_json::to_value(c).unwrap_or_default(),
            None => serde_json::json!({
                "commit_lsn": self.commit_lsn,
                "commit_time": self.commit_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "table": table,
                "op": "snapshot",
                "new": self.row,
            }),
        };
        if let Some(o) = v.as_object_mut() {
            if self.change.is_some() {
                // The whole row, unchanged TOAST values carried forward.
                o.insert("new".into(), serde_json::to_value(&self.row).unwrap_or_default());
            }
            o.insert("version".into(), self.version.into());
            o.insert("snapshot".into(), self.change.is_none().into());
            o.insert("generation".into(), self.generation.clone().into());
            o.insert("changed".into(), self.changed.clone().into());
            o.insert("intent".into(), self.intent.clone().into());
            o.insert("after_ddl".into(), self.after_ddl.into());
            o.insert(
                "key_change".into(),
                self.key_change.as_ref().map_or(
                    serde_json::Value::Null,
                    |(a, b)| serde_json::json!({"from": a, "to": b}),
                ),
            );
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guess is the parsed key exactly when each value is given in its
    /// canonical text, and otherwise differs (so its early lookup is
    /// never taken for the key's).
    #[test]
    fn a_guessed_key_is_the_parsed_key_when_given_canonically_and_only_then() {
        let cols = KeyColumns {
            names: vec!["region".into(), "id".into()],
            types: vec![25, 20],
            type_names: vec!["text".into(), "bigint".into()],
        };
        let parsed = |k: &str| cols.parse(k, "public.t").expect("parses");
        assert_eq!(guess_key("eu,7"), Some(parsed("eu,7")));
        assert_eq!(guess_key("eu,-12"), Some(parsed("eu,-12")));
        for other in ["eu,+7", "eu,007", "eu, 7"] {
            assert_ne!(guess_key(other), Some(parsed(other)), "{other}");
        }
        assert_eq!(
            guess_key("id=7,region=eu"),
            None,
            "named values need the schema's order"
        );
        let one = KeyColumns {
            names: vec!["id".into()],
            types: vec![20],
            type_names: vec!["bigint".into()],
        };
        assert_eq!(guess_key("42"), Some(one.parse("42", "public.t").expect("parses")));
    }
}
