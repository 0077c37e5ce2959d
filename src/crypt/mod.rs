//! Client-side encryption with age: every object that holds data is
//! compressed, then encrypted, frame by frame, under a data key that is
//! itself wrapped (age) for the archive's recipients. See docs/FORMAT.md,
//! "Encryption".
//!
//! A [`Crypt`] travels with a [`Store`] (shared by its clones): it knows
//! whether the archive is encrypted (from `waly.json`, read once), the
//! reader's key source (an identity file or a passphrase), the data keys
//! unwrapped so far, and the writer's own data key. Writers seal through
//! [`Sealer`]; readers open through [`Store::open_segment`],
//! [`Store::open_frames`] and [`Store::open_blob`]; and
//! [`Store::put_once`] refuses any plaintext object that should hold
//! ciphertext, so no writer path can leak one by forgetting.

pub mod frame;
pub mod keys;
pub mod rotate;
pub mod schema;
pub mod shapes;

use crate::archive::{layout, Store};
use crate::Error;
use age::secrecy::{ExposeSecret, SecretString};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Where a reader's key comes from. Its `Debug` never shows a secret.
#[derive(Clone)]
pub enum KeySource {
    /// An age identity file.
    File(std::path::PathBuf),
    /// A passphrase (passphrase-mode archives).
    Passphrase(SecretString),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
            KeySource::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
        }
    }
}

/// The writer's data key: seals frames and objects. Its `Debug` shows the
/// key id only.
#[derive(Clone)]
pub struct Sealer {
    id: String,
    recipient: age::x25519::Recipient,
    /// The recipient set it was wrapped for.
    set: u32,
    /// Hashes the index entries of what it seals.
    hasher: crate::index::Hasher,
    /// Seals index blocks (AEAD frames).
    blocks: chacha20poly1305::XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("key_id", &self.id).finish()
    }
}

impl Sealer {
    /// The data key's id.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The keyed hash of index entries under this data key.
    pub fn hasher(&self) -> &crate::index::Hasher {
        &self.hasher
    }

    /// `plain` encrypted as one sealed frame.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, Error> {
        let age =
            age::encrypt(&self.recipient, plain).map_err(|e| Error::Encryption(format!("cannot encrypt: {e}")))?;
        Ok(frame::wrap(&self.id, &age))
    }

    /// An index block `plain` encrypted as one AEAD frame (see [`frame`]).
    pub fn seal_block(&self, plain: &[u8]) -> Result<Vec<u8>, Error> {
        use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
        let nonce = chacha20poly1305::XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .blocks
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: self.id.as_bytes(),
                },
            )
            .map_err(|_| Error::Encryption("cannot encrypt an index block".into()))?;
        let mut body = Vec::with_capacity(frame::NONCE_LEN + sealed.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&sealed);
        Ok(frame::wrap_as(frame::AEAD_MAGIC, &self.id, &body))
    }
}

/// The sealer of data key `identity` (id `id`), wrapped for recipient set `set`.
fn sealer_of(id: String, set: u32, identity: &age::x25519::Identity) -> Sealer {
    Sealer {
        id,
        recipient: identity.to_public(),
        set,
        hasher: hasher_of(identity),
        blocks: blocks_of(identity),
    }
}

/// The index hasher of a data key (see [`crate::index::Hasher::keyed`]).
fn hasher_of(data_key: &age::x25519::Identity) -> crate::index::Hasher {
    crate::index::Hasher::keyed(data_key.to_string().expose_secret().as_bytes())
}

/// The cipher of a data key's AEAD frames: XChaCha20-Poly1305 under
/// HKDF-SHA256(salt `waly-index`, the key's identity line, info `index
/// block seal v1`).
fn blocks_of(data_key: &age::x25519::Identity) -> chacha20poly1305::XChaCha20Poly1305 {
    use chacha20poly1305::KeyInit;
    let mut k = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"waly-index"), data_key.to_string().expose_secret().as_bytes())
        .expand(b"index block seal v1", &mut k)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    chacha20poly1305::XChaCha20Poly1305::new(&k.into())
}

