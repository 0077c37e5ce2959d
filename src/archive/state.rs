//! What the archive already holds: its identity, its generations, and for
//! the current generation the tail of the segment chain, the schema versions
//! and the snapshots. The writer rebuilds this on every start; nothing else
//! is kept between runs.

use super::layout;
use super::Store;
use crate::segment::{CommitPoint, SchemaRecord, Schemas};
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `waly.json`: which database the archive belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Format version of the archive layout.
    pub waly_archive: u32,
    /// The cluster's system identifier (`IDENTIFY_SYSTEM`).
    pub system_identifier: String,
    /// The database name.
    pub database: String,
    /// The replication slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// When the archive was created.
    pub created_at: DateTime<Utc>,
    /// `"age"` when the archive is encrypted (then `waly_archive` is 2,
    /// [`SEALED_LITERALS_FORMAT`] or [`SEALED_SHAPES_FORMAT`]); absent for
    /// a plaintext archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// The `lc_monetary` under which every `money` value in the archive
    /// was printed (`"C"`: `$1,234.56`), and so the one every session
    /// that writes or reads them sets. Absent in archives made before it
    /// was pinned: theirs are in the source's own `lc_monetary`, and
    /// sessions keep the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lc_monetary: Option<String>,
}

/// A database of a cluster: where an archive's changes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The cluster's system identifier (`IDENTIFY_SYSTEM`).
    pub system_identifier: String,
    /// The database name.
    pub database: String,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database {:?} of cluster {}", self.database, self.system_identifier)
    }
}

/// `sources/<n>.json`: the archive follows another database from now on
/// (`waly init --source-moved`, after `pg_upgrade` or a dump and restore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMove {
    /// Format version (1).
    pub waly_source_move: u32,
    /// Its number, from 1.
    pub number: u64,
    /// The source before.
    pub from: Source,
    /// The source from now on.
    pub to: Source,
    /// The end of the archive's history when it was recorded: the new
    /// source's WAL was already past it.
    pub archive_end: Lsn,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// The `lc_monetary` a new archive's `money` values are printed under:
/// `C`, which every server has, whatever locales its machine holds.
pub const MONEY_LOCALE: &str = "C";

impl Identity {
    /// The identity of an archive for `database` of cluster `system_identifier`, fed by `slot`.
    pub fn new(system_identifier: &str, database: &str, slot: &str, publication: &str) -> Identity {
        Identity {
            waly_archive: 1,
            system_identifier: system_identifier.to_string(),
            database: database.to_string(),
            slot: slot.to_string(),
            publication: publication.to_string(),
            created_at: Utc::now(),
            encryption: None,
            lc_monetary: Some(MONEY_LOCALE.to_string()),
        }
    }

    /// The database this identity names.
    pub fn source(&self) -> Source {
        Source {
            system_identifier: self.system_identifier.clone(),
            database: self.database.clone(),
        }
    }
}

/// The archive's source moves, oldest first.
pub async fn source_moves(store: &Store) -> Result<Vec<SourceMove>, Error> {
    let keys = source_move_keys(store).await?;
    let mut moves = Vec::with_capacity(keys.len());
    for (_, key) in keys {
        moves.push(parse_json::<SourceMove>(&key, &store.get(&key).await?)?);
    }
    Ok(moves)
}

/// The keys of the source moves listed, by number.
pub async fn source_move_keys(store: &Store) -> Result<Vec<(u64, String)>, Error> {
    let mut keys: Vec<(u64, String)> = store
        .list(layout::SOURCES_DIR)
        .await?
        .into_iter()
        .filter_map(|(k, _)| layout::parse_source_move_key(&k).map(|n| (n, k)))
        .collect();
    keys.sort();
    Ok(keys)
}

/// `id` (the archive's `waly.json`) naming the database the archive
/// follows now: the newest source move's, if any.
pub async fn following(store: &Store, mut id: Identity) -> Result<Identity, Error> {
    if let Some(m) = source_moves(store).await?.pop() {
        id.system_identifier = m.to.system_identifier;
        id.database = m.to.database;
    }
    Ok(id)
}

/// Records that the archive follows `to` from now on (it followed
/// `from`): refused unless the new source's WAL position `to_lsn` lies
/// past every LSN the archive holds, so that LSNs keep their order
/// across the move.
pub async fn record_source_move(store: &Store, from: &Source, to: &Source, to_lsn: Lsn) -> Result<SourceMove, Error> {
    let end = check_source_move(store, to, to_lsn).await?;
    let number = source_move_keys(store).await?.last().map_or(1, |(n, _)| n + 1);
    let m = SourceMove {
        waly_source_move: 1,
        number,
        from: from.clone(),
        to: to.clone(),
        archive_end: end,
        recorded_at: Utc::now(),
    };
    match store.put_once(&layout::source_move_key(number), to_json(&m)).await {
        Err(Error::Conflict { .. }) => Err(Error::Contended(format!(
            "source move {number} was recorded by another process at the same moment; run this again"
        ))),
        r => r.map(|()| m),
    }
}

