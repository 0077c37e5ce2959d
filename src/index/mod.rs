//! The index: which frames of which objects hold a given row's changes, so
//! one row's history reads a few small ranges instead of the archive.
//!
//! An index object covers some objects of a generation (a run of segments,
//! or one snapshot's parts). It holds sorted entries `(hash, object, frame)`
//! where `hash` is a [`Hasher`] value of a row's table and primary key (a
//! key that is one integer has instead its bucket's entry, one per bucket of
//! 32 keys and frame, with a bit per key: [`RowKey::Bucket`]), and a
//! second list `(commit LSN, object, frame)` locating `waly` messages. The
//! entries are cut into blocks (zstd frames) of [`BLOCK_ENTRIES`]; a footer
//! lists the covered objects with their frames' byte ranges and each block's
//! first value, offset and length; the trailer (the last 24 bytes; 56 with
//! a SHA-256 in an encrypted archive, whose blocks and footer are sealed)
//! gives the footer's offset and length and a magic. A lookup reads the trailer, the footer
//! and one block per index object. The index is derived data: `waly
//! reindex` rebuilds it from the segments, and a reader that finds an object
//! uncovered, missing or damaged reads the segments themselves.

use crate::archive::Store;
use crate::Error;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

mod frames;
mod hash;
mod merge;
mod messages;
mod rebuild;
mod runs;
mod tails;
mod write;
use frames::{decode_frame_block, FrameTableWriter};
pub use frames::{placed_inside, FrameTable};
pub use hash::{key_hash, Hasher, RowKey, TRUNCATE_KEY};
pub use merge::{level_merges, merge, merge_levels, Merger};
pub use messages::{transaction_messages, MessageReads};
pub use rebuild::{pk_of, reindex, ReindexStats};
pub use tails::{faults as tails_faults, update as update_tails, Known, Tails, KEY as TAILS_KEY};
use write::{write_fences, BlockWriter, SectionWriter};

/// Entries per block.
pub const BLOCK_ENTRIES: usize = 256;
/// Block pointers per fence block.
const FENCE_ENTRIES: usize = 256;
const MAGIC: &[u8; 8] = b"WALYIDX5";
/// The trailer of index objects whose blocks coded entry after entry
/// (format 4; still read).
const MAGIC_V4: &[u8; 8] = b"WALYIDX4";
/// The trailer of index objects written before integer keys were indexed
/// by bucket (format 3: every key hashed; still read).
const MAGIC_V3: &[u8; 8] = b"WALYIDX3";
/// The trailer of index objects written before keys were compared by value
/// (format 2: key text hashed as it was stored).
const MAGIC_V2: &[u8; 8] = b"WALYIDX2";
/// The trailer of a sealed index object (an encrypted archive's): the
/// SHA-256 of the bytes before it comes first, so `verify` without a key
/// names a changed byte.
const MAGIC_SEALED: &[u8; 8] = b"WALYIDXE";
/// The length of a sealed index object's trailer: SHA-256, footer offset
/// and length, magic.
const SEALED_TRAILER: usize = 56;
/// The index format this waly writes (it reads this, [`FORMAT_V4`] and
/// [`FORMAT_V3`]).
const FORMAT: u32 = 5;
/// The index format whose blocks coded entry after entry (each entry's
/// value, object and frame together), not column by column.
const FORMAT_V4: u32 = 4;
/// The index format before the bucket section: every key hashed.
const FORMAT_V3: u32 = 3;

