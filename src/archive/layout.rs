//! Object names: fixed-width numbers and hex LSNs, so names sort in order,
//! and table names encoded so any identifier is a safe path segment.

use crate::Lsn;

/// The identity object at the archive's root.
pub const IDENTITY: &str = "waly.json";

/// A generation's id: an 8-digit sequence number.
pub fn generation_id(n: u32) -> String {
    format!("{n:08}")
}

/// The directory of generation `gen`.
pub fn generation_dir(gen: &str) -> String {
    format!("generations/{gen}")
}

/// The description object of generation `gen`.
pub fn generation_meta(gen: &str) -> String {
    format!("generations/{gen}/generation.json")
}

/// The segments directory of generation `gen`.
pub fn segments_dir(gen: &str) -> String {
    format!("generations/{gen}/segments")
}

/// The key of segment number `n`, holding commit LSNs `first..=last`,
/// written under fencing token `fence` (0: no lease, not in the name).
pub fn segment_key(gen: &str, n: u64, first: Lsn, last: Lsn, fence: u64) -> String {
    let token = if fence == 0 {
        String::new()
    } else {
        format!("-{fence:010}")
    };
    format!(
        "generations/{gen}/segments/{n:010}-{:016X}-{:016X}{token}.jsonl.zst",
        first.as_u64(),
        last.as_u64()
    )
}

/// Parses a segment key's file name into `(n, first, last)`.
pub fn parse_segment_key(key: &str) -> Option<(u64, Lsn, Lsn)> {
    parse_segment_name(key).map(|(n, a, b, _)| (n, a, b))
}

/// The fencing token in a segment key's name (0 when it has none).
pub fn segment_fence(key: &str) -> u64 {
    parse_segment_name(key).map_or(0, |s| s.3)
}

fn parse_segment_name(key: &str) -> Option<(u64, Lsn, Lsn, u64)> {
    let name = key.rsplit('/').next()?.strip_suffix(".jsonl.zst")?;
    let mut parts = name.split('-');
    let n = parts.next()?;
    let first = parts.next()?;
    let last = parts.next()?;
    let fence = match parts.next() {
        None => 0,
        Some(t) if t.len() == 10 => t.parse().ok().filter(|t| *t > 0)?,
        Some(_) => return None,
    };
    if parts.next().is_some() || n.len() != 10 || first.len() != 16 || last.len() != 16 {
        return None;
    }
    Some((
        n.parse().ok()?,
        Lsn(u64::from_str_radix(first, 16).ok()?),
        Lsn(u64::from_str_radix(last, 16).ok()?),
        fence,
    ))
}

/// Encodes one identifier so it is a safe, unambiguous path segment: bytes
/// outside `[A-Za-z0-9_-]` become `~XX`.
fn encode_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    out
}