/// The end of the archive's history (its last generation's durable
/// position), when `to`, writing WAL at `to_lsn`, can follow it: refused
/// unless `to_lsn` lies past it.
pub async fn check_source_move(store: &Store, to: &Source, to_lsn: Lsn) -> Result<Lsn, Error> {
    let end = match generations(store).await?.last() {
        Some(g) => {
            let (st, _) = load_generation_listing(store, g, Shapes::WhatOpens, |_| {}).await?;
            st.durable_position()
        }
        None => Lsn::ZERO,
    };
    if to_lsn <= end {
        return Err(Error::Prerequisite(format!(
            "the archive at {} holds history up to LSN {end}, and {to} writes WAL at LSN {to_lsn}, before \
             that: LSNs would go back, and a point given by LSN would be ambiguous. A cluster that \
             `pg_upgrade` made continues the old one's WAL; a new cluster starts low.\n  to fix: stop the new \
             cluster and start its WAL past the archive's: pg_resetwal -l {} <data directory> (a WAL file name \
             past LSN {end}), then run this again",
            store.url(),
            wal_file_past(end)
        )));
    }
    Ok(end)
}

/// The name of a WAL file (timeline 1, 16 MiB segments) that starts past
/// `lsn`, for `pg_resetwal -l`.
fn wal_file_past(lsn: Lsn) -> String {
    let next = (lsn.as_u64() >> 24) + 2;
    format!("00000001{:08X}{:08X}", next >> 8, next & 0xff)
}

/// `info` with the session settings the archive at `store` holds its
/// values in (`info` as is where there is no archive yet).
pub async fn with_archive_settings(
    store: &Store,
    info: &crate::source::ConnInfo,
) -> Result<crate::source::ConnInfo, Error> {
    Ok(match read_identity(store).await? {
        Some(id) => info.for_archive(&id),
        None => info.clone(),
    })
}

/// `generation.json`: why and where a generation began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationInfo {
    /// The generation id.
    pub generation: String,
    /// When it began.
    pub started_at: DateTime<Utc>,
    /// Why: first start, slot missing, slot invalidated, gap detected.
    pub reason: String,
    /// The slot's position when it began.
    pub slot_lsn: Lsn,
    /// The timeline.
    pub timeline: u32,
    /// The database it follows; absent in generations begun before
    /// sources could move: `waly.json`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// A snapshot manifest: written last, after every part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub waly_snapshot: u32,
    /// The generation.
    pub generation: String,
    /// The LSN the snapshot is consistent with: it holds every transaction
    /// committed before it, and none after.
    pub lsn: Lsn,
    /// When it was taken: the moment its state describes (for a compacted
    /// snapshot, the time of the last commit it holds).
    pub taken_at: DateTime<Utc>,
    /// For a snapshot made by `waly compact` from the archive: when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_at: Option<DateTime<Utc>>,
    /// The tables in it.
    pub tables: Vec<ManifestTable>,
}

/// One table in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestTable {
    /// `schema.table`.
    pub table: String,
    /// The schema version its rows follow.
    pub schema_version: u32,
    /// Rows in all parts.
    pub rows: u64,
    /// The parts, in order.
    pub parts: Vec<ManifestPart>,
}

/// One part object of a snapshot table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPart {
    /// The object key.
    pub key: String,
    /// Rows in it.
    pub rows: u64,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 (hex) of its bytes.
    pub sha256: String,
    /// `[offset, length]` of each zstd frame (the first holds the part's
    /// header line); each decompresses alone.
    #[serde(default)]
    pub frames: Vec<(u64, u64)>,
}

/// The end of a generation's segment chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// The number the next segment gets.
    pub next_number: u64,
    /// SHA-256 of the last segment.
    pub prev_sha256: Option<String>,
    /// The last transaction completely archived.
    pub last_commit: Option<CommitPoint>,
    /// Everything before this WAL position is archived (or deliberately not:
    /// idle WAL, or WAL covered by a snapshot).
    pub durable_lsn: Option<Lsn>,
    /// What the chain says of its records' commit times (the last
    /// segment's header's mark), which the next segment carries on.
    pub time_high: crate::segment::TimeHigh,
}

impl Tail {
    /// The chain once segment `number`, sealed as `sealed`, is stored: the
    /// next number, the hash to chain to and the commit-time mark.
    pub fn stored(&mut self, number: u64, sealed: &crate::segment::SealedSegment) {
        self.next_number = number + 1;
        self.prev_sha256 = Some(sealed.sha256.clone());
        self.time_high = crate::segment::TimeHigh::of(&sealed.header);
    }
}

