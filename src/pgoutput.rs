//! Pure decoding of the `pgoutput` logical replication protocol: bytes in,
//! [`Message`] out, no I/O.
//!
//! The layout follows PostgreSQL's "Logical Replication Message Formats"
//! (protocol versions 1 and 2 without `streaming`; waly never asks for
//! streamed in-progress transactions, so their messages are reported as
//! [`DecodeErrorKind::UnsupportedTag`]). Tuple values are zero-copy slices of
//! the input. Every failure names the message tag and the byte offset where
//! decoding stopped, and no input makes the decoder panic.

use bytes::Bytes;
use std::fmt;

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp epoch.
pub type PgTimestamp = i64;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `B`: a transaction starts.
    Begin(Begin),
    /// `C`: a transaction commits.
    Commit(Commit),
    /// `O`: the changes that follow came from another origin.
    Origin {
        /// The commit LSN on the origin server.
        lsn: u64,
        /// The origin's name.
        name: String,
    },
    /// `R`: the shape of a table, sent before its first change and after DDL.
    Relation(Relation),
    /// `Y`: a non-built-in type used by a relation.
    Type {
        /// The type's OID.
        oid: u32,
        /// Its schema.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// `I`: a row was inserted.
    Insert {
        /// The relation's OID.
        relation: u32,
        /// The new row.
        new: Tuple,
    },
    /// `U`: a row was updated.
    Update {
        /// The relation's OID.
        relation: u32,
        /// The old key (`K`) or old row (`O`), when the replica identity sends it.
        old: Option<OldTuple>,
        /// The new row.
        new: Tuple,
    },
    /// `D`: a row was deleted.
    Delete {
        /// The relation's OID.
        relation: u32,
        /// The old key (`K`) or old row (`O`).
        old: OldTuple,
    },
    /// `T`: one or more tables were truncated.
    Truncate {
        /// Bit 0: CASCADE; bit 1: RESTART IDENTITY.
        options: u8,
        /// The truncated relations' OIDs.
        relations: Vec<u32>,
    },
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    LogicalMessage(LogicalMessage),
}

/// `B`: the start of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: u64,
    /// The commit timestamp.
    pub commit_time: PgTimestamp,
    /// The transaction id.
    pub xid: u32,
}

/// `C`: the end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Unused flags (always 0 today).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: u64,
    /// The LSN just past the commit record: what a consumer confirms.
    pub end_lsn: u64,
    /// The commit timestamp.
    pub commit_time: PgTimestamp,
}

/// `R`: a relation's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's OID.
    pub oid: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Its columns, in order.
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 0 set: part of the replica identity key.
    pub flags: u8,
    /// The column's name.
    pub name: String,
    /// The column type's OID.
    pub type_oid: u32,
    /// The type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Whether the column belongs to the replica identity.
    pub fn is_key(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// A row's column values, in relation column order.
pub type Tuple = Vec<TupleData>;

/// One column value inside a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleData {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value that was not sent.
    UnchangedToast,
    /// `t`: the value in PostgreSQL's text output form.
    Text(Bytes),
    /// `b`: the value in binary form (only sent when `binary` was requested).
    Binary(Bytes),
}

/// The old side of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    /// `K` (only the replica identity columns are set) or `O` (the whole row).
    pub kind: OldKind,
    /// The values.
    pub tuple: Tuple,
}

/// Which old tuple the replica identity sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: the key columns only (the others are null).
    Key,
    /// `O`: the entire old row (REPLICA IDENTITY FULL).
    Full,
}

/// `M`: a message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Whether it was emitted transactionally.
    pub transactional: bool,
    /// The LSN of the message.
    pub lsn: u64,
    /// Its prefix.
    pub prefix: String,
    /// Its content, as sent.
    pub content: Bytes,
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message {tag}: {kind} at byte offset {offset}")]
pub struct DecodeError {
    /// The message tag, shown as a character.
    pub tag: Tag,
    /// The byte offset within the message where decoding stopped.
    pub offset: usize,
    /// What went wrong.
    pub kind: DecodeErrorKind,
}

/// A message tag, printed as `'B'` or as a hex byte when not printable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tag(pub Option<u8>);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("(empty)"),
            Some(b) if b.is_ascii_graphic() => write!(f, "'{}'", b as char),
            Some(b) => write!(f, "0x{b:02x}"),
        }
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The kinds of [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The message had no bytes at all.
    #[error("empty message")]
    Empty,
    /// The tag is not a pgoutput message this decoder handles.
    #[error("unsupported message type")]
    UnsupportedTag,
    /// The message ended before a field did.
    #[error("message truncated, needed {needed} more bytes")]
    Truncated {
        /// How many more bytes the field needed.
        needed: usize,
    },
    /// A string had no terminating NUL.
    #[error("unterminated string")]
    UnterminatedString,
    /// A string was not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A tuple column kind byte was not `n`, `u`, `t` or `b`.
    #[error("unknown tuple column kind 0x{0:02x}")]
    InvalidColumnKind(u8),
    /// A sub-message marker (`K`, `O`, `N`) was not where one belongs.
    #[error("unexpected tuple marker 0x{0:02x}")]
    InvalidTupleMarker(u8),
    /// A count or length was negative.
    #[error("negative count or length {0}")]
    Negative(i64),
    /// Bytes were left over after the message.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
}

