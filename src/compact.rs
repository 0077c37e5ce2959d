//! `waly compact`: a snapshot made from the archive alone, without touching
//! the source. Each table's state at a point (its previous snapshot plus the
//! changes since, exactly as `waly restore` computes it) is written as a new
//! snapshot of the generation, so later restores, and `waly prune`, can start
//! from there.
//!
//! The new snapshot's LSN is one past the last archived commit at the point,
//! so it holds exactly the commits before it (the rule every snapshot
//! follows); its `taken_at` is that commit's time, the moment its state
//! describes, and `compacted_at` says when it was made.

use crate::archive::state::{self, to_json, Manifest};
use crate::archive::{layout, Store};
use crate::log::Bound;
use crate::metrics::Metrics;
use crate::restore::{self, Filter};
use crate::{Error, Lsn};

/// What a compaction made (or would make).
#[derive(Debug, Clone)]
pub struct Compacted {
    /// The manifest written.
    pub manifest: Manifest,
    /// Changes folded into it, over all tables.
    pub changes: u64,
}

/// Compacts the latest generation's tables at the last archived commit at
/// or before `upto` (the latest when `None`). `Ok(None)` when there is
/// nothing to do: no commit after the newest snapshots.
pub async fn compact(store: &Store, upto: Option<Lsn>) -> Result<Option<Compacted>, Error> {
    let gens = state::generations(store).await?;
    let Some(gen) = gens.last() else {
        return Err(Error::NotInArchive(format!(
            "{} holds no history yet (no generation)",
            store.url()
        )));
    };
    let st = state::load_generation(store, gen).await?;
    let Some(last) = st.tail.last_commit else {
        return Ok(None);
    };
    let point = upto.map_or(last.commit_lsn, |u| u.min(last.commit_lsn));
    let mut tables: Vec<String> = st
        .manifests
        .iter()
        .filter(|m| m.lsn <= point)
        .flat_map(|m| m.tables.iter().map(|t| t.table.clone()))
        .collect();
    tables.sort();
    tables.dedup();
    // The state of each table, to temporary sorted runs; the newest commit
    // folded in decides the snapshot's LSN.
    let mut states = Vec::new();
    let mut cut: Option<(Lsn, chrono::DateTime<chrono::Utc>)> = None;
    let mut changes = 0;
    for table in &tables {
        let plan = restore::plan(store, table, Bound::Lsn(point)).await?;
        if plan.generation != *gen {
            continue;
        }
        let rows = restore::rows(store, &plan, &Filter::default(), &mut |_| {}).await?;
        if let Some(c) = rows.outcome.cut {
            cut = cut.max(Some(c));
        }
        changes += rows.outcome.changes;
        states.push((table.clone(), rows));
    }
    let Some((cut_lsn, cut_time)) = cut else {
        return Ok(None);
    };
    let lsn = Lsn(cut_lsn.as_u64() + 1);
    if st.manifests.iter().any(|m| m.lsn >= lsn) {
        // A snapshot at or after this point exists already.
        return Ok(None);
    }
    let metrics = Metrics::default();
    let mut index = crate::index::Builder::default();
    let mut manifest = Manifest {
        waly_snapshot: 1,
        generation: gen.clone(),
        lsn,
        taken_at: cut_time,
        compacted_at: Some(chrono::Utc::now()),
        tables: Vec::new(),
    };
    for (table, mut rows) in states {
        let schema = rows.outcome.schema.clone();
        let (schema_name, name) = table.split_once('.').unwrap_or(("", &table));
        let seg = layout::table_segment(schema_name, name);
        let pk = crate::index::pk_of(&st.schemas, &table, schema.version);
        let mut w = crate::snapshot::TableWriter::new(store, gen, lsn, &table, &seg, schema.version, pk)?;
        while let Some(row) = rows.next_row()? {
            w.push(&row, &mut index, &metrics).await?;
        }
        let entry = w.finish(&mut index, &metrics).await?;
        tracing::info!(table, rows = entry.rows, "compacted");
        manifest.tables.push(entry);
    }
    store
        .put_once(&layout::snapshot_manifest(gen, lsn), to_json(&manifest))
        .await?;
    match index.encode(gen) {
        Ok(bytes) => {
            if let Err(e) = store.put_once(&crate::index::snapshot_index_key(gen, lsn), bytes).await {
                tracing::warn!(error = %e, "could not write the snapshot's index; reads fall back to scanning");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not build the snapshot's index"),
    }
    Ok(Some(Compacted { manifest, changes }))
}
