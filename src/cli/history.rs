//! `waly history`: every version of one row.

use super::ArchiveArgs;
use crate::history::{self, HistoryQuery, Version};
use std::io::Write;

/// List every version of a row: when, which transaction, what changed, and why.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The table (schema.table; unqualified means public).
    pub table: String,
    /// The row's key (its primary key, or under `REPLICA IDENTITY USING
    /// INDEX` that index's columns): the value, `col=val,col=val` for a
    /// composite key, or the values in key order (`42,7`). Each value in any
    /// text form of its type.
    pub key: String,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[command(flatten)]
    pub span: super::SpanArgs,
    /// One JSON object per version (the fields of `waly log --json`, plus
    /// version, changed and intent).
    #[arg(long)]
    pub json: bool,
    /// Whole rows, with whole values, instead of only what changed (shortened).
    #[arg(long)]
    pub full: bool,
    /// Read every segment instead of using the index (the answer is the same).
    #[arg(long)]
    pub scan: bool,
    /// Print on stderr how much of the archive was read.
    #[arg(long)]
    pub stats: bool,
}

/// A value in the human form: shortened unless `full`; a value the archive
/// does not know says why.
fn show(v: &Option<String>, full: bool) -> String {
    match v {
        None => "NULL".to_string(),
        Some(s) if crate::schema::shape::unknown(s).is_some() => {
            format!("unknown ({})", crate::schema::shape::unknown(s).unwrap_or_default())
        }
        Some(s) => {
            let flat = s.replace('\n', "\\n");
            if !full && flat.chars().count() > 60 {
                let head: String = flat.chars().take(40).collect();
                format!("'{head}…' ({} chars)", s.chars().count())
            } else {
                format!("'{flat}'")
            }
        }
    }
}

fn describe(v: &Version, full: bool) -> String {
    let cell = |name: &str, val: &Option<String>| {
        if v.unchanged_toast.iter().any(|t| t == name) {
            format!("{name}: {} (unchanged)", show(val, full))
        } else {
            format!("{name}: {}", show(val, full))
        }
    };
    let mut parts = Vec::new();
    if let Some((from, to)) = &v.key_change {
        parts.push(format!("key {from} → {to}"));
    }
    match (v.op, &v.row) {
        ("delete", _) | ("truncate", _) => parts.push(if v.op == "delete" {
            "deleted".into()
        } else {
            "truncated".into()
        }),
        ("snapshot", None) => parts.push("no longer in the table".into()),
        // An insert, a first snapshot, or a row back after time out of the
        // table (no row before): the whole row, not each column from NULL.
        (_, Some(row)) if full || (v.op != "update" && !v.after_ddl) || v.before.is_none() => {
            parts.extend(row.0.iter().map(|(n, val)| cell(n, val)));
        }
        (_, Some(row)) => {
            for name in &v.changed {
                let new = row.0.iter().find(|(n, _)| **n == **name).and_then(|(_, x)| x.clone());
                let old = v
                    .before
                    .as_ref()
                    .and_then(|b| b.0.iter().find(|(n, _)| **n == **name))
                    .and_then(|(_, x)| x.clone());
                parts.push(format!("{name}: {} → {}", show(&old, full), show(&new, full)));
            }
            if v.changed.is_empty() {
                parts.push("no column changed".into());
            }
        }
        _ => {}
    }
    parts.join(", ")
}

pub async fn run(args: &HistoryArgs) -> anyhow::Result<()> {
    let (schema, name) = crate::source::quote::split_qualified(&args.table)?;
    let table = format!("{schema}.{name}");
    let store = args.archive.open()?;
    let query = HistoryQuery {
        table: table.clone(),
        key: args.key.clone(),
        since: args.span.since,
        until: args.span.until,
    };
    let (_, versions, stats) = history::history(&store, &query, !args.scan).await?;
    if args.stats {
        let cost = store.read_cost();
        eprintln!(
            "read {} bytes: {} frames through the index, {} segments whole; {} GET requests to {} objects, {} listings",
            stats.bytes_read, stats.frames_read, stats.segments_scanned, cost.requests, cost.objects, cost.lists
        );
    }
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if args.json {
        for v in &versions {
            serde_json::to_writer(&mut out, &v.to_json(&table))?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        return Ok(());
    }
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none();
    let paint = |op: &str| -> String {
        if !colour {
            return format!("{op:<8}");
        }
        let code = match op {
            "insert" => "32",
            "update" => "33",
            "delete" | "truncate" => "31",
            _ => "36",
        };
        format!("\x1b[{code}m{op:<8}\x1b[0m")
    };
    writeln!(
        out,
        "{:>3}  {:<27}  {:<8}  {:<12}  {:>8}  what changed",
        "v", "commit time", "op", "commit LSN", "xid"
    )?;
    for v in &versions {
        let xid = v.change.as_ref().map_or(String::new(), |c| c.xid.to_string());
        let mut line = format!(
            "{:>3}  {:<27}  {}  {:<12}  {:>8}  {}",
            v.version,
            v.commit_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            paint(v.op),
            v.commit_lsn.to_string(),
            xid,
            describe(v, args.full)
        );
        if v.after_ddl {
            line.push_str("  [a new snapshot: a DDL before it (or time out of the publication) changed rows the stream does not show]");
        } else if v.op == "snapshot" {
            line.push_str("  [first known version: the base snapshot]");
        }
        if let Some(i) = &v.intent {
            line.push_str(&format!("  [intent: {i}]"));
        }
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Row;

    fn version(before: Option<Row>, row: Option<Row>) -> Version {
        Version {
            version: 2,
            generation: "00000001".into(),
            op: "snapshot",
            commit_lsn: crate::Lsn(1),
            commit_time: chrono::Utc::now(),
            change: None,
            row,
            before,
            changed: vec!["id".into(), "v".into()],
            unchanged_toast: Vec::new(),
            key_change: None,
            intent: None,
            after_ddl: true,
        }
    }

    fn row(v: &str) -> Row {
        Row(vec![("id".into(), Some("2".into())), ("v".into(), Some(v.into()))])
    }

    #[test]
    fn a_row_back_in_the_table_after_a_snapshot_shows_whole_and_one_changed_shows_what_changed() {
        assert_eq!(describe(&version(None, Some(row("b2"))), false), "id: '2', v: 'b2'");
        let mut changed = version(Some(row("b1")), Some(row("b2")));
        changed.changed = vec!["v".into()];
        assert_eq!(describe(&changed, false), "v: 'b1' → 'b2'");
        assert_eq!(
            describe(&version(Some(row("b1")), None), false),
            "no longer in the table"
        );
    }
}
