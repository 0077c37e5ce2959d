//! Writing an index object: blocks compressed (and sealed in an encrypted
//! archive) as they are cut, fence blocks over them, the footer and trailer.

use super::{Block, Codec, Entry, Footer, BLOCK_ENTRIES, FENCE_ENTRIES, FORMAT, MAGIC, MAGIC_SEALED};
use crate::Error;
use bytes::Bytes;

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An index object written whole, by [`BlockWriter::finish`].
pub(super) enum Written {
    /// Held in memory (a segment's object, or a small merge).
    Memory(Bytes),
    /// Spilled to a local file (a merge past [`SPILL_BYTES`]), which is
    /// removed when this is dropped.
    File(SpilledFile),
}

/// A merge's output in a local file, in a scratch directory of its own:
/// removed on drop, and swept after a killed process.
pub(super) struct SpilledFile {
    pub(super) path: std::path::PathBuf,
    _dir: crate::scratch::Scratch,
}

/// How many bytes of an object a merge holds before it writes them to its
/// file (then its file buffer holds 1 MiB).
pub(super) const SPILL_BYTES: usize = 4 << 20;

/// Where an index object's bytes go: memory, or once past [`SPILL_BYTES`]
/// a local file when one was given; with the SHA-256 of everything written
/// when the object is sealed.
struct Out {
    buf: Vec<u8>,
    /// Bytes already in the file.
    flushed: u64,
    /// Moved to a file once `buf` holds this many bytes.
    spill_after: Option<usize>,
    file: Option<(SpilledFile, std::io::BufWriter<std::fs::File>)>,
    sha: Option<sha2::Sha256>,
}

impl Out {
    fn pos(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    fn write(&mut self, b: &[u8]) -> Result<(), Error> {
        use std::io::Write;
        if let Some(sha) = &mut self.sha {
            sha2::Digest::update(sha, b);
        }
        if let Some((_, f)) = &mut self.file {
            f.write_all(b)?;
            self.flushed += b.len() as u64;
            return Ok(());
        }
        self.buf.extend_from_slice(b);
        if self.spill_after.is_some_and(|after| self.buf.len() >= after) {
            self.spill_after = None;
            let dir = crate::scratch::Scratch::new("index-merge")?;
            let spilled = SpilledFile {
                path: dir.path().join("merged.idx"),
                _dir: dir,
            };
            let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&spilled.path)?);
            f.write_all(&self.buf)?;
            self.flushed = self.buf.len() as u64;
            self.buf = Vec::new();
            self.file = Some((spilled, f));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Written, Error> {
        use std::io::Write;
        match self.file.take() {
            Some((spilled, mut f)) => {
                f.flush()?;
                f.get_ref().sync_data()?;
                Ok(Written::File(spilled))
            }
            None => Ok(Written::Memory(Bytes::from(std::mem::take(&mut self.buf)))),
        }
    }
}

/// Writes an index object: compresses its blocks, and seals each in an
/// encrypted archive (checking, as it goes, that each is one sealed frame).
pub(super) struct BlockWriter<'a> {
    zc: zstd::bulk::Compressor<'static>,
    sealer: Option<&'a crate::crypt::Sealer>,
    out: Out,
}

impl<'a> BlockWriter<'a> {
    /// A writer holding the object in memory.
    pub(super) fn new(sealer: Option<&'a crate::crypt::Sealer>) -> Result<Self, Error> {
        let mut zc = zstd::bulk::Compressor::new(1)?;
        zc.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        Ok(BlockWriter {
            zc,
            sealer,
            out: Out {
                buf: Vec::new(),
                flushed: 0,
                spill_after: None,
                file: None,
                sha: sealer.map(|_| <sha2::Sha256 as sha2::Digest>::new()),
            },
        })
    }

    /// A writer that moves the object to a local file (in a scratch
    /// directory) once it passes `after` bytes (a merge's output, of any
    /// size).
    pub(super) fn spilling(sealer: Option<&'a crate::crypt::Sealer>, after: usize) -> Result<Self, Error> {
        let mut w = BlockWriter::new(sealer)?;
        w.out.spill_after = Some(after);
        Ok(w)
    }

