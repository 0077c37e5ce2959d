//! `waly synth`: a valid archive of synthetic changes, written straight to a
//! store without PostgreSQL, for benchmarks at sizes (10^8 events and more)
//! that a real database would take days to produce on a small machine.
//!
//! It writes what `waly run` writes, through the same builders: the
//! archive's identity, one generation with a base snapshot of every table
//! (schema versions, parts, manifest, index), then hash-chained segments of
//! transactions with their commit markers, and each segment's index (merged
//! as the writer merges it). `waly verify` calls the result clean.
//!
//! The tables are `public.t0`, `public.t1`, ... (`id bigint` primary key,
//! `n bigint`, `pad text`); each gets a share of the changes by its weight,
//! and its own number of rows in the base snapshot.
//! Changes are mostly updates of existing rows, some inserts of new rows and
//! some deletes; the row a change touches is drawn with a configurable skew
//! toward low ids. The draw is seeded: the same options give the same archive.

use crate::archive::layout;
use crate::archive::state::{self, Identity, Manifest};
use crate::archive::Store;
use crate::event::{Change, Op, Row};
use crate::schema::keys::KeyColumns;
use crate::segment::{ColumnDef, CommitRecord, SchemaRecord, SegmentBuilder};
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Changes in all.
    pub events: u64,
    /// Each table's share of the changes (relative), one table per weight.
    pub weights: Vec<u64>,
    /// Rows each table has in the base snapshot: one number per table, or
    /// one for all.
    pub rows: Vec<u64>,
    /// Skew of the rows changes touch: 0 draws ids uniformly; at `s` the id
    /// is `rows * u^(1+s)` for a uniform `u`, so low ids are hot.
    pub skew: f64,
    /// Bytes of each row's `pad` value.
    pub row_bytes: usize,
    /// Changes per transaction.
    pub txn_changes: u32,
    /// Uncompressed bytes per segment (as `waly run --segment-size`).
    pub segment_bytes: usize,
    /// Commit time of the first transaction; each next one is `txn_interval` later.
    pub start: DateTime<Utc>,
    /// Time between transactions.
    pub txn_interval: chrono::Duration,
    /// The seed of the draw.
    pub seed: u64,
    /// A writer's crashes, as `waly verify` must tell them (`None`: none):
    /// the segment ends half way through this transaction (counted from
    /// 1), and so does the next (its replay, cut short by a second crash);
    /// then the stream goes on with it whole: it is committed after all.
    pub crash_at: Option<u64>,
    /// The last segment ends half way through one more transaction, which
    /// never commits: an orphan partial transaction.
    pub orphan_at_end: bool,
    /// Every this many transactions (the Nth, 2Nth, ...) one carries an
    /// intent: a `waly` message `intent of transaction N` after its changes.
    pub intent_every: Option<u64>,
    /// The source's clock steps back: before every Nth transaction (the
    /// Nth, 2Nth, ...) commit times fall back by this much, and go on from
    /// there (as after a clock correction), so a later segment holds
    /// commits older than an earlier one's.
    pub clock_back: Option<(u64, chrono::Duration)>,
}

/// What was written.
#[derive(Debug, Default, Clone, Copy)]
pub struct SynthStats {
    /// Changes written.
    pub changes: u64,
    /// Transactions written.
    pub transactions: u64,
    /// Segments written.
    pub segments: u64,
    /// Bytes of segments written.
    pub segment_bytes: u64,
    /// Rows in the base snapshot.
    pub snapshot_rows: u64,
}

/// splitmix64: a small, fast, seeded generator (for synthetic data only).
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// One synthetic table: which ids exist.
struct Table {
    name: Arc<str>,
    schema: SchemaRecord,
    pk: KeyColumns,
    /// One bit per id in `1..=alive.len() * 64`.
    alive: Vec<u64>,
    /// The largest id ever inserted.
    max_id: u64,
}

