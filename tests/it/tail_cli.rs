//! `waly tail` as a person runs it.

use crate::harness::{run_within, waly, Running, TestDb};
use std::process::Command;

/// Waits until the tail's slot is consistent (it exists, but decodes nothing,
/// while it waits for transactions running anywhere in the cluster to end).
fn wait_for_tail_slot(db: &TestDb) {
    db.wait_for(
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'waly_tail_%' AND database = '{}' \
             AND active AND confirmed_flush_lsn IS NOT NULL",
            db.name
        ),
        "1",
        120,
    );
}

#[test]
fn tail_json_prints_every_change_and_leaves_no_slot_behind() {
    let db = TestDb::new();
    db.psql("CREATE TABLE users (id int PRIMARY KEY, name text, email text); CREATE PUBLICATION waly FOR ALL TABLES");
    let mut tail = Running::spawn(waly().args(["tail", "--json", "--source", &db.url()]));
    wait_for_tail_slot(&db);
    db.psql(
        "INSERT INTO users VALUES (1, 'ann', NULL), (2, '', 'b@x');
         BEGIN; SELECT pg_logical_emit_message(true, 'waly', 'intent: rename'); UPDATE users SET name = 'Ann' WHERE id = 1; COMMIT;
         DELETE FROM users WHERE id = 2;
         TRUNCATE users;",
    );
    let lines = tail.lines(6, 30);
    let (status, stderr) = tail.terminate(15);
    assert!(status.success(), "SIGTERM is a clean exit: {status:?} {stderr}");
    let v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let ins = &v[0];
    for field in [
        "commit_lsn",
        "seq",
        "lsn",
        "xid",
        "commit_time",
        "table",
        "op",
        "key",
        "old",
        "new",
        "unchanged_toast",
    ] {
        assert!(ins.get(field).is_some(), "{field} missing from {ins}");
    }
    assert_eq!(ins["op"], "insert");
    assert_eq!(ins["table"], "public.users");
    assert_eq!(ins["key"], serde_json::json!({"id": "1"}));
    assert_eq!(ins["new"], serde_json::json!({"id": "1", "name": "ann", "email": null}));
    assert_eq!(ins["old"], serde_json::Value::Null);
    let lsn = ins["commit_lsn"].as_str().unwrap_or_default();
    assert!(lsn.parse::<waly::Lsn>().is_ok(), "commit_lsn {lsn} is X/X");
    let t = ins["commit_time"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.ends_with('Z'),
        "{t}"
    );
    assert_eq!(
        t.split('.').nth(1).map(|f| f.len()),
        Some(7),
        "microseconds then Z: {t}"
    );
    assert_eq!(v[1]["new"]["name"], "", "empty string is not NULL");
    assert_eq!(
        v[2],
        serde_json::json!({"message": {"prefix": "waly", "content": "intent: rename", "transactional": true}})
    );
    assert_eq!(
        (v[3]["op"].as_str(), v[3]["new"]["name"].as_str()),
        (Some("update"), Some("Ann"))
    );
    assert_eq!(
        (v[4]["op"].as_str(), &v[4]["key"]),
        (Some("delete"), &serde_json::json!({"id": "2"}))
    );
    assert_eq!(v[5]["op"], "truncate");
    // The temporary slot went away with the connection.
    db.wait_for(
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE database = '{}'",
            db.name
        ),
        "0",
        10,
    );
}

#[test]
fn tail_text_is_one_readable_line_per_change() {
    let db = TestDb::new();
    db.psql("CREATE TABLE items (id int PRIMARY KEY, label text); CREATE PUBLICATION waly FOR ALL TABLES");
    let mut tail = Running::spawn(waly().args(["tail", "--source", &db.url()]));
    wait_for_tail_slot(&db);
    db.psql("INSERT INTO items VALUES (7, 'it''s'); UPDATE items SET id = 8 WHERE id = 7; DELETE FROM items;");
    let lines = tail.lines(3, 30);
    let (status, _) = tail.terminate(15);
    assert!(status.success());
    assert!(
        lines[0].contains("insert   public.items [id='7'] id='7' label='it''s'"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("update   public.items [id='8']") && lines[1].ends_with("(old: id='7')"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("delete   public.items [id='8']"), "{}", lines[2]);
}

#[test]
fn tail_stops_at_endpos_on_an_existing_slot_and_confirms_it() {
    let db = TestDb::new();
    db.psql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION waly FOR ALL TABLES");
    let slot = format!("s_{}", db.name);
    db.create_slot(&slot);
    db.psql("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);");
    let end = db.current_lsn();
    let out = crate::harness::tail_slot(&db.url(), &slot, end, 30);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    // What was printed is confirmed, so a second run from the slot prints nothing new.
    db.psql("INSERT INTO t VALUES (3)");
    let end = db.current_lsn();
    let out = crate::harness::tail_slot(&db.url(), &slot, end, 30);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains(r#""new":{"id":"3"}"#));
}

/// Guarantee 7: memory does not grow with transaction size.
#[test]
fn million_row_transaction_decodes_in_bounded_memory() {
    let db = TestDb::new();
    db.psql("CREATE TABLE big (id int PRIMARY KEY, v text); CREATE PUBLICATION waly FOR ALL TABLES");
    let slot = format!("s_{}", db.name);
    db.create_slot(&slot);
    db.psql("INSERT INTO big SELECT i, md5(i::text) FROM generate_series(1, 1000000) i");
    let end = db.current_lsn();
    let script = format!(
        "/usr/bin/time -f 'maxrss_kb=%M' '{}' tail --json --slot {slot} --endpos {end} --source '{}' >/dev/null",
        env!("CARGO_BIN_EXE_waly"),
        db.url()
    );
    let out = run_within(Command::new("sh").arg("-c").arg(script), 600);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("changes=1000000"), "{stderr}");
    let kb: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kb="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in {stderr}"));
    eprintln!("peak RSS decoding a 1,000,000-row transaction: {} KiB", kb);
    assert!(kb <= 64 * 1024, "peak RSS {kb} KiB exceeds 64 MiB");
}
