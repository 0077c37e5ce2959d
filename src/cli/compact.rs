//! `waly compact`: a new snapshot made from the archive alone.

use super::ArchiveArgs;

/// Make a snapshot of every table from the archive (previous snapshot plus changes), without touching the source.
#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Compact as of this commit LSN (e.g. 0/16B3748) instead of the latest archived commit.
    #[arg(long)]
    pub lsn: Option<crate::Lsn>,
}

pub async fn run(args: &CompactArgs) -> anyhow::Result<()> {
    let store = args.archive.open()?;
    match crate::compact::compact(&store, args.lsn).await? {
        None => eprintln!("nothing to compact: no archived commit after the newest snapshot"),
        Some(c) => {
            let rows: u64 = c.manifest.tables.iter().map(|t| t.rows).sum();
            println!(
                "compacted {} table(s), {rows} rows, {} changes folded: snapshot at LSN {} (the state as of {}) in generation {}",
                c.manifest.tables.len(),
                c.changes,
                c.manifest.lsn,
                c.manifest.taken_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                c.manifest.generation
            );
        }
    }
    Ok(())
}
