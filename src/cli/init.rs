//! `waly init`: prepare the database and the archive.

use super::{ArchiveArgs, SlotArgs, SourceArgs};
use crate::init::InitOptions;

/// Check the server, create the publication and the slot (safe to run twice).
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[command(flatten)]
    pub names: SlotArgs,
    /// Publish only these tables (comma-separated; schema.table or table). Default: all tables.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Print the SQL it would run, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Give published tables without a primary key REPLICA IDENTITY FULL.
    #[arg(long, conflicts_with = "skip_unkeyed")]
    pub replica_identity_full: bool,
    /// Leave tables without a primary key out of the publication.
    #[arg(long)]
    pub skip_unkeyed: bool,
    /// Do not install the event trigger that protects tables created later (it needs a superuser).
    #[arg(long)]
    pub no_guard: bool,
    /// Do not install the event triggers that record each DDL in the archive as it happens (they need a superuser).
    #[arg(long)]
    pub no_ddl_capture: bool,
}

pub async fn run(args: &InitArgs) -> anyhow::Result<()> {
    let info = args.source.conninfo()?;
    let store = args.archive.open()?;
    let opts = InitOptions {
        slot: args.names.slot.clone(),
        publication: args.names.publication.clone(),
        tables: args.tables.clone(),
        dry_run: args.dry_run,
        replica_identity_full: args.replica_identity_full,
        skip_unkeyed: args.skip_unkeyed,
        no_guard: args.no_guard,
        no_ddl_capture: args.no_ddl_capture,
    };
    let mut out = std::io::stdout();
    crate::init::init(&info, &store, &opts, &mut out).await?;
    Ok(())
}
