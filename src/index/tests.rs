//! The index's tests: lookups, merges (plain, sealed, with format 3
//! objects) and the bucket section.

use super::*;

/// Segment `n`'s frames in the sealed objects' test.
fn sealed_frames(n: u64) -> Vec<(u64, u64)> {
    vec![(100 + n, 50), (150 + n, 60 + n)]
}

/// Segment `n`'s level-0 index object, sealed with `sealer`: it holds
/// key `["n"]` of `public.t` in its frame 0.
async fn put_sealed(store: &Store, gen: &str, n: u64, sealer: &crate::crypt::Sealer) {
    let mut b = Builder::for_writer(Some(sealer));
    let key = format!("[\"{n}\"]");
    let RowKey::Bucket(v) = b.hasher().row_key("public.t", key.as_bytes()) else {
        panic!("an integer key goes to its bucket")
    };
    let h = v >> 32;
    let mut keys = KeyEntries::default();
    keys.note(RowKey::Bucket(v), 0);
    b.add(
        Covered {
            number: n,
            key: String::new(),
            frames: Vec::new(),
            fence: 0,
        },
        &keys,
        &[],
        &[(b.hasher().table("public.t"), 0)],
    );
    b.segment_frames(sealed_frames(n));
    let bytes = b.encode(gen, Some(sealer)).expect("encode");
    assert_ne!(h, Hasher::Plain.bucket("public.t", n as i64));
    store
        .put_once(&segments_index_key(gen, n, n), bytes)
        .await
        .expect("put");
}

/// An encrypted archive in memory for `reader`, with generation 00000001's
/// segments 0 to 2 indexed (level 0) under the writer's data key, whose
/// sealer is returned too.
async fn sealed_archive() -> (Store, age::x25519::Identity, crate::crypt::Sealer) {
    let store = Store::open("memory://").expect("store");
    let reader = age::x25519::Identity::generate();
    let id = crate::archive::state::Identity::new("1", "db", "slot", "pub");
    let spec = crate::crypt::EncryptSpec::Recipients(vec![reader.to_public()]);
    crate::crypt::create(&store, &id, &spec).await.expect("create");
    let a = store.prepare_writing().await.expect("prepare").expect("encrypted");
    for n in 0..3 {
        put_sealed(&store, "00000001", n, &a).await;
    }
    (store, reader, a)
}

/// Encrypted: sealed objects found by their keyed hashes, merged only
/// with objects hashed under the same data key, plaintext refused.
#[tokio::test]
async fn sealed_index_objects_merge_per_data_key_and_find_their_rows() {
    use crate::crypt::keys;
    let (store, reader, a) = sealed_archive().await;
    let gen = "00000001";
    // A rotation: the next objects are hashed under another data key.
    let set = keys::RecipientSet {
        waly_keys: 1,
        number: 1,
        recipients: vec![reader.to_public().to_string()],
        passphrase: false,
        reason: "rotate".into(),
        created_at: chrono::Utc::now(),
    };
    store
        .put_once(&keys::recipients_key(1), crate::archive::state::to_json(&set))
        .await
        .expect("set");
    let b = store.prepare_writing().await.expect("prepare").expect("encrypted");
    assert_ne!(a.key_id(), b.key_id());
    put_sealed(&store, gen, 3, &b).await;
    // A sealed merge spilled to a file as it is written: its trailer's
    // SHA-256, taken as the blocks went by, passes the upload check
    // (which hashes the whole object), and its entries are found.
    let mut runs = Vec::new();
    for (key, size, _, last) in segment_indexes(&store, gen).await.expect("list") {
        if last < 3 {
            runs.push((Index::open(&store, &key, size).await.expect("open"), size));
        }
    }
    let Ok(write::Written::File(file)) = merge::merge_objects(&store, gen, &runs, Some(&a), Some(100)).await else {
        panic!("a sealed merge past its size goes to its file");
    };
    let key = "index/00000001/snapshots/spilled.idx";
    store.put_file_once(key, &file.path).await.expect("upload check");
    let size = std::fs::metadata(&file.path).expect("size").len();
    let spilled = Index::open(&store, key, size).await.expect("open");
    let found = spilled
        .lookup_key(&store, "public.t", b"[\"1\"]")
        .await
        .expect("lookup");
    assert_eq!(
        found
            .iter()
            .map(|(o, _)| spilled.footer.objects[*o as usize].number)
            .collect::<Vec<_>>(),
        [1]
    );
    assert!(merge(&store, gen, 0, 3).await.expect("merge"));
    let kept: Vec<(u64, u64)> = segment_indexes(&store, gen)
        .await
        .expect("list")
        .iter()
        .map(|(_, _, a, b)| (*a, *b))
        .collect();
    assert_eq!(kept, vec![(0, 2), (3, 3)]);
    for (key, size, first, last) in segment_indexes(&store, gen).await.expect("list") {
        let idx = Index::open(&store, &key, size).await.expect("open");
        for n in first..=last {
            let got = idx
                .lookup_key(&store, "public.t", format!("[\"{n}\"]").as_bytes())
                .await;
            let obj = got
                .expect("lookup")
                .into_iter()
                .map(|(o, _)| idx.footer.objects[o as usize].number);
            assert_eq!(obj.collect::<Vec<_>>(), vec![n]);
        }
        // The frame table, sealed like every block, merged with them.
        let table: FrameTable = (first..=last).map(|n| ((n - first) as u32, sealed_frames(n))).collect();
        assert_eq!(idx.frame_table(&store).await.expect("table"), Some(table));
        assert_eq!(
            idx.lookup_table(&store, "public.t")
                .await
                .expect("table")
                .map(|t| t.len()),
            Some((last - first + 1) as usize)
        );
    }
    // A plaintext index object is refused before it is written.
    let mut plain = Builder::default();
    plain.add(
        Covered {
            number: 9,
            key: String::new(),
            frames: Vec::new(),
            fence: 0,
        },
        &KeyEntries {
            hashes: vec![(1, 0)],
            ..Default::default()
        },
        &[],
        &[],
    );
    let bytes = plain.encode(gen, None).expect("encode");
    let e = store.put_once(&segments_index_key(gen, 9, 9), bytes).await;
    assert!(matches!(e, Err(Error::Encryption(_))), "{e:?}");
}

