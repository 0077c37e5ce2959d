//! Values out of a restore: COPY text and CSV lines, `CREATE TABLE` for a
//! schema version, and column values picked from a row's JSON.

use crate::event::Row;
use crate::segment::{ColumnDef, SchemaRecord};
use crate::Error;
use std::borrow::Cow;

/// Appends values as a line of COPY's text format (`\N` is NULL).
pub fn copy_text_line<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = Option<&'a str>>) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match v {
            None => out.extend_from_slice(b"\\N"),
            Some(v) => {
                for &b in v.as_bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        _ => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

/// Appends a CSV line as `COPY ... FROM ... (FORMAT csv)` reads it: NULL is
/// an unquoted empty field, every value is quoted (so `""` is the empty string).
pub fn csv_line<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = Option<&'a str>>) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(v) = v {
            out.push(b'"');
            out.extend_from_slice(v.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        }
    }
    out.push(b'\n');
}

/// `CREATE TABLE` for `schema` as `target_schema.target_name`: column
/// names, types, NOT NULL, generated columns with their expression (the
/// database computes them), the primary key; for a partitioned table its
/// partition key and a partition per partition the version records, named
/// `<target_name>_<partition>`. Statements are separated by `;\n`, the last
/// without it. `unlogged`: the table (or, when partitioned, its partitions)
/// is created UNLOGGED, see [`set_logged_sql`].
pub fn create_table_sql(
    target_schema: &str,
    target_name: &str,
    schema: &SchemaRecord,
    unlogged: bool,
) -> Result<String, Error> {
    use crate::source::quote::ident;
    let target = format!("{}.{}", ident(target_schema)?, ident(target_name)?);
    let mut cols = Vec::new();
    for c in &schema.columns {
        let generated = match &c.generated {
            Some(g) if g.kind == "virtual" => format!(" GENERATED ALWAYS AS ({}) VIRTUAL", g.expression),
            Some(g) => format!(" GENERATED ALWAYS AS ({}) STORED", g.expression),
            None => String::new(),
        };
        cols.push(format!(
            "{} {}{generated}{}",
            ident(&c.name)?,
            c.type_name,
            if c.not_null { " NOT NULL" } else { "" }
        ));
    }
    let pk: Vec<String> = schema
        .columns
        .iter()
        .filter(|c| c.primary_key)
        .map(|c| ident(&c.name))
        .collect::<Result<_, _>>()?;
    if !pk.is_empty() {
        cols.push(format!("PRIMARY KEY ({})", pk.join(", ")));
    }
    let partitioned = schema.meta.partition_key.is_some();
    let mut sql = format!(
        "CREATE {}TABLE {target} (\n    {}\n)",
        if unlogged && !partitioned { "UNLOGGED " } else { "" },
        cols.join(",\n    ")
    );
    if let Some(key) = &schema.meta.partition_key {
        sql.push_str(&format!(" PARTITION BY {key}"));
        for p in &schema.meta.partitions {
            let name = partition_name(target_name, p);
            let leaf = unlogged && p.partition_key.is_none();
            sql.push_str(&format!(
                ";\nCREATE {}TABLE {}.{} PARTITION OF {target} {}",
                if leaf { "UNLOGGED " } else { "" },
                ident(target_schema)?,
                ident(&name)?,
                p.bound
            ));
            if let Some(k) = &p.partition_key {
                sql.push_str(&format!(" PARTITION BY {k}"));
            }
        }
    }
    Ok(sql)
}

/// How a table a restore created starts its comment. `waly run` leaves such
/// tables out of the archive (a restore's output is not history); dropping
/// the comment makes a table an ordinary one again.
pub const RESTORED_COMMENT: &str = "waly: restored";

