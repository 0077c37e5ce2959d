//! Schema versions in an encrypted archive: what may hold a literal the
//! client wrote is sealed under the session's data key: the DDL statement
//! text (any literal, DML included) and, from format 3, the version's
//! literals - each column's `missing` value and `default` expression,
//! partition bounds. In format 3 the rest (the shape) stays readable; in
//! format 4 the whole version is then sealed again under a schema key the
//! writer keeps (shapes.rs).

use crate::archive::Store;
use crate::schema::SchemaRecord;
use crate::Error;
use serde::{Deserialize, Serialize};

/// A version's literals, as sealed in its `sealed` field.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Literals {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    columns: Vec<ColumnLiterals>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partition_bound: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    partitions: Vec<PartitionBound>,
}

/// Column `index` (named `name`) of the version.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ColumnLiterals {
    index: usize,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    missing: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<String>,
    /// The labels of the enums its values are written in, by type OID
    /// (values themselves).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    labels: std::collections::BTreeMap<String, Vec<String>>,
}

/// Partition `index` (`schema.name`) of the version.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PartitionBound {
    index: usize,
    name: String,
    bound: String,
}

/// Takes `rec`'s literals out of it (`None` when it has none), enum
/// labels among them with `with_labels` (format 3, whose shapes are plaintext;
/// in format 4 they stay in the shape, sealed whole under the schema key,
/// where a writer that restarted reads them to tell a label renamed).
fn take_literals(rec: &mut SchemaRecord, with_labels: bool) -> Option<Literals> {
    let mut out = Literals::default();
    for (index, c) in rec.columns.iter_mut().enumerate() {
        let labels: std::collections::BTreeMap<String, Vec<String>> = c
            .type_shape
            .iter_mut()
            .flatten()
            .filter(|_| with_labels)
            .filter_map(|(oid, shape)| shape.labels.take().map(|l| (oid.clone(), l)))
            .collect();
        if c.missing.is_some() || c.default.is_some() || !labels.is_empty() {
            out.columns.push(ColumnLiterals {
                index,
                name: c.name.clone(),
                missing: c.missing.take(),
                default: c.default.take(),
                labels,
            });
        }
    }
    out.partition_bound = rec.meta.partition_bound.take();
    for (index, p) in rec.meta.partitions.iter_mut().enumerate() {
        if !p.bound.is_empty() {
            out.partitions.push(PartitionBound {
                index,
                name: format!("{}.{}", p.schema, p.name),
                bound: std::mem::take(&mut p.bound),
            });
        }
    }
    (out != Literals::default()).then_some(out)
}

/// Puts `lits` back into `rec`, refusing literals of another shape.
fn put_back(rec: &mut SchemaRecord, lits: Literals, what: &str) -> Result<(), Error> {
    let corrupt = |why: String| Error::Corrupt {
        key: what.to_string(),
        why,
    };
    for l in lits.columns {
        let c = rec
            .columns
            .get_mut(l.index)
            .filter(|c| c.name == l.name)
            .ok_or_else(|| {
                corrupt(format!(
                    "its sealed literals name column {:?}, which it does not have",
                    l.name
                ))
            })?;
        c.missing = l.missing;
        c.default = l.default;
        for (oid, labels) in l.labels {
            let shape = c.type_shape.as_mut().and_then(|s| s.get_mut(&oid)).ok_or_else(|| {
                corrupt(format!(
                    "its sealed literals name type {oid} of column {:?}, which it does not have",
                    l.name
                ))
            })?;
            shape.labels = Some(labels);
        }
    }
    rec.meta.partition_bound = lits.partition_bound;
    for l in lits.partitions {
        let p = rec
            .meta
            .partitions
            .get_mut(l.index)
            .filter(|p| format!("{}.{}", p.schema, p.name) == l.name)
            .ok_or_else(|| {
                corrupt(format!(
                    "its sealed literals name partition {:?}, which it does not have",
                    l.name
                ))
            })?;
        p.bound = l.bound;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// What a schema object's bytes hold in plaintext that an encrypted
/// archive seals (`None` when nothing): its statement text, and with
/// `literals` (format 3) a default, a value for older rows or a partition
/// bound.
pub fn plaintext_in_schema(bytes: &[u8], literals: bool) -> Option<&'static str> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Some("an object that is not a schema version");
    };
    let text = |p: &str| v.pointer(p).and_then(|c| c.as_str()).is_some_and(|c| !c.is_empty());
    if text("/ddl/command") {
        return Some("its DDL statement text");
    }
    if !literals {
        return None;
    }
    let each = |list: &str, field: &str| {
        v.get(list).and_then(|l| l.as_array()).is_some_and(|l| {
            l.iter()
                .any(|x| x.get(field).and_then(|f| f.as_str()).is_some_and(|f| !f.is_empty()))
        })
    };
    if each("columns", "missing") || each("columns", "default") {
        return Some("a column's default or its value for older rows");
    }
    let labels = v.get("columns").and_then(|l| l.as_array()).is_some_and(|l| {
        l.iter()
            .filter_map(|c| c.get("type_shape").and_then(|t| t.as_object()))
            .flat_map(|t| t.values())
            .any(|shape| shape.get("labels").is_some())
    });
    if labels {
        return Some("an enum's labels");
    }
    if text("/partition_bound") || each("partitions", "bound") {
        return Some("a partition bound");
    }
    None
}