/// The state of one generation.
#[derive(Debug, Clone, Default)]
pub struct GenState {
    /// Its id.
    pub id: String,
    /// The end of its segment chain.
    pub tail: Tail,
    /// Every schema version of every table.
    pub schemas: Schemas,
    /// Where the stream archives each table's transactions from
    /// ([`GenState::archived_from`]).
    pub snapshots: BTreeMap<String, Lsn>,
    /// The manifests, oldest first.
    pub manifests: Vec<Manifest>,
}

impl GenState {
    /// Sorts the manifests and finds where each table's history is
    /// archived from ([`GenState::snapshots`]).
    fn index_snapshots(&mut self) {
        self.manifests.sort_by_key(|m| m.lsn);
        let tables: std::collections::BTreeSet<String> = self
            .manifests
            .iter()
            .flat_map(|m| m.tables.iter().map(|t| t.table.clone()))
            .collect();
        self.snapshots.clear();
        for t in tables {
            if let Some(from) = self.archived_from(&t) {
                self.snapshots.insert(t, from);
            }
        }
    }

    /// The LSN from which the stream archives `table`'s transactions: its
    /// first snapshot in the generation, or the latest snapshot that
    /// started its history again after it ended (see
    /// [`GenState::history_ended`]). A later snapshot taken after a DDL
    /// waly cannot reproduce, or by compact, does not move it: the changes
    /// around it stay history. `None` for a table never snapshotted.
    pub fn archived_from(&self, table: &str) -> Option<Lsn> {
        let versions = self.schemas.versions(table);
        let mut from: Option<Lsn> = None;
        for m in self
            .manifests
            .iter()
            .filter(|m| m.tables.iter().any(|e| e.table == table))
        {
            from = match from {
                Some(f)
                    if !versions
                        .iter()
                        .any(|v| v.dropped && v.commit_lsn >= f && v.commit_lsn < m.lsn) =>
                {
                    Some(f)
                }
                _ => Some(m.lsn),
            };
        }
        from
    }

    /// Whether `table`'s history in the archive has ended since its last
    /// snapshot: a version marked dropped (the table dropped, renamed away,
    /// or no longer published whole) at or after it. Such a table's
    /// changes are not archived until it is snapshotted again; a table
    /// never snapshotted has no history to end.
    pub fn history_ended(&self, table: &str) -> bool {
        self.last_snapshot(table).is_some_and(|s| {
            self.schemas
                .versions(table)
                .iter()
                .any(|v| v.dropped && v.commit_lsn >= s)
        })
    }

    /// The LSN of `table`'s newest snapshot in the generation.
    pub fn last_snapshot(&self, table: &str) -> Option<Lsn> {
        self.manifests
            .iter()
            .filter(|m| m.tables.iter().any(|e| e.table == table))
            .map(|m| m.lsn)
            .max()
    }

    /// Whether every one of `tables` (`schema.table`: those of a snapshot
    /// at `lsn` left without its manifest, [`snapshot_part_tables`]) has a
    /// later snapshot in the generation, taken at or before `by` when
    /// given: no point from then on would start from the one at `lsn`.
    pub fn replaced_after(
        &self,
        lsn: Lsn,
        tables: &std::collections::BTreeSet<String>,
        by: Option<DateTime<Utc>>,
    ) -> bool {
        tables.iter().all(|t| {
            self.manifests
                .iter()
                .any(|m| m.lsn > lsn && by.is_none_or(|by| m.taken_at <= by) && m.tables.iter().any(|e| e.table == *t))
        })
    }

    /// The position up to which the slot may be confirmed: the chain's
    /// durable end, or a later snapshot's LSN.
    pub fn durable_position(&self) -> Lsn {
        let snap = self.manifests.iter().map(|m| m.lsn).max().unwrap_or_default();
        self.tail.durable_lsn.unwrap_or_default().max(snap)
    }
}

pub fn parse_json<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: key.to_string(),
        why: e.to_string(),
    })
}

/// Serializes `v` as pretty JSON with a trailing newline.
pub fn to_json<T: Serialize>(v: &T) -> bytes::Bytes {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    bytes::Bytes::from(out)
}

/// The `waly_archive` of an encrypted archive whose schema versions seal
/// their literals (defaults, values of added columns, partition bounds) as
/// well as their DDL text. An encrypted archive of format 2 (made before)
/// keeps those readable: a reader of format 2 would take a sealed default
/// for none.
pub const SEALED_LITERALS_FORMAT: u32 = 3;

/// The `waly_archive` of an encrypted archive whose schema versions are
/// sealed whole (their shape too: table and column names, types), under
/// schema keys the writer keeps in the source database (docs/FORMAT.md,
/// "Schema keys"). A reader of format 3 would read them as plaintext JSON.
pub const SEALED_SHAPES_FORMAT: u32 = 4;