#[tokio::test]
async fn lookups_find_every_entry_and_only_those() {
    let store = Store::open("memory://").expect("store");
    let mut b = Builder::default();
    for obj in 0..3u64 {
        let keys = KeyEntries {
            hashes: (0..5000u64)
                .map(|i| ((i * 7919 + obj) % 3001, (i % 9) as u32))
                .collect(),
            ..Default::default()
        };
        let msgs: Vec<(u64, u32)> = (0..100u64).map(|i| (obj * 1000 + i, 1)).collect();
        // Table a in every object's frame 0, b only in object 1's frames 1 and 3.
        let h = Hasher::Plain;
        let mut tables = vec![(h.table("public.a"), 0)];
        if obj == 1 {
            tables.extend([(h.table("public.b"), 1), (h.table("public.b"), 3)]);
        }
        b.add(
            Covered {
                number: obj,
                key: format!("seg{obj}"),
                frames: vec![(0, 1)],
                fence: 0,
            },
            &keys,
            &msgs,
            &tables,
        );
    }
    let bytes = b.encode("00000001", None).expect("encode");
    store.put_once("i", bytes.clone()).await.expect("put");
    let idx = Index::open(&store, "i", bytes.len() as u64).await.expect("open");
    assert!(!idx.footer.key_fences.is_empty());
    for h in [0u64, 1, 2, 1500, 3000] {
        let mut got = idx.lookup_hash(&store, h).await.expect("lookup");
        got.sort();
        let mut want: Vec<(u32, u32)> = (0..3u32)
            .flat_map(|o| {
                (0..5000u64)
                    .filter(move |i| (i * 7919 + o as u64) % 3001 == h)
                    .map(move |i| (o, (i % 9) as u32))
            })
            .collect();
        want.sort();
        want.dedup();
        assert_eq!(got, want, "hash {h}");
    }
    assert_eq!(idx.lookup_hash(&store, 5000).await.expect("lookup"), vec![]);
    assert_eq!(idx.lookup_message(&store, 1005).await.expect("lookup"), vec![(1, 1)]);
    let table = |t: &'static str| {
        let (idx, store) = (&idx, &store);
        async move { idx.lookup_table(store, t).await.expect("lookup") }
    };
    assert_eq!(table("public.a").await, Some(vec![(0, 0), (1, 0), (2, 0)]));
    assert_eq!(table("public.b").await, Some(vec![(1, 1), (1, 3)]));
    assert_eq!(table("public.c").await, Some(vec![]));
    // Merged with an index that has no table section, the merged one
    // does not claim to know where tables are.
    let mut old = idx.clone();
    old.footer.table_fences = None;
    let both = [(idx.clone(), bytes.len() as u64), (old, bytes.len() as u64)];
    let in_memory = match merge::merge_objects(&store, "00000001", &both, None, None).await {
        Ok(write::Written::Memory(b)) => b,
        other => panic!("a merge without a file is held in memory: {}", other.is_ok()),
    };
    // Spilled past 100 bytes to a file in a scratch directory: the same
    // bytes, and the file and its directory go with its handle.
    let spilled = match merge::merge_objects(&store, "00000001", &both, None, Some(100)).await {
        Ok(write::Written::File(f)) => f,
        other => panic!("a merge past its size goes to its file: {}", other.is_ok()),
    };
    assert_eq!(std::fs::read(&spilled.path).expect("read")[..], in_memory[..]);
    let (path, dir) = (spilled.path.clone(), spilled.path.parent().map(|d| d.to_path_buf()));
    assert!(
        dir.as_ref().is_some_and(|d| d.join(".lock").exists()),
        "in a scratch directory"
    );
    drop(spilled);
    assert!(!path.exists(), "a spilled merge's file is removed with it");
    assert!(dir.is_some_and(|d| !d.exists()), "and its scratch directory");
    let merged = in_memory;
    store.put_once("m", merged.clone()).await.expect("put");
    let m = Index::open(&store, "m", merged.len() as u64).await.expect("open");
    assert_eq!(m.lookup_table(&store, "public.b").await.expect("lookup"), None);
    // Every entry of both, the second's objects numbered after the first's.
    let mut want = idx.lookup_hash(&store, 1500).await.expect("lookup");
    let second: Vec<(u32, u32)> = want.iter().map(|(o, f)| (o + 3, *f)).collect();
    want.extend(second);
    assert_eq!(m.lookup_hash(&store, 1500).await.expect("lookup"), want);
    assert_eq!(m.footer.objects.len(), 6);
    // Damage is an error, not a wrong answer.
    let mut bad = bytes.to_vec();
    for b in bad.iter_mut().take(40) {
        *b ^= 0xff; // the first data blocks
    }
    store.put_once("bad", Bytes::from(bad)).await.expect("put");
    let bad = Index::open(&store, "bad", bytes.len() as u64)
        .await
        .expect("footer intact");
    assert!(bad.lookup_hash(&store, 0).await.is_err());
}

