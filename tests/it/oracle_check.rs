//! The oracle test: the database itself is the oracle. A run from
//! `oracle_gen` plays against a PostgreSQL of its own while `waly run`
//! captures it; an audit trigger logs every row change (with its intent)
//! into an UNLOGGED table waly never sees, and checkpoints record each
//! table's state at random moments. Afterwards every reader is checked
//! against that record: `restore` of every table at every checkpoint, `show
//! --key`, `history` of keys against the audit's sequence of versions,
//! `log` counts, order and duplicates, `tables` and `schema`, `verify`
//! (clean, and tampering found on a copy) and `verify --against-source`.
//! After the prune step the archive starts at a later snapshot: history,
//! log and the audit are compared from there, and a checkpoint before it
//! may be refused ("before the archive's history"), never restored wrong.
//!
//! `cargo test --test it oracle` runs the fixed seeds; `WALY_ORACLE_SEED=N`
//! replays one; `WALY_ORACLE_SEEDS=N WALY_ORACLE_FIRST=F` runs N from F
//! (bench/oracle.sh). A disagreement names the seed, the reader, the point,
//! the key, expected and got.

use crate::archive::{archive_dir, slot, spawn_run, wait_confirmed, wait_streaming};
use crate::harness::{owned_cluster, run_within, waly, Cluster, Running, TestDb};
use crate::oracle_gen::{generate, Rng, Size, Step, SETUP, TABLES};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The audit, and what makes it: UNLOGGED, so never published.
const AUDIT: &str = "
CREATE UNLOGGED TABLE oracle_audit (n bigserial, tbl text, op text, old jsonb, new jsonb, intent text,
                                    lsn pg_lsn DEFAULT pg_current_wal_insert_lsn());
CREATE FUNCTION oracle_row(r jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS
  $$ SELECT jsonb_object_agg(key, value #>> '{}') FROM jsonb_each(r) $$;
CREATE FUNCTION oracle_audit() RETURNS trigger LANGUAGE plpgsql SET lc_monetary = 'C' AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        INSERT INTO oracle_audit (tbl, op, intent)
        VALUES (TG_ARGV[0], 'truncate', nullif(current_setting('oracle.intent', true), ''));
        RETURN NULL;
    END IF;
    INSERT INTO oracle_audit (tbl, op, old, new, intent) VALUES (TG_ARGV[0], lower(TG_OP),
        CASE WHEN TG_OP <> 'INSERT' THEN oracle_row(to_jsonb(OLD)) END,
        CASE WHEN TG_OP <> 'DELETE' THEN oracle_row(to_jsonb(NEW)) END,
        nullif(current_setting('oracle.intent', true), ''));
    RETURN NULL;
END $$;
";

/// What one run found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The steps played, by name.
    pub steps: Vec<&'static str>,
    pub operations: u64,
    pub checks: u64,
    pub disagreements: Vec<String>,
}

impl Outcome {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.disagreements.push(what());
        }
    }
}

/// A checkpoint: when, and each table's rows and columns then.
struct Checkpoint {
    at: String,
    /// Taken before a prune deleted what came before the archive's new
    /// start: a restore at it may be refused (never wrong).
    before_prune: bool,
    /// Taken before an enum label was renamed: a restore at it into the
    /// database may be refused (restored to a file instead, never wrong).
    before_label_rename: bool,
    /// Each table's [`plain_state`], for a restore checked as text.
    plain: BTreeMap<&'static str, (String, String)>,
    state: BTreeMap<&'static str, (String, String)>,
    /// A few rows by key, for `show --key`: (table, key as given, row).
    rows: Vec<(&'static str, String, Value)>,
}

/// Rows (count and md5) and columns of a table, as the source has them.
fn table_state(db: &TestDb, table: &str) -> (String, String) {
    crate::schemas::state(db, table)
}

/// Up to three rows of `want` missing from `got` and three the other way,
/// each cut to 300 characters.
fn row_diff(db: &TestDb, want: &str, got: &str) -> String {
    let (want, got) = (crate::schemas::own_rows(db, want), crate::schemas::own_rows(db, got));
    let side = |label: &str, a: &str, b: &str| {
        format!(
            "(SELECT '{label} ' || left(r::text, 300) FROM (SELECT oracle_row(to_jsonb(x)) r FROM {a} x
                EXCEPT ALL SELECT oracle_row(to_jsonb(y)) FROM {b} y) d LIMIT 3)"
        )
    };
    db.psql(&format!(
        "{} UNION ALL {}",
        side("missing", &want, &got),
        side("extra", &got, &want)
    ))
}

