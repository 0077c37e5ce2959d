//! Encrypted archives (issue 12): the same answers as a plaintext archive of
//! the same stream, no plaintext in any object, and clear refusals.

use crate::archive::{archive_dir, slot, wait_streaming};
use crate::harness::{run_within, waly, Running, TestDb};

const SCHEMA: &str = "
    CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, email text,
                         shape_canary_5m text GENERATED ALWAYS AS (name || 'gen-canary-8p') STORED);
    CREATE TABLE notes (id bigint PRIMARY KEY, body text);
    CREATE TABLE regions (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
    CREATE TABLE regions_a PARTITION OF regions FOR VALUES IN ('bound-canary-4w');
    CREATE TABLE regions_b PARTITION OF regions DEFAULT;
    CREATE PUBLICATION waly FOR TABLE people, notes, regions WITH (publish_via_partition_root = true);";

/// DDL statement text no object of an encrypted archive may hold in plaintext.
const DDL_CANARY: &str = "ddl-canary-7q";

/// Literals of schema versions no object of an encrypted archive may hold
/// in plaintext: a column's default (and value for older rows), a partition
/// bound.
const LITERAL_CANARIES: [&str; 2] = ["default-canary-2v", "bound-canary-4w"];

/// A schema version's shape no object of an encrypted archive may hold in
/// plaintext: a column's name, a generation expression.
const SHAPE_CANARIES: [&str; 2] = ["shape_canary_5m", "gen-canary-8p"];

/// A value no object of an encrypted archive may hold in plaintext.
fn canary(i: i64) -> String {
    format!("zebra-canary-{i:05}")
}

fn workload(from: i64, to: i64) -> String {
    let mut s = String::new();
    for i in from..to {
        s.push_str(&format!(
            "INSERT INTO people VALUES ({i}, '{}', 'mail-{i}@example.org');\n",
            canary(i)
        ));
        if i % 3 == 0 {
            s.push_str(&format!(
                "UPDATE people SET name = '{}' WHERE id = {};\n",
                canary(i + 50_000),
                i
            ));
        }
        if i % 7 == 0 {
            s.push_str(&format!("DELETE FROM people WHERE id = {};\n", i - 1));
        }
        s.push_str(&format!(
            "INSERT INTO notes VALUES ({i}, repeat('{}', 40)) ON CONFLICT (id) DO UPDATE SET body = 'x';\n",
            canary(i + 90_000)
        ));
    }
    s
}

/// `waly init --encrypt SPEC` of `db` into `archive`.
fn init_encrypted(db: &TestDb, archive: &str, spec: &str) -> std::process::Output {
    run_within(
        waly()
            .args(["init", "--source", &db.url(), "--archive", archive, "--slot", &slot(db)])
            .args(["--encrypt", spec]),
        60,
    )
}

/// `waly run` of `db` into `archive` with its own slot `slot_name`.
fn spawn(db: &TestDb, archive: &str, slot_name: &str) -> Running {
    Running::spawn(waly().args([
        "run",
        "--source",
        &db.url(),
        "--archive",
        archive,
        "--slot",
        slot_name,
        "--flush-interval",
        "200ms",
        "--idle-interval",
        "10s",
        "--log",
        "warn",
        "--create-slot",
    ]))
}

fn wait_slot_confirmed(db: &TestDb, slot_name: &str) {
    let end = db.current_lsn();
    db.wait_for(
        &format!("SELECT confirmed_flush_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = '{slot_name}'"),
        "t",
        180,
    );
}

/// `waly run` of `db` into `archive` in the foreground (a run expected to
/// refuse to start).
fn run_once(db: &TestDb, archive: &str) -> std::process::Output {
    let source = db.url();
    let args = [
        "run",
        "--source",
        &source,
        "--archive",
        archive,
        "--slot",
        &slot(db),
        "--log",
        "warn",
    ];
    run_within(waly().args(args), 120)
}

/// Runs waly with `args` on `archive` (plus `key`: `--identity FILE`).
fn read(archive: &str, key: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut c = waly();
    c.args(args).args(["--archive", archive]);
    if let Some(k) = key {
        c.args(["--identity", k]);
    }
    run_within(&mut c, 180)
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every object under a local archive, with its bytes.
fn raw_objects(dir: &str) -> Vec<(String, Vec<u8>)> {
    crate::archive::files_under(dir, "")
        .into_iter()
        .map(|k| {
            let bytes = std::fs::read(std::path::Path::new(dir).join(&k)).expect("read");
            (k, bytes)
        })
        .collect()
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The values a test wrote that must never appear in plaintext: canaries,
/// emails, and the identity's secret.
fn plaintext_found(objects: &[(String, Vec<u8>)], secret: &str, upto: i64) -> Vec<String> {
    let mut found = Vec::new();
    for (k, b) in objects {
        // Decompressed too: a plaintext zstd frame would hide nothing.
        let text = zstd::decode_all(&b[..]).unwrap_or_default();
        for i in (1..upto).step_by(7) {
            for needle in [canary(i), format!("mail-{i}@example.org")] {
                if holds(b, &needle) || holds(&text, &needle) {
                    found.push(format!("{k}: {needle}"));
                }
            }
        }
        if holds(b, DDL_CANARY) || holds(&text, DDL_CANARY) {
            found.push(format!("{k}: the DDL statement text"));
        }
        for lit in LITERAL_CANARIES {
            if holds(b, lit) || holds(&text, lit) {
                found.push(format!("{k}: the literal {lit}"));
            }
        }
        for shape in SHAPE_CANARIES {
            if holds(b, shape) || holds(&text, shape) {
                found.push(format!("{k}: the shape {shape}"));
            }
        }
        if holds(b, secret) {
            found.push(format!("{k}: the identity's secret"));
        }
    }
    found
}

fn keygen(dir: &std::path::Path, name: &str) -> (String, String, String) {
    let file = dir.join(name);
    let out = run_within(waly().args(["keygen", "-o"]).arg(&file), 30);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "keygen writes its file readable by its owner only");
    }
    let text = std::fs::read_to_string(&file).expect("identity");
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("recipient comment")
        .to_string();
    assert!(recipient.starts_with("age1") && stderr.contains(&recipient), "{stderr}");
    let secret = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("secret")
        .to_string();
    assert!(!stderr.contains(&secret), "the secret is not printed to stderr");
    // Never overwritten.
    assert!(!run_within(waly().args(["keygen", "-o"]).arg(&file), 30)
        .status
        .success());
    (file.display().to_string(), recipient, secret)
}

/// The same stream into an encrypted and a plaintext archive (each with its
/// own slot), with `waly run` killed along the way on the encrypted one:
/// every reader gives the same answer from both; no test value and no key
/// appears in any encrypted object's bytes; readers without the key, or
/// with the wrong one, are told so; `verify` needs no key and names a
/// changed byte, a cut object and a plaintext segment slipped in.
#[test]
fn encrypted_archive_answers_as_the_plain_one_and_holds_no_plaintext() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    let keys = tempdir(&db, "keys");
    let (identity, recipient, secret) = keygen(&keys, "reader.key");
    let (other, _, _) = keygen(&keys, "other.key");
    let enc = archive_dir(&db);
    let plain = format!("{enc}-plain");

    // A malformed recipient: refused, nothing written.
    let e = err(&init_encrypted(&db, &enc, "age:age1notarecipient"));
    assert!(e.contains("is not an age X25519 recipient"), "{e}");
    assert!(!std::path::Path::new(&enc).join("waly.json").exists());

    ok(&init_encrypted(&db, &enc, &format!("age:{recipient}")));
    let plain_slot = format!("{}_p", slot(&db));
    let mut run = spawn(&db, &enc, &slot(&db));
    let plain_run = spawn(&db, &plain, &plain_slot);
    wait_streaming(&db, &run);
    db.wait_for(
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{plain_slot}' AND active"),
        "1",
        120,
    );
    // Kill -9 the encrypted writer now and then while the workload runs.
    // Killed once archived, and once in the middle of it.
    for (a, b) in [(1, 300), (300, 600), (600, 900)] {
        db.psql(&workload(a, b));
        if a != 300 {
            wait_slot_confirmed(&db, &slot(&db));
        }
        let _ = run.child.kill();
        let _ = run.child.wait();
        run = spawn(&db, &enc, &slot(&db));
    }
    // What committed since here: found by the segments' commit-time marks
    // (in the headers, which are not sealed) across the restarts.
    let mid = db.now_utc();
    // The statement text a schema version keeps, the default and the
    // value older rows take: sealed. Killed once the version is stored
    // (most likely before its transaction is archived), the writer's next
    // session decodes the DDL again, meets the version sealed by the
    // earlier one (which it cannot open) and takes it again.
    db.psql(&format!(
        "ALTER TABLE people ADD COLUMN tier text DEFAULT '{}' /* {DDL_CANARY} */;
         INSERT INTO regions VALUES (1, 'bound-canary-4w'), (2, 'elsewhere');",
        LITERAL_CANARIES[0]
    ));
    let stored = std::time::Instant::now();
    while !crate::archive::files_under(&enc, "generations")
        .iter()
        .any(|f| f.ends_with("public.people/000002.json"))
    {
        assert!(
            stored.elapsed().as_secs() < 60,
            "the ADD COLUMN's version was never stored"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = run.child.kill();
    let _ = run.child.wait();
    run = spawn(&db, &enc, &slot(&db));
    db.psql(&workload(900, 1000));
    wait_slot_confirmed(&db, &slot(&db));
    wait_slot_confirmed(&db, &plain_slot);
    let (s, e) = run.terminate(60);
    assert!(s.success(), "{e}");
    let (s, e) = plain_run.terminate(60);
    assert!(s.success(), "{e}");

    // Same answers.
    let k = Some(identity.as_str());
    let at = db.now_utc();
    for args in [
        vec!["log", "--json"],
        vec!["log", "--json", "--table", "people"],
        vec!["log", "--json", "--since", &mid],
        vec!["history", "people", "3", "--json"],
        vec!["history", "people", "699"],
        vec!["show", "people", "--at", &at],
        vec!["restore", "people", "--at", &at, "--output", "-", "--format", "csv"],
        // Defaults, and partitions with their bounds: the sealed literals,
        // put back.
        vec!["restore", "people", "--at", &at, "--output", "-", "--format", "sql"],
        vec!["restore", "regions", "--at", &at, "--output", "-", "--format", "sql"],
    ] {
        let a = ok(&read(&enc, k, &args));
        let b = ok(&read(&plain, None, &args));
        assert!(!a.is_empty(), "{args:?} printed nothing");
        assert_eq!(a, b, "{args:?} differs between the encrypted and the plain archive");
    }
    // Each archive's first schema version is its own snapshot's (own slot,
    // own LSN); what follows is the same.
    let versions = |out: String| -> Vec<String> {
        out.lines()
            .map(|l| l.split_once("first version").map_or(l, |(_, rest)| rest).to_string())
            .collect()
    };
    let columns = |out: String| -> Vec<serde_json::Value> {
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["columns"].clone())
            .collect()
    };
    let enc_columns = columns(ok(&read(&enc, k, &["schema", "people", "--json"])));
    assert!(
        enc_columns.iter().any(|c| c.to_string().contains(LITERAL_CANARIES[0])),
        "{enc_columns:?}"
    );
    assert_eq!(
        enc_columns,
        columns(ok(&read(&plain, None, &["schema", "people", "--json"])))
    );
    // Without the key, `schema` would show versions without their sealed
    // defaults: it says what to pass instead.
    let e = err(&read(&enc, None, &["schema", "people"]));
    assert!(e.contains("is encrypted") && e.contains("--identity"), "{e}");
    let enc_versions = ok(&read(&enc, k, &["schema", "people"]));
    assert!(enc_versions.contains(DDL_CANARY), "{enc_versions}");
    assert_eq!(
        versions(enc_versions),
        versions(ok(&read(&plain, None, &["schema", "people"])))
    );
    // The index is kept, sealed, its keys hashed under each session's data
    // key. Rebuilt with the key (under one new data key), every segment is
    // covered: a lookup reads none whole and answers the same.
    assert!(
        crate::archive::files_under(&enc, "index")
            .iter()
            .any(|f| f.ends_with(".idx")),
        "no index objects in the encrypted archive"
    );
    let e = err(&read(&enc, None, &["reindex"]));
    assert!(e.contains("is encrypted"), "{e}");
    ok(&read(&enc, k, &["reindex"]));
    let h = read(&enc, k, &["history", "people", "3", "--json", "--stats"]);
    assert_eq!(ok(&h), ok(&read(&plain, None, &["history", "people", "3", "--json"])));
    let stats = String::from_utf8_lossy(&h.stderr).into_owned();
    assert!(stats.contains(" 0 segments whole"), "{stats}");
    // reindex also wrote the catalog, sealed (no table name in its bytes);
    // `tables` answers from it, as the plain archive's does.
    let cat = std::fs::read(std::path::Path::new(&enc).join("index/00000001/catalog.json")).expect("a catalog");
    assert!(
        !holds(&cat, "public.people") && !holds(&cat, "public.notes"),
        "the catalog is not sealed"
    );
    let summary = |out: &std::process::Output| -> Vec<serde_json::Value> {
        ok(out)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                serde_json::json!([
                    v["table"],
                    v["schema_versions"],
                    v["changes"],
                    v["first_change"],
                    v["last_change"]
                ])
            })
            .collect()
    };
    let t = read(&enc, k, &["tables", "--json", "--log", "info"]);
    let said = String::from_utf8_lossy(&t.stderr).into_owned();
    assert!(!said.contains("no catalog fits"), "{said}");
    assert_eq!(summary(&t), summary(&read(&plain, None, &["tables", "--json"])));
    let tables = ok(&read(&enc, k, &["tables", "--json"]));
    assert!(
        tables.contains("public.people") && tables.contains("public.notes"),
        "{tables}"
    );

    // Maintenance: compact (reads with the key, writes a sealed snapshot
    // under a data key of its own) and export, then the same answers again.
    let e = err(&read(&enc, None, &["compact"]));
    assert!(e.contains("is encrypted"), "{e}");
    ok(&read(&enc, k, &["compact"]));
    ok(&read(&plain, None, &["compact"]));
    for args in [
        vec!["show", "people", "--at", "now"],
        vec!["history", "people", "6", "--json"],
        vec!["log", "--json", "--table", "notes"],
    ] {
        assert_eq!(
            ok(&read(&enc, k, &args)),
            ok(&read(&plain, None, &args)),
            "{args:?} after compact"
        );
    }
    let out = format!("{enc}-export");
    ok(&read(&enc, k, &["export", "--to", &out]));
    assert!(
        crate::archive::files_under(&out, "")
            .iter()
            .any(|f| f.ends_with(".parquet")),
        "the export wrote Parquet"
    );
    let _ = std::fs::remove_dir_all(&out);

    // No plaintext: the grep finds the values in the plain archive (so it
    // can), and nothing in the encrypted one.
    let found_plain = plaintext_found(&raw_objects(&plain), &secret, 1000);
    assert!(
        found_plain.iter().any(|f| f.ends_with("the DDL statement text")),
        "the search finds DDL text where there is some: {found_plain:?}"
    );
    for lit in LITERAL_CANARIES.iter().chain(&SHAPE_CANARIES) {
        assert!(
            found_plain.iter().any(|f| f.contains("/schemas/") && f.ends_with(lit)),
            "the search finds {lit} in a plain schema version: {found_plain:?}"
        );
    }
    assert!(
        !found_plain.is_empty(),
        "the search finds plaintext where there is some"
    );
    let objects = raw_objects(&enc);
    assert!(objects.iter().any(|(k, _)| k.contains("/segments/")));
    let found = plaintext_found(&objects, &secret, 1000);
    assert!(found.is_empty(), "plaintext in the encrypted archive: {found:?}");

    // Readers without the key, or with the wrong one.
    let e = err(&read(&enc, None, &["log"]));
    assert!(e.contains("is encrypted") && e.contains("--identity"), "{e}");
    let e = err(&read(&enc, Some(&other), &["history", "people", "3"]));
    assert!(e.contains("the key does not match"), "{e}");
    assert!(!e.contains("AGE-SECRET-KEY"), "{e}");

    // verify: clean without a key and with it.
    let v = read(&enc, None, &["verify", "--json"]);
    assert!(v.status.success(), "{}", ok(&v));
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).expect("json");
    assert_eq!(
        (
            report["report"]["encrypted"].as_bool(),
            report["report"]["records_checked"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let v = read(&enc, k, &["verify", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).expect("json");
    assert!(v.status.success(), "{report}");
    assert_eq!(report["report"]["records_checked"].as_bool(), Some(true));

    // A flipped ciphertext byte in a segment: named with and without the key.
    let segs = crate::archive::files_under(&enc, "generations/00000001/segments");
    assert!(segs.len() >= 3, "{segs:?}");
    let victim = std::path::Path::new(&enc)
        .join("generations/00000001/segments")
        .join(&segs[segs.len() - 1]);
    let good = std::fs::read(&victim).expect("read");
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 20] ^= 0x40;
    std::fs::write(&victim, &bad).expect("write");
    for key in [None, k] {
        let v = read(&enc, key, &["verify"]);
        let text = String::from_utf8_lossy(&v.stdout).into_owned();
        assert_eq!(v.status.code(), Some(1), "{text}");
        assert!(text.contains(&segs[segs.len() - 1]), "{text}");
    }
    let e = err(&read(&enc, k, &["log"]));
    assert!(e.contains(&segs[segs.len() - 1]), "{e}");
    // Cut short.
    std::fs::write(&victim, &good[..good.len() - 100]).expect("write");
    let v = read(&enc, None, &["verify"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&v.stdout).contains(&segs[segs.len() - 1]));
    std::fs::write(&victim, &good).expect("write");
    assert!(read(&enc, None, &["verify"]).status.success());

    // A flipped byte in a sealed index object: named without the key (its
    // trailer's SHA-256) and with it (an age tag); derived data, so the
    // answers stay right (the segments are read instead).
    let idx_name = crate::archive::files_under(&enc, "index")
        .into_iter()
        .find(|f| f.ends_with(".idx"))
        .expect("an index object");
    let idx_path = std::path::Path::new(&enc).join("index").join(&idx_name);
    let good_idx = std::fs::read(&idx_path).expect("read");
    let mut bad = good_idx.clone();
    bad[30] ^= 0x01;
    std::fs::write(&idx_path, &bad).expect("write");
    for key in [None, k] {
        let text = String::from_utf8_lossy(&read(&enc, key, &["verify"]).stdout).into_owned();
        assert!(text.contains(&idx_name), "{text}");
    }
    assert_eq!(
        ok(&read(&enc, k, &["history", "people", "3", "--json"])),
        ok(&read(&plain, None, &["history", "people", "3", "--json"]))
    );
    std::fs::write(&idx_path, &good_idx).expect("write");

    // A schema version: sealed whole, its digest checked without the key
    // and its tag with it. A changed byte is named either way; a plaintext
    // version slipped in is a verify problem, and never read.
    let schema_rel = "generations/00000001/schemas/public.people/000002.json";
    let schema_path = std::path::Path::new(&enc).join(schema_rel);
    let good_schema = std::fs::read(&schema_path).expect("read");
    let mut bad = good_schema.clone();
    bad[40] ^= 0x02;
    std::fs::write(&schema_path, &bad).expect("write");
    for key in [None, k] {
        let v = read(&enc, key, &["verify"]);
        let text = String::from_utf8_lossy(&v.stdout).into_owned();
        assert_eq!(v.status.code(), Some(1), "{text}");
        assert!(text.contains(schema_rel), "{text}");
    }
    let e = err(&read(&enc, k, &["schema", "people"]));
    assert!(e.contains(schema_rel), "{e}");
    std::fs::copy(std::path::Path::new(&plain).join(schema_rel), &schema_path).expect("copy");
    let v = read(&enc, None, &["verify"]);
    let text = String::from_utf8_lossy(&v.stdout).into_owned();
    assert_eq!(v.status.code(), Some(1), "{text}");
    assert!(text.contains(schema_rel) && text.contains("plaintext"), "{text}");
    let e = err(&read(&enc, k, &["log"]));
    assert!(e.contains("plaintext"), "{e}");
    std::fs::write(&schema_path, &good_schema).expect("write");
    assert!(read(&enc, None, &["verify"]).status.success());

    // A plaintext segment slipped in: a verify problem, never history.
    let plain_segs = crate::archive::files_under(&plain, "generations/00000001/segments");
    let slipped = plain_segs
        .iter()
        .map(|s| {
            std::path::Path::new(&plain)
                .join("generations/00000001/segments")
                .join(s)
        })
        .find(|p| std::fs::metadata(p).map(|m| m.len() > 2000).unwrap_or(false))
        .expect("a plain segment with records");
    let last_number: u64 = segs[segs.len() - 1][..10].parse().expect("number");
    let name = format!("{:010}-{}", last_number + 1, &segs[segs.len() - 1][11..]);
    let target = std::path::Path::new(&enc)
        .join("generations/00000001/segments")
        .join(name);
    std::fs::copy(&slipped, &target).expect("copy");
    let v = read(&enc, None, &["verify"]);
    let text = String::from_utf8_lossy(&v.stdout).into_owned();
    assert_eq!(v.status.code(), Some(1), "{text}");
    assert!(text.contains("plaintext"), "{text}");
    let e = err(&read(&enc, k, &["log"]));
    assert!(e.contains("plaintext"), "{e}");
    std::fs::remove_file(&target).expect("rm");

    // A reader of an older format refuses: the archive's format version is
    // what it checks first (shown here with one version newer than this
    // waly's; a waly from before encryption refuses the segments' version 3).
    let id_path = std::path::Path::new(&enc).join("waly.json");
    let id_text = std::fs::read_to_string(&id_path).expect("waly.json");
    assert!(id_text.contains("\"waly_archive\": 4"), "{id_text}");
    std::fs::write(&id_path, id_text.replace("\"waly_archive\": 4", "\"waly_archive\": 5")).expect("write");
    let e = err(&read(&enc, k, &["log"]));
    assert!(e.contains("format version 5") && e.contains("upgrade waly"), "{e}");
    std::fs::write(&id_path, &id_text).expect("write");

    // A writer without its copy of the schema keys (the source database's
    // table lost its rows) cannot read the shapes it resumes from: it says
    // so and stops.
    db.psql(
        "CREATE TABLE kept_keys AS SELECT * FROM public.waly_schema_keys;
         DELETE FROM public.waly_schema_keys;",
    );
    let e = err(&run_once(&db, &enc));
    assert!(e.contains("public.waly_schema_keys") && e.contains("schema key"), "{e}");
    assert!(!e.contains("AGE-SECRET-KEY"), "{e}");
    db.psql(
        "INSERT INTO public.waly_schema_keys SELECT * FROM kept_keys;
         DROP TABLE kept_keys;",
    );

    // A writer whose archive lost its recipients refuses to write.
    for (k, _) in &objects {
        if k.starts_with("keys/recipients/") {
            std::fs::remove_file(std::path::Path::new(&enc).join(k)).expect("rm");
        }
    }
    let e = err(&run_once(&db, &enc));
    assert!(e.contains("no recipients") && e.contains("refusing to write"), "{e}");

    for d in [&enc, &plain] {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_dir_all(&keys);
    db.psql(&format!("SELECT pg_drop_replication_slot('{plain_slot}')"));
}

/// A writer that restarted reads back the versions an earlier session
/// wrote without that session's data key: an enum's labels stay readable
/// to it (in the shape, sealed whole under the schema key it keeps), so a
/// label renamed after a restart still makes it snapshot the table, and
/// every reader restores the rows the database now shows.
#[test]
fn a_restarted_writer_of_an_encrypted_archive_snapshots_a_table_whose_enum_label_is_renamed() {
    let db = TestDb::new();
    db.psql(
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TABLE feel (id int PRIMARY KEY, m mood);
         INSERT INTO feel VALUES (1, 'sad'), (2, 'ok');
         CREATE PUBLICATION waly FOR TABLE feel;",
    );
    let dir = tempdir(&db, "labels");
    let (key, recipient, _) = keygen(&dir, "reader");
    let archive = archive_dir(&db);
    ok(&init_encrypted(&db, &archive, &format!("age:{recipient}")));
    // The first session records a label added, and stops.
    let run = spawn(&db, &archive, &slot(&db));
    wait_streaming(&db, &run);
    db.psql("ALTER TYPE mood ADD VALUE 'glad'");
    wait_slot_confirmed(&db, &slot(&db));
    run.terminate(30);
    // The second renames one.
    let run = spawn(&db, &archive, &slot(&db));
    wait_streaming(&db, &run);
    db.psql("ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'");
    wait_slot_confirmed(&db, &slot(&db));
    let (_, log) = run.terminate(30);
    let schema = ok(&read(&archive, Some(&key), &["schema", "feel", "--json"]));
    let last: serde_json::Value = serde_json::from_str(schema.lines().last().unwrap_or("null")).expect("json");
    assert_eq!(
        last["source"], "snapshot",
        "a snapshot after the rename: {schema}\n{log}"
    );
    let rows = ok(&read(
        &archive,
        Some(&key),
        &["restore", "feel", "--at", "now", "--output", "-", "--format", "csv"],
    ));
    assert_eq!(rows, "\"id\",\"m\"\n\"1\",\"blue\"\n\"2\",\"ok\"\n", "{log}");
    let _ = std::fs::remove_dir_all(&archive);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(db: &TestDb, what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("waly-{what}-{}", db.name));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// Passphrase mode on S3 (moto): `waly run` writes with no passphrase at
/// all, killed (-9) along the way; readers take WALY_PASSPHRASE and give
/// the answers of a plaintext archive of the same stream on S3; a wrong
/// one is told so; verify is clean with and without it; no test value is
/// in any object of the bucket.
#[test]
fn passphrase_archive_on_s3_is_written_without_the_passphrase_and_answers_as_the_plain_one() {
    let Some(bucket) = crate::harness::s3_bucket("waly-enc") else {
        return;
    };
    let db = TestDb::new();
    db.psql(SCHEMA);
    let archive = format!("s3://{bucket}/enc");
    let init = run_within(
        waly()
            .env("WALY_PASSPHRASE", "correct horse battery staple")
            .args([
                "init",
                "--source",
                &db.url(),
                "--archive",
                &archive,
                "--slot",
                &slot(&db),
            ])
            .args(["--encrypt", "passphrase"]),
        120,
    );
    ok(&init);
    // The same stream into a plaintext archive on S3 too (its own slot),
    // and the encrypted writer killed (-9) along the way.
    let plain = format!("s3://{bucket}/plain");
    let plain_slot = format!("{}_p", slot(&db));
    let mut run = spawn(&db, &archive, &slot(&db));
    let plain_run = spawn(&db, &plain, &plain_slot);
    wait_streaming(&db, &run);
    db.wait_for(
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{plain_slot}' AND active"),
        "1",
        120,
    );
    for (a, b) in [(1, 100), (100, 200)] {
        db.psql(&workload(a, b));
        if a == 1 {
            wait_slot_confirmed(&db, &slot(&db));
        }
        let _ = run.child.kill();
        let _ = run.child.wait();
        run = spawn(&db, &archive, &slot(&db));
    }
    db.psql(&workload(200, 220));
    wait_slot_confirmed(&db, &slot(&db));
    wait_slot_confirmed(&db, &plain_slot);
    let (s, e) = run.terminate(60);
    assert!(s.success(), "{e}");
    let (s, e) = plain_run.terminate(60);
    assert!(s.success(), "{e}");

    let with = |pass: Option<&str>, args: &[&str]| {
        let mut c = waly();
        c.env_remove("WALY_PASSPHRASE");
        if let Some(p) = pass {
            c.env("WALY_PASSPHRASE", p);
        }
        run_within(c.args(args).args(["--archive", &archive]), 180)
    };
    let hist = ok(&with(
        Some("correct horse battery staple"),
        &["history", "people", "3", "--json"],
    ));
    let versions: Vec<serde_json::Value> = hist.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(versions.len(), 2, "insert and update: {hist}");
    assert!(hist.contains(&canary(50_003)), "{hist}");
    let e = err(&with(Some("wrong"), &["log"]));
    assert!(e.contains("passphrase does not match"), "{e}");
    let e = err(&with(None, &["log"]));
    assert!(e.contains("is encrypted"), "{e}");
    assert!(with(None, &["verify"]).status.success());
    let at = db.now_utc();
    for args in [
        vec!["log", "--json"],
        vec!["history", "people", "3", "--json"],
        vec!["show", "people", "--at", &at],
        vec!["restore", "people", "--at", &at, "--output", "-", "--format", "csv"],
        vec!["schema", "people"],
    ] {
        let a = ok(&with(Some("correct horse battery staple"), &args));
        let b = ok(&run_within(waly().args(&args).args(["--archive", &plain]), 180));
        assert!(!a.is_empty(), "{args:?} printed nothing");
        // `schema` names each archive's own first version (its snapshot's LSN).
        let tail = |t: &str| -> Vec<String> {
            t.lines()
                .map(|l| l.split_once("first version").map_or(l, |(_, r)| r).to_string())
                .collect()
        };
        assert_eq!(
            tail(&a),
            tail(&b),
            "{args:?} differs between the encrypted and the plain archive on S3"
        );
    }
    let v = with(Some("correct horse battery staple"), &["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));

    // The raw bucket.
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let objects = rt.block_on(async {
        let store = waly::archive::Store::open(&archive).expect("open");
        let mut out = Vec::new();
        for (k, _) in store.list("").await.expect("list") {
            let b = store.get(&k).await.expect("get");
            out.push((k, b.to_vec()));
        }
        out
    });
    assert!(objects.iter().any(|(k, _)| k == "keys/passphrase.age"));
    let found = plaintext_found(&objects, "correct horse battery staple", 220);
    assert!(found.is_empty(), "{found:?}");
    db.psql(&format!("SELECT pg_drop_replication_slot('{plain_slot}')"));
}

/// Rotation: after `keys add-recipient` the new identity reads everything;
/// after `keys remove-recipient` and `keys rotate`, the running `waly run`
/// (not restarted) seals what follows under a new data key that the
/// removed identity cannot open, while what it could read before stays
/// readable to it.
#[test]
fn rotation_reaches_a_running_writer_and_shuts_out_a_removed_recipient() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    let keys = tempdir(&db, "rot");
    let (a, ra, _) = keygen(&keys, "a.key");
    let (b, rb, _) = keygen(&keys, "b.key");
    let archive = archive_dir(&db);
    ok(&init_encrypted(&db, &archive, &format!("age:{ra}")));
    let run = spawn(&db, &archive, &slot(&db));
    wait_streaming(&db, &run);
    db.psql(&workload(1, 100));
    wait_slot_confirmed(&db, &slot(&db));
    let before = db.now_utc();

    let e = err(&read(&archive, Some(&b), &["history", "people", "3"]));
    assert!(e.contains("the key does not match"), "{e}");
    ok(&read(&archive, Some(&a), &["keys", "add-recipient", &rb]));
    for args in [vec!["history", "people", "3", "--json"], vec!["log", "--json"]] {
        assert_eq!(
            ok(&read(&archive, Some(&b), &args)),
            ok(&read(&archive, Some(&a), &args))
        );
    }
    // (data keys, schema keys)
    let keys_listed = || -> (usize, usize) {
        let l: serde_json::Value =
            serde_json::from_str(&ok(&read(&archive, None, &["keys", "list", "--json"]))).expect("json");
        let all = l["data_keys"].as_array().cloned().unwrap_or_default();
        let schema = all.iter().filter(|k| k["schema"] == true).count();
        (all.len() - schema, schema)
    };
    let data_keys = || keys_listed().0;
    assert_eq!(
        keys_listed(),
        (1, 1),
        "one writer session: one data key, one schema key"
    );

    ok(&read(&archive, None, &["keys", "remove-recipient", &ra]));
    ok(&read(&archive, None, &["keys", "rotate"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while data_keys() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer took no new data key: {}",
            run.stderr_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    db.psql(&workload(100, 200));
    wait_slot_confirmed(&db, &slot(&db));
    let (s, e) = run.terminate(60);
    assert!(s.success(), "{e}");

    let e = err(&read(&archive, Some(&a), &["history", "people", "150"]));
    assert!(e.contains("the key does not match"), "{e}");
    let h = ok(&read(&archive, Some(&b), &["history", "people", "150", "--json"]));
    assert!(h.contains(&canary(150)), "{h}");
    // What it could read before stays readable to it (reads that stop
    // before the new key's segments); a read that reaches them fails.
    let old = ok(&read(&archive, Some(&a), &["show", "people", "--at", &before]));
    assert!(
        old.contains(&canary(4)),
        "what the removed identity could read stays readable: {old}"
    );
    assert_eq!(old, ok(&read(&archive, Some(&b), &["show", "people", "--at", &before])));
    assert!(read(&archive, Some(&b), &["verify"]).status.success());
    assert!(read(&archive, None, &["verify"]).status.success());
    // status says so, without a key: sets 0 (init) to 3 (rotate), B only.
    let st = crate::archive::status_json(&db, &archive);
    let e = &st["archive"]["encryption"];
    assert_eq!(
        (e["recipient_set"].as_u64(), e["recipients"].as_u64()),
        (Some(3), Some(1)),
        "{st}"
    );
    assert!(e["data_keys"].as_u64() >= Some(2), "{st}");
    // The writer took a new schema key for the new set too: a schema
    // version written from then on is sealed under it, which the removed
    // identity cannot open (it is told so: its reads of this generation
    // stop there), and the remaining one reads.
    assert_eq!(keys_listed().1, 2, "a schema key per recipient set");
    let run = spawn(&db, &archive, &slot(&db));
    wait_streaming(&db, &run);
    db.psql("ALTER TABLE notes ADD COLUMN added_after_rotation text; INSERT INTO notes VALUES (5000, 'x', 'y');");
    wait_slot_confirmed(&db, &slot(&db));
    let (s, e) = run.terminate(60);
    assert!(s.success(), "{e}");
    assert_eq!(
        keys_listed().1,
        2,
        "a session under the same set takes the kept schema key"
    );
    let e = err(&read(&archive, Some(&a), &["schema", "notes"]));
    assert!(e.contains("the key does not match"), "{e}");
    let v = ok(&read(&archive, Some(&b), &["schema", "notes"]));
    assert!(v.contains("added_after_rotation"), "{v}");
    let _ = std::fs::remove_dir_all(&archive);
    let _ = std::fs::remove_dir_all(&keys);
}

/// The writer of an encrypted archive as the least-privileged role of
/// sql/setup.sql: it keeps its schema key in the table setup.sql made
/// (which it may read and add to, and nobody else may read; published, but
/// never captured), seals a version that a DDL made, and after a restart
/// reads the shapes it resumes from with that key, its secret in no log
/// line; a reader with the identity gets every change.
#[test]
fn an_encrypted_archive_is_written_by_the_least_privileged_role_with_its_schema_key_in_the_source() {
    let db = TestDb::new();
    // FOR ALL TABLES: the key table is published too, and never captured.
    db.psql("CREATE TABLE pub (id int PRIMARY KEY, v text); CREATE PUBLICATION waly FOR ALL TABLES;");
    let keys = tempdir(&db, "lp");
    let (identity, recipient, secret) = keygen(&keys, "reader.key");
    let archive = archive_dir(&db);
    ok(&init_encrypted(&db, &archive, &format!("age:{recipient}")));
    let role = crate::archive::least_privileged_role(&db);
    assert_eq!(
        db.psql(&format!(
            "SELECT has_table_privilege('{role}', 'public.waly_schema_keys', 'SELECT'),
                    has_table_privilege('{role}', 'public.waly_schema_keys', 'INSERT'),
                    has_table_privilege('{role}', 'public.waly_schema_keys', 'DELETE'),
                    has_table_privilege('pg_monitor', 'public.waly_schema_keys', 'SELECT')"
        )),
        "t|t|f|f"
    );
    let url = format!("{} user={role}", db.url().replace("user=postgres", ""));
    let as_role = |extra: &[&str]| crate::archive::spawn_run_as(&db, &url, &archive, extra);
    let run = as_role(&[]);
    wait_streaming(&db, &run);
    db.psql("INSERT INTO pub SELECT g, 'v' || g FROM generate_series(1, 50) g;");
    db.psql("ALTER TABLE pub ADD COLUMN later_lp_column text; INSERT INTO pub VALUES (51, 'x', 'y');");
    wait_slot_confirmed(&db, &slot(&db));
    let (s, e) = run.terminate(60);
    assert!(s.success(), "{e}");
    assert_eq!(
        db.psql("SELECT count(*), count(DISTINCT recipients) FROM public.waly_schema_keys"),
        "1|1"
    );
    // Restarted with debug logs: the kept key's secret is never in them.
    let key_secret = db.psql("SELECT secret FROM public.waly_schema_keys");
    assert!(key_secret.starts_with("AGE-SECRET-KEY-1"), "{key_secret}");
    let run = Running::spawn(waly().args([
        "--log",
        "debug",
        "run",
        "--source",
        &url,
        "--archive",
        &archive,
        "--slot",
        &slot(&db),
        "--flush-interval",
        "200ms",
        "--idle-interval",
        "10s",
    ]));
    wait_streaming(&db, &run);
    db.psql("UPDATE pub SET later_lp_column = 'z' WHERE id <= 10;");
    wait_slot_confirmed(&db, &slot(&db));
    let (s, e) = run.terminate(60);
    assert!(s.success(), "{e}");
    assert!(e.contains("DEBUG"), "debug logs: {e}");
    assert!(!e.contains(key_secret.trim()), "the schema key's secret leaked: {e}");
    assert_eq!(
        db.psql("SELECT count(*) FROM public.waly_schema_keys"),
        "1",
        "the restarted writer took its kept key"
    );
    let log = ok(&read(&archive, Some(&identity), &["log", "--json"]));
    assert_eq!(log.lines().count(), 61, "only pub's changes: {log}");
    let tables = ok(&read(&archive, Some(&identity), &["tables"]));
    assert!(!tables.contains("waly_schema_keys"), "{tables}");
    assert!(log.contains("later_lp_column"), "{log}");
    let v = ok(&read(&archive, Some(&identity), &["schema", "pub"]));
    assert!(v.contains("later_lp_column"), "{v}");
    let found: Vec<String> = raw_objects(&archive)
        .into_iter()
        .filter(|(_, b)| holds(b, "later_lp_column") || holds(b, &secret))
        .map(|(k, _)| k)
        .collect();
    assert!(found.is_empty(), "{found:?}");
    assert!(read(&archive, None, &["verify"]).status.success());
    let _ = std::fs::remove_dir_all(&archive);
    let _ = std::fs::remove_dir_all(&keys);
}