#[test]
fn a_bucket_entrys_bits_code_back_to_themselves_and_one_key_takes_a_byte() {
    for bits in [1u64, 2, 3, 1 << 31, 0xffff_ffff, 0x8000_0001, 0b1010] {
        assert_eq!(bits_of_code(bits_code(bits)), Some(bits), "{bits:#x}");
    }
    for b in 0..32 {
        assert!(bits_code(1 << b) < 0x80, "one key, one byte: bit {b}");
    }
    assert_eq!(bits_of_code(32 << 1 | 1), None, "no bit 32");
    assert_eq!(bits_of_code(1 << 33), None, "no bits past 32");
}

/// An index object's bytes (its blocks already laid out as `format`
/// lays them out) given the footer and trailer of index format `format`
/// (3: without the bucket section, which must be empty; 4).
fn as_older_format(bytes: &[u8], format: u32) -> Vec<u8> {
    let n = bytes.len();
    let at = u64::from_le_bytes(bytes[n - 24..n - 16].try_into().expect("8 bytes")) as usize;
    let len = u64::from_le_bytes(bytes[n - 16..n - 8].try_into().expect("8 bytes")) as usize;
    assert_eq!(&bytes[n - 8..], MAGIC);
    let mut footer: serde_json::Value =
        serde_json::from_slice(&zstd::decode_all(&bytes[at..at + len]).expect("footer")).expect("json");
    footer["waly_index"] = format.into();
    if format == FORMAT_V3 {
        assert_eq!(footer["bucket_fences"], serde_json::json!([]));
        footer.as_object_mut().expect("object").remove("bucket_fences");
    }
    let z = zstd::encode_all(&serde_json::to_vec(&footer).expect("json")[..], 1).expect("zstd");
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(&z);
    out.extend_from_slice(&(at as u64).to_le_bytes());
    out.extend_from_slice(&(z.len() as u64).to_le_bytes());
    out.extend_from_slice(if format == FORMAT_V3 { MAGIC_V3 } else { MAGIC_V4 });
    out
}

/// Segment `number`, as an index object covers it.
fn segment(number: u64) -> Covered {
    Covered {
        number,
        key: String::new(),
        frames: Vec::new(),
        fence: 0,
    }
}

