//! The test harness: a throwaway PostgreSQL cluster per test binary, one
//! database per test (dropped with its slots afterwards), or the server named
//! by `WALY_TEST_DATABASE_URL`.
//!
//! The cluster runs under a small shell watchdog that reads our stdin: when
//! this process exits, however it exits, the pipe closes and the watchdog
//! stops PostgreSQL and removes its directory.

#![allow(dead_code, missing_debug_implementations)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The PostgreSQL server binaries.
pub fn bindir() -> PathBuf {
    if let Ok(d) = std::env::var("WALY_PG_BINDIR") {
        return PathBuf::from(d);
    }
    for v in ["17", "16", "15"] {
        let d = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if d.join("postgres").exists() {
            return d;
        }
    }
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

/// Client tools (`pg_isready`): beside the server where it has them, else
/// the first on PATH (the PostgreSQL 16-18 servers of the test matrix come
/// without client tools; PostgreSQL 15's work against them).
fn client_tool(name: &str) -> PathBuf {
    let beside = bindir().join(name);
    if beside.exists() {
        return beside;
    }
    for d in ["/usr/lib/postgresql/15/bin", "/usr/bin"] {
        let p = PathBuf::from(d).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// This test process among every run on the machine: its pid and a token
/// from the time it started. A pid alone repeats: CI's fresh machine gave
/// the PostgreSQL 15 and 17 runs the same pid, and the second run met the
/// first's archive directory under the same name.
pub fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut token = String::new();
        let mut n = nanos % 36u128.pow(6);
        for _ in 0..6 {
            token.push(char::from_digit((n % 36) as u32, 36).unwrap_or('0'));
            n /= 36;
        }
        format!("{}{token}", std::process::id())
    })
}

