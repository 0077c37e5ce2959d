//! Connection settings: a libpq-style URL or `key=value` string, completed
//! from the usual `PG*` environment variables, with the password redacted
//! wherever the settings are printed.
//!
//! waly parses these itself rather than through `tokio_postgres::Config`
//! because that parser rejects `sslmode=verify-ca|verify-full` and
//! `sslrootcert`, which a sidecar pointed at a production database needs.

use crate::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How TLS is negotiated, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS if the server offers it, without verifying it.
    Prefer,
    /// Require TLS; verify the chain only if a root certificate is given.
    Require,
    /// Require TLS and a certificate chain to a trusted root.
    VerifyCa,
    /// Require TLS, a trusted chain, and a certificate matching the host name.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // `allow` tries plaintext first; TLS-when-offered is at least as safe.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "unknown sslmode {other:?}: use one of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// A directory holding the server's Unix-domain socket.
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A password that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the authentication exchange only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"********\"")
    }
}

/// Resolved connection settings for one PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Hosts to try, in order.
    pub hosts: Vec<Host>,
    /// The port (also names the Unix socket file).
    pub port: u16,
    /// The role to log in as.
    pub user: String,
    /// Its password, if any.
    pub password: Option<Secret>,
    /// The database.
    pub dbname: String,
    /// TLS negotiation.
    pub sslmode: SslMode,
    /// A PEM file of trusted root certificates, or `system`.
    pub sslrootcert: Option<String>,
    /// How long connecting (including TLS and authentication) may take.
    pub connect_timeout: Duration,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
    /// Command-line options sent to the server (`-c name=value`).
    pub options: Option<String>,
    /// The `lc_monetary` set on every session (startup parameter or `SET`),
    /// so `money` values print and read back in one text form: the one
    /// the archive's values are in ([`crate::archive::state::Identity`]).
    /// `None` leaves the server's, as archives made before it was pinned
    /// hold that.
    pub lc_monetary: Option<String>,
}

/// The connect timeout when none is configured. libpq waits forever; a
/// sidecar that hangs silently is worse than one that says why it failed.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnInfo {
    /// Parses `s` (a `postgres://` URL, or `key=value` pairs, or empty),
    /// filling what it leaves out from the process environment.
    pub fn parse(s: &str) -> Result<ConnInfo, Error> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    /// Parses `s`, filling what it leaves out from `env`.
    pub fn parse_with_env(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<ConnInfo, Error> {
        let s = s.trim();
        let pairs = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            parse_url(s)?
        } else if s.contains("://") {
            return Err(Error::Config(format!(
                "unsupported connection URL scheme in {:?}: use postgres:// or postgresql://",
                redact_url(s)
            )));
        } else {
            parse_keywords(s)?
        };
        let mut raw = RawSettings::default();
        for (k, v) in pairs {
            raw.set(&k, v)?;
        }
        raw.resolve(env)
    }

    /// A one-line description for messages; never includes the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(|h| h.to_string()).collect();
        format!(
            "host={} port={} user={} dbname={}",
            hosts.join(","),
            self.port,
            self.user,
            self.dbname
        )
    }

    /// The same settings for an ordinary SQL connection through
    /// `tokio_postgres` (TLS is supplied by [`crate::source::tls`]).
    pub fn to_sql_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        for h in &self.hosts {
            match h {
                Host::Tcp(name) => c.host(name),
                Host::Unix(dir) => c.host_path(dir),
            };
        }
        c.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .ssl_mode(match self.sslmode {
                // PostgreSQL never speaks TLS on a Unix socket.
                _ if matches!(self.hosts.first(), Some(Host::Unix(_))) => tokio_postgres::config::SslMode::Disable,
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        if let Some(o) = &self.options {
            c.options(o);
        }
        c
    }
}

