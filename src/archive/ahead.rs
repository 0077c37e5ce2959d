//! A generation's segments read ahead of their reader: fetched on the
//! runtime and decoded (decompressed, parsed) by a few threads of their own,
//! a frame each at a time (every record frame reads alone), the records
//! handed over in order, in batches, with a bounded number of frames in
//! flight. A reader that does its own work on each record (printing,
//! typing, writing) then shares the decoding with the other cores.

use crate::archive::fetching::FetchAhead;
use crate::archive::Store;
use crate::segment::{Record, Schemas, SegmentReader};
use crate::Error;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{channel, Receiver, Sender};

/// Records per batch.
const BATCH: usize = 1024;
/// Batches decoded and waiting for the reader.
const IN_FLIGHT: usize = 4;
/// Segments fetched and waiting for the decoder.
const FETCHED: usize = 2;
/// Frames being decoded, or decoded and waiting their turn, per decoding thread.
const FRAMES_PER_DECODER: usize = 2;

/// Threads decoding frames: `WALY_DECODE_THREADS` if set (1 to 64), else
/// one per core, at most 4.
fn decoders() -> usize {
    std::env::var("WALY_DECODE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| n.clamp(1, 64))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4))
}

/// A segment to read: whole, or (where the index says which frames hold
/// what the reader wants) only those frames.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The segment's key.
    pub key: String,
    /// The frames to read (numbers in the segment's header), or `None`: all.
    pub frames: Option<Vec<u32>>,
    /// Its size as listed (0: not known), to size the read of its header.
    pub size: u64,
    /// Where its record frames lie (`(offset, length)` from the start of
    /// the segment), when the index's frame table says: then the frames are
    /// read without first reading the header. A place that does not hold a
    /// whole frame is the index's damage: the header is read instead.
    pub places: Option<Vec<(u64, u64)>>,
}

/// A segment's bytes: the whole object, or the frames wanted.
enum Fetched {
    Whole(String, Bytes),
    Frames(String, Vec<Bytes>),
}

/// What the decoder hands over: records, or the explicit end (so a decoder
/// that stopped without one is an error, never a silently shorter history).
type Batch = Result<Option<Vec<Record>>, Error>;

/// Records of a list of segments, in order.
#[derive(Debug)]
pub struct Ahead {
    rx: Receiver<Batch>,
    ended: bool,
}

