//! Schema versions sealed whole (format 4, [`SEALED_SHAPES_FORMAT`]): in a
//! new encrypted archive a schema version's object is its JSON (with its
//! DDL text and literals sealed inside under the data key, as in format 3)
//! sealed as one frame under a **schema key**, then the SHA-256 of that
//! frame and [`DIGEST_MAGIC`], so `waly verify` names a changed byte
//! without a key.
//!
//! A schema key is a data key like the others (wrapped for the recipient
//! set in the archive, so a reader's identity opens it and `waly keys
//! add-recipient` wraps it again), made per recipient set. The writer,
//! which holds no identity, must still read the shapes an earlier session
//! wrote to resume a generation, so it keeps its own copy of each schema
//! key in the source database, in [`TABLE`]: whoever can read that table
//! can read the database's catalog anyway. The data keys (rows, literals,
//! DDL text) are never kept there.
//!
//! [`SEALED_SHAPES_FORMAT`]: crate::archive::state::SEALED_SHAPES_FORMAT

use super::{keys, sealer_of, Sealer};
use crate::archive::Store;
use crate::schema::SchemaRecord;
use crate::Error;
use age::secrecy::{ExposeSecret, SecretString};
use bytes::Bytes;
use std::sync::Arc;

/// The source database's table of the writer's schema keys.
pub const TABLE: &str = "public.waly_schema_keys";

/// The comment on [`TABLE`] (sql/schema_keys.sql): waly never captures a
/// table with it (a publication `FOR ALL TABLES` includes it).
pub const TABLE_COMMENT: &str = "waly: schema keys of encrypted archives, kept for `waly run`; not captured";

/// Creates [`TABLE`] (its owner only; the comment).
const CREATE: &str = include_str!("../../sql/schema_keys.sql");

/// The last 8 bytes of a sealed schema version, after the SHA-256 of the
/// sealed frame before it.
pub const DIGEST_MAGIC: &[u8; 8] = b"WALYSHA1";
const TRAILER: usize = 32 + DIGEST_MAGIC.len();

/// `body` followed by its SHA-256 and [`DIGEST_MAGIC`].
fn with_digest(mut body: Vec<u8>) -> Vec<u8> {
    let sha = <sha2::Sha256 as sha2::Digest>::digest(&body);
    body.extend_from_slice(&sha);
    body.extend_from_slice(DIGEST_MAGIC);
    body
}

/// The body of bytes that end with a digest trailer, and whether the
/// digest matches; `None` when they do not end with one.
pub fn digest_body(bytes: &[u8]) -> Option<(&[u8], bool)> {
    let n = bytes.len().checked_sub(TRAILER)?;
    if &bytes[bytes.len() - DIGEST_MAGIC.len()..] != DIGEST_MAGIC {
        return None;
    }
    let (body, sha) = (&bytes[..n], &bytes[n..n + 32]);
    Some((body, <sha2::Sha256 as sha2::Digest>::digest(body)[..] == *sha))
}

/// Why an object is not a sealed schema version.
#[derive(Debug, PartialEq, Eq)]
pub enum NotSealed {
    /// It is a plaintext one.
    Plaintext(String),
    /// It is damaged: changed or cut short.
    Damaged(String),
}

impl std::fmt::Display for NotSealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotSealed::Plaintext(why) | NotSealed::Damaged(why) => f.write_str(why),
        }
    }
}

/// What a sealed schema version's bytes are, read without a key: its
/// sealed frame and the id of the schema key it names, or why it is not one.
pub fn sealed_schema<'a>(key: &str, bytes: &'a [u8]) -> Result<(&'a [u8], String), NotSealed> {
    let damaged = |why: &str| NotSealed::Damaged(why.to_string());
    let Some((body, whole)) = digest_body(bytes) else {
        return Err(match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(_) => NotSealed::Plaintext(
                "a schema version in plaintext, in an archive whose schema versions are sealed".into(),
            ),
            Err(_) => damaged("not a sealed schema version (no digest trailer: cut short?)"),
        });
    };
    if !whole {
        return Err(damaged("its SHA-256 does not match its bytes (changed, or cut short)"));
    }
    match super::frame::next(key, body) {
        Ok((n, Some(id))) if n == body.len() => Ok((body, id)),
        Ok(_) => Err(damaged("its body is not one sealed frame")),
        Err(e) => Err(NotSealed::Damaged(e.to_string())),
    }
}

