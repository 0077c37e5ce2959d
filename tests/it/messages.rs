//! Messages that give the cause and the fix, and command-line rules that
//! refuse what cannot mean anything (issue: every reader agrees, part 4).

use crate::archive::{archive_dir, settle, slot, spawn_run, spawn_run_as, wait_confirmed, wait_streaming};
use crate::harness::{free_port, run_within, wait_http, waly, TestDb};
use crate::restore::ok;
use crate::schemas::init;
use std::process::Output;

fn fails(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a failure: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A server that answers every TLS request with "no" (as one with ssl = off).
fn server_without_tls() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut request = [0u8; 8];
            if c.read_exact(&mut request).is_ok() {
                let _ = c.write_all(b"N");
            }
        }
    });
    port
}

#[test]
fn connection_failures_say_which_it_is_and_what_to_check() {
    let archive = format!(
        "{}/waly-msg-{}",
        std::env::temp_dir().display(),
        crate::harness::run_id()
    );
    // Both connections waly makes: replication (tail) and SQL (init).
    let both = |source: &str| -> Vec<String> {
        vec![
            fails(&run_within(waly().args(["tail", "--source", source]), 60)),
            fails(&run_within(
                waly().args(["init", "--source", source, "--archive", &archive]),
                60,
            )),
        ]
    };
    let port = free_port();
    for err in both(&format!("host=127.0.0.1 port={port} user=x dbname=x")) {
        assert!(
            err.contains("connection refused") && err.contains("no server listens there"),
            "{err}"
        );
        assert!(err.contains("--source (or WALY_SOURCE)"), "{err}");
    }
    for err in both("host=no-such-host.invalid port=5432 user=x dbname=x connect_timeout=10") {
        assert!(err.contains("the host name does not resolve"), "{err}");
    }
    let port = server_without_tls();
    for err in both(&format!("host=127.0.0.1 port={port} user=x dbname=x sslmode=require")) {
        assert!(err.contains("does not offer TLS") && err.contains("sslmode"), "{err}");
        assert!(!err.contains("error performing TLS handshake"), "{err}");
    }
    // No source at all: the hint names --source and WALY_SOURCE.
    let mut c = waly();
    for v in ["WALY_SOURCE", "PGHOST", "PGPORT", "PGDATABASE", "PGUSER"] {
        c.env_remove(v);
    }
    c.env("PGPORT", free_port().to_string());
    let err = fails(&run_within(c.args(["tail"]), 60));
    assert!(err.contains("--source") && err.contains("WALY_SOURCE"), "{err}");
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn command_line_rules_refuse_what_cannot_mean_anything_and_say_where_the_archive_ends() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE note (id int PRIMARY KEY, body text);
         INSERT INTO note SELECT g, repeat('long text ', 10) || g FROM generate_series(1, 5) g;",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    // After init, `waly run --slot` with a slot that does not exist: no quiet permanent
    // slot, but where to create it.
    let out = run_within(
        waly().args([
            "run",
            "--source",
            &db.url(),
            "--archive",
            &format!("{archive}-fresh"),
            "--slot",
            "no_such_slot",
            "--log",
            "warn",
        ]),
        60,
    );
    let err = fails(&out);
    assert!(
        err.contains("\"no_such_slot\" does not exist") && err.contains("waly init"),
        "{err}"
    );
    assert!(err.contains("--create-slot"), "{err}");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'no_such_slot'"),
        "0"
    );
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE note SET body = body || ' (edited)' WHERE id = 2");
    settle(&db, run);
    let waly_in = |args: &[&str]| run_within(waly().args(args).args(["--archive", &archive]), 60);

    // --into with --output (csv): refused, saying why.
    let err = fails(&waly_in(&[
        "restore",
        "note",
        "--at",
        "now",
        "--into",
        "x",
        "--output",
        "-",
        "--source",
        &db.url(),
    ]));
    assert!(err.contains("--into names a table to create"), "{err}");
    // log --table with a table the archive does not hold lists those it does.
    let err = fails(&waly_in(&["log", "--table", "nope"]));
    assert!(
        err.contains("table public.nope is not in the archive") && err.contains("public.note"),
        "{err}"
    );
    // A point in the future is an error, not the latest state passed off.
    let err = fails(&waly_in(&["show", "note", "--at", "2999-01-01T00:00:00Z"]));
    assert!(err.contains("is in the future"), "{err}");
    // A point past the last archived transaction says where the archive ends.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let shown = waly_in(&["show", "note", "--at", "now"]);
    let note = String::from_utf8_lossy(&shown.stderr);
    assert!(shown.status.success(), "{note}");
    assert!(
        note.contains("past the archive's last transaction") && note.contains("complete to LSN"),
        "{note}"
    );
    // An LSN given to --at is answered with --lsn.
    let err = fails(&waly_in(&["show", "note", "--at", "0/16B3748"]));
    assert!(err.contains("--lsn"), "{err}");
    // Default restore names are lower case: typed without quotes.
    let out = ok(&run_within(
        waly().args([
            "restore",
            "note",
            "--at",
            &db.now_utc(),
            "--archive",
            &archive,
            "--source",
            &db.url(),
        ]),
        120,
    ));
    let _ = out;
    let made = db.psql("SELECT relname FROM pg_class WHERE relname LIKE 'note_at_%'");
    assert!(!made.is_empty() && made == made.to_lowercase(), "{made}");
    assert_eq!(db.psql(&format!("SELECT count(*) FROM {made}")), "5");
    // history --full shows whole values.
    let full = ok(&waly_in(&["history", "note", "2", "--full"]));
    assert!(full.contains("long text long text long text long text long text long text long text long text long text long text 2 (edited)"), "{full}");
    assert!(!full.contains("chars)"), "{full}");
    let _ = std::fs::remove_dir_all(&archive);
    let _ = std::fs::remove_dir_all(format!("{archive}-fresh"));
}