    /// Writes `raw` as the object's next block (compressed, and sealed in
    /// an encrypted archive): its pointer, with `first` as its first value.
    pub(super) fn block(&mut self, first: u64, raw: &[u8]) -> Result<Block, Error> {
        let z = self.zc.compress(raw)?;
        let z = match self.sealer {
            Some(s) => {
                let z = s.seal_block(&z)?;
                // The upload check, block by block (a merge's output may
                // never be in memory whole).
                if !matches!(crate::crypt::frame::next("index block", &z), Ok((n, Some(_))) if n == z.len()) {
                    return Err(Error::Encryption("an index block was not sealed whole".into()));
                }
                z
            }
            None => z,
        };
        let offset = self.out.pos();
        self.out.write(&z)?;
        Ok(Block {
            first,
            offset,
            len: z.len() as u64,
        })
    }

    /// Ends the object (its blocks written): the footer, then the trailer
    /// (with the SHA-256 of what precedes it when sealed).
    pub(super) fn finish(mut self, footer: &Footer) -> Result<Written, Error> {
        let json = serde_json::to_vec(footer).map_err(|e| Error::Protocol(e.to_string()))?;
        let z = self.block(0, &json)?;
        if let Some(sha) = self.out.sha.take() {
            self.out.write(&sha2::Digest::finalize(sha))?;
        }
        self.out.write(&z.offset.to_le_bytes())?;
        self.out.write(&z.len.to_le_bytes())?;
        self.out
            .write(if self.sealer.is_some() { MAGIC_SEALED } else { MAGIC })?;
        self.out.finish()
    }

    /// [`BlockWriter::finish`] of a writer that holds its object in memory.
    pub(super) fn finish_in_memory(self, footer: &Footer) -> Result<Bytes, Error> {
        match self.finish(footer)? {
            Written::Memory(b) => Ok(b),
            Written::File(f) => Ok(Bytes::from(std::fs::read(&f.path)?)),
        }
    }
}

/// Writes one section's entries, given in order, as blocks of
/// [`BLOCK_ENTRIES`], then fence blocks over those; equal entries once.
pub(super) struct SectionWriter {
    codec: Codec,
    /// The index format whose block layout it writes: [`FORMAT`] (tests
    /// also write format 4's, to read it as an older waly wrote it).
    format: u32,
    pending: Vec<Entry>,
    last: Option<Entry>,
    /// Its data blocks' pointers not yet under a fence block.
    blocks: Vec<Block>,
    /// Its fence blocks written already (see [`FENCES_HELD`]).
    fences: Vec<Block>,
    raw: Vec<u8>,
}

/// The most data block pointers a section writer holds: past that, it
/// writes fence blocks over all whole [`FENCE_ENTRIES`] of them at once,
/// among the data blocks, and keeps only those fence blocks' pointers. So a
/// merge's memory grows with a run by a pointer per fence block (24 bytes
/// per 65,536 entries), not one per data block. The sections of smaller
/// objects (below about a million entries) keep their fence blocks
/// together, after the data blocks, next to the footer.
pub(super) const FENCES_HELD: usize = 16 * FENCE_ENTRIES;

/// A section written: the fence blocks written among its data blocks, and
/// the data blocks not under one yet (see [`write_fences`]).
#[derive(Debug, Default)]
pub(super) struct Section {
    fences: Vec<Block>,
    blocks: Vec<Block>,
}

