//! The change model: pgoutput messages assembled into changes that carry
//! their transaction's identity, plus the relation cache that names columns.
//!
//! Each change has the deterministic identity `(commit_lsn, seq)`: the LSN of
//! its transaction's commit record (known from Begin) and its ordinal inside
//! that transaction. Column values keep PostgreSQL's text form; `None` is SQL
//! NULL, distinct from the empty string.

use crate::pgoutput::{self, Message, OldKind, TupleData};
use crate::{Error, Lsn};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// A column of a published table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    /// The column's name.
    pub name: Arc<str>,
    /// The type's OID.
    pub type_oid: u32,
    /// The type modifier, -1 when none.
    pub type_modifier: i32,
    /// The type's name as `format_type` prints it (or `oid N` when unknown).
    pub type_name: String,
    /// Whether it belongs to the replica identity.
    pub key: bool,
}

/// The replica identity a table publishes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaIdentity {
    /// The primary key (or nothing without one).
    Default,
    /// No old values at all.
    Nothing,
    /// The whole old row.
    Full,
    /// The columns of a chosen unique index.
    Index,
}

/// The shape of a published table, from its latest Relation message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelationInfo {
    /// The table's OID.
    pub oid: u32,
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Its columns, in order.
    pub columns: Vec<Column>,
    /// `schema.table`, shared by every change to it.
    #[serde(skip)]
    pub qualified: Arc<str>,
}

impl RelationInfo {
    /// `schema.table`.
    pub fn qualified(&self) -> &str {
        &self.qualified
    }
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// The table was truncated.
    Truncate,
}

impl Op {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// Column values by name, in table column order; `None` is NULL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row(pub Vec<(Arc<str>, Option<String>)>);

impl Row {
    /// The value of column `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Option<String>> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Row;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of column values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Row, A::Error> {
                // Rows of a table name the same columns in the same order:
                // each name is first compared with the one at its place in
                // this thread's row before (the table of names is for the
                // others).
                thread_local! {
                    static LAST: std::cell::Cell<Vec<Arc<str>>> = const { std::cell::Cell::new(Vec::new()) };
                }
                let last = LAST.with(|l| l.take());
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(last.len().max(8)));
                while let Some(k) = m.next_key_seed(NameSeed(last.get(out.len())))? {
                    out.push((k, m.next_value::<Option<String>>()?));
                }
                let mut names = last;
                names.clear();
                names.extend(out.iter().map(|(k, _)| k.clone()));
                LAST.with(|l| l.set(names));
                Ok(Row(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads a column name as an `Arc<str>`: `.0` when it is that name, else
/// [`shared_name`]'s.
struct NameSeed<'a>(Option<&'a Arc<str>>);

impl<'de> serde::de::DeserializeSeed<'de> for NameSeed<'_> {
    type Value = Arc<str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Arc<str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for NameSeed<'_> {
    type Value = Arc<str>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a column name")
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Arc<str>, E> {
        match self.0 {
            Some(n) if **n == *s => Ok(n.clone()),
            _ => Ok(shared_name(s)),
        }
    }
}

/// FNV-1a (64 bit): the hasher of [`shared_name`]'s table. Names are
/// short and few, so the default SipHash (built against crafted keys, which
/// a table capped at a few thousand names does not fear) cost more than
/// the lookup itself in every reader's decoding.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }
}

type Names = std::collections::HashMap<Box<str>, Arc<str>, std::hash::BuildHasherDefault<Fnv>>;

/// `name` as an `Arc<str>` shared by this thread's earlier calls (up to a
/// few thousand distinct names; past that, a new one each time).
fn shared_name(name: &str) -> Arc<str> {
    const MAX: usize = 4096;
    thread_local! {
        static NAMES: std::cell::RefCell<Names> = Default::default();
    }
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some(n) = names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        if names.len() < MAX {
            names.insert(name.into(), n.clone());
        }
        n
    })
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(&**k, v)?;
        }
        m.end()
    }
}

