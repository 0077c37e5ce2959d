//! The writing half of an export, on a thread of its own: it turns rows
//! into Parquet (typing, encoding, compressing) and uploads finished files
//! while the reading half decodes the archive, so the two use two cores.

use super::file::{OutColumn, OutRow, ParquetFile};
use crate::archive::Store;
use crate::Error;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// What the writer does.
#[derive(Debug)]
pub enum Cmd {
    /// Start a file for `table` at the local `path`.
    Open {
        table: String,
        path: std::path::PathBuf,
        columns: Vec<OutColumn>,
        key: Vec<usize>,
        meta: Vec<(String, String)>,
        /// Bytes the file holds so far, kept current by the writer.
        written: Arc<AtomicUsize>,
    },
    /// Rows for `table`'s open file, in commit order.
    Rows { table: String, rows: Vec<OutRow> },
    /// Finish `table`'s file and upload it to `key`.
    Close { table: String, key: String },
}

/// Batches in flight between the halves (each up to `BATCH` rows).
const IN_FLIGHT: usize = 16;
/// Rows per batch.
pub const BATCH: usize = 2048;

/// The writer thread and the way to it.
pub struct Sink {
    tx: Option<SyncSender<Cmd>>,
    thread: Option<std::thread::JoinHandle<Result<(u64, u64), Error>>>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl Sink {
    /// Starts the writer; uploads go to `dest` through `runtime`.
    pub fn start(dest: Store, runtime: tokio::runtime::Handle) -> Result<Sink, Error> {
        let (tx, rx) = sync_channel(IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("waly-export-writer".into())
            .spawn(move || write(rx, &dest, &runtime))?;
        Ok(Sink {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands `cmd` to the writer; when the writer has stopped, its error.
    pub fn send(&mut self, cmd: Cmd) -> Result<(), Error> {
        // A full channel waits here: the runtime's other work (the
        // writer's uploads among it) moves to another thread meanwhile.
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tokio::task::block_in_place(|| tx.send(cmd).is_ok()));
        if sent {
            return Ok(());
        }
        self.finish()?;
        Err(Error::Io(std::io::Error::other("the export's writer stopped")))
    }

    /// Waits for the writer to finish what it was given: files and bytes uploaded.
    pub fn finish(&mut self) -> Result<(u64, u64), Error> {
        self.tx = None;
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Io(std::io::Error::other("the export's writer panicked")))),
            None => Ok((0, 0)),
        }
    }
}

fn failed(e: String) -> Error {
    Error::Io(std::io::Error::other(e))
}

fn write(rx: Receiver<Cmd>, dest: &Store, runtime: &tokio::runtime::Handle) -> Result<(u64, u64), Error> {
    let mut open: HashMap<String, (ParquetFile, std::path::PathBuf, Arc<AtomicUsize>)> = HashMap::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    let result = (|| {
        for cmd in rx {
            match cmd {
                Cmd::Open {
                    table,
                    path,
                    columns,
                    key,
                    meta,
                    written,
                } => {
                    let file = ParquetFile::create(&path, &table, columns, key, meta).map_err(failed)?;
                    open.insert(table, (file, path, written));
                }
                Cmd::Rows { table, rows } => {
                    let (file, _, written) = open
                        .get_mut(&table)
                        .ok_or_else(|| failed(format!("no open file for {table}")))?;
                    file.push_rows(rows).map_err(|why| Error::Corrupt {
                        key: format!("{table} (export)"),
                        why,
                    })?;
                    written.store(file.bytes_written(), Ordering::Relaxed);
                }
                Cmd::Close { table, key } => {
                    let Some((file, path, _)) = open.remove(&table) else {
                        continue;
                    };
                    file.finish().map_err(failed)?;
                    let size = std::fs::metadata(&path)?.len();
                    runtime
                        .block_on(dest.put_file(&key, &path))
                        .map_err(|e| super::destination(dest, e))?;
                    let _ = std::fs::remove_file(&path);
                    files += 1;
                    bytes += size;
                }
            }
        }
        Ok(())
    })();
    for (_, path, _) in open.values() {
        let _ = std::fs::remove_file(path);
    }
    result.map(|()| (files, bytes))
}
