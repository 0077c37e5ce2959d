//! Schema versions: each table's columns over time, as the archive records
//! them, and the lookups readers make in them.
//!
//! A version is learned three ways: from the catalog when a snapshot is
//! taken, from the DDL message waly's event trigger emits inside the DDL's
//! own transaction ([`ddl`]), or, without the trigger, from pgoutput's
//! Relation message completed from the catalog. Columns are identified by
//! `attnum` across versions, so [`shape`] can carry a row from the shape it
//! was written in to any later one: a rename keeps the values, a drop drops
//! them, an added column takes the value PostgreSQL gave existing rows.

pub mod ddl;
pub mod generated;
pub mod keys;
pub mod later;
pub mod shape;

use crate::event::Row;
use crate::Lsn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A column as archived in a schema version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Its number in the table (`pg_attribute.attnum`), which a rename
    /// keeps and no other column ever gets: its identity across versions.
    /// Absent in versions recorded before waly knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attnum: Option<i16>,
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
    /// Its place in the primary key (1, 2, ...), when known: the order of
    /// a positional key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_position: Option<i16>,
    /// Whether it is NOT NULL.
    pub not_null: bool,
    /// The value (text form) that rows written before the column was added
    /// have: `ALTER TABLE ... ADD COLUMN ... DEFAULT` gives it to existing
    /// rows without writing them. Absent when there is none (NULL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// Its default expression (`pg_get_expr`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// For a generated column: how, and from what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<Generated>,
    /// For an identity column: `always` or `by default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The enums and composite types its values are written in (its type,
    /// through arrays, domains and composites' attributes), by type OID.
    /// Absent for other types, and in versions recorded before waly knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_shape: Option<BTreeMap<String, TypeShape>>,
}

/// An enum's labels, or a composite type's attributes, as a column's
/// values were written in them (see [`ColumnDef::type_shape`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeShape {
    /// An enum's labels, in their order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// A composite type's attributes: (attnum, type OID), in attnum order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Vec<(i16, u32)>>,
}

impl TypeShape {
    /// Whether a value written under `self` may read differently under
    /// `later`, the same type's shape afterwards: an enum label renamed
    /// (gone from the labels: PostgreSQL cannot drop one), or a composite's
    /// attributes added, dropped or retyped (its text is positional). A
    /// label added, or an attribute renamed, changes no value's text.
    pub fn changes_values(&self, later: &TypeShape) -> bool {
        let labels_gone = match (&self.labels, &later.labels) {
            (Some(old), Some(new)) => old.iter().any(|l| !new.contains(l)),
            _ => false,
        };
        let attributes_changed = match (&self.attributes, &later.attributes) {
            (Some(old), Some(new)) => old != new,
            _ => false,
        };
        labels_gone || attributes_changed
    }
}

impl ColumnDef {
    /// A type of this column's that `later` (the same column in a later
    /// version) has in a shape that reads this version's values otherwise
    /// (see [`TypeShape::changes_values`]). Unknown (either version recorded
    /// before waly knew type shapes) is no change.
    pub fn type_changing_values(&self, later: &ColumnDef) -> Option<&str> {
        let (old, new) = (self.type_shape.as_ref()?, later.type_shape.as_ref()?);
        old.iter()
            .find(|(oid, shape)| new.get(*oid).is_some_and(|n| shape.changes_values(n)))
            .map(|(oid, _)| oid.as_str())
    }
}

impl ColumnDef {
    /// Whether `other` is the same column in another version: the same
    /// attnum where both know it, else the same name (versions recorded
    /// before attnums).
    pub fn same_column(&self, other: &ColumnDef) -> bool {
        match (self.attnum, other.attnum) {
            (Some(x), Some(y)) => x == y,
            _ => self.name == other.name,
        }
    }
}

/// A generated column's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generated {
    /// `stored` or `virtual` (PostgreSQL 18).
    pub kind: String,
    /// The generation expression (`pg_get_expr`).
    pub expression: String,
}

