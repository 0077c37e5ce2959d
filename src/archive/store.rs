//! Opening an archive's object store from a URL, and the few operations
//! waly needs on it: write-once puts, gets, and sorted listings.
//!
//! Every write is `PutMode::Create`: an object, once written, never changes.
//! An `AlreadyExists` answer counts as success only when the stored bytes are
//! identical (a retried upload whose first attempt did land).

use crate::Error as ArchiveError;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An archive location: a store and a prefix inside it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    /// A local directory, whose directories can outlive their objects (a
    /// killed write leaves a staging file, which is no object).
    local: bool,
    read: Arc<Reads>,
    pub(crate) crypt: Arc<crate::crypt::Crypt>,
}

/// What reading through a store has cost so far: the measure of a read's
/// price on an object store, which bills requests and bytes.
#[derive(Debug, Default)]
pub struct Reads {
    bytes: AtomicU64,
    requests: AtomicU64,
    lists: AtomicU64,
    /// Per object: bytes and GET requests.
    objects: std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
}

/// A snapshot of [`Reads`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadCost {
    /// Bytes of object bodies and ranges.
    pub bytes: u64,
    /// GET requests (whole objects and ranges).
    pub requests: u64,
    /// LIST requests.
    pub lists: u64,
    /// Distinct objects read from.
    pub objects: u64,
}

/// Every store's reads in this process (`WALY_READ_STATS=1` prints them at exit).
static ALL_READS: Reads = Reads {
    bytes: AtomicU64::new(0),
    requests: AtomicU64::new(0),
    lists: AtomicU64::new(0),
    objects: std::sync::Mutex::new(std::collections::BTreeMap::new()),
};

impl Reads {
    fn cost(&self) -> ReadCost {
        ReadCost {
            bytes: self.bytes.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            objects: self.objects.lock().map_or(0, |o| o.len() as u64),
        }
    }

    fn listed(&self) {
        self.lists.fetch_add(1, Ordering::Relaxed);
    }

    fn got(&self, key: &str, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut o) = self.objects.lock() {
            let entry = match o.get_mut(key) {
                Some(e) => e,
                None => o.entry(key.to_string()).or_default(),
            };
            entry.0 += bytes as u64;
            entry.1 += 1;
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish_non_exhaustive()
    }
}

