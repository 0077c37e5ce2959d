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
    /// Starts reading `keys` (one generation's segments, in order), whose
    /// records are written in `schemas`. Must be called on the runtime.
    pub fn start(store: &Store, keys: Vec<String>, schemas: Schemas) -> Result<Ahead, Error> {
        let (fetched_tx, mut fetched_rx) = channel::<Result<(String, Bytes), Error>>(FETCHED);
        let (tx, rx) = channel::<Batch>(IN_FLIGHT);
        let store = store.clone();
        tokio::spawn(async move {
            for key in keys {
                let got = store.get(&key).await.map(|b| (key, b));
                let failed = got.is_err();
                if fetched_tx.send(got).await.is_err() || failed {
                    return;
                }
            }
        });
        std::thread::Builder::new().name("waly-decode".into()).spawn(move || {
            while let Some(got) = fetched_rx.blocking_recv() {
                match got.and_then(|(key, bytes)| decode(&key, &bytes, &schemas, &tx)) {
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

/// Decodes one segment into batches sent on `tx`; false when the reader is gone.
fn decode(key: &str, bytes: &[u8], schemas: &Schemas, tx: &Sender<Batch>) -> Result<bool, Error> {
    let mut r = SegmentReader::open(key, bytes)?;
    let mut batch = Vec::with_capacity(BATCH);
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