/// Integer keys are found through their buckets: every frame that
/// holds a key and no other, whatever the key's neighbours (dense runs,
/// scattered keys, negative keys, the ends of 64 bits), in one object,
/// after a merge, and after a merge with an object of format 3 (whose
/// integer keys were hashed).
#[tokio::test]
async fn integer_keys_are_found_through_their_buckets_and_only_where_they_are() {
    use std::collections::{BTreeMap, BTreeSet};
    let store = Store::open("memory://").expect("store");
    let h = Hasher::Plain;
    let mut truth: BTreeMap<i64, BTreeSet<(u32, u32)>> = BTreeMap::new();
    let mut b = Builder::default();
    let mut x = 7u64;
    for obj in 0..3u32 {
        let mut keys = KeyEntries::default();
        for frame in 0..4u32 {
            let mut these: Vec<i64> = match (obj + frame) % 3 {
                // A dense run, as a bulk update or insert writes.
                0 => (1000 * frame as i64..1000 * frame as i64 + 700).collect(),
                // Scattered keys, some negative.
                1 => (0..300)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        (x >> 40) as i64 % 5000 - 2500
                    })
                    .collect(),
                _ => vec![i64::MIN, i64::MIN + 31, -33, -32, -1, 0, 31, 32, i64::MAX],
            };
            these.push(obj as i64 * 100_000);
            for k in these {
                keys.note(h.row_key("public.t", format!("[\"{k}\"]").as_bytes()), frame);
                truth.entry(k).or_default().insert((obj, frame));
            }
            // A text key in the same table is hashed, apart.
            keys.note(h.row_key("public.t", br#"["x"]"#), frame);
        }
        assert!(
            keys.buckets.len() < 400,
            "a dense run takes a few entries: {}",
            keys.buckets.len()
        );
        b.add(segment(obj as u64), &keys, &[], &[]);
    }
    let bytes = b.encode("00000001", None).expect("encode");
    store.put_once("a", bytes.clone()).await.expect("put");
    let idx = Index::open(&store, "a", bytes.len() as u64).await.expect("open");
    assert!(idx.footer.bucket_fences.as_ref().is_some_and(|f| !f.is_empty()));
    let probes: BTreeSet<i64> = truth
        .keys()
        .flat_map(|k| [k.saturating_sub(1), *k, k.saturating_add(1), k.saturating_add(32)])
        .chain([i64::MIN, i64::MAX, 123_456_789])
        .collect();
    let check = |idx: Index, want: BTreeMap<i64, BTreeSet<(u32, u32)>>| {
        let store = &store;
        let probes = &probes;
        async move {
            for k in probes {
                let got: BTreeSet<(u32, u32)> = idx
                    .lookup_key(store, "public.t", format!("[\"{k}\"]").as_bytes())
                    .await
                    .expect("lookup")
                    .into_iter()
                    .collect();
                assert_eq!(got, want.get(k).cloned().unwrap_or_default(), "key {k}");
            }
            let other = idx.lookup_key(store, "public.u", br#"["0"]"#).await.expect("lookup");
            assert_eq!(other, vec![], "another table's key 0");
            let text = idx.lookup_key(store, "public.t", br#"["x"]"#).await.expect("lookup");
            assert_eq!(
                text.len(),
                want.values()
                    .flatten()
                    .map(|(o, f)| (o, f))
                    .collect::<BTreeSet<_>>()
                    .len()
            );
        }
    };
    check(idx.clone(), truth.clone()).await;
    // Merged with itself: the second copy's objects come after the first's.
    let size = bytes.len() as u64;
    let twice = [(idx.clone(), size), (idx.clone(), size)];
    let Ok(write::Written::Memory(merged)) = merge::merge_objects(&store, "00000001", &twice, None, None).await else {
        panic!("merged in memory")
    };
    store.put_once("m", merged.clone()).await.expect("put");
    let m = Index::open(&store, "m", merged.len() as u64).await.expect("open");
    assert!(!m.footer.hashed_int_keys);
    let doubled = |t: &BTreeMap<i64, BTreeSet<(u32, u32)>>| {
        t.iter()
            .map(|(k, v)| (*k, v.iter().flat_map(|(o, f)| [(*o, *f), (o + 3, *f)]).collect()))
            .collect::<BTreeMap<_, BTreeSet<_>>>()
    };
    check(m, doubled(&truth)).await;
    // An object of format 3 hashed every key: the same rows, hashed.
    let mut v3 = Builder::default();
    for obj in 0..3u32 {
        let mut keys = KeyEntries::default();
        for (k, at) in &truth {
            for (_, f) in at.iter().filter(|(o, _)| *o == obj) {
                keys.note(RowKey::Hash(h.key("public.t", format!("[\"{k}\"]").as_bytes())), *f);
            }
        }
        for f in 0..4 {
            keys.note(RowKey::Hash(h.key("public.t", br#"["x"]"#)), f);
        }
        keys.hashes.sort_unstable_by_key(|(_, f)| *f);
        v3.add(segment(10 + obj as u64), &keys, &[], &[]);
    }
    // Its bytes as format 3 wrote them: blocks entry after entry, no
    // bucket section, its footer and trailer of that version.
    v3.block_format = Some(FORMAT_V4);
    let v3_bytes = as_older_format(&v3.encode("00000001", None).expect("encode"), FORMAT_V3);
    store.put_once("v3", Bytes::from(v3_bytes.clone())).await.expect("put");
    let old = Index::open(&store, "v3", v3_bytes.len() as u64).await.expect("open");
    assert_eq!((old.footer.waly_index, old.footer.bucket_fences.is_none()), (3, true));
    // Read alone, its integer keys are found by hash.
    check(old.clone(), truth.clone()).await;
    let mixed = [(idx.clone(), size), (old, v3_bytes.len() as u64)];
    let Ok(write::Written::Memory(merged)) = merge::merge_objects(&store, "00000001", &mixed, None, None).await else {
        panic!("merged in memory")
    };
    store.put_once("mixed", merged.clone()).await.expect("put");
    let m = Index::open(&store, "mixed", merged.len() as u64).await.expect("open");
    assert!(
        m.footer.hashed_int_keys,
        "the merge says its key section holds integer keys"
    );
    check(m, doubled(&truth)).await;
}

/// The frame table gives each segment's frames as written, across block
/// cuts and through a merge; a segment whose frames do not lie end to end,
/// or whose object had no table, is left out (read by its header).
#[tokio::test]
async fn a_frame_table_places_each_segments_frames_through_a_merge() {
    let store = Store::open("memory://").expect("store");
    let gen = "00000001";
    // Segment 2 has more frames than a table block holds.
    let frames_of = |n: u64| -> Vec<(u64, u64)> {
        let count = if n == 2 { 5000 } else { n + 1 };
        let mut at = 100 + n;
        (0..count)
            .map(|i| {
                let len = 1000 + (i * 7 + n) % 300;
                at += len;
                (at - len, len)
            })
            .collect()
    };
    let mut want = FrameTable::new();
    for n in 0..6u64 {
        let mut b = Builder::default();
        let mut keys = KeyEntries::default();
        keys.note(RowKey::Hash(n), 0);
        b.add(segment(n), &keys, &[], &[]);
        match n {
            3 => {}                                        // written before the table
            4 => b.segment_frames(vec![(10, 5), (20, 5)]), // not end to end
            _ => {
                b.segment_frames(frames_of(n));
                want.insert(n as u32, frames_of(n));
            }
        }
        let key = segments_index_key(gen, n, n);
        let bytes = b.encode(gen, None).expect("encode");
        let size = bytes.len() as u64;
        store.put_once(&key, bytes).await.expect("put");
        let table = Index::open(&store, &key, size)
            .await
            .expect("open")
            .frame_table(&store)
            .await
            .expect("table");
        let alone: Option<FrameTable> = match n {
            3 => None,
            4 => Some(FrameTable::new()),
            _ => Some([(0, frames_of(n))].into_iter().collect()),
        };
        assert_eq!(table, alone, "segment {n}'s own object");
    }
    let mut runs = Vec::new();
    for (key, size, _, _) in segment_indexes(&store, gen).await.expect("list") {
        runs.push((Index::open(&store, &key, size).await.expect("open"), size));
    }
    let Ok(write::Written::Memory(bytes)) = merge::merge_objects(&store, gen, &runs, None, None).await else {
        panic!("a small merge stays in memory");
    };
    let (key, size) = (segments_index_key(gen, 0, 5), bytes.len() as u64);
    store.put_once(&key, bytes).await.expect("put");
    let merged = Index::open(&store, &key, size).await.expect("open");
    assert!(
        merged.footer.frame_table.as_ref().is_some_and(|b| b.len() >= 2),
        "segment 2's frames need a second block: {:?}",
        merged.footer.frame_table
    );
    assert_eq!(merged.frame_table(&store).await.expect("table"), Some(want));
}

/// Index objects of format 4 (blocks coded entry after entry), as the
/// release before format 5 wrote them, are read, and merge with format 5
/// objects into one of format 5; read as the other layout, either's blocks
/// are damage, never entries.
#[tokio::test]
async fn format_4_objects_are_read_and_merge_into_format_5_column_blocks() {
    use std::collections::{BTreeMap, BTreeSet};
    let store = Store::open("memory://").expect("store");
    let h = Hasher::Plain;
    let mut x = 11u64;
    let mut truth: BTreeMap<String, BTreeSet<(u32, u32)>> = BTreeMap::new();
    let mut objects = Vec::new();
    for obj in 0..4u32 {
        let (mut keys, mut messages, mut tables) = (KeyEntries::default(), Vec::new(), Vec::new());
        for frame in 0..5u32 {
            for _ in 0..400 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                // Integer keys (buckets) and text keys (hashed), repeated
                // across frames and objects.
                let key = match x >> 62 {
                    0 => format!("[\"k{}\"]", (x >> 20) % 700),
                    _ => format!("[\"{}\"]", (x >> 20) % 3000),
                };
                keys.note(h.row_key("public.t", key.as_bytes()), frame);
                truth.entry(key).or_default().insert((obj, frame));
            }
            messages.push((1000 + obj as u64 * 10 + frame as u64, frame));
            tables.push((h.table("public.t"), frame));
        }
        keys.hashes.sort_unstable_by_key(|(_, f)| *f);
        objects.push((keys, messages, tables));
    }
    let build = |format: u32| {
        let mut b = Builder {
            block_format: Some(format),
            ..Default::default()
        };
        for (i, (keys, messages, tables)) in objects.iter().enumerate() {
            b.add(segment(i as u64), keys, messages, tables);
        }
        b.encode("00000001", None).expect("encode")
    };
    let new = build(FORMAT);
    let old = as_older_format(&build(FORMAT_V4), FORMAT_V4);
    assert_eq!(&old[old.len() - 8..], MAGIC_V4);
    store.put_once("new", new.clone()).await.expect("put");
    store.put_once("old", Bytes::from(old.clone())).await.expect("put");
    let new_idx = Index::open(&store, "new", new.len() as u64).await.expect("open");
    let old_idx = Index::open(&store, "old", old.len() as u64).await.expect("open");
    assert_eq!((new_idx.footer.waly_index, old_idx.footer.waly_index), (5, 4));
    // The same entries, each object read by its own layout.
    let (a, b) = (
        new_idx.entries(&store).await.expect("entries"),
        old_idx.entries(&store).await.expect("entries"),
    );
    assert!(a.keys.len() > BLOCK_ENTRIES && a.buckets.as_ref().is_some_and(|b| b.len() > BLOCK_ENTRIES));
    assert_eq!(
        (&a.keys, &a.messages, &a.tables, &a.buckets),
        (&b.keys, &b.messages, &b.tables, &b.buckets)
    );
    // Either layout read as the other is damage.
    let mut swapped = new_idx.clone();
    swapped.footer.waly_index = FORMAT_V4;
    assert!(matches!(swapped.entries(&store).await, Err(Error::Corrupt { .. })));
    let mut swapped = old_idx.clone();
    swapped.footer.waly_index = FORMAT;
    assert!(matches!(swapped.entries(&store).await, Err(Error::Corrupt { .. })));
    let check = |idx: Index, copies: u32| {
        let (store, truth) = (&store, &truth);
        async move {
            for (key, at) in truth {
                let got: BTreeSet<(u32, u32)> = idx
                    .lookup_key(store, "public.t", key.as_bytes())
                    .await
                    .expect("lookup")
                    .into_iter()
                    .collect();
                let want: BTreeSet<(u32, u32)> = (0..copies)
                    .flat_map(|c| at.iter().map(move |(o, f)| (o + 4 * c, *f)))
                    .collect();
                assert_eq!(got, want, "key {key}");
            }
            let msgs = idx.lookup_message(store, 1023).await.expect("message");
            let want: Vec<(u32, u32)> = (0..copies).map(|c| (2 + 4 * c, 3)).collect();
            assert_eq!(msgs, want);
        }
    };
    check(old_idx.clone(), 1).await;
    check(new_idx.clone(), 1).await;
    let both = [(old_idx, old.len() as u64), (new_idx, new.len() as u64)];
    let Ok(write::Written::Memory(merged)) = merge::merge_objects(&store, "00000001", &both, None, None).await else {
        panic!("merged in memory")
    };
    assert_eq!(&merged[merged.len() - 8..], MAGIC, "a merge writes format 5");
    store.put_once("merged", merged.clone()).await.expect("put");
    let m = Index::open(&store, "merged", merged.len() as u64).await.expect("open");
    assert_eq!(m.footer.waly_index, FORMAT);
    check(m, 2).await;
}

/// A merge whose output section takes more than [`write::FENCES_HELD`]
/// data blocks writes fence blocks over them as it goes, among the data
/// blocks (so its memory holds a pointer per fence block, not one per data
/// block), and every entry is still found through them, by a lookup and
/// by a visit of every block (as `waly verify` makes, a fence block's data
/// blocks at a time).
#[tokio::test]
async fn a_large_merge_writes_fence_blocks_as_it_goes_and_every_entry_is_found() {
    let store = Store::open("memory://").expect("store");
    let gen = "00000001";
    // Each input alone stays below the bound; merged, they pass it.
    let per = (write::FENCES_HELD * BLOCK_ENTRIES / 2 + 10 * BLOCK_ENTRIES) as u64;
    let value = |i: u64, n: u64| (i * 2 + n) * 1_000_003;
    let mut runs = Vec::new();
    for n in 0..2u64 {
        let mut b = Builder::default();
        let mut keys = KeyEntries::default();
        for i in 0..per {
            keys.note(RowKey::Hash(value(i, n)), (i % 7) as u32);
        }
        b.add(segment(n), &keys, &[], &[]);
        let bytes = b.encode(gen, None).expect("encode");
        let (key, size) = (segments_index_key(gen, n, n), bytes.len() as u64);
        store.put_once(&key, bytes).await.expect("put");
        let idx = Index::open(&store, &key, size).await.expect("open");
        assert!(
            idx.footer.key_fences.len() < write::FENCES_HELD / FENCE_ENTRIES,
            "an input's section should stay below the bound"
        );
        runs.push((idx, size));
    }
    let Ok(write::Written::Memory(bytes)) = merge::merge_objects(&store, gen, &runs, None, None).await else {
        panic!("a merge without a spill bound stays in memory");
    };
    let (key, size) = (segments_index_key(gen, 0, 1), bytes.len() as u64);
    store.put_once(&key, bytes).await.expect("put");
    let merged = Index::open(&store, &key, size).await.expect("open");
    let fences = &merged.footer.key_fences;
    let mut data = Vec::new();
    for f in fences {
        let z = merged.block(&store, f).await.expect("fence block");
        data.extend(decode_fences(&key, &z).expect("fence pointers"));
    }
    let entries = 2 * per as usize;
    assert_eq!(data.len(), entries.div_ceil(BLOCK_ENTRIES), "a pointer per data block");
    assert_eq!(fences.len(), data.len().div_ceil(FENCE_ENTRIES));
    assert!(
        data.windows(2)
            .all(|w| w[0].first < w[1].first && w[0].offset < w[1].offset),
        "the data blocks' pointers are in order"
    );
    let last_data = data.iter().map(|b| b.offset).max().unwrap_or_default();
    let among = fences.iter().filter(|f| f.offset < last_data).count();
    assert_eq!(
        among,
        write::FENCES_HELD / FENCE_ENTRIES,
        "the first fence blocks lie among the data blocks"
    );
    for i in [0, 1, per / 3, per / 2, per - 1] {
        for n in 0..2u64 {
            assert_eq!(
                merged.lookup_hash(&store, value(i, n)).await.expect("lookup"),
                vec![(n as u32, (i % 7) as u32)],
                "entry {i} of input {n}"
            );
        }
    }
    assert_eq!(merged.lookup_hash(&store, value(per, 0)).await.expect("lookup"), vec![]);
    // `waly verify` visits it a block at a time, in order, every entry.
    let (mut seen, mut most, mut last) = (0usize, 0usize, None);
    let stopped = merged
        .visit_blocks(&store, |section, entries| {
            assert_eq!(section, 0, "only the key section has entries");
            (seen, most) = (seen + entries.len(), most.max(entries.len()));
            for e in entries {
                if last.is_some_and(|l| l >= e) {
                    return Some("out of order");
                }
                last = Some(e);
            }
            None
        })
        .await
        .expect("visit");
    assert_eq!(stopped, None);
    assert_eq!((seen, most), (entries, BLOCK_ENTRIES));
    // It stops at the first fault a visit finds.
    let mut calls = 0;
    let found = merged
        .visit_blocks(&store, |_, _| {
            calls += 1;
            (calls == 3).then_some(calls)
        })
        .await
        .expect("visit");
    assert_eq!((found, calls), (Some(3), 3));
}

/// An export of some tables reads, besides their frames, the frames that
/// hold intents: every frame with a message of a transaction after the
/// point, each once, however many fence blocks the message section spans.
#[tokio::test]
async fn message_frames_are_every_frame_with_a_message_after_the_point_across_fence_blocks() {
    use std::collections::BTreeSet;
    let store = Store::open("memory://").expect("store");
    let h = Hasher::Plain;
    let mut x = 7u64;
    let (mut all, mut of_table) = (Vec::new(), BTreeSet::new());
    let mut b = Builder::default();
    for obj in 0..40u32 {
        let (mut messages, mut tables) = (Vec::new(), Vec::new());
        for frame in 0..20u32 {
            if frame % 3 == 0 {
                tables.push((h.table("public.t"), frame));
                of_table.insert((obj, frame));
            }
            // Some frames hold no message.
            if (obj + frame) % 7 == 0 {
                continue;
            }
            for _ in 0..110 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                // Later frames hold later transactions, with some overlap.
                let lsn = u64::from(obj * 20 + frame) * 1000 + (x >> 40) % 3000;
                messages.push((lsn, frame));
                all.push((lsn, obj, frame));
            }
        }
        b.add(segment(obj as u64), &KeyEntries::default(), &messages, &tables);
    }
    let bytes = b.encode("00000001", None).expect("encode");
    store.put_once("idx", bytes.clone()).await.expect("put");
    let idx = Index::open(&store, "idx", bytes.len() as u64).await.expect("open");
    assert!(idx.footer.message_fences.len() > 1, "the section spans fence blocks");
    let mut lsns: Vec<u64> = all.iter().map(|(l, _, _)| *l).collect();
    lsns.sort_unstable();
    let mid = lsns[lsns.len() / 2];
    let after_point = |after: Option<u64>| -> BTreeSet<(u32, u32)> {
        all.iter()
            .filter(|(l, _, _)| after.is_none_or(|a| *l > a))
            .map(|(_, o, f)| (*o, *f))
            .collect()
    };
    for after in [None, Some(0), Some(mid), Some(lsns[lsns.len() - 1]), Some(u64::MAX)] {
        let got = idx.message_frames(&store, after).await.expect("message frames");
        assert_eq!(got, after_point(after), "after {after:?}");
    }
    assert!(!after_point(Some(mid)).is_empty() && after_point(Some(mid)).len() < after_point(None).len());
    // A table's frames and the frames with messages after the point.
    let want = Want {
        tables: vec!["public.t"],
        messages: true,
        after: Some(mid),
    };
    let got: BTreeSet<(u32, u32)> = idx
        .wanted_frames(&store, &want)
        .await
        .expect("wanted")
        .expect("the object keeps tables")
        .into_iter()
        .collect();
    assert_eq!(got, &of_table | &after_point(Some(mid)));
    // A table it never saw, without messages: no frame.
    let none = Want {
        tables: vec!["public.other"],
        ..Want::default()
    };
    assert_eq!(
        idx.wanted_frames(&store, &none).await.expect("wanted"),
        Some(Vec::new())
    );
}

/// A snapshot's builder that sets its entries aside in local runs writes
/// the very bytes one holding them all in memory writes, whether it is
/// encoded or stored (spilled to a file as it is written); and its lookups
/// find every row.
#[tokio::test]
async fn a_snapshot_index_whose_entries_waited_in_local_runs_is_the_object_built_in_memory() {
    let store = Store::open("memory://").expect("store");
    let mut memory = Builder::default();
    let mut spilled = Builder::default().spilling_at(1_000);
    let h = Hasher::default();
    for part in 0..20u64 {
        let mut keys = KeyEntries::default();
        for row in 0..900u64 {
            // Text keys (a hash each) and integer keys (buckets), scattered.
            let id = (part * 7_919 + row * 104_729) % 50_000;
            let text = format!("[\"k{id}\"]");
            let int = format!("[\"{id}\"]");
            let frame = (row / 300) as u32;
            keys.note(h.row_key("public.t", text.as_bytes()), frame);
            keys.note(h.row_key("public.u", int.as_bytes()), frame);
        }
        let covered = Covered {
            number: part,
            key: format!("generations/00000001/snapshots/0000000000000001/public.t/{part:06}.jsonl.zst"),
            frames: vec![(0, 100), (100, 100), (200, 100)],
            fence: 0,
        };
        memory.add(covered.clone(), &keys, &[], &[]);
        spilled.add(covered, &keys, &[], &[]);
    }
    // Runs of every part's keys, 16 of them merged into one of level 1.
    let runs = spilled.spill.as_ref().map(|s| s.keys.written());
    assert!(
        runs.is_some_and(|(n, level)| n > 16 && level == 1),
        "the entries went to runs, merged in levels: {runs:?}"
    );
    let whole = memory.encode("00000001", None).expect("encode");
    let key = "index/00000001/snapshots/0000000000000001.idx";
    spilled.store(&store, key, "00000001", None).await.expect("store");
    let stored = store.get(key).await.expect("get");
    assert_eq!(stored, whole, "the spilled builder wrote other bytes");
    let idx = Index::open(&store, key, stored.len() as u64).await.expect("open");
    for (part, row) in [(0u64, 0u64), (3, 17), (19, 899)] {
        let id = (part * 7_919 + row * 104_729) % 50_000;
        for (table, text) in [
            ("public.t", format!("[\"k{id}\"]")),
            ("public.u", format!("[\"{id}\"]")),
        ] {
            let want: std::collections::BTreeSet<u64> = (0..20u64)
                .filter(|part| (0..900u64).any(|row| (part * 7_919 + row * 104_729) % 50_000 == id))
                .collect();
            let got: std::collections::BTreeSet<u64> = idx
                .lookup_key(&store, table, text.as_bytes())
                .await
                .expect("lookup")
                .into_iter()
                .map(|(o, _)| idx.footer.objects[o as usize].number)
                .collect();
            assert!(
                want.contains(&part) && want.is_subset(&got),
                "{table} {text}: {got:?} lacks some of {want:?}"
            );
        }
    }
}

/// The guarantee: `waly reindex` beside a running writer never stops
/// either. Both may merge the same range at once; in an encrypted archive
/// the two objects differ (sealed with fresh nonces, or under other data
/// keys), so the second write-once upload meets the first: it keeps that
/// object (it indexes the same segments) and goes on.
#[tokio::test]
async fn a_merge_whose_object_another_process_wrote_first_keeps_it_and_goes_on() {
    let (store, _, a) = sealed_archive().await;
    let gen = "00000001";
    let mut runs = Vec::new();
    for (key, size, _, _) in segment_indexes(&store, gen).await.expect("list") {
        runs.push((Index::open(&store, &key, size).await.expect("open"), size));
    }
    let merged = || async {
        match merge::merge_objects(&store, gen, &runs, Some(&a), None).await {
            Ok(write::Written::Memory(bytes)) => bytes,
            _ => panic!("a merge in memory"),
        }
    };
    // The other process's merge of the range, uploaded first; then this
    // one's, which differs.
    let (theirs, ours) = (merged().await, merged().await);
    assert_ne!(theirs, ours);
    let key = segments_index_key(gen, 0, 2);
    store.put_once(&key, theirs.clone()).await.expect("put theirs");
    put_index(&store, &key, write::Written::Memory(ours))
        .await
        .expect("the merge goes on");
    assert_eq!(store.get(&key).await.expect("get"), theirs, "the first object is kept");
    let idx = Index::open(&store, &key, theirs.len() as u64).await.expect("open");
    for n in 0..3u64 {
        let found = idx
            .lookup_key(&store, "public.t", format!("[\"{n}\"]").as_bytes())
            .await
            .expect("lookup");
        let segments: Vec<u64> = found
            .iter()
            .map(|(o, _)| idx.footer.objects[*o as usize].number)
            .collect();
        assert_eq!(segments, vec![n]);
    }
}