fn rfc3339_micros<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// One committed row change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// The change's ordinal inside its transaction, from 0.
    pub seq: u64,
    /// The WAL position of the change itself.
    pub lsn: Lsn,
    /// The transaction id.
    pub xid: u32,
    /// When the transaction committed.
    #[serde(serialize_with = "rfc3339_micros")]
    pub commit_time: DateTime<Utc>,
    /// `schema.table`.
    pub table: Arc<str>,
    /// What happened.
    pub op: Op,
    /// The replica identity columns of the row (after the change for inserts
    /// and updates, before it for deletes); `None` when the table has none.
    pub key: Option<Row>,
    /// The old key (`K`) or old row (`O`), only when the replica identity sent it.
    pub old: Option<Row>,
    /// The new row, without its unchanged-TOAST columns.
    pub new: Option<Row>,
    /// Columns whose large values were unchanged and therefore not sent.
    pub unchanged_toast: Vec<Arc<str>>,
}

/// A `pg_logical_emit_message` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogicalMessage {
    /// Its prefix.
    pub prefix: String,
    /// Its content: UTF-8 text as is; other bytes as `\x` and hex, like bytea.
    pub content: String,
    /// Whether it was emitted inside a transaction.
    pub transactional: bool,
    /// Its WAL position.
    #[serde(skip)]
    pub lsn: Lsn,
    /// Its place in its transaction, when transactional.
    #[serde(skip)]
    pub txn: Option<TxnRef>,
}

/// Where a transactional message sits: its transaction and its ordinal there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnRef {
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// The ordinal inside the transaction (shared with its changes).
    pub seq: u64,
    /// The transaction id.
    pub xid: u32,
    /// When the transaction committed.
    pub commit_time: DateTime<Utc>,
}

/// One assembled event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A transaction begins.
    Begin {
        /// Its id.
        xid: u32,
        /// The LSN its commit record will have.
        commit_lsn: Lsn,
        /// Its commit time.
        commit_time: DateTime<Utc>,
    },
    /// A table's shape was (re)announced.
    Relation(Arc<RelationInfo>),
    /// A row changed.
    Change(Change),
    /// A logical decoding message.
    Message(LogicalMessage),
    /// A transaction committed.
    Commit {
        /// The LSN of its commit record.
        commit_lsn: Lsn,
        /// The LSN just past it: confirm this once the transaction is safe.
        end_lsn: Lsn,
        /// Its commit time.
        commit_time: DateTime<Utc>,
    },
}

/// PostgreSQL timestamps count microseconds from 2000-01-01 UTC.
pub fn pg_time(us: pgoutput::PgTimestamp) -> DateTime<Utc> {
    const OFFSET_US: i64 = 946_684_800_000_000;
    DateTime::from_timestamp_micros(us.saturating_add(OFFSET_US)).unwrap_or_default()
}

#[derive(Debug)]
struct Txn {
    xid: u32,
    commit_lsn: Lsn,
    commit_time: DateTime<Utc>,
    seq: u64,
}

/// Turns pgoutput messages into [`Event`]s, keeping the relation cache and
/// the current transaction.
#[derive(Debug, Default)]
pub struct Assembler {
    relations: HashMap<u32, Arc<RelationInfo>>,
    types: HashMap<u32, String>,
    txn: Option<Txn>,
}