impl SectionWriter {
    /// A writer of a section whose values `codec` codes.
    pub(super) fn new(codec: Codec) -> Self {
        SectionWriter {
            codec,
            format: FORMAT,
            pending: Vec::new(),
            last: None,
            blocks: Vec::new(),
            fences: Vec::new(),
            raw: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, e: Entry, c: &mut BlockWriter) -> Result<(), Error> {
        if self.last == Some(e) {
            return Ok(());
        }
        if self.last.is_some_and(|l| l > e) {
            return Err(Error::Protocol("index entries out of order".into()));
        }
        self.last = Some(e);
        self.pending.push(e);
        if self.pending.len() == BLOCK_ENTRIES {
            self.flush(c)?;
        }
        Ok(())
    }

    /// A writer of a section whose blocks are laid out as index format
    /// `format` laid them out (4: entry after entry; 5: column by column).
    #[cfg(test)]
    pub(super) fn with_format(codec: Codec, format: u32) -> Self {
        SectionWriter {
            format,
            ..SectionWriter::new(codec)
        }
    }

    /// Writes the pending entries as a block: the first value (u64 LE),
    /// then in format 5 the count and each column whole (docs/FORMAT.md,
    /// "The index"), in format 4 entry after entry.
    fn flush(&mut self, c: &mut BlockWriter) -> Result<(), Error> {
        let Some(first) = self.pending.first().map(|e| e.0) else {
            return Ok(());
        };
        self.raw.clear();
        self.raw.extend_from_slice(&first.to_le_bytes());
        let codec = self.codec;
        // The value's delta from the one before (the first's from itself:
        // 0); for bucket values the bucket hash's delta.
        let deltas = self.pending.iter().scan(first, |prev, (v, _, _)| {
            let d = match codec {
                Codec::Delta => v - *prev,
                Codec::Buckets => (v >> 32) - (*prev >> 32),
            };
            *prev = *v;
            Some(d)
        });
        let bits = |v: u64| super::bits_code(v & 0xffff_ffff);
        if self.format < FORMAT {
            for (d, (v, o, f)) in deltas.zip(&self.pending) {
                put_varint(&mut self.raw, d);
                if codec == Codec::Buckets {
                    put_varint(&mut self.raw, bits(*v));
                }
                put_varint(&mut self.raw, *o as u64);
                put_varint(&mut self.raw, *f as u64);
            }
        } else {
            put_varint(&mut self.raw, self.pending.len() as u64);
            for d in deltas {
                put_varint(&mut self.raw, d);
            }
            if codec == Codec::Buckets {
                for (v, _, _) in &self.pending {
                    put_varint(&mut self.raw, bits(*v));
                }
            }
            // An entry whose value is the one before's (a row changed in
            // segment after segment) codes its object as the step from
            // that entry's: entries are in order, so it is never negative.
            let mut before: Option<(u64, u32)> = None;
            for (v, o, _) in &self.pending {
                let step = match before {
                    Some((bv, bo)) if bv == *v => o - bo,
                    _ => *o,
                };
                put_varint(&mut self.raw, step as u64);
                before = Some((*v, *o));
            }
            for (_, _, f) in &self.pending {
                put_varint(&mut self.raw, *f as u64);
            }
        }
        self.blocks.push(c.block(first, &self.raw)?);
        self.pending.clear();
        if self.blocks.len() >= FENCES_HELD {
            let whole = self.blocks.len() / FENCE_ENTRIES * FENCE_ENTRIES;
            self.fences.extend(fence_blocks(&self.blocks[..whole], c)?);
            self.blocks.drain(..whole);
        }
        Ok(())
    }

    /// Writes what is pending: the section's data blocks.
    pub(super) fn finish(mut self, c: &mut BlockWriter) -> Result<Section, Error> {
        self.flush(c)?;
        Ok(Section {
            fences: self.fences,
            blocks: self.blocks,
        })
    }
}

/// Writes the fence blocks over a section's data blocks not yet under one;
/// returns the pointers of all its fence blocks, in order. Those fence
/// blocks follow all the object's data blocks, next to the footer, so the
/// read of an object's last bytes that finds its footer often holds them
/// too (a large section's earlier ones lie among its data blocks: see
/// [`FENCES_HELD`]).
pub(super) fn write_fences(section: Section, c: &mut BlockWriter) -> Result<Vec<Block>, Error> {
    let mut fences = section.fences;
    fences.extend(fence_blocks(&section.blocks, c)?);
    Ok(fences)
}

/// Writes fence blocks over the data blocks `blocks`: their pointers.
fn fence_blocks(blocks: &[Block], c: &mut BlockWriter) -> Result<Vec<Block>, Error> {
    let mut fences = Vec::new();
    let mut raw = Vec::with_capacity(FENCE_ENTRIES * 24);
    for chunk in blocks.chunks(FENCE_ENTRIES) {
        raw.clear();
        for b in chunk {
            raw.extend_from_slice(&b.first.to_le_bytes());
            raw.extend_from_slice(&b.offset.to_le_bytes());
            raw.extend_from_slice(&b.len.to_le_bytes());
        }
        fences.push(c.block(chunk[0].first, &raw)?);
    }
    Ok(fences)
}
