//! Segments: the archived event stream, in immutable objects.
//!
//! A segment is two zstd frames (each with its content checksum): the first
//! holds one JSON line, the header; the second holds one JSON line per
//! record. Concatenated frames decompress as one stream, so a reader sees the
//! header line followed by the records. The header is written last (it is
//! the first frame only in the bytes), so it can describe what follows: the
//! LSN and commit-time range, the last complete transaction, and the SHA-256
//! of the previous segment's bytes, which chains the segments together.

use crate::event::{Change, Op};
use crate::{Error, Lsn};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};

/// The format version written in every header.
pub const FORMAT_VERSION: u32 = 1;

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
}

/// A segment's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// How many records follow.
    pub records: u64,
    /// SHA-256 (hex) of the previous segment's bytes; `null` for the first.
    pub prev_sha256: Option<String>,
}

/// A column as archived in a schema version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Its name.
    pub name: String,
    /// Its type as `format_type` prints it.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The type's OID.
    pub type_oid: u32,
    /// The type modifier.
    pub type_modifier: i32,
    /// Whether it is part of the replica identity.
    pub key: bool,
    /// Whether it is part of the primary key.
    #[serde(default)]
    pub primary_key: bool,
    /// Whether it is NOT NULL.
    pub not_null: bool,
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

/// A new version of a table's columns; changes after it use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRecord {
    /// The commit LSN of the transaction in which it was first seen (or the
    /// snapshot LSN for a table's first version).
    pub commit_lsn: Lsn,
    /// `schema.table`.
    pub table: String,
    /// 1, 2, 3, ... per table.
    pub version: u32,
    /// The columns, in order.
    pub columns: Vec<ColumnDef>,
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

/// One line after the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
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

    fn commit_time(&self) -> Option<DateTime<Utc>> {
        match self {
            Record::Change(c) => Some(c.change.commit_time),
            Record::Message(m) => Some(m.commit_time),
            Record::Commit(c) => Some(c.commit_time),
            Record::Schema(_) => None,
        }
    }

    /// Whether it is a change with this op.
    pub fn is_op(&self, op: Op) -> bool {
        matches!(self, Record::Change(c) if c.change.op == op)
    }
}

/// Collects records into the next segment, compressing as it goes.
pub struct SegmentBuilder {
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    line: Vec<u8>,
    uncompressed: usize,
    records: u64,
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

fn zstd_encoder() -> Result<zstd::stream::write::Encoder<'static, Vec<u8>>, Error> {
    let mut e = zstd::stream::write::Encoder::new(Vec::with_capacity(256 * 1024), LEVEL)?;
    e.include_checksum(true)?;
    Ok(e)
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
}

impl SegmentBuilder {
    /// An empty segment.
    pub fn new() -> Result<Self, Error> {
        Ok(SegmentBuilder {
            encoder: zstd_encoder()?,
            line: Vec::with_capacity(1024),
            uncompressed: 0,
            records: 0,
            first_lsn: None,
            last_lsn: None,
            last_commit: None,
            first_time: None,
            last_time: None,
            durable_lsn: None,
            opened_at: None,
        })
    }

