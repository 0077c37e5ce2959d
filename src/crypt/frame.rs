//! A sealed frame: one age file inside a zstd skippable frame, so an
//! encrypted object stays a sequence of frames that can be located, range
//! read and decrypted one at a time.
//!
//! ```text
//! 0..4    0x184D2A5E, little-endian   (a zstd skippable-frame magic)
//! 4..8    n, u32 little-endian        (the bytes that follow)
//! 8..24   the data key's id, 16 lower-case hex digits
//! 24..8+n an age file (binary) encrypted to the data key's X25519 recipient
//! ```
//!
//! What the age file holds is what the object would hold unencrypted at
//! that place: a zstd frame (segments, snapshot parts) or the whole
//! object's bytes (schema versions, error records).
//!
//! Index blocks, many of them small and read a few at a time, are sealed
//! lighter: an AEAD frame (magic `0x184D2A5D`) holds, after the key id, a
//! 24-byte nonce and the block encrypted with XChaCha20-Poly1305 under a
//! key derived from the data key (HKDF-SHA256), the key id as associated
//! data: 64 bytes a block instead of an age header's 224.

use crate::Error;

/// The skippable-frame magic that marks a sealed frame.
pub const MAGIC: u32 = 0x184D_2A5E;
/// The skippable-frame magic that marks an AEAD-sealed frame (index blocks).
pub const AEAD_MAGIC: u32 = 0x184D_2A5D;
/// An AEAD frame's nonce length (XChaCha20-Poly1305).
pub const NONCE_LEN: usize = 24;
/// Bytes before the age file: magic, length, key id.
pub const HEAD: usize = 24;
/// Length of a key id.
pub const KEY_ID_LEN: usize = 16;

/// Where the next frame of `bytes` (starting at 0) ends, and whether it is
/// sealed: `Ok((len, Some(key_id)))` for a sealed frame, `Ok((len, None))`
/// for a zstd frame. `key` names the object in errors.
pub fn next(key: &str, bytes: &[u8]) -> Result<(usize, Option<String>), Error> {
    let corrupt = |why: String| Error::Corrupt {
        key: key.to_string(),
        why,
    };
    if bytes.len() >= 8 && matches!(magic(bytes), Some(MAGIC | AEAD_MAGIC)) {
        let n = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        if n < KEY_ID_LEN || bytes.len() < 8 + n {
            return Err(corrupt(format!(
                "a sealed frame is cut short ({} bytes of {})",
                bytes.len(),
                8 + n
            )));
        }
        let id = &bytes[8..HEAD];
        if !id.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
            return Err(corrupt("a sealed frame names no valid key id".into()));
        }
        return Ok((8 + n, Some(String::from_utf8_lossy(id).into_owned())));
    }
    let n = zstd::zstd_safe::find_frame_compressed_size(bytes)
        .map_err(|e| corrupt(format!("a frame does not decode: {e}")))?;
    Ok((n, None))
}

/// The first four bytes of `bytes` as a frame magic.
pub fn magic(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// Wraps the age file `age` (encrypted under key `key_id`) as a sealed frame.
pub fn wrap(key_id: &str, age: &[u8]) -> Vec<u8> {
    wrap_as(MAGIC, key_id, age)
}

/// Wraps `sealed` (under key `key_id`) as a frame marked `magic`.
pub fn wrap_as(magic: u32, key_id: &str, sealed: &[u8]) -> Vec<u8> {
    debug_assert_eq!(key_id.len(), KEY_ID_LEN);
    let mut out = Vec::with_capacity(HEAD + sealed.len());
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&((KEY_ID_LEN + sealed.len()) as u32).to_le_bytes());
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(sealed);
    out
}

/// The frames of `bytes` (a whole object or a run of its frames), as
/// `(start, end, key id if sealed)`.
pub fn walk(key: &str, bytes: &[u8]) -> Result<Vec<(usize, usize, Option<String>)>, Error> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (len, id) = next(key, &bytes[at..])?;
        out.push((at, at + len, id));
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_and_plain_frames_are_told_apart_and_cut_ones_named() {
        let z = zstd::bulk::compress(b"hello", 1).expect("zstd");
        let s = wrap("0123456789abcdef", b"age-bytes");
        let mut both = z.clone();
        both.extend_from_slice(&s);
        both.extend_from_slice(&z);
        let frames = walk("k", &both).expect("walk");
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], (0, z.len(), None));
        assert_eq!(frames[1].2.as_deref(), Some("0123456789abcdef"));
        assert_eq!(&both[frames[1].0 + HEAD..frames[1].1], b"age-bytes");
        assert_eq!(frames[2].2, None);
        // A plain zstd decoder skips sealed frames: they are skippable frames.
        assert_eq!(zstd::decode_all(&both[..]).expect("zstd"), b"hellohello");
        let cut = &both[..z.len() + s.len() - 1];
        let e = walk("k", cut).expect_err("cut");
        assert!(e.to_string().contains("cut short"), "{e}");
    }
}
