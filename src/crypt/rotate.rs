//! `waly keys`: the recipient sets and data keys of an encrypted archive,
//! and changing who may read it.
//!
//! Every change writes a new recipient set (write-once, newest wins); a
//! running `waly run` notices it within a flush or two and seals what it
//! writes next under a new data key wrapped for the new set. Adding a
//! recipient also wraps every existing data key for it (that needs an
//! identity that opens them); nothing is re-encrypted. Removing one
//! protects what is written afterwards only: the wrappings it could open
//! stay in the archive (and it may have copied what it could read).

use super::keys::{self, RecipientSet};
use crate::archive::{state, Store};
use crate::Error;
use serde::Serialize;

/// What `waly keys list` shows.
#[derive(Debug, Serialize)]
pub struct Listing {
    /// The recipient set in force (the newest).
    pub recipients: Option<RecipientSet>,
    /// Every recipient set, oldest first: `(number, reason, recipients)`.
    pub sets: Vec<RecipientSet>,
    /// Every data key: its id and how many wrappings it has.
    pub data_keys: Vec<DataKeyInfo>,
}

/// One data key.
#[derive(Debug, Serialize)]
pub struct DataKeyInfo {
    /// Its id (as sealed frames name it).
    pub id: String,
    /// Its wrappings (`keys/data/<id>/<n>.age`).
    pub wrappings: usize,
    /// Whether it is a schema key (it seals schema versions only; the
    /// writer keeps a copy in the source database).
    pub schema: bool,
}

async fn sets(store: &Store) -> Result<Vec<RecipientSet>, Error> {
    let mut out = Vec::new();
    for (k, _) in store.list(keys::RECIPIENTS_DIR).await? {
        if k.ends_with(".json") {
            out.push(state::parse_json::<RecipientSet>(&k, &store.get(&k).await?)?);
        }
    }
    out.sort_by_key(|s| s.number);
    Ok(out)
}

async fn require_encrypted(store: &Store) -> Result<(), Error> {
    if store.is_encrypted().await? {
        Ok(())
    } else {
        Err(Error::Encryption(format!(
            "the archive at {} is not encrypted (waly.json); `waly init --encrypt` makes a new encrypted archive",
            store.url()
        )))
    }
}

/// The archive's recipient sets and data keys (no identity needed).
pub async fn list(store: &Store) -> Result<Listing, Error> {
    require_encrypted(store).await?;
    let sets = sets(store).await?;
    let mut data_keys = Vec::new();
    for id in keys::data_key_ids(store).await? {
        let wrappings = keys::wrappings(store, &id).await?.len();
        let schema = store.get_opt(&keys::schema_key_marker(&id)).await?.is_some();
        data_keys.push(DataKeyInfo { id, wrappings, schema });
    }
    Ok(Listing {
        recipients: sets.last().cloned(),
        sets,
        data_keys,
    })
}

/// Writes the recipient set after the newest with `recipients`.
async fn next_set(store: &Store, recipients: Vec<String>, reason: &str) -> Result<RecipientSet, Error> {
    let newest = keys::newest_recipients(store).await?;
    let set = RecipientSet {
        waly_keys: 1,
        number: newest.as_ref().map_or(0, |s| s.number + 1),
        passphrase: newest.as_ref().is_some_and(|s| s.passphrase),
        recipients,
        reason: reason.to_string(),
        created_at: chrono::Utc::now(),
    };
    keys::recipients_of(&keys::recipients_key(set.number), &set)?;
    store
        .put_once(&keys::recipients_key(set.number), state::to_json(&set))
        .await?;
    Ok(set)
}

async fn current(store: &Store) -> Result<RecipientSet, Error> {
    require_encrypted(store).await?;
    keys::newest_recipients(store).await?.ok_or_else(|| {
        Error::Encryption(format!(
            "the archive at {} has no recipient set ({}/)",
            store.url(),
            keys::RECIPIENTS_DIR
        ))
    })
}

/// Adds `recipient`: every data key is wrapped for the new set (with the
/// reader's identity, which must open them all), then the set is written.
pub async fn add_recipient(store: &Store, recipient: &str) -> Result<RecipientSet, Error> {
    let r = keys::parse_recipient(recipient)?.to_string();
    let cur = current(store).await?;
    if cur.recipients.contains(&r) {
        return Err(Error::Encryption(format!(
            "{r} is already a recipient (set {})",
            cur.number
        )));
    }
    let mut recipients = cur.recipients.clone();
    recipients.push(r);
    let parsed = recipients
        .iter()
        .map(|s| keys::parse_recipient(s))
        .collect::<Result<Vec<_>, _>>()?;
    for id in keys::data_key_ids(store).await? {
        let secret = store.crypt().data_key_secret(store, &id).await?;
        let wrapped = keys::encrypt_to(&parsed, age::secrecy::ExposeSecret::expose_secret(&secret).as_bytes())?;
        let n = keys::wrappings(store, &id)
            .await?
            .first()
            .and_then(|k| k.rsplit('/').next()?.strip_suffix(".age")?.parse::<u32>().ok())
            .map_or(0, |n| n + 1);
        store.put_once(&keys::data_key_object(&id, n), wrapped.into()).await?;
    }
    next_set(store, recipients, "add-recipient").await
}

/// Removes `recipient` from the set in force (never the last one).
pub async fn remove_recipient(store: &Store, recipient: &str) -> Result<RecipientSet, Error> {
    let r = recipient.trim().to_string();
    let cur = current(store).await?;
    if !cur.recipients.contains(&r) {
        return Err(Error::Encryption(format!(
            "{r} is not a recipient (set {})",
            cur.number
        )));
    }
    let recipients: Vec<String> = cur.recipients.into_iter().filter(|x| *x != r).collect();
    if recipients.is_empty() {
        return Err(Error::Encryption(
            "refusing to remove the last recipient: nobody could read what is written next".into(),
        ));
    }
    next_set(store, recipients, "remove-recipient").await
}

/// A new set with the same recipients: writers move to a new data key.
pub async fn rotate(store: &Store) -> Result<RecipientSet, Error> {
    let cur = current(store).await?;
    next_set(store, cur.recipients, "rotate").await
}
