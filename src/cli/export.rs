//! `waly export`: the archive as a Parquet change log per table.

use super::ArchiveArgs;
use crate::export::{export, ExportOptions};

/// Write each table's changes (and its base snapshot) as a Parquet dataset,
/// continuing from where the last export to the same place stopped.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Where the dataset goes: a directory, file:///path, s3://bucket/prefix, gs://... or az://...
    #[arg(long)]
    pub to: String,
    /// The file format (only parquet).
    #[arg(long, default_value = "parquet", value_parser = ["parquet"])]
    pub format: String,
    /// Only these tables (comma-separated, schema.table; unqualified means public).
    #[arg(long, value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    #[command(flatten)]
    pub span: super::SpanArgs,
    /// Start a new file at the next transaction once a file holds this many MiB.
    #[arg(long, default_value_t = 128)]
    pub file_mib: usize,
}

pub async fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let store = args.archive.open()?;
    let dest = crate::archive::Store::open(&args.to)?;
    let tables = match &args.tables {
        Some(ts) => Some(
            ts.iter()
                .map(|t| crate::source::quote::split_qualified(t).map(|(s, n)| format!("{s}.{n}")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let opts = ExportOptions {
        tables,
        since: args.span.since,
        until: args.span.until,
        file_bytes: args.file_mib.max(1) << 20,
    };
    let stats = export(&store, &dest, &opts).await?;
    eprintln!(
        "exported {} changes and {} snapshot rows in {} files ({} bytes) to {}{}",
        stats.changes,
        stats.snapshot_rows,
        stats.files,
        stats.bytes,
        args.to,
        if stats.removed > 0 {
            format!("; removed {} files of an export that did not finish", stats.removed)
        } else {
            String::new()
        }
    );
    if stats.intents_indexed + stats.intents_scanned > 0 {
        eprintln!(
            "looked up the intent of {} large transactions through the index and of {} by reading their segments",
            stats.intents_indexed, stats.intents_scanned
        );
    }
    Ok(())
}
