//! A generation's segments read ahead of their reader: fetched on the
//! runtime and decoded (decompressed, parsed) on a thread of their own, the
//! records handed over in order, in batches, with a bounded number in
//! flight. A reader that does its own work on each record (printing,
//! typing, writing) then uses a second core for the decoding.

use crate::archive::Store;
use crate::segment::{Record, Schemas, SegmentReader};
use crate::Error;
use bytes::Bytes;
use tokio::sync::mpsc::{channel, Receiver, Sender};

/// Records per batch.
const BATCH: usize = 1024;
/// Batches decoded and waiting for the reader.
const IN_FLIGHT: usize = 4;
/// Segments fetched and waiting for the decoder.
const FETCHED: usize = 2;

/// A segment to read: whole, or (where the index says which frames hold
/// what the reader wants) only those frames.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The segment's key.
    pub key: String,
    /// The frames to read (numbers in the segment's header), or `None`: all.
    pub frames: Option<Vec<u32>>,
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
            for s in segments {
                let got = fetch(&store, s).await;
                let failed = got.is_err();
                if fetched_tx.send(got).await.is_err() || failed {
                    return;
                }
            }
        });
        std::thread::Builder::new().name("waly-decode".into()).spawn(move || {
            while let Some(got) = fetched_rx.blocking_recv() {
                match got.and_then(|f| decode(f, &schemas, &tx)) {
                    Ok(true) => {}
                    Ok(false) => return, // the reader is gone
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            let _ = tx.blocking_send(Ok(None));
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

/// Fetches a segment: whole, or its header then its wanted frames
/// (adjacent ones in one range request).
async fn fetch(store: &Store, s: Wanted) -> Result<Fetched, Error> {
    let Some(frames) = s.frames else {
        return Ok(Fetched::Whole(s.key.clone(), store.get_segment(&s.key).await?));
    };
    if frames.is_empty() {
        return Ok(Fetched::Frames(s.key, Vec::new()));
    }
    let (_, offsets) = crate::index::segment_header(store, &s.key).await?;
    let out = crate::index::read_frames(store, &s.key, &offsets, &frames).await?;
    Ok(Fetched::Frames(s.key, out))
}

/// Decodes one segment into batches sent on `tx`; false when the reader is gone.
fn decode(f: Fetched, schemas: &Schemas, tx: &Sender<Batch>) -> Result<bool, Error> {
    let mut batch = Vec::with_capacity(BATCH);
    let pass = |r: &mut SegmentReader<'_>, batch: &mut Vec<Record>| -> Result<bool, Error> {
        while let Some(rec) = r.next_record(schemas)? {
            batch.push(rec);
            if batch.len() == BATCH
                && tx
                    .blocking_send(Ok(Some(std::mem::replace(batch, Vec::with_capacity(BATCH)))))
                    .is_err()
            {
                return Ok(false);
            }
        }
        Ok(true)
    };
    match f {
        Fetched::Whole(key, bytes) => {
            if !pass(&mut SegmentReader::open(&key, &bytes)?, &mut batch)? {
                return Ok(false);
            }
        }
        Fetched::Frames(key, frames) => {
            for z in &frames {
                if !pass(&mut SegmentReader::frame(&key, z)?, &mut batch)? {
                    return Ok(false);
                }
            }
        }
    }
    Ok(batch.is_empty() || tx.blocking_send(Ok(Some(batch))).is_ok())
}
