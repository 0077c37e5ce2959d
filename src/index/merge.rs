//! Index runs merged in levels, streaming.
//!
//! Each segment's index object is a run of level 0. After segment `n`
//! (`count = n + 1` segments), for each level `i >= 1` whose block of
//! `10^(i-1)` segments just filled (`count % 10^(i-1) == 0`), the runs
//! within the current block of `10^i` segments are merged into one. So
//! the runs of a generation are, for each decimal digit `d_i` of `count`
//! that is not 0, one run of `d_i * 10^i` segments: at most one run per
//! level, and a lookup reads one object per digit (4 at 1,177 segments).
//! A run of level `i` is rewritten once every `10^(i-1)` segments.
//!
//! A merge reads its inputs a window at a time, block by block (and their
//! fence blocks one at a time), and writes the merged blocks as it goes:
//! past a few MiB to a local file, uploaded in parts once done. Its memory
//! is a window per input and a part of the output, whatever the runs' size.

use super::{
    decode_fences, decode_frame_block, listed_segment_indexes, parse_segments_index_key, segments_index_key,
    write::{write_fences, BlockWriter, SectionWriter, Written, SPILL_BYTES},
    Block, Codec, Entry, Footer, FrameTableWriter, Index, FORMAT,
};
use crate::archive::Store;
use crate::Error;
use bytes::Bytes;

/// Bytes of an input object read per request while merging.
const WINDOW: u64 = 1 << 20;

/// The ranges `(first, last)` of segments whose runs are merged after the
/// `count`-th segment of a generation is indexed, lowest level first.
pub fn level_merges(count: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut below = 1u64; // 10^(i-1)
    while count > 0 && count.is_multiple_of(below) {
        let Some(block) = below.checked_mul(10) else { break };
        let first = (count - 1) / block * block;
        // A range the level below already merged whole needs nothing more.
        if count - first >= 2 && out.last().map(|l: &(u64, u64)| l.0) != Some(first) {
            out.push((first, count - 1));
        }
        below = block;
    }
    out
}

/// Merges the runs of `gen` after its `count`-th segment is indexed (see
/// the module's doc). The index is derived data: a failure is logged, and
/// the next merge at that level takes the runs it left.
pub async fn merge_levels(store: &Store, gen: &str, count: u64) {
    let mut merged = false;
    for (first, last) in level_merges(count) {
        match merge(store, gen, first, last).await {
            Ok(m) => merged |= m,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), first, last, "could not merge the index; lookups read more objects until the next merge or `waly reindex`")
            }
        }
    }
    // Readers open the new runs from the tails directory.
    if merged {
        super::tails::update(store).await;
    }
}

/// `waly run`'s merges, in the background: one task takes them in order,
/// so the writer never waits for one.
#[derive(Debug)]
pub struct Merger {
    tx: Option<tokio::sync::mpsc::UnboundedSender<(String, u64)>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Merger {
    /// Starts the task (it ends when the merger is dropped or finished and
    /// its queue done).
    pub fn start(store: &Store) -> Merger {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64)>();
        let store = store.clone();
        let task = tokio::spawn(async move {
            while let Some((gen, count)) = rx.recv().await {
                merge_levels(&store, &gen, count).await;
            }
        });
        Merger {
            tx: Some(tx),
            task: Some(task),
        }
    }

    /// The `count`-th segment of `gen` is indexed: queues its merges.
    pub fn indexed(&self, gen: &str, count: u64) {
        if let (Some(tx), false) = (&self.tx, level_merges(count).is_empty()) {
            let _ = tx.send((gen.to_string(), count));
        }
    }