/// Reads `waly.json`, if the archive has one.
pub async fn read_identity(store: &Store) -> Result<Option<Identity>, Error> {
    let Some(b) = store.get_opt(layout::IDENTITY).await? else {
        return Ok(None);
    };
    let id: Identity = parse_json(layout::IDENTITY, &b)?;
    // 1: plaintext; 2 to 4: encrypted (`encryption`). A later format is refused.
    if id.waly_archive > SEALED_SHAPES_FORMAT {
        return Err(Error::ArchiveMismatch(format!(
            "the archive at {} has format version {}, newer than this waly reads ({SEALED_SHAPES_FORMAT}): \
             upgrade waly",
            store.url(),
            id.waly_archive
        )));
    }
    Ok(Some(id))
}

/// Makes sure the archive belongs to `mine`: writes the identity if there is
/// none, refuses if it names another database.
pub async fn claim(store: &Store, mine: &Identity) -> Result<Identity, Error> {
    if let Some(theirs) = read_identity(store).await? {
        let theirs = following(store, theirs).await?;
        check_identity(store, &theirs, mine)?;
        return Ok(theirs);
    }
    match store.put_once(layout::IDENTITY, to_json(mine)).await {
        Ok(()) => Ok(mine.clone()),
        // Someone else claimed it at the same moment: check theirs.
        Err(Error::Conflict { .. }) => {
            let theirs = read_identity(store)
                .await?
                .ok_or_else(|| Error::ArchiveMismatch("the archive identity vanished".into()))?;
            let theirs = following(store, theirs).await?;
            check_identity(store, &theirs, mine)?;
            Ok(theirs)
        }
        Err(e) => Err(e),
    }
}

/// Refuses an archive that belongs to another database or slot.
pub fn check_identity(store: &Store, theirs: &Identity, mine: &Identity) -> Result<(), Error> {
    if theirs.system_identifier != mine.system_identifier || theirs.database != mine.database {
        return Err(Error::ArchiveMismatch(format!(
            "the archive at {} belongs to database {:?} of cluster {}, not to database {:?} of cluster {}; \
             use another --archive for this database (or, if this is that database moved here by pg_upgrade \
             or a dump and restore, run `waly init --source-moved` against it to carry the archive on)",
            store.url(),
            theirs.database,
            theirs.system_identifier,
            mine.database,
            mine.system_identifier
        )));
    }
    if theirs.slot != mine.slot {
        return Err(Error::ArchiveMismatch(format!(
            "the archive at {} is fed by slot {:?}, not {:?}; use --slot {} or another --archive",
            store.url(),
            theirs.slot,
            mine.slot,
            theirs.slot
        )));
    }
    Ok(())
}

/// The generation ids, oldest first: the directories under `generations/`
/// (a generation's `generation.json` is its first object written and the
/// last one a prune deletes, so a directory there is a generation). One
/// delimited listing, however many segments the generations hold.
pub async fn generations(store: &Store) -> Result<Vec<String>, Error> {
    store.list_dirs("generations").await
}

/// Reads a generation's description.
pub async fn generation_info(store: &Store, gen: &str) -> Result<GenerationInfo, Error> {
    let key = layout::generation_meta(gen);
    parse_json(&key, &store.get(&key).await?)
}

/// A segment object as listed, with the fencing token that applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentObject {
    /// Its key.
    pub key: String,
    /// Its number.
    pub number: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The fencing token it was written under (from its name).
    pub fence: u64,
    /// The token of the lease in force at its position.
    pub in_force: u64,
}

impl SegmentObject {
    /// Written by the writer that held the lease: part of history.
    pub fn is_current(&self) -> bool {
        self.fence == self.in_force
    }
}

/// Every object named like a segment of `gen`, fenced or not, by number.
pub async fn segment_objects(store: &Store, gen: &str) -> Result<Vec<SegmentObject>, Error> {
    // Both listings at once.
    let (leases, listed) =
        futures_util::future::try_join(super::lease::list(store), store.list(&layout::segments_dir(gen))).await?;
    Ok(segments_under(gen, &leases, listed))
}

/// [`segment_objects`], with the archive's leases already listed.
pub async fn segment_objects_under(
    store: &Store,
    gen: &str,
    leases: &[super::lease::Lease],
) -> Result<Vec<SegmentObject>, Error> {
    Ok(segments_under(
        gen,
        leases,
        store.list(&layout::segments_dir(gen)).await?,
    ))
}

/// The objects `listed` under `gen`'s segments, with the lease in force at each.
fn segments_under(gen: &str, leases: &[super::lease::Lease], listed: Vec<(String, u64)>) -> Vec<SegmentObject> {
    let mut out = Vec::new();
    for (key, size) in listed {
        match layout::parse_segment_key(&key) {
            Some((number, _, _)) => out.push(SegmentObject {
                fence: layout::segment_fence(&key),
                in_force: super::lease::in_force(leases, gen, number),
                key,
                number,
                size,
            }),
            None => tracing::warn!(key, "ignoring an object that is not named like a segment"),
        }
    }
    out.sort_by_key(|s| (s.number, s.fence));
    out
}

