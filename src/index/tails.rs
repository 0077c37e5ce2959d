//! The tails directory (`index/tails`): the last bytes of the archive's
//! merged index objects, so that a reader opens them with no request of
//! their own.
//!
//! Opening an index object reads its tail (the trailer, the footer and,
//! in small objects, the fence blocks) before any lookup can start. A
//! lookup that lists the index and then reads those tails spends a whole
//! round trip on them. The directory holds them in one small object, read
//! beside the listing; so the listing's round trip also brings the footers.
//!
//! It is derived data, like the rest of the index. Each tail is kept with
//! the size and entity tag its object was listed with when the tail was
//! read, and a reader uses it only for an object listed with that same
//! size and tag: an object written again (a merge, `waly reindex`) has
//! another tag, so its old tail is never used for it. An object the
//! directory lacks is opened as before; a directory that is missing or
//! does not decode is warned about, and every object is opened as before.
//! A tail that does not open is warned about, and its object's own tail
//! read instead.
//!
//! `waly run` rewrites the directory after each merge of index runs,
//! `waly prune` after it deletes, and `waly reindex` once done. It keeps the merged runs of segments and each
//! generation's oldest snapshot index object: not a single segment's
//! object (a run of level 0, merged away within ten segments), nor later
//! snapshots' (see [`kept`]). The
//! tails are the bytes as stored: in an encrypted archive the footers in
//! them are sealed, as in their objects. The rest (keys, sizes, tags) is
//! what a listing shows, so the directory itself is not sealed.

use super::{damaged, parse_segments_index_key, Index, TAIL_READ};
use crate::archive::Store;
use crate::Error;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Where the directory is kept.
pub const KEY: &str = "index/tails";

/// The directory format this waly writes and reads.
const FORMAT: u32 = 1;

/// The most bytes a directory may decompress to (it holds a few kilobytes
/// per index run).
const MAX_BYTES: usize = 64 << 20;

/// The directory's header: a JSON line before the tails' bytes, which
/// follow one after another in its order.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    waly_index_tails: u32,
    objects: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    key: String,
    size: u64,
    e_tag: String,
    len: u64,
}

/// The tails of a directory, by object key: `(size, entity tag, bytes)`.
#[derive(Debug, Clone, Default)]
pub struct Tails(HashMap<String, (u64, String, Bytes)>);

/// What a reader knows of the index objects before reading any of them:
/// the tails directory, and each listed object's entity tag.
#[derive(Debug, Clone, Default)]
pub struct Known {
    tails: Tails,
    tags: HashMap<String, String>,
}

impl Known {
    /// From the directory and the listing `(key, size, entity tag)`.
    pub fn new(tails: Tails, listed: &[(String, u64, Option<String>)]) -> Known {
        let tags = listed
            .iter()
            .filter_map(|(k, _, t)| Some((k.clone(), t.clone()?)))
            .collect();
        Known { tails, tags }
    }

    /// The tail of the object `key` listed with `size` bytes, when the
    /// directory holds it for that very object.
    pub fn tail(&self, key: &str, size: u64) -> Option<Bytes> {
        let (s, tag, bytes) = self.tails.0.get(key)?;
        (*s == size && self.tags.get(key) == Some(tag)).then(|| bytes.clone())
    }
}

fn encode(entries: &[(Entry, Bytes)]) -> Result<Bytes, Error> {
    let header = Header {
        waly_index_tails: FORMAT,
        objects: entries.iter().map(|(e, _)| e.clone()).collect(),
    };
    let mut raw = serde_json::to_vec(&header).map_err(|e| Error::Protocol(e.to_string()))?;
    raw.push(b'\n');
    for (_, b) in entries {
        raw.extend_from_slice(b);
    }
    let mut z = zstd::bulk::Compressor::new(3).map_err(|e| damaged(KEY, e))?;
    // The frame's checksum: a damaged directory is never read as tails.
    z.include_checksum(true).map_err(|e| damaged(KEY, e))?;
    Ok(z.compress(&raw).map_err(|e| damaged(KEY, e))?.into())
}

