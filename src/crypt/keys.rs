//! The archive's key objects: who may read it (recipient sets), the data
//! keys wrapped for them, and the passphrase-protected archive identity.
//!
//! ```text
//! keys/recipients/<n>.json      the recipient set in force from n on (newest wins)
//! keys/data/<id>/<n>.age        data key <id>, wrapped (age) for a recipient set
//! keys/data/<id>/schema-key.json  marks <id> a schema key (format 4)
//! keys/passphrase.age           passphrase mode: the archive identity, age scrypt
//! ```
//!
//! A data key is an age X25519 identity made by the writer that uses it;
//! its id is the first 16 hex digits of the SHA-256 of its recipient.

use crate::archive::Store;
use crate::Error;
use age::secrecy::{ExposeSecret, SecretString};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Directory of the recipient sets.
pub const RECIPIENTS_DIR: &str = "keys/recipients";
/// Directory of the wrapped data keys.
pub const DATA_DIR: &str = "keys/data";
/// The passphrase-protected archive identity (passphrase mode).
pub const PASSPHRASE_KEY: &str = "keys/passphrase.age";

/// `keys/recipients/<n>.json`: the recipients new data keys are wrapped for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecipientSet {
    /// Always 1.
    pub waly_keys: u32,
    /// `<n>`.
    pub number: u32,
    /// age X25519 recipients (`age1...`).
    pub recipients: Vec<String>,
    /// Whether one of them is the archive identity kept under a passphrase
    /// (`keys/passphrase.age`).
    #[serde(default)]
    pub passphrase: bool,
    /// What made it: `init`, `add-recipient`, `remove-recipient`, `rotate`.
    pub reason: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// The key of recipient set `n`.
pub fn recipients_key(n: u32) -> String {
    format!("{RECIPIENTS_DIR}/{n:06}.json")
}

/// The key of wrapping `n` of data key `id`.
pub fn data_key_object(id: &str, n: u32) -> String {
    format!("{DATA_DIR}/{id}/{n:06}.age")
}

/// The object that marks data key `id` a schema key (`keys list` tells
/// them apart without a key): `{"purpose": "schema versions", "recipients": n}`.
pub fn schema_key_marker(id: &str) -> String {
    format!("{DATA_DIR}/{id}/schema-key.json")
}

/// The id of the data key whose recipient is `r`.
pub fn key_id(r: &age::x25519::Recipient) -> String {
    let hex = crate::segment::sha256_hex(r.to_string().as_bytes());
    hex[..super::frame::KEY_ID_LEN].to_string()
}

/// Parses one recipient, saying which and why when it is not one.
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, Error> {
    age::x25519::Recipient::from_str(s.trim()).map_err(|why| {
        Error::Encryption(format!(
            "{:?} is not an age X25519 recipient ({why}); it looks like age1... (see `waly keygen`)",
            s.trim()
        ))
    })
}

/// The newest recipient set, if any: `(number, set)`.
pub async fn newest_recipients(store: &Store) -> Result<Option<RecipientSet>, Error> {
    let mut listed = store.list(RECIPIENTS_DIR).await?;
    listed.retain(|(k, _)| parse_numbered(k, RECIPIENTS_DIR, ".json").is_some());
    listed.sort();
    let Some((key, _)) = listed.last() else { return Ok(None) };
    let set: RecipientSet = crate::archive::state::parse_json(key, &store.get(key).await?)?;
    Ok(Some(set))
}

/// `<dir>/<n><ext>` → n.
fn parse_numbered(key: &str, dir: &str, ext: &str) -> Option<u32> {
    let rest = key.strip_prefix(dir)?.strip_prefix('/')?.strip_suffix(ext)?;
    (rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_digit()))
        .then(|| rest.parse().ok())
        .flatten()
}

/// The wrappings of data key `id`, newest first.
pub async fn wrappings(store: &Store, id: &str) -> Result<Vec<String>, Error> {
    let dir = format!("{DATA_DIR}/{id}");
    let mut keys: Vec<String> = store
        .list(&dir)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| parse_numbered(k, &dir, ".age").is_some())
        .collect();
    keys.sort();
    keys.reverse();
    Ok(keys)
}