/// What a table is besides its columns, as recorded in a version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMeta {
    /// The table's OID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<u32>,
    /// `r` (a table) or `p` (a partitioned table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relkind: Option<String>,
    /// The owning role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `default`, `full`, `index` or `nothing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_identity: Option<String>,
    /// For a partitioned table: its partition key (`pg_get_partkeydef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// For a partition: its parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// For a partition: its bound (`FOR VALUES ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_bound: Option<String>,
    /// For a partitioned table: its partitions, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<Partition>,
}

/// A partition of a partitioned table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its bound (`FOR VALUES ...`, or `DEFAULT`).
    pub bound: String,
    /// Its own partition key, when it is partitioned in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
}

/// The DDL that made a version, as its event trigger saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ddl {
    /// The command tag (`ALTER TABLE`, `DROP TABLE`, ...).
    pub tag: String,
    /// The statement text the client sent (at most 4,000 characters).
    #[serde(default)]
    pub command: String,
    /// Whether PostgreSQL rewrote the table's rows for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rewritten: bool,
    /// The WAL position of the DDL message itself: the same each time its
    /// transaction is decoded, so a version recorded by an earlier session
    /// is recognised without comparing its (possibly sealed) definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_lsn: Option<Lsn>,
    /// In an encrypted archive's schema objects: `command` as one sealed
    /// frame, in lower-case hex (`command` is then empty). A reader with
    /// the key puts it back in `command` when it loads the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

impl Ddl {
    /// How an error names it: the statement on one line, shortened.
    pub fn describe(&self) -> String {
        let one_line: String = self.command.split_whitespace().collect::<Vec<_>>().join(" ");
        if one_line.is_empty() {
            return self.tag.clone();
        }
        let mut shown: String = one_line.chars().take(160).collect();
        if shown.len() < one_line.len() {
            shown.push_str("...");
        }
        shown
    }
}

/// A version of a table's columns; changes after it use it.
///
/// Room to grow: a user-written transform between two versions (an `up`
/// and a `down` expression per column, for migrations that move data in
/// ways the DDL alone does not say) would be a field of the version it
/// leads to; readers that do not know it must refuse to project across it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// How waly learned it: `snapshot`, `ddl` or `relation` (absent in
    /// versions recorded before waly said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The table besides its columns.
    #[serde(flatten)]
    pub meta: TableMeta,
    /// The DDL that made it, when captured by the event trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddl: Option<Ddl>,
    /// The table was dropped (or renamed away) here; no rows exist at or
    /// after this version under this name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
    /// In an encrypted archive (format 3): the version's literals - each
    /// column's `missing` and `default`, partition bounds - as one sealed
    /// frame in lower-case hex, those fields then absent or empty. A
    /// reader with the key puts them back when it loads the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

impl SchemaRecord {
    /// The columns that identify a row in the stream, in key order: the
    /// replica identity index's (attnum order) when the table publishes
    /// with `REPLICA IDENTITY USING INDEX`, else the primary key's; none
    /// when it has neither. Under an identity index PostgreSQL sends, for
    /// an update or delete, only that index's old values, and none when
    /// they did not change (even if the primary key did): the primary key
    /// cannot follow a row then, the index can (it is unique and NOT NULL).
    pub fn row_key(&self) -> Vec<&ColumnDef> {
        if self.meta.replica_identity.as_deref() == Some("index") && self.columns.iter().any(|c| c.key) {
            return self.columns.iter().filter(|c| c.key).collect();
        }
        let mut pk: Vec<&ColumnDef> = self.columns.iter().filter(|c| c.primary_key).collect();
        pk.sort_by_key(|c| c.key_position.unwrap_or(i16::MAX));
        pk
    }

    /// [`Self::row_key`]'s columns by attnum where known (else by name):
    /// equal for two versions when rows are followed by the same key.
    pub fn row_key_identity(&self) -> Vec<(Option<i16>, Option<String>)> {
        self.row_key()
            .iter()
            .map(|c| match c.attnum {
                Some(a) => (Some(a), None),
                None => (None, Some(c.name.clone())),
            })
            .collect()
    }