fn decode(bytes: &[u8]) -> Result<Tails, Error> {
    let mut raw = Vec::new();
    zstd::stream::read::Decoder::new(bytes)
        .and_then(|d| std::io::Read::read_to_end(&mut std::io::Read::take(d, MAX_BYTES as u64), &mut raw))
        .map_err(|e| damaged(KEY, e))?;
    let nl = raw
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| damaged(KEY, "no header"))?;
    let header: Header = serde_json::from_slice(&raw[..nl]).map_err(|e| damaged(KEY, e))?;
    if header.waly_index_tails != FORMAT {
        return Err(damaged(
            KEY,
            format!("tails directory format {} (another waly's)", header.waly_index_tails),
        ));
    }
    let body = Bytes::from(raw).slice(nl + 1..);
    let mut at = 0usize;
    let mut out = HashMap::new();
    for e in header.objects {
        let end = usize::try_from(e.len)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|end| *end <= body.len() && e.len <= e.size)
            .ok_or_else(|| {
                damaged(
                    KEY,
                    "a tail lies past the directory's end, or is longer than its object",
                )
            })?;
        out.insert(e.key, (e.size, e.e_tag, body.slice(at..end)));
        at = end;
    }
    if at != body.len() {
        return Err(damaged(KEY, "bytes after the last tail"));
    }
    Ok(Tails(out))
}

/// The stored directory: empty when there is none, or (with a warning)
/// when it does not decode.
pub async fn load(store: &Store) -> Tails {
    let read = match store.get_opt(KEY).await {
        Ok(None) => return Tails::default(),
        Ok(Some(b)) => decode(&b),
        Err(e) => Err(e),
    };
    read.unwrap_or_else(|e| {
        tracing::warn!(key = KEY, error = %crate::error::chain(&e), "the index's tails directory is damaged; opening each index object with a read of its own");
        Tails::default()
    })
}

/// Lists `dir` (under `index/`) and reads the directory beside it: the
/// objects listed, `(key, size)`, and what the directory holds for them.
pub async fn list_known(store: &Store, dir: &str) -> Result<(Vec<(String, u64)>, Known), Error> {
    let (listed, tails) = tokio::join!(store.list_tagged(dir), load(store));
    let listed = listed?;
    let known = Known::new(tails, &listed);
    Ok((listed.into_iter().map(|(k, size, _)| (k, size)).collect(), known))
}

/// The index objects of `listed` (keys) whose tails the directory keeps:
/// every merged run of segments, and each generation's oldest snapshot
/// index object (the one history opens first, beside the manifests'
/// listing). Not a single segment's (a run of level 0, merged away within
/// ten segments), nor later snapshots' (an archive may hold many, which
/// history opens only when the manifests name them).
fn kept<'a>(listed: impl Iterator<Item = &'a str>) -> std::collections::HashSet<String> {
    let mut oldest: HashMap<&str, &str> = HashMap::new();
    let mut out = std::collections::HashSet::new();
    for key in listed {
        let mut parts = key.split('/').skip(1);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(_), Some("segments"), Some(_), None) if parse_segments_index_key(key).is_some_and(|(a, b)| a < b) => {
                out.insert(key.to_string());
            }
            (Some(gen), Some("snapshots"), Some(name), None) if name.ends_with(".idx") => {
                let o = oldest.entry(gen).or_insert(key);
                *o = (*o).min(key);
            }
            _ => {}
        }
    }
    out.extend(oldest.into_values().map(str::to_string));
    out
}

/// The most bytes a tail takes to hold its object's fence blocks and frame
/// table besides its footer (see [`read_tail`]): runs of up to a thousand
/// segments or so. A larger run's tail is its footer's alone.
const FENCED_MAX: u64 = 16 << 10;