    /// Appends a change record, serialized straight from the borrowed change
    /// (the hot path: no copy of the row).
    pub fn push_change(&mut self, change: &Change, schema_version: u32) -> Result<(), Error> {
        // The same fields, in the same order, as `Record::Change`, as a plain
        // struct of borrows: serde's `flatten` goes through a slower map path.
        #[derive(Serialize)]
        struct Line<'a> {
            r#type: &'static str,
            commit_lsn: Lsn,
            seq: u64,
            lsn: Lsn,
            xid: u32,
            #[serde(serialize_with = "rfc3339")]
            commit_time: &'a DateTime<Utc>,
            table: &'a str,
            op: Op,
            key: &'a Option<crate::event::Row>,
            old: &'a Option<crate::event::Row>,
            new: &'a Option<crate::event::Row>,
            unchanged_toast: &'a [std::sync::Arc<str>],
            schema_version: u32,
        }
        self.write_line(&Line {
            r#type: "change",
            commit_lsn: change.commit_lsn,
            seq: change.seq,
            lsn: change.lsn,
            xid: change.xid,
            commit_time: &change.commit_time,
            table: &change.table,
            op: change.op,
            key: &change.key,
            old: &change.old,
            new: &change.new,
            unchanged_toast: &change.unchanged_toast,
            schema_version,
        })?;
        self.note(change.commit_lsn, Some(change.commit_time));
        Ok(())
    }

    fn write_line<T: Serialize>(&mut self, v: &T) -> Result<(), Error> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, v).map_err(|e| Error::Protocol(format!("serializing a record: {e}")))?;
        self.line.push(b'\n');
        self.encoder.write_all(&self.line)?;
        self.uncompressed += self.line.len();
        self.records += 1;
        Ok(())
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

    /// Appends one record.
    pub fn push(&mut self, r: &Record) -> Result<(), Error> {
        self.write_line(r)?;
        self.note(r.commit_lsn(), r.commit_time());
        if let Record::Commit(c) = r {
            self.last_commit = Some(CommitPoint {
                commit_lsn: c.commit_lsn,
                end_lsn: c.end_lsn,
            });
            self.durable_lsn = Some(c.end_lsn);
        }
        Ok(())
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
    pub fn seal(self, generation: &str, number: u64, prev_sha256: Option<String>) -> Result<SealedSegment, Error> {
        let body = self.encoder.finish()?;
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
            prev_sha256,
        };
        let mut head = zstd_encoder()?;
        serde_json::to_writer(&mut head, &header).map_err(|e| Error::Protocol(format!("serializing a header: {e}")))?;
        head.write_all(b"\n")?;
        let mut bytes = head.finish()?;
        bytes.extend_from_slice(&body);
        let sha256 = sha256_hex(&bytes);
        Ok(SealedSegment {
            header,
            bytes: Bytes::from(bytes),
            sha256,
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
        let header: SegmentHeader =
            serde_json::from_str(buf.trim_end()).map_err(|e| corrupt(format!("bad header line: {e}")))?;
        if header.waly_segment != FORMAT_VERSION {
            return Err(corrupt(format!(
                "segment format version {} is not one this waly reads ({FORMAT_VERSION})",
                header.waly_segment
            )));
        }
        Ok(SegmentReader {
            key: key.to_string(),
            lines,
            buf,
            header,
            read: 0,
        })
    }

    /// The next record, `None` at the end (after checking the count).
    pub fn next_record(&mut self) -> Result<Option<Record>, Error> {
        let corrupt = |why: String| Error::Corrupt {
            key: self.key.clone(),
            why,
        };
        self.buf.clear();
        let n = self
            .lines
            .read_line(&mut self.buf)
            .map_err(|e| corrupt(format!("cannot decompress record {}: {e}", self.read + 1)))?;
        if n == 0 {
            if self.read != self.header.records {
                return Err(corrupt(format!(
                    "truncated: the header promises {} records, found {}",
                    self.header.records, self.read
                )));
            }
            return Ok(None);
        }
        self.read += 1;
        let r = serde_json::from_str(self.buf.trim_end())
            .map_err(|e| corrupt(format!("record {} is not valid: {e}", self.read)))?;
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Row;
    use std::sync::Arc;

    fn change(commit: u64, seq: u64) -> Record {
        Record::Change(ChangeRecord {
            change: Change {
                commit_lsn: Lsn(commit),
                seq,
                lsn: Lsn(commit - 10 + seq),
                xid: 7,
                commit_time: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default(),
                table: Arc::from("public.t"),
                op: Op::Insert,
                key: Some(Row(vec![(Arc::from("id"), Some("1".into()))])),
                old: None,
                new: Some(Row(vec![
                    (Arc::from("id"), Some("1".into())),
                    (Arc::from("v"), None),
                    (Arc::from("e"), Some(String::new())),
                ])),
                unchanged_toast: vec![],
            },
            schema_version: 1,
        })
    }

    fn commit(commit: u64) -> Record {
        Record::Commit(CommitRecord {
            commit_lsn: Lsn(commit),
            end_lsn: Lsn(commit + 8),
            xid: 7,
            commit_time: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default(),
            records: 2,
        })
    }

    #[test]
    fn records_round_trip_through_a_segment() {
        let records = vec![change(100, 0), change(100, 1), commit(100), change(200, 0)];
        let mut b = SegmentBuilder::new().expect("builder");
        for r in &records {
            match r {
                // The borrowed fast path writes exactly what `push` would.
                Record::Change(c) if c.change.seq == 1 => b.push_change(&c.change, c.schema_version),
                other => b.push(other),
            }
            .expect("push");
        }
        let sealed = b.seal("00000001", 3, Some("ab".repeat(32))).expect("seal");
        assert_eq!(sealed.header.first_lsn, Lsn(100));
        assert_eq!(sealed.header.last_lsn, Lsn(200));
        assert_eq!(
            sealed.header.last_commit,
            Some(CommitPoint {
                commit_lsn: Lsn(100),
                end_lsn: Lsn(108)
            })
        );
        assert_eq!(sealed.sha256, sha256_hex(&sealed.bytes));
        let mut r = SegmentReader::open("k", &sealed.bytes).expect("open");
        assert_eq!(r.header, sealed.header);
        let mut back = Vec::new();
        while let Some(rec) = r.next_record().expect("record") {
            back.push(rec);
        }
        assert_eq!(back, records, "values, NULLs and empty strings survive");
    }

    #[test]
    fn damage_is_detected_and_names_the_object() {
        let mut b = SegmentBuilder::new().expect("builder");
        for i in 0..200 {
            b.push(&change(100, i)).expect("push");
        }
        let sealed = b.seal("00000001", 0, None).expect("seal");
        let mut bytes = sealed.bytes.to_vec();
        let at = bytes.len() - 20;
        bytes[at] ^= 0x40;
        let err = (|| -> Result<(), Error> {
            let mut r = SegmentReader::open("generations/x/segments/s", &bytes)?;
            while r.next_record()?.is_some() {}
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
        let err = (|| -> Result<(), Error> {
            let mut r = SegmentReader::open("seg", cut)?;
            while r.next_record()?.is_some() {}
            Ok(())
        })();
        assert!(err.is_err());
    }
}
