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
/// Rows whose key is one integer are indexed in buckets of `2^BUCKET_BITS`
/// consecutive keys: one entry per bucket and frame, whose low 32 bits
/// say which of the bucket's keys the frame holds.
pub const BUCKET_BITS: u32 = 5;

/// The integer a key is, when it is one column whose canonical text (as
/// [`KeyColumns::encode`] writes it: `["42"]`) is an integer's (optional
/// `-`, no leading zeros) within 64 bits; such keys are indexed by bucket.
pub fn int_key(key: &[u8]) -> Option<i64> {
    let digits = key.strip_prefix(b"[\"")?.strip_suffix(b"\"]")?;
    let text = std::str::from_utf8(digits).ok()?;
    let k: i64 = text.parse().ok()?;
    (k.to_string() == text).then_some(k)
}

/// What an index holds for a row's key: a hash (in the key section), or
/// for an integer key its bucket's value with the key's bit (in the
/// bucket section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKey {
    /// A key hash ([`Hasher::key`]).
    Hash(u64),
    /// `bucket hash << 32 | 1 << (key mod 32)` ([`Hasher::bucket`]).
    Bucket(u64),
}

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

    /// What the index holds for a row: its table and the values of its
    /// primary-key columns `pk` (a column the row lacks counts as NULL).
    pub fn row(&self, table: &str, pk: &KeyColumns, row: &crate::event::Row) -> RowKey {
        self.row_key(table, &pk.encode(row))
    }

    /// What the index holds for the key `key` (as [`KeyColumns::encode`]
    /// writes it) of `table`: its bucket entry when it is an integer (see
    /// [`int_key`]), its hash otherwise.
    pub fn row_key(&self, table: &str, key: &[u8]) -> RowKey {
        match int_key(key) {
            Some(k) => RowKey::Bucket(self.bucket(table, k) << 32 | 1 << (k & ((1 << BUCKET_BITS) - 1))),
            None => RowKey::Hash(self.key(table, key)),
        }
    }

    /// The hash of the bucket of integer key `k` in `table`: the key value
    /// of the text `bucket N`, with `N = floor(k / 2^BUCKET_BITS)` (no row's
    /// key text, a JSON array, collides with it).
    pub fn bucket(&self, table: &str, k: i64) -> u64 {
        self.key(table, format!("bucket {}", k >> BUCKET_BITS).as_bytes())
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
    fn one_integer_key_in_canonical_text_goes_to_a_bucket_and_any_other_key_is_hashed() {
        assert_eq!(int_key(br#"["42"]"#), Some(42));
        assert_eq!(int_key(br#"["-7"]"#), Some(-7));
        assert_eq!(int_key(br#"["0"]"#), Some(0));
        assert_eq!(int_key(br#"["9223372036854775807"]"#), Some(i64::MAX));
        assert_eq!(int_key(br#"["-9223372036854775808"]"#), Some(i64::MIN));
        for other in [
            &br#"["9223372036854775808"]"#[..],
            br#"["042"]"#,
            br#"["+4"]"#,
            br#"["-0"]"#,
            br#"["4.0"]"#,
            br#"["a"]"#,
            br#"["1","2"]"#,
            br#"[null]"#,
            br#"[""]"#,
            b"truncate",
        ] {
            assert_eq!(int_key(other), None, "{}", String::from_utf8_lossy(other));
        }
        let h = Hasher::Plain;
        // Keys 32 apart are in neighbouring buckets; -1 is in the bucket
        // below 0's, as its last key.
        assert_eq!(
            h.row_key("public.t", br#"["33"]"#),
            RowKey::Bucket(h.bucket("public.t", 32) << 32 | 2)
        );
        assert_eq!(h.bucket("public.t", 0), h.bucket("public.t", 31));
        assert_ne!(h.bucket("public.t", 31), h.bucket("public.t", 32));
        assert_eq!(
            h.row_key("public.t", br#"["-1"]"#),
            RowKey::Bucket(h.bucket("public.t", -32) << 32 | 1 << 31)
        );
        assert_ne!(h.bucket("public.t", -1), h.bucket("public.t", 0));
        assert_eq!(
            h.row_key("public.t", br#"["a"]"#),
            RowKey::Hash(h.key("public.t", br#"["a"]"#))
        );
        assert_ne!(h.bucket("public.t", 0), h.bucket("public.u", 0));
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