fn checkpoint(db: &TestDb, r: &mut Rng) -> Checkpoint {
    std::thread::sleep(Duration::from_millis(20));
    let at = db.now_utc();
    let (mut state, mut plain) = (BTreeMap::new(), BTreeMap::new());
    for t in TABLES {
        state.insert(t, table_state(db, t));
        plain.insert(t, plain_state(db, t));
    }
    let mut rows = Vec::new();
    // One row of one table: `show --key` reads as much as a restore.
    // Its key is named column by column, as the table's primary key is now.
    let t = TABLES[r.below(3) as usize];
    {
        let key = format!(
            "(SELECT string_agg(a.attname || '=' || (to_jsonb(x) ->> a.attname::text), ','
                                ORDER BY array_position(i.indkey::int2[], a.attnum))
                FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
               WHERE i.indrelid = '{t}'::regclass AND i.indisprimary)"
        );
        let found = db.psql(&format!(
            "SELECT {key} || E'\\t' || oracle_row(to_jsonb(x))::text FROM {} x ORDER BY id OFFSET {} LIMIT 1",
            crate::schemas::own_rows(db, t),
            r.below(150)
        ));
        for line in found.lines() {
            if let Some((k, row)) = line.split_once('\t') {
                rows.push((t, k.to_string(), serde_json::from_str(row).unwrap_or(Value::Null)));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    Checkpoint {
        at,
        before_prune: false,
        before_label_rename: false,
        plain,
        state,
        rows,
    }
}

fn spawn(db: &TestDb, archive: &str) -> Running {
    let run = spawn_run(db, archive);
    wait_streaming(db, &run);
    run
}

/// Waits until the sidecar has archived everything committed so far;
/// fails with its log if it does not within two minutes.
fn caught_up(db: &TestDb, run: &Running, when: &str) {
    let end = db.current_lsn();
    let q = format!(
        "SELECT confirmed_flush_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = '{}'",
        slot(db)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while db.psql(&q) != "t" {
        assert!(
            std::time::Instant::now() < deadline,
            "waly run did not catch up {when} (to {end}):\n{}",
            run.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

thread_local! {
    /// The identity readers use when the seed's archive is encrypted.
    static IDENTITY: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A reader or maintenance command (with the identity of an encrypted
/// archive; `waly run` is started elsewhere, never with one).
fn waly_out(args: &[&str]) -> std::process::Output {
    let mut c = waly();
    if let Some(id) = IDENTITY.with(|i| i.borrow().clone()) {
        c.env("WALY_IDENTITY", id);
    }
    run_within(c.args(args), 300)
}

/// Even seeds archive encrypted (age); odd ones in plaintext.
fn encrypted(seed: u64) -> bool {
    seed.is_multiple_of(2)
}

/// The server's settings for `seed`: every third seed's server prints
/// values in other styles than the defaults (dates day first, as
/// `SQL`; intervals as the SQL standard; floats rounded; bytea as
/// escapes; `money` as German does, `-1.234,57 €`; another time zone),
/// which waly's readings must not depend on.
fn server_settings(seed: u64) -> &'static [&'static str] {
    match seed % 3 {
        1 => &[
            "datestyle=SQL, DMY",
            "intervalstyle=sql_standard",
            "extra_float_digits=0",
            "bytea_output=escape",
            "lc_monetary=de_DE.UTF-8",
            "timezone=Pacific/Chatham",
        ],
        _ => &[],
    }
}

/// Whether `seed`'s cluster has a synchronous standby that confirms only
/// every second (one seed in five): each commit is then decoded up to a
/// second before other sessions see it, and every decision `waly run`
/// takes from the catalog meets a transaction not yet visible.
fn slow_standby(seed: u64) -> bool {
    seed % 5 == 3
}

/// The cluster for `seed`, with [`server_settings`]. Where the server
/// prints `money` in German (its locale made for it), the oracle's own
/// sessions print it as `C` does, the form the audit records and waly
/// archives: only waly's sessions meet the server's default.
fn start_cluster(seed: u64) -> Cluster {
    let settings = server_settings(seed);
    if !settings.iter().any(|s| s.starts_with("lc_monetary=")) {
        return Cluster::start(settings);
    }
    let locales = crate::harness::german_locale();
    let mut c = Cluster::start_env(settings, &[("LOCPATH", &locales)]);
    c.psql_options = Some("-c lc_monetary=C".to_string());
    c
}

/// A new identity file in `dir`: (path, recipient).
fn new_identity(dir: &str, name: &str) -> (String, String) {
    let path = format!("{dir}-{name}.key");
    let _ = std::fs::remove_file(&path);
    let o = run_within(waly().args(["keygen", "-o", &path]), 30);
    assert!(o.status.success(), "keygen: {}", stderr(&o));
    let text = std::fs::read_to_string(&path).expect("identity");
    let r = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("recipient")
        .to_string();
    (path, r)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Plays one seed and checks every reader; the cluster is its own.
pub fn run_seed(seed: u64, size: Size) -> Outcome {
    let cluster: &'static Cluster = Box::leak(Box::new(start_cluster(seed)));
    match std::panic::catch_unwind(|| play_seed(seed, size, cluster)) {
        Ok(out) => out,
        Err(panic) => {
            // A seed that stops (a restart that timed out, a writer that
            // never streamed) takes its cluster and the server's log with
            // it: keep the log, and show its end beside the panic.
            let kept = std::env::temp_dir().join(format!("waly-oracle-seed-{seed}-{}.log", crate::harness::run_id()));
            let tail = cluster.keep_log(&kept, 60);
            let plan: Vec<&str> = generate(seed, size, encrypted(seed)).iter().map(|s| s.name()).collect();
            eprintln!(
                "oracle seed {seed} stopped; its plan: {}\nthe server's log is kept in {}; its end:\n{tail}",
                plan.join(", "),
                kept.display()
            );
            std::panic::resume_unwind(panic)
        }
    }
}

fn play_seed(seed: u64, size: Size, cluster: &'static Cluster) -> Outcome {
    let db = TestDb::on(cluster);
    let mut out = Outcome::default();
    db.psql(SETUP);
    db.psql(AUDIT);
    for t in TABLES {
        db.psql(&format!(
            "CREATE TRIGGER oracle_row AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION oracle_audit('{t}');
             CREATE TRIGGER oracle_truncate AFTER TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION oracle_audit('{t}');"
        ));
    }
    let standby = slow_standby(seed).then(|| crate::harness::SlowStandby::start(&db, 1));
    let archive = archive_dir(&db);
    let enc = encrypted(seed);
    let mut init_args = vec![
        "init".to_string(),
        "--source".into(),
        db.url(),
        "--archive".into(),
        archive.clone(),
        "--slot".into(),
        slot(&db),
    ];
    IDENTITY.with(|i| *i.borrow_mut() = None);
    if enc {
        let (path, r) = new_identity(&archive, "first");
        init_args.extend(["--encrypt".to_string(), format!("age:{r}")]);
        IDENTITY.with(|i| *i.borrow_mut() = Some(path));
    }
    let init_args: Vec<&str> = init_args.iter().map(String::as_str).collect();
    let init = waly_out(&init_args);
    if enc {
        let marked = std::fs::read_to_string(std::path::Path::new(&archive).join("waly.json")).unwrap_or_default();
        assert!(
            marked.contains("\"encryption\": \"age\""),
            "the archive is not marked encrypted: {marked}"
        );
    }
    assert!(init.status.success(), "init: {}", stderr(&init));
    let mut run = spawn(&db, &archive);
    // What the snapshot holds is not in the audit: the audit starts here.
    db.psql("TRUNCATE oracle_audit");
    let started = std::time::Instant::now();
    let mut r = Rng::new(seed ^ 0x5eed);
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let mut copies = 0;
    for step in generate(seed, size, enc) {
        out.operations += 1;
        out.steps.push(step.name());
        match step {
            Step::Sql { what, sql } => {
                db.psql(&sql);
                if what == "an enum label renamed" {
                    for c in &mut checkpoints {
                        c.before_label_rename = true;
                    }
                }
                // PostgreSQL 16 and later do not send, when they decode a
                // transaction again after a restart, the values of a column
                // dropped or retyped since, which waly then archives as
                // unknown (schemas.rs tests that); no reader can agree with
                // the database on them. So the changes before such a
                // migration are confirmed before anything restarts.
                // So are those before a table leaves the publication (or
                // is made unlogged), and later changes come after the
                // snapshot taken when it is back (which holds what the
                // audit says it does).
                if matches!(
                    what,
                    "drop column"
                        | "retype"
                        | "rewrite"
                        | "out of the publication"
                        | "unlogged for a bulk load"
                        | "moved to another schema and back"
                        | "swapped for a copy"
                ) {
                    caught_up(&db, &run, &format!("after the migration \"{what}\""));
                }
            }
            Step::DetachAttach { detach, attach } => {
                // waly snapshots the detached partition as a table of its
                // own, and ev, before it is attached again; later changes
                // come after the snapshot of ev taken then.
                db.psql(&detach);
                caught_up(&db, &run, "after a partition was detached");
                // Detached, ev_2 restores as it is.
                copies += 1;
                restore_into_source_now(seed, &db, &archive, "ev_2", copies, &mut out);
                db.psql(&attach);
                caught_up(&db, &run, "after a partition was attached");
                // Attached, its rows are ev's: never ev_2's of before.
                let o = waly_out(&["restore", "ev_2", "--archive", &archive, "--at", "now", "--output", "-"]);
                out.check(
                    !o.status.success() && stderr(&o).contains("became a partition published through its root"),
                    || format!("seed {seed}: restore ev_2 --at now once attached again: {}", stderr(&o)),
                );
            }
            Step::Checkpoint => {
                checkpoints.push(checkpoint(&db, &mut r));
                // An export kept from the first checkpoint on, continued at
                // the end: a prune between may delete changes it had not
                // read yet.
                if checkpoints.len() == 1 {
                    let o = waly_out(&["export", "--archive", &archive, "--to", &kept_export(&archive)]);
                    assert!(o.status.success(), "export: {}", stderr(&o));
                }
            }
            Step::KillRestart => {
                let _ = run.child.kill(); // SIGKILL: no flush
                let _ = run.child.wait();
                run = spawn(&db, &archive);
            }
            Step::PgRestart => cluster.restart("fast"),
            Step::Down { steps, .. } => {
                let _ = run.child.kill();
                let _ = run.child.wait();
                for s in steps {
                    if let Step::Sql { sql, .. } = s {
                        db.psql(&sql);
                    }
                }
                run = spawn(&db, &archive);
            }
            Step::Compact => {
                let o = waly_out(&["compact", "--archive", &archive]);
                assert!(o.status.success(), "compact: {}", stderr(&o));
            }
            Step::Prune => {
                // History from the archive's start as it is now, before
                // the prune moves the start (it may come late in a run).
                caught_up(&db, &run, "before a prune");
                check_history(seed, &db, &archive, &mut r, &mut out);
                let o = waly_out(&["compact", "--archive", &archive]);
                assert!(o.status.success(), "compact before prune: {}", stderr(&o));
                std::thread::sleep(Duration::from_millis(1500));
                let before = archive_start(&archive);
                let o = waly_out(&["prune", "--archive", &archive, "--keep", "1s"]);
                assert!(o.status.success(), "prune: {}", stderr(&o));
                let after = archive_start(&archive);
                out.check(after > before, || {
                    format!("seed {seed}: prune --keep 1s after a compact deleted nothing (the archive starts at {after:?})")
                });
                for c in &mut checkpoints {
                    c.before_prune = true;
                }
            }
            Step::Reindex => {
                let o = waly_out(&["reindex", "--archive", &archive]);
                assert!(o.status.success(), "reindex: {}", stderr(&o));
            }
            Step::RotateKeys => {
                let (second, r) = new_identity(&archive, "second");
                let o = waly_out(&["keys", "add-recipient", &r, "--archive", &archive]);
                assert!(o.status.success(), "keys add-recipient: {}", stderr(&o));
                let o = waly_out(&["keys", "rotate", "--archive", &archive]);
                assert!(o.status.success(), "keys rotate: {}", stderr(&o));
                // From here on the second identity reads everything.
                IDENTITY.with(|i| *i.borrow_mut() = Some(second));
            }
            Step::Quiet => {
                let segments = || {
                    crate::archive::files_under(&archive, "generations")
                        .iter()
                        .filter(|f| f.contains("/segments/"))
                        .count()
                };
                caught_up(&db, &run, "before a quiet period");
                let before = segments();
                db.psql(
                    "CREATE TEMP TABLE oracle_quiet (x int); INSERT INTO oracle_quiet VALUES (1);
                     SELECT pg_switch_wal(); CHECKPOINT;",
                );
                // The sidecar marks an idle position (a record-less segment)
                // at the first keepalive 10 s after its last segment.
                let deadline = std::time::Instant::now() + Duration::from_secs(90);
                while segments() == before && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(500));
                }
                out.check(segments() > before, || {
                    format!("seed {seed}: no idle heartbeat segment within 90 s of a quiet period")
                });
                let o = waly_out(&["reindex", "--archive", &archive]);
                out.check(o.status.success(), || {
                    format!("seed {seed}: reindex after a quiet period: {}", stderr(&o))
                });
            }
            Step::Takeover => {
                let standby = spawn_run(&db, &archive);
                std::thread::sleep(Duration::from_millis(500));
                let _ = run.child.kill();
                let _ = run.child.wait();
                wait_streaming(&db, &standby);
                run = standby;
            }
            Step::Outage { sql } => {
                let frozen = crate::harness::freeze(&archive, true);
                db.psql(&sql);
                std::thread::sleep(Duration::from_secs(3));
                assert!(crate::harness::freeze(&archive, false), "the archive stays unwritable");
                // Capture resumes by itself once the archive is writable.
                caught_up(&db, &run, "after the outage");
                if !frozen {
                    eprintln!("oracle seed {seed}: this filesystem cannot make the archive unwritable; the outage step only ran its SQL");
                }
            }
            Step::RestoreIntoSource { table } => {
                caught_up(&db, &run, "before a restore into the source");
                copies += 1;
                restore_into_source_now(seed, &db, &archive, table, copies, &mut out);
            }
        }
    }
    wait_confirmed(&db, 180);
    eprintln!(
        "oracle seed {seed}: the steps took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let (status, err) = run.terminate(60);
    assert!(status.success(), "waly run: {err}");
    let mut phase = std::time::Instant::now();
    let mut counted = out.checks;
    let mut timed = |name: &str, checks: u64| {
        eprintln!(
            "oracle seed {seed}: {name} took {:.1}s ({} checks)",
            phase.elapsed().as_secs_f64(),
            checks - counted
        );
        phase = std::time::Instant::now();
        counted = checks;
    };
    timed("the run", out.checks);
    check_restores(seed, &db, &archive, &checkpoints, &mut out);
    timed("restores", out.checks);
    check_show(seed, &archive, &checkpoints, &mut out);
    timed("show --key", out.checks);
    check_history(seed, &db, &archive, &mut r, &mut out);
    check_log(seed, &db, &archive, &mut out);
    check_catalog(seed, &archive, &mut out);
    timed("history, log, tables, schema", out.checks);
    check_verify(seed, &db, &archive, &mut out);
    timed("verify", out.checks);
    check_export(seed, &db, &archive, &mut out);
    timed("export", out.checks);
    if std::env::var_os("WALY_ORACLE_KEEP").is_some() {
        eprintln!("oracle seed {seed}: the archive is kept in {archive}");
    } else {
        let _ = std::fs::remove_dir_all(&archive);
    }
    drop(standby);
    drop(db);
    cluster.stop();
    out
}

/// The LSN of the archive's oldest snapshot: where its history starts
/// (snapshot directories are named by LSN, docs/FORMAT.md).
/// `waly restore TABLE --at now` into the source database (as copy number
/// `copy`) gives the table's rows there now.
fn restore_into_source_now(seed: u64, db: &TestDb, archive: &str, table: &str, copy: usize, out: &mut Outcome) {
    let into = format!("oracle_copy_{copy}");
    let o = waly_out(&[
        "restore",
        table,
        "--archive",
        archive,
        "--source",
        &db.url(),
        "--at",
        "now",
        "--into",
        &into,
    ]);
    out.check(o.status.success(), || {
        format!("seed {seed}: restore {table} --at now into the source: {}", stderr(&o))
    });
    if !o.status.success() {
        return;
    }
    let (want, got) = (table_state(db, table).0, table_state(db, &into).0);
    out.check(want == got, || {
        format!(
            "seed {seed}: restore {table} --at now into the source: expected {want}, got {got}\n{}",
            row_diff(db, table, &into)
        )
    });
}

fn archive_start(archive: &str) -> Option<u64> {
    let gens = std::fs::read_dir(format!("{archive}/generations")).ok()?;
    gens.flatten()
        .filter_map(|g| std::fs::read_dir(g.path().join("snapshots")).ok())
        .flat_map(|d| d.flatten())
        .filter_map(|s| u64::from_str_radix(&s.file_name().to_string_lossy(), 16).ok())
        .min()
}

/// A restore or show at a point before a prune's new start: refused, and
/// saying so.
fn refused_as_pruned(o: &std::process::Output) -> bool {
    !o.status.success() && stderr(o).contains("before the archive's history")
}

fn check_restores(seed: u64, db: &TestDb, archive: &str, checkpoints: &[Checkpoint], out: &mut Outcome) {
    for (i, c) in checkpoints.iter().enumerate() {
        for (t, want) in &c.state {
            let into = format!("oracle_r_{t}_{i}");
            let o = waly_out(&[
                "restore",
                t,
                "--archive",
                archive,
                "--source",
                &db.url(),
                "--at",
                &c.at,
                "--into",
                &into,
            ]);
            if c.before_prune && refused_as_pruned(&o) {
                out.checks += 1;
                continue;
            }
            // A point before an enum label's rename cannot be restored into
            // the database, whose type refuses the old label (RESTORE.md):
            // it is restored to a file, and checked as text.
            let refused_label = c.before_label_rename && stderr(&o).contains("invalid input value for enum");
            if refused_label {
                let want = &c.plain[t];
                let got = restored_as_text(db, archive, t, &c.at, &into);
                out.check(
                    got.as_ref().is_ok_and(|g| g == want),
                    || {
                        format!(
                            "seed {seed}: restore {t} at checkpoint {i} ({}) as CSV (the database refused it: {}):\n  expected {want:?}\n  got      {got:?}",
                            c.at,
                            stderr(&o)
                        )
                    },
                );
                continue;
            }
            if !o.status.success() {
                out.check(false, || {
                    format!(
                        "seed {seed}: restore {t} at checkpoint {i} ({}): failed: {}",
                        c.at,
                        stderr(&o)
                    )
                });
                continue;
            }
            let got = table_state(db, &into);
            out.check(&got == want, || {
                format!(
                    "seed {seed}: restore {t} at checkpoint {i} ({}):\n  expected {want:?}\n  got      {got:?}",
                    c.at
                )
            });
            db.psql(&format!("DROP TABLE {into}"));
        }
    }
}

/// Row count and an md5 over the rows' text, and the column names, of a
/// table's own rows without its generated columns (which the database
/// computes; a restore to a file leaves them out): each row's text quotes
/// every value by its text alone, so a table of the same values as text
/// has the same sums. (Values must print as waly prints them: so only
/// for item, whose types print the same under every seed's settings.)
fn plain_state(db: &TestDb, table: &str) -> (String, String) {
    let columns = db.psql(&format!(
        "SELECT string_agg(quote_ident(attname), ',' ORDER BY attnum) FROM pg_attribute
          WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''"
    ));
    let sum = db.psql(&format!(
        "SELECT count(*) || ':' || coalesce(md5(string_agg(r, '|' ORDER BY r)), '-')
           FROM (SELECT ROW({columns})::text r FROM {} t) x",
        crate::schemas::own_rows(db, table)
    ));
    (sum, columns)
}

/// `waly restore TABLE --at AT --output - --format csv`, loaded into a new
/// table `into` whose columns are all text: its [`plain_state`].
fn restored_as_text(db: &TestDb, archive: &str, table: &str, at: &str, into: &str) -> Result<(String, String), String> {
    let o = waly_out(&[
        "restore",
        table,
        "--archive",
        archive,
        "--at",
        at,
        "--output",
        "-",
        "--format",
        "csv",
    ]);
    if !o.status.success() {
        return Err(stderr(&o));
    }
    let csv = stdout(&o);
    let header = csv.lines().next().unwrap_or_default();
    let columns: Vec<String> = header.split(',').map(|c| format!("{c} text")).collect();
    db.try_psql(&format!(
        "DROP TABLE IF EXISTS {into};
         CREATE TABLE {into} ({});
         COPY {into} FROM STDIN WITH (FORMAT csv, HEADER true);\n{}\n\\.\n",
        columns.join(", "),
        csv.trim_end_matches('\n')
    ))?;
    let state = plain_state(db, into);
    db.psql(&format!("DROP TABLE {into}"));
    Ok(state)
}

fn check_show(seed: u64, archive: &str, checkpoints: &[Checkpoint], out: &mut Outcome) {
    for (i, c) in checkpoints.iter().enumerate() {
        for (t, key, want) in &c.rows {
            let o = waly_out(&[
                "show",
                t,
                "--archive",
                archive,
                "--at",
                &c.at,
                "--key",
                key,
                "--format",
                "json",
            ]);
            if c.before_prune && refused_as_pruned(&o) {
                out.checks += 1;
                continue;
            }
            let got: Option<Value> = stdout(&o).lines().next().and_then(|l| serde_json::from_str(l).ok());
            out.check(o.status.success() && got.as_ref() == Some(want), || {
                format!(
                    "seed {seed}: show {t} --key {key} at checkpoint {i} ({}):\n  expected {want}\n  got      {}{}",
                    c.at,
                    got.map_or("nothing".to_string(), |g| g.to_string()),
                    stderr(&o)
                )
            });
        }
    }
}

/// The audit's rows of `table`, in order: (op, old, new, intent).
/// The audit's rows of `table` after `start` (the archive's oldest
/// snapshot: the oracle runs one transaction at a time, so a row written
/// before that LSN is in the snapshot, and one after it is not).
fn audit(db: &TestDb, table: &str, start: u64) -> Vec<(String, Value, Value, Value)> {
    db.psql(&format!(
        "SELECT json_build_array(op, old, new, intent)::text FROM oracle_audit
          WHERE tbl = '{table}' AND lsn > '{}' ORDER BY n",
        waly::Lsn(start)
    ))
    .lines()
    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    .map(|v| {
        (
            v[0].as_str().unwrap_or("").to_string(),
            v[1].clone(),
            v[2].clone(),
            v[3].clone(),
        )
    })
    .collect()
}

/// One version of a row as history shows it: op, new row (NULL when gone),
/// intent, and for an update the columns it changed (sorted).
type Version = (String, Value, Value, Vec<String>);

/// The columns whose values differ between two audited rows, sorted.
fn changed_columns(old: &Value, new: &Value) -> Vec<String> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = n
        .iter()
        .filter(|(k, v)| o.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k.clone())
        .collect();
    out.sort();
    out
}

/// The end of the audit's `republished` rows of a table back in the
/// publication (`back`: whether one was the followed row): a row a change
/// touched while it was out, and that the snapshot no longer holds, is gone.
fn republished(touched: &mut bool, back: &mut Option<bool>, exists: &mut bool, out: &mut Vec<Version>) {
    if back.take() == Some(false) && *touched && *exists {
        *exists = false;
        out.push(("snapshot".to_string(), Value::Null, Value::Null, Vec::new()));
    }
    *touched = false;
}

/// The versions history must show for `key` (after the snapshot), from the
/// audit: followed through key changes as waly follows them.
/// `existed`: whether the row was in the snapshot history starts from
/// (for a truncate before the row's first change after it).
fn expected_history(rows: &[(String, Value, Value, Value)], key: &str, existed: bool) -> Vec<Version> {
    let mut cur = key.to_string();
    let mut exists = existed;
    let mut out = Vec::new();
    let id = |v: &Value| v["id"].as_str().map(str::to_string);
    // Out of the publication: whether a change meanwhile touched the row,
    // and whether the snapshot when the table was back holds it.
    let mut touched = false;
    let mut back: Option<bool> = None;
    for (op, old, new, intent) in rows {
        if op.starts_with("out ") {
            // A new gap right after the last one's snapshot (no change of
            // the table between): that one is over.
            if back.is_some() {
                republished(&mut touched, &mut back, &mut exists, &mut out);
            }
            touched |= id(old).as_deref() == Some(&cur) || id(new).as_deref() == Some(&cur);
            continue;
        }
        if op == "republished" {
            let found = back.get_or_insert(false);
            if id(new).as_deref() == Some(&cur) {
                *found = true;
                if touched {
                    exists = true;
                    out.push(("snapshot".to_string(), new.clone(), Value::Null, Vec::new()));
                }
            }
            continue;
        }
        republished(&mut touched, &mut back, &mut exists, &mut out);
        let mine = match op.as_str() {
            "insert" => id(new).as_deref() == Some(&cur),
            "update" => id(old).as_deref() == Some(&cur) || id(new).as_deref() == Some(&cur),
            "delete" => id(old).as_deref() == Some(&cur),
            "rewrite" => exists && id(new).as_deref() == Some(&cur),
            _ => exists,
        };
        if !mine {
            continue;
        }
        match op.as_str() {
            // A DDL rewrote the row: history's version from the snapshot
            // waly took after it.
            "rewrite" => out.push(("snapshot".to_string(), new.clone(), Value::Null, Vec::new())),
            "insert" | "update" => {
                exists = true;
                if let Some(n) = id(new) {
                    cur = n;
                }
                let changed = if op == "update" {
                    changed_columns(old, new)
                } else {
                    Vec::new()
                };
                out.push((op.clone(), new.clone(), intent.clone(), changed));
            }
            _ => {
                exists = false;
                out.push((op.clone(), Value::Null, intent.clone(), Vec::new()));
            }
        }
    }
    republished(&mut touched, &mut back, &mut exists, &mut out);
    out
}

/// The versions `history --json` printed (`lines`), as [`expected_history`]
/// gives them: the row as the first snapshot had it (before the audit) is
/// left out, and a later snapshot (compact's) is no version of its own.
/// A value the previous version did not know (a snapshot compacted between
/// a DDL whose effect on it the archive cannot reproduce and the snapshot
/// `waly run` took after it holds it unknown) that a later version tells
/// is no change of the row: the later snapshot that only tells such values
/// is left out too.
fn got_history(lines: &str, first_known: impl Fn(&Value) -> bool) -> Vec<Version> {
    let mut got = Vec::new();
    let mut previous = Value::Null;
    for (i, v) in lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .enumerate()
    {
        let unknown_before = |c: &str| previous[c].as_str().is_some_and(|s| s.starts_with('\u{0}'));
        let mut changed: Vec<String> = v["changed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_string))
            .filter(|c| !unknown_before(c))
            .collect();
        changed.sort();
        let revealed = v["op"] == "snapshot" && v["after_ddl"] == true && changed.is_empty();
        let new = match v["op"].as_str() {
            Some("delete" | "truncate") => Value::Null,
            _ => v["new"].clone(),
        };
        previous = new.clone();
        if (i == 0 && first_known(&v)) || revealed {
            continue;
        }
        if v["op"] != "update" {
            changed.clear();
        }
        got.push((
            v["op"].as_str().unwrap_or("").to_string(),
            new,
            v["intent"].clone(),
            changed,
        ));
    }
    got
}

fn check_history(seed: u64, db: &TestDb, archive: &str, r: &mut Rng, out: &mut Outcome) {
    for table in ["acct", "item"] {
        let rows = audit(db, table, archive_start(archive).unwrap_or(0));
        let mut keys: Vec<String> = rows
            .iter()
            .filter_map(|(_, old, new, _)| new["id"].as_str().or(old["id"].as_str()).map(str::to_string))
            .collect();
        keys.sort();
        keys.dedup();
        for _ in 0..4 {
            if keys.is_empty() {
                break;
            }
            let key = keys[r.below(keys.len() as u64) as usize].clone();
            let o = waly_out(&["history", table, &key, "--archive", archive, "--json"]);
            // A first snapshot version is the row in the snapshot history
            // starts from, unless a later snapshot (after a DDL, or the
            // table back in the publication) brought the row.
            let first_known = |v: &Value| v["op"] == "snapshot" && v["after_ddl"] != true;
            let existed = stdout(&o)
                .lines()
                .next()
                .and_then(|l| serde_json::from_str::<Value>(l).ok())
                .is_some_and(|v| first_known(&v));
            let want = expected_history(&rows, &key, existed);
            let got = got_history(&stdout(&o), first_known);
            out.check(got == want, || {
                let first = got.iter().zip(&want).position(|(g, w)| g != w).unwrap_or(got.len().min(want.len()));
                // The table's schema versions, to tell a writer's wrong
                // version from a reader's wrong projection.
                let versions = stdout(&waly_out(&["schema", table, "--archive", archive]));
                format!(
                    "seed {seed}: history {table} {key}: {} versions expected, {} got; first difference at version {}:\n  expected {:?}\n  got      {:?}\n  schema versions:\n{versions}",
                    want.len(),
                    got.len(),
                    first + 1,
                    want.get(first),
                    got.get(first)
                )
            });
        }
    }
}

fn check_log(seed: u64, db: &TestDb, archive: &str, out: &mut Outcome) {
    let o = waly_out(&["log", "--archive", archive, "--json"]);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // One table's log (which reads only the frames the index lists for
    // it) is the whole log's lines of that table.
    let whole = stdout(&o);
    for t in TABLES {
        let table = format!("public.{t}");
        let want: Vec<&str> = whole
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["table"] == table.as_str()))
            .collect();
        let one = waly_out(&["log", "--archive", archive, "--table", &table, "--json"]);
        let got = stdout(&one);
        out.check(got.lines().eq(want.iter().copied()), || {
            format!(
                "seed {seed}: log --table {table} ({} lines) is not the whole log's {} lines of it: {}",
                got.lines().count(),
                want.len(),
                stderr(&one)
            )
        });
    }
    // What committed since a time (found by the headers' commit-time
    // marks, carried across restarts and takeovers) is the whole log's
    // lines committed at or after it.
    // (A message's line holds its time inside.)
    let time_of = |v: &Value| {
        v["commit_time"]
            .as_str()
            .or(v["message"]["commit_time"].as_str())
            .map(String::from)
    };
    let times: Vec<String> = lines.iter().filter_map(time_of).collect();
    out.check(times.len() == lines.len(), || {
        format!("seed {seed}: log --json: a line without its commit time")
    });
    if let Some(since) = times.get(times.len() * 2 / 3) {
        let want: Vec<&str> = whole
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| time_of(&v).is_some_and(|t| t >= *since)))
            .collect();
        let part = waly_out(&["log", "--archive", archive, "--since", since.as_str(), "--json"]);
        let got = stdout(&part);
        out.check(got.lines().eq(want.iter().copied()), || {
            format!(
                "seed {seed}: log --since {since} ({} lines) is not the whole log's {} lines since: {}",
                got.lines().count(),
                want.len(),
                stderr(&part)
            )
        });
    }
    let mut seen = std::collections::HashSet::new();
    let mut last = String::new();
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let lsn_key = |s: &str| {
        let (a, b) = s.split_once('/').unwrap_or(("0", "0"));
        (u64::from_str_radix(a, 16).unwrap_or(0) << 32) | u64::from_str_radix(b, 16).unwrap_or(0)
    };
    let start = archive_start(archive).unwrap_or(0);
    let mut ordered = true;
    let mut duplicates = 0;
    for v in &lines {
        let Some(lsn) = v["commit_lsn"].as_str() else { continue };
        if !seen.insert((lsn.to_string(), v["seq"].to_string())) {
            duplicates += 1;
        }
        if !last.is_empty() && lsn_key(lsn) < lsn_key(&last) {
            ordered = false;
        }
        last = lsn.to_string();
        // Counted from the archive's start on (a segment kept by a prune
        // may begin before it).
        if let (Some(t), Some(op), true) = (v["table"].as_str(), v["op"].as_str(), lsn_key(lsn) > start) {
            *counts.entry((t.to_string(), op.to_string())).or_default() += 1;
        }
    }
    out.check(o.status.success() && duplicates == 0, || {
        format!("seed {seed}: log: {duplicates} changes appear twice")
    });
    out.check(ordered, || format!("seed {seed}: log: changes out of commit order"));
    // Per table and operation, as the audit counted them (the partitioned
    // table's row moves count differently in triggers; its rows are checked
    // by restore).
    for table in ["acct", "item"] {
        for op in ["insert", "update", "delete", "truncate"] {
            let want: u64 = db
                .psql(&format!(
                    "SELECT count(*) FROM oracle_audit WHERE tbl = '{table}' AND op = '{op}' AND lsn > '{}'",
                    waly::Lsn(start)
                ))
                .parse()
                .unwrap_or(0);
            let got = counts
                .get(&(format!("public.{table}"), op.to_string()))
                .copied()
                .unwrap_or(0);
            out.check(want == got, || {
                format!("seed {seed}: log --json: {table} {op}: the audit counts {want}, the log {got}")
            });
        }
    }
}

/// The Parquet export, read by DuckDB: per table and operation the log's
/// changes, each once; run again, nothing new.
/// Changes per (table, op) in the export at `dest`, each (table, op)
/// checked to hold every change once.
fn exported_counts(seed: u64, dest: &str, out: &mut Outcome) -> BTreeMap<(String, String), u64> {
    let parts = crate::archive::files_under(dest, "");
    if !parts.iter().any(|f| f.ends_with(".parquet")) {
        return BTreeMap::new();
    }
    crate::export::duckdb(&format!(
        "SELECT regexp_extract(filename, '([^/]+)/date=', 1), _op, count(*), count(DISTINCT (_commit_lsn, _seq))
           FROM read_parquet('{dest}/*/*/*.parquet', filename = true, union_by_name = true, hive_partitioning = true)
          WHERE _op NOT IN ('snapshot', 'empty_snapshot', 'unknown') GROUP BY ALL"
    ))
    .into_iter()
    .map(|r| {
        let n = |i: usize| r[i].as_deref().unwrap_or("0").parse::<u64>().unwrap_or(0);
        let (all, distinct) = (n(2), n(3));
        out.check(all == distinct, || {
            format!(
                "seed {seed}: export to {dest}: {:?} {:?}: {} rows, {distinct} distinct changes",
                r[0], r[1], all
            )
        });
        (
            (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()),
            all,
        )
    })
    .collect()
}

fn check_export(seed: u64, db: &TestDb, archive: &str, out: &mut Outcome) {
    let dest = format!("{archive}-export");
    let _ = std::fs::remove_dir_all(&dest);
    let o = waly_out(&["export", "--archive", archive, "--to", &dest]);
    out.check(o.status.success(), || {
        format!("seed {seed}: export failed: {}", stderr(&o))
    });
    if !o.status.success() {
        return;
    }
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut commits = Vec::new();
    for v in stdout(&waly_out(&["log", "--archive", archive, "--json"]))
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if let (Some(t), Some(op)) = (v["table"].as_str(), v["op"].as_str()) {
            *want.entry((t.to_string(), op.to_string())).or_default() += 1;
        }
        commits.extend(v["commit_lsn"].as_str().map(str::to_string));
    }
    let got = exported_counts(seed, &dest, out);
    out.check(got == want, || {
        format!("seed {seed}: export: per table and operation {got:?}, the log {want:?}")
    });
    check_export_of_a_table(seed, archive, &dest, out);
    check_export_large_values(seed, db, &dest, out);
    let now = as_of_now(&dest);
    for t in TABLES {
        let rows = now.get(&format!("public.{t}"));
        out.check(
            rows.is_some_and(|r| r.first().and_then(|c| c.first()) != Some(&Some(UNKNOWN.into()))),
            || format!("seed {seed}: the export's as-of query of {t} as of now: {rows:?}"),
        );
    }
    check_spark_as_of(seed, &dest, &now, out);
    check_kept_export(seed, archive, &dest, &now, out);
    let again = waly_out(&["export", "--archive", archive, "--to", &dest]);
    out.check(
        again.status.success() && stderr(&again).contains("exported 0 changes and 0 snapshot rows"),
        || format!("seed {seed}: export again: {}", stderr(&again)),
    );
    let _ = std::fs::remove_dir_all(&dest);
    // In two runs, the first up to the middle commit and the second
    // continued from its cursor (reading only the segments after it): the
    // same changes, each once.
    let Some(middle) = commits.get(commits.len() / 2) else {
        return;
    };
    let twice = format!("{archive}-export-twice");
    let _ = std::fs::remove_dir_all(&twice);
    for extra in [&["--until", middle.as_str()][..], &[]] {
        let o = waly_out(&[&["export", "--archive", archive, "--to", &twice][..], extra].concat());
        out.check(o.status.success(), || {
            format!("seed {seed}: export {extra:?}: {}", stderr(&o))
        });
    }
    let got = exported_counts(seed, &twice, out);
    out.check(got == want, || {
        format!("seed {seed}: export in two runs (the first up to {middle}): per table and operation {got:?}, the log {want:?}")
    });
    let _ = std::fs::remove_dir_all(&twice);
}

/// The export's as-of query as of now gives every `acct` row's large
/// value (`big`, stored out of line: an update that does not change it
/// leaves it out) as the source holds it, rows an update moved to a new
/// key included (the value was sent under the old key).
fn check_export_large_values(seed: u64, db: &TestDb, dest: &str, out: &mut Outcome) {
    let Ok(views) = std::fs::read_to_string(format!("{dest}/_waly/as_of_duckdb.sql")) else {
        out.check(false, || {
            format!("seed {seed}: the export at {dest} has no as-of views")
        });
        return;
    };
    let sorted = |mut rows: Vec<Vec<Option<String>>>| {
        rows.sort();
        rows
    };
    let got = sorted(crate::export::duckdb(&format!(
        "{views};\nSELECT id::VARCHAR, coalesce(md5(big), 'null') FROM \"public.acct_as_of\"(now()::TIMESTAMPTZ)"
    )));
    let want = sorted(
        db.psql("SELECT id, coalesce(md5(big), 'null') FROM ONLY acct")
            .lines()
            .map(|l| l.split('|').map(|s| Some(s.to_string())).collect())
            .collect(),
    );
    out.check(got == want, || {
        let differ = want.iter().zip(&got).find(|(w, g)| w != g);
        format!(
            "seed {seed}: the export's as-of acct ({} rows, the source {}) differs in its large values: first at {differ:?}",
            got.len(),
            want.len()
        )
    });
}

/// Where the export of the first checkpoint is kept.
fn kept_export(archive: &str) -> String {
    format!("{archive}-export-kept")
}

/// Each table's keys as the as-of query of the export at `dest` gives them
/// now, sorted: by table. (Keys, not values: a row's value of a large
/// column an update left unchanged is null in the query, as
/// docs/EXPORT.md says, where a later snapshot row holds it.)
fn as_of_now(dest: &str) -> BTreeMap<String, Vec<Vec<Option<String>>>> {
    let views = std::fs::read_to_string(format!("{dest}/_waly/as_of_duckdb.sql")).unwrap_or_default();
    as_of_keys(&views)
        .into_iter()
        .map(|(table, key)| {
            let sql = format!("{views};\nSELECT {key} FROM \"{table}_as_of\"(now()::TIMESTAMPTZ) ORDER BY ALL");
            let rows = crate::export::duckdb_result(&sql).unwrap_or_else(|e| unknown_or_panic(&e, &sql));
            (table, rows)
        })
        .collect()
}

/// What the as-of query says of a table whose history ended (a partition
/// attached, say) and was not snapshotted since: it fails, saying the
/// archive does not know the rows. Its answer here is [`UNKNOWN`]; any
/// other failure is the test's.
fn unknown_or_panic(error: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    if error.contains("the archive does not know the rows of the table at this time") {
        vec![vec![Some(UNKNOWN.to_string())]]
    } else {
        panic!("duckdb failed: {error}\n{sql}")
    }
}

/// The answer of an as-of query that refused (see [`unknown_or_panic`]).
const UNKNOWN: &str = "(the archive does not know the rows)";

/// Each table of the as-of views `views` (DuckDB's) with its primary key's
/// columns, quoted, as its query partitions by them.
fn as_of_keys(views: &str) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut table = None;
    for l in views.lines() {
        if let Some((t, _)) = l
            .strip_prefix("CREATE OR REPLACE MACRO \"")
            .and_then(|r| r.split_once("_as_of\"(as_of)"))
        {
            table = Some(t.to_string());
        }
        if let Some((_, rest)) = l.split_once("PARTITION BY ") {
            if let (Some(t), Some((k, _))) = (table.take(), rest.split_once(" ORDER BY")) {
                keys.push((t, k.to_string()));
            }
        }
    }
    keys
}

