//! The segment's lines after the header, as stored: what the writer
//! serializes and the reader parses, and the per-transaction run that
//! delta-codes `seq` and `lsn`.

use super::rfc3339;
use crate::event::{Op, Row};
use crate::schema::SchemaRecord;
use crate::Lsn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One line of a segment after the header, as stored. Fields of the
/// transaction are written once, on its `begin` line, and the lines up to
/// the next `begin` belong to it; `seq` is written only where it is not the
/// previous one plus 1, and `lsn_delta` is the LSN minus the previous
/// record's in the transaction (the commit LSN for the first).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(super) enum Line {
    Begin(BeginFields),
    Change(ChangeFields),
    Message(MessageFields),
    Schema(Box<SchemaRecord>),
    Commit(CommitFields),
}

#[derive(Debug, Deserialize)]
pub(super) struct BeginFields {
    pub(super) commit_lsn: Lsn,
    pub(super) xid: u32,
    pub(super) commit_time: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChangeFields {
    pub(super) seq: Option<u64>,
    pub(super) lsn_delta: i64,
    pub(super) table: String,
    pub(super) op: Op,
    #[serde(default)]
    pub(super) old: Option<Row>,
    #[serde(default)]
    pub(super) new: Option<Row>,
    #[serde(default)]
    pub(super) unchanged_toast: Vec<Arc<str>>,
    pub(super) schema_version: u32,
}

#[derive(Debug, Deserialize)]
pub(super) struct MessageFields {
    pub(super) seq: Option<u64>,
    pub(super) lsn_delta: i64,
    pub(super) prefix: String,
    pub(super) content: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct CommitFields {
    pub(super) end_lsn: Lsn,
    pub(super) records: u64,
}

impl Line {
    /// Parses one stored line. Every line waly writes opens with its
    /// `"type"`, so its fields go straight into their variant; serde's
    /// general way with internally tagged enums first buffers every field
    /// (a copy and an allocation per value), which is most of a reader's
    /// time. A line that does not open so is parsed the general way, and so
    /// is one the direct way refuses: its error is the general way's.
    pub(super) fn parse(text: &str) -> serde_json::Result<Line> {
        if text.starts_with(r#"{"type":""#) {
            if let Ok(Direct(line)) = serde_json::from_str::<Direct>(text) {
                return Ok(line);
            }
        }
        serde_json::from_str(text)
    }
}

/// A line whose first field is its `"type"`.
struct Direct(Line);

impl<'de> Deserialize<'de> for Direct {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Direct;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a segment line opening with its type")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Direct, A::Error> {
                use serde::de::Error as _;
                if m.next_key::<&str>()? != Some("type") {
                    return Err(A::Error::custom("the first field is not the type"));
                }
                let tag: &str = m.next_value()?;
                let rest = serde::de::value::MapAccessDeserializer::new(m);
                Ok(Direct(match tag {
                    "begin" => Line::Begin(BeginFields::deserialize(rest)?),
                    "change" => Line::Change(ChangeFields::deserialize(rest)?),
                    "message" => Line::Message(MessageFields::deserialize(rest)?),
                    "schema" => Line::Schema(Box::new(SchemaRecord::deserialize(rest)?)),
                    "commit" => Line::Commit(CommitFields::deserialize(rest)?),
                    other => {
                        return Err(A::Error::unknown_variant(
                            other,
                            &["begin", "change", "message", "schema", "commit"],
                        ))
                    }
                }))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Serialize)]
pub(super) struct BeginLine<'a> {
    pub(super) r#type: &'static str,
    pub(super) commit_lsn: Lsn,
    pub(super) xid: u32,
    #[serde(serialize_with = "rfc3339")]
    pub(super) commit_time: &'a DateTime<Utc>,
}

#[derive(Serialize)]
pub(super) struct ChangeLine<'a> {
    pub(super) r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) seq: Option<u64>,
    pub(super) lsn_delta: i64,
    pub(super) table: &'a str,
    pub(super) op: Op,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) old: Option<&'a Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) new: Option<&'a Row>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(super) unchanged_toast: &'a [Arc<str>],
    pub(super) schema_version: u32,
}

#[derive(Serialize)]
pub(super) struct MessageLine<'a> {
    pub(super) r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) seq: Option<u64>,
    pub(super) lsn_delta: i64,
    pub(super) prefix: &'a str,
    pub(super) content: &'a str,
}

#[derive(Serialize)]
pub(super) struct CommitLine {
    pub(super) r#type: &'static str,
    pub(super) end_lsn: Lsn,
    pub(super) records: u64,
}

#[derive(Serialize)]
pub(super) struct SchemaLine<'a> {
    pub(super) r#type: &'static str,
    #[serde(flatten)]
    pub(super) schema: &'a SchemaRecord,
}

/// The transaction whose lines are being written or read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pub(super) commit_lsn: Lsn,
    pub(super) xid: u32,
    pub(super) commit_time: DateTime<Utc>,
    pub(super) next_seq: u64,
    pub(super) prev_lsn: Lsn,
}

impl Run {
    pub(super) fn new(commit_lsn: Lsn, xid: u32, commit_time: DateTime<Utc>) -> Run {
        Run {
            commit_lsn,
            xid,
            commit_time,
            next_seq: 0,
            prev_lsn: commit_lsn,
        }
    }

    /// Encodes `seq` and `lsn` of the next record and advances.
    pub(super) fn encode(&mut self, seq: u64, lsn: Lsn) -> (Option<u64>, i64) {
        let s = (seq != self.next_seq).then_some(seq);
        let d = lsn.as_u64().wrapping_sub(self.prev_lsn.as_u64()) as i64;
        self.next_seq = seq + 1;
        self.prev_lsn = lsn;
        (s, d)
    }

    /// Decodes `seq` and `lsn` of the next record and advances.
    pub(super) fn decode(&mut self, seq: Option<u64>, lsn_delta: i64) -> (u64, Lsn) {
        let seq = seq.unwrap_or(self.next_seq);
        let lsn = Lsn(self.prev_lsn.as_u64().wrapping_add(lsn_delta as u64));
        self.next_seq = seq + 1;
        self.prev_lsn = lsn;
        (seq, lsn)
    }
}