    /// Waits for the queued merges: a session ends with its merges done,
    /// so none is cut off by the process's exit (its store requests would
    /// fail half way) and the next session's merges never run beside it.
    pub async fn finish(&mut self) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Merges the segment index objects of `gen` that lie within
/// `first..=last` and chain from the first of them without gaps or overlaps
/// into one; the merged ones, and objects within the merged range left by an
/// interrupted merge, are then deleted. Returns whether it merged.
pub async fn merge(store: &Store, gen: &str, first: u64, last: u64) -> Result<bool, Error> {
    let mut listed = listed_segment_indexes(store, gen).await?;
    listed.retain(|(_, _, a, b)| *a >= first && *b <= last);
    let mut parts = listed.clone();
    parts.sort_by_key(|p| (p.2, std::cmp::Reverse(p.3)));
    // A chain of objects from the first one there (after a prune, runs
    // may start inside a block), without gaps or overlaps.
    let mut chain = Vec::new();
    let mut next = parts.first().map_or(first, |p| p.2);
    for p in parts {
        if p.2 == next {
            next = p.3 + 1;
            chain.push(p);
        }
    }
    if chain.len() < 2 {
        return Ok(false);
    }
    // Entries hashed under different data keys cannot share an object, and
    // a writer cannot open an index sealed under a key it does not hold (an
    // earlier session's): each run of objects it can open under one key is
    // merged on its own. A plaintext archive has one run.
    let sealer = store.sealer()?;
    let mut runs: Vec<Vec<(Index, u64)>> = Vec::new();
    let mut open_run = false;
    for (key, size, _, _) in &chain {
        match Index::open(store, key, *size).await {
            Ok(idx) => match runs.last_mut() {
                Some(run) if open_run && run[0].0.footer.key_id == idx.footer.key_id => run.push((idx, *size)),
                _ => {
                    runs.push(vec![(idx, *size)]);
                    open_run = true;
                }
            },
            Err(Error::Encryption(_)) => open_run = false,
            Err(e) => return Err(e),
        }
    }
    let mut merged = false;
    for run in runs.into_iter().filter(|r| r.len() >= 2) {
        let (Some((a, _)), Some((_, z))) = (
            parse_segments_index_key(&run[0].0.key),
            run.last().and_then(|(i, _)| parse_segments_index_key(&i.key)),
        ) else {
            continue;
        };
        let key = segments_index_key(gen, a, z);
        super::put_index(
            store,
            &key,
            merge_objects(store, gen, &run, sealer.as_ref(), Some(SPILL_BYTES)).await?,
        )
        .await?;
        // The inputs, and what an interrupted merge left inside the range.
        for (key, _, x, y) in &listed {
            if *x >= a && *y <= z && (*x, *y) != (a, z) {
                store.delete(key).await?;
            }
        }
        merged = true;
    }
    Ok(merged)
}

/// One merged object of index objects `inputs` (each with its size),
/// entries hashed under the same data key; read and written block by
/// block, in memory or, once past `spill` bytes when given, to a local
/// file in a scratch directory ([`crate::scratch`]).
pub(super) async fn merge_objects(
    store: &Store,
    gen: &str,
    inputs: &[(Index, u64)],
    sealer: Option<&crate::crypt::Sealer>,
    spill: Option<usize>,
) -> Result<Written, Error> {
    let mut c = match spill {
        Some(after) => BlockWriter::spilling(sealer, after)?,
        None => BlockWriter::new(sealer)?,
    };
    let key_id = &inputs[0].0.footer.key_id;
    if let Some((other, _)) = inputs.iter().find(|(i, _)| &i.footer.key_id != key_id) {
        return Err(Error::Protocol(format!(
            "index entries hashed under data key {:?} cannot join those hashed under {key_id:?}",
            other.footer.key_id
        )));
    }
    if key_id.is_some() != sealer.is_some() {
        return Err(Error::Encryption(
            "index entries must be hashed under a data key exactly when the archive is encrypted".into(),
        ));
    }
    let mut objects = Vec::new();
    let mut bases = Vec::new();
    for (idx, _) in inputs {
        bases.push(objects.len() as u32);
        objects.extend(idx.footer.objects.iter().cloned());
    }
    let delta = Codec::Delta;
    let keys = merge_section(store, inputs, &bases, |f| Some(&f.key_fences), delta, &mut c).await?;
    let messages = merge_section(store, inputs, &bases, |f| Some(&f.message_fences), delta, &mut c).await?;
    let tables = if inputs.iter().all(|(i, _)| i.footer.table_fences.is_some()) {
        Some(merge_section(store, inputs, &bases, |f| f.table_fences.as_ref(), delta, &mut c).await?)
    } else {
        None
    };
    // Inputs of format 3 hashed their integer keys: the merged object says
    // its key section holds some, so lookups read it too.
    let buckets = merge_section(
        store,
        inputs,
        &bases,
        |f| f.bucket_fences.as_ref(),
        Codec::Buckets,
        &mut c,
    )
    .await?;
    let hashed_int_keys = inputs
        .iter()
        .any(|(i, _)| i.footer.bucket_fences.is_none() || i.footer.hashed_int_keys);
    let key_fences = write_fences(keys, &mut c)?;
    let message_fences = write_fences(messages, &mut c)?;
    let table_fences = match tables {
        Some(t) => Some(write_fences(t, &mut c)?),
        None => None,
    };
    let bucket_fences = Some(write_fences(buckets, &mut c)?);
    // The frame tables, a block at a time, each input's objects moved up
    // by its base (an input without one leaves its segments out).
    let mut table = FrameTableWriter::default();
    for ((idx, _), base) in inputs.iter().zip(&bases) {
        for b in idx.footer.frame_table.iter().flatten() {
            let z = idx.block(store, b).await?;
            for (object, frames) in decode_frame_block(&idx.key, b.first, &z)? {
                if object as usize >= idx.footer.objects.len() {
                    return Err(super::damaged(&idx.key, "its frame table names an object it lacks"));
                }
                table.push(object + base, &frames, &mut c)?;
            }
        }
    }
    let frame_table =
        Some(table.finish(&mut c)?).filter(|_| inputs.iter().any(|(i, _)| i.footer.frame_table.is_some()));
    let footer = Footer {
        waly_index: FORMAT,
        generation: gen.to_string(),
        objects,
        key_fences,
        message_fences,
        table_fences,
        bucket_fences,
        frame_table,
        hashed_int_keys,
        key_id: key_id.clone(),
    };
    c.finish(&footer)
}

/// Merges one section of every input (chosen by `fences`), each input's
/// object numbers moved up by its base: the data blocks written.
async fn merge_section(
    store: &Store,
    inputs: &[(Index, u64)],
    bases: &[u32],
    fences: impl Fn(&Footer) -> Option<&Vec<Block>>,
    codec: Codec,
    c: &mut BlockWriter<'_>,
) -> Result<super::write::Section, Error> {
    let mut cursors = Vec::new();
    for ((idx, _), base) in inputs.iter().zip(bases) {
        let f = fences(&idx.footer).map(Vec::as_slice).unwrap_or_default();
        let mut cur = Cursor::open(store, idx, f, *base, codec);
        cur.advance().await?;
        cursors.push(cur);
    }
    let mut w = SectionWriter::new(codec);
    // A few inputs: the smallest head by a scan.
    while let Some(i) = (0..cursors.len())
        .filter(|i| cursors[*i].head.is_some())
        .min_by_key(|i| cursors[*i].head)
    {
        let Some(e) = cursors[i].head else { break };
        w.push(e, c)?;
        cursors[i].advance().await?;
    }
    w.finish(c)
}

/// One section of one index object's entries, in order, read a window of
/// the object at a time; its fence blocks read one at a time.
struct Cursor<'a> {
    store: &'a Store,
    idx: &'a Index,
    /// The section's fence blocks, and the next to read.
    fences: &'a [Block],
    next_fence: usize,
    /// The data blocks of the fence block read last, where the last of
    /// them ends, and the next to read.
    blocks: Vec<Block>,
    end: u64,
    next_block: usize,
    /// `(offset, bytes)`: the part of the object read last.
    window: (u64, Bytes),
    entries: std::vec::IntoIter<Entry>,
    base: u32,
    codec: Codec,
    head: Option<Entry>,
}

