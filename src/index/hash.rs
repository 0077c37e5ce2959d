//! The values index entries are sorted by: hashes of a row's table and
//! primary key, of a table's name, of its truncates.

use crate::schema::keys::KeyColumns;

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

/// [`key_hash`] of a row: its table and the values of its primary-key
/// columns `pk` (a column the row lacks counts as NULL).
pub fn row_key_hash(table: &str, pk: &KeyColumns, row: &crate::event::Row) -> u64 {
    key_hash(table, &pk.encode(row))
}

/// [`key_hash`] under which a table's truncates are indexed: the key text
/// `truncate` is no JSON array, so no row's key collides with it.
pub fn truncate_hash(table: &str) -> u64 {
    key_hash(table, b"truncate")
}

/// [`key_hash`] under which the frames holding a table's changes are
/// indexed (in their own section; the key text `table` is no JSON array).
pub fn table_hash(table: &str) -> u64 {
    key_hash(table, b"table")
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
}
