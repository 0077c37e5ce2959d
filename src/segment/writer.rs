//! Writing a segment: records into JSON lines, frames compressed as they
//! fill, and the header (written last, placed first) that describes them.

use super::line::{BeginLine, ChangeLine, CommitLine, MessageLine, Run, SchemaLine};
use super::{sha256_hex, CommitRecord, MessageRecord, SchemaRecord};
use super::{CommitPoint, Record, SegmentHeader, FORMAT_VERSION, LEVEL, SEALED_FORMAT_VERSION};
use crate::event::Change;
use crate::{Error, Lsn};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// The most uncompressed bytes after which a segment's body starts a new
/// zstd frame (at a record boundary): a reader can then fetch and
/// decompress one frame of a segment alone.
pub const FRAME_BYTES: usize = 1024 * 1024;
/// The fewest uncompressed bytes a frame holds before it may end.
pub const MIN_FRAME_BYTES: usize = 64 * 1024;
/// About what a frame holds compressed: a frame ends once it holds this
/// many bytes' worth at the compression ratio of the segment's frame
/// before it (of its first 64 KiB, for the first), within
/// [`MIN_FRAME_BYTES`]..=[`FRAME_BYTES`]. So a lookup reads about this much
/// per frame however well the data compresses, and data that compresses
/// very well still makes frames of 1 MiB.
pub const FRAME_TARGET_COMPRESSED: usize = 16 * 1024;

/// Where an object's frames end (segments' and snapshot parts'): at the
/// uncompressed size that holds about [`FRAME_TARGET_COMPRESSED`] bytes
/// compressed, as the object's frame before compressed.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameSizer {
    /// `None` until the object's first 64 KiB are measured.
    target: Option<usize>,
}

impl FrameSizer {
    /// Whether the frame `frame` is full (asked at a record boundary). The
    /// first time it holds [`MIN_FRAME_BYTES`], it is compressed once to
    /// measure how well the object's data compresses.
    pub fn full(&mut self, frame: &[u8], c: &mut zstd::bulk::Compressor<'static>) -> Result<bool, Error> {
        if self.target.is_none() && frame.len() >= MIN_FRAME_BYTES {
            let trial = c.compress(frame)?;
            self.ended(frame.len(), trial.len());
        }
        Ok(frame.len() >= self.target.unwrap_or(FRAME_BYTES))
    }

    /// A frame of `raw` bytes was compressed to `compressed` (before any sealing).
    pub fn ended(&mut self, raw: usize, compressed: usize) {
        let t = FRAME_TARGET_COMPRESSED as u64 * raw as u64 / compressed.max(1) as u64;
        self.target = Some(t.clamp(MIN_FRAME_BYTES as u64, FRAME_BYTES as u64) as usize);
    }
}

/// Collects records into the next segment, compressing a frame at a time.
pub struct SegmentBuilder {
    compressor: zstd::bulk::Compressor<'static>,
    /// The current frame, uncompressed.
    frame: Vec<u8>,
    /// The finished frames, compressed, one after another.
    body: Vec<u8>,
    /// `(offset in body, length)` of each finished frame.
    frames: Vec<(u64, u64)>,
    /// Index entries: the changes' row keys, a message's `(commit LSN, frame)`.
    keys: crate::index::KeyEntries,
    message_entries: Vec<(u64, u32)>,
    /// Index entries: `(table hash, frame)` of each table a frame has changes of.
    table_entries: Vec<(u64, u32)>,
    /// The tables the current frame has changes of.
    frame_tables: Vec<u64>,
    /// Each table's hash, computed once (a keyed hash costs a few SHA-256
    /// blocks: not one per change).
    table_hashes: std::collections::HashMap<String, u64>,
    summary: crate::catalog::Summary,
    line: Vec<u8>,
    uncompressed: usize,
    /// Where its frames end.
    sizer: FrameSizer,
    lines: u64,
    records: u64,
    run: Option<Run>,
    first_lsn: Option<Lsn>,
    last_lsn: Option<Lsn>,
    last_commit: Option<CommitPoint>,
    first_time: Option<DateTime<Utc>>,
    last_time: Option<DateTime<Utc>>,
    /// The greatest commit time of the records (times may step back).
    latest_time: Option<DateTime<Utc>>,
    durable_lsn: Option<Lsn>,
    /// When the first record arrived (for the age bound).
    pub opened_at: Option<std::time::Instant>,
    /// Encrypted archives: seals each record frame.
    sealer: Option<crate::crypt::Sealer>,
}

