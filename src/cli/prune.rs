//! `waly prune`: delete what no point inside the retention window needs.

use super::ArchiveArgs;

/// Delete segments, snapshots and generations that no point inside the retention window needs.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Keep every point of this recent past restorable (e.g. 30d, 12h, 90m).
    #[arg(long, value_parser = super::run::parse_duration)]
    pub keep: std::time::Duration,
    /// List what would be deleted, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: &PruneArgs) -> anyhow::Result<()> {
    let store = args.archive.open()?;
    let keep = chrono::Duration::from_std(args.keep)?;
    let window_start = chrono::Utc::now() - keep;
    let plan = crate::prune::plan(&store, window_start).await?;
    let verb = if args.dry_run { "would delete" } else { "deleting" };
    for (key, size) in &plan.objects {
        println!("{verb} {key} ({size} bytes)");
    }
    for g in &plan.generations {
        eprintln!("generation {g} ends before the window: {verb} all of it");
    }
    for (g, lsn) in &plan.abandoned {
        eprintln!(
            "generation {g}: the snapshot at LSN {lsn} was left unfinished (no manifest) and later snapshots replace it: marked abandoned, its parts {}",
            if args.dry_run { "would go" } else { "go" }
        );
    }
    for m in &plan.marks {
        eprintln!(
            "generation {}: history now starts at segment {} (commits from LSN {}), from the newest snapshot at or before {}",
            m.generation,
            m.first_kept,
            m.before_lsn,
            window_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    if !args.dry_run {
        crate::prune::execute(&store, &plan).await?;
    }
    eprintln!(
        "{} {} object(s), {} bytes; every point since {} stays restorable",
        if args.dry_run { "would delete" } else { "deleted" },
        plan.objects.len(),
        plan.bytes(),
        window_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    Ok(())
}