/// Spark's as-of query of the export at `dest`, as of now, gives the keys
/// DuckDB's gives (`duck`), for every table with a view: the Spark SQL the
/// export writes runs over schemas that evolved (renames, a retype, an
/// added column, a partitioned table). Only when `WALY_TEST_SPARK_PYTHON`
/// is set (scripts/test.sh sets it).
fn check_spark_as_of(seed: u64, dest: &str, duck: &BTreeMap<String, Vec<Vec<Option<String>>>>, out: &mut Outcome) {
    let views = std::fs::read_to_string(format!("{dest}/_waly/as_of_duckdb.sql")).unwrap_or_default();
    let keys = as_of_keys(&views);
    let queries: Vec<(String, String)> = keys.iter().map(|(t, k)| (t.clone(), k.replace('"', "`"))).collect();
    let asked: Vec<(&str, &str)> = queries.iter().map(|(t, k)| (t.as_str(), k.as_str())).collect();
    let Some(spark) = crate::export::spark_as_of_now(dest, &asked) else {
        return;
    };
    let sorted = |mut rows: Vec<Vec<Option<String>>>| {
        rows.sort();
        rows
    };
    for ((table, _), rows) in keys.iter().zip(spark) {
        let want = sorted(duck.get(table).cloned().unwrap_or_default());
        let got = match rows.first().map(|r| r.as_slice()) {
            Some([Some(e), Some(msg)]) if e == "error" => unknown_or_panic(msg, table),
            _ => sorted(rows),
        };
        out.check(got == want, || {
            format!(
                "seed {seed}: Spark's as-of {table} as of now: {} keys, DuckDB's {}",
                got.len(),
                want.len()
            )
        });
    }
}

