//! Operating waly: metrics and health over HTTP, standby and fencing, an
//! invalidated slot, pruning.

use crate::archive::{archive_dir, files_under, log_json, slot, spawn_run_as, wait_confirmed, wait_streaming};
use crate::harness::{free_port, http_get, metric, run_within, wait_http, waly, TestDb};
use std::time::{Duration, Instant};

/// The slot's walsender PID.
fn walsender_pid(db: &TestDb) -> String {
    db.psql(&format!(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}'",
        slot(db)
    ))
}

/// Asserts that metric `name` on `page` is above `floor`.
fn above(page: &str, name: &str, floor: f64) {
    let v = metric(page, name);
    assert!(v.is_some_and(|v| v > floor), "{name} = {v:?}, want > {floor}:\n{page}");
}

pub(crate) fn verify_json(archive: &str) -> (i32, serde_json::Value) {
    let out = run_within(waly().args(["verify", "--json", "--archive", archive]), 120);
    let v =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn metrics_and_health_answer_over_http_with_the_workloads_numbers() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE m (id int PRIMARY KEY, v text); INSERT INTO m SELECT g, 'seed' FROM generate_series(1, 7) g;
         CREATE PUBLICATION waly FOR TABLE m;",
    );
    let archive = archive_dir(&db);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let run = spawn_run_as(
        &db,
        &db.url(),
        &archive,
        &["--metrics-addr", &addr, "--unhealthy-after", "1s"],
    );
    wait_streaming(&db, &run);
    wait_http(port, "/readyz", 60, "ready", |c, _| c == 200);
    // A known workload: 5 transactions of 20 inserts, then 1 of 3 updates.
    for t in 0..5 {
        db.psql(&format!(
            "INSERT INTO m SELECT g, 'x' FROM generate_series({}, {}) g",
            100 + t * 20,
            119 + t * 20
        ));
    }
    let before_update = db.current_lsn();
    db.psql("UPDATE m SET v = 'y' WHERE id <= 3");
    let end = wait_confirmed(&db, 120);
    let (code, page) = wait_http(port, "/metrics", 30, "the workload counted", |_, b| {
        metric(b, "waly_events_archived_total") == Some(103.0)
    });
    assert_eq!(code, 200);
    assert_eq!(metric(&page, "waly_transactions_archived_total"), Some(6.0), "{page}");
    above(&page, "waly_segment_uploads_total", 0.0);
    above(&page, "waly_bytes_archived_total", 0.0);
    above(&page, "waly_confirmed_lsn", end.as_u64() as f64 - 1.0);
    // The last transaction, the update, ended after `before_update`.
    above(&page, "waly_received_lsn", before_update.as_u64() as f64);
    let last = metric(&page, "waly_last_upload_timestamp_seconds").unwrap_or(0.0);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (now - 120.0..=now + 1.0).contains(&last),
        "last upload {last}, now {now}"
    );
    assert_eq!(metric(&page, "waly_snapshot_tables"), Some(1.0), "{page}");
    assert_eq!(metric(&page, "waly_snapshot_tables_done"), Some(1.0), "{page}");
    assert_eq!(metric(&page, "waly_snapshot_rows_total"), Some(7.0), "{page}");
    assert_eq!(metric(&page, "waly_upload_failures_total"), Some(0.0), "{page}");
    assert_eq!(metric(&page, "waly_streaming"), Some(1.0), "{page}");
    assert_eq!(metric(&page, "waly_ready"), Some(1.0), "{page}");
    assert!(
        page.contains("waly_info{generation=\"00000001\",phase=\"streaming\"} 1"),
        "{page}"
    );
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/nope").map(|r| r.0), Some(404));

    // The archive starts failing: the segments directory becomes a file.
    let segs = std::path::Path::new(&archive).join("generations/00000001/segments");
    let aside = std::path::Path::new(&archive).join("segments-aside");
    std::fs::rename(&segs, &aside).expect("move aside");
    std::fs::write(&segs, b"not a directory").expect("block");
    db.psql("INSERT INTO m VALUES (1000, 'during the outage')");
    let (code, why) = wait_http(port, "/readyz", 60, "not ready", |c, _| c == 503);
    assert_eq!(code, 503);
    assert!(why.contains("uploads have been failing"), "{why}");
    let (code, _) = wait_http(port, "/healthz", 30, "unhealthy", |c, _| c == 503);
    assert_eq!(code, 503);
    let page = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
    above(&page, "waly_upload_failures_total", 0.0);
    above(&page, "waly_upload_retries_total", 0.0);
    above(&page, "waly_replication_lag_bytes", 0.0);
    above(&page, "waly_replication_lag_seconds", 0.0);
    assert_eq!(
        metric(&page, "waly_events_archived_total"),
        Some(103.0),
        "nothing counted that is not archived"
    );

    // It recovers by itself, and the row is archived.
    std::fs::remove_file(&segs).expect("unblock");
    std::fs::rename(&aside, &segs).expect("move back");
    wait_http(port, "/readyz", 60, "ready again", |c, _| c == 200);
    wait_http(port, "/metrics", 30, "the row counted", |_, b| {
        metric(b, "waly_events_archived_total") == Some(104.0) && metric(b, "waly_replication_lag_seconds") == Some(0.0)
    });
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    assert!(
        log_json(&archive, &["--table", "m"])
            .iter()
            .any(|v| v["key"]["id"] == "1000"),
        "the outage lost nothing"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

/// `waly run` for `db`'s slot with these extra arguments (and a 10 s idle
/// heartbeat: the tests wait for the slot to pass unpublished WAL).
fn spawn(db: &TestDb, archive: &str, extra: &[&str]) -> crate::harness::Running {
    crate::harness::Running::spawn(
        waly()
            .args([
                "run",
                "--source",
                &db.url(),
                "--archive",
                archive,
                "--slot",
                &slot(db),
                "--create-slot",
                "--idle-interval",
                "10s",
            ])
            .args(extra),
    )
}

fn signal(run: &crate::harness::Running, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &run.child.id().to_string()])
        .status()
        .map(|s| s.success());
    assert_eq!(ok.ok(), Some(true), "kill {sig}");
}

