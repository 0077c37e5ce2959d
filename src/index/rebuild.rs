//! `waly reindex`: every index object rebuilt from the segments and snapshots.

use super::{damaged, merge_levels, segments_index_key, snapshot_index_key, Builder, Covered, KeyEntries, RowKey};
use crate::archive::Store;
use crate::schema::keys::KeyColumns;
use crate::Error;

/// What `waly reindex` did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReindexStats {
    /// Segments indexed.
    pub segments: u64,
    /// Snapshots indexed.
    pub snapshots: u64,
    /// Index objects written.
    pub objects: u64,
}

/// The row key columns of `table` under schema `version` (see
/// [`crate::schema::SchemaRecord::row_key`]; none if unknown).
pub fn pk_of(schemas: &crate::segment::Schemas, table: &str, version: u32) -> KeyColumns {
    schemas
        .version(table, version)
        .map(KeyColumns::row_key)
        .unwrap_or_default()
}

/// Rebuilds every index object from the segments and snapshots: the old
/// ones are deleted first, then each snapshot gets one, and each block of
/// ten segments (numbers `10k..10k+9`) one, merged in levels as `waly run`
/// merges them (see [`merge_levels`]): the same runs. In an encrypted archive (read with
/// the reader's key) every entry is hashed, and every object sealed, under
/// one new data key, so the rebuilt objects merge whatever sessions wrote
/// the segments.
pub async fn reindex(store: &Store) -> Result<ReindexStats, Error> {
    use crate::segment::{Record, SegmentReader};
    let sealer = store.prepare_writing().await?;
    let encrypted = sealer.is_some();
    if encrypted {
        // The old index is deleted before the new one is written: first make
        // sure the reader's key opens every data key it will need.
        for id in crate::crypt::keys::data_key_ids(store).await? {
            store.crypt().data_key_secret(store, &id).await?;
        }
    }
    let fresh = || Builder::for_writer(sealer.as_ref());
    let mut stats = ReindexStats::default();
    for gen in crate::archive::state::generations(store).await? {
        let st = crate::archive::state::load_generation(store, &gen).await?;
        for (key, _) in store.list(&format!("index/{gen}")).await? {
            store.delete(&key).await?;
        }
        // Snapshots.
        for m in &st.manifests {
            let mut b = fresh().spilling();
            for t in &m.tables {
                let pk = pk_of(&st.schemas, &t.table, t.schema_version);
                for (n, part) in t.parts.iter().enumerate() {
                    let bytes = store.get(&part.key).await?;
                    let frames = if part.frames.is_empty() {
                        vec![(0, bytes.len() as u64)]
                    } else {
                        part.frames.clone()
                    };
                    let mut keys = KeyEntries::default();
                    for (f, (off, len)) in frames.iter().enumerate() {
                        let z = bytes
                            .get(*off as usize..(off + len) as usize)
                            .ok_or_else(|| damaged(&part.key, "a frame lies outside the part"))?;
                        let z = store.open_frames(&part.key, bytes.slice_ref(z)).await?;
                        let text = zstd::decode_all(&z[..]).map_err(|e| damaged(&part.key, e))?;
                        for line in String::from_utf8_lossy(&text).lines() {
                            if pk.is_empty() || line.starts_with("{\"waly_snapshot_part\"") {
                                continue;
                            }
                            let row: crate::event::Row =
                                serde_json::from_str(line).map_err(|e| damaged(&part.key, e))?;
                            keys.note(b.hasher().row(&t.table, &pk, &row), f as u32);
                        }
                    }
                    b.add(
                        Covered {
                            number: n as u64,
                            key: part.key.clone(),
                            frames,
                            fence: 0,
                        },
                        &keys,
                        &[],
                        &[],
                    );
                }
            }
            if !b.is_empty() {
                b.store(store, &snapshot_index_key(&gen, m.lsn), &gen, sealer.as_ref())
                    .await?;
                stats.objects += 1;
            }
            stats.snapshots += 1;
        }
        // Segments, a run at a time; the catalog as they go. The schema
        // versions are read again after the segments are listed: a live
        // writer writes a version before any segment that names it, so
        // every listed segment's versions are known (those read at the
        // start may predate segments written while the snapshots were
        // indexed).
        let segments = crate::archive::state::segments(store, &gen).await?;
        let st = crate::archive::state::load_generation(store, &gen).await?;
        let mut catalog = crate::catalog::Catalog::new(&gen);
        for run in segments.chunk_by(|a, b| a.1 / 10 == b.1 / 10) {
            let mut b = fresh();
            for (key, number, _) in run {
                let bytes = store.get(key).await?;
                let (header, frames) = SegmentReader::locate_frames(key, &bytes)?;
                let mut summary = crate::catalog::Summary::default();
                let mut keys = KeyEntries::default();
                let mut messages = Vec::new();
                let mut tables = Vec::new();
                for (f, (off, len)) in frames.iter().enumerate() {
                    let z = bytes
                        .get(*off as usize..(off + len) as usize)
                        .ok_or_else(|| damaged(key, "a frame lies outside the segment"))?;
                    let z = store.open_frames(key, bytes.slice_ref(z)).await?;
                    let mut r = SegmentReader::frame(key, &z)?;
                    while let Some(rec) = r.next_record(&st.schemas)? {
                        if let Record::Change(c) = &rec {
                            let ch = &c.change;
                            summary.note(&ch.table, ch.commit_lsn, ch.seq, ch.commit_time);
                            let t = (b.hasher().table(&c.change.table), f as u32);
                            if !tables.contains(&t) {
                                tables.push(t);
                            }
                        }
                        match rec {
                            Record::Change(c) if c.change.op == crate::event::Op::Truncate => {
                                keys.note(RowKey::Hash(b.hasher().truncate(&c.change.table)), f as u32);
                            }
                            Record::Change(c) => {
                                let pk = pk_of(&st.schemas, &c.change.table, c.schema_version);
                                if pk.is_empty() {
                                    continue;
                                }
                                let t = &*c.change.table;
                                let new = c.change.new.as_ref().map(|r| b.hasher().row(t, &pk, r));
                                let old = c.change.old.as_ref().map(|r| b.hasher().row(t, &pk, r));
                                for k in new.iter().chain(old.iter()) {
                                    keys.note(*k, f as u32);
                                }
                            }
                            Record::Message(m) => messages.push((m.commit_lsn.as_u64(), f as u32)),
                            _ => {}
                        }
                    }
                }
                b.add(
                    Covered {
                        number: *number,
                        key: String::new(),
                        frames: Vec::new(),
                        fence: crate::archive::layout::segment_fence(key),
                    },
                    &keys,
                    &messages,
                    &tables,
                );
                b.segment_frames(frames);
                catalog.absorb(key, header.last_commit.map(|c| c.commit_lsn), &summary);
                stats.segments += 1;
            }
            let (first, last) = (run[0].1, run[run.len() - 1].1);
            let bytes = b.encode(&gen, sealer.as_ref())?;
            super::put_index(
                store,
                &segments_index_key(&gen, first, last),
                super::write::Written::Memory(bytes),
            )
            .await?;
            stats.objects += 1;
            merge_levels(store, &gen, last + 1).await;
        }
        crate::catalog::refresh_objects(store, &gen, &mut catalog).await?;
        crate::catalog::write(store, &catalog).await?;
        stats.objects += 1;
    }
    super::tails::refresh(store).await?;
    Ok(stats)
}