#[test]
fn verify_against_source_says_what_it_compared_and_when_the_archive_is_behind() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE acct (id int PRIMARY KEY, v int);
         INSERT INTO acct SELECT g, g FROM generate_series(1, 40) g;",
    );
    let archive = archive_dir(&db);
    init(&db, &archive);
    let run = spawn_run(&db, &archive);
    wait_streaming(&db, &run);
    db.psql("UPDATE acct SET v = v + 1 WHERE id <= 10");
    settle(&db, run);
    let verify = || {
        run_within(
            waly().args(["verify", "--archive", &archive, "--against-source", &db.url()]),
            120,
        )
    };
    let clean = ok(&verify());
    assert!(clean.contains("equal: public.acct: 40 rows x 2 columns"), "{clean}");
    // The sidecar is stopped and the source moves on: behind, by how much,
    // not "differs".
    db.psql("UPDATE acct SET v = 0 WHERE id <= 3; DELETE FROM acct WHERE id = 40;");
    let out = verify();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("behind public.acct: the archive is behind the source"),
        "{report}"
    );
    assert!(
        report.contains("(4 row changes of published tables in between)"),
        "{report}"
    );
    assert!(!report.contains("differs"), "{report}");
    // The writer is shown as stopped.
    let status = ok(&run_within(
        waly().args([
            "status",
            "--source",
            &db.url(),
            "--archive",
            &archive,
            "--slot",
            &slot(&db),
        ]),
        60,
    ));
    assert!(status.contains("STOPPED: no process streams the slot"), "{status}");
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn the_guard_trigger_is_silent_for_temporary_tables() {
    let db = TestDb::new();
    db.psql("CREATE TABLE keyed (id int PRIMARY KEY)");
    let archive = archive_dir(&db);
    init(&db, &archive);
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args([&db.url(), "-X", "-c", sql])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let temp = psql("CREATE TEMP TABLE scratch (v int)");
    assert!(!temp.contains("NOTICE"), "{temp}");
    let unlogged = psql("CREATE UNLOGGED TABLE cache (v int)");
    assert!(!unlogged.contains("NOTICE"), "{unlogged}");
    let permanent = psql("CREATE TABLE loose (v int)");
    assert!(
        permanent.contains("NOTICE") && permanent.contains("REPLICA IDENTITY FULL"),
        "{permanent}"
    );
    assert_eq!(
        db.psql("SELECT relreplident FROM pg_class WHERE relname = 'loose'"),
        "f"
    );
    let _ = std::fs::remove_dir_all(&archive);
}

#[test]
fn an_archive_that_refuses_writes_is_named_retried_slowly_and_shown_on_readyz() {
    let db = TestDb::new();
    db.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');");
    let archive = archive_dir(&db);
    init(&db, &archive);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let run = spawn_run_as(&db, &db.url(), &archive, &["--metrics-addr", &addr]);
    wait_streaming(&db, &run);
    wait_http(port, "/readyz", 60, "ready", |c, _| c == 200);
    db.psql("INSERT INTO t VALUES (2, 'b')");
    wait_confirmed(&db, 60);
    if !crate::harness::freeze(&archive, true) {
        crate::harness::freeze(&archive, false);
        let _ = run.terminate(60);
        eprintln!("SKIPPED: this filesystem cannot make a directory unwritable for this user");
        return;
    }
    db.psql("INSERT INTO t VALUES (3, 'c')");
    let (_, why) = wait_http(port, "/readyz", 60, "the refusal on /readyz", |c, body| {
        c == 503 && body.contains("cannot be written")
    });
    assert!(
        why.contains("permission denied") || why.contains("Operation not permitted"),
        "{why}"
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        crate::harness::freeze(&archive, false),
        "could not make the archive writable again"
    );
    wait_http(port, "/readyz", 180, "ready again", |c, _| c == 200);
    wait_confirmed(&db, 120);
    let (status, stderr) = run.terminate(60);
    assert!(status.success(), "{stderr}");
    // The cause, named, a few times: not a retry every few hundred ms.
    let refusals = stderr.matches("the archive refuses waly's writes").count();
    assert!((1..=8).contains(&refusals), "{refusals} refusals: {stderr}");
    assert!(stderr.contains("check its owner, mode and attributes"), "{stderr}");
    assert!(!stderr.contains("upload failed; retrying"), "{stderr}");
    // Nothing lost.
    let shown = ok(&run_within(
        waly().args(["show", "t", "--archive", &archive, "--at", "now", "--format", "json"]),
        60,
    ));
    assert_eq!(shown.lines().count(), 3, "{shown}");
    ok(&run_within(waly().args(["verify", "--archive", &archive]), 120));
    let _ = std::fs::remove_dir_all(&archive);
}