/// Whether a bare `AWS_*` environment provides S3 credentials without
/// asking the instance-metadata service.
fn s3_credentials_present() -> bool {
    let set = |k: &str| std::env::var(k).map(|v| !v.is_empty()).unwrap_or(false);
    (set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY"))
        || set("AWS_WEB_IDENTITY_TOKEN_FILE")
        || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        || std::env::var("WALY_S3_INSTANCE_METADATA").as_deref() == Ok("true")
}

impl Store {
    /// Opens `url`: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, `file:///path`, `memory://`, or a plain path.
    /// Credentials and endpoints come from the usual environment variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `GOOGLE_SERVICE_ACCOUNT`,
    /// `AZURE_STORAGE_ACCOUNT_NAME`, ...).
    pub fn open(url: &str) -> Result<Store, ArchiveError> {
        let bad = |why: String| ArchiveError::BadUrl {
            url: url.to_string(),
            why,
        };
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s, r),
            None => ("file", url),
        };
        let (inner, prefix): (Arc<dyn ObjectStore>, &str) = match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(bad("the path is empty".into()));
                }
                std::fs::create_dir_all(rest).map_err(|e| bad(format!("cannot create directory {rest}: {e}")))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(rest)
                    .map_err(|e| bad(e.to_string()))?
                    .with_automatic_cleanup(true);
                (Arc::new(local), "")
            }
            "memory" => (Arc::new(object_store::memory::InMemory::new()), rest),
            "s3" | "s3a" => {
                let (bucket, prefix) = bucket_and_prefix(rest).ok_or_else(|| bad("no bucket name".into()))?;
                if !s3_credentials_present() {
                    return Err(ArchiveError::MissingCredentials {
                        url: url.to_string(),
                        what: "S3 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a web-identity or \
                               container role); to use this machine's EC2 instance role, set \
                               WALY_S3_INSTANCE_METADATA=true"
                            .into(),
                    });
                }
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_client_options(client_options())
                    .with_bucket_name(bucket)
                    .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
                let endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .unwrap_or_default();
                if !endpoint.is_empty() {
                    b = b.with_endpoint(&endpoint);
                    if endpoint.starts_with("http://") {
                        b = b.with_allow_http(true);
                    }
                }
                (Arc::new(b.build().map_err(|e| bad(e.to_string()))?), prefix)
            }
            "gs" => {
                let (bucket, prefix) = bucket_and_prefix(rest).ok_or_else(|| bad("no bucket name".into()))?;
                let b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_client_options(client_options())
                    .with_bucket_name(bucket);
                (Arc::new(b.build().map_err(|e| bad(e.to_string()))?), prefix)
            }
            "az" | "azure" | "abfs" => {
                let (container, prefix) = bucket_and_prefix(rest).ok_or_else(|| bad("no container name".into()))?;
                let b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_client_options(client_options())
                    .with_container_name(container);
                (Arc::new(b.build().map_err(|e| bad(e.to_string()))?), prefix)
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?}: use s3://, gs://, az://, file:// or a directory path"
                )))
            }
        };
        Ok(Store {
            inner,
            prefix: Path::from(prefix.trim_matches('/')),
            url: url.to_string(),
            local: scheme == "file",
            read: Arc::default(),
            crypt: Arc::default(),
        })
    }

    /// A store over an existing `ObjectStore` (for the contract tests).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, prefix: &str) -> Store {
        Store {
            inner,
            prefix: Path::from(prefix.trim_matches('/')),
            url: format!("(object store)/{prefix}"),
            local: false,
            read: Arc::default(),
            crypt: Arc::default(),
        }
    }

    /// The URL the archive was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.child(part);
        }
        p
    }

    /// Writes `bytes` at `key` once. If an object is already there, succeeds
    /// only if it holds exactly these bytes.
    pub async fn put_once(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        self.check_sealed(key, &bytes).await?;
        let path = self.path(key);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.inner.put_opts(&path, PutPayload::from(bytes.clone()), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self.get(key).await?;
                if existing == bytes {
                    Ok(())
                } else {
                    Err(ArchiveError::Conflict { key: key.to_string() })
                }
            }
            Err(source) => Err(ArchiveError::store(key, source)),
        }
    }

    /// Writes `bytes` at `key`, replacing what is there (for objects that
    /// are not history: an export's cursor).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        self.check_sealed(key, &bytes).await?;
        self.inner
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| ArchiveError::store(key, e))
    }

    /// Uploads the local file `file` to `key` in parts (memory holds one
    /// part), replacing what is there; the object appears whole or not at all.
    pub async fn put_file(&self, key: &str, file: &std::path::Path) -> Result<(), ArchiveError> {
        const PART: usize = 8 << 20;
        match small_file(file, PART).await? {
            (_, Some(bytes)) => self.put(key, bytes).await,
            (_, None) => self.upload_parts(key, file, PART, 2).await,
        }
    }

    /// Uploads the local file `file` to `key` once, as [`Store::put_once`]
    /// does bytes (an object already there must hold exactly the file's
    /// bytes): whole when small, else in parts of 5 MiB, one in flight, so
    /// memory holds about two parts. A file uploaded in parts is not
    /// checked for sealing here: its writer checks it as it writes it (an
    /// index merge checks each block).
    pub async fn put_file_once(&self, key: &str, file: &std::path::Path) -> Result<(), ArchiveError> {
        const PART: usize = 5 << 20;
        let len = match small_file(file, PART).await? {
            (_, Some(bytes)) => return self.put_once(key, bytes).await,
            (len, None) => len,
        };
        match self.inner.head(&self.path(key)).await {
            Ok(meta) => {
                return if meta.size == len && self.holds_file(key, file, PART).await? {
                    Ok(())
                } else {
                    Err(ArchiveError::Conflict { key: key.to_string() })
                };
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(ArchiveError::store(key, e)),
        }
        self.upload_parts(key, file, PART, 1).await
    }

    /// Whether the object at `key` holds the bytes of `file` (compared a
    /// `part` at a time).
    async fn holds_file(&self, key: &str, file: &std::path::Path, part: usize) -> Result<bool, ArchiveError> {
        let mut f = tokio::fs::File::open(file).await.map_err(ArchiveError::Io)?;
        let mut buf = vec![0u8; part];
        let mut at = 0u64;
        loop {
            let n = read_full(&mut f, &mut buf).await?;
            if n == 0 {
                return Ok(true);
            }
            if self.get_range(key, at..at + n as u64).await?[..] != buf[..n] {
                return Ok(false);
            }
            at += n as u64;
        }
    }

    /// A multipart upload of `file` to `key` in parts of `part` bytes, at
    /// most `in_flight` at once; aborted on an error, so no part is left.
    async fn upload_parts(
        &self,
        key: &str,
        file: &std::path::Path,
        part: usize,
        in_flight: usize,
    ) -> Result<(), ArchiveError> {
        let mut f = tokio::fs::File::open(file).await.map_err(ArchiveError::Io)?;
        let upload = self
            .inner
            .put_multipart(&self.path(key))
            .await
            .map_err(|e| ArchiveError::store(key, e))?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, part);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match read_full(&mut f, &mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(e);
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = w.wait_for_capacity(in_flight).await {
                let _ = w.abort().await;
                return Err(ArchiveError::store(key, e));
            }
            w.write(&buf[..n]);
        }
        w.finish().await.map(|_| ()).map_err(|e| ArchiveError::store(key, e))
    }

    /// Reads the object at `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        let path = self.path(key);
        let r = self.inner.get(&path).await.map_err(|e| ArchiveError::store(key, e))?;
        let b = r.bytes().await.map_err(|e| ArchiveError::store(key, e))?;
        self.read.got(key, b.len());
        ALL_READS.got(key, b.len());
        Ok(b)
    }

    /// Reads `range` (byte offsets) of the object at `key`.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, ArchiveError> {
        let b = self
            .inner
            .get_range(&self.path(key), range)
            .await
            .map_err(|e| ArchiveError::store(key, e))?;
        self.read.got(key, b.len());
        ALL_READS.got(key, b.len());
        Ok(b)
    }

    /// Reads the last `n` bytes of the object at `key` (all of it if it is
    /// shorter), without knowing its size: the bytes and the object's size.
    pub async fn get_suffix(&self, key: &str, n: u64) -> Result<(Bytes, u64), ArchiveError> {
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Suffix(n)),
            ..Default::default()
        };
        let r = self
            .inner
            .get_opts(&self.path(key), opts)
            .await
            .map_err(|e| ArchiveError::store(key, e))?;
        let size = r.meta.size;
        let b = r.bytes().await.map_err(|e| ArchiveError::store(key, e))?;
        self.read.got(key, b.len());
        ALL_READS.got(key, b.len());
        Ok((b, size))
    }

    /// Bytes read through this store so far (object bodies and ranges).
    pub fn bytes_read(&self) -> u64 {
        self.read.bytes.load(Ordering::Relaxed)
    }

    /// What reading through this store (and its clones) has cost so far.
    pub fn read_cost(&self) -> ReadCost {
        self.read.cost()
    }

    /// What reading through every store of this process has cost so far.
    pub fn all_read_cost() -> ReadCost {
        ALL_READS.cost()
    }

    /// Every object this process read from, with its bytes and GET
    /// requests, by key (`WALY_READ_STATS=2` prints them at exit).
    pub fn all_reads_by_object() -> Vec<(String, u64, u64)> {
        ALL_READS
            .objects
            .lock()
            .map(|o| o.iter().map(|(k, &(b, r))| (k.clone(), b, r)).collect())
            .unwrap_or_default()
    }

    /// Reads the object at `key`, or `None` when there is none.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>, ArchiveError> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_object_gone() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every key under `dir` (relative to the archive), with its size, sorted.
    /// Listing order is never trusted: the result is sorted here.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, ArchiveError> {
        let listed = self.list_tagged(dir).await?;
        Ok(listed.into_iter().map(|(k, size, _)| (k, size)).collect())
    }

    /// [`Store::list`], with each object's entity tag when the store gives
    /// one (it changes whenever the object is written again).
    pub async fn list_tagged(&self, dir: &str) -> Result<Vec<(String, u64, Option<String>)>, ArchiveError> {
        let base = self.path(dir);
        let skip = self.prefix.parts().count();
        self.read.listed();
        ALL_READS.listed();
        let mut out: Vec<(String, u64, Option<String>)> = self
            .inner
            .list(Some(&base))
            .map_ok(|m| {
                let rel: Vec<String> = m.location.parts().skip(skip).map(|p| p.as_ref().to_string()).collect();
                (rel.join("/"), m.size, m.e_tag)
            })
            .try_collect()
            .await
            .map_err(|e| ArchiveError::store(dir, e))?;
        out.sort();
        Ok(out)
    }

    /// The names of the "directories" right under `dir` (the next part of
    /// every key below it, so only those with an object), sorted. One
    /// delimited listing, whose cost does not grow with the objects below
    /// them (a flat listing of a large archive's `generations/` is one
    /// request per thousand segments).
    pub async fn list_dirs(&self, dir: &str) -> Result<Vec<String>, ArchiveError> {
        let base = self.path(dir);
        self.read.listed();
        ALL_READS.listed();
        let listed = self
            .inner
            .list_with_delimiter(Some(&base))
            .await
            .map_err(|e| ArchiveError::store(dir, e))?;
        let mut out = Vec::new();
        for p in &listed.common_prefixes {
            // As in an object store, a directory is there when an object is
            // below it (on a local disk, a look at the first one).
            if self.local {
                let first = self.inner.list(Some(p)).try_next().await;
                if first.map_err(|e| ArchiveError::store(dir, e))?.is_none() {
                    continue;
                }
            }
            out.extend(p.filename().map(str::to_string));
        }
        out.sort();
        Ok(out)
    }

    /// Deletes the object at `key` (tests and pruning only; archive data is
    /// otherwise never rewritten). An object already gone is deleted: S3
    /// says so, a local disk, GCS and Azure say "not found", and another
    /// process (a writer's index merge, a second prune) may have deleted it
    /// between a listing and this.
    pub async fn delete(&self, key: &str) -> Result<(), ArchiveError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(ArchiveError::store(key, e)),
        }
    }
}