/// The export kept from the first checkpoint, continued now (across
/// whatever prune came between), answers every table as of now as a new
/// export at `whole` does (`want`, its answers): rows the skipped changes
/// deleted are gone from it too.
fn check_kept_export(
    seed: u64,
    archive: &str,
    whole: &str,
    want: &BTreeMap<String, Vec<Vec<Option<String>>>>,
    out: &mut Outcome,
) {
    let kept = kept_export(archive);
    if !std::path::Path::new(&kept).exists() {
        return;
    }
    let o = waly_out(&["export", "--archive", archive, "--to", &kept]);
    out.check(o.status.success(), || {
        format!(
            "seed {seed}: export continued from the first checkpoint: {}",
            stderr(&o)
        )
    });
    let got = as_of_now(&kept);
    out.check(!want.is_empty(), || {
        format!("seed {seed}: the new export at {whole} has no as-of view")
    });
    out.check(&got == want, || {
        let table = want.keys().find(|t| got.get(*t) != want.get(*t));
        format!(
            "seed {seed}: the export continued from the first checkpoint, as of now, differs from a new export's in {table:?}: \
             {} rows, not {}",
            table.and_then(|t| got.get(t)).map_or(0, Vec::len),
            table.and_then(|t| want.get(t)).map_or(0, Vec::len)
        )
    });
    let _ = std::fs::remove_dir_all(&kept);
}

