//! Segments: the archived event stream, in immutable objects.
//!
//! A segment is two zstd frames (each with its content checksum): the first
//! holds one JSON line, the header; the second holds one JSON line per
//! record. Concatenated frames decompress as one stream, so a reader sees the
//! header line followed by the records. The header is written last (it is
//! the first frame only in the bytes), so it can describe what follows: the
//! LSN and commit-time range, the last complete transaction, and the SHA-256
//! of the previous segment's bytes, which chains the segments together.

use crate::event::{Change, Op, Row};
use crate::{Error, Lsn};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;

pub use crate::schema::{key_of, same_columns, ColumnDef, SchemaRecord, Schemas};

/// The format version written in every header.
pub const FORMAT_VERSION: u32 = 2;

/// zstd level: level 3 compresses JSON well at hundreds of MB/s.
const LEVEL: i32 = 3;

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn rfc3339_opt<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// The end of a complete transaction: what the slot may be confirmed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitPoint {
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// The LSN just past its commit record.
    pub end_lsn: Lsn,
    /// Its commit time.
    #[serde(serialize_with = "rfc3339")]
    pub commit_time: DateTime<Utc>,
}

/// A segment's first line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Always [`FORMAT_VERSION`]; names the object as a waly segment.
    pub waly_segment: u32,
    /// The generation it belongs to.
    pub generation: String,
    /// Its position in the generation's chain: 0, 1, 2, ...
    pub number: u64,
    /// The commit LSN of its first record (of `end` for a heartbeat).
    pub first_lsn: Lsn,
    /// The commit LSN of its last record.
    pub last_lsn: Lsn,
    /// The last transaction whose commit record is in this segment.
    pub last_commit: Option<CommitPoint>,
    /// The WAL position everything before which is archived once this
    /// segment is (the last commit's end, or an idle position).
    pub durable_lsn: Option<Lsn>,
    /// Commit time of the first record.
    #[serde(serialize_with = "rfc3339_opt")]
    pub first_commit_time: Option<DateTime<Utc>>,
    /// Commit time of the last record.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_commit_time: Option<DateTime<Utc>>,
    /// How many records follow (changes, messages, schemas and commits).
    pub records: u64,
    /// How many lines follow (the records and the `begin` lines).
    pub lines: u64,
    /// `[offset, length]` of each zstd frame of the records, counted from
    /// the end of the header frame; each frame starts at a record boundary
    /// with a `begin` line (or a `schema` line) and decompresses on its own.
    #[serde(default)]
    pub frames: Vec<(u64, u64)>,
    /// SHA-256 (hex) of the previous segment's bytes; `null` for the first.
    pub prev_sha256: Option<String>,
    /// The fencing token of the writer's lease (absent: 0, no lease).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fence: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A change as archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// The change.
    #[serde(flatten)]
    pub change: Change,
    /// The table's schema version the values follow.
    pub schema_version: u32,
}

/// A `waly` logical message, archived with its transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// Its ordinal in the transaction (shared with the changes).
    pub seq: u64,
    /// Its WAL position.
    pub lsn: Lsn,
    /// The transaction id.
    pub xid: u32,
    /// The commit time.
    #[serde(serialize_with = "rfc3339")]
    pub commit_time: DateTime<Utc>,
    /// The prefix (always `waly`).
    pub prefix: String,
    /// The content.
    pub content: String,
}

/// The end of a transaction: it counts only once this is archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// The commit LSN.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record.
    pub end_lsn: Lsn,
    /// The transaction id.
    pub xid: u32,
    /// The commit time.
    #[serde(serialize_with = "rfc3339")]
    pub commit_time: DateTime<Utc>,
    /// How many changes and messages the transaction archived.
    pub records: u64,
}

/// A record as readers see it: whole, with its transaction's fields (on
/// disk those are written once per transaction, see [`SegmentBuilder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A row change.
    Change(ChangeRecord),
    /// A logical message.
    Message(MessageRecord),
    /// A schema version.
    Schema(SchemaRecord),
    /// A transaction's commit marker.
    Commit(CommitRecord),
}