/// Opens AEAD frame `bytes` (whole, its head included) under data key `id`.
fn open_block(key: &str, id: &str, data: &age::x25519::Identity, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    use chacha20poly1305::aead::{Aead, Payload};
    let body = &bytes[frame::HEAD..];
    let corrupt = |why: &str| Error::Corrupt {
        key: key.to_string(),
        why: format!("an index block sealed under data key {id} {why}"),
    };
    if body.len() < frame::NONCE_LEN + 16 {
        return Err(corrupt("is cut short"));
    }
    let (nonce, sealed) = body.split_at(frame::NONCE_LEN);
    blocks_of(data)
        .decrypt(
            chacha20poly1305::XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: id.as_bytes(),
            },
        )
        .map_err(|_| corrupt("fails its authentication (changed, or not sealed by that key)"))
}

/// Whether the archive is encrypted, as `waly.json` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Encrypted,
}

/// A store's encryption state (see the module documentation).
#[derive(Default)]
pub struct Crypt {
    source: Mutex<Option<KeySource>>,
    mode: tokio::sync::OnceCell<Mode>,
    /// Whether schema versions seal their literals (`waly_archive` 3).
    literals_sealed: std::sync::OnceLock<bool>,
    /// Whether schema versions are sealed whole (`waly_archive` 4).
    shapes_sealed: std::sync::OnceLock<bool>,
    identities: tokio::sync::OnceCell<Vec<age::x25519::Identity>>,
    data: Mutex<HashMap<String, Arc<age::x25519::Identity>>>,
    /// Held while a data key is unwrapped: readers that need the same key
    /// at once read its wrappings once.
    unwrapping: tokio::sync::Mutex<()>,
    sealer: Mutex<Option<Sealer>>,
    /// The writer's schema key (format 4): seals schema versions whole.
    schema_sealer: Mutex<Option<Sealer>>,
    /// Set once the writer's schema keys were taken from the source
    /// database ([`shapes::keep_schema_keys`]).
    writer_keys: std::sync::OnceLock<()>,
}