/// A name no other test, in this run or any earlier one, has used.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", run_id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// The uid/gid to run the server as: `postgres` when we are root.
fn server_user() -> Option<(u32, u32)> {
    let out = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

fn as_server_user(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running throwaway cluster.
pub struct Cluster {
    pub port: u16,
    pub socket_dir: PathBuf,
    pub dir: PathBuf,
    /// The CA that signed the server certificate (for `verify-*`).
    pub ca_cert: PathBuf,
    /// Another CA that signed nothing the server has.
    pub other_ca_cert: PathBuf,
    /// Whether the harness started it (and so set up TLS and the auth users).
    pub owned: bool,
    admin_url: Option<String>,
    watchdog: Mutex<Option<ChildStdin>>,
    /// `PGOPTIONS` for the test's own psql sessions (not waly's): settings
    /// its checks are written in, on a server whose defaults differ.
    pub psql_options: Option<String>,
    /// The server's environment (`Cluster::start_env`), for its restarts.
    env: Vec<(String, String)>,
}

/// Password of the `md5user`, `scramuser`, `clearuser` and `tlsuser` roles.
pub const PASSWORD: &str = "s3cret-Pa55";

impl Cluster {
    /// Starts a cluster with extra `postgres -c` settings.
    pub fn start(settings: &[&str]) -> Cluster {
        Cluster::start_env(settings, &[])
    }

    /// Starts a cluster with extra `postgres -c` settings and environment
    /// variables for the server (`LOCPATH`: where its locales are).
    pub fn start_env(settings: &[&str], env: &[(&str, &str)]) -> Cluster {
        let dir = std::env::temp_dir().join(unique("waly-pg"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let data = dir.join("data");
        let sock = dir.join("sock");
        std::fs::create_dir_all(&sock).expect("socket dir");
        if let Some((uid, gid)) = server_user() {
            run_ok(Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(&dir));
        }
        run_ok(
            as_server_user(&mut Command::new(bindir().join("initdb")))
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--locale=C",
                    "-D",
                ])
                .arg(&data)
                .stdout(Stdio::null()),
        );
        make_certs(&dir, &data);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all tlsuser 127.0.0.0/8 scram-sha-256\n\
             host all md5user 127.0.0.0/8 md5\n\
             host all clearuser 127.0.0.0/8 password\n\
             host all scramuser 127.0.0.0/8 scram-sha-256\n\
             host all all 127.0.0.0/8 trust\n",
        )
        .expect("pg_hba.conf");
        let port = free_port();
        let mut args: Vec<String> = vec![
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            sock.display().to_string(),
        ];
        for s in [
            "listen_addresses=127.0.0.1,127.0.0.2",
            "wal_level=logical",
            "max_replication_slots=64",
            "max_wal_senders=64",
            "max_connections=200",
            "fsync=off",
            "full_page_writes=off",
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
            "logical_decoding_work_mem=64MB",
            "log_min_messages=warning",
        ]
        .iter()
        .chain(settings)
        {
            args.push("-c".into());
            args.push(s.to_string());
        }
        // The watchdog stops the server with pg_ctl, which also finds a
        // server restarted by a test (`Cluster::restart`).
        let script = r#"d="$1"; ctl="$2"; shift 2; "$@" >"$d/server.log" 2>&1 & read _ignored; "$ctl" -D "$d/data" stop -m fast -w >/dev/null 2>&1; rm -rf "$d""#;
        let mut child: Child = as_server_user(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("watchdog")
                .arg(&dir)
                .arg(bindir().join("pg_ctl"))
                .arg(bindir().join("postgres"))
                .args(&args)
                .envs(env.iter().copied())
                .stdin(Stdio::piped())
                .stdout(Stdio::null()),
        )
        .spawn()
        .expect("start postgres");
        let stdin = child.stdin.take();
        // The watchdog is reaped by nobody; it exits on its own when stdin closes.
        std::mem::forget(child);
        let c = Cluster {
            port,
            socket_dir: sock,
            ca_cert: dir.join("ca.crt"),
            other_ca_cert: dir.join("other-ca.crt"),
            dir,
            owned: true,
            admin_url: None,
            watchdog: Mutex::new(stdin),
            psql_options: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        c.wait_ready();
        c.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN REPLICATION SUPERUSER PASSWORD '{PASSWORD}';
                 SET password_encryption = 'scram-sha-256';
                 CREATE ROLE scramuser LOGIN REPLICATION SUPERUSER PASSWORD '{PASSWORD}';
                 CREATE ROLE tlsuser LOGIN REPLICATION SUPERUSER PASSWORD '{PASSWORD}';
                 CREATE ROLE clearuser LOGIN REPLICATION SUPERUSER PASSWORD '{PASSWORD}';"
            ),
        );
        c
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(client_tool("pg_isready"))
                .arg("-h")
                .arg(&self.socket_dir)
                .arg("-p")
                .arg(self.port.to_string())
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                panic!("PostgreSQL did not start within 60s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Copies the server's log out of the cluster's directory (which goes
    /// with the cluster) to `kept`, and returns its last `lines` lines.
    pub fn keep_log(&self, kept: &std::path::Path, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let _ = std::fs::write(kept, &log);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Restarts the server: `mode` is `fast` or `immediate` (a crash).
    pub fn restart(&self, mode: &str) {
        run_ok(
            as_server_user(&mut Command::new(bindir().join("pg_ctl")))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", mode, "-w", "-t", "60", "-l"])
                .arg(self.dir.join("server.log"))
                .arg("restart")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null()),
        );
        self.wait_ready();
    }

    /// Stops the server (the watchdog removes its directory), and removes
    /// the locales it was given (`LOCPATH`).
    pub fn stop(&self) {
        if let Ok(mut w) = self.watchdog.lock() {
            w.take();
        }
        for (_, dir) in self.env.iter().filter(|(k, _)| k == "LOCPATH") {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// A libpq key=value string for `db` over the Unix socket as `postgres`.
    pub fn url(&self, db: &str) -> String {
        match &self.admin_url {
            Some(u) => with_dbname(u, db),
            None => format!(
                "host={} port={} user=postgres dbname={db}",
                self.socket_dir.display(),
                self.port
            ),
        }
    }

    /// Runs an SQL script with psql in `db` (each statement in its own
    /// transaction unless the script says BEGIN) and returns its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql failed: {e}\n{sql}"))
    }

    /// Like [`Cluster::psql`], but returns the error instead of panicking.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        use std::io::Write;
        let mut psql = Command::new("psql");
        if let Some(o) = &self.psql_options {
            psql.env("PGOPTIONS", o);
        }
        let mut child = psql
            .arg(self.url(db))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let script = sql.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(script.as_bytes());
        });
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let _ = writer.join();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn with_dbname(url: &str, db: &str) -> String {
    let info = waly::source::ConnInfo::parse(url).expect("WALY_TEST_DATABASE_URL parses");
    let host = match &info.hosts[0] {
        waly::source::conninfo::Host::Tcp(h) => h.clone(),
        waly::source::conninfo::Host::Unix(p) => p.display().to_string(),
    };
    let mut s = format!("host={host} port={} user={} dbname={db}", info.port, info.user);
    if let Some(p) = &info.password {
        s.push_str(&format!(
            " password='{}'",
            p.expose().replace('\\', "\\\\").replace('\'', "\\'")
        ));
    }
    s
}

fn make_certs(dir: &Path, data: &Path) {
    let sh = format!(
        r#"set -e; cd "{dir}"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 2 -subj "/CN=waly test CA" 2>/dev/null
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout other-ca.key -out other-ca.crt -days 2 -subj "/CN=waly other CA" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext.cnf 2>/dev/null
        cp server.crt server.key "{data}/"
        chmod 600 "{data}/server.key"
        chmod 644 ca.crt other-ca.crt"#,
        dir = dir.display(),
        data = data.display()
    );
    run_ok(as_server_user(Command::new("sh").arg("-c").arg(sh)));
}

/// The cluster shared by this test binary.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| match std::env::var("WALY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Cluster {
            port: 0,
            socket_dir: PathBuf::new(),
            dir: PathBuf::new(),
            ca_cert: PathBuf::new(),
            other_ca_cert: PathBuf::new(),
            owned: false,
            admin_url: Some(url),
            watchdog: Mutex::new(None),
            psql_options: None,
            env: Vec::new(),
        },
        _ => Cluster::start(&[]),
    })
}