#[test]
fn a_standby_takes_over_and_a_deposed_writers_late_upload_is_fenced() {
    let db = TestDb::new();
    db.psql("CREATE TABLE s (id int PRIMARY KEY, era text); CREATE PUBLICATION waly FOR TABLE s;");
    let archive = archive_dir(&db);
    // A holds what it receives for a minute before uploading.
    let a_port = free_port();
    let a_addr = format!("127.0.0.1:{a_port}");
    let a = spawn(
        &db,
        &archive,
        &[
            "--flush-interval",
            "60s",
            "--standby-poll",
            "200ms",
            "--metrics-addr",
            &a_addr,
            "--log",
            "info",
        ],
    );
    wait_streaming(&db, &a);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let b = spawn(
        &db,
        &archive,
        &[
            "--flush-interval",
            "200ms",
            "--standby-poll",
            "200ms",
            "--metrics-addr",
            &addr,
            "--log",
            "info",
        ],
    );
    let (_, why) = wait_http(port, "/readyz", 60, "a waiting standby", |c, b| {
        c == 503 && b.contains("standby")
    });
    assert!(why.contains(&walsender_pid(&db)), "names the holder: {why}");
    assert_eq!(
        http_get(port, "/healthz").map(|r| r.0),
        Some(200),
        "a standby is healthy"
    );
    let page = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
    assert_eq!(metric(&page, "waly_standby"), Some(1.0), "{page}");

    // A receives the first era, then stalls (a long GC pause, a partition)
    // and loses its connection; its walsender goes away.
    for t in 0..10 {
        db.psql(&format!(
            "INSERT INTO s SELECT g, 'first' FROM generate_series({}, {}) g",
            1 + t * 10,
            10 + t * 10
        ));
    }
    let pid = walsender_pid(&db);
    let end = db.current_lsn();
    db.wait_for(
        &format!("SELECT sent_lsn >= '{end}' FROM pg_stat_replication WHERE pid = {pid}"),
        "t",
        60,
    );
    signal(&a, "-STOP");
    db.psql(&format!("SELECT pg_terminate_backend({pid})"));

    // B takes over, from what the archive holds.
    wait_http(port, "/readyz", 60, "the standby taking over", |c, _| c == 200);
    for t in 0..10 {
        db.psql(&format!(
            "INSERT INTO s SELECT g, 'second' FROM generate_series({}, {}) g",
            101 + t * 10,
            110 + t * 10
        ));
    }
    wait_confirmed(&db, 120);

    // A wakes up and uploads what it held, too late: under its old token.
    signal(&a, "-CONT");
    let segs = std::path::Path::new(&archive).join("generations/00000001/segments");
    let deadline = Instant::now() + Duration::from_secs(60);
    let late = loop {
        let found = std::fs::read_dir(&segs)
            .expect("segments")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with("-0000000001.jsonl.zst"))
            .max();
        if let Some(n) = found.filter(|_| a.stderr_so_far().contains("standby")) {
            break n;
        }
        assert!(Instant::now() < deadline, "A uploaded nothing: {}", a.stderr_so_far());
        std::thread::sleep(Duration::from_millis(100));
    };
    wait_confirmed(&db, 120);
    assert!(b.stderr_so_far().contains("taking over"), "{}", b.stderr_so_far());

    // A is the standby now. Kill B outright: A takes over and archives the third era.
    let mut b = b;
    let _ = b.child.kill();
    let _ = b.child.wait();
    let mut before_last = waly::Lsn(0);
    for t in 0..10 {
        before_last = db.current_lsn();
        db.psql(&format!(
            "INSERT INTO s SELECT g, 'third' FROM generate_series({}, {}) g",
            201 + t * 10,
            210 + t * 10
        ));
    }
    // A holds what it streams for up to a minute; SIGTERM makes it flush
    // what it has received. What the server sent but A has not read yet is
    // left for the next session, so wait until A has the last transaction:
    // the only one published that ends after `before_last`.
    let deadline = Instant::now() + Duration::from_secs(60);
    let received = loop {
        let page = http_get(a_port, "/metrics").map(|r| r.1).unwrap_or_default();
        match metric(&page, "waly_received_lsn") {
            Some(r) if r > before_last.as_u64() as f64 => break r as u64,
            r => assert!(
                Instant::now() < deadline,
                "A did not receive the third era (received {r:?}, want past {before_last}): {}",
                a.stderr_so_far()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(a.stderr_so_far().contains("taking over"), "{}", a.stderr_so_far());
    let (status, a_said) = a.terminate(60);
    assert!(status.success(), "{a_said}");
    let confirmed = format!(
        "SELECT confirmed_flush_lsn >= '{}' FROM pg_replication_slots WHERE slot_name = '{}'",
        waly::Lsn(received),
        slot(&db)
    );
    assert_eq!(db.psql(&confirmed), "t", "A flushed and confirmed the third era");

    // Leases 1 (A), 2 (B, from where A's uploads stopped counting), 3 (A again).
    let mut leases: Vec<String> = std::fs::read_dir(std::path::Path::new(&archive).join("leases"))
        .expect("leases")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    leases.sort();
    assert_eq!(leases.len(), 3, "{leases:?}");
    let b_first: u64 = leases[1][20..30].parse().expect("first segment");
    let late_number: u64 = late[..10].parse().expect("number");
    assert!(
        late_number >= b_first,
        "A's upload {late} lies in B's lease from {b_first}"
    );

    // Verify: clean, the late upload named as fenced; no interleaving.
    let (code, report) = verify_json(&archive);
    let problems = report["report"]["problems"].as_array().cloned().unwrap_or_default();
    assert_eq!(code, 0, "{report}");
    assert!(
        problems
            .iter()
            .any(|p| p["kind"] == "fenced" && p["object"].as_str().unwrap_or("").ends_with(&late)),
        "{report}"
    );
    assert!(problems.iter().all(|p| p["harmless"] == true), "{report}");
    // No loss, no duplicate: each row once, with its era.
    let rows = log_json(&archive, &["--table", "s"]);
    let mut ids: Vec<i64> = rows
        .iter()
        .filter_map(|v| v["key"]["id"].as_str().and_then(|s| s.parse().ok()))
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=300).collect::<Vec<i64>>());
    let status = crate::archive::status_json(&db, &archive);
    assert_eq!(status["archive"]["writer"]["token"], 3, "{status}");
    // A's lost connection is the sidecar's last recorded error.
    let last = &status["archive"]["last_error"];
    assert!(last["error"].as_str().unwrap_or("").contains("connection"), "{status}");
    assert!(last["host"].as_str().unwrap_or("").contains(':'), "{status}");
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn an_invalidated_slot_is_reported_starts_a_new_generation_and_restore_refuses_the_gap() {
    // max_slot_wal_keep_size is cluster-wide: a small cluster of its own.
    let Some(cluster) = crate::harness::own_cluster(&["max_slot_wal_keep_size=1MB"]) else {
        return;
    };
    let db = TestDb::on(cluster);
    db.psql(
        "CREATE TABLE acct (id int PRIMARY KEY, note text); CREATE TABLE junk (x text);
         CREATE PUBLICATION waly FOR TABLE acct;",
    );
    let archive = archive_dir(&db);
    let run = spawn(&db, &archive, &["--flush-interval", "200ms"]);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO acct VALUES (1, 'first era')");
    wait_confirmed(&db, 120);
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");

    // While waly is away, more WAL than the slot may keep: PostgreSQL
    // invalidates it at a checkpoint.
    db.psql("INSERT INTO acct VALUES (2, 'lost in the gap')");
    let in_gap = db.now_utc();
    let wal_status = format!(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{}'",
        slot(&db)
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while db.psql(&wal_status) != "lost" {
        assert!(
            Instant::now() < deadline,
            "the slot was not invalidated: {}",
            db.psql(&wal_status)
        );
        db.psql(
            "INSERT INTO junk SELECT repeat('x', 100) FROM generate_series(1, 2000);
             SELECT pg_switch_wal(); INSERT INTO junk VALUES ('y'); SELECT pg_switch_wal(); CHECKPOINT;",
        );
    }

    let run = spawn(&db, &archive, &["--flush-interval", "200ms"]);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO acct VALUES (3, 'second era')");
    crate::archive::wait_logged_ids(&archive, "acct", &["1", "3"], &run);
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("the slot was invalidated"), "reported: {stderr}");
    assert!(stderr.contains("STARTING A NEW GENERATION"), "{stderr}");
    let gen2: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(&archive).join("generations/00000002/generation.json")).expect("gen 2"),
    )
    .expect("json");
    assert!(gen2["reason"].as_str().unwrap_or("").contains("invalidated"), "{gen2}");

    // Restore works on either side and refuses the gap, naming both sides.
    let show = |at: &str| {
        run_within(
            waly().args(["show", "acct", "--archive", &archive, "--format", "csv", "--at", at]),
            120,
        )
    };
    let now = chrono::Utc::now().to_rfc3339();
    let after = show(&now);
    assert!(after.status.success(), "{}", String::from_utf8_lossy(&after.stderr));
    let rows = String::from_utf8_lossy(&after.stdout).lines().count();
    assert_eq!(rows, 4, "header and rows 1, 2 (from the new snapshot), 3");
    let gap = show(&in_gap);
    let err = String::from_utf8_lossy(&gap.stderr);
    assert!(!gap.status.success(), "a point in the gap restored");
    assert!(
        err.contains("gap") && err.contains("generation 00000001: from") && err.contains("generation 00000002: from"),
        "{err}"
    );

    // Pruning to a window inside generation 2 deletes generation 1 whole;
    // what the window holds still restores, and verify is clean.
    std::thread::sleep(Duration::from_millis(500));
    let pruned = run_within(waly().args(["prune", "--archive", &archive, "--keep", "0.2s"]), 120);
    let said = String::from_utf8_lossy(&pruned.stderr);
    assert!(pruned.status.success(), "{said}");
    assert!(said.contains("generation 00000001 ends before the window"), "{said}");
    assert!(!std::path::Path::new(&archive).join("generations/00000001").exists());
    let again = show(&chrono::Utc::now().to_rfc3339());
    assert_eq!(again.stdout, after.stdout, "{}", String::from_utf8_lossy(&again.stderr));
    let (code, report) = verify_json(&archive);
    assert_eq!(code, 0, "{report}");
    drop(db);
    cluster.stop();
    let _ = std::fs::remove_dir_all(&archive);
}