impl Ahead {
    /// Starts reading `segments` (of one generation, in order), whose
    /// records are written in `schemas`. Must be called on the runtime.
    pub fn start(store: &Store, segments: Vec<Wanted>, schemas: Schemas) -> Result<Ahead, Error> {
        let (fetched_tx, mut fetched_rx) = channel::<Result<Fetched, Error>>(FETCHED);
        let (tx, rx) = channel::<Batch>(IN_FLIGHT);
        let store = store.clone();
        tokio::spawn(async move {
            // Several segments fetched at once (see `FetchAhead`), handed
            // over in order.
            let mut ahead = FetchAhead::default();
            let mut upcoming = segments
                .into_iter()
                .map(|s| {
                    let store = store.clone();
                    (expected_bytes(&s), async move { fetch(&store, s).await })
                })
                .peekable();
            while let Some(got) = ahead.next_of(&mut upcoming).await {
                let failed = got.is_err();
                if fetched_tx.send(got).await.is_err() || failed {
                    return;
                }
            }
        });
        let pool = Pool::start(decoders(), schemas.clone())?;
        std::thread::Builder::new().name("waly-decode".into()).spawn(move || {
            let mut order = InOrder {
                pool,
                pending: VecDeque::new(),
                tx,
                lines: 0,
            };
            while let Some(got) = fetched_rx.blocking_recv() {
                match got.and_then(|f| order.push(f, &schemas)) {
                    Ok(true) => {}
                    Ok(false) => return, // the reader is gone
                    Err(e) => {
                        let _ = order.tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            match order.drain(0) {
                Ok(true) => {
                    let _ = order.tx.blocking_send(Ok(None));
                }
                Ok(false) => {}
                Err(e) => {
                    let _ = order.tx.blocking_send(Err(e));
                }
            }
        })?;
        Ok(Ahead { rx, ended: false })
    }

    /// The next batch of records; `None` after the last segment's last.
    pub async fn next(&mut self) -> Result<Option<Vec<Record>>, Error> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.recv().await {
            Some(Ok(None)) => {
                self.ended = true;
                Ok(None)
            }
            Some(batch) => batch,
            None => Err(Error::Io(std::io::Error::other(
                "the thread decoding segments stopped before the last segment",
            ))),
        }
    }
}

/// The bytes a fetch of `s` is expected to hold: the wanted frames where
/// the index places them, else the segment as listed (all of it at most).
fn expected_bytes(s: &Wanted) -> u64 {
    match (&s.frames, &s.places) {
        (Some(frames), Some(places)) => frames
            .iter()
            .filter_map(|f| places.get(*f as usize))
            .map(|(_, len)| len)
            .sum(),
        (Some(frames), None) if frames.is_empty() => 0,
        _ => s.size,
    }
}

/// Fetches a segment: whole, or its header then its wanted frames
/// (adjacent ones in one range request).
async fn fetch(store: &Store, s: Wanted) -> Result<Fetched, Error> {
    let Some(frames) = s.frames else {
        return Ok(Fetched::Whole(s.key.clone(), store.get_segment(&s.key).await?));
    };
    if frames.is_empty() {
        return Ok(Fetched::Frames(s.key, Vec::new()));
    }
    if let Some(places) = &s.places {
        match read_placed(store, &s.key, s.size, places, &frames).await {
            Ok(out) => return Ok(Fetched::Frames(s.key, out)),
            Err(e) => tracing::warn!(
                segment = s.key,
                error = %crate::error::chain(&e),
                "the index's frame table is damaged; reading the segment's header instead (`waly reindex` rebuilds it)"
            ),
        }
    }
    let (_, offsets) = crate::index::segment_header(store, &s.key, s.size).await?;
    let out = crate::index::read_frames(store, &s.key, &offsets, &frames).await?;
    Ok(Fetched::Frames(s.key, out))
}

/// Frames `frames` of segment `key` (of `size` bytes as listed), read
/// where the index's frame table places them (`places`): each place must
/// lie inside the segment and hold exactly one whole frame.
async fn read_placed(
    store: &Store,
    key: &str,
    size: u64,
    places: &[(u64, u64)],
    frames: &[u32],
) -> Result<Vec<Bytes>, Error> {
    let damaged = |why: &str| Error::Corrupt {
        key: key.to_string(),
        why: format!("the index's frame table {why}"),
    };
    // (A size not known places nothing.)
    if (size == 0 && !places.is_empty()) || !crate::index::placed_inside(places, size) {
        return Err(damaged("places a frame outside the segment"));
    }
    let out = crate::index::read_frames(store, key, places, frames).await?;
    if out
        .iter()
        .any(|z| zstd::zstd_safe::find_frame_compressed_size(z) != Ok(z.len()))
    {
        return Err(damaged("places a frame where no whole frame lies"));
    }
    Ok(out)
}

/// Decodes a whole segment on this thread into batches sent on `tx`
/// (a segment whose frames cannot be decoded apart); false when the reader
/// is gone.
fn decode(key: &str, bytes: &[u8], schemas: &Schemas, tx: &Sender<Batch>) -> Result<bool, Error> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut r = SegmentReader::open(key, bytes)?;
    while let Some(rec) = r.next_record(schemas)? {
        batch.push(rec);
        if batch.len() == BATCH
            && tx
                .blocking_send(Ok(Some(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))))
                .is_err()
        {
            return Ok(false);
        }
    }
    Ok(batch.is_empty() || tx.blocking_send(Ok(Some(batch))).is_ok())
}

/// The records of one frame, and its line count.
type Decoded = Result<(Vec<Record>, u64), Error>;

/// The record frames of a whole segment, each alone, and its header's line
/// count; `None` when they cannot be read apart (a segment without a frame
/// list, or whose frames do not match it: it is read whole, which names
/// any damage).
fn split(key: &str, bytes: &Bytes) -> Option<(Vec<Bytes>, u64)> {
    let walked = crate::crypt::frame::walk(key, bytes).ok()?;
    let (&(_, head, _), rest) = walked.split_first()?;
    let header = SegmentReader::open(key, bytes.get(..head)?).ok()?.header;
    if header.frames.is_empty() || rest.len() != header.frames.len() || rest.iter().any(|f| f.2.is_some()) {
        return None;
    }
    Some((rest.iter().map(|&(a, z, _)| bytes.slice(a..z)).collect(), header.lines))
}

