//! Bad input gets a clear message and a non-zero exit: never a panic, never a hang.

use crate::harness::{owned_cluster, run_within, waly, Cluster, TestDb, PASSWORD};
use std::process::Output;

/// Runs `waly tail` with `source`; asserts it failed cleanly and returns stderr.
fn tail_fails(source: &str, extra: &[&str]) -> String {
    let out: Output = run_within(waly().args(["tail", "--source", source]).args(extra), 30);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure, got success: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("error: "), "{stderr}");
    stderr
}

#[test]
fn wrong_password_is_reported_without_the_password() {
    let Some(_) = owned_cluster() else { return };
    let db = TestDb::new();
    let err = tail_fails(&db.tcp_url("scramuser", Some("hunter2-wrong"), "sslmode=disable"), &[]);
    assert!(
        err.contains("password authentication failed for user \"scramuser\""),
        "{err}"
    );
    assert!(!err.contains("hunter2-wrong") && !err.contains(PASSWORD), "{err}");
}

#[test]
fn closed_port_and_silent_server_fail_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let err = tail_fails(&format!("host=127.0.0.1 port={port} user=x dbname=x"), &[]);
    assert!(err.contains("could not connect to 127.0.0.1"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");

    // A listener that accepts and never answers: connect_timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let started = std::time::Instant::now();
    let err = tail_fails(
        &format!("host=127.0.0.1 port={port} user=x dbname=x connect_timeout=2"),
        &[],
    );
    assert!(err.contains("timed out after 2s"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    drop(silent);
}

#[test]
fn wal_level_not_logical_says_how_to_fix_it() {
    let cluster = Cluster::start(&["wal_level=replica"]);
    let err = tail_fails(&cluster.url("postgres"), &[]);
    assert!(err.contains("wal_level is \"replica\""), "{err}");
    assert!(
        err.contains("ALTER SYSTEM SET wal_level = logical") && err.contains("restart"),
        "{err}"
    );
}

#[test]
fn missing_publication_says_how_to_create_it() {
    let db = TestDb::new();
    let err = tail_fails(&db.url(), &["--publication", "nope"]);
    assert!(err.contains("publication \"nope\" does not exist"), "{err}");
    assert!(err.contains("CREATE PUBLICATION \"nope\""), "{err}");
}

#[test]
fn no_free_replication_slot_says_how_to_fix_it() {
    let cluster = Cluster::start(&["max_replication_slots=1"]);
    cluster.psql(
        "postgres",
        "CREATE PUBLICATION waly FOR ALL TABLES; SELECT pg_create_logical_replication_slot('taken', 'pgoutput');",
    );
    let err = tail_fails(&cluster.url("postgres"), &[]);
    assert!(err.contains("all replication slots are in use"), "{err}");
    assert!(err.contains("max_replication_slots"), "{err}");
}

#[test]
fn role_without_replication_says_which_attribute_it_needs() {
    let db = TestDb::new();
    db.psql("CREATE ROLE plain_role LOGIN; CREATE PUBLICATION waly FOR ALL TABLES");
    let url = format!("{} user=plain_role", db.url()).replace("user=postgres ", "");
    let err = tail_fails(&url, &[]);
    db.psql("DROP ROLE plain_role");
    assert!(err.contains("REPLICATION"), "{err}");
}

#[test]
fn unknown_sslmode_and_malformed_settings_are_refused_before_connecting() {
    let err = tail_fails("host=127.0.0.1 sslmode=sometimes", &[]);
    assert!(err.contains("unknown sslmode \"sometimes\""), "{err}");
    let err = tail_fails("postgres://u:topsecret@127.0.0.1:notaport/db", &[]);
    assert!(err.contains("invalid port"), "{err}");
    assert!(!err.contains("topsecret"), "{err}");
    let out = run_within(waly().args(["tail", "--endpos", "12"]), 10);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid LSN"));
}