/// The rows of `waly show TABLE --at AT` as sorted `a|b` lines, or the error.
fn show_at(archive: &str, table: &str, at: &str) -> Result<Vec<String>, String> {
    let out = run_within(
        waly().args(["show", table, "--archive", archive, "--format", "csv", "--at", at]),
        120,
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut rows: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.trim_matches('"')).collect::<Vec<_>>().join("|"))
        .collect();
    rows.sort();
    Ok(rows)
}

/// The table as it is now, sorted like [`show_at`], and the time.
fn state_now(db: &TestDb, table: &str) -> (String, Vec<String>) {
    let mut rows: Vec<String> = db
        .psql(&format!("SELECT id, v FROM {table}"))
        .lines()
        .map(str::to_string)
        .collect();
    rows.sort();
    let at = db.now_utc();
    (at, rows)
}

/// A crash while `waly run` takes a snapshot leaves its parts without a
/// manifest. A prune deletes them once later snapshots, taken before the
/// window, replace every table they hold (no point in the window could
/// start from them), and leaves a marker there: a manifest the interrupted
/// writer writes late is ignored by every reader and by verify. One that
/// nothing replaces yet (it may be in progress) stays.
#[test]
fn prune_deletes_a_snapshot_a_crash_left_unfinished_once_later_ones_replace_it_and_readers_ignore_it_after() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, 50) g;
         CREATE PUBLICATION waly FOR TABLE s;",
    );
    let archive = archive_dir(&db);
    let run = crate::archive::spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE s SET v = 'changed' WHERE id <= 10");
    wait_confirmed(&db, 120);
    let snapshots = std::path::Path::new(&archive).join("generations/00000001/snapshots");
    let dirs = |p: &std::path::Path| -> Vec<String> {
        let mut d: Vec<String> = std::fs::read_dir(p)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        d.sort();
        d
    };
    let base = dirs(&snapshots).first().cloned().expect("the base snapshot");
    let base_lsn = u64::from_str_radix(&base, 16).expect("hex");
    let part = snapshots.join(&base).join("public.s/000000.jsonl.zst");
    // What a crash leaves: parts of s, just after the base snapshot, and
    // parts of s and of a table no later snapshot holds.
    let left = |lsn: u64, tables: &[&str]| {
        let dir = snapshots.join(format!("{lsn:016X}"));
        for t in tables {
            std::fs::create_dir_all(dir.join(t)).expect("mkdir");
            std::fs::copy(&part, dir.join(t).join("000000.jsonl.zst")).expect("copy a part");
        }
        dir
    };
    let replaced = left(base_lsn + 1, &["public.s"]);
    let pending = left(base_lsn + 2, &["public.s", "public.other"]);
    let c = run_within(waly().args(["compact", "--archive", &archive]), 120);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    std::thread::sleep(Duration::from_millis(1500));
    db.psql("UPDATE s SET v = 'later' WHERE id = 20");
    wait_confirmed(&db, 120);
    let out = run_within(waly().args(["prune", "--archive", &archive, "--keep", "1s"]), 120);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the snapshot at LSN {} was left unfinished",
            waly::Lsn(base_lsn + 1)
        )) && !stderr.contains(&waly::Lsn(base_lsn + 2).to_string()),
        "{stderr}"
    );
    assert_eq!(
        files_under(
            &archive,
            &format!("generations/00000001/snapshots/{:016X}", base_lsn + 1)
        ),
        ["abandoned.json"],
        "the replaced one: its marker only"
    );
    assert_eq!(
        dirs(&pending),
        ["public.other", "public.s"],
        "the one nothing replaces stays"
    );
    std::fs::remove_dir_all(&pending).expect("rm");
    // Its writer wakes and finishes it, late: a manifest naming parts
    // that are gone. Every reader ignores it.
    let kept = dirs(&snapshots)
        .into_iter()
        .find(|d| snapshots.join(d).join("manifest.json").exists())
        .expect("a snapshot kept");
    let mut late: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snapshots.join(&kept).join("manifest.json")).expect("manifest"))
            .expect("json");
    late["lsn"] = waly::Lsn(base_lsn + 1).to_string().into();
    let late = late.to_string().replace(&kept, &format!("{:016X}", base_lsn + 1));
    assert!(late.contains(&format!("{:016X}/public.s/", base_lsn + 1)), "{late}");
    std::fs::write(replaced.join("manifest.json"), late).expect("the late manifest");
    let (code, report) = verify_json(&archive);
    assert_eq!(code, 0, "{report}");
    assert!(
        report["report"]["problems"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["kind"] == "abandoned_snapshot" && p["harmless"] == true)),
        "{report}"
    );
    let state = state_now(&db, "s");
    assert_eq!(show_at(&archive, "s", &state.0), Ok(state.1));
    let snapshot_lsns: std::collections::BTreeSet<String> = log_json(&archive, &["--snapshot"])
        .iter()
        .filter_map(|l| l["snapshot"]["lsn"].as_str().map(str::to_string))
        .collect();
    assert!(
        !snapshot_lsns.contains(&waly::Lsn(base_lsn + 1).to_string()) && snapshot_lsns.len() == 1,
        "{snapshot_lsns:?}"
    );
    crate::archive::settle(&db, run);
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn prune_keeps_every_point_inside_the_window_restorable_and_verify_clean() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE p (id int PRIMARY KEY, v text); INSERT INTO p SELECT g, 'seed' FROM generate_series(1, 5) g;
         CREATE PUBLICATION waly FOR TABLE p;",
    );
    let archive = archive_dir(&db);
    let mut run = spawn(&db, &archive, &["--flush-interval", "100ms"]);
    wait_streaming(&db, &run);
    // Before the window: changes, and snapshots made from the archive: one
    // in the middle (--lsn), one at the end.
    let (early, _) = state_now(&db, "p");
    let mut mid = None;
    for i in 0..5 {
        db.psql(&format!(
            "UPDATE p SET v = 'old{i}' WHERE id = {}; INSERT INTO p VALUES ({}, 'x')",
            i + 1,
            100 + i
        ));
        if i == 1 {
            mid = Some((db.current_lsn(), state_now(&db, "p")));
            // A restart: a second lease, from here on.
            crate::archive::settle(&db, run);
            run = spawn(&db, &archive, &["--flush-interval", "100ms"]);
            wait_streaming(&db, &run);
        }
    }
    let Some((mid_lsn, (mid_at, mid_rows))) = mid else {
        unreachable!()
    };
    wait_confirmed(&db, 120);
    let compact = |extra: &[&str]| {
        let out = run_within(waly().args(["compact", "--archive", &archive]).args(extra), 120);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let from_segments = show_at(&archive, "public.p", &mid_at);
    let said = compact(&["--lsn", &mid_lsn.to_string()]);
    assert!(
        said.contains("compacted 1 table(s), 7 rows, 4 changes folded"),
        "{said}"
    );
    assert_eq!(from_segments.as_ref(), Ok(&mid_rows));
    assert_eq!(
        show_at(&archive, "public.p", &mid_at),
        from_segments,
        "from the compacted snapshot"
    );
    let said = compact(&[]);
    assert!(
        said.contains("compacted 1 table(s), 10 rows, 6 changes folded"),
        "{said}"
    );
    assert!(compact(&[]).contains("nothing to compact"));
    std::thread::sleep(Duration::from_millis(1100));
    let window = Instant::now();
    let (at_window, rows_at_window) = state_now(&db, "p");
    // Inside the window: changes, each point remembered with the table.
    let mut points = vec![(at_window, rows_at_window)];
    for i in 0..4 {
        db.psql(&format!(
            "UPDATE p SET v = 'new{i}' WHERE id = {}; DELETE FROM p WHERE id = {}; INSERT INTO p VALUES ({}, 'y')",
            i + 2,
            100 + i,
            200 + i
        ));
        wait_confirmed(&db, 120);
        points.push(state_now(&db, "p"));
    }
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");

    let before = files_under(&archive, "");
    let keep = format!("{:.3}s", window.elapsed().as_secs_f64() + 0.3);
    let dry = run_within(
        waly().args(["prune", "--archive", &archive, "--keep", &keep, "--dry-run"]),
        120,
    );
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let listed = String::from_utf8_lossy(&dry.stdout);
    assert!(listed.contains("/segments/0000000000-"), "{listed}");
    assert_eq!(files_under(&archive, ""), before, "a dry run deletes nothing");
    let pruned = run_within(waly().args(["prune", "--archive", &archive, "--keep", &keep]), 120);
    assert!(pruned.status.success(), "{}", String::from_utf8_lossy(&pruned.stderr));
    let after = files_under(&archive, "");
    let gone: Vec<&String> = before.iter().filter(|f| !after.contains(f)).collect();
    assert_eq!(
        gone.len(),
        listed.lines().filter(|l| l.starts_with("would delete")).count(),
        "{gone:?}\n{listed}"
    );
    assert!(gone.iter().any(|f| f.contains("/segments/")), "{gone:?}");
    let snapshots = |files: &[String]| files.iter().filter(|f| f.ends_with("manifest.json")).count();
    assert_eq!(
        (snapshots(&before), snapshots(&after)),
        (3, 1),
        "the source snapshot went, the compacted one stayed"
    );

    // The first lease went with the last segment written under it.
    let leases = files_under(&archive, "leases");
    assert!(before.iter().any(|f| f.starts_with("leases/0000000001-")), "{before:?}");
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(leases[0].starts_with("0000000002-"), "{leases:?}");

    // Every point inside the window restores exactly; verify is clean.
    for (at, want) in &points {
        assert_eq!(show_at(&archive, "public.p", at).as_ref(), Ok(want), "at {at}");
    }
    let (code, report) = verify_json(&archive);
    assert_eq!(code, 0, "{report}");
    // A point whose path is gone is refused, not answered wrongly.
    let err = show_at(&archive, "public.p", &early).expect_err("before the kept snapshot");
    assert!(err.contains("before the archive's history"), "{err}");

    // The sidecar continues the pruned chain.
    let run = spawn(&db, &archive, &["--flush-interval", "100ms"]);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO p VALUES (300, 'after the prune')");
    wait_confirmed(&db, 120);
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    let (at, want) = state_now(&db, "p");
    assert_eq!(show_at(&archive, "public.p", &at).as_ref(), Ok(&want));
    let (code, report) = verify_json(&archive);
    assert_eq!(code, 0, "{report}");
    let _ = std::fs::remove_dir_all(&archive);
}