/// Threads decoding frames, each frame's records sent back on its own channel.
struct Pool {
    jobs: std::sync::mpsc::SyncSender<(String, Bytes, std::sync::mpsc::SyncSender<Decoded>)>,
    size: usize,
}

impl Pool {
    fn start(size: usize, schemas: Schemas) -> Result<Pool, Error> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<(String, Bytes, std::sync::mpsc::SyncSender<Decoded>)>(size);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..size {
            let (rx, schemas) = (rx.clone(), schemas.clone());
            std::thread::Builder::new()
                .name(format!("waly-decode-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok((key, z, done)) = job else { return };
                    let _ = done.send(decode_frame(&key, &z, &schemas));
                })?;
        }
        Ok(Pool { jobs, size })
    }
}

fn decode_frame(key: &str, z: &[u8], schemas: &Schemas) -> Decoded {
    let mut r = SegmentReader::frame(key, z)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record(schemas)? {
        out.push(rec);
    }
    Ok((out, r.lines_read()))
}

/// What the ordering thread waits for, in order.
enum Pending {
    /// A frame being decoded, and whether it is a whole segment's (whose
    /// lines are counted).
    Frame(std::sync::mpsc::Receiver<Decoded>, bool),
    /// A whole segment's frames all came before: their lines must add up
    /// to its header's count.
    End { key: String, lines: u64 },
}

/// Hands frames to the pool and their records to the reader in order.
struct InOrder {
    pool: Pool,
    pending: VecDeque<Pending>,
    tx: Sender<Batch>,
    /// Lines of the whole segment's frames handed over so far.
    lines: u64,
}

impl InOrder {
    /// Takes a fetched segment; false when the reader is gone.
    fn push(&mut self, f: Fetched, schemas: &Schemas) -> Result<bool, Error> {
        let (key, frames, lines) = match f {
            Fetched::Whole(key, bytes) => match split(&key, &bytes) {
                Some((frames, lines)) => (key, frames, Some(lines)),
                None => {
                    // Read whole, after what came before it.
                    return Ok(self.drain(0)? && decode(&key, &bytes, schemas, &self.tx)?);
                }
            },
            Fetched::Frames(key, frames) => (key, frames, None),
        };
        for z in frames {
            let (done, rx) = std::sync::mpsc::sync_channel(1);
            if self.pool.jobs.send((key.clone(), z, done)).is_err() {
                return Err(Error::Io(std::io::Error::other(
                    "the threads decoding segments stopped",
                )));
            }
            self.pending.push_back(Pending::Frame(rx, lines.is_some()));
            if !self.drain(self.pool.size * FRAMES_PER_DECODER)? {
                return Ok(false);
            }
        }
        if let Some(lines) = lines {
            self.pending.push_back(Pending::End { key, lines });
        }
        Ok(true)
    }

    /// Hands over what is pending, in order, until at most `keep` frames
    /// are; false when the reader is gone.
    fn drain(&mut self, keep: usize) -> Result<bool, Error> {
        while self.pending.len() > keep {
            match self.pending.pop_front() {
                Some(Pending::Frame(rx, counted)) => {
                    let (records, lines) = rx
                        .recv()
                        .map_err(|_| Error::Io(std::io::Error::other("a thread decoding segments stopped")))??;
                    if counted {
                        self.lines += lines;
                    }
                    let mut records = records.into_iter();
                    loop {
                        let batch: Vec<Record> = records.by_ref().take(BATCH).collect();
                        if batch.is_empty() {
                            break;
                        }
                        if self.tx.blocking_send(Ok(Some(batch))).is_err() {
                            return Ok(false);
                        }
                    }
                }
                Some(Pending::End { key, lines }) => {
                    let found = std::mem::take(&mut self.lines);
                    if found != lines {
                        return Err(Error::Corrupt {
                            key,
                            why: format!("truncated: the header promises {lines} lines, found {found}"),
                        });
                    }
                }
                None => break,
            }
        }
        Ok(true)
    }
}
