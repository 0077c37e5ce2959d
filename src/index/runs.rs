//! Entries spilled in sorted runs to local files, and merged back in order.
//!
//! A snapshot's index object has an entry per row (or per bucket of 32
//! integer keys and frame), so it grows with the tables. Its builder
//! ([`super::Builder::spilling`]) holds at most [`SPILL_ENTRIES`] entries:
//! past that it sorts them and writes them to a file of a scratch directory
//! ([`crate::scratch`], removed when done, and swept after a killed process).
//! Writing the object then merges the runs and what is still in memory, a
//! buffer per run, into the same sorted sections the in-memory builder
//! writes: the bytes do not depend on where the entries waited.

use super::Entry;
use crate::Error;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

/// Entries a spilling builder holds in memory (16 bytes each: 8 MiB)
/// before it writes them out as a run.
pub(super) const SPILL_ENTRIES: usize = 1 << 19;

/// The read buffer of each run being merged.
const READ_BUFFER: usize = 16 << 10;

/// The bytes of one entry in a run: value, object and frame, little-endian.
const ENTRY_BYTES: usize = 16;

/// One section's runs, in the builder's scratch directory, in the order
/// written, with their levels (a run of level `l + 1` is the merge of
/// [`crate::scratch::RUNS_PER_LEVEL`] runs of level `l`).
#[derive(Debug, Default)]
pub(super) struct Runs {
    files: Vec<PathBuf>,
    /// Each run's level; never increasing along `files`.
    levels: Vec<u32>,
    /// Files written so far (for their names).
    written: usize,
}

impl Runs {
    /// How many runs were written (merged ones included), and the highest
    /// level of those left.
    #[cfg(test)]
    pub(super) fn written(&self) -> (usize, u32) {
        (self.written, self.levels.iter().copied().max().unwrap_or(0))
    }

    /// Sorts `entries` and writes them as a new run in `dir`, leaving
    /// `entries` empty (its memory kept for the next ones).
    pub(super) fn write(
        &mut self,
        dir: &crate::scratch::Scratch,
        name: &str,
        entries: &mut Vec<Entry>,
    ) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        entries.sort_unstable();
        let mut sorted = entries.drain(..).map(Ok);
        self.write_run(dir, name, 0, &mut sorted)?;
        // A level full: its runs merged into one of the next.
        while let Some((at, level)) = crate::scratch::full_level(&self.levels) {
            let paths = self.files.split_off(at);
            self.levels.truncate(at);
            let mut m = Merged::of(&paths, Vec::new())?;
            let mut entries = std::iter::from_fn(|| m.next_entry().transpose());
            self.write_run(dir, name, level + 1, &mut entries)?;
            for p in paths {
                std::fs::remove_file(p)?;
            }
        }
        Ok(())
    }

    /// Writes `entries` (in order) as a run of `level`.
    fn write_run(
        &mut self,
        dir: &crate::scratch::Scratch,
        name: &str,
        level: u32,
        entries: &mut dyn Iterator<Item = Result<Entry, Error>>,
    ) -> Result<(), Error> {
        let path = dir.path().join(format!("{name}-{:06}.run", self.written));
        self.written += 1;
        let mut w = BufWriter::with_capacity(1 << 16, std::fs::File::create(&path)?);
        for e in entries {
            let (value, object, frame) = e?;
            w.write_all(&value.to_le_bytes())?;
            w.write_all(&object.to_le_bytes())?;
            w.write_all(&frame.to_le_bytes())?;
        }
        w.flush()?;
        self.files.push(path);
        self.levels.push(level);
        Ok(())
    }

    /// Every entry of the runs and of `rest` (in memory), in order.
    pub(super) fn merged(&self, rest: Vec<Entry>) -> Result<Merged, Error> {
        Merged::of(&self.files, rest)
    }
}

impl Merged {
    /// The merge of the runs in `files` and `rest`.
    fn of(files: &[PathBuf], mut rest: Vec<Entry>) -> Result<Merged, Error> {
        rest.sort_unstable();
        let mut readers = Vec::with_capacity(files.len());
        for f in files {
            readers.push(BufReader::with_capacity(READ_BUFFER, std::fs::File::open(f)?));
        }
        let mut m = Merged {
            readers,
            rest: rest.into_iter(),
            heap: BinaryHeap::new(),
        };
        for i in 0..=m.readers.len() {
            m.refill(i)?;
        }
        Ok(m)
    }
}

/// The merge of some runs and the entries still in memory.
pub(super) struct Merged {
    readers: Vec<BufReader<std::fs::File>>,
    /// Those in memory, sorted: the source after the runs.
    rest: std::vec::IntoIter<Entry>,
    /// The next entry of each source that has one, and the source.
    heap: BinaryHeap<Reverse<(Entry, usize)>>,
}

impl Merged {
    /// Puts source `i`'s next entry, if any, on the heap.
    fn refill(&mut self, i: usize) -> Result<(), Error> {
        let next = match self.readers.get_mut(i) {
            Some(r) => read_entry(r)?,
            None => self.rest.next(),
        };
        if let Some(e) = next {
            self.heap.push(Reverse((e, i)));
        }
        Ok(())
    }

    /// The next entry in order; `None` once every source is done.
    pub(super) fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        let Some(Reverse((e, i))) = self.heap.pop() else {
            return Ok(None);
        };
        self.refill(i)?;
        Ok(Some(e))
    }
}

/// The next entry of a run; `None` at its end.
fn read_entry(r: &mut impl Read) -> Result<Option<Entry>, Error> {
    let mut b = [0u8; ENTRY_BYTES];
    if !crate::scratch::read_exact_or_end(r, &mut b)? {
        return Ok(None);
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
    Ok(Some((u64_at(0), u32_at(8), u32_at(12))))
}