/// The session settings of every connection waly opens to the source (the
/// replication connection's startup parameters; `SET` on an SQL connection,
/// which a pooler such as PgBouncer passes on where it would refuse an
/// `options` startup parameter): values come out in one exact text form
/// whatever the server's defaults - dates and times in ISO (never `SQL,
/// DMY`'s `01/02/2026`), intervals in PostgreSQL's own style, floats with
/// every digit (`extra_float_digits` below 1 rounds them), bytea in hex - so
/// a snapshot's rows and the stream's agree, keys compare, and a restore
/// into any server reads them back as they were.
pub const EXACT_TEXT: [(&str, &str); 4] = [
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

#[derive(Default)]
struct RawSettings {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    connect_timeout: Option<String>,
    application_name: Option<String>,
    options: Option<String>,
}

impl RawSettings {
    fn set(&mut self, key: &str, value: String) -> Result<(), Error> {
        let slot = match key {
            "host" | "hostaddr" => &mut self.host,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "connect_timeout" => &mut self.connect_timeout,
            "application_name" => &mut self.application_name,
            "options" => &mut self.options,
            // Harmless libpq settings waly has no use for.
            "fallback_application_name"
            | "client_encoding"
            | "keepalives"
            | "keepalives_idle"
            | "target_session_attrs" => return Ok(()),
            other => return Err(Error::Config(format!("unknown connection option {other:?}"))),
        };
        *slot = Some(value);
        Ok(())
    }

    fn resolve(self, env: impl Fn(&str) -> Option<String>) -> Result<ConnInfo, Error> {
        let pick = |v: Option<String>, var: &str| v.or_else(|| env(var)).filter(|s| !s.is_empty());
        let user = pick(self.user, "PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".into());
        let dbname = pick(self.dbname, "PGDATABASE").unwrap_or_else(|| user.clone());
        let port = match pick(self.port, "PGPORT") {
            None => 5432,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| Error::Config(format!("invalid port {p:?}")))?,
        };
        let hosts = match pick(self.host, "PGHOST") {
            Some(h) => h
                .split(',')
                .map(|h| {
                    if h.starts_with('/') {
                        Host::Unix(PathBuf::from(h))
                    } else {
                        Host::Tcp(h.trim_matches(|c| c == '[' || c == ']').to_string())
                    }
                })
                .collect(),
            None if Path::new("/var/run/postgresql").is_dir() => {
                vec![Host::Unix(PathBuf::from("/var/run/postgresql"))]
            }
            None => vec![Host::Tcp("localhost".into())],
        };
        let sslmode = match pick(self.sslmode, "PGSSLMODE") {
            Some(m) => m.parse()?,
            None => SslMode::Prefer,
        };
        let connect_timeout = match pick(self.connect_timeout, "PGCONNECT_TIMEOUT") {
            None => DEFAULT_CONNECT_TIMEOUT,
            Some(t) => {
                let secs: u64 = t
                    .parse()
                    .map_err(|_| Error::Config(format!("invalid connect_timeout {t:?}: expected whole seconds")))?;
                // libpq treats 0 as "wait forever" and rounds 1 up to 2.
                match secs {
                    0 => Duration::from_secs(24 * 3600),
                    1 => Duration::from_secs(2),
                    n => Duration::from_secs(n),
                }
            }
        };
        Ok(ConnInfo {
            hosts,
            port,
            user,
            password: pick(self.password, "PGPASSWORD").map(Secret),
            dbname,
            sslmode,
            sslrootcert: pick(self.sslrootcert, "PGSSLROOTCERT"),
            connect_timeout,
            application_name: pick(self.application_name, "PGAPPNAME").unwrap_or_else(|| "waly".into()),
            options: pick(self.options, "PGOPTIONS"),
            lc_monetary: None,
        })
    }
}

impl ConnInfo {
    /// These settings with the money text form of the archive `id` pinned.
    pub fn for_archive(&self, id: &crate::archive::state::Identity) -> ConnInfo {
        ConnInfo {
            lc_monetary: id.lc_monetary.clone(),
            ..self.clone()
        }
    }

    /// Every setting pinned on a session: [`EXACT_TEXT`], and the archive's `lc_monetary`.
    pub fn exact_text(&self) -> Vec<(&str, &str)> {
        let mut s = EXACT_TEXT.to_vec();
        if let Some(m) = &self.lc_monetary {
            s.push(("lc_monetary", m));
        }
        s
    }
}

/// Replaces the password in a URL with `********`, for messages.
pub fn redact_url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = format!("{scheme}://");
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:********@")),
                None => out.push_str(&format!("{userinfo}@")),
            }
            out.push_str(hosts);
        }
        None => out.push_str(authority),
    }
    // A password may also be a query parameter.
    let mut query_done = String::new();
    match tail.split_once('?') {
        Some((path, query)) => {
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("password", _)) => "password=********".to_string(),
                    _ => kv.to_string(),
                })
                .collect();
            query_done.push_str(path);
            query_done.push('?');
            query_done.push_str(&parts.join("&"));
        }
        None => query_done.push_str(tail),
    }
    out + &query_done
}

fn percent_decode(s: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::Config("invalid percent-encoding in connection URL".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Config("connection URL is not valid UTF-8 after decoding".into()))
}