/// Writes the index object of segment `number` of `gen` (just stored,
/// under fencing token `fence`): a run of level 0, which
/// [`merge_levels`] then merges. The index is derived data: a failure is
/// logged, and readers scan that segment instead. Returns whether it wrote.
pub async fn write_segment_index(
    store: &Store,
    gen: &str,
    number: u64,
    fence: u64,
    sealed: &crate::segment::SealedSegment,
) -> bool {
    let sealer = sealed.sealer.as_ref();
    let mut b = Builder::for_writer(sealer);
    b.add(
        Covered {
            number,
            key: String::new(),
            frames: Vec::new(),
            fence,
        },
        &sealed.keys,
        &sealed.message_entries,
        &sealed.table_entries,
    );
    let body = sealed.body_offset;
    b.segment_frames(sealed.header.frames.iter().map(|(o, l)| (o + body, *l)).collect());
    let written = match b.encode(gen, sealer) {
        Ok(bytes) => {
            put_index(
                store,
                &segments_index_key(gen, number, number),
                write::Written::Memory(bytes),
            )
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        tracing::warn!(segment = number, error = %crate::error::chain(&e), "could not write the segment's index; reads fall back to scanning it");
        return false;
    }
    true
}

/// Uploads index object `key` once. Another process may have written it
/// first with other bytes (`waly reindex` beside a running writer: both
/// merge the same range, and in an encrypted archive their blocks are
/// sealed under other keys and nonces): that object indexes the same
/// objects, and is kept; this one is dropped.
async fn put_index(store: &Store, key: &str, written: write::Written) -> Result<(), Error> {
    let put = match written {
        write::Written::Memory(bytes) => store.put_once(key, bytes).await,
        write::Written::File(file) => store.put_file_once(key, &file.path).await,
    };
    match put {
        Err(Error::Conflict { .. }) => {
            tracing::debug!(key, "another process wrote this index object first; it is kept");
            Ok(())
        }
        put => put,
    }
}

/// An object an index covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covered {
    /// Segment number (or position of the part in the snapshot's manifest).
    pub number: u64,
    /// Its key in the archive (empty for segments: they are found by number).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// `[offset, length]` of each frame, from the start of the object (empty
    /// for segments: their header lists them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<(u64, u64)>,
    /// For a segment: the fencing token it was written under. An index
    /// entry applies only to the segment of that number *and* token, so the
    /// index of a deposed writer's upload is never applied to history.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fence: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A pointer to a block: its first value, offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Its first value (hash or LSN).
    pub first: u64,
    /// Offset in the index object.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// The footer of an index object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footer {
    /// Always 2.
    pub waly_index: u32,
    /// The generation.
    pub generation: String,
    /// The objects covered, in order.
    pub objects: Vec<Covered>,
    /// Fence blocks over the blocks of `(key hash, object, frame)`.
    pub key_fences: Vec<Block>,
    /// Fence blocks over the blocks of `(message commit LSN, object, frame)`.
    pub message_fences: Vec<Block>,
    /// Fence blocks over the blocks of `(table hash, object, frame)`: which
    /// frames hold a table's changes. Absent in index objects written before
    /// waly kept it (a reader then reads those segments whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_fences: Option<Vec<Block>>,
    /// Fence blocks over the blocks of `(bucket value, object, frame)`: the
    /// frames holding rows whose key is one integer (see [`RowKey::Bucket`]).
    /// Absent in format 3 objects, which hashed those keys like any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_fences: Option<Vec<Block>>,
    /// The blocks of the frame table: where the covered segments' record
    /// frames lie (see [`FrameTable`]). Absent in objects written before
    /// waly kept it (a lookup then reads each hit segment's header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_table: Option<Vec<Block>>,
    /// Whether the key section also holds integer keys, hashed (a merge of
    /// a format 3 object): a lookup of one then reads both sections.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hashed_int_keys: bool,
    /// Encrypted archives: the data key whose [`Hasher::keyed`] hashed the
    /// entries (blocks and footer are sealed, each a frame of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// An entry: a value (hash or LSN), the object's position in `objects`, the frame.
pub type Entry = (u64, u32, u32);

/// A writer's row-key entries for one object, noted as its frames fill:
/// hashes, and for integer keys one bucket entry per bucket and frame (the
/// bits of the keys the frame holds OR-ed into it).
#[derive(Debug, Default, Clone)]
pub struct KeyEntries {
    /// `(key hash, frame)`.
    pub hashes: Vec<(u64, u32)>,
    /// `(bucket value, frame)`.
    pub buckets: Vec<(u64, u32)>,
    /// The frame noted last, and its buckets: bucket hash -> position in `buckets`.
    open: Option<(u32, std::collections::HashMap<u64, usize>)>,
}

impl KeyEntries {
    /// Notes that frame `frame` (frames noted in order) holds a change of
    /// the row `key`.
    pub fn note(&mut self, key: RowKey, frame: u32) {
        match key {
            RowKey::Hash(h) => {
                if self.hashes.last() != Some(&(h, frame)) {
                    self.hashes.push((h, frame));
                }
            }
            RowKey::Bucket(v) => {
                if self.open.as_ref().is_none_or(|(f, _)| *f != frame) {
                    self.open = Some((frame, Default::default()));
                }
                let Some((_, open)) = &mut self.open else { return };
                match open.get(&(v >> 32)) {
                    Some(&at) => self.buckets[at].0 |= v,
                    None => {
                        open.insert(v >> 32, self.buckets.len());
                        self.buckets.push((v, frame));
                    }
                }
            }
        }
    }
}

/// Collects entries for one index object.
#[derive(Debug, Default)]
pub struct Builder {
    objects: Vec<Covered>,
    keys: Vec<Entry>,
    messages: Vec<Entry>,
    tables: Vec<Entry>,
    buckets: Vec<Entry>,
    /// The covered segments' frames, by position in `objects`.
    frames: Vec<frames::Placed>,
    /// The data key the entries are hashed under (`None`: plaintext).
    key_id: Option<String>,
    /// Its hasher (a writer's: see [`Builder::for_writer`]).
    hasher: Hasher,
    /// Tests: the layout of an older format's blocks (see
    /// [`SectionWriter::with_format`]).
    #[cfg(test)]
    block_format: Option<u32>,
    /// A snapshot's builder: the key and bucket entries past a bound wait
    /// in sorted runs in local files (see [`Builder::spilling`]).
    spill: Option<Spill>,
}

/// Where a spilling builder's entries wait (see [`runs`]).
#[derive(Debug)]
struct Spill {
    /// Key and bucket entries held in memory at most.
    at: usize,
    /// The scratch directory, made at the first spill.
    dir: Option<crate::scratch::Scratch>,
    keys: runs::Runs,
    buckets: runs::Runs,
    /// A spill that failed: the object is not written (it is derived data).
    failed: Option<Error>,
}

fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

impl Builder {
    /// An empty builder for entries a writer hashes with [`Builder::hasher`]:
    /// under `sealer`'s data key (`None`: a plaintext archive).
    pub fn for_writer(sealer: Option<&crate::crypt::Sealer>) -> Self {
        Builder {
            key_id: sealer.map(|s| s.key_id().to_string()),
            hasher: sealer.map(|s| s.hasher().clone()).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// This builder holds at most about a million key and bucket entries
    /// in memory (16 MiB): past that it sorts them into runs in local files,
    /// merged back in order as the object is written ([`Builder::store`]).
    /// For a snapshot's index, which has an entry per row.
    pub fn spilling(self) -> Self {
        self.spilling_at(runs::SPILL_ENTRIES)
    }

    fn spilling_at(mut self, at: usize) -> Self {
        self.spill = Some(Spill {
            at,
            dir: None,
            keys: Default::default(),
            buckets: Default::default(),
            failed: None,
        });
        self
    }

    /// Writes the key and bucket entries held to runs, when a spilling
    /// builder holds its bound of them.
    fn spill_if_full(&mut self) {
        let Some(spill) = &mut self.spill else { return };
        if spill.failed.is_some() || self.keys.len() + self.buckets.len() < spill.at {
            return;
        }
        let wrote = (|| {
            let dir = match &mut spill.dir {
                Some(d) => d,
                None => spill.dir.insert(crate::scratch::Scratch::new("index-entries")?),
            };
            spill.keys.write(dir, "keys", &mut self.keys)?;
            spill.buckets.write(dir, "buckets", &mut self.buckets)
        })();
        if let Err(e) = wrote {
            spill.failed = Some(e);
        }
    }

    /// How a writer hashes the entries it adds (see [`Builder::for_writer`]).
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// The data key its entries are hashed under.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// Adds an object and its entries (`(value, frame)`): row keys,
    /// messages, and the tables its frames have changes of.
    pub fn add(&mut self, object: Covered, keys: &KeyEntries, messages: &[(u64, u32)], tables: &[(u64, u32)]) {
        let i = self.objects.len() as u32;
        self.objects.push(object);
        self.keys.extend(keys.hashes.iter().map(|(h, f)| (*h, i, *f)));
        self.buckets.extend(keys.buckets.iter().map(|(v, f)| (*v, i, *f)));
        self.messages.extend(messages.iter().map(|(l, f)| (*l, i, *f)));
        self.tables.extend(tables.iter().map(|(h, f)| (*h, i, *f)));
        self.spill_if_full();
    }

    /// Notes where the record frames of the segment added last lie
    /// (`(offset, length)` from the start of the segment), for the frame table.
    pub fn segment_frames(&mut self, frames: Vec<(u64, u64)>) {
        if let Some(i) = self.objects.len().checked_sub(1) {
            self.frames.push((i as u32, frames));
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The index object's bytes: data blocks, fence blocks, footer, trailer;
    /// `sealer` (an encrypted archive's writer) seals each block and the
    /// footer as a frame of its own, so a lookup still reads a few ranges.
    pub fn encode(self, generation: &str, sealer: Option<&crate::crypt::Sealer>) -> Result<Bytes, Error> {
        let mut c = BlockWriter::new(sealer)?;
        let footer = self.write_into(generation, sealer, &mut c)?;
        c.finish_in_memory(&footer)
    }

    /// Writes the index object at `key` of `store`, as [`Builder::encode`]
    /// would, holding at most a few MiB of it in memory (past that, it is
    /// written to a local file and uploaded from there).
    pub async fn store(
        self,
        store: &Store,
        key: &str,
        generation: &str,
        sealer: Option<&crate::crypt::Sealer>,
    ) -> Result<(), Error> {
        let mut c = BlockWriter::spilling(sealer, write::SPILL_BYTES)?;
        let footer = self.write_into(generation, sealer, &mut c)?;
        put_index(store, key, c.finish(&footer)?).await
    }

    /// Writes the sections, fences and frame table into `c`: the footer.
    fn write_into(
        mut self,
        generation: &str,
        sealer: Option<&crate::crypt::Sealer>,
        c: &mut BlockWriter,
    ) -> Result<Footer, Error> {
        if self.key_id.is_some() != sealer.is_some() {
            return Err(Error::Encryption(
                "index entries must be hashed under a data key exactly when the archive is encrypted".into(),
            ));
        }
        let spill = self.spill.take();
        if let Some(e) = spill.as_ref().and_then(|s| s.failed.as_ref()) {
            return Err(Error::Protocol(format!(
                "could not set index entries aside in a local file: {e}"
            )));
        }
        #[cfg(test)]
        let format = self.block_format.unwrap_or(FORMAT);
        let section = |entries: Vec<Entry>,
                       runs: Option<&runs::Runs>,
                       codec: Codec,
                       c: &mut BlockWriter|
         -> Result<write::Section, Error> {
            #[cfg(test)]
            let mut w = SectionWriter::with_format(codec, format);
            #[cfg(not(test))]
            let mut w = SectionWriter::new(codec);
            let mut merged = runs.unwrap_or(&runs::Runs::default()).merged(entries)?;
            while let Some(e) = merged.next_entry()? {
                w.push(e, c)?;
            }
            w.finish(c)
        };
        let keys = section(
            std::mem::take(&mut self.keys),
            spill.as_ref().map(|s| &s.keys),
            Codec::Delta,
            c,
        )?;
        let messages = section(std::mem::take(&mut self.messages), None, Codec::Delta, c)?;
        let tables = section(std::mem::take(&mut self.tables), None, Codec::Delta, c)?;
        let buckets = section(
            std::mem::take(&mut self.buckets),
            spill.as_ref().map(|s| &s.buckets),
            Codec::Buckets,
            c,
        )?;
        let key_fences = write_fences(keys, c)?;
        let message_fences = write_fences(messages, c)?;
        let table_fences = Some(write_fences(tables, c)?);
        let bucket_fences = Some(write_fences(buckets, c)?);
        let mut table = FrameTableWriter::default();
        for (i, frames) in &self.frames {
            table.push(*i, frames, c)?;
        }
        let frame_table = Some(table.finish(c)?).filter(|_| !self.frames.is_empty());
        Ok(Footer {
            waly_index: FORMAT,
            generation: generation.to_string(),
            objects: self.objects,
            key_fences,
            message_fences,
            table_fences,
            bucket_fences,
            frame_table,
            hashed_int_keys: false,
            key_id: self.key_id,
        })
    }
}

/// A sealed index object's frames (every byte before its trailer), and
/// whether they hash to the SHA-256 its trailer gives; `None` when `bytes`
/// is no sealed index object.
pub fn sealed_body(bytes: &[u8]) -> Option<(&[u8], bool)> {
    let n = bytes.len().checked_sub(SEALED_TRAILER)?;
    if &bytes[bytes.len() - 8..] != MAGIC_SEALED {
        return None;
    }
    let (body, sha) = (&bytes[..n], &bytes[n..n + 32]);
    Some((body, <sha2::Sha256 as sha2::Digest>::digest(body)[..] == *sha))
}

/// An index object, opened (its footer read).
#[derive(Debug, Clone)]
pub struct Index {
    /// Its key in the archive.
    pub key: String,
    /// Its footer.
    pub footer: Footer,
    /// How its entries were hashed.
    pub hasher: Hasher,
    /// Its last bytes, read with the trailer: `(offset, bytes)`. Blocks
    /// within them (the footer, often the fence blocks) need no request.
    tail: (u64, Bytes),
}

/// The bytes an index object's first read takes from its end: the
/// trailer, the footer and, in small objects, the fence blocks.
const TAIL_READ: u64 = 8 << 10;

/// The most bytes [`Index::visit_blocks`] reads at once: the data blocks
/// under one fence block (256 of at most a few KiB each).
const SPAN_READ: u64 = 4 << 20;

fn damaged(key: &str, why: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        key: key.to_string(),
        why: format!("index object: {why}"),
    }
}

/// How a section's blocks code their values (after the block's first
/// value, as u64 little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Each value minus the one before (a varint).
    Delta,
    /// Bucket values: the bucket hash (the high 32 bits) minus the one
    /// before, then the bits (the low 32), each a varint.
    Buckets,
}

/// How a bucket entry's bits are coded: one key (a single bit, as
/// scattered updates write) as `bit << 1 | 1`, one byte; several as
/// `bits << 1`.
fn bits_code(bits: u64) -> u64 {
    match bits.is_power_of_two() {
        true => (bits.trailing_zeros() as u64) << 1 | 1,
        false => bits << 1,
    }
}

/// The bits [`bits_code`] coded as `code`; `None` past 32 bits.
fn bits_of_code(code: u64) -> Option<u64> {
    let bits = match code & 1 {
        1 => 1u64.checked_shl((code >> 1).try_into().ok()?)?,
        _ => code >> 1,
    };
    (bits >> 32 == 0).then_some(bits)
}

/// The entries of a data block (`z`, its compressed bytes) of an object of
/// index format `format`: columns (format 5: [`decode_columns`]) or entry
/// after entry (formats 3 and 4: [`decode_rows`]).
fn decode_block(key: &str, z: &[u8], codec: Codec, format: u32) -> Result<Vec<Entry>, Error> {
    // A block holds at most BLOCK_ENTRIES entries of under 40 bytes each,
    // its first value and its count.
    let raw = zstd::bulk::decompress(z, BLOCK_ENTRIES * 40 + 24).map_err(|e| damaged(key, e))?;
    let decoded = match format >= FORMAT {
        true => decode_columns(&raw, codec),
        false => decode_rows(&raw, codec),
    };
    decoded.ok_or_else(|| damaged(key, "a block does not decode"))
}

/// The value after `prev` that `codec` coded as `delta` (and `bits`, a
/// [`bits_code`], for bucket values).
fn next_value(codec: Codec, prev: u64, delta: u64, bits: u64) -> Option<u64> {
    match codec {
        Codec::Delta => prev.checked_add(delta),
        Codec::Buckets => {
            let high = (prev >> 32).checked_add(delta).filter(|h| *h >> 32 == 0)?;
            Some(high << 32 | bits_of_code(bits)?)
        }
    }
}

/// A format 5 block: the first value (u64 LE), the count of entries (a
/// varint), then each column whole, a varint per entry: the values' deltas
/// (and for bucket values their bits' codes), the objects (an entry whose
/// value is the one before's: the step from that entry's object), the
/// frames.
fn decode_columns(raw: &[u8], codec: Codec) -> Option<Vec<Entry>> {
    let mut prev = u64::from_le_bytes(raw.get(0..8)?.try_into().ok()?);
    let mut at = 8;
    let n = usize::try_from(get_varint(raw, &mut at)?).ok()?;
    // Each entry takes at least three bytes: a count past that is damage,
    // never an allocation.
    if n > raw.len() / 3 {
        return None;
    }
    let mut column = || (0..n).map(|_| get_varint(raw, &mut at)).collect::<Option<Vec<u64>>>();
    let deltas = column()?;
    let bits = match codec {
        Codec::Delta => vec![0; n],
        Codec::Buckets => column()?,
    };
    let objects = column()?;
    let frames = column()?;
    if at != raw.len() {
        return None;
    }
    let mut out: Vec<Entry> = Vec::with_capacity(n);
    for i in 0..n {
        let v = next_value(codec, prev, deltas[i], bits[i])?;
        // An entry with the value of the one before: its object is a step
        // from that entry's.
        let o = match out.last() {
            Some(&(bv, bo, _)) if bv == v => (bo as u64).checked_add(objects[i])?,
            _ => objects[i],
        };
        out.push((v, u32::try_from(o).ok()?, u32::try_from(frames[i]).ok()?));
        prev = v;
    }
    Some(out)
}

/// A format 3 or 4 block: the first value (u64 LE), then entry after
/// entry: the value's delta (and for bucket values its bits' code), the
/// object, the frame, each a varint.
fn decode_rows(raw: &[u8], codec: Codec) -> Option<Vec<Entry>> {
    let mut prev = u64::from_le_bytes(raw.get(0..8)?.try_into().ok()?);
    let mut at = 8;
    let mut out = Vec::new();
    while at < raw.len() {
        let delta = get_varint(raw, &mut at)?;
        let bits = match codec {
            Codec::Delta => 0,
            Codec::Buckets => get_varint(raw, &mut at)?,
        };
        let v = next_value(codec, prev, delta, bits)?;
        let o = get_varint(raw, &mut at)? as u32;
        let f = get_varint(raw, &mut at)? as u32;
        out.push((v, o, f));
        prev = v;
    }
    Some(out)
}

fn decode_fences(key: &str, z: &[u8]) -> Result<Vec<Block>, Error> {
    let raw = zstd::bulk::decompress(z, FENCE_ENTRIES * 24).map_err(|e| damaged(key, e))?;
    if raw.len() % 24 != 0 {
        return Err(damaged(key, "a fence block is not whole pointers"));
    }
    Ok(raw
        .chunks_exact(24)
        .map(|e| Block {
            first: u64::from_le_bytes(e[0..8].try_into().unwrap_or_default()),
            offset: u64::from_le_bytes(e[8..16].try_into().unwrap_or_default()),
            len: u64::from_le_bytes(e[16..24].try_into().unwrap_or_default()),
        })
        .collect())
}

/// The pointers whose range can hold a value in `lo..=hi`: from the last
/// one starting below `lo` to the last one starting at or below `hi`
/// (equal values may straddle).
fn candidates(blocks: &[Block], lo: u64, hi: u64) -> &[Block] {
    let from = blocks.partition_point(|b| b.first < lo).saturating_sub(1);
    let to = blocks.partition_point(|b| b.first <= hi);
    blocks.get(from..to).unwrap_or_default()
}

impl Index {
    /// Reads the trailer and the footer of the index object `key` of `size` bytes.
    pub async fn open(store: &Store, key: &str, size: u64) -> Result<Index, Error> {
        if size < 24 {
            return Err(damaged(key, "too short"));
        }
        let start = size.saturating_sub(TAIL_READ);
        let tail = store.get_range(key, start..size).await?;
        if (tail.len() as u64) < size - start {
            return Err(damaged(key, "shorter than listed"));
        }
        Index::from_tail(store, key, size, tail).await
    }

    /// [`Index::open`] for an object not listed (its size unknown): one
    /// request for its last bytes all the same. `None` when there is none.
    pub async fn open_unlisted(store: &Store, key: &str) -> Result<Option<Index>, Error> {
        match store.get_suffix(key, TAIL_READ).await {
            Ok((tail, size)) if (tail.len() as u64) < size.min(TAIL_READ) => Err(damaged(key, "shorter than its size")),
            Ok((tail, size)) => Index::from_tail(store, key, size, tail).await.map(Some),
            Err(Error::Store { source, .. }) if matches!(*source, object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the index object `key` of `size` bytes from `tail`, its last bytes.
    async fn from_tail(store: &Store, key: &str, size: u64, tail: Bytes) -> Result<Index, Error> {
        let Some(start) = size.checked_sub(tail.len() as u64) else {
            return Err(damaged(key, "longer than its size"));
        };
        // (A tail from the tails directory starts where its writer chose:
        // at its footer or before. One that starts past it costs a read.)
        if tail.len() < 24 {
            return Err(damaged(key, "too short"));
        }
        let t = tail.slice(tail.len() - 24..);
        // What the footer may lie in: the bytes before the trailer.
        let body = if &t[16..24] == MAGIC_SEALED {
            (size as usize)
                .checked_sub(SEALED_TRAILER)
                .ok_or_else(|| damaged(key, "too short"))? as u64
        } else {
            size - 24
        };
        if &t[16..24] == MAGIC_V2 {
            return Err(damaged(
                key,
                "written by an older waly (index format 2, keys hashed as stored text); `waly reindex` upgrades it",
            ));
        }
        if ![MAGIC, MAGIC_V4, MAGIC_V3, MAGIC_SEALED]
            .iter()
            .any(|m| t[16..24] == m[..])
        {
            return Err(damaged(key, "no trailer (or another format)"));
        }
        let at = u64::from_le_bytes(t[0..8].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(t[8..16].try_into().unwrap_or_default());
        if at.checked_add(len).is_none_or(|end| end > body) {
            return Err(damaged(key, "the trailer points outside the object"));
        }
        // Sealed in an encrypted archive (a plaintext footer there is an
        // error, never read).
        let z = if at >= start {
            let z = tail.slice((at - start) as usize..(at - start + len) as usize);
            store.open_frames(key, z).await?
        } else {
            store.get_range_frames(key, at..at + len).await?
        };
        // Decoded as it grows: a capacity given up front is allocated whole.
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(&z[..])
            .and_then(|d| std::io::Read::read_to_end(&mut std::io::Read::take(d, 256 << 20), &mut json))
            .map_err(|e| damaged(key, e))?;
        let footer: Footer = serde_json::from_slice(&json).map_err(|e| damaged(key, e))?;
        let version = match &t[16..24] {
            m if m == MAGIC => Some(FORMAT),
            m if m == MAGIC_V4 => Some(FORMAT_V4),
            m if m == MAGIC_V3 => Some(FORMAT_V3),
            _ => None,
        };
        if version.is_some_and(|v| v != footer.waly_index)
            || ![FORMAT, FORMAT_V4, FORMAT_V3].contains(&footer.waly_index)
            || (footer.waly_index == FORMAT_V3) != footer.bucket_fences.is_none()
        {
            return Err(damaged(
                key,
                format!(
                    "version {} (its trailer and footer disagree, or another format)",
                    footer.waly_index
                ),
            ));
        }
        let hasher = match &footer.key_id {
            Some(id) => store.index_hasher(id).await?,
            None if store.is_encrypted().await? => {
                return Err(damaged(
                    key,
                    "its entries are not hashed under a data key in an encrypted archive",
                ))
            }
            None => Hasher::Plain,
        };
        Ok(Index {
            key: key.to_string(),
            footer,
            hasher,
            tail: (start, tail),
        })
    }

    /// A block (`len` bytes at `offset`), opened: from the tail read with
    /// the footer when it lies there.
    async fn block(&self, store: &Store, b: &Block) -> Result<Bytes, Error> {
        let (start, tail) = &self.tail;
        if b.offset >= *start && b.offset + b.len <= start + tail.len() as u64 {
            let at = (b.offset - start) as usize;
            return store.open_frames(&self.key, tail.slice(at..at + b.len as usize)).await;
        }
        store.get_range_frames(&self.key, b.offset..b.offset + b.len).await
    }

    /// The entries of one of its data blocks (`z`, as read and opened).
    fn decode(&self, z: &[u8], codec: Codec) -> Result<Vec<Entry>, Error> {
        decode_block(&self.key, z, codec, self.footer.waly_index)
    }

    /// The entries of a section (its fence blocks `fences`, coded by
    /// `codec`) whose values lie in `lo..=hi`.
    async fn find_range(
        &self,
        store: &Store,
        fences: &[Block],
        codec: Codec,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<Entry>, Error> {
        // The fence blocks at once, then the data blocks at once: two round
        // trips at most, however many blocks the range spans.
        let fenced = candidates(fences, lo, hi).iter().map(|f| self.block(store, f));
        let mut blocks = Vec::new();
        for z in futures_util::future::try_join_all(fenced).await? {
            let inner = decode_fences(&self.key, &z)?;
            blocks.extend_from_slice(candidates(&inner, lo, hi));
        }
        blocks.dedup();
        let data = blocks.iter().map(|b| self.block(store, b));
        let mut out = Vec::new();
        for z in futures_util::future::try_join_all(data).await? {
            out.extend(
                self.decode(&z, codec)?
                    .into_iter()
                    .filter(|(v, _, _)| (lo..=hi).contains(v)),
            );
        }
        Ok(out)
    }

    async fn find(&self, store: &Store, fences: &[Block], value: u64) -> Result<Vec<(u32, u32)>, Error> {
        let found = self.find_range(store, fences, Codec::Delta, value, value).await?;
        Ok(found.into_iter().map(|(_, o, f)| (o, f)).collect())
    }

    /// `(object, frame)` of every entry whose value is `hash`.
    pub async fn lookup_hash(&self, store: &Store, hash: u64) -> Result<Vec<(u32, u32)>, Error> {
        self.find(store, &self.footer.key_fences, hash).await
    }

    /// `(object, frame)` of every entry for the row of `table` whose key
    /// [`crate::schema::keys::KeyColumns::encode`] wrote as `key` (or
    /// [`TRUNCATE_KEY`]: the table's truncates): an integer key from the
    /// bucket section (and the key section too, in a merge of a format 3
    /// object), any other from the key section.
    pub async fn lookup_key(&self, store: &Store, table: &str, key: &[u8]) -> Result<Vec<(u32, u32)>, Error> {
        let (Some(fences), RowKey::Bucket(v)) = (&self.footer.bucket_fences, self.hasher.row_key(table, key)) else {
            return self.lookup_hash(store, self.hasher.key(table, key)).await;
        };
        let (lo, bit) = (v >> 32 << 32, v & 0xffff_ffff);
        let hashed = async {
            match self.footer.hashed_int_keys {
                true => self.lookup_hash(store, self.hasher.key(table, key)).await,
                false => Ok(Vec::new()),
            }
        };
        let (found, hashed) = futures_util::future::try_join(
            self.find_range(store, fences, Codec::Buckets, lo, lo | 0xffff_ffff),
            hashed,
        )
        .await?;
        let mut out: Vec<(u32, u32)> = found
            .into_iter()
            .filter(|(v, _, _)| v & bit != 0)
            .map(|(_, o, f)| (o, f))
            .chain(hashed)
            .collect();
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The frame table (see [`FrameTable`]): `None` when the object has
    /// none. Its blocks lie together, so this is one read at most (none
    /// when they lie in the tail).
    pub async fn frame_table(&self, store: &Store) -> Result<Option<FrameTable>, Error> {
        let Some(blocks) = &self.footer.frame_table else {
            return Ok(None);
        };
        let (Some(from), Some(to)) = (
            blocks.iter().map(|b| b.offset).min(),
            blocks.iter().map(|b| b.offset + b.len).max(),
        ) else {
            return Ok(Some(FrameTable::new()));
        };
        let (start, tail) = &self.tail;
        let (at, bytes) = match from >= *start {
            true => (*start, tail.clone()),
            false => (from, store.get_range(&self.key, from..to).await?),
        };
        let mut table = FrameTable::new();
        for b in blocks {
            let z = b
                .offset
                .checked_sub(at)
                .and_then(|o| bytes.get(o as usize..(o + b.len) as usize))
                .ok_or_else(|| damaged(&self.key, "a frame table block lies outside the object"))?;
            let z = store.open_frames(&self.key, bytes.slice_ref(z)).await?;
            for (object, frames) in decode_frame_block(&self.key, b.first, &z)? {
                if table.insert(object, frames).is_some() || self.footer.objects.len() <= object as usize {
                    return Err(damaged(
                        &self.key,
                        "its frame table names an object twice, or one it lacks",
                    ));
                }
            }
        }
        Ok(Some(table))
    }

    /// Where its first fence block or frame table block starts: from there
    /// on lies all a lookup reads before the data blocks (objects written
    /// from format 5 on put them together, before the footer). `None` when
    /// it has none.
    pub(crate) fn pointed_from(&self) -> Option<u64> {
        let f = &self.footer;
        f.key_fences
            .iter()
            .chain(&f.message_fences)
            .chain(f.table_fences.iter().flatten())
            .chain(f.bucket_fences.iter().flatten())
            .chain(f.frame_table.iter().flatten())
            .map(|b| b.offset)
            .min()
    }

    /// The length of the frame table's blocks (0: none).
    pub fn frame_table_len(&self) -> u64 {
        self.footer.frame_table.iter().flatten().map(|b| b.len).sum()
    }

    /// `(object, frame)` of the `waly` messages of the transaction `commit_lsn`.
    pub async fn lookup_message(&self, store: &Store, commit_lsn: u64) -> Result<Vec<(u32, u32)>, Error> {
        self.find(store, &self.footer.message_fences, commit_lsn).await
    }

    /// Every data block's entries, section by section (row keys, messages,
    /// tables, buckets: those it has), passed to `visit` (the section's
    /// position in that order, the block's entries) as each is read: see
    /// [`Index::visit_section`]. Stops at the first `Some` `visit` returns.
    pub async fn visit_blocks<T>(
        &self,
        store: &Store,
        mut visit: impl FnMut(usize, Vec<Entry>) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        let f = &self.footer;
        let sections = [
            (Some(&f.key_fences[..]), Codec::Delta),
            (Some(&f.message_fences[..]), Codec::Delta),
            (f.table_fences.as_deref(), Codec::Delta),
            (f.bucket_fences.as_deref(), Codec::Buckets),
        ];
        for (section, (fences, codec)) in sections.into_iter().enumerate() {
            let Some(fences) = fences else { continue };
            let found = self
                .visit_section(store, fences, codec, 0..=u64::MAX, |entries| visit(section, entries))
                .await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The data blocks of a section (its fence blocks `fences`, coded by
    /// `codec`) that may hold values in `values`, each block's entries
    /// passed to `visit` as it is read: a fence block's data blocks in one
    /// request (one at a time when they span more than [`SPAN_READ`]), so
    /// that only those are held at once however large the object. Stops at
    /// the first `Some` `visit` returns.
    async fn visit_section<T>(
        &self,
        store: &Store,
        fences: &[Block],
        codec: Codec,
        values: std::ops::RangeInclusive<u64>,
        mut visit: impl FnMut(Vec<Entry>) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        let (lo, hi) = (*values.start(), *values.end());
        for fence in candidates(fences, lo, hi) {
            let z = self.block(store, fence).await?;
            let inner = decode_fences(&self.key, &z)?;
            let blocks = candidates(&inner, lo, hi);
            let from = blocks.iter().map(|b| b.offset).min().unwrap_or(0);
            let to = blocks.iter().map(|b| b.offset.saturating_add(b.len)).max().unwrap_or(0);
            let span = match to - from <= SPAN_READ {
                true if from < to => Some(store.get_range(&self.key, from..to).await?),
                _ => None,
            };
            for b in blocks {
                let z = match &span {
                    Some(bytes) => {
                        let at = (b.offset - from) as usize;
                        store
                            .open_frames(&self.key, bytes.slice(at..at + b.len as usize))
                            .await?
                    }
                    None => self.block(store, b).await?,
                };
                if let Some(found) = visit(self.decode(&z, codec)?) {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// `(object, frame)` of every frame holding a `waly` message of a
    /// transaction committed after `after` (any, when `None`), each once:
    /// the message section read a fence block's worth at a time, so memory
    /// holds the frames found, not the entries.
    pub async fn message_frames(
        &self,
        store: &Store,
        after: Option<u64>,
    ) -> Result<std::collections::BTreeSet<(u32, u32)>, Error> {
        let lo = match after {
            Some(a) => match a.checked_add(1) {
                Some(lo) => lo,
                None => return Ok(Default::default()),
            },
            None => 0,
        };
        let mut found = std::collections::BTreeSet::new();
        self.visit_section(
            store,
            &self.footer.message_fences,
            Codec::Delta,
            lo..=u64::MAX,
            |entries| {
                found.extend(entries.into_iter().filter(|(v, _, _)| *v >= lo).map(|(_, o, f)| (o, f)));
                None::<()>
            },
        )
        .await?;
        Ok(found)
    }

    /// `(object, frame)` of every frame with changes of `table`; `None` when
    /// this index object does not say (written before it kept tables).
    pub async fn lookup_table(&self, store: &Store, table: &str) -> Result<Option<Vec<(u32, u32)>>, Error> {
        match &self.footer.table_fences {
            None => Ok(None),
            Some(fences) => self.find(store, fences, self.hasher.table(table)).await.map(Some),
        }
    }

    /// `(object, frame)` of every frame `want` names (see [`Want`]), in
    /// no order; `None` when this index object does not say where tables
    /// are (written before it kept them).
    pub async fn wanted_frames(&self, store: &Store, want: &Want<'_>) -> Result<Option<Vec<(u32, u32)>>, Error> {
        let tables = futures_util::future::try_join_all(want.tables.iter().map(|t| self.lookup_table(store, t)));
        let messages = async {
            match want.messages {
                true => self.message_frames(store, want.after).await,
                false => Ok(Default::default()),
            }
        };
        let (tables, messages) = futures_util::future::try_join(tables, messages).await?;
        let Some(tables) = tables.into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        Ok(Some(tables.into_iter().flatten().chain(messages).collect()))
    }

    /// Every entry (for tests: [`Index::visit_blocks`] holds only a fence
    /// block's worth at once): row keys, messages, tables and buckets
    /// (those it has).
    #[cfg(test)]
    pub async fn entries(&self, store: &Store) -> Result<Sections, Error> {
        let mut s = Sections {
            tables: self.footer.table_fences.as_ref().map(|_| Vec::new()),
            buckets: self.footer.bucket_fences.as_ref().map(|_| Vec::new()),
            ..Sections::default()
        };
        self.visit_blocks(store, |section, entries| {
            let into = match section {
                0 => Some(&mut s.keys),
                1 => Some(&mut s.messages),
                2 => s.tables.as_mut(),
                _ => s.buckets.as_mut(),
            };
            into.into_iter().for_each(|v| v.extend(entries.iter().copied()));
            None::<()>
        })
        .await?;
        Ok(s)
    }
}

/// An index object's entries, by section ([`Index::entries`]).
#[derive(Debug, Default)]
pub struct Sections {
    /// `(key hash, object, frame)`.
    pub keys: Vec<Entry>,
    /// `(commit LSN, object, frame)`.
    pub messages: Vec<Entry>,
    /// `(table hash, object, frame)`, when it has the section.
    pub tables: Option<Vec<Entry>>,
    /// `(bucket value, object, frame)`, when it has the section.
    pub buckets: Option<Vec<Entry>>,
}

/// The key of the index object covering segments `first..=last` of `gen`.
pub fn segments_index_key(gen: &str, first: u64, last: u64) -> String {
    format!("index/{gen}/segments/{first:010}-{last:010}.idx")
}

/// The key of the index object of the snapshot at `lsn` in `gen`.
pub fn snapshot_index_key(gen: &str, lsn: crate::Lsn) -> String {
    format!("index/{gen}/snapshots/{:016X}.idx", lsn.as_u64())
}

/// Parses a segment index key into the segments it covers.
pub fn parse_segments_index_key(key: &str) -> Option<(u64, u64)> {
    let name = key.rsplit('/').next()?.strip_suffix(".idx")?;
    let (a, b) = name.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Every segment index object of `gen`: `(key, size, first, last)`.
async fn listed_segment_indexes(store: &Store, gen: &str) -> Result<Vec<(String, u64, u64, u64)>, Error> {
    Ok(segment_index_objects(
        store.list(&format!("index/{gen}/segments")).await?,
    ))
}

/// The segment index objects among listed `(key, size)`: `(key, size,
/// first, last)`.
fn segment_index_objects(listed: Vec<(String, u64)>) -> Vec<(String, u64, u64, u64)> {
    listed
        .into_iter()
        .filter(|(k, _)| k.split('/').nth(2) == Some("segments"))
        .filter_map(|(k, size)| parse_segments_index_key(&k).map(|(a, b)| (k, size, a, b)))
        .filter(|(_, _, a, b)| a <= b)
        .collect()
}

/// Every generation's index objects, `(key, size)` by generation: one
/// listing of `index/`, which a reader can send beside the generations'
/// own (it needs no generation id), so the index objects' first reads
/// start a round trip sooner. Their number grows with the levels, not the
/// segments.
///
/// The tails directory is read beside the listing: what it holds for the
/// listed objects is in the [`Known`] returned.
#[allow(clippy::type_complexity)]
pub async fn all_index_objects(
    store: &Store,
) -> Result<(std::collections::BTreeMap<String, Vec<(String, u64)>>, Known), Error> {
    let (listed, known) = tails::list_known(store, "index").await?;
    let mut out: std::collections::BTreeMap<String, Vec<(String, u64)>> = Default::default();
    for (key, size) in listed {
        // `index/<gen>/...`: a generation's objects (not the tails directory).
        if let (Some(gen), Some(_)) = (key.split('/').nth(1), key.split('/').nth(2)) {
            out.entry(gen.to_string()).or_default().push((key, size));
        }
    }
    Ok((out, known))
}

/// The segment index objects of `gen` that together cover the most
/// segments without overlapping: `(key, size, first, last)`, in order.
pub async fn segment_indexes(store: &Store, gen: &str) -> Result<Vec<(String, u64, u64, u64)>, Error> {
    Ok(widest_segment_indexes(listed_segment_indexes(store, gen).await?))
}

/// [`segment_indexes`], and what the tails directory (read beside the
/// listing) holds for them: open them with [`Index::open_known`].
#[allow(clippy::type_complexity)]
pub async fn segment_indexes_known(store: &Store, gen: &str) -> Result<(Vec<(String, u64, u64, u64)>, Known), Error> {
    let (listed, known) = tails::list_known(store, &format!("index/{gen}/segments")).await?;
    Ok((widest_segment_indexes(segment_index_objects(listed)), known))
}

/// Of a generation's listed index objects (`(key, size)`), the segment
/// index objects that together cover the most segments without
/// overlapping, as [`segment_indexes`] gives them.
pub fn segment_indexes_of(listed: &[(String, u64)]) -> Vec<(String, u64, u64, u64)> {
    widest_segment_indexes(segment_index_objects(listed.to_vec()))
}

fn widest_segment_indexes(mut all: Vec<(String, u64, u64, u64)>) -> Vec<(String, u64, u64, u64)> {
    // Widest first; keep those that do not overlap a kept one.
    all.sort_by_key(|(_, _, a, b)| (std::cmp::Reverse(b - a), *a));
    let mut kept: Vec<(String, u64, u64, u64)> = Vec::new();
    for c in all {
        if kept.iter().all(|k| c.3 < k.2 || c.2 > k.3) {
            kept.push(c);
        }
    }
    kept.sort_by_key(|k| k.2);
    kept
}

/// `[offset, length]` of the record frames of segment `key`, from the start
/// of the object, read from its header (the first bytes only).
pub async fn segment_frames(store: &Store, key: &str, size: u64) -> Result<Vec<(u64, u64)>, Error> {
    segment_header(store, key, size).await.map(|(_, frames)| frames)
}

/// The header of segment `key` (of `size` bytes as listed, 0 when not
/// known), and `[offset, length]` of its record frames from the start of
/// the object: read from its first bytes only.
pub async fn segment_header(
    store: &Store,
    key: &str,
    size: u64,
) -> Result<(crate::segment::SegmentHeader, Vec<(u64, u64)>), Error> {
    let mut want = header_guess(size);
    loop {
        let head = store.get_range(key, 0..want).await?;
        let got = head.len() as u64;
        match zstd::zstd_safe::find_frame_compressed_size(&head) {
            Ok(n) if n as u64 <= got => {
                let header = crate::segment::SegmentReader::open(key, &head[..n])?.header;
                let frames = header.frames.iter().map(|(o, l)| (o + n as u64, *l)).collect();
                return Ok((header, frames));
            }
            _ if got < want => {
                return Err(Error::Corrupt {
                    key: key.to_string(),
                    why: "the header frame does not decode".into(),
                })
            }
            _ => want *= 4,
        }
    }
}

/// Runs of consecutive frame numbers (sorted), as `(first, last)`: the
/// frames one range request reads.
fn frame_runs(frames: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &f in frames {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == f => *last = f,
            _ => out.push((f, f)),
        }
    }
    out
}

/// How many first bytes of a segment of `size` bytes to read for its
/// header frame: a few hundred bytes plus about 8 a record frame, and
/// record frames hold about 16 KiB compressed or fewer (denser data makes
/// fewer, larger ones). So 512 plus 12 per 16 KiB holds it whole but for
/// data that compresses better than about 100 to 1 (frames end at 1 MiB
/// raw), which then takes one more read; a bigger guess costs every
/// lookup bytes it does not use (a header on the history bench is about
/// 260 bytes).
fn header_guess(size: u64) -> u64 {
    if size == 0 {
        return 2048;
    }
    (512 + 12 * size.div_ceil(16 << 10)).min(size)
}

/// Reads frames `frames` (sorted numbers) of segment `key`, whose frames lie
/// at `offsets` (from [`segment_header`]): adjacent ones in one range
/// request, up to [`FRAME_READS_AT_ONCE`] requests at once. Each frame's
/// bytes, in order (they are all kept, so reading them at once holds no
/// more than reading them one by one).
pub async fn read_frames(
    store: &Store,
    key: &str,
    offsets: &[(u64, u64)],
    frames: &[u32],
) -> Result<Vec<Bytes>, Error> {
    use futures_util::{StreamExt, TryStreamExt};
    let mut reads = Vec::new();
    for (a, b) in frame_runs(frames) {
        let (Some(&(off, _)), Some(&(last_off, last_len))) = (offsets.get(a as usize), offsets.get(b as usize)) else {
            return Err(Error::Corrupt {
                key: key.to_string(),
                why: format!("the index names frame {b}, which its header does not have"),
            });
        };
        let within = &offsets[a as usize..=b as usize];
        reads.push(async move {
            let z = store.get_range(key, off..last_off + last_len).await?;
            let mut out = Vec::with_capacity(within.len());
            for &(o, l) in within {
                out.push(
                    store
                        .open_frames(key, z.slice((o - off) as usize..(o - off + l) as usize))
                        .await?,
                );
            }
            Ok::<_, Error>(out)
        });
    }
    let read: Vec<Vec<Bytes>> = futures_util::stream::iter(reads)
        .buffered(FRAME_READS_AT_ONCE)
        .try_collect()
        .await?;
    Ok(read.into_iter().flatten().collect())
}

/// Range requests [`read_frames`] has in flight for one segment.
const FRAME_READS_AT_ONCE: usize = 8;

/// Which frames of the covered segments a reader wants: those with changes
/// of any of `tables`, and with `messages` those holding a `waly` message
/// of a transaction committed after `after` (any, when `None`).
#[derive(Debug, Clone, Default)]
pub struct Want<'a> {
    /// `schema.table` of each table whose changes are wanted.
    pub tables: Vec<&'a str>,
    /// Whether the frames holding `waly` messages are wanted too.
    pub messages: bool,
    /// With `messages`: only those of transactions committed after this.
    pub after: Option<u64>,
}

/// Where a table's changes are, by the index: for each segment of `gen`
/// in `numbers` (first..=last) that a table-aware index object covers,
/// keyed by `(number, fencing token)`, the frames with changes of `table`
/// (none: the segment has none). A segment missing from the answer is not
/// covered (no index object, an older one, or a damaged one: warned) and
/// must be read whole.
pub async fn table_frames(
    store: &Store,
    gen: &str,
    table: &str,
    numbers: std::ops::RangeInclusive<u64>,
) -> std::collections::BTreeMap<(u64, u64), Vec<u32>> {
    let want = Want {
        tables: vec![table],
        ..Want::default()
    };
    frames_placed(store, gen, &want, numbers, false).await.0
}

/// Where a segment's record frames lie, by `(number, fencing token)`:
/// `(offset, length)` from the start of the segment, as index frame tables
/// give them.
pub type Places = std::collections::BTreeMap<(u64, u64), Vec<(u64, u64)>>;

/// [`table_frames`] for what `want` names, and with `placed` where the
/// covered segments' frames lie, from the index objects' frame tables
/// (every table read: a reader of a whole table's changes reads far more
/// headers than tables). A segment whose place is not given has its header
/// read; a damaged table is warned about and gives none.
pub async fn frames_placed(
    store: &Store,
    gen: &str,
    want: &Want<'_>,
    numbers: std::ops::RangeInclusive<u64>,
    placed: bool,
) -> (std::collections::BTreeMap<(u64, u64), Vec<u32>>, Places) {
    let mut out = std::collections::BTreeMap::new();
    let mut places = Places::new();
    // Every object, its tables' entries and its frame table at once.
    let (objects, known) = match segment_indexes_known(store, gen).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "cannot list the index; reading every segment whole");
            return (out, places);
        }
    };
    let objects = objects
        .into_iter()
        .filter(|(_, _, first, last)| *last >= *numbers.start() && *first <= *numbers.end());
    let found = futures_util::future::join_all(objects.map(|(key, size, _, _)| {
        let known = &known;
        async move {
            let idx = match Index::open_known(store, &key, size, known).await {
                Ok(idx) => idx,
                Err(e) => return (key, Err(e), None),
            };
            let frame_table = async {
                match placed {
                    true => Some(idx.frame_table(store).await),
                    false => None,
                }
            };
            let (frames, frame_table) = tokio::join!(idx.wanted_frames(store, want), frame_table);
            (key, frames.map(|f| f.map(|f| (idx, f))), frame_table)
        }
    }))
    .await;
    for (key, found, frame_table) in found {
        match found {
            Ok(Some((idx, frames))) => {
                for o in &idx.footer.objects {
                    out.entry((o.number, o.fence)).or_insert_with(Vec::new);
                }
                for (o, f) in frames {
                    if let Some(obj) = idx.footer.objects.get(o as usize) {
                        out.entry((obj.number, obj.fence)).or_insert_with(Vec::new).push(f);
                    }
                }
                match frame_table {
                    None => {}
                    Some(Ok(table)) => {
                        for (p, frames) in table.into_iter().flatten() {
                            if let Some(obj) = idx.footer.objects.get(p as usize) {
                                places.insert((obj.number, obj.fence), frames);
                            }
                        }
                    }
                    Some(Err(e)) => tracing::warn!(
                        index = key,
                        error = %crate::error::chain(&e),
                        "the index's frame table is damaged; reading segment headers instead (`waly reindex` rebuilds it)"
                    ),
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                index = key,
                error = %crate::error::chain(&e),
                "an index object is damaged; reading its segments whole (`waly reindex` rebuilds it)"
            ),
        }
    }
    for frames in out.values_mut() {
        frames.sort_unstable();
        frames.dedup();
    }
    (out, places)
}

#[cfg(test)]
mod tests;
