//! `waly drop`: take waly away from a database: its slot, publication and guard.

use super::{SlotArgs, SourceArgs};
use crate::source::quote;
use std::io::{BufRead, Write};

/// Remove waly's replication slot, publication and guard trigger from the
/// database (the archive is left as it is). A forgotten slot makes
/// PostgreSQL keep WAL forever.
#[derive(Debug, clap::Args)]
pub struct DropArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub names: SlotArgs,
    /// Do it without asking.
    #[arg(long)]
    pub yes: bool,
}

pub async fn run(args: &DropArgs) -> anyhow::Result<()> {
    let info = args.source.conninfo()?;
    let slot = &args.names.slot;
    let publication = &args.names.publication;
    quote::slot(slot)?;
    let client = crate::source::tls::connect_sql(&info).await?;
    let slot_row = client
        .query_opt(
            "SELECT active_pid, pg_size_pretty(pg_current_wal_lsn() - restart_lsn) FROM pg_replication_slots
              WHERE slot_name = $1 AND database = current_database()",
            &[slot],
        )
        .await?;
    let has_publication: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[publication],
        )
        .await?
        .get(0);
    let has_guard: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'waly_guard_replica_identity')",
            &[],
        )
        .await?
        .get(0);
    if let Some(row) = &slot_row {
        if let Some(pid) = row.get::<_, Option<i32>>(0) {
            anyhow::bail!(
                "the slot {slot} is in use by process {pid} (a running `waly run`?); stop it first, then drop"
            );
        }
    }
    let mut plan = Vec::new();
    if let Some(row) = &slot_row {
        let retained: Option<String> = row.get(1);
        plan.push(format!(
            "SELECT pg_drop_replication_slot({});   -- retains {} of WAL",
            quote::literal(slot)?,
            retained.unwrap_or_else(|| "no".into())
        ));
    }
    if has_publication {
        plan.push(format!("DROP PUBLICATION {};", quote::ident(publication)?));
    }
    if has_guard {
        plan.push("DROP EVENT TRIGGER waly_guard_replica_identity;".into());
        plan.push("DROP FUNCTION IF EXISTS public.waly_guard_replica_identity();".into());
    }
    if plan.is_empty() {
        eprintln!("nothing to drop: no slot {slot}, no publication {publication}, no guard trigger");
        return Ok(());
    }
    let mut out = std::io::stdout();
    for p in &plan {
        writeln!(out, "{p}")?;
    }
    if !args.yes {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
        if !tty {
            anyhow::bail!("not dropping anything: pass --yes to confirm (the archive is not touched either way)");
        }
        eprint!("drop these? the archive stays as it is. type yes: ");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            anyhow::bail!("not dropped");
        }
    }
    for p in &plan {
        let sql = p.split("   --").next().unwrap_or(p);
        client.batch_execute(sql).await?;
    }
    eprintln!("dropped; the archive is unchanged and still readable");
    Ok(())
}