/// Whether the shared cluster is our own (so TLS and auth users exist).
pub fn owned_cluster() -> Option<&'static Cluster> {
    let c = cluster();
    if !c.owned {
        eprintln!("skipped: needs the harness's own cluster, not WALY_TEST_DATABASE_URL");
        return None;
    }
    Some(c)
}

/// A cluster of the test's own, with extra `postgres -c` settings, kept for
/// the test process's life (stopped when it exits); `None`, saying why,
/// where the harness does not run its own (`WALY_TEST_DATABASE_URL`).
pub fn own_cluster(settings: &[&str]) -> Option<&'static Cluster> {
    owned_cluster()?;
    Some(Box::leak(Box::new(Cluster::start(settings))))
}

/// A database of its own for one test; dropped with its slots afterwards.
pub struct TestDb {
    pub name: String,
    pub cluster: &'static Cluster,
}

impl TestDb {
    pub fn new() -> TestDb {
        TestDb::on(cluster())
    }

    /// A database of its own on `cluster`.
    pub fn on(cluster: &'static Cluster) -> TestDb {
        let name = unique("t");
        cluster.psql("postgres", &format!("CREATE DATABASE {name}"));
        TestDb { name, cluster }
    }

    /// Connection string for this database as the superuser.
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// A TCP connection string for this database.
    pub fn tcp_url(&self, user: &str, password: Option<&str>, extra: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={user} dbname={}",
            self.cluster.port, self.name
        );
        if let Some(p) = password {
            s.push_str(&format!(" password={p}"));
        }
        if !extra.is_empty() {
            s.push(' ');
            s.push_str(extra);
        }
        s
    }

    pub fn conninfo(&self) -> waly::source::ConnInfo {
        waly::source::ConnInfo::parse(&self.url()).expect("test URL parses")
    }

    pub fn psql(&self, sql: &str) -> String {
        self.cluster.psql(&self.name, sql)
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.cluster.try_psql(&self.name, sql)
    }

    /// The server's clock now, RFC 3339 in UTC with microseconds (a point
    /// to restore to).
    pub fn now_utc(&self) -> String {
        self.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    }

    /// The server's current WAL position.
    pub fn current_lsn(&self) -> waly::Lsn {
        self.psql("SELECT pg_current_wal_insert_lsn()").parse().expect("an LSN")
    }

    /// Creates a permanent pgoutput slot (dropped with the database).
    pub fn create_slot(&self, slot: &str) -> waly::Lsn {
        let out = self.psql(&format!(
            "SELECT lsn FROM pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ));
        out.parse().expect("an LSN")
    }

    /// Polls `sql` until it returns `want`, for at most `secs` seconds.
    pub fn wait_for(&self, sql: &str, want: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.psql(sql);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {secs}s for {sql:?} = {want:?}; last {got:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A synchronous standby of a cluster of a test's own that confirms what it
/// receives only every `every_s` seconds (`pg_recvlogical` on a slot of
/// its own, as `application_name` `holdup`). Each commit in the test's
/// database then waits up to that long before other sessions see it, while a
/// walsender can decode it at once: its WAL is flushed. (Only there: the
/// standby decodes that database alone, and confirms no other's commits.)
/// Dropped, the cluster stops waiting for it first, then it stops.
pub struct SlowStandby {
    cluster: &'static Cluster,
    child: Child,
}

impl SlowStandby {
    pub fn start(db: &TestDb, every_s: u32) -> SlowStandby {
        db.psql(
            // A publication of no table: it confirms every transaction
            // all the same, and restricts no table's updates.
            "CREATE PUBLICATION holdup;
             SELECT 1 FROM pg_create_logical_replication_slot('holdup', 'pgoutput');",
        );
        let child = Command::new("pg_recvlogical")
            .arg("-d")
            .arg(format!("{} application_name=holdup", db.url()))
            .args(["--slot", "holdup", "--start", "-f", "-", "-F", "0"])
            .args(["-s", &every_s.to_string()])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=holdup",
                "-o",
                "messages=true",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pg_recvlogical");
        let standby = SlowStandby {
            cluster: db.cluster,
            child,
        };
        db.cluster.psql(
            "postgres",
            &format!(
                "ALTER DATABASE {} SET synchronous_commit = on;
                 ALTER SYSTEM SET synchronous_commit = local;
                 ALTER SYSTEM SET synchronous_standby_names = 'holdup'; SELECT pg_reload_conf();",
                db.name
            ),
        );
        db.wait_for(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'holdup' AND sync_state = 'sync'",
            "1",
            60,
        );
        standby
    }
}

impl Drop for SlowStandby {
    fn drop(&mut self) {
        let _ = self.cluster.try_psql(
            "postgres",
            "ALTER SYSTEM RESET synchronous_standby_names; ALTER SYSTEM RESET synchronous_commit;
             SELECT pg_reload_conf();",
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let n = &self.name;
        let _ = self.cluster.try_psql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{n}' AND active_pid IS NOT NULL;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{n}' AND pid <> pg_backend_pid();"
            ),
        );
        // Slots of terminated walsenders become inactive a moment later.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let left = self.cluster.try_psql(
                "postgres",
                &format!(
                    "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE database = '{n}' AND NOT active;
                     SELECT count(*) FROM pg_replication_slots WHERE database = '{n}'"
                ),
            );
            if left.as_deref().map(|s| s.ends_with('0')).unwrap_or(false) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self
            .cluster
            .try_psql("postgres", &format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"));
    }
}

/// Runs an SQL script with psql on a thread of its own (a workload beside
/// the test); join the handle for psql's exit status.
pub fn psql_in_background(url: String, script: String) -> std::thread::JoinHandle<std::process::ExitStatus> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut child = Command::new("psql")
            .arg(url)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("psql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        child.wait().expect("psql ran")
    })
}

/// A bare S3 request to moto (to create buckets, which object stores cannot).
pub fn s3_request(endpoint: &str, method: &str, path: &str) -> String {
    use std::io::Write;
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).expect("moto is listening");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A fresh bucket on the test S3 endpoint, or `None` (with a note) when
/// `make test` did not provide one.
pub fn s3_bucket(name: &str) -> Option<String> {
    let Ok(endpoint) = std::env::var("WALY_TEST_S3_ENDPOINT") else {
        eprintln!("skipped: WALY_TEST_S3_ENDPOINT is not set (make test sets it)");
        return None;
    };
    let bucket = unique(name).replace('_', "-");
    let put = s3_request(&endpoint, "PUT", &format!("/{bucket}"));
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    Some(bucket)
}

/// The `waly` binary under test.
pub fn waly() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_waly"));
    c.env_remove("WALY_SOURCE")
        .env_remove("PGPASSWORD")
        .env("NO_COLOR", "1");
    c
}