/// An export of one table (the one intents touch) reads, of each segment
/// the index covers, only the frames with its changes and those holding
/// intents: it holds exactly the rows, intents included, that the whole
/// export at `whole` holds of that table.
fn check_export_of_a_table(seed: u64, archive: &str, whole: &str, out: &mut Outcome) {
    let dest = format!("{archive}-export-acct");
    let _ = std::fs::remove_dir_all(&dest);
    let o = waly_out(&["export", "--archive", archive, "--to", &dest, "--tables", "public.acct"]);
    out.check(o.status.success(), || {
        format!("seed {seed}: export --tables public.acct: {}", stderr(&o))
    });
    if !o.status.success() {
        return;
    }
    let rows = |d: &str| {
        format!(
            "SELECT regexp_extract(filename, '([^/]+)/date=', 1) AS dir, _op, _commit_lsn, _seq, _intent
               FROM read_parquet('{d}/*/*/*.parquet', filename = true, union_by_name = true, hive_partitioning = true)"
        )
    };
    let r = crate::export::duckdb(&format!(
        "CREATE TABLE one AS {};
         CREATE TABLE whole AS SELECT * FROM ({}) WHERE dir IN (SELECT dir FROM one);
         SELECT (SELECT count(*) FROM (SELECT * FROM one EXCEPT ALL SELECT * FROM whole)),
                (SELECT count(*) FROM (SELECT * FROM whole EXCEPT ALL SELECT * FROM one)),
                (SELECT count(*) FROM one), (SELECT count(DISTINCT dir) FROM one)",
        rows(&dest),
        rows(whole)
    ));
    let got: Vec<Option<String>> = r.into_iter().next().unwrap_or_default();
    out.check(
        got.first() == Some(&Some("0".into()))
            && got.get(1) == Some(&Some("0".into()))
            && got.get(3) == Some(&Some("1".into())),
        || {
            format!(
                "seed {seed}: export --tables public.acct against the whole export's acct rows: \
                 [only in it, only in the whole, rows, tables] = {got:?}"
            )
        },
    );
    let _ = std::fs::remove_dir_all(&dest);
}

