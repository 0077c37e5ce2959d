//! `waly compact`: a snapshot made from the archive alone, without touching
//! the source. Each table's state at a point (its previous snapshot plus the
//! changes since, exactly as `waly restore` computes it) is written as a new
//! snapshot of the generation, so later restores, and `waly prune`, can start
//! from there.
//!
//! The new snapshot's LSN is the end of the last archived commit at the
//! point, so it holds exactly the commits before it (the rule every snapshot
//! follows); its `taken_at` is that commit's time, the moment its state
//! describes, and `compacted_at` says when it was made.

use crate::archive::state::{self, Manifest};
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

/// The last complete transaction of `gen` (its `segments` as listed with
/// its state) whose commit LSN is at or before `upto`: from the segment
/// headers where they tell, else by reading the one segment that holds it.
async fn last_commit_upto(
    store: &Store,
    st: &state::GenState,
    segments: &[(String, u64, u64)],
    upto: Lsn,
) -> Result<Option<crate::segment::CommitPoint>, Error> {
    if let Some(c) = st.tail.last_commit.filter(|c| c.commit_lsn <= upto) {
        return Ok(Some(c));
    }
    for (key, _, _) in segments.iter().rev() {
        let Some((_, first, _)) = layout::parse_segment_key(key) else {
            continue;
        };
        if first > upto {
            continue;
        }
        let bytes = store.get_segment(key).await?;
        let mut r = crate::segment::SegmentReader::open(key, &bytes)?;
        if let Some(c) = r.header.last_commit.filter(|c| c.commit_lsn <= upto) {
            return Ok(Some(c));
        }
        let mut found = None;
        while let Some(rec) = r.next_record(&st.schemas)? {
            if let crate::segment::Record::Commit(c) = rec {
                if c.commit_lsn <= upto {
                    found = Some(crate::segment::CommitPoint {
                        commit_lsn: c.commit_lsn,
                        end_lsn: c.end_lsn,
                        commit_time: c.commit_time,
                    });
                }
            }
        }
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Compacts the latest generation's tables at the last archived commit at
/// or before `upto` (the latest when `None`). `Ok(None)` when there is
/// nothing to do: no commit after the newest snapshots. Tables are done one
/// at a time, each with restore's bounded memory.
pub async fn compact(store: &Store, upto: Option<Lsn>) -> Result<Option<Compacted>, Error> {
    store.prepare_writing().await?;
    let gens = state::generations(store).await?;
    let Some(gen) = gens.last() else {
        return Err(Error::NotInArchive(format!(
            "{} holds no history yet (no generation)",
            store.url()
        )));
    };
    let (st, segments) = state::load_generation_listing(store, gen, state::Shapes::All, |_| {}).await?;
    let cut = match upto {
        None => st.tail.last_commit,
        Some(u) => last_commit_upto(store, &st, &segments, u).await?,
    };
    let Some(cut) = cut else { return Ok(None) };
    // The snapshot holds every commit before its LSN: the end of the cut.
    let lsn = cut.end_lsn;
    // Each table's newest snapshot before that; worth compacting only if
    // some table has commits between its snapshot and the cut.
    let mut newest: std::collections::BTreeMap<&str, Lsn> = std::collections::BTreeMap::new();
    for m in st.manifests.iter().filter(|m| m.lsn < lsn) {
        for t in &m.tables {
            let e = newest.entry(t.table.as_str()).or_default();
            *e = (*e).max(m.lsn);
        }
    }
    let stale = newest.values().any(|l| *l <= cut.commit_lsn);
    if !stale || st.manifests.iter().any(|m| m.lsn == lsn) {
        return Ok(None);
    }
    let metrics = Metrics::default();
    let mut index = crate::index::Builder::for_writer(store.sealer()?.as_ref()).spilling();
    let mut manifest = Manifest {
        waly_snapshot: 1,
        generation: gen.clone(),
        lsn,
        taken_at: cut.commit_time,
        compacted_at: Some(chrono::Utc::now()),
        tables: Vec::new(),
    };
    let mut changes = 0;
    for table in newest.keys() {
        let plan = restore::plan(store, table, Bound::Lsn(cut.commit_lsn)).await?;
        if plan.generation != *gen {
            continue;
        }
        // A table whose rows the archive cannot give at the cut (dropped,
        // no longer published, or between a DDL and the snapshot after
        // it) gets no compacted snapshot: readers keep refusing there.
        let rows = match restore::rows(store, &plan, &Filter::default(), &mut |_| {}).await {
            Err(Error::NotInArchive(why)) => {
                tracing::info!(table, why, "not compacted");
                continue;
            }
            r => r?,
        };
        let mut rows = rows.keeping_unknown();
        changes += rows.outcome.changes;
        let schema = rows.outcome.schema.clone();
        let (schema_name, name) = table.split_once('.').unwrap_or(("", table));
        let seg = layout::table_segment(schema_name, name);
        let pk = crate::index::pk_of(&st.schemas, table, schema.version);
        let mut w = crate::snapshot::TableWriter::new(store, gen, lsn, table, &seg, schema.version, pk)?;
        while let Some(row) = rows.next_row()? {
            w.push(&row, &mut index, &metrics).await?;
        }
        let entry = w.finish(&mut index, &metrics).await?;
        tracing::info!(table, rows = entry.rows, "compacted");
        manifest.tables.push(entry);
    }
    crate::snapshot::write_manifest(store, &manifest, index).await?;
    Ok(Some(Compacted { manifest, changes }))
}
