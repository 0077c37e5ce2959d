//! `waly prune --keep DURATION`: deletes what no point inside the retention
//! window needs.
//!
//! A point is restored from the newest snapshot of each table at or before
//! it plus the segments after that snapshot. So for the window starting at
//! `W = now - keep`:
//! - a generation that ended before `W` (the next one started at or before
//!   it) is deleted whole;
//! - in the generation holding `W`, each table's newest snapshot taken at or
//!   before `W` is kept (unless the table's history ended after it, before
//!   `W`: dropped, renamed away or out of the publication, the table's
//!   points from there are refused until a later snapshot, which serves
//!   them), older snapshots that no table needs any more go,
//!   and so do the segments before the oldest of those kept snapshots (a
//!   leading run of them; the generation's last segment always stays, as the
//!   writer continues its chain from it);
//! - errors recorded before `W` go, and leases no remaining segment answers
//!   to.
//!
//! Where no snapshot is old enough, nothing in that generation goes: a
//! point in the window is never left without a path. `waly compact` makes a
//! newer snapshot from the archive, so more can go next time. Before
//! deleting segments, a write-once marker (`generations/<gen>/pruned/...`)
//! records where the chain now starts and the hash it continues from, so
//! `waly verify` tells a prune from a loss.

use crate::archive::state::{self, to_json};
use crate::archive::{layout, Store};
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a generation's chain starts after a prune.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneMark {
    /// The generation.
    pub generation: String,
    /// The first segment kept.
    pub first_kept: u64,
    /// The SHA-256 the first kept segment names as its predecessor's.
    pub prev_sha256: Option<String>,
    /// Segments before this commit LSN were deleted.
    pub before_lsn: Lsn,
    /// The window's start.
    pub window_start: DateTime<Utc>,
    /// When the prune ran.
    pub pruned_at: DateTime<Utc>,
    /// The snapshots (by LSN) of the generation this prune deletes: if it
    /// is cut short after their manifests went, the next prune finds the
    /// rest of them here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<Lsn>,
}

/// Every prune mark of `gen`.
async fn marks(store: &Store, gen: &str) -> Result<Vec<PruneMark>, Error> {
    let mut out = Vec::new();
    for (key, _) in store.list(&format!("{}/pruned", layout::generation_dir(gen))).await? {
        out.push(state::parse_json(&key, &store.get(&key).await?)?);
    }
    Ok(out)
}

/// The object of a prune mark.
pub fn mark_key(gen: &str, first_kept: u64) -> String {
    format!("{}/pruned/{first_kept:010}.json", layout::generation_dir(gen))
}

/// The newest prune mark of `gen`, if it was ever pruned.
pub async fn mark(store: &Store, gen: &str) -> Result<Option<PruneMark>, Error> {
    let mut keys: Vec<String> = store
        .list(&format!("{}/pruned", layout::generation_dir(gen)))
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    let Some(k) = keys.last() else { return Ok(None) };
    state::parse_json(k, &store.get(k).await?).map(Some)
}

/// What a prune deletes, and why.
#[derive(Debug, Default)]
pub struct Plan {
    /// The window's start.
    pub window_start: Option<DateTime<Utc>>,
    /// Whole generations that end before the window.
    pub generations: Vec<String>,
    /// Per generation holding the window's start: the snapshots kept as
    /// starting points, and the mark to write.
    pub marks: Vec<PruneMark>,
    /// Snapshots an interrupted writer left without their manifest, which
    /// later ones replace: `(generation, LSN)`, marked abandoned before
    /// their parts go.
    pub abandoned: Vec<(String, Lsn)>,
    /// Every object to delete.
    pub objects: Vec<(String, u64)>,
}

impl Plan {
    /// Bytes freed.
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|(_, b)| b).sum()
    }
}