/// Every data key id the archive holds.
pub async fn data_key_ids(store: &Store) -> Result<Vec<String>, Error> {
    let mut ids: Vec<String> = store
        .list(DATA_DIR)
        .await?
        .into_iter()
        .filter_map(|(k, _)| {
            let rest = k.strip_prefix(DATA_DIR)?.strip_prefix('/')?;
            let (id, _) = rest.split_once('/')?;
            Some(id.to_string())
        })
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Encrypts `plain` to every recipient of `set` (age, binary).
pub fn encrypt_to(set: &[age::x25519::Recipient], plain: &[u8]) -> Result<Vec<u8>, Error> {
    use std::io::Write;
    let enc = age::Encryptor::with_recipients(set.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| Error::Encryption(format!("cannot encrypt: {e}")))?;
    let mut out = Vec::with_capacity(plain.len() + 256);
    let mut w = enc.wrap_output(&mut out)?;
    w.write_all(plain)?;
    w.finish()?;
    Ok(out)
}

/// Parses the recipients of a set, refusing an empty or malformed one.
pub fn recipients_of(key: &str, set: &RecipientSet) -> Result<Vec<age::x25519::Recipient>, Error> {
    if set.recipients.is_empty() {
        return Err(Error::Encryption(format!(
            "{key} lists no recipients: nobody could read what would be written; add one with `waly keys add-recipient`"
        )));
    }
    set.recipients
        .iter()
        .map(|r| parse_recipient(r).map_err(|e| Error::Encryption(format!("{key}: {e}"))))
        .collect()
}

/// A new data key wrapped for `set`, stored as `keys/data/<id>/000000.age`.
pub async fn new_data_key(
    store: &Store,
    set: &[age::x25519::Recipient],
) -> Result<(String, age::x25519::Identity), Error> {
    let identity = age::x25519::Identity::generate();
    let id = key_id(&identity.to_public());
    let wrapped = encrypt_to(set, secret_line(&identity).expose_secret().as_bytes())?;
    store.put_once(&data_key_object(&id, 0), wrapped.into()).await?;
    Ok((id, identity))
}

/// Wraps data key `id` (its secret line `secret`) for `set` once more, as
/// its next wrapping (`keys/data/<id>/<n>.age`, `n` one past the newest).
/// Another process wrapping the same key at once takes a number first: the
/// wrapping then goes to the next.
pub async fn wrap_again(store: &Store, id: &str, secret: &str, set: &[age::x25519::Recipient]) -> Result<(), Error> {
    let wrapped = bytes::Bytes::from(encrypt_to(set, secret.as_bytes())?);
    let mut tries = 0;
    loop {
        let n = wrappings(store, id)
            .await?
            .first()
            .and_then(|k| parse_numbered(k, &format!("{DATA_DIR}/{id}"), ".age"))
            .map_or(0, |n| n + 1);
        match store.put_once(&data_key_object(id, n), wrapped.clone()).await {
            Err(Error::Conflict { .. }) if tries < 8 => tries += 1,
            done => return done,
        }
    }
}

/// An identity's secret as the one line of an identity file.
pub fn secret_line(identity: &age::x25519::Identity) -> SecretString {
    SecretString::from(format!("{}\n", identity.to_string().expose_secret()))
}

/// The X25519 identities in an identity file's text (`AGE-SECRET-KEY-1...`
/// lines; `#` comments and blank lines skipped). `what` names the file in
/// errors; the text itself never appears in one.
pub fn parse_identities(what: &str, text: &str) -> Result<Vec<age::x25519::Identity>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match age::x25519::Identity::from_str(line) {
            Ok(id) => out.push(id),
            Err(_) => {
                return Err(Error::Encryption(format!(
                    "{what}, line {}: not an age X25519 identity (AGE-SECRET-KEY-1...); plugin and SSH identities are not supported",
                    i + 1
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Encryption(format!(
            "{what} holds no age identity (AGE-SECRET-KEY-1...)"
        )));
    }
    Ok(out)
}

/// Decrypts the age file `bytes` (object `key`) with `identities`: `None`
/// when none of them is one it was encrypted to.
pub fn decrypt_with(key: &str, identities: &[age::x25519::Identity], bytes: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    use std::io::Read;
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt {
        key: key.to_string(),
        why: format!("it does not decrypt: {e}"),
    };
    let d = age::Decryptor::new_buffered(bytes).map_err(|e| corrupt(&e))?;
    let mut r = match d.decrypt(identities.iter().map(|i| i as &dyn age::Identity)) {
        Ok(r) => r,
        Err(age::DecryptError::NoMatchingKeys) => return Ok(None),
        Err(e) => return Err(corrupt(&e)),
    };
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| corrupt(&e))?;
    Ok(Some(out))
}

/// Decrypts the passphrase-protected archive identity.
pub fn open_passphrase_key(bytes: &[u8], passphrase: &SecretString) -> Result<age::x25519::Identity, Error> {
    use std::io::Read;
    let d = age::Decryptor::new_buffered(bytes).map_err(|e| Error::Corrupt {
        key: PASSPHRASE_KEY.into(),
        why: format!("it does not decrypt: {e}"),
    })?;
    let mut id = age::scrypt::Identity::new(passphrase.clone());
    id.set_max_work_factor(30);
    let mut r = match d.decrypt(std::iter::once(&id as &dyn age::Identity)) {
        Ok(r) => r,
        Err(age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys) => {
            return Err(Error::Encryption(
                "the passphrase does not match: WALY_PASSPHRASE does not open keys/passphrase.age".into(),
            ))
        }
        Err(e) => {
            return Err(Error::Corrupt {
                key: PASSPHRASE_KEY.into(),
                why: format!("it does not decrypt: {e}"),
            })
        }
    };
    let mut text = String::new();
    r.read_to_string(&mut text).map_err(|e| Error::Corrupt {
        key: PASSPHRASE_KEY.into(),
        why: format!("it does not decrypt: {e}"),
    })?;
    let mut ids = parse_identities(PASSPHRASE_KEY, &text)?;
    Ok(ids.remove(0))
}

/// Encrypts an archive identity under a passphrase (age scrypt).
pub fn seal_passphrase_key(identity: &age::x25519::Identity, passphrase: &SecretString) -> Result<Vec<u8>, Error> {
    use std::io::Write;
    let enc = age::Encryptor::with_user_passphrase(passphrase.clone());
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out)?;
    w.write_all(secret_line(identity).expose_secret().as_bytes())?;
    w.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_files_parse_and_their_secrets_stay_out_of_errors() {
        let id = age::x25519::Identity::generate();
        let text = format!(
            "# created: now\n# public key: {}\n{}",
            id.to_public(),
            secret_line(&id).expose_secret()
        );
        let ids = parse_identities("f", &text).expect("parses");
        assert_eq!(ids[0].to_public().to_string(), id.to_public().to_string());
        let bad = "AGE-SECRET-KEY-1NOTREALLYASECRETBUTSHOULDNOTLEAK\n";
        let Err(e) = parse_identities("f", bad) else {
            panic!("not an identity")
        };
        let e = e.to_string();
        assert!(e.contains("line 1") && !e.contains("NOTREALLY"), "{e}");
        assert!(parse_identities("f", "# nothing\n").is_err());
    }

    #[test]
    fn a_wrapped_key_opens_for_its_recipients_only() {
        let a = age::x25519::Identity::generate();
        let b = age::x25519::Identity::generate();
        let wrapped = encrypt_to(&[a.to_public()], b"data key").expect("enc");
        assert_eq!(
            decrypt_with("k", std::slice::from_ref(&a), &wrapped)
                .expect("ok")
                .as_deref(),
            Some(&b"data key"[..])
        );
        assert_eq!(decrypt_with("k", std::slice::from_ref(&b), &wrapped).expect("ok"), None);
        let mut flipped = wrapped.clone();
        let n = flipped.len();
        flipped[n - 3] ^= 1;
        assert!(decrypt_with("k", &[a], &flipped).is_err());
        assert!(parse_recipient("age1nope").is_err());
    }
}
