//! `waly drop`: take waly away from a database: its slot, publication and
//! event triggers (the guard and DDL capture).

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
    let has_ddl_capture: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = $1)",
            &[&crate::schema::ddl::TRIGGER],
        )
        .await?
        .get(0);
    // Another pgoutput slot of this database may be another waly that still
    // needs the database-wide triggers: they stay then.
    let others: Vec<String> = client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots
              WHERE database = current_database() AND plugin = 'pgoutput' AND slot_name <> $1 ORDER BY 1",
            &[slot],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !others.is_empty() && (has_guard || has_ddl_capture) {
        eprintln!(
            "leaving the event triggers in place: slot(s) {} of this database may belong to another waly",
            others.join(", ")
        );
    }
    let has_guard = has_guard && others.is_empty();
    let has_ddl_capture = has_ddl_capture && others.is_empty();
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
    if has_ddl_capture {
        plan.push("DROP EVENT TRIGGER IF EXISTS waly_capture_ddl, waly_capture_drop, waly_note_rewrite;".into());
        plan.push(
            "DROP FUNCTION IF EXISTS public.waly_capture_ddl(), public.waly_note_rewrite(), public.waly_table_definition(oid), public.waly_published_tables(text);"
                .into(),
        );
    }
    if plan.is_empty() {
        eprintln!("nothing to drop: no slot {slot}, no publication {publication}, no event trigger to remove");
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
