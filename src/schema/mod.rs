//! Schema versions: each table's columns over time, as the archive records
//! them, and the lookups readers make in them.

use crate::event::Row;
use crate::Lsn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// The value (text form) that rows written before the column was added
    /// have: `ALTER TABLE ... ADD COLUMN ... DEFAULT` gives it to existing
    /// rows without writing them. Absent when there is none (NULL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// A version of a table's columns; changes after it use it.
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
    /// When it took effect: the commit time of that transaction (the time
    /// the snapshot was taken for a snapshot's version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<DateTime<Utc>>,
}

/// Whether two column lists describe the same table shape.
pub fn same_columns(a: &[ColumnDef], b: &[ColumnDef]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name && x.type_oid == y.type_oid && x.type_modifier == y.type_modifier && x.key == y.key
        })
}

/// The replica-identity columns of `row` under `columns`, in column order
/// (`None` when the table has none): the `key` of a change.
pub fn key_of(columns: &[ColumnDef], row: &Row) -> Option<Row> {
    let cols: Vec<_> = columns
        .iter()
        .filter(|c| c.key)
        .filter_map(|c| row.0.iter().find(|(n, _)| **n == *c.name).cloned())
        .collect();
    (!cols.is_empty()).then_some(Row(cols))
}

/// Every schema version of a generation's tables.
#[derive(Debug, Clone, Default)]
pub struct Schemas {
    by_table: BTreeMap<String, Vec<SchemaRecord>>,
}

impl Schemas {
    /// Adds (or replaces) a version.
    pub fn insert(&mut self, rec: SchemaRecord) {
        let versions = self.by_table.entry(rec.table.clone()).or_default();
        match versions.binary_search_by_key(&rec.version, |s| s.version) {
            Ok(i) => versions[i] = rec,
            Err(i) => versions.insert(i, rec),
        }
    }

    /// A table's versions, oldest first.
    pub fn versions(&self, table: &str) -> &[SchemaRecord] {
        self.by_table.get(table).map_or(&[], |v| v.as_slice())
    }

    /// The tables that have a version.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.by_table.keys().map(String::as_str)
    }

    /// A table's newest version.
    pub fn latest(&self, table: &str) -> Option<&SchemaRecord> {
        self.versions(table).last()
    }

    /// One version of a table.
    pub fn version(&self, table: &str, version: u32) -> Option<&SchemaRecord> {
        let v = self.versions(table);
        v.binary_search_by_key(&version, |s| s.version).ok().map(|i| &v[i])
    }

    /// The number the table's next version gets.
    pub fn next_version(&self, table: &str) -> u32 {
        self.latest(table).map_or(1, |s| s.version + 1)
    }

    /// The version in force at `lsn`: the newest that took effect at or before it.
    pub fn at(&self, table: &str, lsn: Lsn) -> Option<&SchemaRecord> {
        self.versions(table).iter().rev().find(|s| s.commit_lsn <= lsn)
    }

    /// The existing version that a table description seen in transaction
    /// `commit_lsn` is: one that took effect in that very transaction with
    /// these columns, else the one in force before it if it has them. A
    /// transaction streamed again after a restart thus finds the versions
    /// it created the first time instead of making new ones.
    pub fn reusable(&self, table: &str, commit_lsn: Lsn, columns: &[ColumnDef]) -> Option<&SchemaRecord> {
        let versions = self.versions(table);
        versions
            .iter()
            .rev()
            .find(|s| s.commit_lsn == commit_lsn && same_columns(&s.columns, columns))
            .or_else(|| {
                versions
                    .iter()
                    .rev()
                    .find(|s| s.commit_lsn < commit_lsn)
                    .filter(|s| same_columns(&s.columns, columns))
            })
    }
}