/// The tail of the index object `key` of `size` bytes: the whole object
/// when it takes at most [`TAIL_READ`] (what opening it would read anyway);
/// otherwise everything from its first fence block or frame table block on (the footer's pointers' first
/// place), when that takes at most [`FENCED_MAX`], so that a lookup goes
/// straight to the data blocks it needs; otherwise everything from its
/// footer's start (a large run's), so that opening it needs no read. An
/// object whose footer does not open here (an encrypted archive's, without
/// its key) has the latter.
async fn read_tail(store: &Store, key: &str, size: u64) -> Result<Bytes, Error> {
    let start = size.saturating_sub(TAIL_READ);
    let tail = store.get_range(key, start..size).await?;
    let t = tail
        .len()
        .checked_sub(24)
        .and_then(|n| tail.get(n..))
        .ok_or_else(|| damaged(key, "too short"))?;
    if start == 0 {
        return Ok(tail); // the whole object
    }
    let footer = u64::from_le_bytes(t[0..8].try_into().unwrap_or_default());
    let fenced = match Index::from_tail(store, key, size, tail.clone()).await {
        Ok(idx) => idx.pointed_from().filter(|at| size - at <= FENCED_MAX),
        Err(_) => None,
    };
    let from = fenced.unwrap_or(footer).min(footer);
    match from.checked_sub(start) {
        Some(at) => Ok(tail.slice(usize::try_from(at).unwrap_or(usize::MAX).min(tail.len() - 24)..)),
        None => store.get_range(key, from..size).await,
    }
}

/// Rewrites the directory from a listing of the index: tails of objects
/// still there with the same size and tag are kept, new ones read, those
/// of objects gone dropped. Returns how many it holds.
pub async fn refresh(store: &Store) -> Result<usize, Error> {
    let (listed, old) = tokio::join!(store.list_tagged("index"), load(store));
    let listed = listed?;
    let keep = kept(listed.iter().map(|(k, _, _)| k.as_str()));
    let mut entries = Vec::new();
    for (key, size, tag) in listed {
        let Some(e_tag) = tag.filter(|_| keep.contains(&key)) else {
            continue;
        };
        let bytes = match old.0.get(&key) {
            Some((s, t, b)) if *s == size && *t == e_tag => b.clone(),
            _ => match read_tail(store, &key, size).await {
                Ok(b) => b,
                // Merged away by a live writer since the listing: not an
                // object of the index any more.
                Err(e) if e.is_object_gone() => continue,
                Err(e) => return Err(e),
            },
        };
        let len = bytes.len() as u64;
        entries.push((Entry { key, size, e_tag, len }, bytes));
    }
    store.put(KEY, encode(&entries)?).await?;
    Ok(entries.len())
}

/// [`refresh`], a failure warned about (readers then open the objects it
/// lacks with a read each).
pub async fn update(store: &Store) {
    if let Err(e) = refresh(store).await {
        tracing::warn!(key = KEY, error = %crate::error::chain(&e), "could not write the index's tails directory; readers open the index objects it lacks with a read each");
    }
}

/// What is wrong with the stored directory, for `waly verify`: one that
/// does not decode, or a tail it holds for an object listed with the same
/// size and tag that is not that object's last bytes. (A tail of an object
/// gone or written again is stale, which readers expect: not a fault.)
pub async fn faults(store: &Store) -> Result<Vec<String>, Error> {
    let Some(bytes) = store.get_opt(KEY).await? else {
        return Ok(Vec::new());
    };
    let tails = match decode(&bytes) {
        Ok(t) => t,
        Err(e) => return Ok(vec![format!("{}", crate::error::chain(&e))]),
    };
    let listed = store.list_tagged("index").await?;
    let known = Known::new(tails, &listed);
    let mut out = Vec::new();
    for (key, size, _) in &listed {
        let Some(tail) = known.tail(key, *size) else {
            continue;
        };
        let stored = match store.get_range(key, size - tail.len() as u64..*size).await {
            Ok(b) => b,
            Err(e) if e.is_object_gone() => continue, // merged away since the listing
            Err(e) => return Err(e),
        };
        if stored != tail {
            out.push(format!("its tail of {key} is not that object's last bytes"));
        }
    }
    Ok(out)
}

