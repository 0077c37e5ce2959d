//! `waly verify`: proves the archive whole and untouched, or names what is not.
//!
//! For each generation: every segment decompresses with its zstd checksums
//! and holds the records its header promises; segment numbers run from 0
//! without holes; each header matches its object key and generation; each
//! segment carries the SHA-256 of the one before it; commit LSNs never go
//! backwards; every transaction has its commit marker (a trailing or
//! abandoned partial one is harmless and said so); every snapshot has its
//! manifest and every part the manifest lists, with its SHA-256; index
//! objects (derived data) cover only segments that exist.

use crate::archive::fetching::FetchAhead;
use crate::archive::{layout, state, Store};
use crate::segment::{sha256_hex, Record, SegmentHeader, SegmentReader, TimeHigh};
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What is wrong with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An object that should be there is not.
    Missing,
    /// An object's bytes are not what was written.
    Altered,
    /// Objects are out of their order.
    Reordered,
    /// An object that was never part of the chain.
    Inserted,
    /// An object cut short.
    Truncated,
    /// A transaction without its commit marker (harmless: it never counted).
    OrphanPartial,
    /// A snapshot whose manifest was never written, made obsolete by a later one (harmless).
    AbandonedSnapshot,
    /// An index object that does not match the segments (harmless: derived; `waly reindex`).
    StaleIndex,
    /// A segment uploaded by a writer after it lost its lease (harmless:
    /// readers ignore it; the writer that took over archived that history).
    Fenced,
    /// A restored table differs from the live one (`--against-source`).
    Differs,
    /// Plaintext where an encrypted archive holds only ciphertext (never
    /// read as history).
    Plaintext,
    /// A restored table differs from the live one because the archive has
    /// not caught up with the source (`--against-source`; `waly run` is
    /// stopped or behind): not a fault of the archive, but nothing proven.
    Behind,
}

/// One problem, by object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The object's key (or, for a missing segment, its number's place).
    pub object: String,
    /// What is wrong.
    pub kind: Kind,
    /// Details.
    pub detail: String,
    /// Whether it leaves history intact.
    pub harmless: bool,
}

/// What `verify` saw.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Generations checked.
    pub generations: u64,
    /// Segments checked.
    pub segments: u64,
    /// Snapshots checked.
    pub snapshots: u64,
    /// Problems, in the order found.
    pub problems: Vec<Problem>,
    /// Tables `--against-source` found equal to the live ones.
    pub compared: Vec<Compared>,
    /// Whether the archive is encrypted.
    pub encrypted: bool,
    /// Whether every record was decrypted and read (false: an encrypted
    /// archive checked without its key: structure, sealing and hashes only).
    pub records_checked: bool,
}

/// A table the restore drill compared and found equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Compared {
    /// `schema.table`.
    pub table: String,
    /// Rows in both.
    pub rows: u64,
    /// Columns compared.
    pub columns: usize,
    /// The archive's point the restore was taken at.
    pub lsn: Lsn,
}

impl Report {
    fn add(&mut self, object: impl Into<String>, kind: Kind, detail: impl Into<String>) {
        let harmless = matches!(
            kind,
            Kind::OrphanPartial | Kind::AbandonedSnapshot | Kind::StaleIndex | Kind::Fenced
        );
        self.problems.push(Problem {
            object: object.into(),
            kind,
            detail: detail.into(),
            harmless,
        });
    }

    /// Whether anything harmful was found.
    pub fn clean(&self) -> bool {
        self.problems.iter().all(|p| p.harmless)
    }
}

/// Walks the whole archive.
pub async fn verify(store: &Store) -> Result<Report, Error> {
    let mut report = Report::default();
    let Some(identity) = state::read_identity(store).await? else {
        return Err(Error::ArchiveMismatch(format!(
            "{} is not a waly archive (no waly.json); check --archive",
            store.url()
        )));
    };
    source_moves(store, &identity, &mut report).await?;
    report.encrypted = store.is_encrypted().await?;
    report.records_checked = !report.encrypted || store.crypt().has_source();
    let leases = crate::archive::lease::list(store).await?;
    if report.encrypted {
        sealed_blobs(store, &mut report).await?;
    }
    for gen in state::generations(store).await? {
        report.generations += 1;
        // A damaged last segment is one of the problems verify reports
        // (reading every segment below), not a reason to stop.
        let tail = match state::load_tail(store, &gen).await {
            Err(Error::Corrupt { .. }) => state::Tail::default(),
            other => other?,
        };
        // The segments listed before the schema versions and manifests: a
        // live writer records those before the segments that need them.
        let objects = state::segment_objects_under(store, &gen, &leases).await?;
        let st = state::load_generation_with(store, &gen, tail, state::Shapes::WhatOpens).await?;
        // The stored catalog, checked by folding the segments it names as they are read.
        let chain: Vec<(String, u64, u64)> = objects
            .iter()
            .filter(|s| s.is_current())
            .map(|s| (s.key.clone(), s.number, s.size))
            .collect();
        // A sealed catalog is read with the key only.
        let stored = match report.records_checked {
            true => crate::catalog::load(store, &gen).await,
            false => None,
        };
        let mut refold = match &stored {
            Some(c) => match c.fits(&chain) {
                Ok(()) => Some((crate::catalog::Catalog::new(&gen), c.segments())),
                Err(why) => {
                    let detail = format!("the catalog does not fit the segments: {why}; `waly tables` reads the segments until `waly reindex`");
                    report.add(crate::catalog::key(&gen), Kind::StaleIndex, detail);
                    None
                }
            },
            None => None,
        };
        segments(store, &gen, &st, &objects, &leases, &mut report, &mut refold).await?;
        if let (Some(c), Some((r, _))) = (&stored, &refold) {
            if r.segments() == c.segments() {
                if let Some(why) = c.differs_from(r) {
                    let detail = format!("the catalog's counts are not the segments': {why}; `waly tables` shows them until `waly reindex`");
                    report.add(crate::catalog::key(&gen), Kind::StaleIndex, detail);
                }
            }
        }
        snapshots(store, &gen, &st, &mut report).await?;
        indexes(store, &gen, &objects, &mut report).await?;
        schema_objects(store, &gen, &mut report).await?;
    }
    for why in crate::index::tails_faults(store).await? {
        report.add(
            crate::index::TAILS_KEY,
            Kind::StaleIndex,
            format!("{why}; readers open those index objects themselves instead; `waly reindex` rewrites it"),
        );
    }
    Ok(report)
}

