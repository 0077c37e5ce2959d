//! Reading a segment: the header, then its records one at a time, with
//! the zstd checksums checked on the way.

use super::line::{BeginFields, ChangeFields, CommitFields, Line, MessageFields, Run};
use super::{key_of, ChangeRecord, CommitRecord, MessageRecord, Record, Schemas, SegmentHeader};
use super::{FORMAT_VERSION, SEALED_FORMAT_VERSION};
use crate::event::{Change, Op};
use crate::Error;
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;

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
        if value["waly_segment"] != FORMAT_VERSION && value["waly_segment"] != SEALED_FORMAT_VERSION {
            return Err(corrupt(format!(
                "segment format version {} is not one this waly reads ({FORMAT_VERSION}, or {SEALED_FORMAT_VERSION} encrypted)",
                value["waly_segment"]
            )));
        }
        let header: SegmentHeader =
            serde_json::from_value(value).map_err(|e| corrupt(format!("bad header line: {e}")))?;
        if header.key_id.is_some() {
            let head = zstd::zstd_safe::find_frame_compressed_size(bytes).unwrap_or(0);
            refuse_sealed(key, &bytes[head.min(bytes.len())..])?;
        }
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
        let body = zstd::zstd_safe::find_frame_compressed_size(bytes).map_err(|e| Error::Corrupt {
            key: key.to_string(),
            why: format!("the header frame does not decode: {e}"),
        })? as u64;
        // The header frame alone (the record frames may be sealed).
        let header = SegmentReader::open(key, &bytes[..(body as usize).min(bytes.len())])?.header;
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
        refuse_sealed(key, bytes)?;
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

    /// Lines read so far (the header's not counted).
    pub fn lines_read(&self) -> u64 {
        self.read
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
            let line = Line::parse(self.buf.trim_end())
                .map_err(|e| self.corrupt(format!("line {} is not valid: {e}", self.read)))?;
            match line {
                Line::Begin(BeginFields {
                    commit_lsn,
                    xid,
                    commit_time,
                }) => self.run = Some(Run::new(commit_lsn, xid, commit_time)),
                Line::Schema(s) => return Ok(Some(Record::Schema(s))),
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
            Line::Change(ChangeFields {
                seq,
                lsn_delta,
                table,
                op,
                old,
                new,
                unchanged_toast,
                schema_version,
            }) => {
                let (seq, lsn) = run.decode(seq, lsn_delta);
                let row = match op {
                    Op::Insert | Op::Update => new.as_ref(),
                    Op::Delete => old.as_ref(),
                    Op::Truncate => None,
                };
                let key = match row {
                    // A table whose versions were not loaded: its key is not
                    // wanted.
                    Some(_) if !schemas.holds(&table) => None,
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
            Line::Message(MessageFields {
                seq,
                lsn_delta,
                prefix,
                content,
            }) => {
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
            Line::Commit(CommitFields { end_lsn, records }) => Record::Commit(CommitRecord {
                commit_lsn: run.commit_lsn,
                end_lsn,
                xid: run.xid,
                commit_time: run.commit_time,
                records,
            }),
            Line::Begin(_) | Line::Schema(_) => {
                return Err(self.corrupt(format!("line {}: unexpected record", self.read)))
            }
        })
    }
}

/// Sealed frames are opened (decrypted) by the store before they are read;
/// one that reaches the reader would be skipped by zstd as if empty.
fn refuse_sealed(key: &str, bytes: &[u8]) -> Result<(), Error> {
    if bytes.len() >= 4 && bytes[..4] == crate::crypt::frame::MAGIC.to_le_bytes() {
        return Err(Error::Corrupt {
            key: key.to_string(),
            why: "its frames are encrypted and were not decrypted before reading".into(),
        });
    }
    Ok(())
}
