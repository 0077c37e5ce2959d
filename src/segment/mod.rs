//! Segments: the archived event stream, in immutable objects.
//!
//! A segment is two zstd frames (each with its content checksum): the first
//! holds one JSON line, the header; the second holds one JSON line per
//! record. Concatenated frames decompress as one stream, so a reader sees the
//! header line followed by the records. The header is written last (it is
//! the first frame only in the bytes), so it can describe what follows: the
//! LSN and commit-time range, the last complete transaction, and the SHA-256
//! of the previous segment's bytes, which chains the segments together.

use crate::event::{Change, Op};
use crate::Lsn;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::schema::{key_of, same_columns, ColumnDef, SchemaRecord, Schemas};

mod line;
mod reader;
mod writer;

pub use reader::SegmentReader;
pub use writer::{FrameSizer, SealedSegment, SegmentBuilder, FRAME_BYTES, FRAME_TARGET_COMPRESSED, MIN_FRAME_BYTES};

/// The format version written in every header of a plaintext segment.
pub const FORMAT_VERSION: u32 = 2;

/// The format version of an encrypted segment (record frames sealed; a
/// reader that knows only version 2 refuses it).
pub const SEALED_FORMAT_VERSION: u32 = 3;

/// zstd level: level 3 compresses JSON well at hundreds of MB/s.
const LEVEL: i32 = 3;

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn rfc3339_opt<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// The end of a complete transaction: what the slot may be confirmed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitPoint {
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// The LSN just past its commit record.
    pub end_lsn: Lsn,
    /// Its commit time.
    #[serde(serialize_with = "rfc3339")]
    pub commit_time: DateTime<Utc>,
}

/// A segment's first line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Always [`FORMAT_VERSION`]; names the object as a waly segment.
    pub waly_segment: u32,
    /// The generation it belongs to.
    pub generation: String,
    /// Its position in the generation's chain: 0, 1, 2, ...
    pub number: u64,
    /// The commit LSN of its first record (of `end` for a heartbeat).
    pub first_lsn: Lsn,
    /// The commit LSN of its last record.
    pub last_lsn: Lsn,
    /// The last transaction whose commit record is in this segment.
    pub last_commit: Option<CommitPoint>,
    /// The WAL position everything before which is archived once this
    /// segment is (the last commit's end, or an idle position).
    pub durable_lsn: Option<Lsn>,
    /// Commit time of the first record.
    #[serde(serialize_with = "rfc3339_opt")]
    pub first_commit_time: Option<DateTime<Utc>>,
    /// Commit time of the last record.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_commit_time: Option<DateTime<Utc>>,
    /// The chain's commit-time high-water mark: every record of this
    /// segment and of every earlier segment of the generation committed at
    /// or before it (`Some(None)`, written `null`: none of them has a
    /// record). Absent (`None`) where its writer could not know: a segment
    /// before it was written without one. Commit times may step back, so
    /// the records' own times do not bound the earlier segments'; this does,
    /// and it never decreases along the chain, so a reader of what
    /// committed since a time finds its first segment by a binary search
    /// over headers (see [`TimeHigh`]).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time_high_field")]
    pub commit_time_high: Option<Option<DateTime<Utc>>>,
    /// How many records follow (changes, messages, schemas and commits).
    pub records: u64,
    /// How many lines follow (the records and the `begin` lines).
    pub lines: u64,
    /// `[offset, length]` of each zstd frame of the records, counted from
    /// the end of the header frame; each frame starts at a record boundary
    /// with a `begin` line (or a `schema` line) and decompresses on its own.
    #[serde(default)]
    pub frames: Vec<(u64, u64)>,
    /// SHA-256 (hex) of the previous segment's bytes; `null` for the first.
    pub prev_sha256: Option<String>,
    /// The fencing token of the writer's lease (absent: 0, no lease).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fence: u64,
    /// Encrypted segments: the id of the data key its frames are sealed under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Encrypted segments: SHA-256 (hex) of every byte after the header
    /// frame, so a changed ciphertext byte is found without the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

