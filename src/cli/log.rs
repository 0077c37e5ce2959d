//! `waly log`: print the archived changes.

use super::ArchiveArgs;
use crate::log::{Item, LogOptions};
use std::io::Write;

/// Print archived changes in commit order, each once.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Only these tables (comma-separated or repeated, schema.table;
    /// unqualified means public).
    #[arg(long, value_delimiter = ',')]
    pub table: Vec<String>,
    #[command(flatten)]
    pub span: super::SpanArgs,
    /// One JSON object per change (the fields of `waly tail --json`).
    #[arg(long)]
    pub json: bool,
    /// Also print snapshot rows (they are not changes).
    #[arg(long)]
    pub snapshot: bool,
}

pub async fn run(args: &LogArgs) -> anyhow::Result<()> {
    let store = args.archive.open()?;
    let mut tables = std::collections::BTreeSet::new();
    for t in &args.table {
        let (s, n) = crate::source::quote::split_qualified(t)?;
        let table = format!("{s}.{n}");
        crate::restore::check_archived(&store, &table).await?;
        tables.insert(table);
    }
    let opts = LogOptions {
        tables: (!tables.is_empty()).then_some(tables),
        messages: false,
        every_schema: false,
        since: args.span.since,
        until: args.span.until,
        snapshot: args.snapshot,
        skip_repeating_snapshots: false,
        after: None,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout);
    let mut line = Vec::with_capacity(1024);
    let json = args.json;
    let result = crate::log::walk(&store, &opts, &mut |item| {
        line.clear();
        match item {
            // A table's snapshot shows as its rows; one with none as one
            // line saying so (a consumer then knows the table was empty).
            Item::Generation { .. } | Item::Snapshot { rows: 1.., .. } => return Ok(()),
            Item::Snapshot { table, lsn, .. } => {
                if json {
                    let _ = serde_json::to_writer(
                        &mut line,
                        &serde_json::json!({"snapshot": {"table": table, "lsn": lsn, "empty": true}}),
                    );
                } else {
                    let _ = write!(line, "snapshot {lsn} {table} (no rows)");
                }
            }
            Item::Change(c) => crate::tail::format_change(&c.change, json, &mut line),
            Item::Message(m) => {
                if json {
                    let _ = serde_json::to_writer(
                        &mut line,
                        &serde_json::json!({"message": {"prefix": m.prefix, "content": m.content, "transactional": true,
                            "commit_lsn": m.commit_lsn, "seq": m.seq, "xid": m.xid,
                            "commit_time": m.commit_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}}),
                    );
                } else {
                    let _ = write!(
                        line,
                        "{} xid {} #{} message  {}: {}",
                        m.commit_lsn, m.xid, m.seq, m.prefix, m.content
                    );
                }
            }
            Item::SnapshotRow { table, lsn, row, .. } => {
                if json {
                    let _ = serde_json::to_writer(
                        &mut line,
                        &serde_json::json!({"snapshot": {"table": table, "lsn": lsn, "row": row}}),
                    );
                } else {
                    let _ = write!(
                        line,
                        "snapshot {lsn} {table} {}",
                        serde_json::to_string(row).unwrap_or_default()
                    );
                }
            }
        }
        line.push(b'\n');
        out.write_all(&line).map_err(crate::Error::Io)
    })
    .await;
    match result {
        Ok(stats) => {
            out.flush()?;
            tracing::debug!(
                shown = stats.shown,
                duplicates = stats.duplicates,
                incomplete = stats.incomplete,
                "log done"
            );
            Ok(())
        }
        Err(crate::Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}