impl Table {
    fn is_alive(&self, id: u64) -> bool {
        let i = (id - 1) as usize;
        self.alive.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, id: u64, on: bool) {
        let i = (id - 1) as usize;
        if self.alive.len() <= i / 64 {
            self.alive.resize(i / 64 + 1, 0);
        }
        if on {
            self.alive[i / 64] |= 1 << (i % 64);
        } else {
            self.alive[i / 64] &= !(1 << (i % 64));
        }
    }
}

fn column(attnum: i16, name: &str, type_name: &str, type_oid: u32, key: bool) -> ColumnDef {
    ColumnDef {
        attnum: Some(attnum),
        name: name.to_string(),
        type_name: type_name.to_string(),
        type_oid,
        type_modifier: -1,
        key,
        primary_key: key,
        key_position: key.then_some(1),
        not_null: key,
        missing: None,
        default: None,
        generated: None,
        identity: None,
        type_shape: None,
    }
}

/// The names a row's columns are known by (shared by every row).
struct Names {
    id: Arc<str>,
    n: Arc<str>,
    pad: Arc<str>,
}

impl Names {
    fn row(&self, id: u64, n: u64, pad: &str) -> Row {
        Row(vec![
            (self.id.clone(), Some(id.to_string())),
            (self.n.clone(), Some(n.to_string())),
            (self.pad.clone(), Some(pad.to_string())),
        ])
    }

    fn key(&self, id: u64) -> Row {
        Row(vec![(self.id.clone(), Some(id.to_string()))])
    }
}