impl Store {
    /// Whether this archive's schema versions seal their literals (an
    /// encrypted archive of format 3).
    pub async fn seals_literals(&self) -> Result<bool, Error> {
        Ok(self.is_encrypted().await? && self.crypt().seals_literals())
    }

    /// Schema version `rec` as this writer stores it: in an encrypted
    /// archive its DDL statement text, and in format 3 its literals, sealed
    /// under the writer's data key. Literals sealed by an earlier session
    /// (a version read back without a key) stay as they were.
    pub fn schema_to_store(&self, rec: &SchemaRecord) -> Result<SchemaRecord, Error> {
        let mut out = rec.clone();
        let Some(sealer) = self.sealer()? else {
            return Ok(out);
        };
        if let Some(ddl) = out.ddl.as_mut().filter(|d| !d.command.is_empty()) {
            ddl.sealed = Some(hex(&sealer.seal(ddl.command.as_bytes())?));
            ddl.command.clear();
        }
        if self.crypt().seals_literals() {
            if let Some(lits) = take_literals(&mut out, !self.crypt().seals_shapes_whole()) {
                let json = serde_json::to_vec(&lits).map_err(|e| Error::Protocol(e.to_string()))?;
                out.sealed = Some(hex(&sealer.seal(&json)?));
            }
        }
        Ok(out)
    }

    /// Puts back what is sealed in a schema version read from the archive
    /// (its DDL statement text, its literals), when this reader has a key
    /// (a writer has none: it compares versions it did not write by their
    /// readable shape, and by their DDL message's position).
    pub async fn open_schema(&self, rec: &mut SchemaRecord) -> Result<(), Error> {
        let statement = rec.ddl.as_ref().and_then(|d| d.sealed.clone());
        if statement.is_none() && rec.sealed.is_none() {
            return Ok(());
        }
        let what = format!("schema version {} of {}", rec.version, rec.table);
        if !self.crypt().has_source() {
            if !self.is_encrypted().await? {
                return Err(super::sealed_in_plain(&what));
            }
            return Ok(());
        }
        if let Some(sealed) = statement {
            let plain = self.open_hex(&what, &sealed, "DDL text").await?;
            if let Some(ddl) = rec.ddl.as_mut() {
                ddl.command = String::from_utf8_lossy(&plain).into_owned();
                ddl.sealed = None;
            }
        }
        if let Some(sealed) = rec.sealed.take() {
            let plain = self.open_hex(&what, &sealed, "literals").await?;
            let lits: Literals = serde_json::from_slice(&plain).map_err(|e| Error::Corrupt {
                key: what.clone(),
                why: format!("its sealed literals are not readable: {e}"),
            })?;
            put_back(rec, lits, &what)?;
        }
        Ok(())
    }