/// PostgreSQL shuts down at once beside an idle `waly run`, even when WAL it
/// does not archive (a checkpoint here) came after its last change: a
/// server that shuts down waits until a reply confirms all it sent, and
/// waly confirms then, not at its next idle heartbeat (an hour here, so
/// that waiting for it would time pg_ctl out), and goes on after the
/// restart.
#[test]
fn postgres_shuts_down_at_once_beside_an_idle_waly_behind_unpublished_wal() {
    let Some(cluster) = crate::harness::own_cluster(&[]) else {
        return;
    };
    let db = TestDb::on(cluster);
    db.psql("CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s VALUES (1, 'a')");
    let archive = archive_dir(&db);
    crate::schemas::init(&db, &archive);
    let run = spawn_run_as(&db, &db.url(), &archive, &["--idle-interval", "1h"]);
    wait_streaming(&db, &run);
    db.psql("UPDATE s SET v = 'b'");
    wait_confirmed(&db, 120);
    db.psql("CHECKPOINT");
    let confirmed = db.psql(&format!(
        "SELECT confirmed_flush_lsn < pg_current_wal_lsn() FROM pg_replication_slots WHERE slot_name = '{}'",
        slot(&db)
    ));
    assert_eq!(confirmed, "t", "the slot is behind WAL nothing published wrote");
    // pg_ctl waits 60 s for the shutdown, then fails (and so does this).
    cluster.restart("fast");
    db.psql("UPDATE s SET v = 'c'");
    wait_confirmed(&db, 120);
    crate::archive::settle(&db, run);
    let log = log_json(&archive, &[]);
    assert!(log.iter().any(|e| e["new"]["v"] == "c"), "{log:?}");
    cluster.stop();
    let _ = std::fs::remove_dir_all(&archive);
}