/// Runs `cmd` to completion within `secs` seconds (killing it and failing
/// the test if it hangs).
pub fn run_within(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// `waly tail --json` on an existing slot up to `endpos`, within `secs`.
pub fn tail_slot(source: &str, slot: &str, endpos: waly::Lsn, secs: u64) -> Output {
    run_within(
        waly().args([
            "tail",
            "--json",
            "--slot",
            slot,
            "--endpos",
            &endpos.to_string(),
            "--source",
            source,
        ]),
        secs,
    )
}

/// A long-running child whose stdout lines are collected as they come.
pub struct Running {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<Mutex<String>>,
    stderr_done: std::thread::JoinHandle<()>,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_done = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Running {
            child,
            lines: rx,
            stderr,
            stderr_done,
        }
    }

    /// What the process has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Collects `n` lines, failing the test after `secs` seconds.
    pub fn lines(&mut self, n: usize, secs: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => got.push(l),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("got {} of {n} lines within {secs}s: {got:#?}", got.len());
                }
            }
        }
        got
    }

    /// Sends SIGTERM and waits; returns the exit status and stderr.
    pub fn terminate(mut self, secs: u64) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit within {secs}s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Running {
            stderr, stderr_done, ..
        } = self;
        let _ = stderr_done.join();
        let s = stderr.lock().map(|s| s.clone()).unwrap_or_default();
        (status, s)
    }
}

