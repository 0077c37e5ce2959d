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
