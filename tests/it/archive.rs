//! The archive: `waly init`, `waly run` and `waly log` against a real
//! PostgreSQL, with crashes, restarts and store outages, judged by an audit
//! trigger that records every committed change.

use crate::harness::{run_within, s3_bucket, waly, Running, TestDb};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use waly::archive::Store;

// ---------------------------------------------------------------- contract

/// The archive operations every backend must provide identically.
async fn contract(store: Store) {
    use bytes::Bytes;
    store
        .put_once("a/1", Bytes::from_static(b"one"))
        .await
        .expect("first put");
    store
        .put_once("a/1", Bytes::from_static(b"one"))
        .await
        .expect("the same bytes again is success");
    let err = store.put_once("a/1", Bytes::from_static(b"two")).await.err();
    assert!(matches!(err, Some(waly::Error::Conflict { .. })), "{err:?}");
    assert_eq!(store.get("a/1").await.expect("get"), Bytes::from_static(b"one"));
    assert_eq!(store.get_opt("a/none").await.expect("get_opt"), None);
    for k in ["a/3", "a/10", "a/2", "b/1"] {
        store.put_once(k, Bytes::from(k.to_string())).await.expect("put");
    }
    let keys: Vec<String> = store
        .list("a")
        .await
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        ["a/1", "a/10", "a/2", "a/3"],
        "sorted, and only under the directory"
    );
    // The directories right under one: only those with an object below,
    // sorted, in one delimited listing however many objects they hold.
    store.put_once("d/x/y/1", Bytes::from_static(b"1")).await.expect("put");
    store.put_once("d/w/1", Bytes::from_static(b"1")).await.expect("put");
    store.put_once("d/top", Bytes::from_static(b"1")).await.expect("put");
    let before = store.read_cost().lists;
    assert_eq!(store.list_dirs("d").await.expect("list dirs"), ["w", "x"]);
    assert_eq!(store.read_cost().lists, before + 1);
    assert_eq!(store.list_dirs("d/x").await.expect("list dirs"), ["y"]);
    assert!(store.list_dirs("d/none").await.expect("list dirs").is_empty());
    store.delete("d/w/1").await.expect("delete");
    assert_eq!(
        store.list_dirs("d").await.expect("list dirs"),
        ["x"],
        "a directory emptied is gone"
    );
    // A suffix read gives the last bytes and the object's size, all of a
    // shorter object, and a missing object is not found.
    store
        .put_once("a/long", Bytes::from_static(b"0123456789"))
        .await
        .expect("put");
    let (tail, size) = store.get_suffix("a/long", 4).await.expect("suffix");
    assert_eq!((tail, size), (Bytes::from_static(b"6789"), 10));
    let (all, size) = store.get_suffix("a/long", 64).await.expect("suffix of more");
    assert_eq!((all, size), (Bytes::from_static(b"0123456789"), 10));
    assert!(store.get_suffix("a/none", 4).await.is_err(), "a missing object");
    // A local file uploaded once: a large one in parts, whole; again with
    // the same bytes is success; other bytes are a conflict, and leave it.
    let file = std::env::temp_dir().join(format!(
        "waly-contract-file-{}-{}",
        crate::harness::run_id(),
        store.url().len()
    ));
    let big: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (key, bytes) in [("f/small", &big[..1000]), ("f/big", &big[..])] {
        std::fs::write(&file, bytes).expect("write file");
        store.put_file_once(key, &file).await.expect("file put");
        store
            .put_file_once(key, &file)
            .await
            .expect("the same file again is success");
        assert_eq!(store.get(key).await.expect("get")[..], bytes[..], "{key}");
        let mut other = bytes.to_vec();
        other[bytes.len() - 1] ^= 1;
        std::fs::write(&file, &other).expect("write file");
        let err = store.put_file_once(key, &file).await.err();
        assert!(matches!(err, Some(waly::Error::Conflict { .. })), "{key}: {err:?}");
        assert_eq!(store.get(key).await.expect("get")[..], bytes[..], "{key} kept");
    }
    let _ = std::fs::remove_file(&file);
    // A segment survives the trip byte for byte.
    let mut b = waly::segment::SegmentBuilder::new().expect("builder");
    b.mark_idle(waly::Lsn(42));
    let sealed = b
        .seal("00000001", 0, None, waly::segment::TimeHigh::Empty, 0)
        .expect("seal");
    store.put_once("seg", sealed.bytes.clone()).await.expect("put segment");
    let back = store.get("seg").await.expect("get segment");
    assert_eq!(waly::segment::sha256_hex(&back), sealed.sha256);
    let r = waly::segment::SegmentReader::open("seg", &back).expect("readable");
    assert_eq!(r.header.durable_lsn, Some(waly::Lsn(42)));
}