impl Store {
    /// Whether this archive's schema versions are sealed whole (an
    /// encrypted archive of format 4).
    pub async fn seals_shapes(&self) -> Result<bool, Error> {
        Ok(self.is_encrypted().await? && self.crypt.shapes_sealed.get() == Some(&true))
    }

    /// The bytes schema version `rec` is stored as: its JSON (DDL text and
    /// literals sealed in an encrypted archive), sealed whole under the
    /// writer's schema key in format 4.
    pub fn schema_bytes(&self, rec: &SchemaRecord) -> Result<Bytes, Error> {
        let json = crate::archive::state::to_json(&self.schema_to_store(rec)?);
        if self.crypt.shapes_sealed.get() != Some(&true) {
            return Ok(json);
        }
        let sealer = self
            .crypt
            .schema_sealer
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| Error::Encryption("the writer has no schema key (keep_schema_keys did not run)".into()))?;
        Ok(with_digest(sealer.seal(&json)?).into())
    }

    /// Schema version object `key` as read from the archive, opened: its
    /// shape (format 4) and what it seals inside (with a reader's key).
    /// `None` when its shape is sealed under a key this store cannot open
    /// and `may_skip` (a reader without a key that needs no shapes).
    pub async fn read_schema(&self, key: &str, bytes: Bytes, may_skip: bool) -> Result<Option<SchemaRecord>, Error> {
        let json = if self.seals_shapes().await? {
            let (frame, id) = sealed_schema(key, &bytes).map_err(|why| Error::Corrupt {
                key: key.to_string(),
                why: why.to_string(),
            })?;
            let known = self.crypt.data.lock().map(|d| d.contains_key(&id)).unwrap_or(false);
            if !known && !self.crypt.has_source() {
                if may_skip {
                    return Ok(None);
                }
                return Err(Error::Encryption(match self.crypt.writer_keys.get() {
                    Some(()) => format!(
                        "schema version {key} is sealed under schema key {id}, which the source database's \
                         {TABLE} does not hold for this archive: `waly run` cannot read the shapes it resumes \
                         from. Restore that table's rows from a backup of the database; or, holding an identity, \
                         start a new archive"
                    ),
                    None => super::what_to_pass(self),
                }));
            }
            Bytes::from(self.crypt.unseal(self, key, &id, frame).await?)
        } else {
            bytes
        };
        let mut rec: SchemaRecord = crate::archive::state::parse_json(key, &json)?;
        self.open_schema(&mut rec).await?;
        Ok(Some(rec))
    }

    /// A new schema key for the newest recipient set, wrapped in the
    /// archive and sealing this store's schema versions from now on; its
    /// secret (for [`keep_schema_keys`] to keep).
    async fn new_schema_key(&self) -> Result<(String, u32, SecretString), Error> {
        let set = newest_set(self).await?;
        let (sealer, secret) = self.new_sealer(&set).await?;
        let id = sealer.key_id().to_string();
        let marker = serde_json::json!({"purpose": "schema versions", "recipients": set.number});
        self.put_once(&keys::schema_key_marker(&id), crate::archive::state::to_json(&marker))
            .await?;
        self.use_schema_sealer(sealer);
        Ok((id, set.number, secret))
    }

    fn use_schema_sealer(&self, sealer: Sealer) {
        if let Ok(mut s) = self.crypt.schema_sealer.lock() {
            *s = Some(sealer);
        }
    }

    /// The recipient set the schema key in use was made for.
    fn schema_key_set(&self) -> Option<u32> {
        self.crypt
            .schema_sealer
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.set))
    }
}

async fn newest_set(store: &Store) -> Result<keys::RecipientSet, Error> {
    keys::newest_recipients(store).await?.ok_or_else(|| {
        Error::Encryption(format!(
            "the archive at {} is marked encrypted but has no recipients ({}/): refusing to write",
            store.url(),
            keys::RECIPIENTS_DIR
        ))
    })
}

/// Which archive a row of [`TABLE`] belongs to: its slot and creation time.
async fn archive_tag(store: &Store) -> Result<String, Error> {
    let id = crate::archive::state::read_identity(store)
        .await?
        .ok_or_else(|| Error::Encryption(format!("{} has no waly.json", store.url())))?;
    Ok(format!(
        "{} {}",
        id.slot,
        id.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    ))
}