fn parse_url(s: &str) -> Result<Vec<(String, String)>, Error> {
    let rest = s.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    let mut out = Vec::new();
    let hostports = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            match userinfo.split_once(':') {
                Some((u, p)) => {
                    out.push(("user".into(), percent_decode(u)?));
                    out.push(("password".into(), percent_decode(p)?));
                }
                None => out.push(("user".into(), percent_decode(userinfo)?)),
            }
            hosts
        }
        None => authority,
    };
    if !hostports.is_empty() {
        let mut hosts = Vec::new();
        let mut port = None;
        for hp in hostports.split(',') {
            let (h, p) = if let Some(stripped) = hp.strip_prefix('[') {
                let (h, after) = stripped
                    .split_once(']')
                    .ok_or_else(|| Error::Config("unterminated [ in connection URL host".into()))?;
                (h, after.strip_prefix(':'))
            } else {
                match hp.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (hp, None),
                }
            };
            if !h.is_empty() {
                hosts.push(percent_decode(h)?);
            }
            if let Some(p) = p.filter(|p| !p.is_empty()) {
                port = Some(p.to_string());
            }
        }
        if !hosts.is_empty() {
            out.push(("host".into(), hosts.join(",")));
        }
        if let Some(p) = port {
            out.push(("port".into(), p));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".into(), percent_decode(db)?));
    }
    for kv in query.unwrap_or_default().split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("connection URL parameter {kv:?} has no '='")))?;
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(out)
}

fn parse_keywords(s: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(Error::Config(format!(
                "connection string: missing '=' after {key:?} (expected key=value pairs or a postgres:// URL)"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(Error::Config(format!(
                            "connection string: unterminated quoted value for {key:?}"
                        )))
                    }
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(s: &str) -> ConnInfo {
        match ConnInfo::parse_with_env(s, no_env) {
            Ok(c) => c,
            Err(e) => panic!("{s:?}: {e}"),
        }
    }

    #[test]
    fn parses_a_full_url() {
        let c = parse(
            "postgres://al%40ice:p%3Ass@db.example:6543/app?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=5",
        );
        assert_eq!(c.user, "al@ice");
        assert_eq!(c.password.as_ref().map(|p| p.expose()), Some("p:ss"));
        assert_eq!(c.hosts, vec![Host::Tcp("db.example".into())]);
        assert_eq!(c.port, 6543);
        assert_eq!(c.dbname, "app");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert.as_deref(), Some("/ca.pem"));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn parses_socket_dirs_and_ipv6() {
        let c = parse("postgresql://u@%2Ftmp%2Fsock:5499/d");
        assert_eq!(c.hosts, vec![Host::Unix("/tmp/sock".into())]);
        let c = parse("postgres://u@[::1]:5433/d");
        assert_eq!(c.hosts, vec![Host::Tcp("::1".into())]);
        assert_eq!(c.port, 5433);
    }

    #[test]
    fn parses_keyword_value_strings() {
        let c = parse("host=/run/pg port=5999 user=bob password='it\\'s x' dbname = shop sslmode=require");
        assert_eq!(c.hosts, vec![Host::Unix("/run/pg".into())]);
        assert_eq!(c.port, 5999);
        assert_eq!(c.user, "bob");
        assert_eq!(c.dbname, "shop");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.password.as_ref().map(|p| p.expose()), Some("it's x"));
    }

    #[test]
    fn environment_fills_the_gaps() {
        let env = |k: &str| match k {
            "PGHOST" => Some("127.0.0.1".to_string()),
            "PGUSER" => Some("envuser".to_string()),
            "PGPASSWORD" => Some("envpw".to_string()),
            "PGSSLMODE" => Some("disable".to_string()),
            _ => None,
        };
        let c = ConnInfo::parse_with_env("dbname=x", env).expect("parses");
        assert_eq!(c.hosts, vec![Host::Tcp("127.0.0.1".into())]);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.dbname, "x");
        assert_eq!(c.sslmode, SslMode::Disable);
        assert_eq!(c.password.as_ref().map(|p| p.expose()), Some("envpw"));
        // Explicit settings win over the environment.
        let c = ConnInfo::parse_with_env("postgres://other@h/x", env).expect("parses");
        assert_eq!(c.user, "other");
    }

    #[test]
    fn rejects_bad_settings_with_a_reason() {
        for (s, needle) in [
            ("sslmode=sometimes", "unknown sslmode"),
            ("postgres://h/d?sslmode=bogus", "unknown sslmode"),
            ("port=abc", "invalid port"),
            ("bogus=1", "unknown connection option"),
            ("host", "missing '='"),
            ("password='open", "unterminated"),
            ("mysql://h/d", "unsupported connection URL scheme"),
        ] {
            match ConnInfo::parse_with_env(s, no_env) {
                Ok(_) => panic!("{s:?} parsed"),
                Err(e) => assert!(e.to_string().contains(needle), "{s:?}: {e}"),
            }
        }
    }

    #[test]
    fn never_prints_the_password() {
        let c = parse("postgres://u:hunter2@h/d");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.describe().contains("hunter2"));
        assert_eq!(redact_url("postgres://u:hunter2@h/d"), "postgres://u:********@h/d");
        assert_eq!(
            redact_url("postgres://h/d?password=hunter2&sslmode=require"),
            "postgres://h/d?password=********&sslmode=require"
        );
    }
}
