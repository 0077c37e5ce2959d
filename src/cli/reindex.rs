//! `waly reindex`: rebuild the index from the archive.

use super::ArchiveArgs;

/// Rebuild the index (derived data) from the segments and snapshots.
#[derive(Debug, clap::Args)]
pub struct ReindexArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
}

pub async fn run(args: &ReindexArgs) -> anyhow::Result<()> {
    let store = args.archive.open()?;
    let s = crate::index::reindex(&store).await?;
    eprintln!(
        "indexed {} segments and {} snapshots into {} index objects",
        s.segments, s.snapshots, s.objects
    );
    Ok(())
}
