//! The values index entries are sorted by: hashes of a row's table and
//! primary key, of a table's name, of its truncates.
//!
//! A plaintext archive hashes with FNV-1a ([`key_hash`]): stable across
//! versions and machines. An encrypted archive must not let its index name
//! row keys (a guessed key would be confirmed by hashing it), so there each
//! index object's entries are an HMAC-SHA256 under a key derived from the
//! data key named in its footer ([`Hasher::keyed`]): only a holder of that
//! data key can compute or check one.

use crate::schema::keys::KeyColumns;
use hmac::Mac;

/// The key text a table's truncates are indexed under: no JSON array, so
/// no row's key collides with it.
pub const TRUNCATE_KEY: &[u8] = b"truncate";
/// The key text of the table section (which frames hold a table's changes).
const TABLE_KEY: &[u8] = b"table";

/// The top 32 bits of FNV-1a (64 bit) of the table name, a NUL, and the key
/// as [`KeyColumns::encode`] writes it (values in canonical form, so a key
/// is found whatever text form of its type it is given in). Stable across versions and
/// machines; a collision only costs an extra frame read.
pub fn key_hash(table: &str, key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in table.as_bytes().iter().chain(&[0u8]).chain(key) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h >> 32
}

/// How one index object's values are computed. Its `Debug` never shows a key.
#[derive(Clone, Default)]
pub enum Hasher {
    /// [`key_hash`]: plaintext archives.
    #[default]
    Plain,
    /// HMAC-SHA256 under a key (here keyed once; each value starts from a
    /// copy); the value is the top 32 bits of the tag.
    Keyed(Box<hmac::Hmac<sha2::Sha256>>),
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hasher::Plain => "Hasher::Plain",
            Hasher::Keyed(_) => "Hasher::Keyed(<redacted>)",
        })
    }
}

impl Hasher {
    /// The keyed hasher of a data key: the HMAC key is HKDF-SHA256 of the
    /// data key's secret (its identity line, as age writes it), with salt
    /// `waly-index` and info `row key hash v1`.
    pub fn keyed(data_key_secret: &[u8]) -> Hasher {
        let mut k = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(b"waly-index"), data_key_secret)
            .expand(b"row key hash v1", &mut k)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Hasher::Keyed(Box::new(
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&k).expect("HMAC takes any key length"),
        ))
    }

    /// The value of `key` (as [`KeyColumns::encode`] writes it) in `table`.
    pub fn key(&self, table: &str, key: &[u8]) -> u64 {
        match self {
            Hasher::Plain => key_hash(table, key),
            Hasher::Keyed(keyed) => {
                let mut m = (**keyed).clone();
                m.update(table.as_bytes());
                m.update(&[0]);
                m.update(key);
                let tag = m.finalize().into_bytes();
                u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]]) as u64
            }
        }
    }

    /// The value of a row: its table and the values of its primary-key
    /// columns `pk` (a column the row lacks counts as NULL).
    pub fn row(&self, table: &str, pk: &KeyColumns, row: &crate::event::Row) -> u64 {
        self.key(table, &pk.encode(row))
    }

    /// The value a table's truncates are indexed under.
    pub fn truncate(&self, table: &str) -> u64 {
        self.key(table, TRUNCATE_KEY)
    }

    /// The value under which the frames holding a table's changes are
    /// indexed (in their own section).
    pub fn table(&self, table: &str) -> u64 {
        self.key(table, TABLE_KEY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(key_hash("public.t", br#"["1"]"#), key_hash("public.t", br#"["1"]"#));
        assert_ne!(key_hash("public.t", br#"["1"]"#), key_hash("public.u", br#"["1"]"#));
        assert_eq!(key_hash("", b""), 0xaf63bd4c);
    }

    #[test]
    fn a_keyed_hash_depends_on_the_data_key_and_never_shows_it() {
        let a = Hasher::keyed(b"AGE-SECRET-KEY-1AAAA");
        let b = Hasher::keyed(b"AGE-SECRET-KEY-1BBBB");
        let k = br#"["42"]"#;
        assert_eq!(
            a.key("public.t", k),
            Hasher::keyed(b"AGE-SECRET-KEY-1AAAA").key("public.t", k)
        );
        assert_ne!(a.key("public.t", k), b.key("public.t", k));
        assert_ne!(a.key("public.t", k), Hasher::Plain.key("public.t", k));
        assert_ne!(a.key("public.t", k), a.key("public.u", k));
        assert!(a.key("public.t", k) < 1 << 32);
        assert_eq!(format!("{a:?}"), "Hasher::Keyed(<redacted>)");
    }
}