impl std::fmt::Debug for Crypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypt")
            .field("mode", &self.mode.get())
            .field("data_keys", &self.data.lock().map(|d| d.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

/// What a reader without a key is told.
fn what_to_pass(store: &Store) -> String {
    format!(
        "the archive at {} is encrypted: pass --identity FILE (or set WALY_IDENTITY) with an age identity it was \
         encrypted to, or set WALY_PASSPHRASE for an archive created with --encrypt passphrase",
        store.url()
    )
}

impl Crypt {
    /// Whether a reader's key source was given.
    pub fn has_source(&self) -> bool {
        self.source.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    /// Sets where this store's reader takes its key from.
    pub fn set_source(&self, source: Option<KeySource>) {
        if let Ok(mut s) = self.source.lock() {
            *s = source;
        }
    }

    /// The archive's mode, remembered once `waly.json` exists (an archive
    /// without one is plaintext so far, and asked again next time).
    async fn mode(&self, store: &Store) -> Result<Mode, Error> {
        // Readers that ask at once (index objects opened together) wait for
        // one read of `waly.json`. An archive without one yet is plaintext
        // for now, and asked again next time (`None` below).
        let m = self
            .mode
            .get_or_try_init(|| async {
                let Some(id) = crate::archive::state::read_identity(store).await.map_err(Some)? else {
                    return Err(None);
                };
                let m = match id.encryption {
                    Some(_) => Mode::Encrypted,
                    None => Mode::Plain,
                };
                let _ = self
                    .literals_sealed
                    .set(m == Mode::Encrypted && id.waly_archive >= crate::archive::state::SEALED_LITERALS_FORMAT);
                let _ = self
                    .shapes_sealed
                    .set(m == Mode::Encrypted && id.waly_archive >= crate::archive::state::SEALED_SHAPES_FORMAT);
                Ok(m)
            })
            .await;
        match m {
            Ok(m) => Ok(*m),
            Err(None) => Ok(Mode::Plain),
            Err(Some(e)) => Err(e),
        }
    }

    /// Whether schema versions seal their literals, once the mode is known.
    fn seals_literals(&self) -> bool {
        self.literals_sealed.get() == Some(&true)
    }

    /// Whether schema versions are sealed whole (format 4).
    fn seals_shapes_whole(&self) -> bool {
        self.shapes_sealed.get() == Some(&true)
    }

    /// The reader's identities: loaded on first need.
    async fn identities(&self, store: &Store) -> Result<&[age::x25519::Identity], Error> {
        let source = self.source.lock().map(|s| s.clone()).unwrap_or(None);
        let ids = self
            .identities
            .get_or_try_init(|| async {
                match source {
                    None => Err(Error::Encryption(what_to_pass(store))),
                    Some(KeySource::File(path)) => {
                        let what = format!("identity file {}", path.display());
                        let text = std::fs::read_to_string(&path)
                            .map_err(|e| Error::Encryption(format!("cannot read {what}: {e}")))?;
                        keys::parse_identities(&what, &text)
                    }
                    Some(KeySource::Passphrase(p)) => {
                        let Some(bytes) = store.get_opt(keys::PASSPHRASE_KEY).await? else {
                            return Err(Error::Encryption(format!(
                                "WALY_PASSPHRASE is set, but the archive at {} has no {} (it was not created with \
                                 --encrypt passphrase): pass --identity FILE instead",
                                store.url(),
                                keys::PASSPHRASE_KEY
                            )));
                        };
                        let p2 = p.clone();
                        let id = tokio::task::spawn_blocking(move || keys::open_passphrase_key(&bytes, &p2))
                            .await
                            .map_err(|e| Error::Encryption(format!("scrypt task: {e}")))??;
                        Ok(vec![id])
                    }
                }
            })
            .await?;
        Ok(ids)
    }

    /// Data key `id`, unwrapped with the reader's identities (once).
    async fn data_key(&self, store: &Store, id: &str) -> Result<Arc<age::x25519::Identity>, Error> {
        if let Some(k) = self.data.lock().ok().and_then(|d| d.get(id).cloned()) {
            return Ok(k);
        }
        let _one_at_a_time = self.unwrapping.lock().await;
        if let Some(k) = self.data.lock().ok().and_then(|d| d.get(id).cloned()) {
            return Ok(k);
        }
        let wrappings = keys::wrappings(store, id).await?;
        if wrappings.is_empty() {
            return Err(Error::Encryption(format!(
                "data key {id} is not in the archive ({}/{id}/ is empty): objects sealed under it cannot be read",
                keys::DATA_DIR
            )));
        }
        let identities = self.identities(store).await?;
        for w in &wrappings {
            let bytes = store.get(w).await?;
            if let Some(text) = keys::decrypt_with(w, identities, &bytes)? {
                let text = SecretString::from(String::from_utf8_lossy(&text).into_owned());
                let mut found = keys::parse_identities(w, text.expose_secret())?;
                let key = Arc::new(found.remove(0));
                if let Ok(mut d) = self.data.lock() {
                    d.insert(id.to_string(), key.clone());
                }
                return Ok(key);
            }
        }
        Err(Error::Encryption(format!(
            "the key does not match: data key {id} of the archive at {} is wrapped for other recipients than the \
             identity given ({})",
            store.url(),
            wrappings.join(", ")
        )))
    }

    /// Data key `id`'s secret (an identity file line), to wrap it again.
    pub async fn data_key_secret(&self, store: &Store, id: &str) -> Result<SecretString, Error> {
        Ok(keys::secret_line(&*self.data_key(store, id).await?))
    }

    /// Decrypts one sealed frame (`bytes`, the whole frame) of object `key`.
    async fn unseal(&self, store: &Store, key: &str, id: &str, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        let data = self.data_key(store, id).await?;
        if frame::magic(bytes) == Some(frame::AEAD_MAGIC) {
            return open_block(key, id, &data, bytes);
        }
        match keys::decrypt_with(key, std::slice::from_ref(&*data), &bytes[frame::HEAD..])? {
            Some(plain) => Ok(plain),
            None => Err(Error::Corrupt {
                key: key.to_string(),
                why: format!("a frame named data key {id} but is not encrypted to it"),
            }),
        }
    }
}

/// Which frames of what is read may be plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plain {
    /// The first (a segment's header).
    Head,
    /// None.
    Never,
}

impl Store {
    /// This store's encryption state.
    pub fn crypt(&self) -> &Crypt {
        &self.crypt
    }

    /// Makes this store ready to write: learns whether the archive is
    /// encrypted and, if it is, makes a data key for this writer, wrapped
    /// for the newest recipient set (no identity needed); a later call
    /// makes a new one only if a newer set appeared (a rotation: one
    /// listing). Refuses to go on when the archive is encrypted and its
    /// recipients are missing or malformed.
    pub async fn prepare_writing(&self) -> Result<Option<Sealer>, Error> {
        if self.crypt.mode(self).await? == Mode::Plain {
            return Ok(None);
        }
        let set = keys::newest_recipients(self).await?.ok_or_else(|| {
            Error::Encryption(format!(
                "the archive at {} is marked encrypted but has no recipients ({}/): refusing to write; \
                 add one with `waly keys add-recipient`",
                self.url(),
                keys::RECIPIENTS_DIR
            ))
        })?;
        if let Some(s) = self.crypt.sealer.lock().ok().and_then(|s| s.clone()) {
            if s.set == set.number {
                return Ok(Some(s));
            }
        }
        let (sealer, _) = self.new_sealer(&set).await?;
        if let Ok(mut s) = self.crypt.sealer.lock() {
            *s = Some(sealer.clone());
        }
        Ok(Some(sealer))
    }

    /// A new data key wrapped for recipient set `set` (stored in the
    /// archive), known to this store from now on: its sealer and secret.
    async fn new_sealer(&self, set: &keys::RecipientSet) -> Result<(Sealer, SecretString), Error> {
        let recipients = keys::recipients_of(&keys::recipients_key(set.number), set)?;
        let (id, identity) = keys::new_data_key(self, &recipients).await?;
        let secret = keys::secret_line(&identity);
        // A recipient added since `set` was read (`waly keys add-recipient`
        // wraps the keys it lists, then writes its set, then wraps the keys
        // listed since): this key, put after that, is wrapped for it here.
        if let Some(newest) = keys::newest_recipients(self).await? {
            if newest.number > set.number && newest.recipients.iter().any(|r| !set.recipients.contains(r)) {
                let to = keys::recipients_of(&keys::recipients_key(newest.number), &newest)?;
                keys::wrap_again(self, &id, secret.expose_secret(), &to).await?;
            }
        }
        let sealer = sealer_of(id.clone(), set.number, &identity);
        if let Ok(mut d) = self.crypt.data.lock() {
            d.insert(id, Arc::new(identity));
        }
        Ok((sealer, secret))
    }

    /// The writer's sealer: `None` for a plaintext archive. Fails when
    /// [`Store::prepare_writing`] has not run (the archive's mode unknown):
    /// a writer never guesses.
    pub fn sealer(&self) -> Result<Option<Sealer>, Error> {
        match self.crypt.mode.get() {
            Some(Mode::Plain) => Ok(None),
            Some(Mode::Encrypted) => self
                .crypt
                .sealer
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .map(Some)
                .ok_or_else(|| Error::Encryption("the writer has no data key (prepare_writing did not run)".into())),
            None => Err(Error::Encryption(
                "the archive's encryption was not checked before writing (prepare_writing did not run)".into(),
            )),
        }
    }

    /// The hasher of index objects whose entries were hashed under data key
    /// `id` (unwrapped with the reader's identity, or this writer's own).
    pub async fn index_hasher(&self, id: &str) -> Result<crate::index::Hasher, Error> {
        Ok(hasher_of(&*self.crypt.data_key(self, id).await?))
    }

    /// Refuses a reader without a key (`--identity`, `WALY_PASSPHRASE`)
    /// when the archive is encrypted, saying what to pass: for readers that
    /// would otherwise show what they can read and leave out what is sealed.
    pub async fn require_key(&self) -> Result<(), Error> {
        if self.is_encrypted().await? && !self.crypt.has_source() {
            return Err(Error::Encryption(what_to_pass(self)));
        }
        Ok(())
    }

    /// Whether the archive is encrypted (`waly.json`, read once).
    pub async fn is_encrypted(&self) -> Result<bool, Error> {
        Ok(self.crypt.mode(self).await? == Mode::Encrypted)
    }

    /// `bytes` sealed as one frame if the archive is encrypted (an object
    /// read whole: an error record), under this writer's data key (made
    /// now if there is none yet).
    pub async fn seal_blob(&self, bytes: Bytes) -> Result<Bytes, Error> {
        if self.crypt.mode(self).await? == Mode::Plain {
            return Ok(bytes);
        }
        let mine = self.crypt.sealer.lock().ok().and_then(|s| s.clone());
        let sealer = match mine {
            Some(s) => s,
            None => self
                .prepare_writing()
                .await?
                .ok_or_else(|| Error::Encryption("no data key".into()))?,
        };
        Ok(sealer.seal(&bytes)?.into())
    }

    /// Reads segment `key` whole, its record frames decrypted.
    pub async fn get_segment(&self, key: &str) -> Result<Bytes, Error> {
        let bytes = self.get(key).await?;
        self.open_segment(key, bytes).await
    }

    /// Reads an object that is all frames (a snapshot part) whole, decrypted.
    pub async fn get_frames(&self, key: &str) -> Result<Bytes, Error> {
        let bytes = self.get(key).await?;
        self.open_frames(key, bytes).await
    }

    /// Reads `range` of `key`, whole frames, decrypted.
    pub async fn get_range_frames(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, Error> {
        let bytes = self.get_range(key, range).await?;
        self.open_frames(key, bytes).await
    }

    /// A whole segment as plaintext frames: its header frame, then each
    /// record frame decrypted.
    pub async fn open_segment(&self, key: &str, bytes: Bytes) -> Result<Bytes, Error> {
        self.open_with(key, bytes, Plain::Head).await
    }

    /// Record frames (of a segment, a snapshot part or an index object),
    /// each decrypted: all sealed in an encrypted archive.
    pub async fn open_frames(&self, key: &str, bytes: Bytes) -> Result<Bytes, Error> {
        self.open_with(key, bytes, Plain::Never).await
    }

    /// An object read whole: an error record's bytes, decrypted if sealed;
    /// metadata (a lease, a manifest) as it is.
    pub async fn open_blob(&self, key: &str, bytes: Bytes) -> Result<Bytes, Error> {
        if layout::data_kind(key) != Some(layout::DataKind::Blob) {
            return Ok(bytes); // metadata: never sealed
        }
        let sealed = bytes.len() >= 4 && bytes[..4] == frame::MAGIC.to_le_bytes();
        let mode = self.crypt.mode(self).await?;
        match (sealed, mode) {
            (false, Mode::Plain) => Ok(bytes),
            (false, Mode::Encrypted) => Err(plaintext_in_encrypted(key)),
            (true, Mode::Plain) => Err(sealed_in_plain(key)),
            (true, Mode::Encrypted) => {
                let (len, id) = frame::next(key, &bytes)?;
                let id = id.unwrap_or_default();
                if len != bytes.len() {
                    return Err(Error::Corrupt {
                        key: key.to_string(),
                        why: format!("{} bytes follow its sealed frame", bytes.len() - len),
                    });
                }
                Ok(self.crypt.unseal(self, key, &id, &bytes).await?.into())
            }
        }
    }

    async fn open_with(&self, key: &str, bytes: Bytes, plain: Plain) -> Result<Bytes, Error> {
        let mode = self.crypt.mode(self).await?;
        let frames = frame::walk(key, &bytes)?;
        let sealed = frames.iter().filter(|f| f.2.is_some()).count();
        if mode == Mode::Plain {
            if sealed > 0 {
                return Err(sealed_in_plain(key));
            }
            return Ok(bytes);
        }
        let mut out = Vec::with_capacity(bytes.len());
        for (i, (a, b, id)) in frames.iter().enumerate() {
            match id {
                Some(id) => out.extend_from_slice(&self.crypt.unseal(self, key, id, &bytes[*a..*b]).await?),
                None if i == 0 && plain == Plain::Head => out.extend_from_slice(&bytes[*a..*b]),
                None => return Err(plaintext_in_encrypted(key)),
            }
        }
        Ok(out.into())
    }

    /// Refuses plaintext where an encrypted archive must hold ciphertext
    /// (every write-once put passes here).
    pub(crate) async fn check_sealed(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let Some(kind) = layout::data_kind(key) else {
            return Ok(());
        };
        if self.crypt.mode(self).await? == Mode::Plain {
            return Ok(());
        }
        let ok = match kind {
            layout::DataKind::Segment => frame::walk(key, bytes)?
                .iter()
                .enumerate()
                .all(|(i, f)| (i == 0) == f.2.is_none()),
            layout::DataKind::Frames => frame::walk(key, bytes)?.iter().all(|f| f.2.is_some()),
            layout::DataKind::Blob => matches!(frame::next(key, bytes), Ok((n, Some(_))) if n == bytes.len()),
            // Blocks and footer sealed, each a frame; the trailer plain.
            layout::DataKind::Index => match crate::index::sealed_body(bytes) {
                Some((body, true)) => !body.is_empty() && frame::walk(key, body)?.iter().all(|f| f.2.is_some()),
                _ => false,
            },
            layout::DataKind::Schema if self.crypt.shapes_sealed.get() == Some(&true) => {
                shapes::sealed_schema(key, bytes).is_ok()
            }
            layout::DataKind::Schema => schema::plaintext_in_schema(bytes, self.crypt.seals_literals()).is_none(),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Encryption(format!(
                "refusing to write {key}: the archive is encrypted and this object is not sealed"
            )))
        }
    }
}

fn plaintext_in_encrypted(key: &str) -> Error {
    Error::Corrupt {
        key: key.to_string(),
        why: "it holds plaintext, but the archive is encrypted: it is not read as history".into(),
    }
}

fn sealed_in_plain(key: &str) -> Error {
    Error::Corrupt {
        key: key.to_string(),
        why: "it holds encrypted frames, but waly.json does not mark the archive encrypted".into(),
    }
}

/// What `waly init --encrypt` was given.
#[derive(Clone)]
pub enum EncryptSpec {
    /// `age:RECIPIENT[,RECIPIENT...]`.
    Recipients(Vec<age::x25519::Recipient>),
    /// `passphrase`: an archive identity kept under this passphrase.
    Passphrase(SecretString),
}

impl std::fmt::Debug for EncryptSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncryptSpec::Recipients(r) => f.debug_tuple("Recipients").field(&r.len()).finish(),
            EncryptSpec::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
        }
    }
}

