//! The restore's external sort: records keyed by `(key, lsn, seq)`, sorted
//! in runs of bounded size, spilled to temporary zstd files and merged.

use crate::scratch::Scratch;
use crate::Error;
use std::collections::BinaryHeap;
use std::io::{Read, Write};

// ------------------------------------------------------------------ sorting

/// What a sort record says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    /// A snapshot row.
    Base = 0,
    /// An inserted row.
    Insert = 1,
    /// An updated row (same key).
    Update = 2,
    /// A deleted row.
    Delete = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Base,
            1 => Kind::Insert,
            2 => Kind::Update,
            3 => Kind::Delete,
            _ => return None,
        })
    }
}

/// One record, encoded: `key_len u32, key, lsn u64, seq u64, kind u8,
/// toast_len u32, toast (JSON array), row_len u32, row (JSON object)`,
/// preceded by its total length as u32.
fn encode(out: &mut Vec<u8>, key: &[u8], lsn: u64, seq: u64, kind: Kind, toast: &[u8], row: &[u8]) {
    let total = 4 + key.len() + 8 + 8 + 1 + 4 + toast.len() + 4 + row.len();
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&(toast.len() as u32).to_le_bytes());
    out.extend_from_slice(toast);
    out.extend_from_slice(&(row.len() as u32).to_le_bytes());
    out.extend_from_slice(row);
}

/// A view of one encoded record (without its length prefix).
#[derive(Debug, Clone, Copy)]
pub(super) struct Rec<'a> {
    pub(super) key: &'a [u8],
    pub(super) lsn: u64,
    pub(super) seq: u64,
    pub(super) kind: Kind,
    pub(super) toast: &'a [u8],
    pub(super) row: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub(super) fn decode(b: &[u8]) -> Option<Rec<'_>> {
    let kl = u32_at(b, 0)?;
    let key = b.get(4..4 + kl)?;
    let mut at = 4 + kl;
    let lsn = u64_at(b, at)?;
    let seq = u64_at(b, at + 8)?;
    let kind = Kind::from_u8(*b.get(at + 16)?)?;
    at += 17;
    let tl = u32_at(b, at)?;
    let toast = b.get(at + 4..at + 4 + tl)?;
    at += 4 + tl;
    let rl = u32_at(b, at)?;
    let row = b.get(at + 4..at + 4 + rl)?;
    Some(Rec {
        key,
        lsn,
        seq,
        kind,
        toast,
        row,
    })
}

fn order<'a>(r: &Rec<'a>) -> (&'a [u8], u64, u64) {
    (r.key, r.lsn, r.seq)
}

/// Sorts records by `(key, lsn, seq)` in bounded memory: runs of at most
/// `budget` bytes are sorted in memory and spilled to temporary files;
/// [`crate::scratch::RUNS_PER_LEVEL`] runs of a level are merged into one
/// of the next (each run is read through a decoder of its own).
pub(super) struct Sorter {
    arena: Vec<u8>,
    offsets: Vec<u32>,
    budget: usize,
    dir: Option<Scratch>,
    pub(super) runs: Vec<std::path::PathBuf>,
    /// Each run's level (a run of level `l + 1` merges runs of level `l`);
    /// never increasing along `runs`.
    levels: Vec<u32>,
    /// Run files written so far (for their names).
    written: usize,
}

impl Sorter {
    pub(super) fn new(budget: usize) -> Sorter {
        Sorter {
            arena: Vec::new(),
            offsets: Vec::new(),
            budget,
            dir: None,
            runs: Vec::new(),
            levels: Vec::new(),
            written: 0,
        }
    }

