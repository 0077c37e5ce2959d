//! Writing an index object: blocks compressed (and sealed in an encrypted
//! archive) as they are cut, fence blocks over them, the footer and trailer.

use super::{Block, Entry, Footer, BLOCK_ENTRIES, FENCE_ENTRIES, MAGIC, MAGIC_SEALED};
use crate::Error;
use bytes::Bytes;

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Compresses an index object's blocks, and seals them in an encrypted archive.
pub(super) struct BlockWriter<'a> {
    zc: zstd::bulk::Compressor<'static>,
    sealer: Option<&'a crate::crypt::Sealer>,
}

impl<'a> BlockWriter<'a> {
    pub(super) fn new(sealer: Option<&'a crate::crypt::Sealer>) -> Result<Self, Error> {
        let mut zc = zstd::bulk::Compressor::new(1)?;
        zc.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        Ok(BlockWriter { zc, sealer })
    }

    pub(super) fn compress(&mut self, raw: &[u8]) -> Result<Vec<u8>, Error> {
        let z = self.zc.compress(raw)?;
        match self.sealer {
            Some(s) => s.seal_block(&z),
            None => Ok(z),
        }
    }

    /// Ends the object `out` (its blocks written): the footer, then the
    /// trailer (with the SHA-256 of what precedes it when sealed).
    pub(super) fn finish(&mut self, mut out: Vec<u8>, footer: &Footer) -> Result<Bytes, Error> {
        let json = serde_json::to_vec(footer).map_err(|e| Error::Protocol(e.to_string()))?;
        let z = self.compress(&json)?;
        let at = out.len() as u64;
        out.extend_from_slice(&z);
        if self.sealer.is_some() {
            let sha = <sha2::Sha256 as sha2::Digest>::digest(&out);
            out.extend_from_slice(&sha);
        }
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&(z.len() as u64).to_le_bytes());
        out.extend_from_slice(if self.sealer.is_some() { MAGIC_SEALED } else { MAGIC });
        Ok(Bytes::from(out))
    }
}

/// Writes one section's entries, given in order, as blocks of
/// [`BLOCK_ENTRIES`], then fence blocks over those; equal entries once.
#[derive(Default)]
pub(super) struct SectionWriter {
    pending: Vec<Entry>,
    last: Option<Entry>,
    blocks: Vec<Block>,
    raw: Vec<u8>,
}

impl SectionWriter {
    pub(super) fn push(&mut self, e: Entry, c: &mut BlockWriter, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.last == Some(e) {
            return Ok(());
        }
        if self.last.is_some_and(|l| l > e) {
            return Err(Error::Protocol("index entries out of order".into()));
        }
        self.last = Some(e);
        self.pending.push(e);
        if self.pending.len() == BLOCK_ENTRIES {
            self.flush(c, out)?;
        }
        Ok(())
    }

    fn flush(&mut self, c: &mut BlockWriter, out: &mut Vec<u8>) -> Result<(), Error> {
        let Some(first) = self.pending.first().map(|e| e.0) else {
            return Ok(());
        };
        self.raw.clear();
        let mut prev = first;
        self.raw.extend_from_slice(&prev.to_le_bytes());
        for (v, o, f) in &self.pending {
            put_varint(&mut self.raw, v - prev);
            put_varint(&mut self.raw, *o as u64);
            put_varint(&mut self.raw, *f as u64);
            prev = *v;
        }
        let z = c.compress(&self.raw)?;
        self.blocks.push(Block {
            first,
            offset: out.len() as u64,
            len: z.len() as u64,
        });
        out.extend_from_slice(&z);
        self.pending.clear();
        Ok(())
    }

    /// Writes what is pending: the section's data blocks.
    pub(super) fn finish(mut self, c: &mut BlockWriter, out: &mut Vec<u8>) -> Result<Vec<Block>, Error> {
        self.flush(c, out)?;
        Ok(self.blocks)
    }
}

/// Writes fence blocks over a section's data blocks `blocks`; returns
/// their pointers. An object's fence blocks follow all its data blocks,
/// next to the footer, so the read of an object's last bytes that finds
/// its footer often holds them too.
pub(super) fn write_fences(blocks: &[Block], c: &mut BlockWriter, out: &mut Vec<u8>) -> Result<Vec<Block>, Error> {
    let mut fences = Vec::new();
    let mut raw = Vec::with_capacity(FENCE_ENTRIES * 24);
    for chunk in blocks.chunks(FENCE_ENTRIES) {
        raw.clear();
        for b in chunk {
            raw.extend_from_slice(&b.first.to_le_bytes());
            raw.extend_from_slice(&b.offset.to_le_bytes());
            raw.extend_from_slice(&b.len.to_le_bytes());
        }
        let z = c.compress(&raw)?;
        fences.push(Block {
            first: chunk[0].first,
            offset: out.len() as u64,
            len: z.len() as u64,
        });
        out.extend_from_slice(&z);
    }
    Ok(fences)
}
