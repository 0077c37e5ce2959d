//! The library's one error type, classified in one place.
//!
//! Variants carry what a person needs to act: the server and its SQLSTATE,
//! the setting to change, the byte offset of a bad message. Whether an error
//! is worth retrying is decided by [`Error::is_transient`] and nowhere else.

use crate::pgoutput::DecodeError;
use std::fmt;
use std::time::Duration;

/// Why a connection could not be opened, and what to check: the operating
/// system's words alone ("Connection refused") do not say it.
fn explain_connect(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    const WHERE: &str = "the host and port of --source (or WALY_SOURCE)";
    let text = e.to_string();
    let unresolved = [
        "lookup address",
        "Name or service not known",
        "Temporary failure in name resolution",
        "No address associated",
    ]
    .iter()
    .any(|m| text.contains(m));
    match e.kind() {
        _ if unresolved => format!("the host name does not resolve ({text}); check the host name in --source (or WALY_SOURCE) and DNS"),
        K::ConnectionRefused => format!(
            "connection refused ({text}): no server listens there; check that PostgreSQL is running and {WHERE} (and listen_addresses on the server)"
        ),
        K::NotFound => format!(
            "no server socket there ({text}): is PostgreSQL running on this machine? Otherwise give the server with --source (or WALY_SOURCE), e.g. postgres://user@host:5432/db"
        ),
        K::PermissionDenied => format!("permission denied ({text}): this user may not open the server's socket"),
        K::TimedOut | K::HostUnreachable | K::NetworkUnreachable => {
            format!("the server is unreachable ({text}); check {WHERE}, the network and firewalls")
        }
        _ => text,
    }
}

/// Everything that can go wrong in waly's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection settings are invalid.
    #[error("invalid connection settings: {0}")]
    Config(String),
    /// A TCP or Unix-socket connection could not be opened.
    #[error("could not connect to {target}: {}", explain_connect(.cause))]
    Connect {
        /// Which server (never includes a password).
        target: String,
        /// The operating system's reason.
        cause: std::io::Error,
    },
    /// Connecting took longer than `connect_timeout`.
    #[error("timed out after {}s connecting to {target} (connect_timeout); is the server up and reachable?", .after.as_secs())]
    ConnectTimeout {
        /// Which server.
        target: String,
        /// How long was waited.
        after: Duration,
    },
    /// TLS could not be set up or verified.
    #[error("TLS with {target}: {message}")]
    Tls {
        /// Which server.
        target: String,
        /// What failed.
        message: String,
    },
    /// The server reported an error.
    #[error("{0}")]
    Server(Box<ServerError>),
    /// The server broke the protocol, or sent something waly cannot use.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A pgoutput message could not be decoded.
    #[error("at WAL position {lsn}")]
    Decode {
        /// The WAL position of the message.
        lsn: crate::Lsn,
        /// The decoding failure.
        source: DecodeError,
    },
    /// The server's setup does not allow what was asked; the message says how to fix it.
    #[error("{0}")]
    Prerequisite(String),
    /// What was asked is not valid (a table name, a key, a table with no
    /// row identity for a per-row question); the message says what to give.
    #[error("{0}")]
    Invalid(String),
    /// The connection dropped.
    #[error("connection to the server was lost: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection unexpectedly")]
    ConnectionClosed,
    /// The archive URL cannot be used.
    #[error("invalid archive URL {url:?}: {why}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The object store needs credentials that are not configured.
    #[error("no credentials for archive {url}: {what}")]
    MissingCredentials {
        /// The archive URL.
        url: String,
        /// What to set.
        what: String,
    },
    /// An object store operation failed.
    #[error("archive object {key}")]
    Store {
        /// The object (relative to the archive).
        key: String,
        /// The store's error.
        source: Box<object_store::Error>,
    },
    /// A write-once object already exists with different bytes.
    #[error("archive object {key} already exists with different content: another writer, or a damaged archive; refusing to overwrite")]
    Conflict {
        /// The object.
        key: String,
    },
    /// An archive object is damaged or not what it claims to be.
    #[error("archive object {key} is corrupt: {why}")]
    Corrupt {
        /// The object.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The slot is being streamed by another process (a waly still running,
    /// or the walsender of one that just died); waiting may free it.
    #[error("replication slot {slot:?} is in use by another process (PID {pid}); waiting for it to be released")]
    SlotBusy {
        /// The slot.
        slot: String,
        /// The walsender holding it.
        pid: String,
    },
    /// The archive belongs to another database, or is otherwise unusable for this one.
    #[error("{0}")]
    ArchiveMismatch(String),
    /// Another writer did the same thing at the same moment (took a lease,
    /// started a generation); trying again sorts it out.
    #[error("{0}")]
    Contended(String),
    /// What was asked for is not in the archive (a table, a point in time).
    #[error("{0}")]
    NotInArchive(String),
    /// The archive is encrypted and this reader has no key, or not the
    /// right one, or encryption is configured wrongly: what to pass or fix.
    /// Never holds a secret.
    #[error("{0}")]
    Encryption(String),
}