    /// Whether it describes the same table definition: columns with
    /// everything recorded of them, and the table's own properties.
    pub fn same_definition(&self, columns: &[ColumnDef], meta: &TableMeta, dropped: bool) -> bool {
        self.columns == columns && self.meta == *meta && self.dropped == dropped
    }
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

/// A version's columns as pgoutput describes them in `described`: its
/// generated columns only where the description has them (before
/// PostgreSQL 18 it never sends them).
fn streamed(version: &SchemaRecord, described: &[ColumnDef]) -> Vec<ColumnDef> {
    version
        .columns
        .iter()
        .filter(|c| c.generated.is_none() || described.iter().any(|d| d.name == c.name))
        .cloned()
        .collect()
}

/// Every schema version of a generation's tables (or of one table, for a
/// reader that follows only it).
#[derive(Debug, Clone, Default)]
pub struct Schemas {
    by_table: BTreeMap<String, Vec<SchemaRecord>>,
    /// Set when only this table's versions were loaded: records of other
    /// tables are then read without their key.
    only: Option<String>,
}

impl Schemas {
    /// An empty set that will hold the versions of `table` alone.
    pub fn of_table(table: &str) -> Self {
        Schemas {
            by_table: BTreeMap::new(),
            only: Some(table.to_string()),
        }
    }

    /// Whether `table`'s versions were loaded (all were, unless the set is
    /// [`Schemas::of_table`] another table).
    pub fn holds(&self, table: &str) -> bool {
        self.only.as_deref().is_none_or(|t| t == table)
    }

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

    /// The versions of `table` at which its row key changed (see
    /// [`SchemaRecord::row_key`]), in commit order. Versions are taken in
    /// commit-LSN order here: a snapshot's version is numbered when it is
    /// taken, which can be before a DDL committed ahead of the snapshot is
    /// decoded and numbered.
    pub fn row_key_changes(&self, table: &str) -> Vec<&SchemaRecord> {
        let mut versions: Vec<&SchemaRecord> = self.versions(table).iter().collect();
        versions.sort_by_key(|v| (v.commit_lsn, v.version));
        versions
            .windows(2)
            .filter(|w| w[0].row_key_identity() != w[1].row_key_identity())
            .map(|w| w[1])
            .collect()
    }

