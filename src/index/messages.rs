//! A transaction's `waly` messages (its intent) found through the index:
//! the frames the index names for its commit LSN are read, nothing else.
//! History uses it for the versions it shows; the export for a transaction
//! too large to hold until its end.

use super::{segment_frames, Index};
use crate::archive::Store;
use crate::schema::Schemas;
use crate::segment::{Record, SegmentReader};
use crate::{Error, Lsn};
use std::collections::{BTreeMap, BTreeSet};

/// What finding a transaction's messages costs and keeps: the frames of
/// the segments read so far (their headers read once), and the frames read.
#[derive(Debug, Default)]
pub struct MessageReads {
    frames: BTreeMap<u64, Vec<(u64, u64)>>,
    /// Frames read.
    pub frames_read: u64,
}

/// The `waly` messages `(seq, content)` of transaction `commit_lsn`, in
/// order, from the frames `indexes` name for it in `segments` (`(key,
/// number, size)` of the generation). `Ok(Err((index key, error)))` when an
/// index object cannot be read: the caller reads the segments instead.
pub async fn transaction_messages(
    store: &Store,
    indexes: &[Index],
    segments: &[(String, u64, u64)],
    schemas: &Schemas,
    commit_lsn: Lsn,
    reads: &mut MessageReads,
) -> Result<Result<Vec<(u64, String)>, (String, Error)>, Error> {
    let mut contents: Vec<(u64, String)> = Vec::new();
    let mut seen: BTreeSet<(u64, u32)> = BTreeSet::new();
    for idx in indexes {
        let found = match idx.lookup_message(store, commit_lsn.as_u64()).await {
            Ok(f) => f,
            Err(e) => return Ok(Err((idx.key.clone(), e))),
        };
        for (o, f) in found {
            let Some(obj) = idx.footer.objects.get(o as usize) else {
                continue;
            };
            if !seen.insert((obj.number, f)) {
                continue;
            }
            let Some((seg_key, _, seg_size)) = segments
                .iter()
                .find(|(k, n, _)| *n == obj.number && crate::archive::layout::segment_fence(k) == obj.fence)
            else {
                continue;
            };
            if let std::collections::btree_map::Entry::Vacant(e) = reads.frames.entry(obj.number) {
                e.insert(segment_frames(store, seg_key, *seg_size).await?);
            }
            let Some((off, len)) = reads.frames.get(&obj.number).and_then(|fr| fr.get(f as usize)).copied() else {
                continue;
            };
            let z = store.get_range_frames(seg_key, off..off + len).await?;
            reads.frames_read += 1;
            let mut r = SegmentReader::frame(seg_key, &z)?;
            while let Some(rec) = r.next_record(schemas)? {
                if let Record::Message(m) = rec {
                    if m.commit_lsn == commit_lsn && !contents.iter().any(|(s, _)| *s == m.seq) {
                        contents.push((m.seq, m.content));
                    }
                }
            }
        }
    }
    contents.sort();
    Ok(Ok(contents))
}