fn check_catalog(seed: u64, archive: &str, out: &mut Outcome) {
    let o = waly_out(&["tables", "--archive", archive, "--json"]);
    // The catalog `waly run` keeps (across its kills and restarts, compact,
    // prune and reindex) says what a read of every segment says.
    let scan = waly_out(&["tables", "--archive", archive, "--json", "--scan"]);
    out.check(o.status.success() && stdout(&o) == stdout(&scan), || {
        format!(
            "seed {seed}: tables from the catalog:\n{}{}\nfrom the segments:\n{}",
            stdout(&o),
            stderr(&o),
            stdout(&scan)
        )
    });
    // An encrypted archive's catalog is written only by `waly reindex` (the
    // writer, holding no key, cannot read it to keep it): tables may scan.
    out.check(encrypted(seed) || !stderr(&o).contains("no catalog fits"), || {
        format!("seed {seed}: tables read the segments: {}", stderr(&o))
    });
    let mut names: Vec<String> = stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["table"].as_str().map(str::to_string))
        .collect();
    names.sort();
    // And ev_2, a table of its own while it was detached (every run
    // detaches it once), side.item, item's name while it was moved (every
    // run moves it once), and item_copy, the copy item is swapped for
    // (archived if waly snapshotted it before the swap), unless a prune
    // since took their history away; and acct_vip, which inherits from
    // acct (every run creates it).
    let audited: Vec<&String> = names
        .iter()
        .filter(|n| !["public.ev_2", "side.item", "public.item_copy", "public.acct_vip"].contains(&n.as_str()))
        .collect();
    out.check(audited == ["public.acct", "public.ev", "public.item"], || {
        format!("seed {seed}: tables: expected acct, ev, item (and ev_2, side.item, item_copy, acct_vip) only, got {names:?}")
    });
    let o = waly_out(&["schema", "item", "--archive", archive, "--json"]);
    let renamed = stdout(&o).contains("note → remark");
    out.check(renamed, || {
        format!(
            "seed {seed}: schema item: the rename of note is not recorded as a rename:\n{}",
            stdout(&o)
        )
    });
}