async fn segments(
    store: &Store,
    gen: &str,
    st: &state::GenState,
    objects: &[state::SegmentObject],
    leases: &[crate::archive::lease::Lease],
    report: &mut Report,
    refold: &mut Option<(crate::catalog::Catalog, u64)>,
) -> Result<(), Error> {
    // After `waly prune`, the chain starts later, from a recorded hash.
    let pruned = crate::prune::mark(store, gen).await?;
    let first = pruned.as_ref().map_or(0, |m| m.first_kept);
    let mut list = Vec::new();
    for s in objects.iter().cloned() {
        if s.number < first {
            continue; // left by a prune cut short; the next prune deletes it
        }
        if s.is_current() {
            list.push((s.key, s.number, s.size));
            continue;
        }
        report.segments += 1;
        // Written under a lease that a later one replaced at or before its
        // position: a deposed writer's late upload, if the token is real.
        let real = s.fence < s.in_force && leases.iter().any(|l| l.token == s.fence);
        let header_fence = crate::index::segment_header(store, &s.key, s.size)
            .await
            .ok()
            .map(|(h, _)| h.fence);
        if real && header_fence == Some(s.fence) {
            report.add(
                &s.key,
                Kind::Fenced,
                format!(
                    "written under fencing token {} after the lease with token {} took over; ignored by readers",
                    s.fence, s.in_force
                ),
            );
        } else {
            report.add(
                &s.key,
                Kind::Inserted,
                format!(
                    "it carries fencing token {}, but no such lease was in force at segment {}",
                    s.fence, s.number
                ),
            );
        }
    }
    // Several objects with one number: all but one were inserted.
    let mut by_number: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (key, n, _) in &list {
        by_number.entry(*n).or_default().push(key.clone());
    }
    let last = by_number.keys().next_back().copied();
    let mut txns = Txns::default();
    // Objects in chain order, read; their SHA-256.
    let mut read: Vec<(u64, String, Option<crate::segment::SegmentHeader>, String)> = Vec::new();
    // Fetched several at once ahead of the checking (see `FetchAhead`),
    // checked one at a time in order.
    let sizes: BTreeMap<&str, u64> = list.iter().map(|(k, _, size)| (k.as_str(), *size)).collect();
    let mut ahead = FetchAhead::default();
    // The greatest commit time of each segment read whole (its header's
    // commit-time mark must bound it).
    let mut latest: BTreeMap<String, Option<DateTime<Utc>>> = BTreeMap::new();
    let mut upcoming = by_number
        .values()
        .flatten()
        .map(|key| (sizes.get(key.as_str()).copied().unwrap_or(0), key.clone()))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(size, key)| {
            let store = store.clone();
            (size, async move { store.get(&key).await })
        })
        .peekable();
    for (n, keys) in &by_number {
        for key in keys {
            report.segments += 1;
            let bytes = match ahead.next_of(&mut upcoming).await {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    report.add(key, Kind::Missing, format!("cannot be read: {e}"));
                    continue;
                }
                None => break,
            };
            let sha = sha256_hex(&bytes);
            let header = match unseal(store, key, bytes, report).await? {
                Unsealed::Plain(bytes) => check_records(key, &bytes, st, report, &mut txns).map(|(h, t)| {
                    latest.insert(key.clone(), t);
                    (h, bytes)
                }),
                Unsealed::HeaderOnly(h) => Some((*h, bytes::Bytes::new())),
                Unsealed::Reported => None,
            };
            let Some((header, bytes)) = header else {
                read.push((*n, key.clone(), None, sha));
                continue;
            };
            if let Some((cat, _)) = refold
                .as_mut()
                .filter(|(c, upto)| c.segments() < *upto && !bytes.is_empty())
            {
                match crate::catalog::summarize(key, &bytes, &st.schemas) {
                    Ok((last_commit, s)) => cat.absorb(key, last_commit, &s),
                    Err(_) => *refold = None,
                }
            }
            let key_lsns = layout::parse_segment_key(key).map(|(_, a, b)| (a, b));
            if header.generation != gen || header.number != *n {
                report.add(
                    key,
                    Kind::Reordered,
                    format!(
                        "its header says it is segment {} of generation {}, its name segment {n} of {gen}",
                        header.number, header.generation
                    ),
                );
            } else if key_lsns != Some((header.first_lsn, header.last_lsn)) {
                report.add(key, Kind::Altered, "its header's LSN range differs from its name's");
            } else if header.fence != layout::segment_fence(key) {
                report.add(key, Kind::Altered, "its header's fencing token differs from its name's");
            }
            read.push((*n, key.clone(), Some(header), sha));
        }
    }
    // Holes.
    if let Some(last) = last {
        for n in first..=last {
            if !by_number.contains_key(&n) {
                report.add(
                    format!("{}/{n:010}-*", layout::segments_dir(gen)),
                    Kind::Missing,
                    format!("segment {n} of {} is not in the archive", last + 1),
                );
            }
        }
    }
    // The chain: each segment names the SHA-256 of the one before it.
    let shas: BTreeMap<String, String> = read.iter().map(|(_, k, _, s)| (s.clone(), k.clone())).collect();
    let mut prev: Option<&(u64, String, Option<crate::segment::SegmentHeader>, String)> = None;
    let mut prev_last: Option<Lsn> = None;
    for item in &read {
        let (n, key, header, _) = item;
        let Some(h) = header else {
            prev = Some(item);
            continue;
        };
        if by_number.get(n).is_some_and(|ks| ks.len() > 1) {
            // Of several objects with this number, the one that chains is the real one.
            let chains = match (prev, &h.prev_sha256) {
                (Some(p), Some(want)) => &p.3 == want,
                (None, None) => true,
                _ => false,
            };
            if !chains {
                report.add(key, Kind::Inserted, format!("a second segment {n} that does not chain"));
                continue;
            }
        }
        match (&h.prev_sha256, prev) {
            (None, None) => {}
            (Some(want), Some(p)) if p.0 + 1 == *n && &p.3 != want => {
                match shas.get(want) {
                    // It chains, but to another object: the order was changed.
                    Some(other) if other != &p.1 => report.add(
                        key,
                        Kind::Reordered,
                        format!("it follows {other} in the chain, but sits after {}", p.1),
                    ),
                    _ if Some(*n) == last && p.2.is_some() => {
                        report.add(key, Kind::Inserted, "it does not chain to the segment before it")
                    }
                    _ => report.add(
                        &p.1,
                        Kind::Altered,
                        format!("its SHA-256 is not the one segment {n} recorded for it"),
                    ),
                }
            }
            (None, Some(_)) => report.add(key, Kind::Inserted, "it claims to be the first segment"),
            (want, None) if *n == first && first > 0 && pruned.as_ref().map(|m| &m.prev_sha256) != Some(want) => report
                .add(
                    key,
                    Kind::Altered,
                    "it does not continue the chain from where the prune left it",
                ),
            (Some(_), None) if *n == 0 => report.add(key, Kind::Altered, "segment 0 names a previous segment"),
            _ => {}
        }
        // The chain's mark before it: known at the chain's start, and after
        // the segment before it that read.
        let before = match prev {
            _ if *n == 0 => Some(TimeHigh::Empty),
            Some((pn, _, Some(ph), _)) if pn + 1 == *n => Some(TimeHigh::of(ph)),
            _ => None,
        };
        if let Some(fault) = time_high_fault(before, h, latest.get(key).copied()) {
            report.add(key, Kind::Altered, fault);
        }
        if let Some(pl) = prev_last {
            if h.records > 0 && h.first_lsn < pl {
                report.add(
                    key,
                    Kind::Reordered,
                    format!(
                        "it starts at commit LSN {} but the segment before ends at {pl}",
                        h.first_lsn
                    ),
                );
            }
        }
        if h.records > 0 {
            prev_last = Some(h.last_lsn);
        }
        prev = Some(item);
    }
    // Transactions without their commit marker. One seen again after its
    // commit (a replay after a crash, cut short by another) is looked for
    // in the segments whose commit-LSN range holds it.
    for (lsn, key) in txns.open {
        if !committed_in(store, st, &read, lsn).await {
            report.add(
                key,
                Kind::OrphanPartial,
                format!("transaction {lsn} has no commit marker: written before a crash, it never counted"),
            );
        }
    }
    Ok(())
}