impl Record {
    /// The commit LSN of the transaction the record belongs to.
    pub fn commit_lsn(&self) -> Lsn {
        match self {
            Record::Change(c) => c.change.commit_lsn,
            Record::Message(m) => m.commit_lsn,
            Record::Schema(s) => s.commit_lsn,
            Record::Commit(c) => c.commit_lsn,
        }
    }

    /// The identity `(commit_lsn, seq)` and commit time of a change or
    /// message (what readers deduplicate on); `None` for other records.
    pub fn identity(&self) -> Option<((Lsn, u64), DateTime<Utc>)> {
        match self {
            Record::Change(c) => Some(((c.change.commit_lsn, c.change.seq), c.change.commit_time)),
            Record::Message(m) => Some(((m.commit_lsn, m.seq), m.commit_time)),
            Record::Schema(_) | Record::Commit(_) => None,
        }
    }

    /// Whether it is a change with this op.
    pub fn is_op(&self, op: Op) -> bool {
        matches!(self, Record::Change(c) if c.change.op == op)
    }
}

/// One line of a segment after the header, as stored. Fields of the
/// transaction are written once, on its `begin` line, and the lines up to
/// the next `begin` belong to it; `seq` is written only where it is not the
/// previous one plus 1, and `lsn_delta` is the LSN minus the previous
/// record's in the transaction (the commit LSN for the first).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line {
    Begin {
        commit_lsn: Lsn,
        xid: u32,
        commit_time: DateTime<Utc>,
    },
    Change {
        seq: Option<u64>,
        lsn_delta: i64,
        table: String,
        op: Op,
        #[serde(default)]
        old: Option<Row>,
        #[serde(default)]
        new: Option<Row>,
        #[serde(default)]
        unchanged_toast: Vec<Arc<str>>,
        schema_version: u32,
    },
    Message {
        seq: Option<u64>,
        lsn_delta: i64,
        prefix: String,
        content: String,
    },
    Schema(Box<SchemaRecord>),
    Commit {
        end_lsn: Lsn,
        records: u64,
    },
}

#[derive(Serialize)]
struct BeginLine<'a> {
    r#type: &'static str,
    commit_lsn: Lsn,
    xid: u32,
    #[serde(serialize_with = "rfc3339")]
    commit_time: &'a DateTime<Utc>,
}

#[derive(Serialize)]
struct ChangeLine<'a> {
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    lsn_delta: i64,
    table: &'a str,
    op: Op,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'a Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new: Option<&'a Row>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    unchanged_toast: &'a [Arc<str>],
    schema_version: u32,
}

#[derive(Serialize)]
struct MessageLine<'a> {
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    lsn_delta: i64,
    prefix: &'a str,
    content: &'a str,
}

#[derive(Serialize)]
struct CommitLine {
    r#type: &'static str,
    end_lsn: Lsn,
    records: u64,
}

#[derive(Serialize)]
struct SchemaLine<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    schema: &'a SchemaRecord,
}

/// The transaction whose lines are being written or read.
#[derive(Debug, Clone, Copy)]
struct Run {
    commit_lsn: Lsn,
    xid: u32,
    commit_time: DateTime<Utc>,
    next_seq: u64,
    prev_lsn: Lsn,
}

impl Run {
    fn new(commit_lsn: Lsn, xid: u32, commit_time: DateTime<Utc>) -> Run {
        Run {
            commit_lsn,
            xid,
            commit_time,
            next_seq: 0,
            prev_lsn: commit_lsn,
        }
    }

    /// Encodes `seq` and `lsn` of the next record and advances.
    fn encode(&mut self, seq: u64, lsn: Lsn) -> (Option<u64>, i64) {
        let s = (seq != self.next_seq).then_some(seq);
        let d = lsn.as_u64().wrapping_sub(self.prev_lsn.as_u64()) as i64;
        self.next_seq = seq + 1;
        self.prev_lsn = lsn;
        (s, d)
    }