impl Assembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached shape of relation `oid`.
    pub fn relation(&self, oid: u32) -> Option<&Arc<RelationInfo>> {
        self.relations.get(&oid)
    }

    /// Whether a transaction is open (Begin seen, Commit not yet).
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Decodes one XLogData payload at `lsn` and appends its events to `out`.
    pub fn push(&mut self, lsn: Lsn, data: &bytes::Bytes, out: &mut Vec<Event>) -> Result<(), Error> {
        let msg = pgoutput::decode(data).map_err(|source| Error::Decode { lsn, source })?;
        self.handle(lsn, msg, out)
    }

    /// Handles one decoded message at `lsn`.
    pub fn handle(&mut self, lsn: Lsn, msg: Message, out: &mut Vec<Event>) -> Result<(), Error> {
        let bad = |what: String| Error::Protocol(format!("at WAL position {lsn}: {what}"));
        match msg {
            Message::Begin(b) => {
                if let Some(open) = &self.txn {
                    return Err(bad(format!(
                        "Begin of xid {} inside open transaction {}",
                        b.xid, open.xid
                    )));
                }
                let t = Txn {
                    xid: b.xid,
                    commit_lsn: Lsn(b.final_lsn),
                    commit_time: pg_time(b.commit_time),
                    seq: 0,
                };
                out.push(Event::Begin {
                    xid: t.xid,
                    commit_lsn: t.commit_lsn,
                    commit_time: t.commit_time,
                });
                self.txn = Some(t);
            }
            Message::Commit(c) => {
                let t = self
                    .txn
                    .take()
                    .ok_or_else(|| bad("Commit without a transaction".into()))?;
                if t.commit_lsn != Lsn(c.commit_lsn) {
                    return Err(bad(format!(
                        "Commit LSN {} differs from Begin's final LSN {}",
                        Lsn(c.commit_lsn),
                        t.commit_lsn
                    )));
                }
                out.push(Event::Commit {
                    commit_lsn: Lsn(c.commit_lsn),
                    end_lsn: Lsn(c.end_lsn),
                    commit_time: pg_time(c.commit_time),
                });
            }
            Message::Origin { .. } => {}
            Message::Type { oid, namespace, name } => {
                self.types.insert(oid, crate::pgtypes::custom_name(&namespace, &name));
            }
            Message::Relation(r) => {
                let columns = r
                    .columns
                    .iter()
                    .map(|c| Column {
                        name: Arc::from(c.name.as_str()),
                        type_oid: c.type_oid,
                        type_modifier: c.type_modifier,
                        type_name: crate::pgtypes::builtin_name(c.type_oid, c.type_modifier)
                            .or_else(|| self.types.get(&c.type_oid).cloned())
                            .unwrap_or_else(|| format!("oid {}", c.type_oid)),
                        key: c.is_key(),
                    })
                    .collect();
                let info = Arc::new(RelationInfo {
                    qualified: Arc::from(format!("{}.{}", r.namespace, r.name)),
                    oid: r.oid,
                    schema: r.namespace,
                    name: r.name,
                    replica_identity: match r.replica_identity {
                        b'n' => ReplicaIdentity::Nothing,
                        b'f' => ReplicaIdentity::Full,
                        b'i' => ReplicaIdentity::Index,
                        _ => ReplicaIdentity::Default,
                    },
                    columns,
                });
                self.relations.insert(info.oid, info.clone());
                out.push(Event::Relation(info));
            }
            Message::Insert { relation, new } => {
                let rel = self.rel(relation, lsn)?;
                let (new, toast) = row(&rel, &new, lsn)?;
                let key = key_of(&rel, &new);
                self.change(lsn, &rel, Op::Insert, key, None, Some(new), toast, out)?;
            }
            Message::Update { relation, old, new } => {
                let rel = self.rel(relation, lsn)?;
                let (new, toast) = row(&rel, &new, lsn)?;
                let old = old.map(|o| old_row(&rel, &o, lsn)).transpose()?;
                let key = key_of(&rel, &new);
                self.change(lsn, &rel, Op::Update, key, old, Some(new), toast, out)?;
            }
            Message::Delete { relation, old } => {
                let rel = self.rel(relation, lsn)?;
                let old = old_row(&rel, &old, lsn)?;
                let key = key_of(&rel, &old);
                self.change(lsn, &rel, Op::Delete, key, Some(old), None, Vec::new(), out)?;
            }
            Message::Truncate { relations, .. } => {
                for oid in relations {
                    let rel = self.rel(oid, lsn)?;
                    self.change(lsn, &rel, Op::Truncate, None, None, None, Vec::new(), out)?;
                }
            }
            Message::LogicalMessage(m) => {
                if m.transactional && m.prefix == crate::schema::ddl::PREFIX {
                    self.follow_rename(&m.content);
                }
                let txn = match (&mut self.txn, m.transactional) {
                    (Some(t), true) => {
                        let seq = t.seq;
                        t.seq += 1;
                        Some(TxnRef {
                            commit_lsn: t.commit_lsn,
                            seq,
                            xid: t.xid,
                            commit_time: t.commit_time,
                        })
                    }
                    _ => None,
                };
                out.push(Event::Message(LogicalMessage {
                    prefix: m.prefix,
                    content: text_or_hex(&m.content),
                    transactional: m.transactional,
                    lsn: Lsn(m.lsn),
                    txn,
                }));
            }
        }
        Ok(())
    }

    /// A DDL message naming a cached relation under another name (a table
    /// renamed, moved to another schema, or whose schema was renamed):
    /// later changes are the new name's. PostgreSQL describes a table again
    /// when its own catalog row changes, but not when its schema is renamed.
    fn follow_rename(&mut self, content: &[u8]) {
        let Ok(text) = std::str::from_utf8(content) else { return };
        let Ok(Some(msg)) = crate::schema::ddl::DdlMessage::parse(text) else {
            return;
        };
        let (Some(def), Some(cached)) = (&msg.table, self.relations.get(&msg.oid)) else {
            return;
        };
        if cached.schema == def.schema && cached.name == def.name {
            return;
        }
        let renamed = Arc::new(RelationInfo {
            qualified: Arc::from(def.qualified()),
            schema: def.schema.clone(),
            name: def.name.clone(),
            ..(**cached).clone()
        });
        self.relations.insert(msg.oid, renamed);
    }

    fn rel(&self, oid: u32, lsn: Lsn) -> Result<Arc<RelationInfo>, Error> {
        self.relations.get(&oid).cloned().ok_or_else(|| {
            Error::Protocol(format!(
                "at WAL position {lsn}: change for relation {oid} before its Relation message"
            ))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        lsn: Lsn,
        rel: &RelationInfo,
        op: Op,
        key: Option<Row>,
        old: Option<Row>,
        new: Option<Row>,
        unchanged_toast: Vec<Arc<str>>,
        out: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let t = self
            .txn
            .as_mut()
            .ok_or_else(|| Error::Protocol(format!("at WAL position {lsn}: {} outside a transaction", op.as_str())))?;
        let seq = t.seq;
        t.seq += 1;
        out.push(Event::Change(Change {
            commit_lsn: t.commit_lsn,
            seq,
            lsn,
            xid: t.xid,
            commit_time: t.commit_time,
            table: rel.qualified.clone(),
            op,
            key,
            old,
            new,
            unchanged_toast,
        }));
        Ok(())
    }
}

fn text_or_hex(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut s = String::with_capacity(2 + b.len() * 2);
            s.push_str("\\x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
    }
}

fn value(v: &[u8], rel: &RelationInfo, col: &str, lsn: Lsn) -> Result<String, Error> {
    std::str::from_utf8(v).map(str::to_owned).map_err(|_| {
        Error::Protocol(format!(
            "at WAL position {lsn}: value of {}.{col} is not valid UTF-8",
            rel.qualified()
        ))
    })
}

/// A tuple as a row; unchanged-TOAST columns are left out and listed.
fn row(rel: &RelationInfo, t: &pgoutput::Tuple, lsn: Lsn) -> Result<(Row, Vec<Arc<str>>), Error> {
    if t.len() != rel.columns.len() {
        return Err(Error::Protocol(format!(
            "at WAL position {lsn}: tuple has {} columns, but {} has {}",
            t.len(),
            rel.qualified(),
            rel.columns.len()
        )));
    }
    let mut values = Vec::with_capacity(t.len());
    let mut toast = Vec::new();
    for (col, d) in rel.columns.iter().zip(t) {
        match d {
            TupleData::Null => values.push((col.name.clone(), None)),
            TupleData::Text(v) => values.push((col.name.clone(), Some(value(v, rel, &col.name, lsn)?))),
            TupleData::UnchangedToast => toast.push(col.name.clone()),
            TupleData::Binary(_) => {
                return Err(Error::Protocol(format!(
                    "at WAL position {lsn}: binary value for {}.{}; waly never asks for binary mode",
                    rel.qualified(),
                    col.name
                )))
            }
        }
    }
    Ok((Row(values), toast))
}

fn old_row(rel: &RelationInfo, o: &pgoutput::OldTuple, lsn: Lsn) -> Result<Row, Error> {
    let (full, _) = row(rel, &o.tuple, lsn)?;
    Ok(match o.kind {
        OldKind::Full => full,
        OldKind::Key => key_of(rel, &full).unwrap_or_default(),
    })
}

/// The replica identity columns of `r`, or `None` when the table has none.
fn key_of(rel: &RelationInfo, r: &Row) -> Option<Row> {
    let cols: Vec<_> = rel
        .columns
        .iter()
        .filter(|c| c.key)
        .filter_map(|c| r.0.iter().find(|(n, _)| *n == c.name).cloned())
        .collect();
    (!cols.is_empty()).then_some(Row(cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_share_their_column_names() {
        let a: Row = serde_json::from_str(r#"{"id": "1", "name": "a"}"#).expect("row");
        let b: Row = serde_json::from_str(r#"{"name": "b", "id": "2"}"#).expect("row");
        assert!(Arc::ptr_eq(&a.0[0].0, &b.0[1].0) && Arc::ptr_eq(&a.0[1].0, &b.0[0].0));
        assert_eq!((&*a.0[0].0, &*a.0[1].0), ("id", "name"));
        assert!(!Arc::ptr_eq(&a.0[0].0, &a.0[1].0));
        // Names that differ only past a shared prefix stay apart.
        assert_ne!(&*shared_name("name_1"), &*shared_name("name_2"));
        // Rows of other columns, fewer or more, in turn, and escaped names:
        // each name read as written, whatever the row before named there.
        let texts = [
            r#"{"id": "1", "name": "a", "extra": null}"#,
            r#"{"id": "2"}"#,
            r#"{"i\u0064": "3", "na\"me": "c", "extra": "x", "more": "y"}"#,
            r#"{"name": "d", "id": "4"}"#,
            r#"{"id": "5", "name": "e", "extra": null}"#,
        ];
        let want: [&[(&str, Option<&str>)]; 5] = [
            &[("id", Some("1")), ("name", Some("a")), ("extra", None)],
            &[("id", Some("2"))],
            &[
                ("id", Some("3")),
                ("na\"me", Some("c")),
                ("extra", Some("x")),
                ("more", Some("y")),
            ],
            &[("name", Some("d")), ("id", Some("4"))],
            &[("id", Some("5")), ("name", Some("e")), ("extra", None)],
        ];
        for (text, want) in texts.iter().zip(want) {
            let row: Row = serde_json::from_str(text).expect("row");
            let got: Vec<(&str, Option<&str>)> = row.0.iter().map(|(k, v)| (&**k, v.as_deref())).collect();
            assert_eq!(got, want, "{text}");
            assert!(Arc::ptr_eq(&row.0[0].0, &a.0[0].0) == (&*row.0[0].0 == "id"), "{text}");
        }
    }

    #[test]
    fn changes_after_a_ddl_message_renaming_a_cached_table_carry_its_new_name() {
        use crate::pgoutput::{Begin, LogicalMessage, Relation, RelationColumn, TupleData};
        let mut asm = Assembler::new();
        let mut out = Vec::new();
        let insert = |id: &str| Message::Insert {
            relation: 7,
            new: vec![TupleData::Text(bytes::Bytes::from(id.to_string()))],
        };
        let ddl = |schema: &str, prefix: &str| {
            Message::LogicalMessage(LogicalMessage {
                transactional: true,
                lsn: 2,
                prefix: prefix.into(),
                content: bytes::Bytes::from(format!(
                    r#"{{"waly_ddl":1,"tag":"ALTER SCHEMA","command":"","oid":7,
                        "table":{{"oid":7,"schema":"{schema}","name":"a","relkind":"r","columns":[]}}}}"#
                )),
            })
        };
        let msgs = [
            Message::Begin(Begin {
                final_lsn: 10,
                commit_time: 0,
                xid: 1,
            }),
            Message::Relation(Relation {
                oid: 7,
                namespace: "s".into(),
                name: "a".into(),
                replica_identity: b'd',
                columns: vec![RelationColumn {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 23,
                    type_modifier: -1,
                }],
            }),
            insert("1"),
            // Another prefix, or no table of that OID's name change: nothing.
            ddl("s9", "waly"),
            insert("2"),
            ddl("s2", crate::schema::ddl::PREFIX),
            insert("3"),
        ];
        for m in msgs {
            asm.handle(Lsn(1), m, &mut out).expect("handled");
        }
        let tables: Vec<&str> = out
            .iter()
            .filter_map(|e| match e {
                Event::Change(c) => Some(&*c.table),
                _ => None,
            })
            .collect();
        assert_eq!(tables, ["s.a", "s.a", "s2.a"]);
        assert_eq!(
            asm.relation(7).map(|r| (r.schema.as_str(), r.columns.len())),
            Some(("s2", 1))
        );
    }
}