/// `commit_time_high`: absent, `null` or a time.
mod time_high_field {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<DateTime<Utc>>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(Some(t)) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true)),
            _ => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<DateTime<Utc>>>, D::Error> {
        // Present: `null` or a time (absent is the field's default).
        Ok(Some(Option::<DateTime<Utc>>::deserialize(d)?))
    }
}

/// What a generation's chain, up to some segment, says of its records'
/// commit times: the value a segment's header carries on in
/// [`SegmentHeader::commit_time_high`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimeHigh {
    /// No record yet: a new chain, or heartbeats only.
    #[default]
    Empty,
    /// Every record so far committed at or before this time.
    At(DateTime<Utc>),
    /// Not known: a segment before was written without the mark.
    Unknown,
}

impl TimeHigh {
    /// What the chain through the segment with `header` says.
    pub fn of(header: &SegmentHeader) -> TimeHigh {
        match header.commit_time_high {
            None => TimeHigh::Unknown,
            Some(None) => TimeHigh::Empty,
            Some(Some(t)) => TimeHigh::At(t),
        }
    }

    /// The chain's mark once a segment whose records' greatest commit time
    /// is `latest` (`None`: no record with a time) follows.
    pub fn then(self, latest: Option<DateTime<Utc>>) -> TimeHigh {
        match (self, latest) {
            (TimeHigh::Unknown, _) => TimeHigh::Unknown,
            (TimeHigh::Empty, None) => TimeHigh::Empty,
            (TimeHigh::Empty, Some(t)) => TimeHigh::At(t),
            (TimeHigh::At(a), b) => TimeHigh::At(b.map_or(a, |b| a.max(b))),
        }
    }

    /// The header field that says this.
    pub fn field(self) -> Option<Option<DateTime<Utc>>> {
        match self {
            TimeHigh::Unknown => None,
            TimeHigh::Empty => Some(None),
            TimeHigh::At(t) => Some(Some(t)),
        }
    }

    /// Whether every record so far is known to have committed before `t`.
    pub fn before(self, t: DateTime<Utc>) -> bool {
        match self {
            TimeHigh::Unknown => false,
            TimeHigh::Empty => true,
            TimeHigh::At(h) => h < t,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A change as archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// The change.
    #[serde(flatten)]
    pub change: Change,
    /// The table's schema version the values follow.
    pub schema_version: u32,
}

/// A `waly` logical message, archived with its transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// Its ordinal in the transaction (shared with the changes).
    pub seq: u64,
    /// Its WAL position.
    pub lsn: Lsn,
    /// The transaction id.
    pub xid: u32,
    /// The commit time.
    #[serde(serialize_with = "rfc3339")]
    pub commit_time: DateTime<Utc>,
    /// The prefix (always `waly`).
    pub prefix: String,
    /// The content.
    pub content: String,
}

/// The end of a transaction: it counts only once this is archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// The commit LSN.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record.
    pub end_lsn: Lsn,
    /// The transaction id.
    pub xid: u32,
    /// The commit time.
    #[serde(serialize_with = "rfc3339")]
    pub commit_time: DateTime<Utc>,
    /// How many changes and messages the transaction archived.
    pub records: u64,
}

/// A record as readers see it: whole, with its transaction's fields (on
/// disk those are written once per transaction, see [`SegmentBuilder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A row change.
    Change(ChangeRecord),
    /// A logical message.
    Message(MessageRecord),
    /// A schema version (boxed: much larger than the other records).
    Schema(Box<SchemaRecord>),
    /// A transaction's commit marker.
    Commit(CommitRecord),
}

impl Record {
    /// The commit LSN of the transaction the record belongs to.
    pub fn commit_lsn(&self) -> Lsn {
        match self {
            Record::Change(c) => c.change.commit_lsn,
            Record::Message(m) => m.commit_lsn,
            Record::Schema(s) => s.commit_lsn,
            Record::Commit(c) => c.commit_lsn,
        }
    }

    /// The identity `(commit_lsn, seq)` and commit time of a change or
    /// message (what readers deduplicate on); `None` for other records.
    pub fn identity(&self) -> Option<((Lsn, u64), DateTime<Utc>)> {
        match self {
            Record::Change(c) => Some(((c.change.commit_lsn, c.change.seq), c.change.commit_time)),
            Record::Message(m) => Some(((m.commit_lsn, m.seq), m.commit_time)),
            Record::Schema(_) | Record::Commit(_) => None,
        }
    }

