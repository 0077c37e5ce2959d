//! Logging in: SCRAM-SHA-256, MD5, and TLS under every sslmode that matters.

use crate::harness::{owned_cluster, TestDb, PASSWORD};
use waly::source::{self, ConnInfo, PgConn};

async fn login(url: &str) -> Result<PgConn, waly::Error> {
    let info = ConnInfo::parse_with_env(url, |_| None)?;
    let mut conn = PgConn::connect(&info, true).await?;
    source::identify_system(&mut conn).await?;
    Ok(conn)
}

async fn uses_tls(conn: &mut PgConn) -> bool {
    let rows = conn
        .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .expect("query");
    rows.first().and_then(|r| r[0].clone()).as_deref() == Some("t")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_md5_and_cleartext_logins_work_and_wrong_passwords_do_not() {
    let Some(_) = owned_cluster() else { return };
    let db = TestDb::new();
    for user in ["scramuser", "md5user", "clearuser"] {
        let url = db.tcp_url(user, Some(PASSWORD), "sslmode=disable");
        let mut conn = login(&url).await.unwrap_or_else(|e| panic!("{user}: {e}"));
        assert!(!uses_tls(&mut conn).await);
        let bad = db.tcp_url(user, Some("wrong"), "sslmode=disable");
        let err = login(&bad).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("password authentication failed"), "{user}: {err}");
        assert!(err.contains("28P01"), "{user}: {err}");
        let none = db.tcp_url(user, None, "sslmode=disable");
        let err = login(&none).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("asks for a password"), "{user}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_and_verify_full_with_a_test_certificate() {
    let Some(cluster) = owned_cluster() else { return };
    let db = TestDb::new();
    let ca = cluster.ca_cert.display().to_string();

    // prefer (the default) over TCP: encrypted when the server offers it.
    let mut c = login(&db.tcp_url("md5user", Some(PASSWORD), "")).await.expect("prefer");
    assert!(c.tls && uses_tls(&mut c).await);

    // require: encrypted, nothing verified.
    let mut c = login(&db.tcp_url("tlsuser", Some(PASSWORD), "sslmode=require"))
        .await
        .expect("require");
    assert!(c.tls && uses_tls(&mut c).await);

    // verify-full: chain and name (localhost and 127.0.0.1 are both in the certificate).
    for host in ["localhost", "127.0.0.1"] {
        let url = format!(
            "host={host} port={} user=tlsuser password={PASSWORD} dbname={} sslmode=verify-full sslrootcert={ca}",
            cluster.port, db.name
        );
        let mut c = login(&url)
            .await
            .unwrap_or_else(|e| panic!("verify-full via {host}: {e}"));
        assert!(uses_tls(&mut c).await);
    }

    // Ordinary SQL connections (snapshot COPY, restore) follow the same rules.
    let info = ConnInfo::parse_with_env(
        &db.tcp_url(
            "tlsuser",
            Some(PASSWORD),
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        |_| None,
    )
    .expect("parses");
    let sql = source::tls::connect_sql(&info).await.expect("SQL over verify-full");
    let row = sql
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .expect("query");
    assert!(row.get::<_, bool>(0), "the SQL connection is encrypted");

    // 127.0.0.2 is the same server under a name the certificate lacks:
    // verify-ca accepts it, verify-full refuses it.
    let other = |mode: &str, root: &str| {
        format!(
            "host=127.0.0.2 port={} user=tlsuser password={PASSWORD} dbname={} sslmode={mode} sslrootcert={root}",
            cluster.port, db.name
        )
    };
    login(&other("verify-ca", &ca))
        .await
        .expect("verify-ca ignores the name");
    let err = login(&other("verify-full", &ca))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("TLS") && err.contains("not valid for the host name"),
        "{err}"
    );

    // A root that did not sign the server's certificate is refused.
    let wrong = cluster.other_ca_cert.display().to_string();
    let err = login(&db.tcp_url(
        "tlsuser",
        Some(PASSWORD),
        &format!("sslmode=verify-full sslrootcert={wrong}"),
    ))
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("TLS") && err.to_lowercase().contains("unknown issuer"),
        "{err}"
    );

    // verify-full without any root says how to provide one.
    let err = login(&db.tcp_url(
        "tlsuser",
        Some(PASSWORD),
        "sslmode=verify-full sslrootcert=/nonexistent/root.crt",
    ))
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("cannot read sslrootcert"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_streams_over_tls_with_scram() {
    let Some(cluster) = owned_cluster() else { return };
    let db = TestDb::new();
    db.psql("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION waly FOR ALL TABLES");
    let slot = format!("s_{}", db.name);
    db.create_slot(&slot);
    db.psql("INSERT INTO t VALUES (1, 'over tls')");
    let end = db.current_lsn();
    let url = db.tcp_url(
        "tlsuser",
        Some(PASSWORD),
        &format!("sslmode=verify-full sslrootcert={}", cluster.ca_cert.display()),
    );
    let out = crate::harness::tail_slot(&url, &slot, end, 60);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(r#""new":{"id":"1","v":"over tls"}"#), "{stdout}");
}