    /// Decodes `seq` and `lsn` of the next record and advances.
    fn decode(&mut self, seq: Option<u64>, lsn_delta: i64) -> (u64, Lsn) {
        let seq = seq.unwrap_or(self.next_seq);
        let lsn = Lsn(self.prev_lsn.as_u64().wrapping_add(lsn_delta as u64));
        self.next_seq = seq + 1;
        self.prev_lsn = lsn;
        (seq, lsn)
    }
}

/// Uncompressed bytes after which a segment's body starts a new zstd frame
/// (at a record boundary): a reader can then fetch and decompress one frame
/// of a segment alone.
pub const FRAME_BYTES: usize = 1024 * 1024;

/// Collects records into the next segment, compressing a frame at a time.
pub struct SegmentBuilder {
    compressor: zstd::bulk::Compressor<'static>,
    /// The current frame, uncompressed.
    frame: Vec<u8>,
    /// The finished frames, compressed, one after another.
    body: Vec<u8>,
    /// `(offset in body, length)` of each finished frame.
    frames: Vec<(u64, u64)>,
    /// Index entries: a change's `(key hash, frame)`, a message's `(commit LSN, frame)`.
    key_entries: Vec<(u64, u32)>,
    message_entries: Vec<(u64, u32)>,
    line: Vec<u8>,
    uncompressed: usize,
    lines: u64,
    records: u64,
    run: Option<Run>,
    first_lsn: Option<Lsn>,
    last_lsn: Option<Lsn>,
    last_commit: Option<CommitPoint>,
    first_time: Option<DateTime<Utc>>,
    last_time: Option<DateTime<Utc>>,
    durable_lsn: Option<Lsn>,
    /// When the first record arrived (for the age bound).
    pub opened_at: Option<std::time::Instant>,
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
    /// Index entries: each change's `(key hash, frame)`.
    pub key_entries: Vec<(u64, u32)>,
    /// Index entries: each `waly` message's `(commit LSN, frame)`.
    pub message_entries: Vec<(u64, u32)>,
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
            key_entries: Vec::new(),
            message_entries: Vec::new(),
            line: Vec::with_capacity(1024),
            uncompressed: 0,
            lines: 0,
            records: 0,
            run: None,
            first_lsn: None,
            last_lsn: None,
            last_commit: None,
            first_time: None,
            last_time: None,
            durable_lsn: None,
            opened_at: None,
        })
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
        let compressed = self.compressor.compress(&self.frame)?;
        self.frames.push((self.body.len() as u64, compressed.len() as u64));
        self.body.extend_from_slice(&compressed);
        self.frame.clear();
        Ok(())
    }

    /// At a record boundary: starts a new frame once the current one is
    /// full. A frame starts with its transaction's `begin` line, so it reads
    /// on its own.
    fn boundary(&mut self) -> Result<(), Error> {
        if self.frame.len() >= FRAME_BYTES {
            self.end_frame()?;
            self.run = None;
        }
        Ok(())
    }

    /// The frame being written (its index in the segment).
    fn frame_index(&self) -> u32 {
        self.frames.len() as u32
    }

    /// Records that the change just pushed concerns the row whose key hashes
    /// to `hash` (see [`crate::index`]).
    pub fn note_key(&mut self, hash: u64) {
        let f = self.frame_index();
        if self.key_entries.last() != Some(&(hash, f)) {
            self.key_entries.push((hash, f));
        }
    }

    fn note(&mut self, lsn: Lsn, time: Option<DateTime<Utc>>) {
        self.first_lsn.get_or_insert(lsn);
        self.last_lsn = Some(lsn);
        if let Some(t) = time {
            self.first_time.get_or_insert(t);
            self.last_time = Some(t);
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
    /// segment whose SHA-256 is `prev_sha256`.
    pub fn seal(
        mut self,
        generation: &str,
        number: u64,
        prev_sha256: Option<String>,
        fence: u64,
    ) -> Result<SealedSegment, Error> {
        self.end_frame()?;
        let first = self.first_lsn.or(self.durable_lsn).unwrap_or_default();
        let header = SegmentHeader {
            waly_segment: FORMAT_VERSION,
            generation: generation.to_string(),
            number,
            first_lsn: first,
            last_lsn: self.last_lsn.or(self.durable_lsn).unwrap_or_default(),
            last_commit: self.last_commit,
            durable_lsn: self.durable_lsn,
            first_commit_time: self.first_time,
            last_commit_time: self.last_time,
            records: self.records,
            lines: self.lines,
            frames: std::mem::take(&mut self.frames),
            prev_sha256,
            fence,
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
            key_entries: self.key_entries,
            message_entries: self.message_entries,
            body_offset,
        })
    }
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Reads a segment's header and then its records, one at a time, checking
/// the zstd checksums on the way; errors name the object.
pub struct SegmentReader<'a> {
    key: String,
    lines: std::io::BufReader<zstd::stream::read::Decoder<'static, std::io::BufReader<&'a [u8]>>>,
    buf: String,
    /// The segment's header.
    pub header: SegmentHeader,
    read: u64,
    run: Option<Run>,
    tables: HashMap<String, Arc<str>>,
    /// A whole segment (its header promises a line count), or one frame.
    whole: bool,
}