/// Works out what pruning to a window starting at `window_start` deletes.
pub async fn plan(store: &Store, window_start: DateTime<Utc>) -> Result<Plan, Error> {
    let mut plan = Plan {
        window_start: Some(window_start),
        ..Default::default()
    };
    let gens = state::generations(store).await?;
    let leases = crate::archive::lease::list(store).await?;
    // The segment objects of each generation that stays, listed once.
    let mut objects: BTreeMap<&str, Vec<state::SegmentObject>> = BTreeMap::new();
    for (i, gen) in gens.iter().enumerate() {
        let next_start = match gens.get(i + 1) {
            Some(next) => Some(state::generation_info(store, next).await?.started_at),
            None => None,
        };
        if next_start.is_some_and(|s| s <= window_start) {
            // Every point of this generation is before the window.
            plan.generations.push(gen.clone());
            for dir in [layout::generation_dir(gen), format!("index/{gen}")] {
                plan.objects.extend(store.list(&dir).await?);
            }
            continue;
        }
        let st = state::load_generation(store, gen).await?;
        let listed = objects
            .entry(gen.as_str())
            .or_insert(state::segment_objects_under(store, gen, &leases).await?);
        // Whether `table`'s history ended (dropped, renamed away, out of
        // the publication) after its snapshot at `lsn` and before the
        // window: no point in the window starts from that snapshot (they
        // are refused up to a later snapshot, which serves them).
        let ended_before_window = |table: &str, lsn: Lsn| {
            st.schemas
                .versions(table)
                .iter()
                .any(|v| v.dropped && v.commit_lsn > lsn && v.commit_time.is_some_and(|t| t <= window_start))
        };
        // Each table's newest snapshot at or before the window's start,
        // unless its history ended after it, before the window.
        let mut keep: BTreeMap<&str, Lsn> = BTreeMap::new();
        for m in st.manifests.iter().filter(|m| m.taken_at <= window_start) {
            for t in &m.tables {
                let e = keep.entry(t.table.as_str()).or_default();
                *e = (*e).max(m.lsn);
            }
        }
        keep.retain(|table, lsn| !ended_before_window(table, *lsn));
        // Snapshots' index objects (listed by their directory: a listing's
        // prefix is a whole path, so an object's own key lists nothing).
        let snapshot_index_dir = crate::index::snapshot_index_key(gen, Lsn(0))
            .rsplit_once('/')
            .map(|(dir, _)| dir.to_string())
            .unwrap_or_default();
        let snapshot_indexes: BTreeMap<String, u64> = store.list(&snapshot_index_dir).await?.into_iter().collect();
        let gen_marks = marks(store, gen).await?;
        let deleting: Vec<Lsn> = gen_marks.iter().flat_map(|m| m.snapshots.iter().copied()).collect();
        let snapshot_dirs = state::snapshot_dirs(store, gen).await?;
        let listed_under = |lsn: Lsn| snapshot_dirs.get(&lsn).cloned().unwrap_or_default();
        abandoned_snapshots(
            gen,
            &st,
            window_start,
            &snapshot_dirs,
            &snapshot_indexes,
            &deleting,
            &mut plan,
        );
        let Some(boundary) = keep.values().min().copied() else {
            continue;
        };
        // Snapshots no table starts from any more, and their index objects.
        let mut deleted_snapshots = Vec::new();
        let mut delete_snapshot = |plan: &mut Plan, mut listed: Vec<(String, u64)>, lsn: Lsn| {
            let idx = crate::index::snapshot_index_key(gen, lsn);
            listed.extend(snapshot_indexes.get(&idx).map(|size| (idx, *size)));
            if !listed.is_empty() {
                plan.objects.extend(listed);
                deleted_snapshots.push(lsn);
            }
        };
        // What a prune cut short left of the snapshots it was deleting, once
        // their manifests were gone (no reader starts from them).
        for lsn in gen_marks.iter().flat_map(|m| m.snapshots.iter().copied()) {
            if !st.manifests.iter().any(|m| m.lsn == lsn) {
                delete_snapshot(&mut plan, listed_under(lsn), lsn);
            }
        }
        for m in &st.manifests {
            let needed = m.tables.iter().any(|t| {
                !ended_before_window(&t.table, m.lsn) && keep.get(t.table.as_str()).is_none_or(|k| *k <= m.lsn)
            });
            if needed {
                continue;
            }
            delete_snapshot(&mut plan, listed_under(m.lsn), m.lsn);
        }
        deleted_snapshots.sort();
        deleted_snapshots.dedup();
        // The leading segments wholly before the boundary, never the last.
        let segments: Vec<(String, u64, u64)> = listed
            .iter()
            .filter(|s| s.is_current())
            .map(|s| (s.key.clone(), s.number, s.size))
            .collect();
        let mut first_kept = None;
        for (j, (key, number, size)) in segments.iter().enumerate() {
            let last = crate::archive::layout::parse_segment_key(key).map_or(Lsn(u64::MAX), |(_, _, l)| l);
            if last >= boundary || j + 1 == segments.len() {
                first_kept = Some((*number, key.clone(), *size));
                break;
            }
            plan.objects.push((key.clone(), *size));
        }
        let Some((first_kept, first_key, first_size)) = first_kept else {
            continue;
        };
        let first = segments.first().map_or(0, |s| s.1);
        if first_kept == first && deleted_snapshots.is_empty() {
            continue;
        }
        if first_kept != first {
            // Uploads fenced out before the new start, and index objects of
            // deleted segments only.
            for s in listed.iter() {
                if !s.is_current() && s.number < first_kept {
                    plan.objects.push((s.key.clone(), s.size));
                }
            }
            for (key, size, _, last) in crate::index::segment_indexes(store, gen).await? {
                if last < first_kept {
                    plan.objects.push((key, size));
                }
            }
        }
        let prev_sha256 = crate::index::segment_header(store, &first_key, first_size)
            .await?
            .0
            .prev_sha256;
        // A mark is written once: where one for this start is there (a
        // prune cut short), this prune deletes only the snapshots some mark
        // names, so that every snapshot deleted is named before it goes;
        // the others wait for a later prune.
        if gen_marks.iter().any(|m| m.first_kept == first_kept) {
            let named = |l: &Lsn| gen_marks.iter().any(|m| m.snapshots.contains(l));
            let waiting: Vec<Lsn> = deleted_snapshots.iter().copied().filter(|l| !named(l)).collect();
            plan.objects.retain(|(key, _)| {
                !waiting.iter().any(|l| {
                    key.starts_with(&format!("{}/", layout::snapshot_dir(gen, *l)))
                        || *key == crate::index::snapshot_index_key(gen, *l)
                })
            });
            deleted_snapshots.retain(named);
        }
        plan.marks.push(PruneMark {
            generation: gen.clone(),
            first_kept,
            prev_sha256,
            before_lsn: boundary,
            window_start,
            pruned_at: Utc::now(),
            snapshots: deleted_snapshots,
        });
    }
    // Leases nothing left answers to: older than the lease in force where
    // history now begins (a newer one applies to every segment after it),
    // and the token of no segment that stays.
    let deleting: std::collections::BTreeSet<&str> = plan.objects.iter().map(|(k, _)| k.as_str()).collect();
    let mut oldest: Option<(String, u64)> = None;
    let mut tokens_left = std::collections::BTreeSet::new();
    for (gen, listed) in &objects {
        for s in listed.iter().filter(|s| !deleting.contains(s.key.as_str())) {
            tokens_left.insert(s.fence);
            if oldest.as_ref().is_none_or(|o| (*gen, s.number) < (o.0.as_str(), o.1)) {
                oldest = Some((gen.to_string(), s.number));
            }
        }
    }
    if let Some((gen, number)) = oldest {
        let floor = crate::archive::lease::in_force(&leases, &gen, number);
        for (key, size) in store.list(layout::LEASES_DIR).await? {
            let old = layout::parse_lease_key(&key)
                .is_some_and(|(token, _, _)| token < floor && !tokens_left.contains(&token));
            if old {
                plan.objects.push((key, size));
            }
        }
    }
    for (key, size) in store.list(layout::ERRORS_DIR).await? {
        let name = key.rsplit('/').next().unwrap_or("");
        let time = name
            .strip_suffix(".json")
            .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%S%.3fZ").ok());
        if time.is_some_and(|t| t.and_utc() < window_start) {
            plan.objects.push((key, size));
        }
    }
    plan.objects
        .sort_by(|a, b| (deletion_rank(&a.0), &a.0).cmp(&(deletion_rank(&b.0), &b.0)));
    plan.objects.dedup();
    Ok(plan)
}