/// Decodes one pgoutput message (the payload of one XLogData record).
pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError {
            tag: Tag(None),
            offset: 0,
            kind: DecodeErrorKind::Empty,
        });
    };
    let mut r = Reader {
        buf,
        pos: 1,
        tag: Tag(Some(tag)),
    };
    let msg = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.u64()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_time: r.i64()?,
        }),
        b'O' => Message::Origin {
            lsn: r.u64()?,
            name: r.string()?,
        },
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.count16()?;
            let mut columns = Vec::with_capacity(n.min(1664));
            for _ in 0..n {
                columns.push(RelationColumn {
                    flags: r.u8()?,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let relation = r.u32()?;
            r.expect_marker(b'N')?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let old = match r.peek_u8()? {
                b'K' | b'O' => Some(r.old_tuple()?),
                _ => None,
            };
            r.expect_marker(b'N')?;
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => Message::Delete {
            relation: r.u32()?,
            old: r.old_tuple()?,
        },
        b'T' => {
            let n = r.count32()?;
            let options = r.u8()?;
            let mut relations = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate { options, relations }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.u64()?;
            let prefix = r.string()?;
            let len = r.count32()?;
            let content = r.take(len)?;
            Message::LogicalMessage(LogicalMessage {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content,
            })
        }
        _ => return Err(r.fail(DecodeErrorKind::UnsupportedTag)),
    };
    let left = buf.len() - r.pos;
    if left != 0 {
        return Err(r.fail(DecodeErrorKind::TrailingBytes(left)));
    }
    Ok(msg)
}

/// A cursor over one message; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    tag: Tag,
}