impl EncryptSpec {
    /// Parses `age:RECIPIENT[,RECIPIENT...]` or `passphrase` (then asks
    /// `passphrase` for it).
    pub fn parse(spec: &str, passphrase: impl FnOnce() -> Result<SecretString, Error>) -> Result<Self, Error> {
        if spec == "passphrase" {
            return Ok(EncryptSpec::Passphrase(passphrase()?));
        }
        let Some(list) = spec.strip_prefix("age:") else {
            return Err(Error::Encryption(format!(
                "--encrypt {spec:?}: give age:RECIPIENT[,RECIPIENT...] (recipients from `waly keygen`) or passphrase"
            )));
        };
        let recipients = list
            .split(',')
            .filter(|r| !r.trim().is_empty())
            .map(keys::parse_recipient)
            .collect::<Result<Vec<_>, _>>()?;
        if recipients.is_empty() {
            return Err(Error::Encryption("--encrypt age: names no recipient".into()));
        }
        Ok(EncryptSpec::Recipients(recipients))
    }
}

/// Marks a new archive encrypted (`waly.json` first, so a crash before the
/// recipients leaves an archive that refuses plaintext) and stores its
/// first recipient set. An archive that already holds plaintext history is
/// refused; one already encrypted keeps its recipients (`waly keys`
/// changes them).
pub async fn create(
    store: &Store,
    identity: &crate::archive::state::Identity,
    spec: &EncryptSpec,
) -> Result<(), Error> {
    let mut mine = identity.clone();
    mine.waly_archive = crate::archive::state::SEALED_SHAPES_FORMAT;
    mine.encryption = Some("age".into());
    let theirs = crate::archive::state::claim(store, &mine).await?;
    if theirs.encryption.is_none() {
        return Err(Error::Encryption(format!(
            "the archive at {} already holds plaintext history: encryption starts with a new archive (another \
             --archive); this one stays as it is",
            store.url()
        )));
    }
    if keys::newest_recipients(store).await?.is_some() {
        return Ok(());
    }
    let (recipients, passphrase) = match spec {
        EncryptSpec::Recipients(r) => (r.iter().map(|r| r.to_string()).collect(), false),
        EncryptSpec::Passphrase(p) => {
            let archive = age::x25519::Identity::generate();
            let recipient = archive.to_public().to_string();
            let p = p.clone();
            let sealed = tokio::task::spawn_blocking(move || keys::seal_passphrase_key(&archive, &p))
                .await
                .map_err(|e| Error::Encryption(format!("scrypt task: {e}")))??;
            store.put_once(keys::PASSPHRASE_KEY, sealed.into()).await?;
            (vec![recipient], true)
        }
    };
    let set = keys::RecipientSet {
        waly_keys: 1,
        number: 0,
        recipients,
        passphrase,
        reason: "init".into(),
        created_at: chrono::Utc::now(),
    };
    store
        .put_once(&keys::recipients_key(0), crate::archive::state::to_json(&set))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_secret() {
        let pass = "a-passphrase-that-must-not-leak";
        let id = age::x25519::Identity::generate();
        let secret = keys::secret_line(&id);
        let shown = [
            format!("{:?}", KeySource::Passphrase(pass.to_string().into())),
            format!("{:?}", EncryptSpec::Passphrase(pass.to_string().into())),
            format!(
                "{:?}",
                Sealer {
                    id: "0123456789abcdef".into(),
                    recipient: id.to_public(),
                    set: 0,
                    hasher: hasher_of(&id),
                    blocks: blocks_of(&id),
                }
            ),
            format!("{:?}", Crypt::default()),
            format!("{secret:?}"),
        ];
        for s in &shown {
            assert!(!s.contains(pass) && !s.contains(secret.expose_secret().trim()), "{s}");
        }
        // Sealed, then opened by the data key alone.
        let sealer = Sealer {
            id: keys::key_id(&id.to_public()),
            recipient: id.to_public(),
            set: 0,
            hasher: hasher_of(&id),
            blocks: blocks_of(&id),
        };
        let sealed = sealer.seal(b"row data").expect("seal");
        let (len, key) = frame::next("k", &sealed).expect("frame");
        assert_eq!((len, key.as_deref()), (sealed.len(), Some(sealer.key_id())));
        let plain = keys::decrypt_with("k", std::slice::from_ref(&id), &sealed[frame::HEAD..]).expect("ok");
        assert_eq!(plain.as_deref(), Some(&b"row data"[..]));
    }

    #[test]
    fn an_index_block_is_sealed_in_64_bytes_and_a_changed_byte_is_named() {
        let id = age::x25519::Identity::generate();
        let key_id = keys::key_id(&id.to_public());
        let sealer = Sealer {
            id: key_id.clone(),
            recipient: id.to_public(),
            set: 0,
            hasher: hasher_of(&id),
            blocks: blocks_of(&id),
        };
        let block = b"an index block's compressed entries";
        let sealed = sealer.seal_block(block).expect("seal");
        assert_eq!(sealed.len(), block.len() + 64);
        assert!(!sealed.windows(block.len()).any(|w| w == block));
        let (len, named) = frame::next("k", &sealed).expect("frame");
        assert_eq!((len, named.as_deref()), (sealed.len(), Some(key_id.as_str())));
        assert_eq!(open_block("k", &key_id, &id, &sealed).expect("open"), block);
        // Two seals of one block differ (a fresh nonce each).
        assert_ne!(sealer.seal_block(block).expect("seal"), sealed);
        // A changed byte, another data key, or the frame named for another
        // key: refused, never read.
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let e = open_block("k", &key_id, &id, &flipped).expect_err("flipped");
        assert!(e.to_string().contains("fails its authentication"), "{e}");
        let other = age::x25519::Identity::generate();
        assert!(open_block("k", &key_id, &other, &sealed).is_err());
        assert!(open_block("k", "0000000000000000", &id, &sealed).is_err());
        assert!(open_block("k", &key_id, &id, &sealed[..frame::HEAD + 30]).is_err());
    }
}