/// Adds to `plan` the snapshots of `gen` that an interrupted writer left
/// without their manifest (a crash while it took one) and that no point in
/// the window could start from even if they were finished: each of their
/// tables has a later snapshot taken at or before the window's start. They
/// are marked abandoned (readers then ignore a manifest written there
/// late), and their parts and index object deleted; a marked one that
/// still holds objects (a prune cut short) loses the rest. Not those a
/// prune mark names (`deleting`): a prune cut short after their manifests
/// went, whose next run deletes them whole.
fn abandoned_snapshots(
    gen: &str,
    st: &state::GenState,
    window_start: DateTime<Utc>,
    snapshot_dirs: &BTreeMap<Lsn, Vec<(String, u64)>>,
    snapshot_indexes: &BTreeMap<String, u64>,
    deleting: &[Lsn],
    plan: &mut Plan,
) {
    for (&lsn, listed) in snapshot_dirs {
        let marker = layout::snapshot_abandoned(gen, lsn);
        let marked = listed.iter().any(|(k, _)| *k == marker);
        if deleting.contains(&lsn) {
            continue;
        }
        if !marked {
            if st.manifests.iter().any(|m| m.lsn == lsn) {
                continue;
            }
            let tables = state::snapshot_part_tables(listed.iter().map(|(k, _)| k.as_str()));
            if tables.is_empty() || !st.replaced_after(lsn, &tables, Some(window_start)) {
                continue;
            }
            plan.abandoned.push((gen.to_string(), lsn));
        }
        let index = crate::index::snapshot_index_key(gen, lsn);
        plan.objects
            .extend(snapshot_indexes.get(&index).map(|size| (index, *size)));
        plan.objects
            .extend(listed.iter().filter(|(k, _)| *k != marker).cloned());
    }
}