fn check_verify(seed: u64, db: &TestDb, archive: &str, out: &mut Outcome) {
    let o = waly_out(&["verify", "--archive", archive]);
    out.check(o.status.code() == Some(0), || {
        format!("seed {seed}: verify is not clean:\n{}{}", stdout(&o), stderr(&o))
    });
    for t in TABLES {
        let o = waly_out(&[
            "verify",
            "--archive",
            archive,
            "--against-source",
            &db.url(),
            "--table",
            t,
        ]);
        out.check(o.status.code() == Some(0), || {
            format!(
                "seed {seed}: verify --against-source {t}:\n{}{}",
                stdout(&o),
                stderr(&o)
            )
        });
    }
    // And every table whose history in the archive goes on, the audited
    // ones and any other (a partition detached is one while it is).
    let o = waly_out(&["verify", "--archive", archive, "--against-source", &db.url()]);
    out.check(o.status.code() == Some(0), || {
        format!(
            "seed {seed}: verify --against-source (every table):\n{}{}",
            stdout(&o),
            stderr(&o)
        )
    });
    // Tampering is still found, on a copy.
    let copy = format!("{archive}-tampered");
    let _ = std::fs::remove_dir_all(&copy);
    let cp = std::process::Command::new("cp").args(["-r", archive, &copy]).status();
    assert!(cp.is_ok_and(|s| s.success()), "copy the archive");
    let dir = format!("{copy}/generations/00000001/segments");
    let victim = crate::archive::files_under(&copy, "generations/00000001/segments")
        .into_iter()
        .map(|rel| format!("{dir}/{rel}"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("the archive has segments");
    let mut bytes = std::fs::read(&victim).expect("read a segment");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&victim, bytes).expect("tamper");
    let o = waly_out(&["verify", "--archive", &copy]);
    let name = victim.rsplit('/').next().unwrap_or("").to_string();
    out.check(o.status.code() == Some(1) && stdout(&o).contains(&name), || {
        format!(
            "seed {seed}: verify did not name the segment with a flipped byte, {name}:\n{}",
            stdout(&o)
        )
    });
    let _ = std::fs::remove_dir_all(&copy);
}

/// The seeds and size from the environment, or the fixed ones.
fn plan() -> (Vec<u64>, Size) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds = match (env("WALY_ORACLE_SEED"), env("WALY_ORACLE_SEEDS")) {
        (Some(s), _) => vec![s],
        (None, Some(n)) => {
            let first = env("WALY_ORACLE_FIRST").unwrap_or(1);
            (first..first + n).collect()
        }
        (None, None) => vec![1, 2],
    };
    let size = Size {
        steps: env("WALY_ORACLE_STEPS").unwrap_or(40) as usize,
        large_txn_rows: env("WALY_ORACLE_LARGE").unwrap_or(100_000) as u32,
    };
    (seeds, size)
}