/// What is wrong with the commit-time mark of the segment with `header`
/// ([`SegmentHeader::commit_time_high`]), given the chain's mark before it
/// (`None`: not known here: the first segment a prune kept, or one after a
/// segment that did not read) and its records' greatest commit time
/// (`None`: not read, an encrypted segment checked without its key; then its
/// header's first and last commit times stand for its records). A missing
/// mark is never wrong (a writer of an earlier release); one that is there
/// must bound the segment's records, and be what its writer computed: the
/// mark before it carried on over them.
fn time_high_fault(
    before: Option<TimeHigh>,
    header: &SegmentHeader,
    latest: Option<Option<DateTime<Utc>>>,
) -> Option<String> {
    let mark = TimeHigh::of(header);
    if mark == TimeHigh::Unknown {
        return None;
    }
    let own = latest.unwrap_or(header.first_commit_time.max(header.last_commit_time));
    let beyond = |t: &DateTime<Utc>| match mark {
        TimeHigh::At(h) => *t > h,
        TimeHigh::Empty => true,
        TimeHigh::Unknown => false,
    };
    if let Some(t) = own.filter(beyond) {
        return Some(format!(
            "a record committed at {t}, after its header's commit-time mark ({})",
            describe(mark)
        ));
    }
    let before = before?;
    let want = match latest {
        Some(latest) => before.then(latest),
        // Not read: the mark must not fall below the chain's, nor appear
        // where the chain's was not known.
        None => match (before, mark) {
            (TimeHigh::Unknown, _) => TimeHigh::Unknown,
            (TimeHigh::At(b), TimeHigh::At(h)) if h < b => before,
            _ => mark,
        },
    };
    (want != mark).then(|| {
        format!(
            "its header's commit-time mark is {}, but the chain's through it is {}",
            describe(mark),
            describe(want)
        )
    })
}

