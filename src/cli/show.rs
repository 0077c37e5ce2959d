//! `waly show`: print a table, or some of its rows, as they were.

use super::restore::{qualify, PointArgs, ProgressLine};
use super::ArchiveArgs;
use crate::restore::{self, Filter};
use std::io::Write;

/// How `waly show` prints rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowFormat {
    /// Aligned columns.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row.
    Json,
}

/// Print a table, or some rows, as they were at a point in time.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The table (schema.table; unqualified means public).
    pub table: String,
    #[command(flatten)]
    pub point: PointArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Only these rows (their key: the primary key, or the replica identity
    /// index under `REPLICA IDENTITY USING INDEX`; `col=val,col=val` or values
    /// in key order). Repeatable.
    #[arg(long = "key")]
    pub keys: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ShowFormat,
    /// At most this many rows.
    #[arg(long)]
    pub limit: Option<u64>,
    /// The columns shown: `as-was` (the table's columns at that point) or `latest` (today's names).
    #[arg(long, default_value = "as-was", value_parser = super::restore::parse_shape)]
    pub shape: restore::Shape,
}

/// Rows whose widths set the table layout (later rows may be wider).
const LAYOUT_ROWS: usize = 1000;

pub async fn run(args: &ShowArgs) -> anyhow::Result<()> {
    let (schema, name) = qualify(&args.table)?;
    let table = format!("{schema}.{name}");
    let store = args.archive.open()?;
    let plan = restore::plan(&store, &table, args.point.point()).await?;
    if let Some(note) = &plan.past_end {
        eprintln!("note: {note}");
    }
    let shape = restore::target_schema(&plan, args.shape)?;
    if !args.keys.is_empty() && shape.row_key().is_empty() {
        anyhow::bail!("--key needs a primary key (or a replica identity index), and {table} has neither");
    }
    let ident = restore::identity(&shape);
    let filter = Filter {
        keys: restore::parse_keys(&args.keys, &ident, &table)?,
        shape: args.shape,
    };
    let mut bar = ProgressLine::new(plan.bytes());
    let mut progress = |n: u64| bar.update(n);
    let mut rows = restore::rows(&store, &plan, &filter, &mut progress).await?;
    bar.done();
    let columns = rows.outcome.schema.columns.clone();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout());
    let limit = args.limit.unwrap_or(u64::MAX);
    let mut n = 0u64;
    let mut line = Vec::with_capacity(1024);
    let result: anyhow::Result<()> = (|| {
        match args.format {
            ShowFormat::Csv => {
                restore::csv_line(&mut line, columns.iter().map(|c| Some(c.name.as_str())));
                out.write_all(&line)?;
                while n < limit {
                    let Some(row) = rows.next_row()? else { break };
                    line.clear();
                    restore::csv_line(&mut line, restore::values(&columns, &row));
                    out.write_all(&line)?;
                    n += 1;
                }
            }
            ShowFormat::Json => {
                while n < limit {
                    let Some(row) = rows.next_row()? else { break };
                    let obj: serde_json::Map<String, serde_json::Value> = columns
                        .iter()
                        .zip(restore::values(&columns, &row))
                        .map(|(c, v)| (c.name.clone(), v.map_or(serde_json::Value::Null, |v| v.into())))
                        .collect();
                    serde_json::to_writer(&mut out, &obj)?;
                    out.write_all(b"\n")?;
                    n += 1;
                }
            }
            ShowFormat::Table => {
                let cell = |v: Option<&str>| v.map_or_else(|| "NULL".to_string(), |s| s.replace('\n', "\\n"));
                let mut first: Vec<Vec<String>> = Vec::new();
                while n < limit && first.len() < LAYOUT_ROWS {
                    let Some(row) = rows.next_row()? else { break };
                    first.push(restore::values(&columns, &row).map(cell).collect());
                    n += 1;
                }
                let mut widths: Vec<usize> = columns.iter().map(|c| c.name.chars().count()).collect();
                for r in &first {
                    for (w, v) in widths.iter_mut().zip(r) {
                        *w = (*w).max(v.chars().count());
                    }
                }
                let print = |out: &mut dyn Write, cells: &[String]| -> std::io::Result<()> {
                    let mut s = String::new();
                    for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                        if i > 0 {
                            s.push_str(" | ");
                        }
                        s.push_str(c);
                        s.push_str(&" ".repeat(w.saturating_sub(c.chars().count())));
                    }
                    writeln!(out, "{}", s.trim_end())
                };
                let header: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
                print(&mut out, &header)?;
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                writeln!(out, "{}", rule.join("-+-"))?;
                for r in &first {
                    print(&mut out, r)?;
                }
                while n < limit {
                    let Some(row) = rows.next_row()? else { break };
                    let cells: Vec<String> = restore::values(&columns, &row).map(cell).collect();
                    print(&mut out, &cells)?;
                    n += 1;
                }
                writeln!(out, "({n} row{})", if n == 1 { "" } else { "s" })?;
            }
        }
        out.flush()?;
        Ok(())
    })();
    if result.is_ok() && n == 0 && !args.keys.is_empty() {
        eprintln!(
            "no row of {table} has {} {} at that point",
            if args.keys.len() == 1 {
                "the key"
            } else {
                "any of the keys"
            },
            args.keys.join("; ")
        );
    }
    match result {
        Err(e) if e.downcast_ref::<std::io::Error>().map(|e| e.kind()) == Some(std::io::ErrorKind::BrokenPipe) => {
            Ok(())
        }
        other => other,
    }
}