impl Reader<'_> {
    fn fail(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            tag: self.tag,
            offset: self.pos,
            kind,
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.pos + N;
        match self.buf.get(self.pos..end) {
            Some(s) => {
                let mut out = [0u8; N];
                out.copy_from_slice(s);
                self.pos = end;
                Ok(out)
            }
            None => Err(self.fail(DecodeErrorKind::Truncated {
                needed: end - self.buf.len(),
            })),
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn peek_u8(&self) -> Result<u8, DecodeError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.fail(DecodeErrorKind::Truncated { needed: 1 }))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn count16(&mut self) -> Result<usize, DecodeError> {
        let start = self.pos;
        let n = i16::from_be_bytes(self.array()?);
        usize::try_from(n).map_err(|_| DecodeError {
            offset: start,
            ..self.fail(DecodeErrorKind::Negative(n.into()))
        })
    }

    fn count32(&mut self) -> Result<usize, DecodeError> {
        let start = self.pos;
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| DecodeError {
            offset: start,
            ..self.fail(DecodeErrorKind::Negative(n.into()))
        })
    }

    fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let end = self.pos.saturating_add(len);
        if end > self.buf.len() {
            return Err(self.fail(DecodeErrorKind::Truncated {
                needed: end - self.buf.len(),
            }));
        }
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.fail(DecodeErrorKind::UnterminatedString));
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.fail(DecodeErrorKind::InvalidUtf8))?
            .to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    fn expect_marker(&mut self, want: u8) -> Result<(), DecodeError> {
        let got = self.peek_u8()?;
        if got != want {
            return Err(self.fail(DecodeErrorKind::InvalidTupleMarker(got)));
        }
        self.pos += 1;
        Ok(())
    }

    fn old_tuple(&mut self) -> Result<OldTuple, DecodeError> {
        let kind = match self.peek_u8()? {
            b'K' => OldKind::Key,
            b'O' => OldKind::Full,
            other => return Err(self.fail(DecodeErrorKind::InvalidTupleMarker(other))),
        };
        self.pos += 1;
        Ok(OldTuple {
            kind,
            tuple: self.tuple()?,
        })
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.count16()?;
        // Each column takes at least one byte, so a count larger than what is
        // left is truncated input; don't let it size an allocation.
        let mut out = Vec::with_capacity(n.min(self.buf.len() - self.pos));
        for _ in 0..n {
            let value = match self.peek_u8()? {
                b'n' => {
                    self.pos += 1;
                    TupleData::Null
                }
                b'u' => {
                    self.pos += 1;
                    TupleData::UnchangedToast
                }
                b't' => {
                    self.pos += 1;
                    let len = self.count32()?;
                    TupleData::Text(self.take(len)?)
                }
                b'b' => {
                    self.pos += 1;
                    let len = self.count32()?;
                    TupleData::Binary(self.take(len)?)
                }
                other => return Err(self.fail(DecodeErrorKind::InvalidColumnKind(other))),
            };
            out.push(value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real messages captured from PostgreSQL (see tests/it/golden.rs).
    fn fixtures() -> Vec<Bytes> {
        let raw: &[u8] = include_bytes!("../testdata/pgoutput/session.bin");
        let mut out = Vec::new();
        let mut rest = raw;
        while rest.len() >= 12 {
            let len = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
            out.push(Bytes::copy_from_slice(&rest[12..12 + len]));
            rest = &rest[12 + len..];
        }
        out
    }

    /// A small deterministic PRNG (xorshift64*), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn check(buf: &Bytes) {
        if let Err(e) = decode(buf) {
            assert!(e.offset <= buf.len(), "offset {} past end {}: {e}", e.offset, buf.len());
        }
    }

    #[test]
    fn every_strict_prefix_of_a_real_message_is_an_error_not_a_panic() {
        let fx = fixtures();
        assert!(fx.len() > 30);
        for msg in &fx {
            assert!(decode(msg).is_ok());
            for cut in 0..msg.len() {
                let prefix = msg.slice(..cut);
                match decode(&prefix) {
                    Ok(m) => panic!("prefix of {cut} bytes decoded as {m:?}"),
                    Err(e) => assert!(e.offset <= cut),
                }
            }
        }
    }

    #[test]
    fn arbitrary_and_mutated_bytes_never_panic() {
        let fx = fixtures();
        let mut rng = Rng(0x005E_ED0F_3A1E);
        let tags = b"BCORYIUDTMSEcAbPKrpx\0";
        for _ in 0..50_000 {
            let len = rng.below(64);
            let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = v.first_mut() {
                *first = tags[rng.below(tags.len())];
            }
            check(&Bytes::from(v));
        }
        for _ in 0..50_000 {
            let mut v = fx[rng.below(fx.len())].to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(v.len());
                match rng.below(3) {
                    0 => v[at] = rng.next() as u8,
                    1 => v[at] ^= 1 << rng.below(8),
                    _ => {
                        // Lengths and counts are where decoders go wrong.
                        v[at] = [0x00, 0x7f, 0x80, 0xff][rng.below(4)];
                    }
                }
            }
            if rng.below(4) == 0 {
                v.truncate(rng.below(v.len() + 1));
            }
            check(&Bytes::from(v));
        }
    }

    #[test]
    fn errors_name_the_tag_and_offset() {
        let e = decode(&Bytes::from_static(b"B\0\0\0")).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("pgoutput message 'B': message truncated, needed 5 more bytes at byte offset 1".into())
        );
        let e = decode(&Bytes::from_static(b"Z")).err();
        assert_eq!(e.map(|e| e.kind), Some(DecodeErrorKind::UnsupportedTag));
        let e = decode(&Bytes::new()).err();
        assert_eq!(e.map(|e| e.kind), Some(DecodeErrorKind::Empty));
        // An insert whose tuple claims a negative column count.
        let e = decode(&Bytes::from_static(b"I\0\0\0\x01N\xff\xff")).err();
        assert_eq!(e.map(|e| (e.kind, e.offset)), Some((DecodeErrorKind::Negative(-1), 6)));
        // A column kind that does not exist.
        let e = decode(&Bytes::from_static(b"I\0\0\0\x01N\0\x01z")).err();
        assert_eq!(
            e.map(|e| (e.kind, e.offset)),
            Some((DecodeErrorKind::InvalidColumnKind(b'z'), 8))
        );
    }

    #[test]
    fn decodes_each_message_type_by_hand() {
        let mut b = vec![b'M', 1];
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(b"waly\0");
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"abc");
        let m = decode(&Bytes::from(b));
        assert_eq!(
            m,
            Ok(Message::LogicalMessage(LogicalMessage {
                transactional: true,
                lsn: 7,
                prefix: "waly".into(),
                content: Bytes::from_static(b"abc"),
            }))
        );
        let mut t = vec![b'T'];
        t.extend_from_slice(&2i32.to_be_bytes());
        t.push(1);
        t.extend_from_slice(&10u32.to_be_bytes());
        t.extend_from_slice(&11u32.to_be_bytes());
        assert_eq!(
            decode(&Bytes::from(t)),
            Ok(Message::Truncate {
                options: 1,
                relations: vec![10, 11]
            })
        );
        let u = Bytes::from_static(b"U\0\0\0\x05K\0\x02t\0\0\0\x011n" /* old key */);
        let mut u = u.to_vec();
        u.extend_from_slice(b"N\0\x02t\0\0\0\x012u");
        assert_eq!(
            decode(&Bytes::from(u)),
            Ok(Message::Update {
                relation: 5,
                old: Some(OldTuple {
                    kind: OldKind::Key,
                    tuple: vec![TupleData::Text(Bytes::from_static(b"1")), TupleData::Null]
                }),
                new: vec![TupleData::Text(Bytes::from_static(b"2")), TupleData::UnchangedToast],
            })
        );
    }
}