#[tokio::test]
async fn archive_contract_on_the_local_filesystem() {
    let dir = std::env::temp_dir().join(format!("waly-contract-{}", crate::harness::run_id()));
    let store = Store::open(&format!("file://{}", dir.display())).expect("open");
    contract(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Counting a local archive's objects (as the kill -9 test counts schema
/// versions) agrees with the store's listing, also when a writer killed
/// mid-write left a staging file: once, such a file was counted as a
/// duplicate schema version.
#[tokio::test]
async fn a_local_archive_counts_the_objects_readers_list_not_a_killed_writers_staging_file() {
    let dir = std::env::temp_dir().join(format!("waly-staging-{}", crate::harness::run_id()));
    let store = Store::open(&format!("file://{}", dir.display())).expect("open");
    for v in 1..=2 {
        let key = format!("generations/00000001/schemas/public.item/{v:06}.json");
        store
            .put_once(&key, bytes::Bytes::from_static(b"{}"))
            .await
            .expect("put");
    }
    // What a SIGKILL during the put of version 3 leaves.
    let schemas = dir.join("generations/00000001/schemas/public.item");
    std::fs::write(schemas.join("000003.json#1"), b"").expect("staging file");
    let listed: Vec<String> = store
        .list("generations/00000001/schemas/public.item")
        .await
        .expect("list")
        .into_iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(listed, ["000001.json", "000002.json"]);
    let dir_s = dir.display().to_string();
    assert_eq!(files_under(&dir_s, "generations/00000001/schemas/public.item"), listed);
    // A generation whose first object's write was killed holds only a
    // staging file: it is no generation yet.
    std::fs::create_dir_all(dir.join("generations/00000002")).expect("mkdir");
    std::fs::write(dir.join("generations/00000002/generation.json#1"), b"").expect("staging file");
    assert_eq!(
        waly::archive::state::generations(&store).await.expect("generations"),
        ["00000001"]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn archive_contract_in_memory() {
    contract(Store::open("memory://").expect("open")).await;
}

#[tokio::test]
async fn archive_contract_on_s3() {
    let Some(bucket) = s3_bucket("contract") else { return };
    contract(Store::open(&format!("s3://{bucket}/some/prefix")).expect("open")).await;
}

// ---------------------------------------------------------------- helpers

pub(crate) fn archive_dir(db: &TestDb) -> String {
    std::env::temp_dir()
        .join(format!("waly-archive-{}", db.name))
        .display()
        .to_string()
}

/// Slot names are cluster-wide: each test database gets its own.
pub(crate) fn slot(db: &TestDb) -> String {
    format!("w_{}", db.name)
}

pub(crate) fn spawn_run(db: &TestDb, archive: &str) -> Running {
    spawn_run_as(db, &db.url(), archive, &[])
}

/// `waly run` for `db`'s slot, connecting with `source`, with more arguments.
/// Segments are written every 200 ms and, as tests wait for the slot to
/// pass unpublished WAL, the idle heartbeat is 10 s, unless `extra` sets
/// them.
pub(crate) fn spawn_run_as(db: &TestDb, source: &str, archive: &str, extra: &[&str]) -> Running {
    Running::spawn(&mut run_command(db, source, archive, extra))
}

/// The command [`spawn_run_as`] spawns.
pub(crate) fn run_command(db: &TestDb, source: &str, archive: &str, extra: &[&str]) -> Command {
    let mut c = waly();
    c.args([
        "run",
        "--source",
        source,
        "--archive",
        archive,
        "--slot",
        &slot(db),
        "--log",
        "warn",
        "--create-slot",
    ]);
    if !extra.contains(&"--flush-interval") {
        c.args(["--flush-interval", "200ms"]);
    }
    if !extra.contains(&"--idle-interval") {
        c.args(["--idle-interval", "10s"]);
    }
    c.args(extra);
    c
}

/// Waits until `waly run` streams from its slot; on failure shows what it
/// said. The slot alone is not enough: it is also active while it is being
/// created, before the base snapshot, and a write made then belongs to the
/// snapshot, not to the stream. Only START_REPLICATION takes the walsender
/// out of its `startup` state.
pub(crate) fn wait_streaming(db: &TestDb, run: &Running) {
    let sql = format!(
        "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
          WHERE s.slot_name = '{}' AND r.state IN ('catchup', 'streaming')",
        slot(db)
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while db.psql(&sql) != "1" {
        assert!(
            Instant::now() < deadline,
            "waly run did not start streaming within 300s; it said:\n{}",
            run.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the slot has confirmed everything written so far (the
/// archive holds it); returns that position.
pub(crate) fn wait_confirmed(db: &TestDb, secs: u64) -> waly::Lsn {
    let end = db.current_lsn();
    db.wait_for(
        &format!(
            "SELECT confirmed_flush_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = '{}'",
            slot(db)
        ),
        "t",
        secs,
    );
    end
}

/// [`wait_confirmed`], then stops `waly run` cleanly.
pub(crate) fn settle(db: &TestDb, run: crate::harness::Running) {
    wait_confirmed(db, 120);
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
}

/// Waits until `waly log` shows exactly the changes of keys `want` (column
/// `id`) in `table`, in that order.
pub(crate) fn wait_logged_ids(archive: &str, table: &str, want: &[&str], run: &crate::harness::Running) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lines = log_json_once_archived(archive, &["--table", table]);
        let ids: Vec<String> = lines
            .iter()
            .filter_map(|v| v["key"]["id"].as_str().map(str::to_string))
            .collect();
        if ids == want {
            return;
        }
        assert!(Instant::now() < deadline, "got {ids:?}\n{}", run.stderr_so_far());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `waly status --json` for `db`'s slot and `archive`.
pub(crate) fn status_json(db: &TestDb, archive: &str) -> serde_json::Value {
    let st = run_within(
        waly().args([
            "status",
            "--json",
            "--source",
            &db.url(),
            "--archive",
            archive,
            "--slot",
            &slot(db),
        ]),
        60,
    );
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    serde_json::from_slice(&st.stdout).expect("status json")
}

/// `waly log --json` with `extra`, or nothing while the archive does not hold
/// the table yet (before its snapshot: `log --table` then refuses).
pub(crate) fn log_json_once_archived(archive: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = run_within(waly().args(["log", "--json", "--archive", archive]).args(extra), 120);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && err.contains("is not in the archive") {
        return Vec::new();
    }
    assert!(out.status.success(), "waly log: {err}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

pub(crate) fn log_json(archive: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = run_within(waly().args(["log", "--json", "--archive", archive]).args(extra), 120);
    assert!(
        out.status.success(),
        "waly log: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

const AUDITED: &str = "
    CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text);
    CREATE TABLE item (id int PRIMARY KEY, v int NOT NULL);
    CREATE TABLE audit (n bigserial PRIMARY KEY, tbl text, op text, id int, v int);
    CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO audit (tbl, op, id, v) VALUES ('public.' || TG_TABLE_NAME, 'delete', OLD.id, NULL);
            RETURN OLD;
        END IF;
        INSERT INTO audit (tbl, op, id, v) VALUES ('public.' || TG_TABLE_NAME, lower(TG_OP), NEW.id, NEW.v);
        RETURN NEW;
    END $$;
    CREATE TRIGGER a AFTER INSERT OR UPDATE OR DELETE ON acct FOR EACH ROW EXECUTE FUNCTION audit_fn();
    CREATE TRIGGER a AFTER INSERT OR UPDATE OR DELETE ON item FOR EACH ROW EXECUTE FUNCTION audit_fn();
    CREATE PUBLICATION waly FOR TABLE acct, item;";

type Fact = (String, String, i64, Option<i64>);

/// Every audited change, as a multiset.
fn audited(db: &TestDb) -> BTreeMap<Fact, usize> {
    let mut m = BTreeMap::new();
    for line in db.psql("SELECT tbl, op, id, coalesce(v::text, '-') FROM audit").lines() {
        let f: Vec<&str> = line.split('|').collect();
        let fact = (
            f[0].to_string(),
            f[1].to_string(),
            f[2].parse().unwrap_or(-1),
            f[3].parse().ok(),
        );
        *m.entry(fact).or_default() += 1;
    }
    m
}

/// Every archived change, as a multiset.
fn archived(archive: &str) -> BTreeMap<Fact, usize> {
    let mut m = BTreeMap::new();
    for v in log_json(archive, &[]) {
        if v.get("message").is_some() {
            continue;
        }
        let num = |x: &serde_json::Value| x.as_str().and_then(|s| s.parse::<i64>().ok());
        let fact = (
            v["table"].as_str().unwrap_or_default().to_string(),
            v["op"].as_str().unwrap_or_default().to_string(),
            num(&v["key"]["id"]).unwrap_or(-1),
            num(&v["new"]["v"]),
        );
        *m.entry(fact).or_default() += 1;
    }
    m
}

fn count(m: &BTreeMap<Fact, usize>) -> usize {
    m.values().sum()
}

/// Polls until the archive holds exactly the audited changes.
fn wait_archived_equals_audit(db: &TestDb, archive: &str, secs: u64) {
    let want = audited(db);
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = archived(archive);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want.iter().filter(|(k, n)| got.get(*k) != Some(n)).take(10).collect();
            let extra: Vec<_> = got.iter().filter(|(k, n)| want.get(*k) != Some(n)).take(10).collect();
            panic!(
                "archive != audit after {secs}s: {} archived, {} audited\nmissing/different: {missing:?}\nextra: {extra:?}",
                count(&got),
                count(&want)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A deterministic mixed workload script: single-row transactions,
/// multi-table transactions, and (optionally) one 200k-row transaction.
fn workload(seed: u64, txns: usize, first_id: i64, big: bool) -> String {
    let mut x = seed | 1;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut s = String::new();
    let mut next = first_id;
    for i in 0..txns {
        if big && i == txns / 2 {
            s.push_str(&format!(
                "INSERT INTO item SELECT g, 0 FROM generate_series({}, {}) g;\n",
                1_000_000 + first_id,
                1_000_000 + first_id + 199_999
            ));
        }
        match rnd(5) {
            0 | 1 => {
                s.push_str(&format!("INSERT INTO acct VALUES ({next}, 0, 'n{next}');\n"));
                next += 1;
            }
            2 => s.push_str(&format!(
                "UPDATE acct SET v = v + 1 WHERE id = {};\n",
                first_id + rnd((next - first_id).max(1) as u64) as i64
            )),
            3 => s.push_str(&format!(
                "DELETE FROM acct WHERE id = {};\n",
                first_id + rnd((next - first_id).max(1) as u64) as i64
            )),
            _ => {
                s.push_str(&format!(
                    "BEGIN; INSERT INTO item VALUES ({next}, 1); UPDATE acct SET v = v + 10 WHERE id = {}; \
                     SELECT pg_logical_emit_message(true, 'waly', 'txn {i}'); COMMIT;\n",
                    first_id + rnd((next - first_id).max(1) as u64) as i64
                ));
                next += 1;
            }
        }
        if i % 25 == 0 {
            s.push_str("SELECT pg_sleep(0.02);\n");
        }
    }
    s
}

// ---------------------------------------------------------------- tests

#[test]
fn kill_9_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let db = TestDb::new();
    db.psql(AUDITED);
    let archive = archive_dir(&db);
    let mut run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    eprintln!("workload seed {seed}");
    // DDL along the way: each ALTER makes a new schema version of item, and
    // a transaction streamed again after a kill must find its versions
    // again rather than make more.
    let mut script = String::new();
    let mut alters = 0;
    for (i, line) in workload(seed, 1500, 1, true).lines().enumerate() {
        script.push_str(line);
        script.push('\n');
        if i % 200 == 199 {
            alters += 1;
            script.push_str(&format!(
                "ALTER TABLE item ADD COLUMN c{alters} int; INSERT INTO item VALUES ({}, 2);\n",
                5_000_000 + alters
            ));
        }
    }
    let writer = crate::harness::psql_in_background(db.url(), script);
    let mut x = seed;
    let mut kills = 0;
    while kills < 12 || !writer.is_finished() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(300 + (x >> 33) % 1200));
        let _ = run.child.kill(); // SIGKILL: no flush, no goodbye
        let _ = run.child.wait();
        kills += 1;
        run = spawn_run(&db, &archive);
    }
    assert!(writer.join().expect("writer").success(), "the workload ran");
    assert!(count(&audited(&db)) > 200_000);
    wait_archived_equals_audit(&db, &archive, 300);
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "clean stop after {kills} kills: {stderr}");
    // Same answer after the clean stop: nothing half-written remains visible.
    assert_eq!(archived(&archive), audited(&db));
    let versions = |t: &str| files_under(&archive, &format!("generations/00000001/schemas/{t}")).len();
    assert_eq!(
        (versions("public.acct"), versions("public.item")),
        (1, 1 + alters),
        "one schema version per table shape, however often the stream was replayed"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn base_snapshot_taken_during_writes_plus_events_equals_the_source() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE snap (id int PRIMARY KEY, v int); INSERT INTO snap SELECT g, 0 FROM generate_series(1, 20000) g;
         CREATE PUBLICATION waly FOR TABLE snap;",
    );
    let archive = archive_dir(&db);
    // Writes run before, during and after the snapshot.
    let mut s = String::new();
    for i in 0..400 {
        s.push_str(&format!(
            "UPDATE snap SET v = v + 1 WHERE id % 400 = {i}; INSERT INTO snap VALUES ({}, -1); DELETE FROM snap WHERE id = {};\nSELECT pg_sleep(0.01);\n",
            100_000 + i,
            1 + i * 7
        ));
    }
    let writer = crate::harness::psql_in_background(db.url(), s);
    std::thread::sleep(Duration::from_millis(500));
    let run = spawn_run(&db, &archive);
    assert!(writer.join().expect("writer").success());
    let source: BTreeMap<i64, String> = db
        .psql("SELECT id, coalesce(v::text, 'NULL') FROM snap")
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(a, b)| (a.parse().unwrap_or(-1), b.to_string()))
        .collect();
    // Creating slots waits for transactions running anywhere in the cluster
    // (other tests run beside this one): be patient.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut state: BTreeMap<i64, String> = BTreeMap::new();
        for v in log_json(&archive, &["--snapshot", "--table", "snap"]) {
            let id = |r: &serde_json::Value| r["id"].as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
            let val = |r: &serde_json::Value| r["v"].as_str().unwrap_or("NULL").to_string();
            if let Some(s) = v.get("snapshot") {
                if s["empty"] == true {
                    state.clear();
                } else {
                    state.insert(id(&s["row"]), val(&s["row"]));
                }
                continue;
            }
            match v["op"].as_str() {
                Some("insert") | Some("update") => {
                    if v["old"].is_object() {
                        state.remove(&id(&v["old"]));
                    }
                    state.insert(id(&v["new"]), val(&v["new"]));
                }
                Some("delete") => {
                    state.remove(&id(&v["key"]));
                }
                Some("truncate") => state.clear(),
                _ => {}
            }
        }
        if state == source {
            break;
        }
        if Instant::now() > deadline {
            let (_, stderr) = run.terminate(10);
            panic!(
                "snapshot + events ({} rows) never matched the source ({} rows); waly run said:\n{stderr}",
                state.len(),
                source.len()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, _) = run.terminate(60);
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn postgres_restarts_fast_and_immediate_lose_nothing() {
    let Some(cluster) = crate::harness::own_cluster(&[]) else {
        return;
    };
    let db = TestDb {
        name: "postgres".into(),
        cluster,
    };
    db.psql(AUDITED);
    let archive = archive_dir(&TestDb {
        name: format!("restart_{}", crate::harness::run_id()),
        cluster,
    });
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql(&workload(11, 150, 1, false));
    cluster.restart("fast");
    db.psql(&workload(12, 150, 10_000, false));
    cluster.restart("immediate");
    db.psql(&workload(13, 150, 20_000, false));
    wait_archived_equals_audit(&db, &archive, 180);
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    std::mem::forget(db); // the cluster goes away with the process
    let _ = std::fs::remove_dir_all(&archive);
}

/// A transaction makes a type and a column of it and fills the column;
/// PostgreSQL restarts before waly confirms it, so the walsender decodes
/// it again from the slot. That decoding must describe the table as it was
/// at each change. On PostgreSQL 16 it once could not, at every attempt
/// ("cache lookup failed for type"): waly listed the published tables on
/// its replication connection before streaming, which made the walsender
/// open them and keep their description of now.
#[test]
fn a_restart_right_after_a_type_is_made_and_used_stalls_nothing_and_loses_nothing() {
    let Some(cluster) = crate::harness::own_cluster(&[]) else {
        return;
    };
    let db = TestDb::on(cluster);
    db.psql(AUDITED);
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql(&workload(21, 40, 1, false));
    for round in 1..=2 {
        db.psql(&format!(
            "UPDATE acct SET v = v + 1 WHERE id % 5 = {round};
             CREATE TYPE mood{round} AS ENUM ('sad', 'ok');
             ALTER TABLE acct ADD COLUMN mood{round} mood{round} DEFAULT 'sad';
             UPDATE acct SET mood{round} = 'ok', v = v + 1 WHERE id % 2 = 0;"
        ));
        cluster.restart("fast");
        db.psql(&workload(21 + round, 10, 1_000 * round as i64, false));
    }
    wait_archived_equals_audit(&db, &archive, 120);
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("cache lookup failed"), "{stderr}");
    let _ = std::fs::remove_dir_all(&archive);
}

/// Reads the slot's confirmed position.
fn confirmed(db: &TestDb) -> String {
    db.psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
        slot(db)
    ))
}

#[test]
fn frozen_object_store_holds_the_slot_back_and_loses_nothing() {
    let Ok(moto) = std::env::var("WALY_TEST_MOTO_BIN") else {
        eprintln!("skipped: WALY_TEST_MOTO_BIN is not set (make test sets it)");
        return;
    };
    // A moto of our own: freezing the shared one would stall other tests.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut server = Command::new(moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let put = crate::harness::s3_request(&endpoint, "PUT", "/frozen");
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let db = TestDb::new();
    db.psql(AUDITED);
    let archive = "s3://frozen/archive";
    let start = |db: &TestDb| {
        Running::spawn(
            waly()
                .args([
                    "run",
                    "--source",
                    &db.url(),
                    "--archive",
                    archive,
                    "--flush-interval",
                    "200ms",
                    "--idle-interval",
                    "10s",
                    "--slot",
                    &slot(db),
                    "--create-slot",
                ])
                .env("AWS_ENDPOINT_URL", &endpoint)
                .env("WALY_STORE_TIMEOUT", "2"),
        )
    };
    let log = |extra: &[&str]| -> usize {
        let out = run_within(
            waly()
                .args(["log", "--json", "--archive", archive])
                .args(extra)
                .env("AWS_ENDPOINT_URL", &endpoint),
            60,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.contains("\"message\""))
            .count()
    };
    let run = start(&db);
    wait_streaming(&db, &run);
    db.psql(&workload(21, 100, 1, false));
    let want = count(&audited(&db));
    let deadline = Instant::now() + Duration::from_secs(60);
    while log(&[]) != want {
        assert!(Instant::now() < deadline, "first batch never archived");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = confirmed(&db);
    // Freeze the store for longer than the request timeout, and keep writing.
    let pid = server.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill")
        .success());
    db.psql(&workload(22, 100, 10_000, false));
    let frozen_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < frozen_until {
        assert_eq!(
            confirmed(&db),
            before,
            "the slot moved while the archive could not store anything"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .expect("kill")
        .success());
    let want = count(&audited(&db));
    let deadline = Instant::now() + Duration::from_secs(120);
    while log(&[]) != want {
        assert!(
            Instant::now() < deadline,
            "the archive did not catch up after the store came back"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_ne!(confirmed(&db), before, "the slot advances again once stored");
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn log_filters_by_table_and_time_and_shows_snapshot_rows_or_an_empty_tables_line_only_when_asked() {
    let db = TestDb::new();
    db.psql(AUDITED);
    // Written before waly starts: in the snapshot, not a change.
    db.psql("INSERT INTO acct VALUES (999, 5, 'before waly'); DELETE FROM audit;");
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO acct VALUES (1, 0, 'a'); INSERT INTO item VALUES (1, 0);");
    std::thread::sleep(Duration::from_millis(1100));
    let middle = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(Duration::from_millis(1100));
    db.psql("UPDATE acct SET v = 1 WHERE id = 1; DELETE FROM item WHERE id = 1;");
    wait_archived_equals_audit(&db, &archive, 60);
    let (status, _) = run.terminate(60);
    assert!(status.success());
    assert_eq!(log_json(&archive, &[]).len(), 4);
    let acct = log_json(&archive, &["--table", "acct"]);
    assert_eq!(acct.len(), 2);
    assert!(acct.iter().all(|v| v["table"] == "public.acct"));
    let late = log_json(&archive, &["--since", &middle]);
    assert_eq!(
        late.iter()
            .map(|v| v["op"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["update", "delete"]
    );
    let early = log_json(&archive, &["--until", &middle]);
    assert_eq!(early.len(), 2);
    let with_snapshot = log_json(&archive, &["--snapshot", "--table", "public.acct"]);
    assert_eq!(with_snapshot[0]["snapshot"]["row"]["note"], "before waly");
    assert_eq!(with_snapshot.len(), 3);
    // A table empty at the snapshot: one line says so, before its changes
    // (a consumer rebuilding it from the log knows to empty it there).
    let empty = log_json(&archive, &["--snapshot", "--table", "item"]);
    assert_eq!(empty.len(), 3, "{empty:?}");
    assert_eq!(empty[0]["snapshot"]["table"], "public.item", "{empty:?}");
    assert_eq!(empty[0]["snapshot"]["empty"], true, "{empty:?}");
    assert!(empty[0]["snapshot"]["lsn"].is_string(), "{empty:?}");
    assert_eq!(empty[0]["snapshot"]["lsn"], with_snapshot[0]["snapshot"]["lsn"]);
    assert_eq!(empty[1]["op"], "insert");
    let out = run_within(
        waly().args(["log", "--archive", &archive, "--snapshot", "--table", "item"]),
        30,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with("snapshot ") && l.ends_with("public.item (no rows)")),
        "{text}"
    );
    // The same from the text output, one line each.
    let out = run_within(waly().args(["log", "--archive", &archive]), 30);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    let _ = std::fs::remove_dir_all(&archive);
}

// ---------------------------------------------------------------- init

fn init(db: &TestDb, archive: &str, extra: &[&str]) -> std::process::Output {
    run_within(
        waly()
            .args(["init", "--source", &db.url(), "--archive", archive, "--slot", &slot(db)])
            .args(extra),
        60,
    )
}

#[test]
fn init_refuses_tables_that_publishing_would_break_and_offers_both_fixes() {
    let db = TestDb::new();
    db.psql("CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose (a int, b text);");
    let archive = archive_dir(&db);
    let out = init(&db, &archive, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("public.loose") && !err.contains("public.keyed"), "{err}");
    assert!(
        err.contains("--replica-identity-full") && err.contains("--skip-unkeyed"),
        "{err}"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_publication"),
        "0",
        "nothing was created"
    );
    assert_eq!(
        db.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE database = '{}'",
            db.name
        )),
        "0"
    );

    // --dry-run prints the SQL and does nothing.
    let out = init(&db, &archive, &["--replica-identity-full", "--dry-run"]);
    let sql = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        sql.contains("ALTER TABLE \"public\".\"loose\" REPLICA IDENTITY FULL"),
        "{sql}"
    );
    assert!(sql.contains("CREATE PUBLICATION \"waly\" FOR ALL TABLES"), "{sql}");
    assert!(
        sql.contains(&format!(
            "pg_create_logical_replication_slot('{}', 'pgoutput')",
            slot(&db)
        )),
        "{sql}"
    );
    assert!(sql.contains("CREATE EVENT TRIGGER"), "{sql}");
    assert_eq!(db.psql("SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(
        db.psql("SELECT relreplident FROM pg_class WHERE relname = 'loose'"),
        "d"
    );

    // --replica-identity-full does it; a second run changes nothing.
    let out = init(&db, &archive, &["--replica-identity-full"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        db.psql("SELECT relreplident FROM pg_class WHERE relname = 'loose'"),
        "f"
    );
    assert_eq!(
        db.psql("SELECT puballtables FROM pg_publication WHERE pubname = 'waly'"),
        "t"
    );
    assert_eq!(
        db.psql(&format!(
            "SELECT plugin FROM pg_replication_slots WHERE database = '{}'",
            db.name
        )),
        "pgoutput"
    );
    let again = init(&db, &archive, &["--replica-identity-full"]);
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(said.contains("exists; leaving it"), "{said}");
    // The guard: a table created later without a key becomes FULL at once,
    // so UPDATE keeps working on it while it is published.
    db.psql("CREATE TABLE later (x int); INSERT INTO later VALUES (1); UPDATE later SET x = 2;");
    assert_eq!(
        db.psql("SELECT relreplident FROM pg_class WHERE relname = 'later'"),
        "f"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn init_skip_unkeyed_publishes_only_keyed_tables() {
    let db = TestDb::new();
    db.psql("CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose (a int);");
    let archive = archive_dir(&db);
    let out = init(&db, &archive, &["--skip-unkeyed"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        db.psql("SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = 'waly'"),
        "keyed"
    );
    assert_eq!(
        db.psql("SELECT relreplident FROM pg_class WHERE relname = 'loose'"),
        "d"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

// ---------------------------------------------------------------- bad input

#[test]
fn archive_of_another_database_is_refused() {
    let a = TestDb::new();
    let b = TestDb::new();
    for db in [&a, &b] {
        db.psql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION waly FOR ALL TABLES");
    }
    let archive = archive_dir(&a);
    let run = spawn_run(&a, &archive);
    wait_streaming(&a, &run);
    let (status, _) = run.terminate(60);
    assert!(status.success());
    let out = run_within(
        waly().args([
            "run",
            "--source",
            &b.url(),
            "--archive",
            &archive,
            "--log",
            "warn",
            "--slot",
            &slot(&b),
            "--create-slot",
        ]),
        60,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("belongs to database \"{}\"", a.name)), "{err}");
    let out = run_within(
        waly().args([
            "init",
            "--source",
            &b.url(),
            "--archive",
            &archive,
            "--slot",
            &format!("w_{}", b.name),
        ]),
        60,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to database"));
    assert_eq!(
        b.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE database = '{}'",
            b.name
        )),
        "0",
        "nothing created for the refused database"
    );
    assert_eq!(
        files_under(&archive, "errors"),
        Vec::<String>::new(),
        "nothing written into a's archive"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn bad_archive_urls_and_missing_credentials_are_clear_errors() {
    let out = run_within(waly().args(["log", "--archive", "ftp://host/path"]), 30);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("unsupported scheme \"ftp\""), "{err}");
    let out = run_within(
        waly()
            .args(["log", "--archive", "s3://some-bucket/x"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY"),
        30,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no credentials") && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    let empty = std::env::temp_dir().join(format!("waly-empty-{}", crate::harness::run_id()));
    let out = run_within(waly().args(["log", "--archive"]).arg(&empty), 30);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a waly archive"), "{err}");
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn corrupt_segment_is_named_by_log() {
    let db = TestDb::new();
    db.psql("CREATE TABLE t (id int PRIMARY KEY, pad text); CREATE PUBLICATION waly FOR ALL TABLES");
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_json(&archive, &[]).len() < 2000 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = run.terminate(60);
    assert!(status.success());
    let seg_dir = std::path::Path::new(&archive).join("generations/00000001/segments");
    let seg = std::fs::read_dir(&seg_dir)
        .expect("segments")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    std::fs::write(&seg, bytes).expect("write");
    let out = run_within(waly().args(["log", "--archive", &archive]), 30);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let name = seg.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    assert!(err.contains(&name) && err.contains("corrupt"), "{err}");
    let _ = std::fs::remove_dir_all(&archive);
}

// ---------------------------------------------------------------- lifecycle

/// The objects under `sub` of the local archive `dir`, as readers list
/// them: not the staging files (`<name>#<digits>`) the local store writes
/// an object through, which a writer killed mid-write leaves behind and
/// which no listing shows.
pub(crate) fn files_under(dir: &str, sub: &str) -> Vec<String> {
    let staging = |p: &std::path::Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        name.rsplit_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let base = std::path::Path::new(dir).join(sub);
    let mut out = Vec::new();
    let mut stack = vec![base.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if staging(&p) {
                continue;
            } else if let Ok(rel) = p.strip_prefix(&base) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn table_added_later_gets_its_own_snapshot_and_schema_changes_are_versioned() {
    let db = TestDb::new();
    db.psql("CREATE TABLE a (id int PRIMARY KEY, v text); CREATE PUBLICATION waly FOR TABLE a;");
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql(
        "INSERT INTO a VALUES (1, 'x');
         CREATE TABLE b (id int PRIMARY KEY, w text); INSERT INTO b VALUES (1, 'before it was published');
         ALTER PUBLICATION waly ADD TABLE b;
         INSERT INTO b VALUES (2, 'after');
         ALTER TABLE a ADD COLUMN extra int NOT NULL DEFAULT 7;
         INSERT INTO a VALUES (2, 'y', 8);
         ALTER TABLE a DROP COLUMN v;
         UPDATE a SET extra = 9 WHERE id = 1;",
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let rows = log_json_once_archived(&archive, &["--snapshot", "--table", "b"]);
        let ids: Vec<String> = rows
            .iter()
            .filter_map(|v| {
                v.get("snapshot")
                    .map(|s| &s["row"])
                    .or_else(|| v.get("new"))
                    .and_then(|r| r["id"].as_str())
                    .map(str::to_string)
            })
            .collect();
        if ids == ["1", "2"] || ids == ["1", "2", "2"] {
            // Row 1 comes from b's own snapshot; row 2 from its snapshot or
            // the stream, depending on where the snapshot fell, never lost.
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never complete: {rows:?}\n{}",
            run.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while log_json(&archive, &["--table", "a"]).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "changes to a missing\n{}",
            run.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    let a = log_json(&archive, &["--table", "a"]);
    assert_eq!(a[1]["new"], serde_json::json!({"id": "2", "v": "y", "extra": "8"}));
    assert_eq!(a[2]["new"], serde_json::json!({"id": "1", "extra": "9"}));
    let schemas = files_under(&archive, "generations/00000001/schemas");
    assert_eq!(
        schemas,
        [
            "public.a/000001.json",
            "public.a/000002.json",
            "public.a/000003.json",
            "public.b/000001.json"
        ],
        "a: as snapshotted, with extra, without v"
    );
    let v2: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(&archive).join("generations/00000001/schemas/public.a/000002.json"))
            .expect("schema v2"),
    )
    .expect("json");
    let extra = &v2["columns"][2];
    assert_eq!(
        (&extra["name"], &extra["type"], &extra["not_null"]),
        (
            &serde_json::json!("extra"),
            &serde_json::json!("integer"),
            &serde_json::json!(true)
        )
    );
    let manifests: Vec<String> = files_under(&archive, "generations/00000001/snapshots")
        .into_iter()
        .filter(|f| f.ends_with("manifest.json"))
        .collect();
    assert_eq!(
        manifests.len(),
        2,
        "one base snapshot, one for the table added later: {manifests:?}"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn a_dropped_slot_starts_a_new_generation_instead_of_splicing() {
    let db = TestDb::new();
    db.psql(AUDITED);
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO acct VALUES (1, 0, 'first era');");
    wait_archived_equals_audit(&db, &archive, 120);
    let (status, _) = run.terminate(60);
    assert!(status.success());
    // While waly is away, the slot disappears and changes happen: a gap.
    db.psql(&format!(
        "SELECT pg_drop_replication_slot('{}'); INSERT INTO acct VALUES (2, 0, 'lost in the gap');",
        slot(&db)
    ));
    let in_gap = db.now_utc();
    std::thread::sleep(Duration::from_millis(20));
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO acct VALUES (3, 0, 'second era');");
    wait_logged_ids(&archive, "acct", &["1", "3"], &run);
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("STARTING A NEW GENERATION"), "said loudly: {stderr}");
    let gen2: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(&archive).join("generations/00000002/generation.json")).expect("gen 2"),
    )
    .expect("json");
    assert_eq!(gen2["reason"], "the replication slot did not exist");
    // The gap's row is not invented: it is in generation 2's base snapshot.
    let snap = log_json(&archive, &["--snapshot", "--table", "acct"]);
    let second_era_snapshot: Vec<&str> = snap
        .iter()
        .filter_map(|v| v.get("snapshot"))
        .filter(|s| s["lsn"] != snap[0]["snapshot"]["lsn"] || snap.len() == 1)
        .filter_map(|s| s["row"]["id"].as_str())
        .collect();
    assert!(second_era_snapshot.contains(&"2"), "{snap:?}");
    // Restoring: inside either generation works; inside the gap is refused,
    // naming what can be restored.
    let show = |point: &[&str]| {
        run_within(
            waly()
                .args(["show", "acct", "--archive", &archive, "--format", "csv"])
                .args(point),
            120,
        )
    };
    let first = log_json(&archive, &["--table", "acct"])[0]["commit_lsn"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ids = |out: &std::process::Output| -> Vec<String> {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap_or_default().trim_matches('"').to_string())
            .collect()
    };
    assert_eq!(ids(&show(&["--lsn", &first])), ["1"]);
    let now = chrono::Utc::now().to_rfc3339();
    assert_eq!(ids(&show(&["--at", &now])), ["1", "2", "3"]);
    let gap = show(&["--at", &in_gap]);
    let err = String::from_utf8_lossy(&gap.stderr);
    assert!(!gap.status.success());
    assert!(
        err.contains("gap") && err.contains("generation 00000001: from") && err.contains("generation 00000002: from"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn an_idle_source_does_not_pin_wal() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id int); CREATE PUBLICATION waly FOR TABLE quiet;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    let before: waly::Lsn = confirmed(&db).parse().expect("lsn");
    // WAL flows, but nothing published changes.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        db.psql("INSERT INTO busy SELECT generate_series(1, 1000)");
        let now: waly::Lsn = confirmed(&db).parse().expect("lsn");
        if now > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot stayed at {before}\n{}",
            run.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, _) = run.terminate(60);
    assert!(status.success());
    assert!(log_json(&archive, &[]).is_empty(), "no changes were invented");
    let _ = std::fs::remove_dir_all(&archive);
}

/// What a killed process left in its scratch directory (a merge's index
/// object past 4 MiB, a restore's sorted runs) is removed when `waly run`
/// starts; a live process's scratch directory (its lock held, here by this
/// test) is left alone, and so is what is not a scratch directory.
#[test]
fn a_killed_processs_scratch_files_are_removed_when_waly_run_starts_and_a_live_ones_kept() {
    let db = TestDb::new();
    db.psql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION waly FOR TABLE t;");
    let archive = archive_dir(&db);
    let tmp = std::env::temp_dir().join(format!("waly-tmpdir-{}", db.name));
    let scratch = |name: &str| {
        let dir = tmp.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("merged.idx"), vec![7u8; 1 << 20]).expect("write");
        std::fs::File::create(dir.join(".lock")).expect("lock file")
    };
    // Its process gone: nobody holds its lock.
    drop(scratch("waly-scratch-index-merge-4242-1"));
    // Held by this process, alive.
    let held = scratch("waly-scratch-restore-4343-2");
    held.lock().expect("lock");
    std::fs::create_dir_all(tmp.join("waly-restore-4444-3")).expect("mkdir");
    let run = Running::spawn(run_command(&db, &db.url(), &archive, &[]).env("TMPDIR", &tmp));
    wait_streaming(&db, &run);
    let mut left: Vec<String> = std::fs::read_dir(&tmp)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["waly-restore-4444-3", "waly-scratch-restore-4343-2"]);
    assert!(tmp.join("waly-scratch-restore-4343-2/merged.idx").exists());
    let (status, _) = run.terminate(60);
    assert!(status.success());
    drop(held);
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn an_idle_archive_gains_one_object_per_idle_interval_while_the_slot_advances() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id int); CREATE PUBLICATION waly FOR TABLE quiet;",
    );
    let archive = archive_dir(&db);
    let run = spawn_run_as(&db, &db.url(), &archive, &["--idle-interval", "20s"]);
    wait_streaming(&db, &run);
    // Whatever the session wrote at its start (snapshot, lease) is in by now.
    let objects = || files_under(&archive, "");
    let start_lsn: waly::Lsn = confirmed(&db).parse().expect("lsn");
    let before = objects();
    // 65 s of WAL that no published table is in: at most one heartbeat per
    // 20 s (the old fixed 10 s made six, with their index objects twelve
    // objects).
    let t0 = Instant::now();
    let mut advanced = Vec::new();
    let mut last = start_lsn;
    while t0.elapsed() < Duration::from_secs(65) {
        db.psql("INSERT INTO busy SELECT generate_series(1, 100)");
        let now: waly::Lsn = confirmed(&db).parse().expect("lsn");
        if now > last {
            advanced.push(now);
            last = now;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Each heartbeat is a record-less segment and its index object. The
    // catalog is one object rewritten in place: the keeper may write it for
    // the first time during these seconds, and it never becomes more.
    let gained: Vec<String> = objects()
        .into_iter()
        .filter(|f| !before.contains(f) && !f.ends_with("/catalog.json"))
        .collect();
    let heartbeats = gained
        .iter()
        .filter(|f| f.contains("/segments/") && f.ends_with(".jsonl.zst"))
        .count();
    assert!(
        (1..=4).contains(&heartbeats) && gained.len() <= 2 * heartbeats,
        "{} objects in 65 idle seconds with --idle-interval 20s: {gained:?}\n{}",
        gained.len(),
        run.stderr_so_far()
    );
    assert!(
        advanced.len() >= 2,
        "the slot advanced {} times past unpublished WAL (from {start_lsn})\n{}",
        advanced.len(),
        run.stderr_so_far()
    );
    let (status, _) = run.terminate(60);
    assert!(status.success());
    assert!(log_json(&archive, &[]).is_empty(), "no changes were invented");
    let v = run_within(waly().args(["verify", "--archive", &archive]), 60);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn drop_removes_slot_publication_and_guard_only_when_told_and_not_in_use() {
    let db = TestDb::new();
    db.psql("CREATE TABLE d (id int PRIMARY KEY, v text);");
    let archive = archive_dir(&db);
    let out = init(&db, &archive, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let drop = |extra: &[&str]| {
        run_within(
            waly()
                .args(["drop", "--source", &db.url(), "--slot", &slot(&db)])
                .args(extra),
            60,
        )
    };
    let state = || {
        db.psql(&format!(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}') || ',' ||
                    (SELECT count(*) FROM pg_publication WHERE pubname = 'waly') || ',' ||
                    (SELECT count(*) FROM pg_event_trigger WHERE evtname = 'waly_guard_replica_identity') || ',' ||
                    (SELECT count(*) FROM pg_event_trigger WHERE evtname IN ('waly_capture_ddl', 'waly_capture_drop', 'waly_note_rewrite'))",
            slot(&db)
        ))
    };
    assert_eq!(state(), "1,1,1,3");
    // In use: refused.
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO d VALUES (1, 'kept in the archive')");
    // Archived before waly run stops (the status below names it).
    wait_confirmed(&db, 60);
    let busy = drop(&["--yes"]);
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use"));
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    // waly status: the slot as PostgreSQL sees it, the archive as it is.
    let st = status_json(&db, &archive);
    let last = log_json(&archive, &["--table", "d"]).pop().expect("a change");
    assert_eq!(st["slot"]["exists"], true);
    assert_eq!(st["slot"]["active"], false);
    assert!(st["slot"]["lag_bytes"].as_i64().is_some_and(|l| l >= 0), "{st}");
    assert!(st["slot"]["retained_wal_bytes"].as_i64().is_some_and(|l| l > 0), "{st}");
    assert_eq!(st["archive"]["latest_commit"]["commit_lsn"], last["commit_lsn"]);
    assert_eq!(
        st["archive"]["segments"].as_u64(),
        Some(files_under(&archive, "generations/00000001/segments").len() as u64)
    );
    assert_eq!(st["archive"]["generations"][0]["generation"], "00000001");
    // Not confirmed (and no terminal to ask on): refused, nothing dropped.
    let unconfirmed = drop(&[]);
    assert!(!unconfirmed.status.success());
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("--yes"));
    assert!(
        String::from_utf8_lossy(&unconfirmed.stdout).contains("pg_drop_replication_slot"),
        "the plan is shown"
    );
    assert_eq!(state(), "1,1,1,3");
    // Another pgoutput slot in this database may be another waly: the
    // database-wide event triggers stay while it exists.
    db.psql(&format!(
        "SELECT pg_create_logical_replication_slot('other_{}', 'pgoutput')",
        db.name
    ));
    let done = drop(&["--yes"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stderr).contains("leaving the event triggers in place"));
    assert_eq!(state(), "0,0,1,3");
    db.psql(&format!("SELECT pg_drop_replication_slot('other_{}')", db.name));
    // Confirmed and alone: everything gone, the archive still readable.
    let done = drop(&["--yes"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(state(), "0,0,0,0");
    let rows = log_json(&archive, &["--table", "d"]);
    assert_eq!(rows.len(), 1);
    assert!(drop(&["--yes"]).status.success(), "dropping twice is harmless");
    let _ = std::fs::remove_dir_all(&archive);
}

/// Runs sql/setup.sql on `db` for publication `waly`: the least-privileged
/// role it makes, `lp_<db>`.
pub(crate) fn least_privileged_role(db: &TestDb) -> String {
    let role = format!("lp_{}", db.name);
    let setup = std::process::Command::new("psql")
        .arg(db.url())
        .args([
            "-X",
            "-q",
            "-v",
            &format!("role={role}"),
            "-v",
            "publication=waly",
            "-f",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/setup.sql"))
        .output()
        .expect("psql");
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    role
}

#[test]
fn every_reading_and_capturing_command_works_as_the_least_privileged_role() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE pub (id int PRIMARY KEY, v text);
         CREATE TABLE private (id int PRIMARY KEY, secret text);
         INSERT INTO pub VALUES (1, 'before');",
    );
    let archive = archive_dir(&db);
    let out = init(&db, &archive, &["--tables", "pub"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let role = least_privileged_role(&db);
    assert_eq!(
        db.psql(&format!(
            "SELECT has_table_privilege('{role}', 'pub', 'SELECT'), has_table_privilege('{role}', 'private', 'SELECT'),
                    rolsuper, rolreplication FROM pg_roles WHERE rolname = '{role}'"
        )),
        "t|f|f|t"
    );
    let url = format!("{} user={role}", db.url().replace("user=postgres", ""));
    let run = spawn_run_as(&db, &url, &archive, &[]);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO pub VALUES (2, 'after'); UPDATE pub SET v = 'changed' WHERE id = 1;");
    settle(&db, run);
    let ok = |args: &[&str]| {
        let out = run_within(waly().args(args), 120);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(log_json(&archive, &["--table", "pub"]).len(), 2);
    assert!(ok(&["history", "pub", "1", "--archive", &archive]).contains("changed"));
    assert!(ok(&[
        "show",
        "pub",
        "--archive",
        &archive,
        "--at",
        &chrono::Utc::now().to_rfc3339()
    ])
    .contains("after"));
    ok(&[
        "verify",
        "--archive",
        &archive,
        "--against-source",
        &url,
        "--table",
        "pub",
    ]);
    let st = ok(&[
        "status",
        "--json",
        "--source",
        &url,
        "--archive",
        &archive,
        "--slot",
        &slot(&db),
    ]);
    assert!(st.contains("\"exists\":true"), "{st}");
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn no_password_or_secret_appears_in_any_output() {
    let db = TestDb::new();
    let secret = "aws-secret-value-7Qx";
    let password = crate::harness::PASSWORD;
    let mut outputs = Vec::new();
    let record = |mut cmd: Command| -> String {
        let out = run_within(
            cmd.env("AWS_SECRET_ACCESS_KEY", secret)
                .env("AWS_ACCESS_KEY_ID", "waly-test")
                .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
                .env("WALY_STORE_TIMEOUT", "2"),
            120,
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // A wrong password, a server that is not there, a database that does not exist: errors and debug logs.
    let wrong = db.tcp_url("scramuser", Some(&format!("{password}x")), "");
    let right_but_nowhere = format!("postgres://scramuser:{password}@127.0.0.1:1/nowhere?connect_timeout=2");
    for source in [wrong.as_str(), right_but_nowhere.as_str()] {
        let mut c = waly();
        c.args(["--log", "debug", "tail", "--source", source]);
        outputs.push(record(c));
        let mut c = waly();
        c.args([
            "--log",
            "debug",
            "status",
            "--source",
            source,
            "--archive",
            "s3://bucket/x",
        ]);
        outputs.push(record(c));
    }
    let mut c = waly();
    c.args(["--log", "debug", "log", "--archive", "s3://bucket/prefix"]);
    outputs.push(record(c));
    let mut c = waly();
    c.env("WALY_SOURCE", &right_but_nowhere).args(["run", "--help"]);
    outputs.push(record(c));
    let mut c = waly();
    c.env("WALY_SOURCE", &right_but_nowhere).args(["restore", "--help"]);
    outputs.push(record(c));
    // The sidecar failing to connect: its health answers, the errors it
    // leaves in the archive, and `waly status` reading them back.
    let archive = archive_dir(&db);
    let port = crate::harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let run = crate::harness::Running::spawn(waly().args([
        "--log",
        "debug",
        "run",
        "--source",
        &right_but_nowhere,
        "--archive",
        &archive,
        "--metrics-addr",
        &addr,
        "--unhealthy-after",
        "1s",
    ]));
    let (_, why) = crate::harness::wait_http(port, "/healthz", 60, "unhealthy", |c, b| {
        c == 503 && b.contains("127.0.0.1")
    });
    outputs.push(why);
    outputs.push(
        crate::harness::http_get(port, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default(),
    );
    outputs.push(
        crate::harness::http_get(port, "/readyz")
            .map(|r| r.1)
            .unwrap_or_default(),
    );
    let (_, stderr) = run.terminate(60);
    outputs.push(stderr);
    let mut c = waly();
    c.args(["--log", "debug", "run", "--source", &wrong, "--archive", &archive]);
    outputs.push(record(c));
    let errors = std::path::Path::new(&archive).join("errors");
    let recorded: Vec<String> = files_under(&archive, "errors")
        .into_iter()
        .map(|f| std::fs::read_to_string(errors.join(f)).unwrap_or_default())
        .collect();
    assert!(recorded.len() >= 2, "both failures recorded: {recorded:?}");
    outputs.extend(recorded);
    let mut c = waly();
    c.args(["status", "--source", &wrong, "--archive", &archive]);
    outputs.push(record(c));
    assert!(
        outputs.last().is_some_and(|o| o.contains("last error of the sidecar")),
        "{outputs:#?}"
    );
    assert!(
        outputs.iter().any(|o| o.contains("127.0.0.1")),
        "the errors were printed: {outputs:#?}"
    );
    // Encryption: a passphrase archive read with the right passphrase, a
    // wrong one, and a wrong identity file; help with both set.
    let passphrase = "waly-pass-phrase-leak-9Zr";
    let enc = format!("{archive}-enc");
    tokio::runtime::Runtime::new().expect("rt").block_on(async {
        let store = waly::archive::Store::open(&enc).expect("open");
        let id = waly::archive::state::Identity::new("1", "db", "s", "p");
        let spec = waly::crypt::EncryptSpec::Passphrase(passphrase.to_string().into());
        assert!(!format!("{spec:?}").contains(passphrase));
        waly::crypt::create(&store, &id, &spec).await.expect("create");
        // A data key, as a writer session makes one.
        assert!(store.prepare_writing().await.expect("writer key").is_some());
    });
    let keyfile = std::env::temp_dir().join(format!("waly-leak-{}.key", db.name));
    let _ = std::fs::remove_file(&keyfile);
    let out = run_within(waly().args(["keygen", "-o"]).arg(&keyfile), 30);
    assert!(out.status.success());
    let key_text = std::fs::read_to_string(&keyfile).expect("key");
    let identity_secret = key_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("secret");
    let recipient = key_text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("recipient");
    for (pass, args) in [
        (Some(passphrase), vec!["--log", "debug", "log", "--archive", &enc]),
        (
            Some("not-it"),
            vec!["--log", "debug", "keys", "add-recipient", recipient, "--archive", &enc],
        ),
        (
            None,
            vec!["--log", "debug", "keys", "add-recipient", recipient, "--archive", &enc],
        ),
        (None, vec!["--log", "debug", "verify", "--archive", &enc]),
        (
            Some(passphrase),
            vec!["--log", "debug", "keys", "list", "--archive", &enc],
        ),
        (Some(passphrase), vec!["history", "--help"]),
    ] {
        let mut c = waly();
        c.env("WALY_IDENTITY", &keyfile).args(&args);
        if let Some(p) = pass {
            c.env("WALY_PASSPHRASE", p).env_remove("WALY_IDENTITY");
        }
        outputs.push(record(c));
    }
    let mut c = waly();
    c.args(["--log", "debug", "log", "--archive", &enc, "--identity"])
        .arg(&keyfile);
    outputs.push(record(c));
    assert!(
        outputs.iter().any(|o| o.contains("passphrase does not match")),
        "the wrong passphrase was refused: {outputs:#?}"
    );
    assert!(
        outputs.iter().any(|o| o.contains("the key does not match")),
        "{outputs:#?}"
    );
    for o in &outputs {
        assert!(!o.contains(password), "a password leaked: {o}");
        assert!(!o.contains(secret), "a secret leaked: {o}");
        assert!(!o.contains(passphrase), "a passphrase leaked: {o}");
        assert!(!o.contains(identity_secret), "an identity leaked: {o}");
    }
    let _ = std::fs::remove_dir_all(&archive);
    let _ = std::fs::remove_dir_all(&enc);
    let _ = std::fs::remove_file(&keyfile);
}

#[test]
fn run_warns_when_the_slot_retains_too_much_wal() {
    let db = TestDb::new();
    db.psql("CREATE TABLE w (id int PRIMARY KEY); CREATE PUBLICATION waly FOR TABLE w;");
    let archive = archive_dir(&db);
    // The test cluster's max_slot_wal_keep_size is unlimited: the absolute threshold applies.
    let port = crate::harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let run = spawn_run_as(
        &db,
        &db.url(),
        &archive,
        &[
            "--wal-warn-size",
            "4KiB",
            "--wal-check-interval",
            "500ms",
            "--metrics-addr",
            &addr,
        ],
    );
    wait_streaming(&db, &run);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while !run.stderr_so_far().contains("retains more WAL than it should") {
        assert!(Instant::now() < deadline, "no warning: {}", run.stderr_so_far());
        i += 1;
        db.psql(&format!("INSERT INTO w VALUES ({i})"));
        std::thread::sleep(Duration::from_millis(200));
    }
    // The readiness check fails too, saying why.
    let (code, why) = crate::harness::wait_http(port, "/readyz", 30, "not ready", |c, b| {
        c == 503 && b.contains("retains")
    });
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("retains") && why.contains("WAL"), "{why}");
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("max_slot_wal_keep_size"), "{stderr}");
    let bad = run_within(
        waly().args([
            "run",
            "--source",
            &db.url(),
            "--archive",
            &archive,
            "--wal-warn-fraction",
            "2",
        ]),
        30,
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--wal-warn-fraction"));
    let _ = std::fs::remove_dir_all(&archive);
}