/// The writer's schema keys (format 4): every schema key of this archive
/// kept in the source database's [`TABLE`] (created when missing) is
/// known to `store` from now on, and the one of the newest recipient set
/// seals its schema versions; when there is none yet (a new archive, a
/// rotation), one is made, wrapped in the archive, then kept in the table.
pub async fn keep_schema_keys(sql: &tokio_postgres::Client, store: &Store) -> Result<(), Error> {
    if !store.seals_shapes().await? {
        return Ok(());
    }
    let failed = |what: &str, e: tokio_postgres::Error| crate::source::tls::sql_failed(what, e);
    let exists: bool = sql
        .query_one(&format!("SELECT to_regclass('{TABLE}') IS NOT NULL"), &[])
        .await
        .map_err(|e| failed("looking for the schema key table", e))?
        .get(0);
    if !exists {
        let create = format!("BEGIN;\n{CREATE}\nCOMMIT;");
        if let Err(e) = sql.batch_execute(&create).await {
            let _ = sql.batch_execute("ROLLBACK").await;
            return Err(Error::Prerequisite(format!(
                "an encrypted archive's writer keeps its schema keys in the source database, in {TABLE}, which \
                 does not exist and which this role cannot create ({}). Create it with sql/setup.sql (or \
                 sql/schema_keys.sql) as a superuser, or run `waly run` once as a role that may create it",
                failed("", e)
            )));
        }
    }
    let tag = archive_tag(store).await?;
    let rows = sql
        .query(
            &format!("SELECT key_id, recipients, secret FROM {TABLE} WHERE archive = $1 ORDER BY created_at, key_id"),
            &[&tag],
        )
        .await
        .map_err(|e| failed(&format!("reading {TABLE}"), e))?;
    let set = newest_set(store).await?;
    let mut current = None;
    for r in &rows {
        let (id, recipients, secret): (String, i32, String) = (r.get(0), r.get(1), r.get(2));
        let secret = SecretString::from(secret);
        let what = format!("{TABLE}, schema key {id}");
        let identity = keys::parse_identities(&what, secret.expose_secret())?.remove(0);
        if keys::key_id(&identity.to_public()) != id {
            return Err(Error::Encryption(format!(
                "{what}: its secret is not that key's (the row was changed)"
            )));
        }
        if recipients as u32 == set.number {
            current = Some(sealer_of(id.clone(), set.number, &identity));
        }
        if let Ok(mut d) = store.crypt.data.lock() {
            d.insert(id, Arc::new(identity));
        }
    }
    let _ = store.crypt.writer_keys.set(());
    if let Some(sealer) = current {
        store.use_schema_sealer(sealer);
        return Ok(());
    }
    if store.schema_key_set() == Some(set.number) {
        return Ok(());
    }
    // Wrapped in the archive first: a row in the table always names a key
    // readers can unwrap.
    let (id, number, secret) = store.new_schema_key().await?;
    sql.execute(
        &format!("INSERT INTO {TABLE} (archive, key_id, recipients, secret) VALUES ($1, $2, $3, $4)"),
        &[&tag, &id, &(number as i32), &secret.expose_secret()],
    )
    .await
    .map_err(|e| failed(&format!("keeping schema key {id} in {TABLE}"), e))?;
    tracing::info!(
        key_id = id,
        recipients = number,
        "a new schema key, kept in the source database"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_table_is_made_with_the_comment_that_keeps_it_out_of_capture() {
        assert!(CREATE.contains(&format!("CREATE TABLE IF NOT EXISTS {TABLE} (")));
        assert!(CREATE.contains(&format!("COMMENT ON TABLE {TABLE} IS '{TABLE_COMMENT}';")));
        assert!(CREATE.contains(&format!("REVOKE ALL ON {TABLE} FROM PUBLIC;")));
    }

    #[test]
    fn a_sealed_schema_version_is_checked_by_its_digest() {
        let frame = super::super::frame::wrap("0123456789abcdef", b"age-bytes");
        let good = with_digest(frame.clone());
        assert_eq!(
            sealed_schema("k", &good),
            Ok((&frame[..], "0123456789abcdef".to_string()))
        );
        let mut bad = good.clone();
        bad[30] ^= 1;
        let damaged = |b: &[u8]| match sealed_schema("k", b) {
            Err(NotSealed::Damaged(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(damaged(&bad).contains("SHA-256"));
        assert!(damaged(&good[..good.len() - 1]).contains("cut short"));
        let plain_body = with_digest(zstd::bulk::compress(b"{}", 1).expect("zstd"));
        assert!(damaged(&plain_body).contains("not one sealed frame"));
        assert!(matches!(
            sealed_schema("k", br#"{"table":"public.t"}"#),
            Err(NotSealed::Plaintext(_))
        ));
    }
}
