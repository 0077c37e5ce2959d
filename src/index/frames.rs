//! The frame table of a segment index object: where each covered segment's
//! record frames lie, so a lookup reads a hit frame without first reading
//! that segment's header (one round trip fewer, one request fewer per
//! segment).
//!
//! It is a section of blocks. Each block's pointer has as its first value
//! the position (in the footer's `objects`) of the first object it
//! describes. A block holds, for each object it describes, in order:
//! the object's position minus the previous one's (the first: minus the
//! block's first value), the number of frames `n`, the first frame's
//! offset, then the `n` frames' lengths, all varints. The frames of a
//! segment lie end to end, so each offset is the one before plus its
//! length. An object the table does not describe (one whose frames do not
//! lie end to end, or one merged from an object written before the table)
//! is read through its header, as before.

use super::write::{put_varint, BlockWriter};
use super::{damaged, get_varint, Block};
use crate::Error;

/// Frames per block of the table (about 2 bytes each).
const FRAMES_PER_BLOCK: usize = 4096;

/// The byte ranges `(offset, length)` of a segment's record frames, by the
/// segment's position in an index object's `objects`.
pub type FrameTable = std::collections::BTreeMap<u32, Vec<(u64, u64)>>;

/// A segment's position in `objects`, and its frames' byte ranges.
pub(super) type Placed = (u32, Vec<(u64, u64)>);

/// Whether `frames` lie end to end (so the table can hold them).
fn end_to_end(frames: &[(u64, u64)]) -> bool {
    frames.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0)
}

/// Writes a frame table, objects given in order.
#[derive(Default)]
pub(super) struct FrameTableWriter {
    raw: Vec<u8>,
    /// The block's first object, and the last one written.
    first: Option<u32>,
    last: u32,
    frames: usize,
    blocks: Vec<Block>,
}

impl FrameTableWriter {
    /// Adds object `object`'s frames (after every object before it).
    pub(super) fn push(&mut self, object: u32, frames: &[(u64, u64)], c: &mut BlockWriter) -> Result<(), Error> {
        if frames.is_empty() || !end_to_end(frames) {
            return Ok(());
        }
        if self.first.is_some() && object <= self.last {
            return Err(Error::Protocol("frame table objects out of order".into()));
        }
        let from = match self.first {
            Some(_) => self.last,
            None => {
                self.first = Some(object);
                object
            }
        };
        put_varint(&mut self.raw, (object - from) as u64);
        put_varint(&mut self.raw, frames.len() as u64);
        put_varint(&mut self.raw, frames[0].0);
        for (_, len) in frames {
            put_varint(&mut self.raw, *len);
        }
        self.last = object;
        self.frames += frames.len();
        if self.frames >= FRAMES_PER_BLOCK {
            self.flush(c)?;
        }
        Ok(())
    }

    fn flush(&mut self, c: &mut BlockWriter) -> Result<(), Error> {
        if let Some(first) = self.first.take() {
            self.blocks.push(c.block(first as u64, &self.raw)?);
        }
        self.raw.clear();
        self.frames = 0;
        Ok(())
    }

    /// Writes what is pending: the table's blocks.
    pub(super) fn finish(mut self, c: &mut BlockWriter) -> Result<Vec<Block>, Error> {
        self.flush(c)?;
        Ok(self.blocks)
    }
}

/// The objects' frames one block of the table describes (`first`: its
/// pointer's first value; `z`: its bytes, opened).
pub(super) fn decode_frame_block(key: &str, first: u64, z: &[u8]) -> Result<Vec<Placed>, Error> {
    let raw = zstd::bulk::decompress(z, FRAMES_PER_BLOCK * 24 + (1 << 16)).map_err(|e| damaged(key, e))?;
    let bad = || damaged(key, "a frame table block does not decode");
    let mut at = 0;
    let mut object = u32::try_from(first).map_err(|_| bad())?;
    let mut out: Vec<Placed> = Vec::new();
    while at < raw.len() {
        let step = get_varint(&raw, &mut at).ok_or_else(bad)?;
        if !out.is_empty() && step == 0 {
            return Err(bad());
        }
        object = u32::try_from(step)
            .ok()
            .and_then(|s| object.checked_add(s))
            .ok_or_else(bad)?;
        let n = get_varint(&raw, &mut at).ok_or_else(bad)?;
        let mut offset = get_varint(&raw, &mut at).ok_or_else(bad)?;
        // Each frame takes at least a byte of the block.
        if n == 0 || n > (raw.len() - at) as u64 {
            return Err(bad());
        }
        let mut frames = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let len = get_varint(&raw, &mut at).ok_or_else(bad)?;
            frames.push((offset, len));
            offset = offset.checked_add(len).ok_or_else(bad)?;
        }
        out.push((object, frames));
    }
    Ok(out)
}

/// Whether every place `(offset, length)` a frame table gives lies inside
/// a segment of `size` bytes (as listed).
pub fn placed_inside(places: &[(u64, u64)], size: u64) -> bool {
    places
        .iter()
        .all(|(off, len)| off.checked_add(*len).is_some_and(|end| end <= size))
}