impl std::fmt::Debug for SegmentReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentReader")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<'a> SegmentReader<'a> {
    /// Opens the segment `key` whose bytes are `bytes`, reading its header.
    pub fn open(key: &str, bytes: &'a [u8]) -> Result<Self, Error> {
        let corrupt = |why: String| Error::Corrupt {
            key: key.to_string(),
            why,
        };
        let decoder = zstd::stream::read::Decoder::new(bytes).map_err(|e| corrupt(format!("not zstd: {e}")))?;
        let mut lines = std::io::BufReader::with_capacity(64 * 1024, decoder);
        let mut buf = String::new();
        lines
            .read_line(&mut buf)
            .map_err(|e| corrupt(format!("cannot decompress the header: {e}")))?;
        let value: serde_json::Value =
            serde_json::from_str(buf.trim_end()).map_err(|e| corrupt(format!("bad header line: {e}")))?;
        if value["waly_segment"] != FORMAT_VERSION {
            return Err(corrupt(format!(
                "segment format version {} is not one this waly reads ({FORMAT_VERSION})",
                value["waly_segment"]
            )));
        }
        let header: SegmentHeader =
            serde_json::from_value(value).map_err(|e| corrupt(format!("bad header line: {e}")))?;
        Ok(SegmentReader {
            key: key.to_string(),
            lines,
            buf,
            header,
            read: 0,
            run: None,
            tables: HashMap::new(),
            whole: true,
        })
    }

    /// The header of segment `key` and `[offset, length]` of each of its
    /// record frames, from the start of the object: the one way every
    /// reader locates a segment's frames. A record-less segment (one that
    /// only marks the archive complete up to a position) has none.
    pub fn locate_frames(key: &str, bytes: &[u8]) -> Result<(SegmentHeader, Vec<(u64, u64)>), Error> {
        let header = SegmentReader::open(key, bytes)?.header;
        let body = zstd::zstd_safe::find_frame_compressed_size(bytes).map_err(|e| Error::Corrupt {
            key: key.to_string(),
            why: format!("the header frame does not decode: {e}"),
        })? as u64;
        let rest = bytes.len() as u64 - body.min(bytes.len() as u64);
        let frames = if !header.frames.is_empty() {
            header.frames.iter().map(|(o, l)| (o + body, *l)).collect()
        } else if rest > 0 {
            vec![(body, rest)]
        } else {
            Vec::new()
        };
        Ok((header, frames))
    }

    /// Reads one frame of the segment `key` (its bytes only, as the header's
    /// or an index's `frames` locate them): the records in it.
    pub fn frame(key: &str, bytes: &'a [u8]) -> Result<Self, Error> {
        let decoder = zstd::stream::read::Decoder::new(bytes).map_err(|e| Error::Corrupt {
            key: key.to_string(),
            why: format!("not zstd: {e}"),
        })?;
        Ok(SegmentReader {
            key: key.to_string(),
            lines: std::io::BufReader::with_capacity(64 * 1024, decoder),
            buf: String::new(),
            header: SegmentHeader::default(),
            read: 0,
            run: None,
            tables: HashMap::new(),
            whole: false,
        })
    }

    fn corrupt(&self, why: String) -> Error {
        Error::Corrupt {
            key: self.key.clone(),
            why,
        }
    }

    fn intern(&mut self, table: String) -> Arc<str> {
        if let Some(t) = self.tables.get(&table) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(table.as_str());
        self.tables.insert(table, t.clone());
        t
    }

    /// The next record, `None` at the end (after checking the count).
    /// `schemas` holds the generation's schema versions: a change's `key` is
    /// its row's replica-identity columns under its schema version.
    pub fn next_record(&mut self, schemas: &Schemas) -> Result<Option<Record>, Error> {
        loop {
            self.buf.clear();
            let n = self.lines.read_line(&mut self.buf);
            let n = n.map_err(|e| self.corrupt(format!("cannot decompress line {}: {e}", self.read + 1)))?;
            if n == 0 {
                if self.whole && self.read != self.header.lines {
                    return Err(self.corrupt(format!(
                        "truncated: the header promises {} lines, found {}",
                        self.header.lines, self.read
                    )));
                }
                return Ok(None);
            }
            self.read += 1;
            let line: Line = serde_json::from_str(self.buf.trim_end())
                .map_err(|e| self.corrupt(format!("line {} is not valid: {e}", self.read)))?;
            match line {
                Line::Begin {
                    commit_lsn,
                    xid,
                    commit_time,
                } => self.run = Some(Run::new(commit_lsn, xid, commit_time)),
                Line::Schema(s) => return Ok(Some(Record::Schema(*s))),
                other => {
                    let Some(mut run) = self.run else {
                        return Err(self.corrupt(format!("line {} is outside a transaction", self.read)));
                    };
                    let rec = self.record(&mut run, other, schemas)?;
                    self.run = Some(run);
                    return Ok(Some(rec));
                }
            }
        }
    }

    fn record(&mut self, run: &mut Run, line: Line, schemas: &Schemas) -> Result<Record, Error> {
        Ok(match line {
            Line::Change {
                seq,
                lsn_delta,
                table,
                op,
                old,
                new,
                unchanged_toast,
                schema_version,
            } => {
                let (seq, lsn) = run.decode(seq, lsn_delta);
                let row = match op {
                    Op::Insert | Op::Update => new.as_ref(),
                    Op::Delete => old.as_ref(),
                    Op::Truncate => None,
                };
                let key = match row {
                    None => None,
                    Some(row) => {
                        let schema = schemas.version(&table, schema_version).ok_or_else(|| {
                            self.corrupt(format!(
                                "line {}: {table} has no schema version {schema_version} in the archive",
                                self.read
                            ))
                        })?;
                        key_of(&schema.columns, row)
                    }
                };
                Record::Change(ChangeRecord {
                    change: Change {
                        commit_lsn: run.commit_lsn,
                        seq,
                        lsn,
                        xid: run.xid,
                        commit_time: run.commit_time,
                        table: self.intern(table),
                        op,
                        key,
                        old,
                        new,
                        unchanged_toast,
                    },
                    schema_version,
                })
            }
            Line::Message {
                seq,
                lsn_delta,
                prefix,
                content,
            } => {
                let (seq, lsn) = run.decode(seq, lsn_delta);
                Record::Message(MessageRecord {
                    commit_lsn: run.commit_lsn,
                    seq,
                    lsn,
                    xid: run.xid,
                    commit_time: run.commit_time,
                    prefix,
                    content,
                })
            }
            Line::Commit { end_lsn, records } => Record::Commit(CommitRecord {
                commit_lsn: run.commit_lsn,
                end_lsn,
                xid: run.xid,
                commit_time: run.commit_time,
                records,
            }),
            Line::Begin { .. } | Line::Schema(_) => {
                return Err(self.corrupt(format!("line {}: unexpected record", self.read)))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default()
    }

    fn col(name: &str, key: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_name: "text".into(),
            type_oid: 25,
            type_modifier: -1,
            key,
            primary_key: key,
            not_null: key,
            ..ColumnDef::default()
        }
    }

    fn schemas() -> Schemas {
        let mut s = Schemas::default();
        s.insert(SchemaRecord {
            commit_lsn: Lsn(1),
            commit_time: None,
            table: "public.t".into(),
            version: 1,
            columns: vec![col("id", true), col("v", false), col("e", false)],
            ..SchemaRecord::default()
        });
        s
    }

    fn row(id: &str) -> Row {
        Row(vec![
            (Arc::from("id"), Some(id.into())),
            (Arc::from("v"), None),
            (Arc::from("e"), Some(String::new())),
        ])
    }

    fn change(commit: u64, seq: u64, lsn: u64, op: Op) -> Record {
        let (old, new) = match op {
            Op::Insert => (None, Some(row("1"))),
            Op::Update => (Some(row("0")), Some(row("1"))),
            Op::Delete => (Some(Row(vec![(Arc::from("id"), Some("1".into()))])), None),
            Op::Truncate => (None, None),
        };
        let key = match op {
            Op::Truncate => None,
            _ => Some(Row(vec![(Arc::from("id"), Some("1".into()))])),
        };
        Record::Change(ChangeRecord {
            change: Change {
                commit_lsn: Lsn(commit),
                seq,
                lsn: Lsn(lsn),
                xid: 7,
                commit_time: time(),
                table: Arc::from("public.t"),
                op,
                key,
                old,
                new,
                unchanged_toast: if op == Op::Update { vec![Arc::from("e")] } else { vec![] },
            },
            schema_version: 1,
        })
    }

    fn commit(commit: u64, records: u64) -> Record {
        Record::Commit(CommitRecord {
            commit_lsn: Lsn(commit),
            end_lsn: Lsn(commit + 8),
            xid: 7,
            commit_time: time(),
            records,
        })
    }

    fn message(commit: u64, seq: u64, lsn: u64) -> Record {
        Record::Message(MessageRecord {
            commit_lsn: Lsn(commit),
            seq,
            lsn: Lsn(lsn),
            xid: 7,
            commit_time: time(),
            prefix: "waly".into(),
            content: "{\"op\":\"x\"}".into(),
        })
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Record>, Error> {
        let mut r = SegmentReader::open("k", bytes)?;
        let mut back = Vec::new();
        while let Some(rec) = r.next_record(&schemas())? {
            back.push(rec);
        }
        Ok(back)
    }

    #[test]
    fn records_round_trip_through_a_segment() {
        let records = vec![
            change(100, 0, 50, Op::Insert),
            message(100, 1, 60),
            // seq gaps and LSNs that go down are kept exactly
            change(100, 5, 55, Op::Update),
            change(100, 6, 90, Op::Delete),
            change(100, 7, 95, Op::Truncate),
            commit(100, 5),
            Record::Schema(SchemaRecord {
                commit_lsn: Lsn(200),
                commit_time: None,
                table: "public.t".into(),
                version: 1,
                columns: vec![col("id", true)],
                ..SchemaRecord::default()
            }),
            change(200, 0, 150, Op::Insert),
        ];
        let mut b = SegmentBuilder::new().expect("builder");
        for r in &records {
            b.push(r).expect("push");
        }
        let sealed = b.seal("00000001", 3, Some("ab".repeat(32)), 0).expect("seal");
        assert_eq!(sealed.header.first_lsn, Lsn(100));
        assert_eq!(sealed.header.last_lsn, Lsn(200));
        assert_eq!(sealed.header.records, 8);
        assert_eq!(sealed.header.lines, 10, "two begin lines");
        assert_eq!(
            sealed.header.last_commit,
            Some(CommitPoint {
                commit_lsn: Lsn(100),
                end_lsn: Lsn(108),
                commit_time: time(),
            })
        );
        assert_eq!(sealed.sha256, sha256_hex(&sealed.bytes));
        let r = SegmentReader::open("k", &sealed.bytes).expect("open");
        assert_eq!(r.header, sealed.header);
        assert_eq!(
            read_all(&sealed.bytes).expect("read"),
            records,
            "values, NULLs, empty strings, keys, seq and lsn survive"
        );
    }

    #[test]
    fn transaction_fields_are_written_once_per_transaction_and_segment() {
        let mut b = SegmentBuilder::new().expect("builder");
        for i in 0..3 {
            b.push(&change(100, i, 10 + i * 40, Op::Insert)).expect("push");
        }
        let sealed = b.seal("00000001", 0, None, 0).expect("seal");
        let text = zstd::decode_all(&sealed.bytes[..]).expect("zstd");
        let text = String::from_utf8(text).expect("utf-8");
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with(r#"{"type":"begin","commit_lsn":"0/64","xid":7"#),
            "{}",
            lines[0]
        );
        assert!(
            !lines[1].contains("commit_lsn") && !lines[1].contains("\"seq\""),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains(r#""lsn_delta":-90"#), "{}", lines[1]);
        assert!(lines[2].contains(r#""lsn_delta":40"#), "{}", lines[2]);
        assert!(
            !lines[2].contains("\"key\"") && !lines[2].contains("\"old\""),
            "{}",
            lines[2]
        );
        // The rest of the transaction, in the next segment, starts with its own begin line.
        let mut b = SegmentBuilder::new().expect("builder");
        b.push(&change(100, 3, 200, Op::Insert)).expect("push");
        b.push(&commit(100, 4)).expect("push");
        let next = b.seal("00000001", 1, Some(sealed.sha256), 0).expect("seal");
        let back = read_all(&next.bytes).expect("read");
        assert_eq!(back, vec![change(100, 3, 200, Op::Insert), commit(100, 4)]);
    }

    #[test]
    fn a_record_less_segment_has_no_frames_for_any_reader() {
        let mut b = SegmentBuilder::new().expect("builder");
        b.mark_idle(Lsn(500));
        let sealed = b.seal("00000001", 3, None, 0).expect("seal");
        assert_eq!(sealed.header.records, 0);
        let (header, frames) = SegmentReader::locate_frames("k", &sealed.bytes).expect("located");
        assert_eq!(header.durable_lsn, Some(Lsn(500)));
        assert!(frames.is_empty(), "{frames:?}");
        assert_eq!(read_all(&sealed.bytes).expect("reads whole"), Vec::<Record>::new());
        // A segment with records: its frames read alone give them all.
        let mut b = SegmentBuilder::new().expect("builder");
        let all = vec![change(100, 0, 90, Op::Insert), commit(100, 1)];
        for r in &all {
            b.push(r).expect("push");
        }
        let sealed = b.seal("00000001", 4, None, 0).expect("seal");
        let (_, frames) = SegmentReader::locate_frames("k", &sealed.bytes).expect("located");
        let mut got = Vec::new();
        for (off, len) in frames {
            let mut r = SegmentReader::frame("k", &sealed.bytes[off as usize..(off + len) as usize]).expect("frame");
            while let Some(rec) = r.next_record(&schemas()).expect("record") {
                got.push(rec);
            }
        }
        assert_eq!(got, all);
    }

    #[test]
    fn a_large_segment_is_frames_that_each_read_alone() {
        let mut b = SegmentBuilder::new().expect("builder");
        let mut all = Vec::new();
        for i in 0..24000u64 {
            let r = change(100, i, 100 + i * 10, Op::Insert);
            b.push(&r).expect("push");
            b.note_key(i % 7);
            all.push(r);
        }
        all.push(commit(100, 24000));
        b.push(all.last().expect("commit")).expect("push");
        let sealed = b.seal("00000001", 0, None, 0).expect("seal");
        let frames = sealed.header.frames.clone();
        assert!(frames.len() >= 3, "{} frames", frames.len());
        assert_eq!(read_all(&sealed.bytes).expect("whole"), all);
        let mut pieced = Vec::new();
        for (off, len) in &frames {
            let at = (sealed.body_offset + off) as usize;
            let mut r = SegmentReader::frame("k", &sealed.bytes[at..at + *len as usize]).expect("frame");
            while let Some(rec) = r.next_record(&schemas()).expect("record") {
                pieced.push(rec);
            }
        }
        assert_eq!(pieced, all, "frame by frame, the same records");
        let last_frame = frames.len() as u32 - 1;
        assert!(sealed.key_entries.iter().any(|(_, f)| *f == last_frame));
        assert!(sealed.key_entries.iter().all(|(h, _)| *h < 7));
        assert_eq!(FRAME_BYTES, 1 << 20, "the test's sizes assume 1 MiB frames");
    }

    #[test]
    fn a_change_whose_schema_version_is_missing_is_an_error_naming_the_object() {
        let mut b = SegmentBuilder::new().expect("builder");
        let Record::Change(mut c) = change(100, 0, 50, Op::Insert) else {
            unreachable!()
        };
        c.schema_version = 9;
        b.push(&Record::Change(c)).expect("push");
        let sealed = b.seal("00000001", 0, None, 0).expect("seal");
        let err = read_all(&sealed.bytes).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no schema version 9") && err.contains('k'), "{err}");
    }

    #[test]
    fn schema_versions_are_found_again_when_a_transaction_is_streamed_again() {
        let mut s = schemas();
        let v1 = vec![col("id", true), col("v", false), col("e", false)];
        let v2 = vec![col("id", true), col("e", false)];
        // Transaction 300 changed the table twice: back to v1's shape, then v2.
        s.insert(SchemaRecord {
            commit_lsn: Lsn(300),
            commit_time: None,
            table: "public.t".into(),
            version: 2,
            columns: v2.clone(),
            ..SchemaRecord::default()
        });
        assert_eq!(s.reusable("public.t", Lsn(200), &v1).map(|r| r.version), Some(1));
        assert_eq!(s.reusable("public.t", Lsn(300), &v1).map(|r| r.version), Some(1));
        assert_eq!(s.reusable("public.t", Lsn(300), &v2).map(|r| r.version), Some(2));
        assert_eq!(s.reusable("public.t", Lsn(400), &v2).map(|r| r.version), Some(2));
        assert_eq!(s.reusable("public.t", Lsn(400), &v1), None, "a real change after v2");
        assert_eq!(
            s.reusable("public.t", Lsn(200), &v2),
            None,
            "v2 is not in force before 300"
        );
        assert_eq!(s.at("public.t", Lsn(299)).map(|r| r.version), Some(1));
        assert_eq!(s.at("public.t", Lsn(300)).map(|r| r.version), Some(2));
        assert_eq!(s.next_version("public.t"), 3);
        assert_eq!(s.next_version("public.u"), 1);
    }

    #[test]
    fn damage_is_detected_and_names_the_object() {
        let mut b = SegmentBuilder::new().expect("builder");
        for i in 0..200 {
            b.push(&change(100, i, 100 + i, Op::Insert)).expect("push");
        }
        let sealed = b.seal("00000001", 0, None, 0).expect("seal");
        let mut bytes = sealed.bytes.to_vec();
        let at = bytes.len() - 20;
        bytes[at] ^= 0x40;
        let err = (|| -> Result<(), Error> {
            let mut r = SegmentReader::open("generations/x/segments/s", &bytes)?;
            while r.next_record(&schemas())?.is_some() {}
            Ok(())
        })()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("generations/x/segments/s") && err.contains("corrupt"),
            "{err}"
        );
        // Cutting the object short is caught too.
        let cut = &sealed.bytes[..sealed.bytes.len() / 2];
        assert!(read_all(cut).is_err());
    }
}