    async fn open_hex(&self, what: &str, sealed: &str, part: &str) -> Result<bytes::Bytes, Error> {
        let bytes = unhex(sealed).ok_or_else(|| Error::Corrupt {
            key: what.to_string(),
            why: format!("its sealed {part} is not hex"),
        })?;
        self.open_frames(what, bytes.into()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_a_statement_is_seen() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        let sealed = |b: &[u8], literals: bool| plaintext_in_schema(b, literals).is_none();
        assert!(sealed(
            br#"{"table":"t","ddl":{"tag":"ALTER TABLE","command":""}}"#,
            true
        ));
        assert!(sealed(br#"{"table":"t"}"#, true));
        assert!(!sealed(
            br#"{"table":"t","ddl":{"tag":"ALTER TABLE","command":"ALTER ..."}}"#,
            false
        ));
        assert!(!sealed(b"not json", false));
        let default = br#"{"table":"t","columns":[{"name":"a","default":"'x'::text"}]}"#;
        assert!(sealed(default, false) && !sealed(default, true));
        let missing = br#"{"table":"t","columns":[{"name":"a","missing":"x"}]}"#;
        assert!(!sealed(missing, true));
        assert!(!sealed(
            br#"{"table":"t","partition_bound":"FOR VALUES IN ('x')"}"#,
            true
        ));
        assert!(!sealed(
            br#"{"table":"t","partitions":[{"schema":"s","name":"p","bound":"DEFAULT"}]}"#,
            true
        ));
        assert!(sealed(
            br#"{"table":"t","partitions":[{"schema":"s","name":"p","bound":""}]}"#,
            true
        ));
    }

    #[test]
    fn literals_taken_out_come_back_in_their_places() {
        use crate::schema::{ColumnDef, Partition};
        let mut rec = SchemaRecord {
            table: "public.t".into(),
            version: 2,
            columns: vec![
                ColumnDef {
                    name: "id".into(),
                    ..ColumnDef::default()
                },
                ColumnDef {
                    name: "plan".into(),
                    missing: Some("free".into()),
                    default: Some("'free'::text".into()),
                    ..ColumnDef::default()
                },
                ColumnDef {
                    name: "mood".into(),
                    type_shape: Some(
                        [(
                            "16390".to_string(),
                            crate::schema::TypeShape {
                                labels: Some(vec!["sad".into(), "ok".into()]),
                                attributes: None,
                            },
                        )]
                        .into(),
                    ),
                    ..ColumnDef::default()
                },
            ],
            ..SchemaRecord::default()
        };
        rec.meta.partition_bound = Some("FOR VALUES IN ('eu')".into());
        rec.meta.partitions = vec![Partition {
            schema: "public".into(),
            name: "t_us".into(),
            bound: "FOR VALUES IN ('us')".into(),
            partition_key: None,
        }];
        let plain = rec.clone();
        let lits = take_literals(&mut rec, true).expect("it has literals");
        let stored = serde_json::to_vec(&rec).expect("json");
        assert_eq!(plaintext_in_schema(&stored, true), None);
        for secret in ["free", "'eu'", "'us'", "sad"] {
            assert!(!String::from_utf8_lossy(&stored).contains(secret), "{secret}");
        }
        put_back(&mut rec, lits, "v").expect("put back");
        assert_eq!(rec, plain);
        assert_eq!(
            plaintext_in_schema(&serde_json::to_vec(&plain).expect("json"), true),
            Some("a column's default or its value for older rows")
        );
        let labels_only = SchemaRecord {
            columns: vec![plain.columns[2].clone()],
            ..SchemaRecord::default()
        };
        assert_eq!(
            plaintext_in_schema(&serde_json::to_vec(&labels_only).expect("json"), true),
            Some("an enum's labels")
        );
        // Literals of another shape are refused, never put in a wrong place.
        let mut other = plain.clone();
        let lits = take_literals(&mut other, true).expect("literals");
        other.columns.swap(0, 1);
        assert!(matches!(put_back(&mut other, lits, "v"), Err(Error::Corrupt { .. })));
        let mut none = SchemaRecord::default();
        assert_eq!(take_literals(&mut none, true), None);
    }
}