/// `e` and its sources, each after a colon: what a log line shows (a
/// store error's own message names only the object).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

impl Error {
    /// When the archive refuses waly's requests themselves (permissions,
    /// credentials, a read-only directory): what to check. Retrying soon
    /// does not help; the operator's fix does.
    pub fn archive_refuses(&self) -> Option<&'static str> {
        let Error::Store { source, .. } = self else { return None };
        match **source {
            object_store::Error::PermissionDenied { .. } => {
                return Some(
                    "the archive refuses access (permission denied): check that the credentials waly uses may \
                     read and write there (the bucket policy, the IAM role)",
                )
            }
            object_store::Error::Unauthenticated { .. } => {
                return Some(
                    "the archive does not accept waly's credentials: check the access key and secret (or the \
                     role the machine has)",
                )
            }
            _ => {}
        }
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&**source);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) {
                    return Some(
                        "the archive directory cannot be written (permission denied or read-only): check its \
                         owner, mode and attributes (lsattr), and how the filesystem is mounted",
                    );
                }
            }
            cur = e.source();
        }
        None
    }

    /// Whether an archive object was not there: gone since it was listed
    /// (an index run merged away by a live writer), or never written.
    pub fn is_object_gone(&self) -> bool {
        matches!(self, Error::Store { source, .. } if matches!(**source, object_store::Error::NotFound { .. }))
    }

    /// Whether trying again later may succeed (network trouble, a server
    /// restarting), as opposed to a mistake that retrying cannot fix.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Io(_)
            | Error::ConnectionClosed
            | Error::SlotBusy { .. }
            | Error::Contended(_) => true,
            Error::Store { .. } if self.archive_refuses().is_some() => false,
            Error::Store { source, .. } => !matches!(
                **source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
            Error::Server(e) => {
                e.code.starts_with("08") // connection exception
                    || e.code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                    || e.code == "53300" // too many connections
                    || e.code == "55006" // object in use: a slot still held by a dying walsender
                    // A catalog query (a publication's tables, a table's
                    // columns and their types) racing a concurrent DROP:
                    // PostgreSQL lists the rows, then looks each object up
                    // (a relation, a type: a table's row type goes with
                    // it); asked again, it lists them anew.
                    || (e.code == "XX000"
                        && (e.message.starts_with("could not open relation with OID")
                            || e.message.starts_with("cache lookup failed for relation")
                            || e.message.starts_with("cache lookup failed for type")))
            }
            _ => false,
        }
    }

    /// An object store failure at `key`.
    pub fn store(key: &str, source: object_store::Error) -> Error {
        Error::Store {
            key: key.to_string(),
            source: Box::new(source),
        }
    }

    /// The SQLSTATE, when the server reported the error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// An `ErrorResponse` from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL`, ...
    pub severity: String,
    /// The SQLSTATE.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint from the server.
    pub hint: Option<String>,
    /// Where in the server it arose (the `W` field: a function, a
    /// decoding callback), when the server said.
    pub context: Option<String>,
    /// What waly was doing when it came: the query, or the stream.
    pub during: Option<String>,
    /// A hint of waly's own: what to change to fix it.
    pub fix: Option<String>,
}

impl ServerError {
    /// Parses the fields of an `ErrorResponse` or `NoticeResponse` body.
    pub fn parse(body: &[u8]) -> ServerError {
        let mut e = ServerError::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            rest = tail.get(end + 1..).unwrap_or_default();
            match kind {
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                b'W' => e.context = Some(value),
                _ => {}
            }
        }
        e.fix = fix_for(&e);
        e
    }

    /// The error in `body`, met while doing `during`.
    pub fn parse_during(body: &[u8], during: impl Into<String>) -> ServerError {
        ServerError {
            during: Some(during.into()),
            ..ServerError::parse(body)
        }
    }

    /// Says what `sql` was, shortened to its first 100 characters on one
    /// line: enough to tell a catalog query from a snapshot's.
    pub fn running(sql: &str) -> String {
        let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut cut: String = one_line.chars().take(100).collect();
        if cut.len() < one_line.len() {
            cut.push_str("...");
        }
        format!("running {cut}")
    }
}