/// The order of deletion, so that a prune cut short leaves refusals
/// behind, never a wrong answer, and running it again finishes it: snapshot
/// manifests first (a snapshot without its manifest does not exist, so no
/// restore starts from it and then misses deleted segments), then their
/// parts, then segments in chain order (the chain then starts later, as the
/// mark says), then the rest, and a deleted generation's description last
/// (until then the next prune still finds the generation).
fn deletion_rank(key: &str) -> u8 {
    if key.ends_with("/manifest.json") {
        0
    } else if key.starts_with("generations/") && key.contains("/snapshots/") {
        1
    } else if key.starts_with("generations/") && key.contains("/segments/") {
        2
    } else if key.ends_with("/generation.json") {
        4
    } else {
        3
    }
}

/// Carries out `plan`: marks first, then deletions in `deletion_rank`
/// order (an interrupted prune leaves an archive that verifies, and running
/// it again finishes it).
pub async fn execute(store: &Store, plan: &Plan) -> Result<(), Error> {
    for (gen, lsn) in &plan.abandoned {
        let key = layout::snapshot_abandoned(gen, *lsn);
        if store.get_opt(&key).await?.is_none() {
            let marker = serde_json::json!({"generation": gen, "lsn": lsn, "abandoned_at": Utc::now()});
            store.put_once(&key, to_json(&marker)).await?;
        }
    }
    for m in &plan.marks {
        let key = mark_key(&m.generation, m.first_kept);
        // A prune cut short after writing its mark left it: the chain
        // starting at the same segment from the same hash is the same fact,
        // and the mark first written stays (it is written once).
        if let Some(bytes) = store.get_opt(&key).await? {
            let left: PruneMark = state::parse_json(&key, &bytes)?;
            if (&left.generation, left.first_kept, &left.prev_sha256) != (&m.generation, m.first_kept, &m.prev_sha256) {
                return Err(Error::Corrupt {
                    key,
                    why: format!(
                        "a prune mark says the chain starts at segment {} after hash {:?}; this prune finds {:?}",
                        left.first_kept, left.prev_sha256, m.prev_sha256
                    ),
                });
            }
            continue;
        }
        store.put_once(&key, to_json(m)).await?;
    }
    for (key, _) in &plan.objects {
        store.delete(key).await?;
    }
    // The catalog of a generation that lost its first segments no longer
    // fits its chain: build it again from what is left (encrypted archives
    // keep none yet).
    let encrypted = store.is_encrypted().await?;
    for m in plan.marks.iter().filter(|_| !encrypted) {
        if let Some((cat, _)) = crate::catalog::current(store, &m.generation, None).await? {
            crate::catalog::save(store, &cat).await;
        }
    }
    // The tails directory drops the index objects pruned.
    crate::index::update_tails(store).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_prune_removes_starting_points_before_what_they_need() {
        let mut keys = [
            "errors/20261126T000000.000Z.json",
            "generations/00000001/generation.json",
            "generations/00000001/schemas/public.t/000001.json",
            "generations/00000001/segments/0000000000-0000000000000001-0000000000000002.jsonl.zst",
            "generations/00000001/snapshots/0000000000000001/manifest.json",
            "generations/00000001/snapshots/0000000000000001/public.t/000000.jsonl.zst",
            "index/00000001/segments/0000000000-0000000000.idx",
        ];
        keys.sort_by_key(|k| (deletion_rank(k), *k));
        let at = |suffix: &str| keys.iter().position(|k| k.ends_with(suffix)).unwrap_or(usize::MAX);
        assert_eq!(at("manifest.json"), 0);
        assert!(
            at("000000.jsonl.zst") < at("0000000000000002.jsonl.zst"),
            "parts before segments"
        );
        assert!(at("0000000000000002.jsonl.zst") < at(".idx"));
        assert_eq!(at("generation.json"), keys.len() - 1);
    }
}
