//! `waly tables`: what the archive holds, per table.

use super::ArchiveArgs;
use crate::archive::state;
use crate::log::{Item, LogOptions};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::io::Write;

/// List the archived tables: schema versions, first and last change, change count, latest snapshot.
#[derive(Debug, clap::Args)]
pub struct TablesArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// One JSON object per table.
    #[arg(long)]
    pub json: bool,
    /// Read every segment rather than the catalogs `waly run` keeps (the
    /// same answer, at the cost of a full read).
    #[arg(long)]
    pub scan: bool,
}

#[derive(Debug, Default)]
struct Stats {
    versions: u32,
    changes: u64,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    snapshot: Option<(String, crate::Lsn, DateTime<Utc>)>,
}

/// Each generation's catalog, brought up to date with its segments.
async fn from_catalogs(store: &crate::archive::Store) -> anyhow::Result<BTreeMap<String, Stats>> {
    let mut tables: BTreeMap<String, Stats> = BTreeMap::new();
    let gens = state::generations(store).await?;
    if gens.is_empty() && state::read_identity(store).await?.is_none() {
        return Err(crate::Error::ArchiveMismatch(format!(
            "{} is not a waly archive (no waly.json); check --archive",
            store.url()
        ))
        .into());
    }
    for g in gens {
        let Some((cat, fresh)) = crate::catalog::current(store, &g, None).await? else {
            continue; // only with a limit
        };
        if fresh.rebuilt && fresh.segments_read > 0 && store.is_encrypted().await? {
            tracing::info!(
                generation = g,
                segments = fresh.segments_read,
                "no catalog fits this generation: read its segments (in an encrypted archive `waly reindex` with the key writes one; `waly run` cannot)"
            );
        } else if fresh.rebuilt && fresh.segments_read > 0 {
            tracing::warn!(
                generation = g,
                segments = fresh.segments_read,
                "no catalog fits this generation: read its segments (`waly run` and `waly reindex` write one)"
            );
        }
        for (t, n) in cat.schema_versions() {
            tables.entry(t.to_string()).or_default().versions += n;
        }
        for (t, (lsn, at)) in cat.latest_snapshots() {
            tables.entry(t.to_string()).or_default().snapshot = Some((g.clone(), lsn, at));
        }
        for (t, c) in &cat.tables {
            let s = tables.entry(t.clone()).or_default();
            s.changes += c.changes;
            if s.first.is_none() {
                s.first = c.first;
            }
            if c.last.is_some() {
                s.last = c.last;
            }
        }
    }
    Ok(tables)
}

/// The same, from every segment, as `waly log` reads them.
async fn scan(store: &crate::archive::Store) -> anyhow::Result<BTreeMap<String, Stats>> {
    let mut tables: BTreeMap<String, Stats> = BTreeMap::new();
    for g in state::generations(store).await? {
        let st = state::load_generation(store, &g).await?;
        for t in st.schemas.tables() {
            tables.entry(t.to_string()).or_default().versions += st.schemas.versions(t).len() as u32;
        }
        for m in &st.manifests {
            for t in &m.tables {
                tables.entry(t.table.clone()).or_default().snapshot = Some((g.clone(), m.lsn, m.taken_at));
            }
        }
    }
    crate::log::walk(store, &LogOptions::default(), &mut |item| {
        if let Item::Change(c) = item {
            let c = &c.change;
            let s = tables.entry(c.table.to_string()).or_default();
            s.changes += 1;
            s.first.get_or_insert(c.commit_time);
            s.last = Some(c.commit_time);
        }
        Ok(())
    })
    .await?;
    Ok(tables)
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

pub async fn run(args: &TablesArgs) -> anyhow::Result<()> {
    let store = args.archive.open()?;
    let tables = if args.scan {
        scan(&store).await?
    } else {
        from_catalogs(&store).await?
    };
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if args.json {
        for (t, s) in &tables {
            let snap = s.snapshot.as_ref().map(|(g, l, at)| {
                serde_json::json!({"generation": g, "lsn": l, "taken_at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)})
            });
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({"table": t, "schema_versions": s.versions, "changes": s.changes,
                    "first_change": s.first.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                    "last_change": s.last.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                    "latest_snapshot": snap}),
            )?;
            out.write_all(b"\n")?;
        }
    } else {
        let w = tables.keys().map(|t| t.len()).max().unwrap_or(5).max(5);
        writeln!(
            out,
            "{:<w$}  {:>7}  {:>10}  {:<20}  {:<20}  latest snapshot",
            "table", "schemas", "changes", "first change", "last change"
        )?;
        for (t, s) in &tables {
            let snap = s.snapshot.as_ref().map_or("-".to_string(), |(g, l, at)| {
                format!("{} (LSN {l}, generation {g})", time(Some(*at)))
            });
            writeln!(
                out,
                "{t:<w$}  {:>7}  {:>10}  {:<20}  {:<20}  {snap}",
                s.versions,
                s.changes,
                time(s.first),
                time(s.last)
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
