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

/// What changed from `before` to `after`: added, dropped and retyped columns.
pub fn diff(before: &[ColumnDef], after: &[ColumnDef]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let find = |cols: &[ColumnDef], n: &str| cols.iter().find(|c| c.name == n).cloned();
    let added = after
        .iter()
        .filter(|c| find(before, &c.name).is_none())
        .map(|c| format!("{} {}", c.name, c.type_name))
        .collect();
    let dropped = before
        .iter()
        .filter(|c| find(after, &c.name).is_none())
        .map(|c| c.name.clone())
        .collect();
    let retyped = after
        .iter()
        .filter_map(|c| {
            let b = find(before, &c.name)?;
            (b.type_oid != c.type_oid || b.type_modifier != c.type_modifier)
                .then(|| format!("{}: {} → {}", c.name, b.type_name, c.type_name))
        })
        .collect();
    (added, dropped, retyped)
}

pub async fn run(args: &SchemaArgs) -> anyhow::Result<()> {
    let (s, n) = crate::source::quote::split_qualified(&args.table)?;
    let table = format!("{s}.{n}");
    let store = args.archive.open()?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut found = false;
    for g in state::generations(&store).await? {
        let st = state::load_generation(&store, &g).await?;
        let mut before: Option<&[ColumnDef]> = None;
        for v in st.schemas.versions(&table) {
            found = true;
            let (added, dropped, retyped) = match before {
                Some(b) => diff(b, &v.columns),
                None => (Vec::new(), Vec::new(), Vec::new()),
            };
            let when = v.commit_time.map_or("-".to_string(), |t| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            });
            if args.json {
                serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({"generation": g, "version": v.version, "commit_lsn": v.commit_lsn,
                        "commit_time": v.commit_time, "columns": v.columns,
                        "added": added, "dropped": dropped, "retyped": retyped}),
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
                if !added.is_empty() {
                    what.push(format!("added {}", added.join(", ")));
                }
                if !dropped.is_empty() {
                    what.push(format!("dropped {}", dropped.join(", ")));
                }
                if !retyped.is_empty() {
                    what.push(format!("retyped {}", retyped.join(", ")));
                }
                if what.is_empty() {
                    what.push("key or identity changed".into());
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