#[test]
fn oracle_every_reader_agrees_with_the_database() {
    let Some(_) = owned_cluster() else { return };
    let (seeds, size) = plan();
    let mut total = Outcome::default();
    let mut first_failure: Option<(u64, String)> = None;
    for seed in &seeds {
        let o = run_seed(*seed, size);
        eprintln!("oracle seed {seed}: the run: {}", o.steps.join(", "));
        eprintln!(
            "oracle seed {seed}: operations={} checks={} disagreements={}",
            o.operations,
            o.checks,
            o.disagreements.len()
        );
        for d in o.disagreements.iter().take(10) {
            eprintln!("oracle seed {seed}: DISAGREEMENT {d}");
        }
        if first_failure.is_none() {
            if let Some(d) = o.disagreements.first() {
                first_failure = Some((*seed, format!("{d}\n(the run: {})", o.steps.join(", "))));
            }
        }
        total.operations += o.operations;
        total.checks += o.checks;
        total.disagreements.extend(o.disagreements);
    }
    println!(
        "seeds={} operations={} checks={} disagreements={}",
        seeds.len(),
        total.operations,
        total.checks,
        total.disagreements.len()
    );
    if let Some((seed, d)) = first_failure {
        panic!(
            "the archive disagrees with the database.\nreplay: WALY_ORACLE_SEED={seed} cargo test --test it oracle -- --nocapture\nfirst disagreement:\n{d}"
        );
    }
}