/// A commit-time mark, in words.
fn describe(mark: TimeHigh) -> String {
    match mark {
        TimeHigh::At(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        TimeHigh::Empty => "null (no record so far)".into(),
        TimeHigh::Unknown => "absent".into(),
    }
}

/// The transactions seen in a generation's segments without their commit
/// marker so far, and where each first appeared. A transaction leaves it at
/// its commit, so it holds a few at a time (one that spans segments, one a
/// crash cut short) however many the generation has: verify's memory does
/// not grow with the archive.
#[derive(Debug, Default)]
struct Txns {
    open: BTreeMap<Lsn, String>,
}

/// Whether one of the segments `read` (those whose commit-LSN range holds
/// `lsn`) has the commit marker of transaction `lsn`. A segment that does
/// not read is reported already: it says no.
async fn committed_in(
    store: &Store,
    st: &state::GenState,
    read: &[(u64, String, Option<crate::segment::SegmentHeader>, String)],
    lsn: Lsn,
) -> bool {
    for (_, key, header, _) in read {
        if !header.as_ref().is_some_and(|h| h.first_lsn <= lsn && lsn <= h.last_lsn) {
            continue;
        }
        let Ok(bytes) = store.get_segment(key).await else {
            continue;
        };
        let Ok(mut r) = SegmentReader::open(key, &bytes) else {
            continue;
        };
        while let Ok(Some(rec)) = r.next_record(&st.schemas) {
            if matches!(rec, Record::Commit(c) if c.commit_lsn == lsn) {
                return true;
            }
        }
    }
    false
}

/// A segment as verify reads it.
enum Unsealed {
    /// Its frames in plaintext (a plaintext archive's, or decrypted).
    Plain(bytes::Bytes),
    /// An encrypted segment checked without the key: its header.
    HeaderOnly(Box<crate::segment::SegmentHeader>),
    /// A problem, reported.
    Reported,
}

/// Checks an encrypted segment's sealing without the key (every record
/// frame sealed under the header's data key, the body's SHA-256, the data
/// key in the archive), then decrypts it when a key was given (every
/// authentication tag). A plaintext archive's segment passes as it is.
async fn unseal(store: &Store, key: &str, bytes: bytes::Bytes, report: &mut Report) -> Result<Unsealed, Error> {
    if !report.encrypted {
        return Ok(match store.open_segment(key, bytes).await {
            Ok(b) => Unsealed::Plain(b),
            Err(e) => {
                report.add(key, Kind::Altered, e.to_string());
                Unsealed::Reported
            }
        });
    }
    let head = zstd::zstd_safe::find_frame_compressed_size(&bytes).unwrap_or(bytes.len());
    let header = match SegmentReader::open(key, &bytes[..head.min(bytes.len())]) {
        Ok(r) => r.header,
        Err(e) => {
            report.add(key, Kind::Altered, e.to_string());
            return Ok(Unsealed::Reported);
        }
    };
    let body = &bytes[head..];
    let Some(id) = header.key_id.clone() else {
        if body.is_empty() {
            return Ok(Unsealed::Plain(bytes));
        }
        report.add(
            key,
            Kind::Plaintext,
            "a plaintext segment in an encrypted archive: readers refuse it",
        );
        return Ok(Unsealed::Reported);
    };
    if header.body_sha256.as_deref() != Some(&sha256_hex(body)) {
        report.add(
            key,
            Kind::Altered,
            "its ciphertext changed: the SHA-256 of its frames differs from its header's",
        );
        return Ok(Unsealed::Reported);
    }
    match crate::crypt::frame::walk(key, body) {
        Ok(frames) if frames.len() == header.frames.len() && frames.iter().all(|f| f.2.as_ref() == Some(&id)) => {}
        Ok(_) => {
            report.add(
                key,
                Kind::Altered,
                format!("its frames are not all sealed under data key {id}"),
            );
            return Ok(Unsealed::Reported);
        }
        Err(e) => {
            report.add(key, Kind::Altered, e.to_string());
            return Ok(Unsealed::Reported);
        }
    }
    if !header.frames.is_empty() && crate::crypt::keys::wrappings(store, &id).await?.is_empty() {
        report.add(
            key,
            Kind::Missing,
            format!("its data key {id} is not in the archive (keys/data/{id}/)"),
        );
        return Ok(Unsealed::Reported);
    }
    if !report.records_checked {
        return Ok(Unsealed::HeaderOnly(Box::new(header)));
    }
    match store.open_segment(key, bytes).await {
        Ok(b) => Ok(Unsealed::Plain(b)),
        Err(e @ Error::Encryption(_)) => Err(e),
        Err(e) => {
            report.add(key, Kind::Altered, e.to_string());
            Ok(Unsealed::Reported)
        }
    }
}

/// An encrypted archive's snapshot part: every frame sealed; with the key,
/// every frame decrypts and decompresses.
async fn check_sealed_part(store: &Store, key: &str, bytes: bytes::Bytes, report: &mut Report) -> Result<(), Error> {
    match crate::crypt::frame::walk(key, &bytes) {
        Ok(frames) if frames.iter().all(|f| f.2.is_some()) => {}
        Ok(_) => {
            report.add(
                key,
                Kind::Plaintext,
                "a snapshot part with plaintext frames in an encrypted archive",
            );
            return Ok(());
        }
        Err(e) => {
            report.add(key, Kind::Altered, e.to_string());
            return Ok(());
        }
    }
    if !report.records_checked {
        return Ok(());
    }
    let opened = match store.open_frames(key, bytes).await {
        Ok(b) => b,
        Err(e @ Error::Encryption(_)) => return Err(e),
        Err(e) => {
            report.add(key, Kind::Altered, e.to_string());
            return Ok(());
        }
    };
    if let Err(e) = zstd::decode_all(&opened[..]) {
        report.add(key, Kind::Altered, format!("a frame does not decompress: {e}"));
    }
    Ok(())
}

/// The source moves: each one reads, numbered from 1 with none missing,
/// and moves from where the one before it moved to (the first, from
/// `waly.json`'s database).
async fn source_moves(store: &Store, identity: &state::Identity, report: &mut Report) -> Result<(), Error> {
    let mut at = identity.source();
    let mut next = 1;
    for (n, key) in state::source_move_keys(store).await? {
        for gone in next..n {
            report.add(
                layout::source_move_key(gone),
                Kind::Missing,
                format!("source move {gone} is missing (the next one is {n})"),
            );
        }
        // After a gap, where the move before it went is unknown.
        let after_gap = n > next;
        next = n + 1;
        let m = match state::parse_json::<state::SourceMove>(&key, &store.get(&key).await?) {
            Ok(m) => m,
            Err(e) => {
                report.add(&key, Kind::Altered, e.to_string());
                continue;
            }
        };
        if m.number != n || (m.from != at && !after_gap) {
            report.add(
                &key,
                Kind::Altered,
                format!(
                    "it says move {} from {}, where move {n} from {at} belongs",
                    m.number, m.from
                ),
            );
        }
        at = m.to;
    }
    Ok(())
}

/// An encrypted archive's error records: each one sealed frame.
async fn sealed_blobs(store: &Store, report: &mut Report) -> Result<(), Error> {
    for (key, _) in store.list(layout::ERRORS_DIR).await? {
        let bytes = store.get(&key).await?;
        let sealed = matches!(crate::crypt::frame::next(&key, &bytes), Ok((n, Some(_))) if n == bytes.len());
        if !sealed {
            report.add(
                &key,
                Kind::Plaintext,
                "a plaintext error record in an encrypted archive",
            );
        } else if report.records_checked {
            match store.open_blob(&key, bytes).await {
                Ok(_) => {}
                Err(e @ Error::Encryption(_)) => return Err(e),
                Err(e) => report.add(&key, Kind::Altered, e.to_string()),
            }
        }
    }
    Ok(())
}

/// The schema versions (loading skips one it cannot read: it is named
/// here). In an encrypted archive of format 4 each is sealed whole (its
/// digest checked without a key; opened with one); in one of format 2 or 3,
/// with no statement text or literal in plaintext.
async fn schema_objects(store: &Store, gen: &str, report: &mut Report) -> Result<(), Error> {
    use crate::crypt::shapes::NotSealed;
    let (shapes, literals) = (store.seals_shapes().await?, store.seals_literals().await?);
    for key in state::schema_keys(store, gen).await? {
        let bytes = store.get(&key).await?;
        if !shapes {
            if report.encrypted {
                if let Some(what) = crate::crypt::schema::plaintext_in_schema(&bytes, literals) {
                    let detail = format!("a schema version with {what} in plaintext, in an encrypted archive");
                    report.add(&key, Kind::Plaintext, detail);
                }
            }
            if let Err(e) = state::parse_json::<crate::schema::SchemaRecord>(&key, &bytes) {
                report.add(&key, Kind::Altered, e.to_string());
            }
            continue;
        }
        match crate::crypt::shapes::sealed_schema(&key, &bytes) {
            Err(NotSealed::Plaintext(why)) => report.add(&key, Kind::Plaintext, why),
            Err(NotSealed::Damaged(why)) => report.add(&key, Kind::Altered, why),
            Ok(_) if report.records_checked => match store.read_schema(&key, bytes, false).await {
                Ok(_) => {}
                Err(e @ Error::Encryption(_)) => return Err(e),
                Err(e) => report.add(&key, Kind::Altered, e.to_string()),
            },
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Decompresses every record (checking zstd's checksums and the count);
/// returns the header, or reports the object. The transactions of a segment
/// that reads whole are added to `txns`.
fn check_records(
    key: &str,
    bytes: &[u8],
    st: &state::GenState,
    report: &mut Report,
    txns: &mut Txns,
) -> Option<(SegmentHeader, Option<DateTime<Utc>>)> {
    // The greatest commit time of its records.
    let mut latest: Option<DateTime<Utc>> = None;
    // Applied once the segment reads whole: the transactions it opens, then
    // those it commits (a transaction's records come before its commit).
    let mut opened: BTreeMap<Lsn, String> = BTreeMap::new();
    let mut committed: Vec<Lsn> = Vec::new();
    let mut r = match SegmentReader::open(key, bytes) {
        Ok(r) => r,
        Err(e) => {
            report.add(key, Kind::Altered, e.to_string());
            return None;
        }
    };
    // Readers that want commits after (or before) an LSN leave unread the
    // segments whose name's range lies outside it: the records must lie in
    // that range (the name's is the header's, checked by the caller), in
    // commit order.
    let (first, last) = (r.header.first_lsn, r.header.last_lsn);
    let mut prev: Option<Lsn> = None;
    loop {
        let rec = r.next_record(&st.schemas);
        if let Ok(Some(lsn)) = rec.as_ref().map(|r| r.as_ref().map(Record::commit_lsn)) {
            if lsn < first || lsn > last {
                report.add(
                    key,
                    Kind::Altered,
                    format!("a record of commit LSN {lsn} lies outside the segment's range {first}..{last}"),
                );
                return None;
            }
            if prev.is_some_and(|p| lsn < p) {
                report.add(
                    key,
                    Kind::Reordered,
                    format!("a record of commit LSN {lsn} follows one of a later commit"),
                );
                return None;
            }
            prev = Some(lsn);
        }
        match rec {
            Ok(Some(Record::Commit(c))) => {
                latest = latest.max(Some(c.commit_time));
                committed.push(c.commit_lsn);
            }
            Ok(Some(rec)) => {
                if let Some(((lsn, _), t)) = rec.identity() {
                    latest = latest.max(Some(t));
                    opened.entry(lsn).or_insert_with(|| key.to_string());
                }
            }
            Ok(None) => {
                for (lsn, k) in opened {
                    txns.open.entry(lsn).or_insert(k);
                }
                for lsn in committed {
                    txns.open.remove(&lsn);
                }
                return Some((r.header.clone(), latest));
            }
            Err(e) => {
                let text = e.to_string();
                let kind = if text.contains("truncated") || text.contains("incomplete") {
                    Kind::Truncated
                } else {
                    Kind::Altered
                };
                report.add(key, kind, text);
                return None;
            }
        }
    }
}

async fn snapshots(store: &Store, gen: &str, st: &state::GenState, report: &mut Report) -> Result<(), Error> {
    for (lsn, listed) in state::snapshot_dirs(store, gen).await? {
        report.snapshots += 1;
        let keys: Vec<String> = listed.into_iter().map(|(k, _)| k).collect();
        let manifest_key = layout::snapshot_manifest(gen, lsn);
        if let Some(m) = st.manifests.iter().find(|m| m.lsn == lsn) {
            for t in &m.tables {
                for p in &t.parts {
                    match store.get_opt(&p.key).await? {
                        None => report.add(&p.key, Kind::Missing, "a part the manifest lists is not there"),
                        Some(b) if sha256_hex(&b) != p.sha256 => {
                            report.add(&p.key, Kind::Altered, "its SHA-256 differs from the manifest's")
                        }
                        Some(b) if report.encrypted => check_sealed_part(store, &p.key, b, report).await?,
                        Some(_) => {}
                    }
                }
            }
            continue;
        }
        // Marked abandoned by a prune: readers ignore it, and a manifest
        // its writer wrote there late.
        let marker = layout::snapshot_abandoned(gen, lsn);
        if keys.contains(&marker) {
            report.add(
                &marker,
                Kind::AbandonedSnapshot,
                format!(
                    "an interrupted snapshot that prune marked abandoned ({} object(s) left beside the marker; readers ignore them)",
                    keys.len() - 1
                ),
            );
            continue;
        }
        // Parts without a manifest: an interrupted snapshot that a later one
        // replaced is harmless; otherwise the manifest is gone.
        let tables = state::snapshot_part_tables(keys.iter().map(String::as_str));
        if st.replaced_after(lsn, &tables, None) {
            report.add(
                &manifest_key,
                Kind::AbandonedSnapshot,
                "an interrupted snapshot, replaced by a later one",
            );
        } else {
            report.add(
                &manifest_key,
                Kind::Missing,
                format!("the snapshot at {lsn} has {} part(s) but no manifest", keys.len()),
            );
        }
    }
    Ok(())
}

async fn indexes(store: &Store, gen: &str, objects: &[state::SegmentObject], report: &mut Report) -> Result<(), Error> {
    let numbers: BTreeMap<u64, u64> = objects
        .iter()
        .filter(|s| s.is_current())
        .map(|s| (s.number, s.fence))
        .collect();
    let mut reported = BTreeSet::new();
    if report.encrypted {
        for (key, _) in store.list(&format!("index/{gen}")).await? {
            if layout::data_kind(&key) != Some(layout::DataKind::Index) {
                continue;
            }
            if let Some((kind, why)) = sealed_index_fault(store, &key).await? {
                report.add(&key, kind, why);
                reported.insert(key);
            }
        }
        if !report.records_checked {
            return Ok(()); // no key: what is sealed stays unread
        }
    }
    for (key, size) in store.list(&format!("index/{gen}/segments")).await? {
        if reported.contains(&key) {
            continue;
        }
        match crate::index::Index::open(store, &key, size).await {
            Err(e @ Error::Encryption(_)) => return Err(e),
            Err(e) => report.add(
                &key,
                Kind::StaleIndex,
                format!("unreadable ({e}); `waly reindex` rebuilds it"),
            ),
            Ok(idx) => {
                if let Some(o) = idx
                    .footer
                    .objects
                    .iter()
                    .find(|o| numbers.get(&o.number) != Some(&o.fence))
                {
                    report.add(
                        &key,
                        Kind::StaleIndex,
                        format!(
                            "it indexes segment {} (fencing token {}), which is not in the archive's history",
                            o.number, o.fence
                        ),
                    );
                } else if let Some(why) = index_blocks_fault(store, &idx).await {
                    report.add(&key, Kind::StaleIndex, format!("{why}; `waly reindex` rebuilds it"));
                } else if let Some(why) = frame_table_fault(store, &idx, objects).await {
                    report.add(&key, Kind::StaleIndex, format!("{why}; `waly reindex` rebuilds it"));
                }
            }
        }
    }
    Ok(())
}

/// What is wrong with an encrypted archive's index object, checked without
/// a key: it must be sealed frames (under data keys the archive holds)
/// whose SHA-256 is the one its trailer gives. The index is derived data: a
/// damaged one is harmless (`waly reindex`); plaintext is not.
async fn sealed_index_fault(store: &Store, key: &str) -> Result<Option<(Kind, String)>, Error> {
    let bytes = store.get(key).await?;
    let Some((body, intact)) = crate::index::sealed_body(&bytes) else {
        return Ok(Some((
            Kind::Plaintext,
            "a plaintext index object in an encrypted archive: readers refuse it".into(),
        )));
    };
    let rebuild = "`waly reindex` rebuilds it";
    if !intact {
        return Ok(Some((
            Kind::StaleIndex,
            format!("its ciphertext changed: the SHA-256 of its frames differs from its trailer's; {rebuild}"),
        )));
    }
    let frames = match crate::crypt::frame::walk(key, body) {
        Ok(f) => f,
        Err(e) => return Ok(Some((Kind::StaleIndex, format!("{e}; {rebuild}")))),
    };
    if frames.is_empty() || frames.iter().any(|f| f.2.is_none()) {
        return Ok(Some((
            Kind::Plaintext,
            "not every frame of this index object is sealed: readers refuse it".into(),
        )));
    }
    let ids: BTreeSet<&String> = frames.iter().filter_map(|f| f.2.as_ref()).collect();
    for id in ids {
        if crate::crypt::keys::wrappings(store, id).await?.is_empty() {
            return Ok(Some((
                Kind::StaleIndex,
                format!("its data key {id} is not in the archive (keys/data/{id}/); {rebuild}"),
            )));
        }
    }
    Ok(None)
}

/// What is wrong with an index object's frame table, if anything: it must
/// decode, and give each segment it describes the frames that segment's
/// own header gives (read as a reader without the table reads it).
async fn frame_table_fault(
    store: &Store,
    idx: &crate::index::Index,
    objects: &[state::SegmentObject],
) -> Option<String> {
    let table = match idx.frame_table(store).await {
        Ok(t) => t?,
        Err(e) => return Some(format!("its frame table does not decode ({e})")),
    };
    let table: Vec<_> = table.into_iter().collect();
    for chunk in table.chunks(8) {
        let checks = chunk
            .iter()
            .map(|(p, frames)| segment_frames_fault(store, idx, objects, *p, frames));
        if let Some(f) = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .next()
        {
            return Some(f);
        }
    }
    None
}

/// Whether the frame table's `frames` for object `p` of `idx` are not
/// where that segment's header places them.
async fn segment_frames_fault(
    store: &Store,
    idx: &crate::index::Index,
    objects: &[state::SegmentObject],
    p: u32,
    frames: &[(u64, u64)],
) -> Option<String> {
    let o = &idx.footer.objects[p as usize];
    let s = objects
        .iter()
        .find(|s| s.is_current() && s.number == o.number && s.fence == o.fence)?;
    match crate::index::segment_frames(store, &s.key, s.size).await {
        Ok(theirs) if theirs == frames => None,
        // A header that does not read is the segment's fault, reported
        // with the segments.
        Err(_) => None,
        Ok(_) => Some(format!(
            "its frame table places segment {}'s frames where its header does not",
            o.number
        )),
    }
}

/// What is wrong with an index object's blocks, if anything: each section
/// (row keys, messages, tables, buckets) must decode, every entry must
/// name an object the footer lists, and every bucket entry a key.
async fn index_blocks_fault(store: &Store, idx: &crate::index::Index) -> Option<String> {
    let objects = idx.footer.objects.len() as u32;
    // Block by block (the bucket section is the fourth): bounded memory
    // whatever the object's size.
    let fault = idx
        .visit_blocks(store, |section, entries| {
            if section == 3 && entries.iter().any(|(v, _, _)| v & 0xffff_ffff == 0) {
                return Some("a bucket entry names no key".to_string());
            }
            entries
                .iter()
                .map(|(_, o, _)| *o)
                .find(|o| *o >= objects)
                .map(|o| format!("an entry names object {o}, but the footer lists {objects}"))
        })
        .await;
    match fault {
        Ok(f) => f,
        Err(e) => Some(format!("its blocks do not decode ({e})")),
    }
}

/// Whether the source has WAL past what the archive holds, and so changes
/// the archive cannot have yet: how far behind, or `None` if it is not.
async fn behind(
    client: &tokio_postgres::Client,
    store: &Store,
    plan: &crate::restore::Plan,
    info: &crate::source::ConnInfo,
) -> Result<Option<String>, Error> {
    let last = crate::archive::state::generations(store).await?.pop();
    if last.as_deref() != Some(plan.generation.as_str()) {
        return Ok(None);
    }
    let end = plan.gen.durable_position();
    let sql_err = |e: tokio_postgres::Error| crate::source::tls::sql_error(info, e);
    let now: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(sql_err)?
        .get(0);
    let now: Lsn = now.parse().map_err(|_| Error::Protocol(format!("bad LSN {now}")))?;
    if now <= end {
        return Ok(None);
    }
    // With the sidecar stopped, its slot can be peeked at without taking
    // anything from it: count the row changes the archive does not have.
    let identity = crate::archive::state::read_identity(store).await.ok().flatten();
    let mut changes = None;
    if let Some(id) = identity {
        let peek = format!(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', \
             'publication_names', {}) WHERE lsn > $2::text::pg_lsn AND substr(data, 1, 1) IN ('\\x49', '\\x55', '\\x44')",
            crate::source::quote::literal(&crate::source::quote::ident(&id.publication)?)?
        );
        if let Ok(r) = client.query_one(&peek, &[&id.slot, &end.to_string()]).await {
            changes = Some(r.get::<_, i64>(0));
        }
    }
    if changes == Some(0) {
        return Ok(None); // nothing published happened since: a real difference
    }
    Ok(Some(format!(
        "the archive is behind the source: it holds everything up to LSN {end}, the source is at LSN {now}{}; \
         is `waly run` running? Once it has caught up, verify again",
        changes.map_or(String::new(), |n| format!(
            " ({n} row changes of published tables in between)"
        ))
    )))
}

/// The tables of the archive's latest generation not dropped there that
/// the source database still has: what `--against-source` checks when no
/// table is named.
async fn live_tables(store: &Store, client: &tokio_postgres::Client) -> Result<Vec<String>, Error> {
    let Some(g) = crate::archive::state::generations(store).await?.pop() else {
        return Ok(Vec::new());
    };
    let st = crate::archive::state::load_generation(store, &g).await?;
    let mut out = Vec::new();
    for t in st.schemas.tables() {
        if st.schemas.latest(t).is_some_and(|v| v.dropped) {
            continue;
        }
        let (schema, name) = crate::source::quote::split_qualified(t)?;
        let qualified = format!(
            "{}.{}",
            crate::source::quote::ident(&schema)?,
            crate::source::quote::ident(&name)?
        );
        let exists = client
            .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&qualified])
            .await
            .map_err(|e| Error::Protocol(format!("looking up {t} in the source: {e}")))?;
        if exists.get::<_, bool>(0) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// The restore drill: restores each of `tables` at the archive's latest
/// point into a temporary table of the source database and compares it
/// with the live table, row for row (as text, both ways). Differences are
/// reported by table, with up to 10 rows each way.
pub async fn against_source(
    store: &Store,
    info: &crate::source::ConnInfo,
    tables: &[String],
    report: &mut Report,
) -> Result<(), Error> {
    use crate::restore;
    use crate::source::quote;
    // `money` in the text form the archive holds it in.
    let pinned = crate::archive::state::with_archive_settings(store, info).await?;
    let info = &pinned;
    let client = crate::source::tls::connect_sql(info).await?;
    let sql_err = |e: tokio_postgres::Error| crate::source::tls::sql_error(info, e);
    let every;
    let tables = if tables.is_empty() {
        every = live_tables(store, &client).await?;
        &every
    } else {
        tables
    };
    for (i, t) in tables.iter().enumerate() {
        let (schema, name) = quote::split_qualified(t)?;
        let table = format!("{schema}.{name}");
        let plan = restore::plan(store, &table, crate::log::Bound::Lsn(Lsn(u64::MAX))).await?;
        let mut rows = restore::rows(store, &plan, &restore::Filter::default(), &mut |_| {})
            .await?
            .generated_by_database();
        // Every column is compared, generated ones too (the temporary table
        // computes them from the restored values); the others are copied.
        let cols = restore::column_list(&rows.outcome.schema)?;
        let copied = restore::column_list(&restore::writable(&rows.outcome.schema))?;
        let temp_name = format!("waly_verify_{i}");
        let temp = format!("pg_temp.{}", quote::ident(&temp_name)?);
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {temp} CASCADE; {}",
                restore::create_table_sql("pg_temp", &temp_name, &rows.outcome.schema, false)?
            ))
            .await
            .map_err(sql_err)?;
        {
            use futures_util::SinkExt;
            let sink = client
                .copy_in::<_, bytes::Bytes>(&format!("COPY {temp} ({copied}) FROM STDIN"))
                .await
                .map_err(sql_err)?;
            futures_util::pin_mut!(sink);
            let schema = restore::writable(&rows.outcome.schema);
            let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
            let absent: Vec<Option<&str>> = schema.columns.iter().map(|c| c.missing.as_deref()).collect();
            let mut buf = Vec::with_capacity(256 * 1024);
            while let Some(json) = rows.next_json()? {
                let values = restore::pick(&json, &names, &absent).map_err(|e| Error::Protocol(e.to_string()))?;
                restore::copy_text_line(&mut buf, values.iter().map(|v| v.as_deref()));
                if buf.len() >= 256 * 1024 {
                    sink.send(bytes::Bytes::from(std::mem::take(&mut buf)))
                        .await
                        .map_err(sql_err)?;
                }
            }
            if !buf.is_empty() {
                sink.send(bytes::Bytes::from(buf)).await.map_err(sql_err)?;
            }
            sink.finish().await.map_err(sql_err)?;
        }
        let live = format!("{}.{}", quote::ident(&schema)?, quote::ident(&name)?);
        // The table's own rows, as a snapshot takes them.
        let relkind: String = client
            .query_one(
                "SELECT relkind::text FROM pg_class WHERE oid = $1::text::regclass",
                &[&live],
            )
            .await
            .map_err(sql_err)?
            .get(0);
        let live = quote::own_rows(&live, Some(&relkind));
        let restored_at = rows.outcome.cut.map_or(plan.snapshot.lsn, |c| c.0);
        let columns = rows.outcome.schema.columns.len();
        let diff = |a: &str, b: &str| {
            format!(
                "SELECT x::text FROM (SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b}) x ORDER BY 1 LIMIT 11"
            )
        };
        let only_live: Vec<String> = client
            .query(&diff(&live, &temp), &[])
            .await
            .map_err(sql_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let only_archive: Vec<String> = client
            .query(&diff(&temp, &live), &[])
            .await
            .map_err(sql_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if only_live.is_empty() && only_archive.is_empty() {
            let n: i64 = client
                .query_one(&format!("SELECT count(*) FROM {live}"), &[])
                .await
                .map_err(sql_err)?
                .get(0);
            report.compared.push(Compared {
                table: table.clone(),
                rows: n as u64,
                columns,
                lsn: restored_at,
            });
        } else if let Some(behind) = behind(&client, store, &plan, info).await? {
            report.add(&table, Kind::Behind, behind);
        }
        for (rows, side) in [
            (&only_live, "only in the live table"),
            (&only_archive, "only in the archive"),
        ] {
            if report
                .problems
                .last()
                .is_some_and(|p| p.kind == Kind::Behind && p.object == table)
            {
                break;
            }
            for r in rows.iter().take(10) {
                report.add(&table, Kind::Differs, format!("{side}: {r}"));
            }
            if rows.len() > 10 {
                report.add(&table, Kind::Differs, format!("{side}: and more"));
            }
        }
        client
            .batch_execute(&format!("DROP TABLE {temp} CASCADE"))
            .await
            .map_err(sql_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guarantee: `waly verify` names what is missing, and only that.
    /// Moves 1, 3, 5 and 6 of 6: moves 2 and 4 are missing, each named once;
    /// the moves there are not, nor called altered for moving from where
    /// the missing one went; one that moves from elsewhere is.
    #[tokio::test]
    async fn verify_names_each_missing_source_move_and_no_other() {
        let store = Store::open("memory://").expect("store");
        let source = |n: u64| state::Source {
            system_identifier: format!("7{n}"),
            database: "app".into(),
        };
        let identity = state::Identity {
            waly_archive: 1,
            system_identifier: "70".into(),
            database: "app".into(),
            slot: "waly".into(),
            publication: "waly".into(),
            created_at: Utc::now(),
            encryption: None,
            lc_monetary: None,
        };
        for n in [1, 3, 5, 6] {
            let m = state::SourceMove {
                waly_source_move: 1,
                number: n,
                // Move 6 says it moved from where no move went.
                from: source(if n == 6 { 9 } else { n - 1 }),
                to: source(n),
                archive_end: Lsn(n * 100),
                recorded_at: Utc::now(),
            };
            store
                .put_once(&layout::source_move_key(n), state::to_json(&m))
                .await
                .expect("put");
        }
        let mut report = Report::default();
        source_moves(&store, &identity, &mut report).await.expect("verify");
        let said: Vec<(String, Kind, String)> = report
            .problems
            .iter()
            .map(|p| (p.object.clone(), p.kind, p.detail.clone()))
            .collect();
        assert_eq!(
            said,
            [
                (
                    layout::source_move_key(2),
                    Kind::Missing,
                    "source move 2 is missing (the next one is 3)".to_string()
                ),
                (
                    layout::source_move_key(4),
                    Kind::Missing,
                    "source move 4 is missing (the next one is 5)".to_string()
                ),
                (
                    layout::source_move_key(6),
                    Kind::Altered,
                    format!(
                        "it says move 6 from {}, where move 6 from {} belongs",
                        source(9),
                        source(5)
                    )
                ),
            ]
        );
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default()
    }

    fn header(mark: TimeHigh, first: Option<i64>, last: Option<i64>) -> SegmentHeader {
        SegmentHeader {
            commit_time_high: mark.field(),
            first_commit_time: first.map(at),
            last_commit_time: last.map(at),
            ..SegmentHeader::default()
        }
    }

    #[test]
    fn a_commit_time_mark_must_bound_its_records_and_carry_the_chains_on() {
        let h = |mark| header(mark, Some(5), Some(3));
        // Read whole, after a known chain: exactly the chain's mark carried on.
        assert_eq!(
            time_high_fault(Some(TimeHigh::At(at(9))), &h(TimeHigh::At(at(9))), Some(Some(at(5)))),
            None
        );
        assert_eq!(
            time_high_fault(Some(TimeHigh::Empty), &h(TimeHigh::At(at(5))), Some(Some(at(5)))),
            None
        );
        let high = time_high_fault(Some(TimeHigh::At(at(4))), &h(TimeHigh::At(at(9))), Some(Some(at(5))));
        assert!(high.is_some_and(|f| f.contains("the chain's through it")));
        // Below its own records, wherever it is.
        let low = time_high_fault(None, &h(TimeHigh::At(at(4))), Some(Some(at(5))));
        assert!(low.is_some_and(|f| f.contains("after its header's commit-time mark")));
        assert!(time_high_fault(None, &h(TimeHigh::Empty), Some(Some(at(5)))).is_some());
        // Sealed (not read): its header's times stand for its records, and
        // the mark may not fall, nor appear after an unknown one.
        assert!(time_high_fault(None, &h(TimeHigh::At(at(4))), None).is_some());
        assert_eq!(
            time_high_fault(Some(TimeHigh::At(at(7))), &h(TimeHigh::At(at(8))), None),
            None
        );
        assert!(time_high_fault(Some(TimeHigh::At(at(9))), &h(TimeHigh::At(at(8))), None).is_some());
        assert!(time_high_fault(Some(TimeHigh::Unknown), &h(TimeHigh::At(at(8))), None).is_some());
        // Absent is never wrong: an earlier release wrote it.
        assert_eq!(
            time_high_fault(Some(TimeHigh::At(at(9))), &h(TimeHigh::Unknown), Some(Some(at(5)))),
            None
        );
    }
}