/// Writes a synthetic archive to `store`, which must hold no archive yet.
pub async fn generate(store: &Store, opts: &SynthOptions) -> Result<SynthStats, Error> {
    if opts.weights.is_empty() || opts.weights.iter().all(|w| *w == 0) {
        return Err(Error::NotInArchive(
            "synth: give at least one table a weight above 0".into(),
        ));
    }
    let rows_of = |t: usize| opts.rows.get(t).or(opts.rows.last()).copied().unwrap_or(0);
    if opts.txn_changes == 0 || (0..opts.weights.len()).any(|t| rows_of(t) == 0) {
        return Err(Error::NotInArchive(
            "synth: every table needs --rows of at least 1, and --txn-changes at least 1".into(),
        ));
    }
    if state::read_identity(store).await?.is_some() || !state::generations(store).await?.is_empty() {
        return Err(Error::ArchiveMismatch(format!(
            "{} already holds an archive: synth writes only into an empty one",
            store.url()
        )));
    }
    state::claim(store, &Identity::new("synthetic", "synthetic", "waly", "waly")).await?;
    store.prepare_writing().await?;
    let mut lsn = Lsn(0x0100_0000);
    let gen = crate::pipeline::start_generation(store, None, "synthetic archive (waly synth)", lsn, 1, None)
        .await?
        .id;
    let names = Names {
        id: Arc::from("id"),
        n: Arc::from("n"),
        pad: Arc::from("pad"),
    };
    let pad: String = "x".repeat(opts.row_bytes);
    let mut stats = SynthStats::default();

    // The base snapshot: every table with ids 1..=rows.
    let taken_at = opts.start - opts.txn_interval;
    let mut manifest = Manifest {
        waly_snapshot: 1,
        generation: gen.clone(),
        lsn,
        taken_at,
        compacted_at: None,
        tables: Vec::new(),
    };
    let metrics = crate::metrics::Metrics::default();
    let mut index = crate::index::Builder::for_writer(store.sealer()?.as_ref()).spilling();
    let mut tables = Vec::new();
    for i in 0..opts.weights.len() {
        let name = format!("public.t{i}");
        let schema = SchemaRecord {
            commit_lsn: lsn,
            table: name.clone(),
            version: 1,
            columns: vec![
                column(1, "id", "bigint", 20, true),
                column(2, "n", "bigint", 20, false),
                column(3, "pad", "text", 25, false),
            ],
            commit_time: Some(taken_at),
            source: Some("snapshot".into()),
            meta: Default::default(),
            ddl: None,
            dropped: false,
            sealed: None,
        };
        let seg = layout::table_segment("public", &format!("t{i}"));
        store
            .put_once(&layout::schema_key(&gen, &seg, 1), store.schema_bytes(&schema)?)
            .await?;
        let pk = KeyColumns::row_key(&schema);
        let mut w = crate::snapshot::TableWriter::new(store, &gen, lsn, &name, &seg, 1, pk.clone())?;
        let rows = rows_of(i);
        for id in 1..=rows {
            w.push(&names.row(id, 0, &pad), &mut index, &metrics).await?;
        }
        let entry = w.finish(&mut index, &metrics).await?;
        stats.snapshot_rows += entry.rows;
        manifest.tables.push(entry);
        let mut t = Table {
            name: Arc::from(name.as_str()),
            schema,
            pk,
            alive: Vec::new(),
            max_id: rows,
        };
        t.alive = vec![u64::MAX; (rows as usize).div_ceil(64)];
        for id in rows + 1..=t.alive.len() as u64 * 64 {
            t.set(id, false);
        }
        tables.push(t);
    }
    crate::snapshot::write_manifest(store, &manifest, index).await?;

    // The changes, in transactions, in segments.
    let total: u64 = opts.weights.iter().sum();
    let mut draw = Draw(opts.seed);
    let mut builder = SegmentBuilder::sealed_by(store.sealer()?)?;
    let mut tail = state::Tail::default();
    let mut catalog = crate::catalog::Keeper::start(store, &gen).await;
    let mut xid = 1000u32;
    let mut time = opts.start;
    while stats.changes < opts.events {
        let in_txn = (opts.events - stats.changes).min(opts.txn_changes as u64);
        let changes: Vec<(usize, Op, u64)> = (0..in_txn)
            .map(|_| {
                let mut pick = draw.below(total);
                let t = opts
                    .weights
                    .iter()
                    .position(|w| {
                        let here = pick < *w;
                        pick = pick.saturating_sub(*w);
                        here
                    })
                    .unwrap_or(0);
                let table = &mut tables[t];
                let roll = draw.below(100);
                let id = if roll < 5 {
                    table.max_id + 1
                } else {
                    let u = draw.unit().powf(1.0 + opts.skew);
                    1 + ((u * table.max_id as f64) as u64).min(table.max_id - 1)
                };
                let op = match (roll, table.is_alive(id)) {
                    (_, false) => Op::Insert,
                    (5..=9, true) => Op::Delete,
                    _ => Op::Update,
                };
                table.set(id, op != Op::Delete);
                table.max_id = table.max_id.max(id);
                (t, op, id)
            })
            .collect();
        if let Some((every, by)) = opts.clock_back {
            if every > 0 && (stats.transactions + 1) % every == 0 {
                time -= by;
            }
        }
        let first_lsn = lsn;
        let commit_lsn = Lsn(first_lsn.0 + 100 * in_txn + 64);
        let mut txn = Vec::new();
        for (seq, (t, op, id)) in changes.into_iter().enumerate() {
            let table = &tables[t];
            let n = stats.changes + seq as u64 + 1;
            let change = Change {
                commit_lsn,
                seq: seq as u64,
                lsn: Lsn(first_lsn.0 + 100 * seq as u64),
                xid,
                commit_time: time,
                table: table.name.clone(),
                op,
                key: Some(names.key(id)),
                old: (op == Op::Delete).then(|| names.key(id)),
                new: (op != Op::Delete).then(|| names.row(id, n, &pad)),
                unchanged_toast: Vec::new(),
            };
            txn.push((t, change));
        }
        let end_lsn = Lsn(commit_lsn.0 + 48);
        let number = stats.transactions + 1;
        let intent = opts
            .intent_every
            .filter(|every| *every > 0 && number % every == 0)
            .map(|_| crate::segment::MessageRecord {
                commit_lsn,
                seq: in_txn,
                lsn: Lsn(first_lsn.0 + 100 * in_txn),
                xid,
                commit_time: time,
                prefix: "waly".into(),
                content: format!("intent of transaction {number}"),
            });
        let commit = CommitRecord {
            commit_lsn,
            end_lsn,
            xid,
            commit_time: time,
            records: in_txn + u64::from(intent.is_some()),
        };
        let half = txn.len().div_ceil(2);
        if opts.crash_at == Some(number) {
            // Cut, then its replay cut again: two segments that end with
            // its first half (a writer replays only what it had not stored
            // whole), then the stream goes on with it whole.
            for _ in 0..2 {
                push_changes(&mut builder, &tables, &txn[..half])?;
                store_segment(store, &gen, &mut builder, &mut tail, &mut catalog, &mut stats).await?;
            }
        }
        push_changes(&mut builder, &tables, &txn)?;
        if let Some(m) = &intent {
            builder.push_message(m)?;
        }
        builder.push_commit(&commit)?;
        if opts.orphan_at_end && stats.changes + in_txn >= opts.events {
            // One more transaction's first half, after the last commit.
            let next = |l: Lsn| Lsn(end_lsn.0 + 8 + l.0 - first_lsn.0);
            let orphan: Vec<(usize, Change)> = txn[..half]
                .iter()
                .map(|(t, c)| {
                    let mut c = c.clone();
                    (c.commit_lsn, c.lsn) = (next(c.commit_lsn), next(c.lsn));
                    c.xid = xid.wrapping_add(1).max(3);
                    (*t, c)
                })
                .collect();
            push_changes(&mut builder, &tables, &orphan)?;
        }
        stats.changes += in_txn;
        stats.transactions += 1;
        lsn = Lsn(end_lsn.0 + 8);
        xid = xid.wrapping_add(1).max(3);
        time += opts.txn_interval;
        if builder.uncompressed_bytes() >= opts.segment_bytes || stats.changes >= opts.events {
            store_segment(store, &gen, &mut builder, &mut tail, &mut catalog, &mut stats).await?;
        }
    }
    Ok(stats)
}