/// The segments of `gen` as `(key, number, size)`, in chain order: those
/// written under the lease in force at their position. Uploads of a deposed
/// writer are left out (`waly verify` reports them).
pub async fn segments(store: &Store, gen: &str) -> Result<Vec<(String, u64, u64)>, Error> {
    Ok(segment_objects(store, gen)
        .await?
        .into_iter()
        .filter(|s| s.is_current())
        .map(|s| (s.key, s.number, s.size))
        .collect())
}

/// Where generation `gen`'s chain ends: the next number, the hash to chain
/// to, the last complete transaction and the durable position.
pub async fn load_tail(store: &Store, gen: &str) -> Result<Tail, Error> {
    let segs = segments(store, gen).await?;
    let mut tail = tail_from_headers(store, &segs).await?;
    if let Some((key, _, _)) = segs.last() {
        tail.prev_sha256 = Some(crate::segment::sha256_hex(&store.get(key).await?));
    }
    Ok(tail)
}

/// The tail of the chain `segs` without its hash. The last commit may be
/// further back when a large transaction spans the last segments: the
/// headers are read backwards until one names it.
async fn tail_from_headers(store: &Store, segs: &[(String, u64, u64)]) -> Result<Tail, Error> {
    let mut tail = Tail::default();
    if let Some((_, n, _)) = segs.last() {
        tail.next_number = n + 1;
        for (i, (key, _, size)) in segs.iter().rev().enumerate() {
            let (header, _) = crate::index::segment_header(store, key, *size).await?;
            if i == 0 {
                tail.time_high = crate::segment::TimeHigh::of(&header);
            }
            if tail.durable_lsn.is_none() {
                tail.durable_lsn = header.durable_lsn;
            }
            if let Some(c) = header.last_commit {
                tail.last_commit = Some(c);
                break;
            }
        }
    }
    Ok(tail)
}

/// Loads generation `gen` for reading: its tail (where its history ends, as
/// readers need it: the last complete transaction and the durable position,
/// from the last segments' headers, their first bytes only; no chain hash),
/// schema versions and snapshot manifests. A writer reads the full tail
/// with [`load_tail`] before it writes.
pub async fn load_generation(store: &Store, gen: &str) -> Result<GenState, Error> {
    load_generation_of(store, gen, Shapes::All).await
}

/// [`load_generation`], with the schema versions `shapes` says.
pub async fn load_generation_of(store: &Store, gen: &str, shapes: Shapes) -> Result<GenState, Error> {
    Ok(load_generation_listing(store, gen, shapes, |_| {}).await?.0)
}

/// [`load_generation_of`], also giving the segments it listed (for the
/// tail), and handing the snapshot manifests' keys to `listed` as soon as
/// they are listed: a reader that needs either listing too lists once.
pub async fn load_generation_listing(
    store: &Store,
    gen: &str,
    shapes: Shapes,
    listed: impl FnOnce(&[String]) + Send,
) -> Result<(GenState, Vec<(String, u64, u64)>), Error> {
    // At once: the tail, the schema versions and manifests, and whether the
    // archive is encrypted (which every read of data then asks).
    // A writer records a schema version, and a snapshot's manifest, before
    // any segment after it; but the state's listings begin with the
    // segments', so beside a live writer they may miss one recorded in
    // between that a listed segment needs. So, once the segments are
    // listed, the schema versions and manifests are listed again (while
    // the tail's headers are read: no wait unless one was missed), and
    // those missed are read.
    let chain = async {
        let segs = segments(store, gen).await?;
        let (tail, again) = futures_util::future::try_join(
            tail_from_headers(store, &segs),
            futures_util::future::try_join(schema_keys(store, gen), manifest_keys(store, gen)),
        )
        .await?;
        Ok::<_, Error>((segs, tail, again))
    };
    let ((segs, tail, (schemas_again, manifests_again)), mut st, _) = futures_util::future::try_join3(
        chain,
        load_generation_telling(store, gen, Tail::default(), shapes.clone(), listed),
        store.is_encrypted(),
    )
    .await?;
    st.tail = tail;
    let versions: Vec<String> = schemas_again
        .into_iter()
        .filter(|k| match (schema_key_table(k), schema_key_version(k)) {
            (Some(t), Some(v)) => shapes.wants(&t) && st.schemas.version(&t, v).is_none(),
            // A key whose name does not parse was read all the same.
            _ => false,
        })
        .collect();
    let manifests: Vec<String> = manifests_again
        .into_iter()
        .filter(|k| manifest_key_lsn(k).is_some_and(|lsn| !st.manifests.iter().any(|m| m.lsn == lsn)))
        .collect();
    let missed = !versions.is_empty() || !manifests.is_empty();
    if missed {
        let (versions, manifests) = futures_util::future::try_join(
            read_schema_keys(store, versions, &shapes),
            read_all::<Manifest>(store, manifests),
        )
        .await?;
        for rec in versions {
            st.schemas.insert(rec);
        }
        st.manifests.extend(manifests);
        st.index_snapshots();
    }
    Ok((st, segs))
}