impl std::fmt::Debug for SegmentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentBuilder")
            .field("records", &self.records)
            .field("uncompressed", &self.uncompressed)
            .finish_non_exhaustive()
    }
}

fn compressor() -> Result<zstd::bulk::Compressor<'static>, Error> {
    let mut c = zstd::bulk::Compressor::new(LEVEL)?;
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    Ok(c)
}

/// A finished segment, ready to upload.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    /// Its header.
    pub header: SegmentHeader,
    /// Its bytes.
    pub bytes: Bytes,
    /// SHA-256 (hex) of `bytes`, for the next segment's header.
    pub sha256: String,
    /// Index entries: the changes' row keys.
    pub keys: crate::index::KeyEntries,
    /// Index entries: each `waly` message's `(commit LSN, frame)`.
    pub message_entries: Vec<(u64, u32)>,
    /// Index entries: `(table hash, frame)` of each table a frame has changes
    /// of (see [`crate::index::Hasher::table`]).
    pub table_entries: Vec<(u64, u32)>,
    /// Encrypted archives: the data key that sealed its frames and hashed
    /// its index entries (its index object is sealed and hashed the same).
    pub sealer: Option<crate::crypt::Sealer>,
    /// Its changes, as the catalog counts them.
    pub summary: crate::catalog::Summary,
    /// Where the records start: the length of the header frame.
    pub body_offset: u64,
}

impl SegmentBuilder {
    /// An empty segment.
    pub fn new() -> Result<Self, Error> {
        Ok(SegmentBuilder {
            compressor: compressor()?,
            frame: Vec::with_capacity(FRAME_BYTES + 64 * 1024),
            body: Vec::new(),
            frames: Vec::new(),
            keys: Default::default(),
            message_entries: Vec::new(),
            table_entries: Vec::new(),
            summary: Default::default(),
            frame_tables: Vec::new(),
            table_hashes: Default::default(),
            line: Vec::with_capacity(1024),
            uncompressed: 0,
            sizer: FrameSizer::default(),
            lines: 0,
            records: 0,
            run: None,
            first_lsn: None,
            last_lsn: None,
            last_commit: None,
            first_time: None,
            last_time: None,
            latest_time: None,
            durable_lsn: None,
            opened_at: None,
            sealer: None,
        })
    }

    /// An empty segment whose record frames `sealer` encrypts (`None`: a
    /// plaintext archive).
    pub fn sealed_by(sealer: Option<crate::crypt::Sealer>) -> Result<Self, Error> {
        let mut b = Self::new()?;
        b.sealer = sealer;
        Ok(b)
    }

    /// How this segment's index entries are hashed: under its sealer's data
    /// key in an encrypted archive.
    pub fn hasher(&self) -> &crate::index::Hasher {
        static PLAIN: crate::index::Hasher = crate::index::Hasher::Plain;
        self.sealer.as_ref().map_or(&PLAIN, |s| s.hasher())
    }

    /// The transaction `commit_lsn` is written from here on: a `begin` line
    /// unless it already is.
    fn enter(&mut self, commit_lsn: Lsn, xid: u32, commit_time: &DateTime<Utc>) -> Result<Run, Error> {
        if let Some(r) = self.run.filter(|r| r.commit_lsn == commit_lsn) {
            return Ok(r);
        }
        self.write_line(&BeginLine {
            r#type: "begin",
            commit_lsn,
            xid,
            commit_time,
        })?;
        let r = Run::new(commit_lsn, xid, *commit_time);
        self.run = Some(r);
        Ok(r)
    }