    /// Whether it is a change with this op.
    pub fn is_op(&self, op: Op) -> bool {
        matches!(self, Record::Change(c) if c.change.op == op)
    }
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Row;
    use crate::Error;
    use std::sync::Arc;

    fn time() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default()
    }

    fn col(name: &str, key: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_name: "text".into(),
            type_oid: 25,
            type_modifier: -1,
            key,
            primary_key: key,
            not_null: key,
            ..ColumnDef::default()
        }
    }

    fn schemas() -> Schemas {
        let mut s = Schemas::default();
        s.insert(SchemaRecord {
            commit_lsn: Lsn(1),
            commit_time: None,
            table: "public.t".into(),
            version: 1,
            columns: vec![col("id", true), col("v", false), col("e", false)],
            ..SchemaRecord::default()
        });
        s
    }

    fn row(id: &str) -> Row {
        Row(vec![
            (Arc::from("id"), Some(id.into())),
            (Arc::from("v"), None),
            (Arc::from("e"), Some(String::new())),
        ])
    }

    fn change(commit: u64, seq: u64, lsn: u64, op: Op) -> Record {
        let (old, new) = match op {
            Op::Insert => (None, Some(row("1"))),
            Op::Update => (Some(row("0")), Some(row("1"))),
            Op::Delete => (Some(Row(vec![(Arc::from("id"), Some("1".into()))])), None),
            Op::Truncate => (None, None),
        };
        let key = match op {
            Op::Truncate => None,
            _ => Some(Row(vec![(Arc::from("id"), Some("1".into()))])),
        };
        Record::Change(ChangeRecord {
            change: Change {
                commit_lsn: Lsn(commit),
                seq,
                lsn: Lsn(lsn),
                xid: 7,
                commit_time: time(),
                table: Arc::from("public.t"),
                op,
                key,
                old,
                new,
                unchanged_toast: if op == Op::Update { vec![Arc::from("e")] } else { vec![] },
            },
            schema_version: 1,
        })
    }

    fn commit(commit: u64, records: u64) -> Record {
        Record::Commit(CommitRecord {
            commit_lsn: Lsn(commit),
            end_lsn: Lsn(commit + 8),
            xid: 7,
            commit_time: time(),
            records,
        })
    }

    fn message(commit: u64, seq: u64, lsn: u64) -> Record {
        Record::Message(MessageRecord {
            commit_lsn: Lsn(commit),
            seq,
            lsn: Lsn(lsn),
            xid: 7,
            commit_time: time(),
            prefix: "waly".into(),
            content: "{\"op\":\"x\"}".into(),
        })
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Record>, Error> {
        let mut r = SegmentReader::open("k", bytes)?;
        let mut back = Vec::new();
        while let Some(rec) = r.next_record(&schemas())? {
            back.push(rec);
        }
        Ok(back)
    }

    #[test]
    fn records_round_trip_through_a_segment() {
        let records = vec![
            change(100, 0, 50, Op::Insert),
            message(100, 1, 60),
            // seq gaps and LSNs that go down are kept exactly
            change(100, 5, 55, Op::Update),
            change(100, 6, 90, Op::Delete),
            change(100, 7, 95, Op::Truncate),
            commit(100, 5),
            Record::Schema(Box::new(SchemaRecord {
                commit_lsn: Lsn(200),
                commit_time: None,
                table: "public.t".into(),
                version: 1,
                columns: vec![col("id", true)],
                ..SchemaRecord::default()
            })),
            change(200, 0, 150, Op::Insert),
        ];
        let mut b = SegmentBuilder::new().expect("builder");
        for r in &records {
            b.push(r).expect("push");
        }
        let sealed = b
            .seal("00000001", 3, Some("ab".repeat(32)), TimeHigh::Empty, 0)
            .expect("seal");
        assert_eq!(sealed.header.first_lsn, Lsn(100));
        assert_eq!(sealed.header.last_lsn, Lsn(200));
        assert_eq!(sealed.header.records, 8);
        assert_eq!(sealed.header.lines, 10, "two begin lines");
        assert_eq!(
            sealed.header.last_commit,
            Some(CommitPoint {
                commit_lsn: Lsn(100),
                end_lsn: Lsn(108),
                commit_time: time(),
            })
        );
        assert_eq!(sealed.sha256, sha256_hex(&sealed.bytes));
        let r = SegmentReader::open("k", &sealed.bytes).expect("open");
        assert_eq!(r.header, sealed.header);
        assert_eq!(
            read_all(&sealed.bytes).expect("read"),
            records,
            "values, NULLs, empty strings, keys, seq and lsn survive"
        );
    }

    #[test]
    fn transaction_fields_are_written_once_per_transaction_and_segment() {
        let mut b = SegmentBuilder::new().expect("builder");
        for i in 0..3 {
            b.push(&change(100, i, 10 + i * 40, Op::Insert)).expect("push");
        }
        let sealed = b.seal("00000001", 0, None, TimeHigh::Empty, 0).expect("seal");
        let text = zstd::decode_all(&sealed.bytes[..]).expect("zstd");
        let text = String::from_utf8(text).expect("utf-8");
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with(r#"{"type":"begin","commit_lsn":"0/64","xid":7"#),
            "{}",
            lines[0]
        );
        assert!(
            !lines[1].contains("commit_lsn") && !lines[1].contains("\"seq\""),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains(r#""lsn_delta":-90"#), "{}", lines[1]);
        assert!(lines[2].contains(r#""lsn_delta":40"#), "{}", lines[2]);
        assert!(
            !lines[2].contains("\"key\"") && !lines[2].contains("\"old\""),
            "{}",
            lines[2]
        );
        // The rest of the transaction, in the next segment, starts with its own begin line.
        let mut b = SegmentBuilder::new().expect("builder");
        b.push(&change(100, 3, 200, Op::Insert)).expect("push");
        b.push(&commit(100, 4)).expect("push");
        let next = b
            .seal("00000001", 1, Some(sealed.sha256), TimeHigh::Empty, 0)
            .expect("seal");
        let back = read_all(&next.bytes).expect("read");
        assert_eq!(back, vec![change(100, 3, 200, Op::Insert), commit(100, 4)]);
    }

    #[test]
    fn a_record_less_segment_has_no_frames_for_any_reader() {
        let mut b = SegmentBuilder::new().expect("builder");
        b.mark_idle(Lsn(500));
        let sealed = b.seal("00000001", 3, None, TimeHigh::Empty, 0).expect("seal");
        assert_eq!(sealed.header.records, 0);
        let (header, frames) = SegmentReader::locate_frames("k", &sealed.bytes).expect("located");
        assert_eq!(header.durable_lsn, Some(Lsn(500)));
        assert!(frames.is_empty(), "{frames:?}");
        assert_eq!(read_all(&sealed.bytes).expect("reads whole"), Vec::<Record>::new());
        // A segment with records: its frames read alone give them all.
        let mut b = SegmentBuilder::new().expect("builder");
        let all = vec![change(100, 0, 90, Op::Insert), commit(100, 1)];
        for r in &all {
            b.push(r).expect("push");
        }
        let sealed = b.seal("00000001", 4, None, TimeHigh::Empty, 0).expect("seal");
        let (_, frames) = SegmentReader::locate_frames("k", &sealed.bytes).expect("located");
        let mut got = Vec::new();
        for (off, len) in frames {
            let mut r = SegmentReader::frame("k", &sealed.bytes[off as usize..(off + len) as usize]).expect("frame");
            while let Some(rec) = r.next_record(&schemas()).expect("record") {
                got.push(rec);
            }
        }
        assert_eq!(got, all);
    }

    #[test]
    fn a_large_segment_is_frames_that_each_read_alone() {
        let mut b = SegmentBuilder::new().expect("builder");
        let mut all = Vec::new();
        for i in 0..24000u64 {
            let r = change(100, i, 100 + i * 10, Op::Insert);
            b.push(&r).expect("push");
            b.note_key(crate::index::RowKey::Hash(i % 7));
            all.push(r);
        }
        all.push(commit(100, 24000));
        b.push(all.last().expect("commit")).expect("push");
        let sealed = b.seal("00000001", 0, None, TimeHigh::Empty, 0).expect("seal");
        let frames = sealed.header.frames.clone();
        assert!(frames.len() >= 3, "{} frames", frames.len());
        assert_eq!(read_all(&sealed.bytes).expect("whole"), all);
        let mut pieced = Vec::new();
        for (off, len) in &frames {
            let at = (sealed.body_offset + off) as usize;
            let mut r = SegmentReader::frame("k", &sealed.bytes[at..at + *len as usize]).expect("frame");
            while let Some(rec) = r.next_record(&schemas()).expect("record") {
                pieced.push(rec);
            }
        }
        assert_eq!(pieced, all, "frame by frame, the same records");
        let last_frame = frames.len() as u32 - 1;
        assert!(sealed.keys.hashes.iter().any(|(_, f)| *f == last_frame));
        assert!(sealed.keys.hashes.iter().all(|(h, _)| *h < 7));
    }

    /// Frames of data that compresses well end at 1 MiB; frames of data that
    /// compresses less end at about 16 KiB compressed (so a lookup reads
    /// about that much per frame), never below 64 KiB uncompressed.
    #[test]
    fn frames_hold_about_16_kib_compressed_unless_that_passes_1_mib() {
        let frames_of = |payload: &dyn Fn(u64) -> String| {
            let mut b = SegmentBuilder::new().expect("builder");
            for i in 0..60000u64 {
                let Record::Change(mut c) = change(100, i, 100 + i * 10, Op::Insert) else {
                    unreachable!()
                };
                c.change.new = Some(Row(vec![
                    (Arc::from("id"), Some(i.to_string())),
                    (Arc::from("v"), None),
                    (Arc::from("e"), Some(payload(i))),
                ]));
                b.push(&Record::Change(c)).expect("push");
            }
            b.push(&commit(100, 60000)).expect("push");
            let sealed = b.seal("00000001", 0, None, TimeHigh::Empty, 0).expect("seal");
            let at = sealed.body_offset;
            let sizes: Vec<(usize, usize)> = sealed
                .header
                .frames
                .iter()
                .map(|(off, len)| {
                    let z = &sealed.bytes[(at + off) as usize..(at + off + len) as usize];
                    (zstd::decode_all(z).expect("frame").len(), z.len())
                })
                .collect();
            sizes
        };
        let plain = frames_of(&|_| String::new());
        assert!(plain.len() >= 2, "{plain:?}");
        for (raw, _) in &plain[..plain.len() - 1] {
            assert!(*raw >= FRAME_BYTES, "{plain:?}");
        }
        // A pseudo-random hex value a row: compresses about 10 to 1.
        let mixed = frames_of(&|i| format!("{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)));
        assert!(mixed.len() >= 4, "{mixed:?}");
        for (raw, z) in &mixed[..mixed.len() - 1] {
            assert!(*raw >= MIN_FRAME_BYTES && *raw < FRAME_BYTES, "{mixed:?}");
            assert!(
                *raw == MIN_FRAME_BYTES || (FRAME_TARGET_COMPRESSED / 2..FRAME_TARGET_COMPRESSED * 2).contains(z),
                "{mixed:?}"
            );
        }
    }

    /// Insert `i` of transaction `100 + n`, its row's `e` a value that
    /// compresses poorly (so a segment of thousands makes several frames).
    fn scattered_insert(n: u64, i: u64) -> ChangeRecord {
        let Record::Change(mut c) = change(100 + n, i, 100 + i * 10, Op::Insert) else {
            unreachable!()
        };
        let v = format!("{:016x}", (n * 20000 + i).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        c.change.new = Some(Row(vec![
            (Arc::from("id"), Some(i.to_string())),
            (Arc::from("v"), None),
            (Arc::from("e"), Some(v)),
        ]));
        c
    }

    /// A segment's header, read from its first bytes, is whole and the same
    /// whatever size the listing gave: its own, none (0), or one far too
    /// small (the first read is then too short and is made again, larger).
    #[tokio::test]
    async fn a_segments_header_reads_whole_whatever_size_it_was_listed_with() {
        let store = crate::archive::Store::open("memory://").expect("store");
        let mut b = SegmentBuilder::new().expect("builder");
        for i in 0..20000u64 {
            b.push(&Record::Change(scattered_insert(0, i))).expect("push");
        }
        b.push(&commit(100, 20000)).expect("push");
        let sealed = b.seal("00000001", 0, None, TimeHigh::Empty, 0).expect("seal");
        let key = "generations/00000001/segments/0000000000";
        store.put_once(key, sealed.bytes.clone()).await.expect("put");
        let (want, want_frames) = SegmentReader::locate_frames(key, &sealed.bytes).expect("frames");
        assert!(want_frames.len() >= 4, "{} frames", want_frames.len());
        for size in [sealed.bytes.len() as u64, 0, 1, 300] {
            let (header, frames) = crate::index::segment_header(&store, key, size).await.expect("header");
            assert_eq!(frames, want_frames, "listed as {size} bytes");
            assert_eq!(
                (header.number, header.records, header.lines),
                (want.number, want.records, want.lines),
                "listed as {size} bytes"
            );
        }
    }

    /// Segments read ahead: their frames decoded by several threads, the
    /// records handed over in order; frames the index picked likewise; and a
    /// segment whose frames hold fewer lines than its header promises is
    /// named, as when it is read whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_read_ahead_by_several_threads_come_in_order_and_a_short_count_is_named() {
        use crate::archive::ahead::{Ahead, Wanted};
        let store = crate::archive::Store::open("memory://").expect("store");
        let mut all = Vec::new();
        let mut keys = Vec::new();
        for n in 0..3u64 {
            let mut b = SegmentBuilder::new().expect("builder");
            let first = all.len();
            for i in 0..20000u64 {
                let mut c = scattered_insert(n, i);
                b.push(&Record::Change(c.clone())).expect("push");
                c.change.key = Some(Row(vec![(Arc::from("id"), Some(i.to_string()))]));
                all.push(Record::Change(c));
            }
            let end = commit(100 + n, 20000);
            b.push(&end).expect("push");
            all.push(end);
            let sealed = b.seal("00000001", n, None, TimeHigh::Empty, 0).expect("seal");
            assert!(sealed.header.frames.len() >= 4, "{} frames", sealed.header.frames.len());
            assert_eq!(read_all(&sealed.bytes).expect("whole")[..], all[first..]);
            let key = format!("generations/00000001/segments/{n:010}");
            store.put_once(&key, sealed.bytes.clone()).await.expect("put");
            keys.push(key);
        }
        let read = |wanted: Vec<Wanted>| {
            let store = store.clone();
            async move {
                let mut ahead = Ahead::start(&store, wanted, schemas())?;
                let mut got = Vec::new();
                while let Some(batch) = ahead.next().await? {
                    got.extend(batch);
                }
                Ok::<_, Error>(got)
            }
        };
        let whole = |k: &String| Wanted {
            key: k.clone(),
            frames: None,
            size: 0,
            places: None,
        };
        assert_eq!(read(keys.iter().map(whole).collect()).await.expect("read"), all);
        // Frames 1 and 3 of the second segment: their records alone.
        let bytes = store.get(&keys[1]).await.expect("get");
        let (_, located) = SegmentReader::locate_frames(&keys[1], &bytes).expect("frames");
        let mut want = Vec::new();
        for f in [1, 3] {
            let (o, l) = located[f];
            let mut r = SegmentReader::frame("k", &bytes[o as usize..(o + l) as usize]).expect("frame");
            while let Some(rec) = r.next_record(&schemas()).expect("record") {
                want.push(rec);
            }
        }
        let picked = |places: Option<Vec<(u64, u64)>>| {
            vec![Wanted {
                key: keys[1].clone(),
                frames: Some(vec![1, 3]),
                size: bytes.len() as u64,
                places,
            }]
        };
        // The GET requests a read of `wanted` makes, and its records.
        let counted = |wanted: Vec<Wanted>| {
            let (read, store) = (&read, &store);
            async move {
                let before = store.read_cost().requests;
                let got = read(wanted).await.expect("read");
                (store.read_cost().requests - before, got)
            }
        };
        let (by_header, got) = counted(picked(None)).await;
        assert_eq!(got, want);
        // Placed by a frame table: the same records, without the header's
        // request; placed wrongly (no whole frame there, or past the end),
        // the header is read after all and the records are the same.
        let (by_places, got) = counted(picked(Some(located.clone()))).await;
        assert_eq!(got, want);
        assert_eq!(by_places + 1, by_header, "the header is not read");
        let shifted: Vec<(u64, u64)> = located.iter().map(|(o, l)| (o + 1, l - 1)).collect();
        let (requests, got) = counted(picked(Some(shifted))).await;
        assert_eq!(got, want);
        assert!(requests > by_header, "the shifted places are read, then the header");
        let past = vec![(bytes.len() as u64, 10); located.len()];
        let (requests, got) = counted(picked(Some(past))).await;
        assert_eq!(got, want);
        assert_eq!(requests, by_header, "places past the end are not read");
        // The third segment's header promising one line more: named.
        let bytes = store.get(&keys[2]).await.expect("get");
        let (mut header, _) = SegmentReader::locate_frames(&keys[2], &bytes).expect("frames");
        let head = zstd::zstd_safe::find_frame_compressed_size(&bytes).expect("header");
        header.lines += 1;
        let mut line = serde_json::to_vec(&header).expect("json");
        line.push(b'\n');
        let mut short = zstd::bulk::compress(&line, 3).expect("compress");
        short.extend_from_slice(&bytes[head..]);
        store
            .put_once("generations/00000001/segments/short", short.into())
            .await
            .expect("put");
        let mut wanted: Vec<Wanted> = keys[..2].iter().map(whole).collect();
        wanted.push(whole(&"generations/00000001/segments/short".to_string()));
        let e = read(wanted).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("short") && e.contains("promises"), "{e}");
    }

    #[test]
    fn a_change_whose_schema_version_is_missing_is_an_error_naming_the_object() {
        let mut b = SegmentBuilder::new().expect("builder");
        let Record::Change(mut c) = change(100, 0, 50, Op::Insert) else {
            unreachable!()
        };
        c.schema_version = 9;
        b.push(&Record::Change(c)).expect("push");
        let sealed = b.seal("00000001", 0, None, TimeHigh::Empty, 0).expect("seal");
        let err = read_all(&sealed.bytes).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no schema version 9") && err.contains('k'), "{err}");
    }

    #[test]
    fn schema_versions_are_found_again_when_a_transaction_is_streamed_again() {
        let mut s = schemas();
        let v1 = vec![col("id", true), col("v", false), col("e", false)];
        let v2 = vec![col("id", true), col("e", false)];
        // Transaction 300 changed the table twice: back to v1's shape, then v2.
        s.insert(SchemaRecord {
            commit_lsn: Lsn(300),
            commit_time: None,
            table: "public.t".into(),
            version: 2,
            columns: v2.clone(),
            ..SchemaRecord::default()
        });
        assert_eq!(s.reusable("public.t", Lsn(200), &v1).map(|r| r.version), Some(1));
        assert_eq!(s.reusable("public.t", Lsn(300), &v1).map(|r| r.version), Some(1));
        assert_eq!(s.reusable("public.t", Lsn(300), &v2).map(|r| r.version), Some(2));
        assert_eq!(s.reusable("public.t", Lsn(400), &v2).map(|r| r.version), Some(2));
        assert_eq!(s.reusable("public.t", Lsn(400), &v1), None, "a real change after v2");
        assert_eq!(
            s.reusable("public.t", Lsn(200), &v2),
            None,
            "v2 is not in force before 300"
        );
        assert_eq!(s.at("public.t", Lsn(299)).map(|r| r.version), Some(1));
        assert_eq!(s.at("public.t", Lsn(300)).map(|r| r.version), Some(2));
        assert_eq!(s.next_version("public.t"), 3);
        assert_eq!(s.next_version("public.u"), 1);
    }

    #[test]
    fn damage_is_detected_and_names_the_object() {
        let mut b = SegmentBuilder::new().expect("builder");
        for i in 0..200 {
            b.push(&change(100, i, 100 + i, Op::Insert)).expect("push");
        }
        let sealed = b.seal("00000001", 0, None, TimeHigh::Empty, 0).expect("seal");
        let mut bytes = sealed.bytes.to_vec();
        let at = bytes.len() - 20;
        bytes[at] ^= 0x40;
        let err = (|| -> Result<(), Error> {
            let mut r = SegmentReader::open("generations/x/segments/s", &bytes)?;
            while r.next_record(&schemas())?.is_some() {}
            Ok(())
        })()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("generations/x/segments/s") && err.contains("corrupt"),
            "{err}"
        );
        // Cutting the object short is caught too.
        let cut = &sealed.bytes[..sealed.bytes.len() / 2];
        assert!(read_all(cut).is_err());
    }

    /// A change of commit `commit` at `time`.
    fn change_at(commit: u64, time: DateTime<Utc>) -> Record {
        let mut r = change(commit, 0, commit, Op::Insert);
        if let Record::Change(c) = &mut r {
            c.change.commit_time = time;
        }
        r
    }

    #[test]
    fn the_commit_time_mark_bounds_every_record_so_far_and_never_falls_as_the_clock_steps_back() {
        let later = time() + chrono::TimeDelta::seconds(10);
        // A chain that starts with a heartbeat: no record yet, written null.
        let mut b = SegmentBuilder::new().expect("builder");
        b.mark_idle(Lsn(50));
        let idle = b.seal("00000001", 0, None, TimeHigh::Empty, 0).expect("seal");
        assert_eq!(TimeHigh::of(&idle.header), TimeHigh::Empty);
        let text = String::from_utf8(zstd::decode_all(&idle.bytes[..]).expect("zstd")).expect("utf-8");
        assert!(text.contains(r#""commit_time_high":null"#), "{text}");
        // Records, then a segment whose records are older (the clock stepped
        // back): the mark stays at the latest.
        let mut b = SegmentBuilder::new().expect("builder");
        b.push(&change_at(100, later)).expect("push");
        b.push(&change_at(200, time())).expect("push");
        let first = b
            .seal("00000001", 1, None, TimeHigh::of(&idle.header), 0)
            .expect("seal");
        assert_eq!(TimeHigh::of(&first.header), TimeHigh::At(later));
        assert_eq!(first.header.last_commit_time, Some(time()));
        let mut b = SegmentBuilder::new().expect("builder");
        b.push(&change_at(300, time())).expect("push");
        let second = b
            .seal("00000001", 2, None, TimeHigh::of(&first.header), 0)
            .expect("seal");
        assert_eq!(TimeHigh::of(&second.header), TimeHigh::At(later));
        assert!(TimeHigh::of(&second.header).before(later + chrono::TimeDelta::microseconds(1)));
        assert!(!TimeHigh::of(&second.header).before(later));
        // It reads back as written.
        let text = String::from_utf8(zstd::decode_all(&second.bytes[..]).expect("zstd")).expect("utf-8");
        let header: SegmentHeader = serde_json::from_str(text.lines().next().expect("header")).expect("header");
        assert_eq!(header.commit_time_high, Some(Some(later)));
        // After a segment without one (an earlier release's), it is not known.
        let mut old = header.clone();
        old.commit_time_high = None;
        let json = serde_json::to_string(&old).expect("json");
        assert!(!json.contains("commit_time_high"), "{json}");
        let old: SegmentHeader = serde_json::from_str(&json).expect("header");
        assert_eq!(TimeHigh::of(&old), TimeHigh::Unknown);
        let mut b = SegmentBuilder::new().expect("builder");
        b.push(&change_at(400, later)).expect("push");
        let after = b.seal("00000001", 3, None, TimeHigh::of(&old), 0).expect("seal");
        assert_eq!(after.header.commit_time_high, None);
        assert!(!TimeHigh::Unknown.before(later));
    }
}