/// `GET path` from `127.0.0.1:port`: `(status code, body)`, or `None` when
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The value of metric `name` (without labels) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `GET path` until `pred(code, body)` holds, for at most `secs`.
pub fn wait_http(port: u16, path: &str, secs: u64, what: &str, pred: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    loop {
        if let Some((code, body)) = http_get(port, path) {
            if pred(code, &body) {
                return (code, body);
            }
            last = Some((code, body));
        }
        assert!(
            Instant::now() < deadline,
            "waited {secs}s for {what} on {path}; last {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes `dir` and everything in it unwritable (`on`), even for root
/// (`chattr +i`; the mode for others), or writable again. Whether it is now
/// as asked (a filesystem without attributes cannot do it as root).
pub fn freeze(dir: &str, on: bool) -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let (cmd, arg) = match (root, on) {
        (true, true) => ("chattr", "+i"),
        (true, false) => ("chattr", "-i"),
        (false, true) => ("chmod", "a-w"),
        (false, false) => ("chmod", "u+w"),
    };
    let _ = std::process::Command::new(cmd).args(["-R", arg, dir]).status();
    let probe = format!("{dir}/.waly-probe");
    let writable = std::fs::write(&probe, b"x").is_ok();
    let _ = std::fs::remove_file(&probe);
    writable != on
}

/// A directory holding the `de_DE.UTF-8` locale, made by `localedef`
/// from the system's locale sources, for a server started with
/// `LOCPATH` pointing at it (this machine need not have it installed).
pub fn german_locale() -> String {
    let dir = std::env::temp_dir().join(unique("waly-locales"));
    std::fs::create_dir_all(&dir).expect("locale dir");
    let out = std::process::Command::new("localedef")
        .args(["-i", "de_DE", "-f", "UTF-8"])
        .arg(dir.join("de_DE.UTF-8"))
        .output()
        .expect("localedef (the libc-bin package)");
    assert!(
        dir.join("de_DE.UTF-8").join("LC_MONETARY").exists(),
        "localedef made no de_DE.UTF-8 (it needs /usr/share/i18n/locales, the locales package): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::process::Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(&dir)
        .status();
    dir.display().to_string()
}