/// The keys of `gen`'s schema version objects.
pub async fn schema_keys(store: &Store, gen: &str) -> Result<Vec<String>, Error> {
    Ok(store
        .list(&layout::schemas_dir(gen))
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// The table (`schema.name`) whose version schema object `key` holds, by
/// its name.
pub fn schema_key_table(key: &str) -> Option<String> {
    let mut parts = key.rsplit('/');
    parts.next()?;
    let (schema, name) = layout::parse_table_segment(parts.next()?)?;
    Some(format!("{schema}.{name}"))
}

/// The version number schema object `key` holds, by its name.
fn schema_key_version(key: &str) -> Option<u32> {
    key.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
}

/// The LSN of the snapshot whose manifest is `key`, by its name.
fn manifest_key_lsn(key: &str) -> Option<Lsn> {
    let dir = key.strip_suffix("/manifest.json")?.rsplit('/').next()?;
    u64::from_str_radix(dir, 16).ok().map(Lsn)
}

/// Every object under `gen`'s snapshot directories (`(key, size)`), by the
/// LSN the directory is named by, in one listing.
pub async fn snapshot_dirs(store: &Store, gen: &str) -> Result<BTreeMap<Lsn, Vec<(String, u64)>>, Error> {
    let dir = format!("{}/snapshots/", layout::generation_dir(gen));
    let mut dirs: BTreeMap<Lsn, Vec<(String, u64)>> = BTreeMap::new();
    for (key, size) in store.list(dir.trim_end_matches('/')).await? {
        let lsn = key
            .strip_prefix(&dir)
            .and_then(|rest| rest.split('/').next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        if let Some(lsn) = lsn {
            dirs.entry(Lsn(lsn)).or_default().push((key, size));
        }
    }
    Ok(dirs)
}

/// The tables (`schema.table`) whose parts are among `keys` (objects of
/// one snapshot's directory).
pub fn snapshot_part_tables<'a>(keys: impl Iterator<Item = &'a str>) -> std::collections::BTreeSet<String> {
    keys.filter_map(|k| match k.split('/').collect::<Vec<_>>().as_slice() {
        ["generations", _, "snapshots", _, table, _] => {
            layout::parse_table_segment(table).map(|(s, n)| format!("{s}.{n}"))
        }
        _ => None,
    })
    .collect()
}

/// The keys of `gen`'s snapshot manifests: not one beside a prune's
/// `abandoned.json` (a writer that was interrupted, then finished the
/// snapshot after a prune deleted its parts, wrote it).
pub async fn manifest_keys(store: &Store, gen: &str) -> Result<Vec<String>, Error> {
    let listed = store
        .list(&format!("{}/snapshots", layout::generation_dir(gen)))
        .await?;
    let abandoned: std::collections::BTreeSet<&str> = listed
        .iter()
        .filter_map(|(k, _)| k.strip_suffix("/abandoned.json"))
        .collect();
    Ok(listed
        .iter()
        .filter_map(|(k, _)| k.strip_suffix("/manifest.json").map(|dir| (k, dir)))
        .filter(|(_, dir)| !abandoned.contains(dir))
        .map(|(k, _)| k.clone())
        .collect())
}

/// Reads and parses the JSON objects `keys`, a few at a time, in order.
async fn read_all<T: serde::de::DeserializeOwned>(store: &Store, keys: Vec<String>) -> Result<Vec<T>, Error> {
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(keys)
        .map(|key| async move { parse_json::<T>(&key, &store.get(&key).await?) })
        .buffered(16)
        .try_collect()
        .await
}

/// Which schema versions a load needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shapes {
    /// Every one, opened (an unreadable one is an error).
    All,
    /// Those that open: `waly verify` and `waly status`, which need no key
    /// (verify reports the others).
    WhatOpens,
    /// Those of one table (`schema.name`), opened: for `history`,
    /// `restore`, `show` and `log --table`, which read one table (records
    /// of others are read without their key).
    Table(String),
}

impl Shapes {
    /// Whether the versions of `table` are wanted.
    fn wants(&self, table: &str) -> bool {
        match self {
            Shapes::Table(t) => t == table,
            Shapes::All | Shapes::WhatOpens => true,
        }
    }
}

/// The schema versions of `gen`, read and opened, a few at a time.
async fn read_schemas(store: &Store, gen: &str, shapes: &Shapes) -> Result<Vec<SchemaRecord>, Error> {
    let mut keys = schema_keys(store, gen).await?;
    // A key whose name does not parse is read all the same.
    keys.retain(|k| schema_key_table(k).is_none_or(|t| shapes.wants(&t)));
    read_schema_keys(store, keys, shapes).await
}

/// The schema version objects `keys`, read and opened, a few at a time
/// (those that do not open left out, when `shapes` says so).
async fn read_schema_keys(store: &Store, keys: Vec<String>, shapes: &Shapes) -> Result<Vec<SchemaRecord>, Error> {
    use futures_util::{StreamExt, TryStreamExt};
    let may_skip = *shapes == Shapes::WhatOpens;
    let read: Vec<Option<SchemaRecord>> = futures_util::stream::iter(keys)
        .map(|key| async move {
            match store.read_schema(&key, store.get(&key).await?, may_skip).await {
                Err(Error::Corrupt { .. }) if may_skip => Ok(None),
                other => other,
            }
        })
        .buffered(16)
        .try_collect()
        .await?;
    Ok(read.into_iter().flatten().collect())
}

/// [`load_generation`] with its tail already known (or, for `waly verify`,
/// left empty when the last segments cannot be read: verify reports them).
pub async fn load_generation_with(store: &Store, gen: &str, tail: Tail, shapes: Shapes) -> Result<GenState, Error> {
    load_generation_telling(store, gen, tail, shapes, |_| {}).await
}

/// [`load_generation_with`], handing the snapshot manifests' keys to
/// `listed` as soon as they are listed (a reader that needs the listing too
/// then lists once).
pub async fn load_generation_telling(
    store: &Store,
    gen: &str,
    tail: Tail,
    shapes: Shapes,
    listed: impl FnOnce(&[String]) + Send,
) -> Result<GenState, Error> {
    let mut st = GenState {
        id: gen.to_string(),
        tail,
        ..Default::default()
    };
    if let Shapes::Table(table) = &shapes {
        st.schemas = crate::schema::Schemas::of_table(table);
    }
    let (schemas, manifests) = futures_util::future::try_join(read_schemas(store, gen, &shapes), async {
        let keys = manifest_keys(store, gen).await?;
        listed(&keys);
        read_all::<Manifest>(store, keys).await
    })
    .await?;
    for rec in schemas {
        st.schemas.insert(rec);
    }
    st.manifests = manifests;
    st.index_snapshots();
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::stream::BoxStream;
    use futures_util::{StreamExt, TryStreamExt};
    use object_store::path::Path;
    use object_store::{
        GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
        PutPayload, PutResult, Result as OsResult,
    };
    use std::sync::Arc;

    #[test]
    fn the_wal_file_named_for_pg_resetwal_starts_past_the_lsn() {
        // 16 MiB segments: 0/400D048 is in segment 4; the name is two past it.
        assert_eq!(
            wal_file_past("0/400D048".parse().expect("lsn")),
            "000000010000000000000006"
        );
        // 256 segments per log id: 1/FF000000 is segment 0x1FF.
        assert_eq!(
            wal_file_past("1/FF000000".parse().expect("lsn")),
            "000000010000000200000001"
        );
    }

    fn manifest(lsn: u64, tables: &[&str]) -> Manifest {
        Manifest {
            waly_snapshot: 1,
            generation: "00000001".into(),
            lsn: Lsn(lsn),
            taken_at: DateTime::<Utc>::default(),
            compacted_at: None,
            tables: tables
                .iter()
                .map(|t| ManifestTable {
                    table: t.to_string(),
                    schema_version: 1,
                    rows: 0,
                    parts: Vec::new(),
                })
                .collect(),
        }
    }

    fn version(table: &str, version: u32, lsn: u64, dropped: bool) -> SchemaRecord {
        SchemaRecord {
            table: table.into(),
            version,
            commit_lsn: Lsn(lsn),
            dropped,
            ..SchemaRecord::default()
        }
    }

    #[test]
    fn a_tables_history_goes_on_from_the_snapshot_after_it_ended_and_only_then() {
        let mut st = GenState {
            manifests: vec![manifest(100, &["t", "u"]), manifest(200, &["t"])],
            ..GenState::default()
        };
        st.schemas.insert(version("t", 1, 100, false));
        st.schemas.insert(version("u", 1, 100, false));
        // t: a later snapshot (after a DDL) at 200 does not move where its
        // changes are archived from; its history ends at 300 (it left the
        // publication) and starts again from the snapshot at 400.
        assert_eq!(st.archived_from("t"), Some(Lsn(100)));
        st.schemas.insert(version("t", 2, 300, true));
        assert!(st.history_ended("t") && !st.history_ended("u"));
        assert_eq!(st.archived_from("t"), Some(Lsn(100)));
        st.manifests.push(manifest(400, &["t"]));
        st.schemas.insert(version("t", 3, 400, false));
        assert_eq!(st.archived_from("t"), Some(Lsn(400)));
        assert!(!st.history_ended("t"));
        // Ended again at the snapshot's own LSN: no snapshot since.
        st.schemas.insert(version("t", 4, 400, true));
        assert!(st.history_ended("t"));
        assert_eq!(st.archived_from("t"), Some(Lsn(400)));
        assert_eq!(st.archived_from("u"), Some(Lsn(100)));
        assert_eq!(st.archived_from("never"), None);
        assert!(!st.history_ended("never"));
    }

    /// An object store whose listing of a generation's segments first
    /// waits until its schema versions and snapshots were listed, then
    /// writes `later` (what a writer recorded meanwhile): a reader's
    /// listings overtaken by a live writer's, every time.
    #[derive(Debug)]
    struct Overtaken {
        inner: Arc<dyn ObjectStore>,
        later: Arc<std::sync::Mutex<Vec<(Path, Bytes)>>>,
        listed: Arc<tokio::sync::Semaphore>,
    }

    impl std::fmt::Display for Overtaken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "overtaken {}", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Overtaken {
        async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> OsResult<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> OsResult<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> OsResult<GetResult> {
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &Path) -> OsResult<()> {
            self.inner.delete(location).await
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, OsResult<ObjectMeta>> {
            let (inner, later, listed) = (self.inner.clone(), self.later.clone(), self.listed.clone());
            let prefix = prefix.cloned();
            let dir = prefix.as_ref().map(|p| p.to_string()).unwrap_or_default();
            futures_util::stream::once(async move {
                if dir.ends_with("/segments") {
                    // The first listings of schema versions and snapshots.
                    if let Ok(permits) = listed.acquire_many(2).await {
                        permits.forget();
                    }
                    let staged = std::mem::take(&mut *later.lock().expect("lock"));
                    for (key, bytes) in staged {
                        inner.put(&key, bytes.into()).await?;
                    }
                }
                let found: Vec<ObjectMeta> = inner.list(prefix.as_ref()).try_collect().await?;
                if dir.ends_with("/schemas") || dir.ends_with("/snapshots") {
                    listed.add_permits(1);
                }
                Ok::<_, object_store::Error>(futures_util::stream::iter(found.into_iter().map(Ok)))
            })
            .try_flatten()
            .boxed()
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> OsResult<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &Path, to: &Path) -> OsResult<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> OsResult<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    #[tokio::test]
    async fn a_reader_beside_a_writer_knows_every_schema_version_and_snapshot_its_segments_may_need() {
        // A generation written, then a writer's next schema version and
        // snapshot recorded while a reader lists it: after the reader's
        // listings of versions and snapshots began, before its listing of
        // the segments (whose next ones may need them).
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let plain = Store::from_object_store(inner.clone(), "archive");
        crate::synth::generate(
            &plain,
            &crate::synth::SynthOptions {
                events: 300,
                weights: vec![1],
                rows: vec![20],
                skew: 0.0,
                row_bytes: 16,
                txn_changes: 5,
                segment_bytes: 4096,
                start: Utc::now(),
                txn_interval: chrono::Duration::milliseconds(1),
                seed: 7,
                crash_at: None,
                orphan_at_end: false,
                intent_every: None,
                clock_back: None,
            },
        )
        .await
        .expect("synth");
        let gen = generations(&plain).await.expect("generations")[0].clone();
        let first = load_generation(&plain, &gen).await.expect("load");
        let key = schema_keys(&plain, &gen).await.expect("schemas")[0].clone();
        let mut next: SchemaRecord = parse_json(&key, &plain.get(&key).await.expect("version")).expect("json");
        next.version += 1;
        next.commit_lsn = Lsn(first.durable_position().as_u64() + 1);
        let table_seg = key.rsplit('/').nth(1).expect("table").to_string();
        let mkey = manifest_keys(&plain, &gen).await.expect("manifests")[0].clone();
        let mut snapshot: Manifest = parse_json(&mkey, &plain.get(&mkey).await.expect("manifest")).expect("json");
        snapshot.lsn = next.commit_lsn;
        let later = vec![
            (
                Path::from(format!(
                    "archive/{}",
                    layout::schema_key(&gen, &table_seg, next.version)
                )),
                to_json(&next),
            ),
            (
                Path::from(format!("archive/{}", layout::snapshot_manifest(&gen, snapshot.lsn))),
                to_json(&snapshot),
            ),
        ];
        let overtaken = Store::from_object_store(
            Arc::new(Overtaken {
                inner,
                later: Arc::new(std::sync::Mutex::new(later)),
                listed: Arc::new(tokio::sync::Semaphore::new(0)),
            }),
            "archive",
        );
        let (st, _) = load_generation_listing(&overtaken, &gen, Shapes::All, |_| {})
            .await
            .expect("load");
        assert!(
            st.schemas.version(&next.table, next.version).is_some(),
            "{} version {} is not known",
            next.table,
            next.version
        );
        assert_eq!(
            st.manifests.iter().map(|m| m.lsn).collect::<Vec<_>>(),
            vec![first.manifests[0].lsn, snapshot.lsn]
        );
    }
}
