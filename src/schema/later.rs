//! Table descriptions from a later catalog.
//!
//! PostgreSQL 16 and later describe a table, the first time a walsender
//! meets it, with the catalog as it was when the walsender started, also
//! for transactions committed before that (decoded again after `waly run`
//! restarted, or after it was down), until a DDL it decodes invalidates
//! the description. The rows of those transactions are still in the shape
//! of their time, but PostgreSQL forms their values with the later
//! description: a column renamed later comes under its new name, one added
//! later comes with its default, one dropped later does not come at all,
//! and one retyped later comes read as the new type (a wrong value).
//!
//! With the DDL trigger on, the version in force for such a transaction is
//! known (a DDL in the transaction itself would have come first, as its
//! message), and the description's columns are matched to it by attnum
//! (the catalog of now names each described column's attnum): what the
//! transaction's rows really held is put back, and what PostgreSQL could
//! not send is archived as unknown, with the reason, never as a value.

use super::{ColumnDef, SchemaRecord};

/// How changes described with a later catalog are put back into the
/// version of their time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaterDescription {
    /// The version in force.
    pub version: u32,
    /// `(described, archived)` column names.
    pub renames: Vec<(String, String)>,
    /// Described columns added after the transaction: not part of its rows.
    pub added: Vec<String>,
    /// Columns of the version whose values PostgreSQL could not send.
    pub unknown: Vec<Unknown>,
}

/// A column of the version in force whose value is not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// Its name in the version.
    pub name: String,
    /// Its name in the description, when it was sent (retyped later: the
    /// value sent was read as the later type); `None` when it was dropped
    /// later and not sent.
    pub described: Option<String>,
    /// Its position among the version's columns.
    pub position: usize,
    /// Why it is unknown.
    pub why: String,
}

/// Matches `described` (the columns of a description of a transaction in
/// which `in_force` was the table's version) to the version by attnum,
/// through `catalog` (the table's columns now, with their attnums). `None`
/// when the description is the version's own, or when a described column
/// is not in the catalog (it changed again since the walsender started).
pub fn from_catalog(
    in_force: &SchemaRecord,
    described: &[ColumnDef],
    catalog: &[ColumnDef],
) -> Option<LaterDescription> {
    // A version recorded before waly knew attnums cannot be matched.
    if in_force.columns.iter().any(|c| c.attnum.is_none()) {
        return None;
    }
    let mut out = LaterDescription {
        version: in_force.version,
        ..LaterDescription::default()
    };
    let mut sent = Vec::with_capacity(described.len());
    for d in described {
        let attnum = catalog.iter().find(|c| c.name == d.name)?.attnum?;
        sent.push(attnum);
        let Some((position, f)) = in_force
            .columns
            .iter()
            .enumerate()
            .find(|(_, f)| f.attnum == Some(attnum))
        else {
            out.added.push(d.name.clone());
            continue;
        };
        if f.type_oid != d.type_oid || f.type_modifier != d.type_modifier {
            out.unknown.push(Unknown {
                name: f.name.clone(),
                described: Some(d.name.clone()),
                position,
                why: format!(
                    "the column {} was retyped later ({} then), and PostgreSQL sent this value read as the later \
                     type when it decoded the transaction again after waly run restarted (PostgreSQL 16 and later)",
                    f.name, d.type_name
                ),
            });
        } else if f.name != d.name {
            out.renames.push((d.name.clone(), f.name.clone()));
        }
    }
    for (position, f) in in_force.columns.iter().enumerate() {
        // Generated columns are not sent before PostgreSQL 18 (and are
        // computed by waly run); only a sent column can be missing.
        let missing = f.generated.is_none() && f.attnum.is_some_and(|a| !sent.contains(&a));
        if missing {
            out.unknown.push(Unknown {
                name: f.name.clone(),
                described: None,
                position,
                why: format!(
                    "the column {} was dropped later, and PostgreSQL did not send its value when it decoded the \
                     transaction again after waly run restarted (PostgreSQL 16 and later)",
                    f.name
                ),
            });
        }
    }
    let differs = !out.renames.is_empty() || !out.added.is_empty() || !out.unknown.is_empty();
    differs.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(attnum: i16, name: &str, type_oid: u32) -> ColumnDef {
        ColumnDef {
            attnum: Some(attnum),
            name: name.into(),
            type_name: if type_oid == 23 { "integer" } else { "bigint" }.into(),
            type_oid,
            type_modifier: -1,
            ..ColumnDef::default()
        }
    }

    #[test]
    fn a_later_catalog_is_matched_by_attnum_and_what_it_could_not_send_is_unknown() {
        let version = SchemaRecord {
            version: 4,
            columns: vec![col(1, "id", 23), col(2, "note", 23), col(3, "n", 23), col(4, "qty", 23)],
            ..SchemaRecord::default()
        };
        // Later: note renamed to remark, n dropped, qty retyped to bigint,
        // tier added.
        let catalog = vec![
            col(1, "id", 23),
            col(2, "remark", 23),
            col(4, "qty", 20),
            col(5, "tier", 23),
        ];
        let described = catalog
            .iter()
            .map(|c| ColumnDef {
                attnum: None,
                ..c.clone()
            })
            .collect::<Vec<_>>();
        let d = from_catalog(&version, &described, &catalog).expect("a later description");
        assert_eq!(d.version, 4);
        assert_eq!(d.renames, vec![("remark".to_string(), "note".to_string())]);
        assert_eq!(d.added, vec!["tier".to_string()]);
        let unknown: Vec<_> = d
            .unknown
            .iter()
            .map(|u| (u.name.as_str(), u.described.as_deref(), u.position))
            .collect();
        assert_eq!(unknown, vec![("qty", Some("qty"), 3), ("n", None, 2)]);
        assert!(d.unknown[0].why.contains("retyped later"), "{}", d.unknown[0].why);
        assert!(d.unknown[1].why.contains("dropped later"), "{}", d.unknown[1].why);
        // The version's own description: nothing to put back.
        let own: Vec<ColumnDef> = version.columns.clone();
        assert_eq!(from_catalog(&version, &own, &own), None);
        // A described column the catalog no longer has: no answer.
        assert_eq!(from_catalog(&version, &described, &catalog[..2]), None);
        // Nor for a version from before attnums were recorded.
        let mut old = version.clone();
        old.columns.iter_mut().for_each(|c| c.attnum = None);
        assert_eq!(from_catalog(&old, &described, &catalog), None);
    }
}