/// HTTP client settings for cloud stores: `WALY_STORE_TIMEOUT` (seconds,
/// default 30) bounds each request, so a hung server is noticed.
fn client_options() -> object_store::ClientOptions {
    let secs = std::env::var("WALY_STORE_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(30);
    object_store::ClientOptions::new()
        .with_timeout(std::time::Duration::from_secs(secs))
        .with_connect_timeout(std::time::Duration::from_secs(secs.min(10)))
}

fn bucket_and_prefix(rest: &str) -> Option<(&str, &str)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, prefix))
}

/// The size of the local file `file`, and its bytes when it is at most
/// `part` bytes (it is then put whole).
async fn small_file(file: &std::path::Path, part: usize) -> Result<(u64, Option<Bytes>), ArchiveError> {
    let len = tokio::fs::metadata(file).await.map_err(ArchiveError::Io)?.len();
    if len > part as u64 {
        return Ok((len, None));
    }
    let bytes = tokio::fs::read(file).await.map_err(ArchiveError::Io)?;
    Ok((len, Some(Bytes::from(bytes))))
}

/// Reads from `f` until `buf` is full or the file ends: how many bytes.
async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> Result<usize, ArchiveError> {
    use tokio::io::AsyncReadExt;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).await.map_err(ArchiveError::Io)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deleting_an_object_another_process_deleted_first_succeeds_on_every_store() {
        let dir = std::env::temp_dir().join(format!("waly-store-delete-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        for url in ["memory://".to_string(), dir.display().to_string()] {
            let store = Store::open(&url).expect("store");
            store
                .put_once("index/a.idx", Bytes::from_static(b"x"))
                .await
                .expect("put");
            store.delete("index/a.idx").await.expect("delete");
            assert_eq!(store.get_opt("index/a.idx").await.expect("get"), None, "{url}");
            store
                .delete("index/a.idx")
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            store
                .delete("never/written")
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