    pub(super) fn push(
        &mut self,
        key: &[u8],
        lsn: u64,
        seq: u64,
        kind: Kind,
        toast: &[u8],
        row: &[u8],
    ) -> Result<(), Error> {
        self.offsets.push(self.arena.len() as u32);
        encode(&mut self.arena, key, lsn, seq, kind, toast, row);
        if self.arena.len() >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn sorted_offsets(&mut self) {
        let arena = &self.arena;
        let view = |o: &u32| decode(&arena[*o as usize + 4..]).map(|r| order(&r));
        self.offsets.sort_by(|a, b| view(a).cmp(&view(b)));
    }

    /// A new run file's path, in the scratch directory (made at the first).
    fn run_path(&mut self) -> Result<std::path::PathBuf, Error> {
        let dir = match self.dir.take() {
            Some(dir) => dir,
            None => Scratch::new("restore")?,
        };
        let path = self.dir.insert(dir).path().join(format!("run-{:06}", self.written));
        self.written += 1;
        Ok(path)
    }

    fn spill(&mut self) -> Result<(), Error> {
        self.sorted_offsets();
        let path = self.run_path()?;
        let file = std::fs::File::create(&path)?;
        let mut enc = zstd::stream::write::Encoder::new(std::io::BufWriter::new(file), 1)?;
        for o in &self.offsets {
            let o = *o as usize;
            let total = u32_at(&self.arena, o).unwrap_or(0);
            enc.write_all(&self.arena[o..o + 4 + total])?;
        }
        enc.finish()?.flush()?;
        self.runs.push(path);
        self.levels.push(0);
        self.arena.clear();
        self.offsets.clear();
        self.fold()
    }

    /// Merges the runs of a full level into one run of the next, as long
    /// as one is full.
    fn fold(&mut self) -> Result<(), Error> {
        while let Some((at, level)) = crate::scratch::full_level(&self.levels) {
            let inputs = self.runs.split_off(at);
            self.levels.truncate(at);
            let path = self.run_path()?;
            let file = std::fs::File::create(&path)?;
            let mut enc = zstd::stream::write::Encoder::new(std::io::BufWriter::new(file), 1)?;
            let mut merged = merge(&inputs)?;
            while let Some(rec) = merged.next_record()? {
                enc.write_all(&(rec.len() as u32).to_le_bytes())?;
                enc.write_all(rec)?;
            }
            enc.finish()?.flush()?;
            drop(merged);
            for p in inputs {
                std::fs::remove_file(p)?;
            }
            self.runs.push(path);
            self.levels.push(level + 1);
        }
        Ok(())
    }

    /// Everything pushed, in order.
    pub(super) fn finish(mut self) -> Result<Merged, Error> {
        if self.runs.is_empty() {
            self.sorted_offsets();
            return Ok(Merged {
                source: Source::Memory {
                    arena: self.arena,
                    offsets: self.offsets,
                    next: 0,
                },
                _dir: None,
            });
        }
        if !self.offsets.is_empty() {
            self.spill()?;
        }
        let mut merged = merge(&self.runs)?;
        merged._dir = self.dir.take();
        Ok(merged)
    }

    /// Every record written to run files that can be merged more than once
    /// (a restore that reads its records twice).
    pub(super) fn spill_all(mut self) -> Result<Spilled, Error> {
        if !self.offsets.is_empty() || self.runs.is_empty() {
            self.spill()?;
        }
        let dir = self
            .dir
            .take()
            .ok_or_else(|| Error::Io(std::io::Error::other("no spill directory")))?;
        Ok(Spilled {
            runs: std::mem::take(&mut self.runs),
            dir,
        })
    }
}

/// Sorted runs on disk, removed when dropped.
pub(super) struct Spilled {
    runs: Vec<std::path::PathBuf>,
    dir: Scratch,
}

impl Spilled {
    /// All the records, in order, from the start.
    pub(super) fn merged(&self) -> Result<Merged, Error> {
        merge(&self.runs)
    }