/// The archive's database moves to another cluster (`pg_upgrade`, or a dump
/// and restore): `waly init --source-moved` carries the archive on. Until
/// then `waly run` on the new cluster is refused, saying so; a cluster
/// whose WAL lies before the archive's end is refused, saying how to fix
/// it; after the move history goes on in a new generation that records its
/// source, the old cluster is refused, and points on both sides restore.
/// Every reader (tables, schema, log, history, export, verify) answers the
/// same across the move before and after `compact` and `reindex`; a prune
/// whose window starts after the move deletes the first generation whole,
/// and the readers and the writer go on from what it kept.
#[test]
fn a_database_moved_to_another_cluster_carries_its_archive_on_after_init_source_moved() {
    let (Some(old), Some(new)) = (crate::harness::own_cluster(&[]), crate::harness::own_cluster(&[])) else {
        return;
    };
    let db = TestDb::on(old);
    let schema = "CREATE TABLE acct (id int PRIMARY KEY, v int); CREATE PUBLICATION waly FOR TABLE acct;";
    db.psql(schema);
    db.psql("INSERT INTO acct SELECT g, g FROM generate_series(1, 20) g");
    // The old cluster's WAL runs ahead of the new one's.
    for _ in 0..3 {
        db.psql("CREATE TABLE x (); DROP TABLE x; SELECT pg_switch_wal();");
    }
    let archive = archive_dir(&db);
    // `waly run` on `on` while `sql` runs: the table then, and what it said.
    let era = |on: &TestDb, sql: &str| {
        let run = spawn(on, &archive, &["--flush-interval", "200ms"]);
        wait_streaming(on, &run);
        on.psql(sql);
        wait_confirmed(on, 120);
        let state = state_now(on, "acct");
        let (status, stderr) = run.terminate(60);
        assert!(status.success(), "{stderr}");
        (state, stderr)
    };
    let (before_move, _) = era(
        &db,
        "UPDATE acct SET v = v + 100 WHERE id <= 5; DELETE FROM acct WHERE id = 20",
    );

    // The database moves: its schema and rows, under the same name (so
    // the same slot name).
    new.psql("postgres", &format!("CREATE DATABASE {}", db.name));
    let moved = TestDb {
        name: db.name.clone(),
        cluster: new,
    };
    moved.psql(schema);
    moved.psql(&format!(
        "INSERT INTO acct VALUES {}",
        db.psql("SELECT string_agg(format('(%s,%s)', id, v), ',') FROM acct")
    ));
    let run_on = |on: &TestDb| run_within(&mut crate::archive::run_command(on, &on.url(), &archive, &[]), 120);
    let refused = run_on(&moved);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("belongs to database") && err.contains("waly init --source-moved"),
        "{err}"
    );
    let init = || {
        run_within(
            waly().args([
                "init",
                "--source",
                &moved.url(),
                "--archive",
                &archive,
                "--slot",
                &slot(&moved),
                "--source-moved",
            ]),
            120,
        )
    };
    let behind = init();
    let err = String::from_utf8_lossy(&behind.stderr);
    assert!(!behind.status.success(), "{err}");
    assert!(
        err.contains("LSNs would go back") && err.contains("pg_resetwal -l"),
        "{err}"
    );
    assert!(!std::path::Path::new(&archive).join("sources").exists());
    // Its WAL goes past the archive's end (pg_resetwal would do it at once).
    while moved.current_lsn() <= db.current_lsn() {
        moved.psql("CREATE TABLE x (); DROP TABLE x; SELECT pg_switch_wal();");
    }
    let done = init();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stdout).contains("the archive follows"));

    let (after_move, stderr) = era(
        &moved,
        "UPDATE acct SET v = v + 1000 WHERE id <= 2; INSERT INTO acct VALUES (21, 21)",
    );
    assert!(stderr.contains("the source moved from"), "{stderr}");
    let gen = |n: &str| -> serde_json::Value {
        let path = std::path::Path::new(&archive).join(format!("generations/{n}/generation.json"));
        serde_json::from_slice(&std::fs::read(path).expect("generation.json")).expect("json")
    };
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(std::path::Path::new(&archive).join("waly.json")).expect("waly.json"))
            .expect("json");
    let followed = gen("00000002")["source"]["system_identifier"].clone();
    assert!(
        followed.is_string() && followed != identity["system_identifier"],
        "{followed}"
    );

    let status = run_within(
        waly().args([
            "status",
            "--archive",
            &archive,
            "--source",
            &moved.url(),
            "--slot",
            &slot(&moved),
        ]),
        120,
    );
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        said.contains(&format!(
            "source: database {} of cluster {}",
            moved.name,
            followed.as_str().unwrap_or("?")
        )),
        "{said}"
    );

    // The old cluster is refused now.
    let stale = run_on(&db);
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(!stale.status.success() && err.contains("belongs to database"), "{err}");

    // Both sides restore (the old side up to its last commit: after it
    // lies the move, which the archive did not see); a row's history goes
    // through both generations.
    let last_before = log_json(&archive, &["--table", "acct"])
        .iter()
        .filter_map(|c| c["commit_time"].as_str().map(str::to_string))
        .filter(|t| *t < before_move.0)
        .max()
        .expect("a commit before the move");
    assert_eq!(show_at(&archive, "acct", &last_before), Ok(before_move.1.clone()));
    assert!(show_at(&archive, "acct", &before_move.0).is_err_and(|e| e.contains("gap")));
    assert_eq!(show_at(&archive, "acct", &after_move.0), Ok(after_move.1.clone()));
    let out = run_within(
        waly().args(["history", "acct", "1", "--archive", &archive, "--json"]),
        120,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let versions: Vec<(String, String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .map(|v| {
            let s = |f: &str| v[f].as_str().unwrap_or_default().to_string();
            (
                s("generation"),
                s("op"),
                v["new"]["v"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want = [
        ("00000001", "snapshot", "1"),
        ("00000001", "update", "101"),
        ("00000002", "snapshot", "101"),
        ("00000002", "update", "1101"),
    ];
    assert_eq!(
        versions,
        want.map(|(g, o, v)| (g.to_string(), o.to_string(), v.to_string()))
    );
    let (code, report) = verify_json(&archive);
    assert_eq!(code, 0, "{report}");
    let against = run_within(
        waly().args(["verify", "--archive", &archive, "--against-source", &moved.url()]),
        120,
    );
    assert!(against.status.success(), "{}", String::from_utf8_lossy(&against.stderr));

    // Every other reader says the same across the move, and goes on saying
    // it after each maintenance step.
    let answers = |step: &str| {
        let said = |args: &[&str]| {
            eprintln!("{step}: waly {args:?}");
            crate::history::json_lines(&run_within(waly().args(args).args(["--archive", &archive]), 120))
        };
        let field = |v: &serde_json::Value, f: &str| v[f].as_str().map_or_else(|| v[f].to_string(), str::to_string);
        let tables: Vec<String> = said(&["tables", "--json"])
            .iter()
            .map(|t| format!("{} {} {}", field(t, "table"), t["changes"], t["schema_versions"]))
            .collect();
        let schema: Vec<String> = said(&["schema", "acct", "--json"])
            .iter()
            .map(|v| format!("{} {}", field(v, "generation"), v["version"]))
            .collect();
        let log: Vec<String> = said(&["log", "--table", "acct", "--json"])
            .iter()
            .map(|c| {
                let row = if c["new"].is_null() { &c["old"] } else { &c["new"] };
                format!(
                    "{} {} {}",
                    field(c, "op"),
                    row["id"].as_str().unwrap_or("?"),
                    c["new"]["v"].as_str().unwrap_or("-")
                )
            })
            .collect();
        let history: Vec<String> = said(&["history", "acct", "1", "--json"])
            .iter()
            .map(|v| {
                format!(
                    "{} {} {}",
                    field(v, "generation"),
                    field(v, "op"),
                    v["new"]["v"].as_str().unwrap_or("-")
                )
            })
            .collect();
        let dest = format!("{archive}-export-{}", step.replace(' ', "-"));
        let _ = std::fs::remove_dir_all(&dest);
        said(&["export", "--to", &dest]);
        let mut exported: Vec<String> = crate::export::as_of_now(&dest, "public.acct")
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(Option::unwrap_or_default)
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        exported.sort();
        let _ = std::fs::remove_dir_all(&dest);
        let (code, report) = verify_json(&archive);
        assert_eq!(code, 0, "{step}: {report}");
        (tables, schema, log, history, exported)
    };
    let first = answers("after the move");
    // A schema version in each generation; every change of both.
    assert_eq!(first.0, ["public.acct 9 2"]);
    assert_eq!(first.1, ["00000001 1", "00000002 1"]);
    assert_eq!(
        first.2,
        [
            "update 1 101",
            "update 2 102",
            "update 3 103",
            "update 4 104",
            "update 5 105",
            "delete 20 -",
            "update 1 1101",
            "update 2 1102",
            "insert 21 21"
        ]
    );
    assert_eq!(first.3, want.map(|(g, o, v)| format!("{g} {o} {v}")));
    assert_eq!(first.4, state_now(&moved, "acct").1, "the export as of now");
    for step in ["compact", "reindex"] {
        let out = run_within(waly().args([step, "--archive", &archive]), 120);
        assert!(out.status.success(), "{step}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(answers(step), first, "after {step}");
        assert_eq!(
            show_at(&archive, "acct", &last_before),
            Ok(before_move.1.clone()),
            "{step}"
        );
        assert_eq!(
            show_at(&archive, "acct", &after_move.0),
            Ok(after_move.1.clone()),
            "{step}"
        );
    }
    // A prune whose window starts after the move deletes the first
    // generation whole; what the window holds stays.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (last, _) = era(&moved, "UPDATE acct SET v = v + 10000 WHERE id IN (1, 3)");
    let out = run_within(waly().args(["prune", "--archive", &archive, "--keep", "1s"]), 120);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deleting generations/00000001/generation.json"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let pruned = answers("prune");
    assert_eq!(pruned.0, ["public.acct 2 1"]);
    assert_eq!(pruned.1, ["00000002 1"]);
    assert_eq!(pruned.2, ["update 1 11101", "update 3 10103"]);
    // From the snapshot compact took, which starts the archive now.
    assert_eq!(pruned.3, ["00000002 snapshot 1101", "00000002 update 11101"]);
    assert_eq!(pruned.4, last.1, "the export as of now");
    assert!(show_at(&archive, "acct", &last_before).is_err_and(|e| e.contains("before the archive's history")));
    assert_eq!(show_at(&archive, "acct", &last.0), Ok(last.1.clone()));
    // The writer goes on from the pruned archive on the new cluster only.
    let (went_on, _) = era(&moved, "INSERT INTO acct VALUES (22, 22)");
    assert_eq!(show_at(&archive, "acct", &went_on.0), Ok(went_on.1));
    let stale = run_on(&db);
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(!stale.status.success() && err.contains("belongs to database"), "{err}");
    let (code, report) = verify_json(&archive);
    assert_eq!(code, 0, "{report}");
    drop(moved);
    drop(db);
    new.stop();
    old.stop();
    let _ = std::fs::remove_dir_all(&archive);
}
