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
    let wrap = |id: String| {
        let parsed = &parsed;
        async move {
            let secret = store.crypt().data_key_secret(store, &id).await?;
            keys::wrap_again(store, &id, age::secrecy::ExposeSecret::expose_secret(&secret), parsed).await
        }
    };
    let before = keys::data_key_ids(store).await?;
    for id in &before {
        wrap(id.clone()).await?;
    }
    let set = next_set(store, recipients, "add-recipient").await?;
    // A writer that read the set in force before this one may have made a
    // data key for it since the listing: wrapped here too. (One that puts
    // its key after this listing reads the new set after its put, and
    // wraps the key for it itself: `Store::new_sealer`.)
    for id in keys::data_key_ids(store).await? {
        if before.binary_search(&id).is_err() {
            wrap(id).await?;
        }
    }
    Ok(set)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::KeySource;
    use age::secrecy::ExposeSecret;
    use std::sync::Arc;

    /// Whether every data key of the archive has a wrapping `who` opens.
    async fn every_key_opens_for(store: &Store, who: &age::x25519::Identity) -> Vec<String> {
        let mut closed = Vec::new();
        for id in keys::data_key_ids(store).await.expect("ids") {
            let mut opens = false;
            for w in keys::wrappings(store, &id).await.expect("wrappings") {
                let bytes = store.get(&w).await.expect("wrapping");
                opens |= keys::decrypt_with(&w, std::slice::from_ref(who), &bytes)
                    .expect("decrypt")
                    .is_some();
            }
            if !opens {
                closed.push(id);
            }
        }
        closed
    }

    /// The guarantee: a recipient added beside a running writer reads
    /// everything written from then on. A writer that read the recipient
    /// set in force just before the new one was written makes its next
    /// data key for the old set: that key is wrapped for the new recipient
    /// too, whether its key is put before `add-recipient` lists the keys
    /// again (it wraps it) or after (the writer, reading the set again,
    /// does).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_data_key_made_while_a_recipient_is_added_opens_for_that_recipient() {
        let inner: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (a, b) = (age::x25519::Identity::generate(), age::x25519::Identity::generate());
        let first = Store::from_object_store(inner.clone(), "archive");
        let id = crate::archive::state::Identity::new("1", "db", "slot", "pub");
        let spec = crate::crypt::EncryptSpec::Recipients(vec![a.to_public()]);
        crate::crypt::create(&first, &id, &spec).await.expect("create");
        let dir = std::env::temp_dir().join(format!("waly-rotate-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("a.key");
        std::fs::write(&file, keys::secret_line(&a).expose_secret()).expect("identity file");

        // A writer read set 0, then `add-recipient` ran to its end, then
        // the writer put its key.
        let writer = Store::from_object_store(inner.clone(), "archive");
        writer.prepare_writing().await.expect("prepare").expect("encrypted");
        let set0 = keys::newest_recipients(&writer).await.expect("set").expect("set 0");
        let adder = Store::from_object_store(inner.clone(), "archive");
        adder.crypt().set_source(Some(KeySource::File(file.clone())));
        add_recipient(&adder, &b.to_public().to_string()).await.expect("add b");
        writer.new_sealer(&set0).await.expect("a key for set 0");
        assert_eq!(every_key_opens_for(&adder, &b).await, Vec::<String>::new());

        // Writers making keys all along while another recipient is added:
        // whatever the interleaving, every key opens for it.
        let c = age::x25519::Identity::generate();
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let w = Store::from_object_store(inner.clone(), "archive");
                tokio::spawn(async move {
                    w.prepare_writing().await.expect("prepare");
                    for _ in 0..40 {
                        let set = keys::newest_recipients(&w).await.expect("set").expect("a set");
                        tokio::task::yield_now().await;
                        w.new_sealer(&set).await.expect("a key");
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        add_recipient(&adder, &c.to_public().to_string()).await.expect("add c");
        for w in writers {
            w.await.expect("writer");
        }
        assert_eq!(every_key_opens_for(&adder, &c).await, Vec::<String>::new());
        // And the first recipient still opens every key.
        assert_eq!(every_key_opens_for(&adder, &a).await, Vec::<String>::new());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