    /// The directory the runs are in (for other temporary files of the
    /// same restore).
    pub(super) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The records of `runs`, merged in order.
fn merge(runs: &[std::path::PathBuf]) -> Result<Merged, Error> {
    let mut readers = Vec::new();
    for p in runs {
        let f = std::fs::File::open(p)?;
        readers.push(RunReader {
            input: Box::new(std::io::BufReader::new(zstd::stream::read::Decoder::new(f)?)),
            current: Vec::new(),
        });
    }
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        if r.advance()? {
            heap.push(std::cmp::Reverse(HeapKey::of(&r.current, i)?));
        }
    }
    Ok(Merged {
        source: Source::Runs {
            readers,
            heap,
            last: Vec::new(),
        },
        _dir: None,
    })
}

struct RunReader {
    input: Box<dyn Read + Send>,
    current: Vec<u8>,
}

impl RunReader {
    /// Loads the next record (without its length prefix); false at the end.
    fn advance(&mut self) -> Result<bool, Error> {
        let mut len = [0u8; 4];
        if !crate::scratch::read_exact_or_end(&mut self.input, &mut len)? {
            return Ok(false);
        }
        self.current.resize(u32::from_le_bytes(len) as usize, 0);
        self.input.read_exact(&mut self.current)?;
        Ok(true)
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HeapKey {
    key: Vec<u8>,
    lsn: u64,
    seq: u64,
    run: usize,
}

impl HeapKey {
    fn of(b: &[u8], run: usize) -> Result<HeapKey, Error> {
        let r = decode(b).ok_or_else(|| Error::Io(std::io::Error::other("a restore run file is damaged")))?;
        Ok(HeapKey {
            key: r.key.to_vec(),
            lsn: r.lsn,
            seq: r.seq,
            run,
        })
    }
}

enum Source {
    Memory {
        arena: Vec<u8>,
        offsets: Vec<u32>,
        next: usize,
    },
    Runs {
        readers: Vec<RunReader>,
        heap: BinaryHeap<std::cmp::Reverse<HeapKey>>,
        last: Vec<u8>,
    },
}

/// The sorted records.
pub(super) struct Merged {
    source: Source,
    _dir: Option<Scratch>,
}

impl Merged {
    /// The next record, encoded (without the length prefix).
    pub(super) fn next_record(&mut self) -> Result<Option<&[u8]>, Error> {
        match &mut self.source {
            Source::Memory { arena, offsets, next } => {
                let Some(o) = offsets.get(*next) else {
                    return Ok(None);
                };
                *next += 1;
                let o = *o as usize;
                let total = u32_at(arena, o).unwrap_or(0);
                Ok(Some(&arena[o + 4..o + 4 + total]))
            }
            Source::Runs { readers, heap, last } => {
                let Some(std::cmp::Reverse(top)) = heap.pop() else {
                    return Ok(None);
                };
                let r = &mut readers[top.run];
                std::mem::swap(last, &mut r.current);
                if r.advance()? {
                    heap.push(std::cmp::Reverse(HeapKey::of(&r.current, top.run)?));
                }
                Ok(Some(&last[..]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut m: Merged) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        while let Some(b) = m.next_record().expect("record") {
            let r = decode(b).expect("decodes");
            out.push((r.key.to_vec(), r.lsn));
        }
        out
    }

    #[test]
    fn spilled_runs_merge_in_key_then_commit_order() {
        let mut x = 12345u64;
        let mut want = Vec::new();
        let mut small = Sorter::new(4096); // many runs
        let mut big = Sorter::new(1 << 30); // one, in memory
        for i in 0..5000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("[\"{}\"]", x % 97).into_bytes();
            let lsn = x % 1000;
            small.push(&key, lsn, i, Kind::Insert, b"", b"{}").expect("push");
            big.push(&key, lsn, i, Kind::Insert, b"", b"{}").expect("push");
            want.push((key, lsn, i));
        }
        want.sort();
        let want: Vec<(Vec<u8>, u64)> = want.into_iter().map(|(k, l, _)| (k, l)).collect();
        // Many runs, merged 16 to a level: a few are left, their inputs gone.
        assert!(small.written > 32, "{} runs", small.written);
        assert!(
            small.levels.contains(&1) && small.runs.len() < crate::scratch::RUNS_PER_LEVEL * 2,
            "{:?}",
            small.levels
        );
        let dir = small
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .expect("a spill directory");
        let files = std::fs::read_dir(&dir).expect("dir").filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("run-"))
        });
        assert_eq!(files.count(), small.runs.len(), "merged runs are removed");
        assert_eq!(drain(small.finish().expect("merge")), want);
        assert_eq!(drain(big.finish().expect("merge")), want);
        assert!(!dir.exists(), "runs are removed once merged");
    }
}