impl Index {
    /// [`Index::open`], from the tail `known` holds for this object when it
    /// does (no request); a tail there that does not open is warned about,
    /// and the object's own read.
    pub async fn open_known(store: &Store, key: &str, size: u64, known: &Known) -> Result<Index, Error> {
        if let Some(tail) = known.tail(key, size) {
            match Index::from_tail(store, key, size, tail).await {
                Ok(idx) => return Ok(idx),
                Err(e) => {
                    tracing::warn!(index = key, error = %crate::error::chain(&e), "the index's tails directory holds a damaged tail for this object; reading it from the object")
                }
            }
        }
        Index::open(store, key, size).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_decodes_to_its_tails_and_damage_is_never_tails() {
        let entries = vec![
            (
                Entry {
                    key: "index/00000001/segments/0000000000-0000000009.idx".into(),
                    size: 100,
                    e_tag: "a".into(),
                    len: 3,
                },
                Bytes::from_static(b"xyz"),
            ),
            (
                Entry {
                    key: "index/00000001/snapshots/0000000001000000.idx".into(),
                    size: 5,
                    e_tag: "b".into(),
                    len: 5,
                },
                Bytes::from_static(b"12345"),
            ),
        ];
        let z = encode(&entries).expect("encode");
        let tails = decode(&z).expect("decode");
        assert_eq!(tails.0.len(), 2);
        let listed = vec![
            (entries[0].0.key.clone(), 100, Some("a".to_string())),
            (entries[1].0.key.clone(), 5, Some("other".to_string())),
        ];
        let known = Known::new(tails, &listed);
        assert_eq!(known.tail(&entries[0].0.key, 100).as_deref(), Some(&b"xyz"[..]));
        // Another size, or another tag (written again): not this object's.
        assert_eq!(known.tail(&entries[0].0.key, 101), None);
        assert_eq!(known.tail(&entries[1].0.key, 5), None);
        // Any flipped byte fails the frame's checksum or its decoding.
        // (A flip that leaves the content whole, as in the frame's window
        // size, may decode: to the same tails.)
        let whole = decode(&z).expect("decode").0;
        for i in 0..z.len() {
            let mut bad = z.to_vec();
            bad[i] ^= 0x40;
            if let Ok(t) = decode(&bad) {
                assert_eq!(t.0, whole, "byte {i} flipped decodes to other tails");
            }
        }
        // A tail longer than its object, or cut short.
        let mut long = entries.clone();
        long[1].0.size = 4;
        assert!(decode(&encode(&long).expect("encode")).is_err());
        let mut short = entries;
        short[0].0.len = 4;
        assert!(decode(&encode(&short).expect("encode")).is_err());
    }

    #[test]
    fn the_directory_keeps_merged_runs_and_each_generations_oldest_snapshot() {
        let listed = [
            "index/00000001/segments/0000000000-0000000009.idx",
            "index/00000001/segments/0000000010-0000000010.idx",
            "index/00000001/snapshots/0000000002000000.idx",
            "index/00000001/snapshots/0000000001000000.idx",
            "index/00000001/snapshots/0000000003000000.idx",
            "index/00000002/snapshots/0000000005000000.idx",
            "index/00000001/catalog.json",
            KEY,
        ];
        let mut keep: Vec<String> = kept(listed.into_iter()).into_iter().collect();
        keep.sort_unstable();
        assert_eq!(
            keep,
            [
                "index/00000001/segments/0000000000-0000000009.idx",
                "index/00000001/snapshots/0000000001000000.idx",
                "index/00000002/snapshots/0000000005000000.idx",
            ]
        );
    }
}