    /// Appends a change record, serialized straight from the borrowed change
    /// (no copy of the row).
    pub fn push_change(&mut self, change: &Change, schema_version: u32) -> Result<(), Error> {
        self.boundary()?;
        let mut run = self.enter(change.commit_lsn, change.xid, &change.commit_time)?;
        let (seq, lsn_delta) = run.encode(change.seq, change.lsn);
        self.write_line(&ChangeLine {
            r#type: "change",
            seq,
            lsn_delta,
            table: &change.table,
            op: change.op,
            old: change.old.as_ref(),
            new: change.new.as_ref(),
            unchanged_toast: &change.unchanged_toast,
            schema_version,
        })?;
        self.run = Some(run);
        self.records += 1;
        self.note(change.commit_lsn, Some(change.commit_time));
        self.summary
            .note(&change.table, change.commit_lsn, change.seq, change.commit_time);
        let h = match self.table_hashes.get(&*change.table) {
            Some(h) => *h,
            None => {
                let h = self.hasher().table(&change.table);
                self.table_hashes.insert(change.table.to_string(), h);
                h
            }
        };
        if !self.frame_tables.contains(&h) {
            self.frame_tables.push(h);
            self.table_entries.push((h, self.frame_index()));
        }
        Ok(())
    }

    /// Appends a logical message.
    pub fn push_message(&mut self, m: &MessageRecord) -> Result<(), Error> {
        self.boundary()?;
        let f = self.frame_index();
        self.message_entries.push((m.commit_lsn.as_u64(), f));
        let mut run = self.enter(m.commit_lsn, m.xid, &m.commit_time)?;
        let (seq, lsn_delta) = run.encode(m.seq, m.lsn);
        self.write_line(&MessageLine {
            r#type: "message",
            seq,
            lsn_delta,
            prefix: &m.prefix,
            content: &m.content,
        })?;
        self.run = Some(run);
        self.records += 1;
        self.note(m.commit_lsn, Some(m.commit_time));
        Ok(())
    }

    /// Appends a schema version seen in the stream.
    pub fn push_schema(&mut self, s: &SchemaRecord) -> Result<(), Error> {
        self.boundary()?;
        self.write_line(&SchemaLine {
            r#type: "schema",
            schema: s,
        })?;
        self.records += 1;
        self.note(s.commit_lsn, None);
        Ok(())
    }

    /// Appends a transaction's commit marker.
    pub fn push_commit(&mut self, c: &CommitRecord) -> Result<(), Error> {
        self.boundary()?;
        self.enter(c.commit_lsn, c.xid, &c.commit_time)?;
        self.write_line(&CommitLine {
            r#type: "commit",
            end_lsn: c.end_lsn,
            records: c.records,
        })?;
        self.run = None;
        self.records += 1;
        self.note(c.commit_lsn, Some(c.commit_time));
        self.last_commit = Some(CommitPoint {
            commit_lsn: c.commit_lsn,
            end_lsn: c.end_lsn,
            commit_time: c.commit_time,
        });
        self.durable_lsn = Some(c.end_lsn);
        Ok(())
    }

    /// Appends one record.
    pub fn push(&mut self, r: &Record) -> Result<(), Error> {
        match r {
            Record::Change(c) => self.push_change(&c.change, c.schema_version),
            Record::Message(m) => self.push_message(m),
            Record::Schema(s) => self.push_schema(s),
            Record::Commit(c) => self.push_commit(c),
        }
    }