    /// How many versions, over all tables.
    pub fn count(&self) -> usize {
        self.by_table.values().map(Vec::len).sum()
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
    ///
    /// Generated columns a version has and the description lacks are not
    /// a difference: pgoutput before PostgreSQL 18 never sends them.
    pub fn reusable(&self, table: &str, commit_lsn: Lsn, columns: &[ColumnDef]) -> Option<&SchemaRecord> {
        let same = |s: &SchemaRecord| !s.dropped && same_columns(&streamed(s, columns), columns);
        let versions = self.versions(table);
        versions
            .iter()
            .rev()
            .find(|s| s.commit_lsn == commit_lsn && same(s))
            .or_else(|| {
                versions
                    .iter()
                    .rev()
                    .find(|s| s.commit_lsn < commit_lsn)
                    .filter(|s| same(s))
            })
    }

    /// The version in force for transaction `commit_lsn`: the one it made,
    /// else the newest before it (none when the table was dropped).
    pub fn in_force(&self, table: &str, commit_lsn: Lsn) -> Option<&SchemaRecord> {
        let versions = self.versions(table);
        versions
            .iter()
            .rev()
            .find(|s| s.commit_lsn == commit_lsn)
            .or_else(|| versions.iter().rev().find(|s| s.commit_lsn < commit_lsn))
            .filter(|s| !s.dropped)
    }

    /// When a table description seen in transaction `commit_lsn` names its
    /// columns as a *later* moment does while its columns are those in
    /// force, column for column by type: the version in force, and the
    /// names to put back. PostgreSQL 16 and later describe a table, the
    /// first time a walsender meets it, with the catalog of the moment it
    /// started, also for transactions committed before (decoded again).
    /// Recognised when a later version the DDL trigger recorded has these
    /// columns, or for a transaction committed before this session started
    /// (`replayed`; with the DDL trigger on, [`later::from_catalog`] says
    /// more).
    pub fn described_later(
        &self,
        table: &str,
        commit_lsn: Lsn,
        columns: &[ColumnDef],
        replayed: bool,
    ) -> Option<later::LaterDescription> {
        let versions = self.versions(table);
        let later_names = versions
            .iter()
            .any(|s| s.commit_lsn > commit_lsn && s.ddl.is_some() && same_columns(&streamed(s, columns), columns));
        if !later_names && !replayed {
            return None;
        }
        let now = self.in_force(table, commit_lsn)?;
        let in_force = streamed(now, columns);
        let fits = in_force.len() == columns.len()
            && in_force
                .iter()
                .zip(columns)
                .all(|(a, b)| a.type_oid == b.type_oid && a.type_modifier == b.type_modifier && a.key == b.key);
        let renames: Vec<(String, String)> = in_force
            .iter()
            .zip(columns)
            .filter(|(a, b)| a.name != b.name)
            .map(|(a, b)| (b.name.clone(), a.name.clone()))
            .collect();
        (fits && !renames.is_empty()).then(|| later::LaterDescription {
            version: now.version,
            renames,
            ..Default::default()
        })
    }

    /// A version learned from a table description that a crashed session
    /// recorded for a *later* transaction than `commit_lsn`, while this
    /// earlier transaction already has its shape: the version next after
    /// the one in force, with these columns. The caller has established
    /// that `commit_lsn` is not archived, so neither is that version's
    /// transaction: the version is not history yet, and it belongs to this
    /// transaction, the first that has its shape.
    pub fn described_earlier(&self, table: &str, commit_lsn: Lsn, columns: &[ColumnDef]) -> Option<&SchemaRecord> {
        let versions = self.versions(table);
        let in_force = versions.iter().rposition(|s| s.commit_lsn <= commit_lsn)?;
        let next = versions.get(in_force + 1)?;
        (next.commit_lsn > commit_lsn
            && next.ddl.is_none()
            && next.source.as_deref() == Some("relation")
            && !next.dropped
            && same_columns(&streamed(next, columns), columns))
        .then_some(next)
    }

    /// The existing version a DDL message seen in transaction `commit_lsn`
    /// describes: one made in that very transaction by this message (the
    /// transaction streamed again after a restart; recognised by the
    /// message's position `message_lsn`, or by its definition in versions
    /// that do not record it), else the one in force before it when the
    /// DDL changed nothing waly records. A version whose literals are
    /// sealed and not opened (a writer holds no key) is never the same
    /// definition: the DDL then makes a new version, the same columns.
    pub fn reusable_definition(
        &self,
        table: &str,
        commit_lsn: Lsn,
        message_lsn: Option<Lsn>,
        columns: &[ColumnDef],
        meta: &TableMeta,
        dropped: bool,
    ) -> Option<&SchemaRecord> {
        let same = |s: &SchemaRecord| s.sealed.is_none() && s.same_definition(columns, meta, dropped);
        let versions = self.versions(table);
        versions
            .iter()
            .rev()
            .find(|s| {
                s.commit_lsn == commit_lsn
                    && match (s.ddl.as_ref().and_then(|d| d.message_lsn), message_lsn) {
                        (Some(a), Some(b)) => a == b,
                        _ => same(s),
                    }
            })
            .or_else(|| {
                versions
                    .iter()
                    .rev()
                    .find(|s| s.commit_lsn <= commit_lsn)
                    .filter(|s| same(s))
            })
    }

    /// The version of `table` in force at `point`, among those that took
    /// effect at or before `archived` (the archive's last complete commit,
    /// or its snapshot when later): a version written ahead of its
    /// transaction's commit marker is not yet history.
    pub fn at_point(&self, table: &str, point: crate::log::Bound, archived: Lsn) -> Option<&SchemaRecord> {
        self.versions(table).iter().rev().find(|s| {
            s.commit_lsn <= archived
                && match point {
                    crate::log::Bound::Lsn(p) => s.commit_lsn <= p,
                    crate::log::Bound::Time(t) => s.commit_time.is_none_or(|c| c <= t),
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(attnum: i16, name: &str) -> ColumnDef {
        ColumnDef {
            attnum: Some(attnum),
            name: name.into(),
            type_name: "text".into(),
            type_oid: 25,
            type_modifier: -1,
            ..ColumnDef::default()
        }
    }

    #[test]
    fn rows_are_keyed_by_the_replica_identity_index_else_the_primary_key() {
        // id (primary key, second in key order after b), code, b.
        let mut cols = vec![col(1, "id"), col(2, "code"), col(3, "b")];
        cols[0].primary_key = true;
        cols[0].key_position = Some(2);
        cols[2].primary_key = true;
        cols[2].key_position = Some(1);
        let version = |identity: &str, key: &[usize]| {
            let mut columns = cols.clone();
            for &i in key {
                columns[i].key = true;
            }
            SchemaRecord {
                columns,
                meta: TableMeta {
                    replica_identity: Some(identity.into()),
                    ..TableMeta::default()
                },
                ..SchemaRecord::default()
            }
        };
        let names = |v: &SchemaRecord| v.row_key().iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&version("default", &[0, 2])), ["b", "id"]);
        assert_eq!(names(&version("full", &[0, 1, 2])), ["b", "id"]);
        assert_eq!(names(&version("index", &[1])), ["code"]);
        // An index with no column recorded as the identity's (a version
        // from before waly recorded it): the primary key.
        assert_eq!(names(&version("index", &[])), ["b", "id"]);
        // The identity compares by attnum: a rename keeps it.
        let mut renamed = version("index", &[1]);
        renamed.columns[1].name = "ref".into();
        assert_eq!(renamed.row_key_identity(), version("index", &[1]).row_key_identity());
        assert_ne!(
            version("index", &[1]).row_key_identity(),
            version("default", &[0, 2]).row_key_identity()
        );
        // Without a key of either kind, none.
        let mut keyless = version("full", &[0, 1, 2]);
        keyless.columns.iter_mut().for_each(|c| c.primary_key = false);
        assert!(keyless.row_key().is_empty());
    }

    #[test]
    fn a_description_with_later_column_names_is_archived_under_the_names_of_its_time() {
        let mut s = Schemas::default();
        let v = |version: u32, lsn: u64, names: [&str; 2], ddl: bool| SchemaRecord {
            commit_lsn: Lsn(lsn),
            table: "public.t".into(),
            version,
            columns: vec![col(1, names[0]), col(2, names[1])],
            ddl: ddl.then(Ddl::default),
            ..SchemaRecord::default()
        };
        s.insert(v(1, 100, ["id", "note"], false));
        s.insert(v(2, 300, ["id", "remark"], true));
        let described = vec![col(1, "id"), col(2, "remark")];
        // A transaction before the rename, described with the rename's names.
        let put_back = later::LaterDescription {
            version: 1,
            renames: vec![("remark".to_string(), "note".to_string())],
            ..Default::default()
        };
        assert_eq!(
            s.described_later("public.t", Lsn(200), &described, false),
            Some(put_back.clone())
        );
        // After it, the names are the version's own: nothing to put back.
        assert_eq!(s.described_later("public.t", Lsn(400), &described, false), None);
        // Without the DDL trigger's record, new names are a new version...
        let mut fallback = Schemas::default();
        fallback.insert(v(1, 100, ["id", "note"], false));
        fallback.insert(v(2, 300, ["id", "remark"], false));
        assert_eq!(fallback.described_later("public.t", Lsn(200), &described, false), None);
        // ...unless the transaction is decoded again in a later session
        // (PostgreSQL 16 and later describe it with the catalog of now).
        assert_eq!(
            fallback.described_later("public.t", Lsn(200), &described, true),
            Some(put_back)
        );
        // Another type is another shape, never names to put back.
        let mut retyped = described.clone();
        retyped[1].type_oid = 23;
        assert_eq!(fallback.described_later("public.t", Lsn(200), &retyped, true), None);
    }

    #[test]
    fn a_ddl_decoded_again_finds_its_version_by_the_message_position_also_when_sealed() {
        let mut s = Schemas::default();
        s.insert(SchemaRecord {
            commit_lsn: Lsn(100),
            table: "public.t".into(),
            version: 1,
            columns: vec![col(1, "id")],
            ..SchemaRecord::default()
        });
        let mut plan = col(2, "plan");
        plan.default = Some("'free'::text".into());
        let described = vec![col(1, "id"), plan];
        // As a writer reads it back from an encrypted archive: its literals
        // sealed, not opened.
        let sealed = SchemaRecord {
            commit_lsn: Lsn(300),
            table: "public.t".into(),
            version: 2,
            columns: vec![col(1, "id"), col(2, "plan")],
            ddl: Some(Ddl {
                message_lsn: Some(Lsn(290)),
                ..Ddl::default()
            }),
            sealed: Some("00".into()),
            ..SchemaRecord::default()
        };
        s.insert(sealed.clone());
        let meta = TableMeta::default();
        let found = |s: &Schemas, commit: u64, message: Option<u64>| {
            s.reusable_definition("public.t", Lsn(commit), message.map(Lsn), &described, &meta, false)
                .map(|r| r.version)
        };
        assert_eq!(found(&s, 300, Some(290)), Some(2));
        // Another DDL message of the same transaction: not this version.
        assert_eq!(found(&s, 300, Some(295)), None);
        // A later DDL that changed nothing: a sealed version cannot be
        // compared, so a new one is made; an open one is taken again.
        assert_eq!(found(&s, 400, Some(390)), None);
        let mut open = s.clone();
        open.insert(SchemaRecord {
            columns: described.clone(),
            sealed: None,
            ..sealed
        });
        assert_eq!(found(&open, 400, Some(390)), Some(2));
    }

    #[test]
    fn a_description_a_crashed_session_recorded_later_belongs_to_the_first_transaction_with_its_shape() {
        let mut s = Schemas::default();
        let v = |version: u32, lsn: u64, names: &[&str], source: &str| SchemaRecord {
            commit_lsn: Lsn(lsn),
            table: "public.t".into(),
            version,
            columns: names.iter().zip(1..).map(|(n, a)| col(a, n)).collect(),
            source: Some(source.into()),
            ..SchemaRecord::default()
        };
        s.insert(v(1, 100, &["id"], "snapshot"));
        s.insert(v(2, 500, &["id", "c1"], "relation"));
        let described = vec![col(1, "id"), col(2, "c1")];
        assert_eq!(
            s.described_earlier("public.t", Lsn(300), &described).map(|r| r.version),
            Some(2)
        );
        // Another shape, or a version of the DDL trigger (which knows when it happened): no.
        assert_eq!(s.described_earlier("public.t", Lsn(300), &[col(1, "id")]), None);
        let mut ddl = s.clone();
        ddl.insert(SchemaRecord {
            ddl: Some(Ddl::default()),
            ..v(2, 500, &["id", "c1"], "ddl")
        });
        assert_eq!(ddl.described_earlier("public.t", Lsn(300), &described), None);
        // At or after the version's own transaction it is in force, not later.
        assert_eq!(s.described_earlier("public.t", Lsn(500), &described), None);
        assert_eq!(s.described_earlier("public.t", Lsn(600), &described), None);
    }

    #[test]
    fn only_a_label_renamed_or_attributes_changed_change_values_already_written() {
        let e = |l: &[&str]| TypeShape {
            labels: Some(l.iter().map(|s| s.to_string()).collect()),
            attributes: None,
        };
        let c = |a: &[(i16, u32)]| TypeShape {
            labels: None,
            attributes: Some(a.to_vec()),
        };
        assert!(
            !e(&["sad", "ok"]).changes_values(&e(&["sad", "meh", "ok", "happy"])),
            "labels added"
        );
        assert!(e(&["sad", "ok"]).changes_values(&e(&["blue", "ok"])), "a label renamed");
        assert!(
            !c(&[(1, 23), (2, 23)]).changes_values(&c(&[(1, 23), (2, 23)])),
            "an attribute renamed"
        );
        assert!(
            c(&[(1, 23), (2, 23)]).changes_values(&c(&[(1, 23), (2, 23), (3, 25)])),
            "added"
        );
        assert!(
            c(&[(1, 23), (2, 23)]).changes_values(&c(&[(1, 23), (3, 23)])),
            "dropped, another added"
        );
        let col = |shape: Option<TypeShape>| ColumnDef {
            type_shape: shape.map(|s| [("16390".to_string(), s)].into()),
            ..ColumnDef::default()
        };
        assert_eq!(
            col(Some(e(&["sad"]))).type_changing_values(&col(Some(e(&["blue"])))),
            Some("16390")
        );
        assert_eq!(
            col(None).type_changing_values(&col(Some(e(&["blue"])))),
            None,
            "unknown before"
        );
    }
}
