//! `waly schema`: the versions of a table's columns.

use super::ArchiveArgs;
use crate::archive::state;
use crate::segment::ColumnDef;
use std::io::Write;

/// List a table's schema versions: when each took effect and which columns it added, dropped or retyped.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// The table (schema.table; unqualified means public).
    pub table: String,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// One JSON object per version.
    #[arg(long)]
    pub json: bool,
}

/// What changed from one version's columns to the next's, column by
/// column (by attnum).
#[derive(Debug, Default, serde::Serialize)]
pub struct Diff {
    /// Columns added: `name type`.
    pub added: Vec<String>,
    /// Columns dropped.
    pub dropped: Vec<String>,
    /// Columns renamed: `old → new`.
    pub renamed: Vec<String>,
    /// Columns whose type changed: `name: old → new`.
    pub retyped: Vec<String>,
    /// Columns whose default, nullability, generation or identity changed,
    /// or whose type's enum labels or composite attributes did.
    pub altered: Vec<String>,
}

/// What changed from `before` to `after`.
pub fn diff(before: &[ColumnDef], after: &[ColumnDef]) -> Diff {
    let mut d = Diff::default();
    for c in after {
        let Some(b) = before.iter().find(|b| b.same_column(c)) else {
            d.added.push(format!("{} {}", c.name, c.type_name));
            continue;
        };
        if b.name != c.name {
            d.renamed.push(format!("{} → {}", b.name, c.name));
        }
        if b.type_oid != c.type_oid || b.type_modifier != c.type_modifier {
            d.retyped.push(format!("{}: {} → {}", c.name, b.type_name, c.type_name));
        }
        let what = [
            (b.default != c.default, "default"),
            (b.not_null != c.not_null, "not null"),
            (b.generated != c.generated, "generated"),
            (b.identity != c.identity, "identity"),
            (b.primary_key != c.primary_key, "primary key"),
            (
                b.type_shape.is_some() && c.type_shape.is_some() && b.type_shape != c.type_shape,
                "its type's enum labels or composite attributes",
            ),
        ];
        let changed: Vec<&str> = what.iter().filter(|(x, _)| *x).map(|(_, n)| *n).collect();
        if !changed.is_empty() {
            d.altered.push(format!("{} ({})", c.name, changed.join(", ")));
        }
    }
    for b in before {
        if !after.iter().any(|c| c.same_column(b)) {
            d.dropped.push(b.name.clone());
        }
    }
    d
}

pub async fn run(args: &SchemaArgs) -> anyhow::Result<()> {
    let (s, n) = crate::source::quote::split_qualified(&args.table)?;
    let table = format!("{s}.{n}");
    let store = args.archive.open()?;
    // Its DDL text, defaults and partition bounds are sealed: never shown
    // as if there were none.
    store.require_key().await?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut found = false;
    for g in state::generations(&store).await? {
        let st = state::load_generation(&store, &g).await?;
        let mut before: Option<&[ColumnDef]> = None;
        for v in st.schemas.versions(&table) {
            found = true;
            let d = match before {
                Some(b) => diff(b, &v.columns),
                None => Diff::default(),
            };
            let when = v.commit_time.map_or("-".to_string(), |t| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            });
            if args.json {
                serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({"generation": g, "version": v.version, "commit_lsn": v.commit_lsn,
                        "commit_time": v.commit_time, "columns": v.columns, "source": v.source,
                        "ddl": v.ddl, "table_dropped": v.dropped,
                        "left_publication": crate::schema::shape::left_publication(v), "owner": v.meta.owner,
                        "replica_identity": v.meta.replica_identity,
                        "added": d.added, "dropped": d.dropped, "renamed": d.renamed,
                        "retyped": d.retyped, "altered": d.altered}),
                )?;
                out.write_all(b"\n")?;
            } else {
                let cols: Vec<String> = v
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {}{}{}",
                            c.name,
                            c.type_name,
                            if c.not_null { " not null" } else { "" },
                            if c.primary_key { " pk" } else { "" }
                        )
                    })
                    .collect();
                let mut what = Vec::new();
                if before.is_none() {
                    what.push(format!("first version ({})", cols.join(", ")));
                }
                if v.dropped {
                    what.push(crate::schema::shape::ended(v).label().into());
                }
                for (label, list) in [
                    ("added", &d.added),
                    ("dropped", &d.dropped),
                    ("renamed", &d.renamed),
                    ("retyped", &d.retyped),
                    ("altered", &d.altered),
                ] {
                    if !list.is_empty() {
                        what.push(format!("{label} {}", list.join(", ")));
                    }
                }
                if what.is_empty() && v.source.as_deref() == Some("snapshot") {
                    what.push("as a new snapshot found it".into());
                } else if what.is_empty() {
                    what.push("table properties changed (key, replica identity, owner or partitions)".into());
                }
                if let Some(ddl) = &v.ddl {
                    what.push(format!("by {}", ddl.describe()));
                }
                writeln!(
                    out,
                    "generation {g} version {:>3}  LSN {:<12} {when}  {}",
                    v.version,
                    v.commit_lsn.to_string(),
                    what.join("; ")
                )?;
            }
            before = Some(&v.columns);
        }
    }
    out.flush()?;
    if !found {
        anyhow::bail!("table {table} is not in the archive (see `waly tables`)");
    }
    Ok(())
}
