//! The oracle test's generator: from a seed, a run of steps mixing what an
//! application does (inserts, updates that change keys or leave a TOASTed
//! value alone, NULL versus empty strings, no-op updates, deletes,
//! truncates, transactions over several tables, savepoints rolled back, a
//! large transaction, intents; generated columns, one reading only a
//! TOASTed value), migrations (add, rename, drop and retype columns, a
//! partition created, one detached and attached again, a primary key
//! changed, a replica identity index for a while, a table inheriting from
//! another, an enum column whose label is renamed later, a generated
//! column's expression changed (PostgreSQL 17), every table out of the
//! publication for a while, a table made unlogged for a bulk load, moved
//! to another schema and back, swapped for a copy), and operations on waly itself
//! (kill -9 and restart, a PostgreSQL restart, compact, prune, reindex, a
//! standby taking over, a restore into the source database, an object-store
//! outage, the sidecar down across a migration; in an encrypted archive, a
//! key rotation). Every third seed's server prints values in other styles
//! than the defaults (see `oracle_check::server_settings`), and every fifth
//! has a synchronous standby that holds each commit out of sight for up to
//! a second after `waly run` can decode it (`oracle_check::slow_standby`). Checkpoints
//! fall at random moments. The same seed gives the same run.

/// One step of a run.
#[derive(Debug, Clone)]
pub enum Step {
    /// SQL sent as one psql call (one transaction unless it says otherwise).
    Sql { what: &'static str, sql: String },
    /// Record the time and every table's state.
    Checkpoint,
    /// kill -9 the sidecar and start it again.
    KillRestart,
    /// Restart PostgreSQL (fast shutdown).
    PgRestart,
    /// `waly compact` while the sidecar runs.
    Compact,
    /// `waly reindex`.
    Reindex,
    /// `waly compact`, then `waly prune --keep 1s` while the sidecar runs:
    /// the compacted snapshot is the archive's start from then on, and what
    /// came before it is deleted (points before it are refused, never
    /// restored wrong).
    Prune,
    /// A second sidecar waits as a standby; the writer is killed; the
    /// standby takes over.
    Takeover,
    /// `waly restore` of a table into the source database, as of now.
    RestoreIntoSource { table: &'static str },
    /// The archive refuses writes (made unwritable) while this SQL runs and
    /// a few seconds pass; then it is writable again.
    Outage { sql: String },
    /// A quiet period: only unpublished WAL (a temporary table, a WAL
    /// switch, a checkpoint), long enough for the sidecar's idle heartbeat
    /// (a record-less segment); then `waly reindex` over it.
    Quiet,
    /// An encrypted archive: a second recipient added (`waly keys
    /// add-recipient`) and the keys rotated while the sidecar runs; the
    /// rest of the run is read with the second identity.
    RotateKeys,
    /// A partition detached (and changed), then, once the sidecar has
    /// confirmed that, attached again (after more changes).
    DetachAttach { detach: String, attach: String },
    /// The sidecar is killed, these SQL steps run (a migration that keeps
    /// values among them when one is pending), and it starts again: they
    /// are decoded in its next session (PostgreSQL 16 and later describe
    /// them with the catalog of then).
    Down { what: &'static str, steps: Vec<Step> },
}

impl Step {
    /// A short name, for the report.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Sql { what, .. } => what,
            Step::Checkpoint => "checkpoint",
            Step::KillRestart => "kill -9 and restart",
            Step::PgRestart => "PostgreSQL restart",
            Step::Compact => "compact",
            Step::Reindex => "reindex",
            Step::Quiet => "a quiet period, then reindex",
            Step::RotateKeys => "keys add-recipient and rotate",
            Step::Down { what, .. } => what,
            Step::DetachAttach { .. } => "detach and attach",
            Step::Prune => "prune --keep",
            Step::Takeover => "standby takeover",
            Step::RestoreIntoSource { .. } => "restore into the source",
            Step::Outage { .. } => "object-store outage",
        }
    }
}

/// The tables, audited by the oracle (see `oracle_check`).
pub const TABLES: [&str; 3] = ["acct", "item", "ev"];

/// The schema and the rows that exist before waly starts.
pub const SETUP: &str = "
CREATE TABLE acct (id int PRIMARY KEY, name text, email text, big text, n numeric);
ALTER TABLE acct ALTER COLUMN big SET STORAGE EXTERNAL;
ALTER TABLE acct ADD COLUMN shout text GENERATED ALWAYS AS (upper(name)) STORED,
                 ADD COLUMN big_len int GENERATED ALWAYS AS (length(big)) STORED;
CREATE TABLE item (id int PRIMARY KEY, acct int, qty int, note text,
                   note_len int GENERATED ALWAYS AS (length(note)) STORED, price money DEFAULT 1.5);
CREATE TABLE ev (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE ev_1 PARTITION OF ev FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE ev_2 PARTITION OF ev FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
INSERT INTO acct SELECT g, 'name ' || g, CASE WHEN g % 3 = 0 THEN '' WHEN g % 3 = 1 THEN NULL ELSE 'a' || g || '@x' END,
                        CASE WHEN g % 10 = 0 THEN repeat('big', 1500) || g END, g * 1.25
  FROM generate_series(1, 300) g;
INSERT INTO item (id, acct, qty, note, price)
  SELECT g, g % 300 + 1, g % 17, 'note ' || g, ((g % 17 - 8) * 1234.567)::numeric::money FROM generate_series(1, 400) g;
INSERT INTO ev SELECT g, date '2026-01-01' + g % 58, 'v' || g FROM generate_series(1, 200) g;
";

/// How big a run is.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Steps of workload between the others.
    pub steps: usize,
    /// Rows of the one large transaction.
    pub large_txn_rows: u32,
}

/// xorshift64*: small, seedable, the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the generator knows of the schema as it changes.
struct Model {
    /// `item`'s note column, renamed by a migration.
    item_note: &'static str,
    /// Whether `acct.n` still exists.
    acct_n: bool,
    /// Whether `acct.tier` exists.
    acct_tier: bool,
    /// `item.mood`, of the enum `mood`: 0 before it exists, 1 with labels
    /// `sad`, `ok`, `happy`, 2 once `sad` is renamed `blue` and `gold`
    /// added.
    item_mood: u8,
    /// Fresh keys for key changes and inserts.
    next_key: u32,
    migrations: Vec<&'static str>,
}

/// The run for `seed`; an encrypted archive's run also rotates its keys.
pub fn generate(seed: u64, size: Size, encrypted: bool) -> Vec<Step> {
    let mut r = Rng::new(seed);
    let mut m = Model {
        item_note: "note",
        acct_n: true,
        acct_tier: false,
        item_mood: 0,
        next_key: 100_000,
        migrations: vec![
            "add column",
            "rename column",
            "drop column",
            "retype",
            "rewrite",
            "out of the publication",
            "detach and attach",
            "unlogged for a bulk load",
            "moved to another schema and back",
            "swapped for a copy",
            "replica identity index and back",
            "an heir",
            "an enum",
            "a new generation expression",
            "partition",
            "primary key",
        ],
    };
    // Operations on waly, each once, at random places; a restore into the
    // source twice.
    let mut ops = vec![
        Step::KillRestart,
        Step::PgRestart,
        Step::Compact,
        Step::Reindex,
        Step::Quiet,
        Step::Prune,
        Step::Takeover,
        Step::RestoreIntoSource { table: "acct" },
        Step::RestoreIntoSource { table: "ev" },
        Step::Outage {
            sql: format!("UPDATE item SET qty = qty + 1 WHERE id % 9 = {}", r.below(9)),
        },
    ];
    if encrypted {
        ops.push(Step::RotateKeys);
    }
    ops.push(Step::Down {
        what: "",
        steps: Vec::new(),
    });
    let mut steps = vec![Step::Checkpoint];
    let large_at = r.below(size.steps as u64) as usize;
    for i in 0..size.steps {
        if i == large_at {
            steps.push(large_txn(&mut m, size.large_txn_rows));
        }
        steps.push(workload(&mut r, &mut m));
        if r.chance(12) && !m.migrations.is_empty() {
            let k = r.below(m.migrations.len() as u64) as usize;
            let which = m.migrations.remove(k);
            steps.push(migration(which, &mut m));
        }
        if r.chance(12) && !ops.is_empty() {
            let k = r.below(ops.len() as u64) as usize;
            let op = ops.remove(k);
            steps.push(fill(op, &mut r, &mut m));
        }
        if r.chance(25) {
            steps.push(Step::Checkpoint);
        }
    }
    // Whatever did not come up yet happens at the end (with the
    // migrations a migration adds), then a last checkpoint.
    while !m.migrations.is_empty() {
        let which = m.migrations.remove(0);
        steps.push(migration(which, &mut m));
        steps.push(workload(&mut r, &mut m));
    }
    for op in ops {
        steps.push(fill(op, &mut r, &mut m));
    }
    steps.push(workload(&mut r, &mut m));
    steps.push(Step::Checkpoint);
    steps
}

/// An operation as it happens now: the steps of a sidecar's downtime are
/// drawn when it comes (a rename or an added column, if still pending, is
/// among them: on PostgreSQL 16 and later a column dropped or retyped while
/// the sidecar is down loses the values of the changes before it, which
/// waly archives as unknown; schemas.rs tests that. For the same reason
/// the runner waits, after a column is dropped or retyped, until the
/// sidecar has confirmed it, before a later step restarts anything).
fn fill(op: Step, r: &mut Rng, m: &mut Model) -> Step {
    let Step::Down { .. } = op else { return op };
    let mut steps = vec![workload(r, m)];
    let mut what = "sidecar down (no migration left to cross)";
    let crossed = m
        .migrations
        .iter()
        .position(|w| *w == "rename column" || *w == "add column");
    if let Some(k) = crossed {
        let which = m.migrations.remove(k);
        what = if which == "rename column" {
            "sidecar down across a rename"
        } else {
            "sidecar down across an added column"
        };
        steps.push(migration(which, m));
    }
    steps.push(workload(r, m));
    Step::Down { what, steps }
}

fn large_txn(m: &mut Model, rows: u32) -> Step {
    let first = m.next_key;
    m.next_key += rows;
    Step::Sql {
        what: "a large transaction",
        sql: format!(
            "INSERT INTO item (id, acct, qty, {note}) SELECT g, g % 300 + 1, g % 5, 'bulk' FROM generate_series({first}, {last}) g",
            note = m.item_note,
            last = first + rows - 1
        ),
    }
}

fn migration(which: &'static str, m: &mut Model) -> Step {
    let sql = match which {
        "add column" => {
            m.acct_tier = true;
            "ALTER TABLE acct ADD COLUMN tier text DEFAULT 'basic'".to_string()
        }
        "rename column" => {
            m.item_note = "remark";
            "ALTER TABLE item RENAME COLUMN note TO remark".to_string()
        }
        "drop column" => {
            m.acct_n = false;
            "ALTER TABLE acct DROP COLUMN n".to_string()
        }
        "retype" => "ALTER TABLE item ALTER COLUMN qty TYPE bigint".to_string(),
        // A retype whose effect on the rows the stream does not carry:
        // waly snapshots the table again. No row trigger fires, so the
        // audit is told each row as the DDL left it.
        "rewrite" => "BEGIN;
             ALTER TABLE item ALTER COLUMN acct TYPE bigint USING acct + 1000;
             INSERT INTO oracle_audit (tbl, op, new) SELECT 'item', 'rewrite', oracle_row(to_jsonb(i)) FROM item i ORDER BY id;
             COMMIT;"
            .to_string(),
        // Every table out of the publication for a while (it stops
        // publishing deletes and truncates, so it publishes no table
        // whole), changed meanwhile: waly ends each table's history and
        // snapshots it when it is back. The audit's entries of the changes
        // made meanwhile are marked `out`, and it is told every row as the
        // snapshot will hold it (`republished`).
        "out of the publication" => {
            let fresh = m.next_key;
            m.next_key += 10;
            format!(
                "CREATE TEMP TABLE oracle_mark AS SELECT coalesce(max(n), 0) AS n FROM oracle_audit;
                 ALTER PUBLICATION waly SET (publish = 'insert, update');
                 UPDATE item SET qty = qty + 100 WHERE id % 5 = 0;
                 DELETE FROM item WHERE id % 23 = 1;
                 UPDATE acct SET name = 'while out' WHERE id % 11 = 4;
                 DELETE FROM acct WHERE id % 41 = 2;
                 UPDATE acct SET id = {fresh} WHERE id = (SELECT min(id) FROM acct WHERE id % 43 = 5);
                 INSERT INTO item (id, acct, qty, {note}) SELECT g, 1, 1, 'while out' FROM generate_series({first}, {last}) g;
                 ALTER PUBLICATION waly SET (publish = 'insert, update, delete, truncate');
                 UPDATE oracle_audit SET op = 'out ' || op WHERE n > (SELECT n FROM oracle_mark);
                 INSERT INTO oracle_audit (tbl, op, new) SELECT 'acct', 'republished', oracle_row(to_jsonb(a)) FROM ONLY acct a ORDER BY id;
                 INSERT INTO oracle_audit (tbl, op, new) SELECT 'item', 'republished', oracle_row(to_jsonb(i)) FROM item i ORDER BY id;",
                note = m.item_note,
                first = fresh + 1,
                last = fresh + 9,
            )
        }
        // item made unlogged for a bulk load (allowed under the oracle's
        // `FOR ALL TABLES`), then logged again: PostgreSQL streams none of
        // its changes meanwhile, so waly ends its history at `SET
        // UNLOGGED` and snapshots it at `SET LOGGED`. As for "out of the
        // publication", the audit's entries meanwhile are marked `out`
        // and it is told every row as the snapshot holds it.
        "unlogged for a bulk load" => {
            let fresh = m.next_key;
            m.next_key += 50;
            format!(
                "CREATE TEMP TABLE oracle_mark AS SELECT coalesce(max(n), 0) AS n FROM oracle_audit;
                 ALTER TABLE item SET UNLOGGED;
                 INSERT INTO item (id, acct, qty, {note}) SELECT g, g % 300 + 1, 3, 'bulk ' || g FROM generate_series({fresh}, {last}) g;
                 UPDATE item SET qty = qty + 1 WHERE id % 13 = 2;
                 DELETE FROM item WHERE id % 29 = 3;
                 ALTER TABLE item SET LOGGED;
                 UPDATE oracle_audit SET op = 'out ' || op WHERE n > (SELECT n FROM oracle_mark);
                 INSERT INTO oracle_audit (tbl, op, new) SELECT 'item', 'republished', oracle_row(to_jsonb(i)) FROM item i ORDER BY id;",
                note = m.item_note,
                last = fresh + 49,
            )
        }
        // item moved to another schema, changed there, and moved back:
        // waly ends its history at the first move (its rows are
        // side.item's meanwhile) and snapshots it when it is back. As for
        // "out of the publication", the audit's entries meanwhile are
        // marked `out` and it is told every row as the snapshot holds it.
        "moved to another schema and back" => {
            let fresh = m.next_key;
            m.next_key += 10;
            format!(
                "CREATE TEMP TABLE oracle_mark AS SELECT coalesce(max(n), 0) AS n FROM oracle_audit;
                 CREATE SCHEMA side;
                 ALTER TABLE item SET SCHEMA side;
                 UPDATE side.item SET qty = qty + 7 WHERE id % 11 = 6;
                 DELETE FROM side.item WHERE id % 31 = 4;
                 INSERT INTO side.item (id, acct, qty, {note}) SELECT g, 2, 2, 'aside' FROM generate_series({fresh}, {last}) g;
                 ALTER TABLE side.item SET SCHEMA public;
                 UPDATE oracle_audit SET op = 'out ' || op WHERE n > (SELECT n FROM oracle_mark);
                 INSERT INTO oracle_audit (tbl, op, new) SELECT 'item', 'republished', oracle_row(to_jsonb(i)) FROM item i ORDER BY id;",
                note = m.item_note,
                last = fresh + 9,
            )
        }
        // item swapped for a copy made beside it (a common way to rebuild
        // a table): the copy renamed onto item and the old one dropped in
        // one transaction. item's history ends there and goes on from the
        // snapshot of the copy: as for "out of the publication", the audit
        // is told that the swap touched every row of item (an `out` entry
        // each), then the copy's rows as that snapshot holds them (the
        // copy's own fill is not item's history).
        "swapped for a copy" => {
            format!(
                "CREATE TEMP TABLE oracle_mark AS SELECT coalesce(max(n), 0) AS n FROM oracle_audit;
                 INSERT INTO oracle_audit (tbl, op, old) SELECT 'item', 'swapped', oracle_row(to_jsonb(i)) FROM item i ORDER BY id;
                 CREATE TABLE item_copy (LIKE item INCLUDING ALL);
                 INSERT INTO item_copy (id, acct, qty, {note}) SELECT id, acct, qty, {note} || ' copied' FROM item WHERE id % 19 <> 5;
                 BEGIN;
                 ALTER TABLE item RENAME TO item_old;
                 ALTER TABLE item_copy RENAME TO item;
                 DROP TABLE item_old;
                 CREATE TRIGGER oracle_row AFTER INSERT OR UPDATE OR DELETE ON item FOR EACH ROW EXECUTE FUNCTION oracle_audit('item');
                 CREATE TRIGGER oracle_truncate AFTER TRUNCATE ON item FOR EACH STATEMENT EXECUTE FUNCTION oracle_audit('item');
                 COMMIT;
                 UPDATE oracle_audit SET op = 'out ' || op WHERE n > (SELECT n FROM oracle_mark);
                 INSERT INTO oracle_audit (tbl, op, new) SELECT 'item', 'republished', oracle_row(to_jsonb(i)) FROM item i ORDER BY id;",
                note = m.item_note,
            )
        }
        // item published with a replica identity index for a while, then
        // by its primary key again: meanwhile PostgreSQL sends only the
        // index's old values (no old row when they did not change), which
        // every reader follows rows by; waly snapshots item at each
        // switch. Changes meanwhile: updates, one of the index's columns
        // changed, deletes, a primary key changed.
        "replica identity index and back" => {
            let fresh = m.next_key;
            m.next_key += 1;
            format!(
                "CREATE UNIQUE INDEX item_ident ON item (id, acct);
                 ALTER TABLE item ALTER COLUMN acct SET NOT NULL, REPLICA IDENTITY USING INDEX item_ident;
                 UPDATE item SET qty = qty + 3 WHERE id % 7 = 1;
                 UPDATE item SET acct = acct + 1 WHERE id % 11 = 3;
                 DELETE FROM item WHERE id % 17 = 4;
                 UPDATE item SET id = {fresh} WHERE id = (SELECT min(id) FROM item WHERE id % 19 = 6);
                 ALTER TABLE item REPLICA IDENTITY DEFAULT;"
            )
        }
        // A table inheriting from acct (plain inheritance): a table of its
        // own in the stream and the archive, whose rows acct's statements
        // (updates, deletes, truncates) reach too, and acct's column
        // migrations with their defaults, if still pending. acct's own rows
        // are checked without it (`ONLY`); verify --against-source checks
        // it at the end. Created in a transaction of its own, before its
        // rows: archived from its creation, not from a snapshot.
        "an heir" => "BEGIN;
             CREATE TABLE acct_vip (perk text DEFAULT 'lounge') INHERITS (acct);
             ALTER TABLE acct_vip ADD PRIMARY KEY (id);
             COMMIT;
             INSERT INTO acct_vip (id, name, email, big) SELECT g, 'vip ' || g, 'v' || g || '@x',
                    CASE WHEN g % 5 = 0 THEN repeat('vip', 2000) END FROM generate_series(90001, 90030) g;"
            .to_string(),
        // An enum column on item (existing rows take the default without a
        // change in the stream); later one of its labels is renamed.
        "an enum" => {
            m.item_mood = 1;
            m.migrations.push("an enum label renamed");
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             ALTER TABLE item ADD COLUMN mood mood DEFAULT 'sad';
             UPDATE item SET mood = 'ok' WHERE id % 3 = 0;"
                .to_string()
        }
        // A label added (values read as before: a schema version, no
        // snapshot), then one renamed: every value written with it, in the
        // archive, now reads as the new label, with no change in the
        // stream, so waly snapshots item again. As for "rewrite", the
        // audit is told each row the rename changed, as it left it (a row
        // the snapshot finds unchanged is no new version in history). A checkpoint
        // before it cannot be restored into the database (its type refuses
        // the old label): its check restores it to a file instead.
        "an enum label renamed" => {
            m.item_mood = 2;
            "ALTER TYPE mood ADD VALUE 'gold';
             BEGIN;
             ALTER TYPE mood RENAME VALUE 'sad' TO 'blue';
             INSERT INTO oracle_audit (tbl, op, new) SELECT 'item', 'rewrite', oracle_row(to_jsonb(i)) FROM item i
              WHERE mood = 'blue' ORDER BY id;
             COMMIT;"
                .to_string()
        }
        // item's generated column computed by a new expression (PostgreSQL
        // 17 and later; nothing before): every row's value changes with no
        // change in the stream, so waly snapshots item again. As for "an
        // enum label renamed", the audit is told each row it changed.
        "a new generation expression" => format!(
            "DO $$
             BEGIN
                 IF current_setting('server_version_num')::int >= 170000 THEN
                     EXECUTE 'ALTER TABLE item ALTER COLUMN note_len SET EXPRESSION AS (length({note}) * 2)';
                     INSERT INTO oracle_audit (tbl, op, new) SELECT 'item', 'rewrite', oracle_row(to_jsonb(i)) FROM item i
                      WHERE note_len IS DISTINCT FROM length({note}) ORDER BY id;
                 END IF;
             END $$;",
            note = m.item_note
        ),
        // February's partition detached, changed on its own while ev
        // changes too, and attached again: each moves rows in or out of ev
        // without a change in the stream (waly snapshots ev after each).
        // Under the oracle's publication (`FOR ALL TABLES`, through the
        // partition root) ev_2 is a table of its own in between: waly
        // snapshots it at the detach, and its history ends when it is
        // attached again.
        "detach and attach" => {
            let fresh = m.next_key;
            m.next_key += 1;
            return Step::DetachAttach {
                detach: "ALTER TABLE ev DETACH PARTITION ev_2;
                         UPDATE ev_2 SET v = v || ' detached' WHERE id % 3 = 0;"
                    .to_string(),
                attach: format!(
                    "DELETE FROM ev_2 WHERE id % 7 = 1;
                     INSERT INTO ev VALUES ({fresh}, '2026-01-10', 'while detached');
                     ALTER TABLE ev ATTACH PARTITION ev_2 FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
                     UPDATE ev SET v = v || ' back' WHERE id % 4 = 1 AND at >= '2026-02-01' AND at < '2026-03-01';"
                ),
            };
        }
        // Another key: restores across it rebuild the rows under the new
        // one, and updates of `v` then change keys.
        "primary key" => "ALTER TABLE ev DROP CONSTRAINT ev_pkey, ADD PRIMARY KEY (id, at, v)".to_string(),
        _ => "CREATE TABLE ev_3 PARTITION OF ev FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
              INSERT INTO ev VALUES (5000, '2026-03-02', 'march')"
            .to_string(),
    };
    Step::Sql { what: which, sql }
}

fn workload(r: &mut Rng, m: &mut Model) -> Step {
    let k = 1 + r.below(400);
    let modulo = 7 + r.below(30);
    let rest = r.below(modulo);
    let note = m.item_note;
    let (what, sql) = match r.below(13) {
        0 => {
            let first = m.next_key;
            m.next_key += 20;
            (
                "insert",
                format!(
                    "INSERT INTO acct (id, name, email, big) SELECT g, 'new ' || g, CASE WHEN g % 2 = 0 THEN '' END,
                            CASE WHEN g % 4 = 0 THEN repeat('b', 5000) END
                       FROM generate_series({first}, {}) g",
                    first + 19
                ),
            )
        }
        1 => (
            // Leaves the TOASTed `big` alone.
            "update",
            format!("UPDATE acct SET name = 'n{rest}.' || id WHERE id % {modulo} = {rest}"),
        ),
        2 => {
            let fresh = m.next_key;
            m.next_key += 1;
            // A row with a TOASTed value keeps it unchanged: PostgreSQL sends
            // neither it nor the old row, and readers find it under the old key.
            // Half the time a row that started with one (every tenth).
            let k = if k.is_multiple_of(2) { k.div_ceil(10) * 10 } else { k };
            (
                "key change",
                format!("UPDATE acct SET id = {fresh}, name = 'moved' WHERE id = {k}"),
            )
        }
        3 => (
            "NULL versus empty string",
            format!(
                "UPDATE acct SET email = CASE WHEN email IS NULL THEN '' WHEN email = '' THEN NULL ELSE email END
                  WHERE id % {modulo} = {rest}"
            ),
        ),
        4 => ("no-op update", format!("UPDATE acct SET name = name WHERE id = {k}")),
        5 => ("delete", format!("DELETE FROM item WHERE id % {modulo} = {rest}")),
        6 if r.chance(20) => ("truncate", "TRUNCATE item".to_string()),
        6 | 7 => {
            let first = m.next_key;
            m.next_key += 5;
            (
                "transaction over several tables",
                format!(
                    "BEGIN;
                     INSERT INTO item (id, acct, qty, {note}) SELECT g, {k}, 1, 'txn' FROM generate_series({first}, {}) g;
                     UPDATE acct SET name = name || '+' WHERE id = {k};
                     UPDATE ev SET v = v || '+' WHERE id = {k};
                     COMMIT;",
                    first + 4
                ),
            )
        }
        8 => (
            "savepoint rolled back",
            format!(
                "BEGIN;
                 UPDATE item SET qty = qty + 1, price = ((qty - 8) * 1234.567)::numeric::money WHERE id % {modulo} = {rest};
                 SAVEPOINT s;
                 DELETE FROM acct WHERE id % {modulo} = {rest};
                 UPDATE item SET {note} = 'never' WHERE id % {modulo} = {rest};
                 ROLLBACK TO SAVEPOINT s;
                 UPDATE acct SET name = name || '~' WHERE id = {k};
                 COMMIT;"
            ),
        ),
        9 => (
            "intent",
            format!(
                "BEGIN;
                 SET LOCAL oracle.intent = 'REFUND {k}';
                 SELECT pg_logical_emit_message(true, 'waly', 'REFUND {k}');
                 UPDATE acct SET name = 'refunded' WHERE id = {k};
                 COMMIT;"
            ),
        ),
        10 => (
            "update a large value",
            format!("UPDATE acct SET big = repeat('z', 4000) || id WHERE id % {modulo} = {rest}"),
        ),
        11 => {
            let day = r.below(58);
            (
                "partitioned table",
                format!(
                    "INSERT INTO ev VALUES ({k} + 1000, date '2026-01-01' + {day}, 'e') ON CONFLICT DO NOTHING;
                     UPDATE ev SET at = date '2026-01-01' + {day} WHERE id = {k};
                     DELETE FROM ev WHERE id % {modulo} = {rest} AND id > 150"
                ),
            )
        }
        _ => {
            let set = match (m.acct_n, m.acct_tier) {
                (true, true) => "n = n + 1, tier = 'pro'",
                (true, false) => "n = n + 1",
                (false, true) => "tier = 'pro'",
                (false, false) => "name = name || '*'",
            };
            let mood = match m.item_mood {
                0 => "",
                1 => ", mood = 'happy'",
                _ => ", mood = 'gold'",
            };
            (
                "update the migrated columns",
                format!(
                    "UPDATE acct SET {set} WHERE id % {modulo} = {rest}; UPDATE item SET {note} = {note} || '!', qty = qty + 1{mood} WHERE id = {k}"
                ),
            )
        }
    };
    Step::Sql { what, sql }
}