/// waly's advice for server errors a sidecar operator commonly meets.
fn fix_for(e: &ServerError) -> Option<String> {
    let m = e.message.as_str();
    if m.contains("wal_level") {
        return Some(WAL_LEVEL_FIX.into());
    }
    if m.contains("all replication slots are in use") {
        return Some(
            "raise max_replication_slots (ALTER SYSTEM SET max_replication_slots = 20; then restart PostgreSQL), \
             or drop slots nobody uses: SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active"
                .into(),
        );
    }
    if m.contains("number of requested standby connections exceeds max_wal_senders") || m.contains("max_wal_senders") {
        return Some("raise max_wal_senders (ALTER SYSTEM SET max_wal_senders = 20; then restart PostgreSQL)".into());
    }
    if e.code == "28P01" {
        return Some("check the password (in the URL, PGPASSWORD or the password= setting)".into());
    }
    if e.code == "28000" && m.contains("pg_hba.conf") {
        return Some(
            "add a line to pg_hba.conf allowing this role to connect (for replication connections the database \
             column must name the database, or be 'all'), then SELECT pg_reload_conf()"
                .into(),
        );
    }
    if m.contains("must be superuser or replication role") || m.contains("permission denied to start WAL sender") {
        return Some("give the role the REPLICATION attribute: ALTER ROLE <name> REPLICATION".into());
    }
    None
}

/// How to turn logical decoding on.
pub const WAL_LEVEL_FIX: &str =
    "run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (the setting takes effect only at server start)";

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = if self.severity.is_empty() {
            "ERROR"
        } else {
            &self.severity
        };
        write!(f, "server {severity}: {} (SQLSTATE {})", self.message, self.code)?;
        if let Some(w) = &self.during {
            write!(f, "\n  while {w}")?;
        }
        if let Some(c) = &self.context {
            write!(f, "\n  context: {c}")?;
        }
        if let Some(d) = &self.detail {
            write!(f, "\n  detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        if let Some(x) = &self.fix {
            write!(f, "\n  to fix: {x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_fields_and_adds_advice() {
        let body = b"SERROR\0VERROR\0C55000\0Mlogical decoding requires wal_level >= logical\0\0";
        let e = ServerError::parse(body);
        assert_eq!(e.code, "55000");
        assert_eq!(e.severity, "ERROR");
        let shown = e.to_string();
        assert!(shown.contains("ALTER SYSTEM SET wal_level = logical"), "{shown}");
        assert!(!Error::Server(Box::new(e)).is_transient());
    }

    #[test]
    fn a_server_error_says_what_waly_was_running_and_where_the_server_was() {
        let body = b"SERROR\0CXX000\0Mcache lookup failed for type 16751\0WSQL function \"f\" statement 1\0\0";
        let sql = "SELECT c.oid,\n       a.attname\n  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid WHERE "
            .to_string()
            + &"x".repeat(200);
        let shown = ServerError::parse_during(body, ServerError::running(&sql)).to_string();
        assert!(
            shown.contains("\n  while running SELECT c.oid, a.attname FROM pg_class c JOIN pg_attribute a"),
            "{shown}"
        );
        assert!(shown.contains("xxx..."), "{shown}");
        assert!(!shown.contains(&"x".repeat(100)), "shortened: {shown}");
        assert!(shown.contains("\n  context: SQL function \"f\" statement 1"), "{shown}");
        assert!(!ServerError::parse(body).to_string().contains("while"));
    }

    #[test]
    fn a_logged_error_names_its_cause() {
        let e = Error::Store {
            key: "index/00000001/segments/0000000020-0000000021.idx".into(),
            source: Box::new(object_store::Error::NotFound {
                path: "p".into(),
                source: "gone".into(),
            }),
        };
        let shown = chain(&e);
        assert!(
            shown.starts_with("archive object index/00000001/segments/0000000020-0000000021.idx: "),
            "{shown}"
        );
        assert!(shown.contains("not found") && shown.ends_with("gone"), "{shown}");
    }

    #[test]
    fn classifies_transient_errors() {
        let e = ServerError {
            code: "57P01".into(),
            ..Default::default()
        };
        assert!(Error::Server(Box::new(e)).is_transient());
        let raced = |message: &str| ServerError {
            code: "XX000".into(),
            message: message.into(),
            ..Default::default()
        };
        assert!(Error::Server(Box::new(raced("could not open relation with OID 16384"))).is_transient());
        // Seen by `waly run` starting beside a migration that dropped a table (and its row type).
        assert!(Error::Server(Box::new(raced("cache lookup failed for type 16650"))).is_transient());
        assert!(!Error::Server(Box::new(raced("invalid memory alloc request size 1"))).is_transient());
        assert!(Error::ConnectionClosed.is_transient());
        assert!(!Error::Config("x".into()).is_transient());
    }

    #[test]
    fn tolerates_malformed_error_bodies() {
        let e = ServerError::parse(b"Mno terminator");
        assert_eq!(e.message, "no terminator");
        let e = ServerError::parse(b"");
        assert_eq!(e.message, "");
    }
}
