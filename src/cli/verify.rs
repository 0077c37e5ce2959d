//! `waly verify`: check the archive; exit 0 clean, 1 problems, 2 could not run.

use super::ArchiveArgs;
use std::io::Write;

/// Prove the archive whole and untouched, or name what is not (exit 0 clean, 1 problems, 2 could not run).
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// The report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The restore drill: restore each --table (default: every table of the archive the
    /// database still has) at the archive's latest point and compare it with the live table
    /// in this database, row for row.
    #[arg(long, value_name = "URL", hide_env_values = true)]
    pub against_source: Option<String>,
    /// A table for --against-source (repeatable; default: all).
    #[arg(long = "table", requires = "against_source")]
    pub tables: Vec<String>,
}

/// Whether the archive is clean.
pub async fn run(args: &VerifyArgs) -> anyhow::Result<bool> {
    let store = args.archive.open()?;
    let mut report = crate::verify::verify(&store).await?;
    if let Some(url) = &args.against_source {
        let info = crate::source::ConnInfo::parse(url)?;
        crate::verify::against_source(&store, &info, &args.tables, &mut report).await?;
    }
    let mut out = std::io::stdout();
    if args.json {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"clean": report.clean(), "report": report}),
        )?;
        writeln!(out)?;
    } else {
        for p in &report.problems {
            writeln!(
                out,
                "{}: {} {}: {}",
                if p.harmless { "note" } else { "PROBLEM" },
                serde_json::to_value(p.kind)?.as_str().unwrap_or_default(),
                p.object,
                p.detail
            )?;
        }
        for c in &report.compared {
            writeln!(
                out,
                "equal: {}: {} rows x {} columns restored at LSN {} match the live table",
                c.table, c.rows, c.columns, c.lsn
            )?;
        }
        writeln!(
            out,
            "{}: {} generation(s), {} segment(s), {} snapshot(s); {} problem(s), {} harmless note(s)",
            if report.clean() { "clean" } else { "NOT CLEAN" },
            report.generations,
            report.segments,
            report.snapshots,
            report.problems.iter().filter(|p| !p.harmless).count(),
            report.problems.iter().filter(|p| p.harmless).count()
        )?;
        if report.encrypted && !report.records_checked {
            writeln!(
                out,
                "encrypted: the hash chain, each object's ciphertext hash and the sealing were checked without a \
                 key; pass --identity (or WALY_PASSPHRASE) to decrypt every frame and check its records too"
            )?;
        }
    }
    Ok(report.clean())
}