fn decode_part(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'~' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A table (`schema`, `name`) as a path segment: `schema.name`, each part encoded.
pub fn table_segment(schema: &str, name: &str) -> String {
    format!("{}.{}", encode_part(schema), encode_part(name))
}

/// The inverse of [`table_segment`].
pub fn parse_table_segment(s: &str) -> Option<(String, String)> {
    let (schema, name) = s.split_once('.')?;
    Some((decode_part(schema)?, decode_part(name)?))
}

/// The object holding version `version` of a table's schema.
pub fn schema_key(gen: &str, table_seg: &str, version: u32) -> String {
    format!("generations/{gen}/schemas/{table_seg}/{version:06}.json")
}

/// The schemas directory of generation `gen`.
pub fn schemas_dir(gen: &str) -> String {
    format!("generations/{gen}/schemas")
}

/// The directory of the snapshot consistent with `lsn`.
pub fn snapshot_dir(gen: &str, lsn: Lsn) -> String {
    format!("generations/{gen}/snapshots/{:016X}", lsn.as_u64())
}

/// The manifest of the snapshot at `lsn` (written last).
pub fn snapshot_manifest(gen: &str, lsn: Lsn) -> String {
    format!("{}/manifest.json", snapshot_dir(gen, lsn))
}

/// The marker `waly prune` writes (once) in the directory of a snapshot
/// that an interrupted writer left without its manifest, before it deletes
/// its parts: readers ignore a manifest beside it (docs/FORMAT.md,
/// "Pruning").
pub fn snapshot_abandoned(gen: &str, lsn: Lsn) -> String {
    format!("{}/abandoned.json", snapshot_dir(gen, lsn))
}

/// Part `part` of table `table_seg` in the snapshot at `lsn`.
pub fn snapshot_part(gen: &str, lsn: Lsn, table_seg: &str, part: u32) -> String {
    format!("{}/{table_seg}/{part:06}.jsonl.zst", snapshot_dir(gen, lsn))
}

/// The directory of writer leases.
pub const LEASES_DIR: &str = "leases";

/// The lease with fencing token `token`, granting its holder segments from
/// number `first` of generation `gen` on. Everything a reader needs is in
/// the name, so a listing is enough to apply the fence.
pub fn lease_key(token: u64, gen: &str, first: u64) -> String {
    format!("{LEASES_DIR}/{token:010}-{gen}-{first:010}.json")
}

/// Parses a lease key into `(token, gen, first)`.
pub fn parse_lease_key(key: &str) -> Option<(u64, String, u64)> {
    let name = key.strip_prefix(LEASES_DIR)?.strip_prefix('/')?.strip_suffix(".json")?;
    let mut parts = name.split('-');
    let (token, gen, first) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || token.len() != 10 || gen.len() != 8 || first.len() != 10 {
        return None;
    }
    Some((token.parse().ok()?, gen.to_string(), first.parse().ok()?))
}

/// The directory of source moves (`waly init --source-moved`).
pub const SOURCES_DIR: &str = "sources";

/// The record of source move number `n` (from 1).
pub fn source_move_key(n: u64) -> String {
    format!("{SOURCES_DIR}/{n:010}.json")
}

/// Parses a source move key into its number.
pub fn parse_source_move_key(key: &str) -> Option<u64> {
    let name = key
        .strip_prefix(SOURCES_DIR)?
        .strip_prefix('/')?
        .strip_suffix(".json")?;
    if name.len() != 10 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok().filter(|&n| n > 0)
}

/// The directory where `waly run` leaves the errors that ended its sessions.
pub const ERRORS_DIR: &str = "errors";

/// The object recording an error at `time`.
pub fn error_key(time: chrono::DateTime<chrono::Utc>) -> String {
    format!("{ERRORS_DIR}/{}.json", time.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// How an object holds data, for encryption: which of its frames an
/// encrypted archive seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// A segment: its header frame plain, every record frame sealed.
    Segment,
    /// Frames, every one sealed (snapshot parts).
    Frames,
    /// One object read whole, sealed as one frame (error records, catalogs).
    Blob,
    /// An index object: every block and its footer sealed, the trailer plain.
    Index,
    /// A schema version: JSON whose shape stays readable (`waly run`
    /// resumes a generation from it and must never need an identity), its
    /// DDL statement text sealed (`ddl.sealed`).
    Schema,
}

/// Whether object `key` holds data that an encrypted archive seals, and
/// how. Metadata (waly.json, generations, leases, manifests, prune marks,
/// the catalog, the key objects) is `None`: it stays readable
/// (docs/FORMAT.md, "Encryption").
pub fn data_kind(key: &str) -> Option<DataKind> {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["generations", _, "segments", _] => Some(DataKind::Segment),
        ["generations", _, "snapshots", _, _, part] if part.ends_with(".jsonl.zst") => Some(DataKind::Frames),
        [ERRORS_DIR, _] | ["index", _, "catalog.json"] => Some(DataKind::Blob),
        ["index", _, "segments" | "snapshots", _] => Some(DataKind::Index),
        ["generations", _, "schemas", _, v] if v.ends_with(".json") => Some(DataKind::Schema),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_move_keys_round_trip_and_refuse_what_is_not_one() {
        assert_eq!(source_move_key(7), "sources/0000000007.json");
        assert_eq!(parse_source_move_key(&source_move_key(7)), Some(7));
        for junk in [
            "sources/0000000000.json",
            "sources/7.json",
            "sources/00000000x7.json",
            "leases/0000000007.json",
        ] {
            assert_eq!(parse_source_move_key(junk), None, "{junk}");
        }
    }

    #[test]
    fn segment_keys_sort_and_parse() {
        let a = segment_key("00000001", 9, Lsn(0x16B6C50), Lsn(0x16B9F00), 0);
        let b = segment_key("00000001", 10, Lsn(0x16B9F00), Lsn(0x1_0000_0000), 0);
        let c = segment_key("00000001", 10, Lsn(0x16B9F00), Lsn(0x1_0000_0000), 3);
        assert!(c.ends_with("0000000010-00000000016B9F00-0000000100000000-0000000003.jsonl.zst"));
        assert_eq!(parse_segment_key(&c), Some((10, Lsn(0x16B9F00), Lsn(0x1_0000_0000))));
        assert_eq!((segment_fence(&b), segment_fence(&c)), (0, 3));
        assert_eq!(
            a,
            "generations/00000001/segments/0000000009-00000000016B6C50-00000000016B9F00.jsonl.zst"
        );
        assert!(a < b);
        assert_eq!(parse_segment_key(&b), Some((10, Lsn(0x16B9F00), Lsn(0x1_0000_0000))));
        assert_eq!(parse_segment_key("generations/x/segments/junk.jsonl.zst"), None);
    }

    #[test]
    fn any_table_name_is_a_safe_segment() {
        for (schema, name) in [("public", "users"), ("My Schema", "a.b/c~d"), ("s", "日本")] {
            let seg = table_segment(schema, name);
            assert!(!seg.contains('/') && seg.matches('.').count() == 1, "{seg}");
            assert_eq!(parse_table_segment(&seg), Some((schema.to_string(), name.to_string())));
        }
    }
}