/// `COMMENT ON TABLE` marking `target_schema.target_name` as a restore of
/// `table` as of `point`.
pub fn restored_comment_sql(target_schema: &str, target_name: &str, table: &str, point: &str) -> Result<String, Error> {
    use crate::source::quote::{ident, literal};
    Ok(format!(
        "COMMENT ON TABLE {}.{} IS {}",
        ident(target_schema)?,
        ident(target_name)?,
        literal(&format!(
            "{RESTORED_COMMENT} from {table} as of {point}; waly does not capture it (drop this comment to capture it)"
        ))?
    ))
}

/// The statements that make a table [`create_table_sql`] created UNLOGGED
/// an ordinary one, before its transaction commits. A restore fills the
/// table while it is UNLOGGED, so its rows never reach the WAL as changes,
/// and `SET LOGGED` rewrites it, which logical decoding skips: a restore
/// into a database waly captures does not put its output into the archive.
pub fn set_logged_sql(target_schema: &str, target_name: &str, schema: &SchemaRecord) -> Result<String, Error> {
    use crate::source::quote::ident;
    let mut out = Vec::new();
    match &schema.meta.partition_key {
        None => out.push(format!(
            "ALTER TABLE {}.{} SET LOGGED",
            ident(target_schema)?,
            ident(target_name)?
        )),
        Some(_) => {
            for p in schema.meta.partitions.iter().filter(|p| p.partition_key.is_none()) {
                out.push(format!(
                    "ALTER TABLE {}.{} SET LOGGED",
                    ident(target_schema)?,
                    ident(&partition_name(target_name, p))?
                ));
            }
        }
    }
    Ok(out.join(";\n"))
}

/// What a restore names the partition `p` of the table it creates.
fn partition_name(target_name: &str, p: &crate::schema::Partition) -> String {
    format!("{target_name}_{}", p.name)
}

/// `schema` without its generated columns: what a restore writes (the
/// database computes the rest).
pub fn writable(schema: &SchemaRecord) -> SchemaRecord {
    SchemaRecord {
        columns: schema
            .columns
            .iter()
            .filter(|c| c.generated.is_none())
            .cloned()
            .collect(),
        ..schema.clone()
    }
}

/// The quoted column list of `schema`.
pub fn column_list(schema: &SchemaRecord) -> Result<String, Error> {
    Ok(schema
        .columns
        .iter()
        .map(|c| crate::source::quote::ident(&c.name))
        .collect::<Result<Vec<_>, _>>()?
        .join(", "))
}

/// A JSON text that borrows from its input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The values of the columns `names` (in that order) from a row's JSON
/// object, borrowed where possible; a column the row lacks gets its entry in
/// `absent` (the value rows written before the column existed have), or NULL.
pub fn pick<'a>(
    json: &'a [u8],
    names: &[&str],
    absent: &[Option<&'a str>],
) -> Result<Vec<Option<Cow<'a, str>>>, serde_json::Error> {
    struct Seed<'n, 'a>(&'n [&'n str], &'n [Option<&'a str>]);
    impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_, 'de> {
        type Value = Vec<Option<Cow<'de, str>>>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> serde::de::Visitor<'de> for Seed<'_, 'de> {
        type Value = Vec<Option<Cow<'de, str>>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a row object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<Option<Cow<'de, str>>> = (0..self.0.len())
                .map(|i| self.1.get(i).copied().flatten().map(Cow::Borrowed))
                .collect();
            while let Some(Text(k)) = m.next_key::<Text<'de>>()? {
                match self.0.iter().position(|n| *n == k) {
                    Some(i) => out[i] = m.next_value::<Option<Text<'de>>>()?.map(|t| t.0),
                    None => {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    serde::de::DeserializeSeed::deserialize(Seed(names, absent), &mut de)
}

/// Values of `row` in the order of `columns`; a column the row lacks has
/// the value rows written before it existed have (or NULL).
pub fn values<'a>(columns: &'a [ColumnDef], row: &'a Row) -> impl Iterator<Item = Option<&'a str>> + 'a {
    columns
        .iter()
        .map(move |c| match row.0.iter().find(|(n, _)| **n == *c.name) {
            Some((_, v)) => v.as_deref(),
            None => c.missing.as_deref(),
        })
}