impl<'a> Cursor<'a> {
    fn open(store: &'a Store, idx: &'a Index, fences: &'a [Block], base: u32, codec: Codec) -> Cursor<'a> {
        Cursor {
            store,
            idx,
            fences,
            next_fence: 0,
            blocks: Vec::new(),
            end: 0,
            next_block: 0,
            window: (0, Bytes::new()),
            entries: Vec::new().into_iter(),
            base,
            codec,
            head: None,
        }
    }

    /// Moves `head` to the next entry (`None`: the section is done).
    async fn advance(&mut self) -> Result<(), Error> {
        let key = &self.idx.key;
        loop {
            if let Some((v, o, f)) = self.entries.next() {
                self.head = Some((v, o + self.base, f));
                return Ok(());
            }
            let Some(b) = self.blocks.get(self.next_block).copied() else {
                let Some(fence) = self.fences.get(self.next_fence) else {
                    self.head = None;
                    return Ok(());
                };
                self.next_fence += 1;
                let z = self.idx.block(self.store, fence).await?;
                self.blocks = decode_fences(key, &z)?;
                self.end = self.blocks.iter().map(|b| b.offset + b.len).max().unwrap_or(0);
                self.next_block = 0;
                continue;
            };
            self.next_block += 1;
            let (start, ref buf) = self.window;
            if b.offset < start || b.offset + b.len > start + buf.len() as u64 {
                let want = (b.offset + WINDOW).min(self.end).max(b.offset + b.len);
                self.window = (b.offset, self.store.get_range(key, b.offset..want).await?);
            }
            let at = (b.offset - self.window.0) as usize;
            let z = self.window.1.slice(at..at + b.len as usize);
            let z = self.store.open_frames(key, z).await?;
            self.entries = self.idx.decode(&z, self.codec)?.into_iter();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_keeps_one_run_and_merges_when_the_level_below_fills() {
        assert_eq!(level_merges(1), vec![]);
        assert_eq!(level_merges(2), vec![(0, 1)]);
        assert_eq!(level_merges(10), vec![(0, 9)]);
        assert_eq!(level_merges(11), vec![]);
        assert_eq!(level_merges(12), vec![(10, 11)]);
        assert_eq!(level_merges(20), vec![(10, 19), (0, 19)]);
        assert_eq!(level_merges(100), vec![(90, 99), (0, 99)]);
        assert_eq!(level_merges(200), vec![(190, 199), (100, 199), (0, 199)]);
        assert_eq!(level_merges(1000), vec![(990, 999), (900, 999), (0, 999)]);
        // Simulated: after every count, the runs are one per digit that is
        // not 0, each `d * 10^i` segments.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for count in 1..=2345u64 {
            runs.push((count - 1, count - 1));
            for (a, z) in level_merges(count) {
                let inside: Vec<_> = runs.iter().filter(|r| r.0 >= a && r.1 <= z).copied().collect();
                assert!(inside.len() >= 2, "{count}: merge {a}..{z} of {inside:?}");
                runs.retain(|r| !(r.0 >= a && r.1 <= z));
                runs.push((a, z));
                runs.sort();
            }
            let mut want = Vec::new();
            let (mut at, mut unit) = (0, 1u64);
            while unit * 10 <= count {
                unit *= 10;
            }
            while unit >= 1 {
                let d = (count - at) / unit;
                if d > 0 {
                    want.push((at, at + d * unit - 1));
                    at += d * unit;
                }
                unit /= 10;
            }
            // Level 1 holds single segments: a run of `d` of them.
            assert_eq!(runs, want, "after {count} segments");
        }
    }
}