    fn write_line<T: Serialize>(&mut self, v: &T) -> Result<(), Error> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, v).map_err(|e| Error::Protocol(format!("serializing a record: {e}")))?;
        self.line.push(b'\n');
        self.frame.extend_from_slice(&self.line);
        self.uncompressed += self.line.len();
        self.lines += 1;
        Ok(())
    }

    /// Compresses the current frame onto the body.
    fn end_frame(&mut self) -> Result<(), Error> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let mut compressed = self.compressor.compress(&self.frame)?;
        self.sizer.ended(self.frame.len(), compressed.len());
        if let Some(s) = &self.sealer {
            compressed = s.seal(&compressed)?;
        }
        self.frames.push((self.body.len() as u64, compressed.len() as u64));
        self.body.extend_from_slice(&compressed);
        self.frame.clear();
        self.frame_tables.clear();
        Ok(())
    }

    /// At a record boundary: starts a new frame once the current one is
    /// full. A frame starts with its transaction's `begin` line, so it reads
    /// on its own.
    fn boundary(&mut self) -> Result<(), Error> {
        if self.sizer.full(&self.frame, &mut self.compressor)? {
            self.end_frame()?;
            self.run = None;
        }
        Ok(())
    }

    /// The frame being written (its index in the segment).
    fn frame_index(&self) -> u32 {
        self.frames.len() as u32
    }

    /// Records that the change just pushed concerns the row `key` (see
    /// [`crate::index`]).
    pub fn note_key(&mut self, key: crate::index::RowKey) {
        let f = self.frame_index();
        self.keys.note(key, f);
    }

    fn note(&mut self, lsn: Lsn, time: Option<DateTime<Utc>>) {
        self.first_lsn.get_or_insert(lsn);
        self.last_lsn = Some(lsn);
        if let Some(t) = time {
            self.first_time.get_or_insert(t);
            self.last_time = Some(t);
            self.latest_time = self.latest_time.max(Some(t));
        }
        self.opened_at.get_or_insert_with(std::time::Instant::now);
    }

    /// Marks `lsn` as archived once this segment is, without a record (an
    /// idle source: WAL flowed, but nothing published changed).
    pub fn mark_idle(&mut self, lsn: Lsn) {
        if self.durable_lsn.is_none_or(|d| d < lsn) {
            self.durable_lsn = Some(lsn);
        }
        self.opened_at.get_or_insert_with(std::time::Instant::now);
    }

    /// Records appended so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Uncompressed bytes appended so far.
    pub fn uncompressed_bytes(&self) -> usize {
        self.uncompressed
    }

    /// Whether there is anything to write (records, or an idle position).
    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.durable_lsn.is_none()
    }

    /// The position confirmed once this segment is durable, if any.
    pub fn durable_lsn(&self) -> Option<Lsn> {
        self.durable_lsn
    }

    /// Seals the segment as number `number` of `generation`, after the
    /// segment whose SHA-256 is `prev_sha256`; `before` is what the chain
    /// before it says of commit times (the previous header's
    /// [`TimeHigh::of`]; [`TimeHigh::Empty`] for the first segment).
    pub fn seal(
        mut self,
        generation: &str,
        number: u64,
        prev_sha256: Option<String>,
        before: super::TimeHigh,
        fence: u64,
    ) -> Result<SealedSegment, Error> {
        self.end_frame()?;
        let first = self.first_lsn.or(self.durable_lsn).unwrap_or_default();
        let header = SegmentHeader {
            waly_segment: if self.sealer.is_some() {
                SEALED_FORMAT_VERSION
            } else {
                FORMAT_VERSION
            },
            generation: generation.to_string(),
            number,
            first_lsn: first,
            last_lsn: self.last_lsn.or(self.durable_lsn).unwrap_or_default(),
            last_commit: self.last_commit,
            durable_lsn: self.durable_lsn,
            first_commit_time: self.first_time,
            last_commit_time: self.last_time,
            commit_time_high: before.then(self.latest_time).field(),
            records: self.records,
            lines: self.lines,
            frames: std::mem::take(&mut self.frames),
            prev_sha256,
            fence,
            key_id: self.sealer.as_ref().map(|s| s.key_id().to_string()),
            body_sha256: self.sealer.as_ref().map(|_| sha256_hex(&self.body)),
        };
        let mut json =
            serde_json::to_vec(&header).map_err(|e| Error::Protocol(format!("serializing a header: {e}")))?;
        json.push(b'\n');
        let head = self.compressor.compress(&json)?;
        let body_offset = head.len() as u64;
        let mut bytes = head;
        bytes.extend_from_slice(&self.body);
        let sha256 = sha256_hex(&bytes);
        Ok(SealedSegment {
            header,
            bytes: Bytes::from(bytes),
            sha256,
            keys: self.keys,
            message_entries: self.message_entries,
            table_entries: self.table_entries,
            summary: self.summary,
            body_offset,
            sealer: self.sealer,
        })
    }
}