/// Pushes the changes `txn` (each with its table's position in `tables`)
/// into `builder`, noting their keys for the index.
fn push_changes(builder: &mut SegmentBuilder, tables: &[Table], txn: &[(usize, Change)]) -> Result<(), Error> {
    for (t, change) in txn {
        let table = &tables[*t];
        builder.push_change(change, table.schema.version)?;
        let row = change.new.as_ref().or(change.old.as_ref());
        if let Some(r) = row {
            let h = builder.hasher().row(&table.name, &table.pk, r);
            builder.note_key(h);
        }
    }
    Ok(())
}

/// Seals what `builder` holds as the generation's next segment and stores
/// it, with its index object (merged in levels) and the catalog's entry.
async fn store_segment(
    store: &Store,
    gen: &str,
    builder: &mut SegmentBuilder,
    tail: &mut state::Tail,
    catalog: &mut crate::catalog::Keeper,
    stats: &mut SynthStats,
) -> Result<(), Error> {
    let full = std::mem::replace(builder, SegmentBuilder::sealed_by(store.sealer()?)?);
    let number = tail.next_number;
    let sealed = full.seal(gen, number, tail.prev_sha256.clone(), tail.time_high, 0)?;
    let key = layout::segment_key(gen, number, sealed.header.first_lsn, sealed.header.last_lsn, 0);
    store.put_once(&key, sealed.bytes.clone()).await?;
    crate::index::write_segment_index(store, gen, number, 0, &sealed).await;
    crate::index::merge_levels(store, gen, number + 1).await;
    let last_commit = sealed.header.last_commit.map(|c| c.commit_lsn);
    catalog.stored(store, gen, &key, last_commit, &sealed.summary, 0).await;
    stats.segments += 1;
    stats.segment_bytes += sealed.bytes.len() as u64;
    tail.stored(number, &sealed);
    Ok(())
}
