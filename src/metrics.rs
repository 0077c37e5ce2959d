//! What `waly run` is doing, as numbers: counters the pipeline bumps, a
//! Prometheus text rendering, the health rules, and the small HTTP server
//! (`--metrics-addr`) that answers `/metrics`, `/healthz` and `/readyz`.
//!
//! Health, in one place:
//! - `/healthz` (liveness) is red when uploads have been failing, or the
//!   sidecar has been unable to stream, for longer than the threshold;
//!   restarting it might help. A standby is healthy: waiting is its job.
//! - `/readyz` (readiness) is red whenever the slot is not streaming (a
//!   standby, a reconnect, a snapshot), when uploads have been failing for
//!   longer than the threshold, or when the slot retains more WAL than the
//!   warning level.

use crate::Lsn;
use chrono::{DateTime, Utc};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the sidecar is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Connecting, reading the archive.
    Starting,
    /// Taking a snapshot of published tables.
    Snapshotting,
    /// Streaming changes into the archive.
    Streaming,
    /// Another process streams the slot; waiting to take over.
    Standby {
        /// The walsender that holds the slot.
        holder_pid: String,
    },
    /// The last session failed; trying again.
    Reconnecting,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Snapshotting => "snapshotting",
            Phase::Streaming => "streaming",
            Phase::Standby { .. } => "standby",
            Phase::Reconnecting => "reconnecting",
        }
    }
}

#[derive(Debug)]
struct Status {
    phase: Phase,
    /// Since when the phase has not been `Streaming` (or a standby's wait began).
    not_streaming_since: Instant,
    /// The first failure of the current run of failed uploads.
    upload_failing_since: Option<Instant>,
    /// Retained WAL over the warning level: the message to show.
    wal_warning: Option<String>,
    /// The last error that ended a session, and when.
    last_error: Option<(DateTime<Utc>, String)>,
    generation: String,
}

/// The counters and state of one `waly run`. Cheap to update from the hot
/// path (atomics); the rare state changes take a lock.
#[derive(Debug)]
pub struct Metrics {
    /// Changes and messages archived (in uploaded segments).
    pub events: AtomicU64,
    /// Transactions archived.
    pub transactions: AtomicU64,
    /// Segment bytes uploaded (compressed).
    pub bytes: AtomicU64,
    /// Segments uploaded.
    pub uploads: AtomicU64,
    /// Upload attempts that failed (each retry that failed counts).
    pub upload_failures: AtomicU64,
    /// Upload attempts that were retries.
    pub upload_retries: AtomicU64,
    /// Unix time (ms) of the last successful segment upload; 0 for never.
    pub last_upload_ms: AtomicI64,
    /// The LSN confirmed to the server.
    pub confirmed_lsn: AtomicU64,
    /// The end of the last transaction received, durable or not yet.
    pub received_lsn: AtomicU64,
    /// The server's WAL end as last reported by the walsender.
    pub server_wal_end: AtomicU64,
    /// Commit time (Unix ms) of the oldest transaction received but not yet
    /// archived; 0 when nothing is waiting.
    pub pending_commit_ms: AtomicI64,
    /// WAL the slot retains, as last looked at.
    pub retained_wal: AtomicU64,
    /// Snapshot progress: tables to copy, tables copied, rows copied.
    pub snapshot_tables: AtomicU64,
    /// Tables whose snapshot is complete.
    pub snapshot_tables_done: AtomicU64,
    /// Rows copied by snapshots.
    pub snapshot_rows: AtomicU64,
    /// Sessions that ended in an error.
    pub session_errors: AtomicU64,
    /// Red after this long failing.
    pub unhealthy_after: Duration,
    status: Mutex<Status>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Duration::from_secs(60))
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Metrics {
    /// Fresh metrics; health goes red after `unhealthy_after` of failure.
    pub fn new(unhealthy_after: Duration) -> Metrics {
        Metrics {
            events: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            upload_failures: AtomicU64::new(0),
            upload_retries: AtomicU64::new(0),
            last_upload_ms: AtomicI64::new(0),
            confirmed_lsn: AtomicU64::new(0),
            received_lsn: AtomicU64::new(0),
            server_wal_end: AtomicU64::new(0),
            pending_commit_ms: AtomicI64::new(0),
            retained_wal: AtomicU64::new(0),
            snapshot_tables: AtomicU64::new(0),
            snapshot_tables_done: AtomicU64::new(0),
            snapshot_rows: AtomicU64::new(0),
            session_errors: AtomicU64::new(0),
            unhealthy_after,
            status: Mutex::new(Status {
                phase: Phase::Starting,
                not_streaming_since: Instant::now(),
                upload_failing_since: None,
                wal_warning: None,
                last_error: None,
                generation: String::new(),
            }),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        let mut s = self.status();
        let was_streaming = s.phase == Phase::Streaming;
        let standby_changed = matches!(phase, Phase::Standby { .. }) != matches!(s.phase, Phase::Standby { .. });
        if (was_streaming && phase != Phase::Streaming) || standby_changed {
            s.not_streaming_since = Instant::now();
        }
        s.phase = phase;
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.status().phase.clone()
    }

    /// Notes the generation being written.
    pub fn set_generation(&self, gen: &str) {
        self.status().generation = gen.to_string();
    }

    /// An upload attempt failed with `error`.
    pub fn upload_failed(&self, error: &str) {
        self.upload_failures.fetch_add(1, Ordering::Relaxed);
        let mut s = self.status();
        s.last_error = Some((Utc::now(), error.to_string()));
        if s.upload_failing_since.is_none() {
            s.upload_failing_since = Some(Instant::now());
        }
    }

    /// An upload succeeded (of any object: the archive answers again).
    pub fn upload_succeeded(&self) {
        self.status().upload_failing_since = None;
    }

    /// A segment of `bytes` holding `events` and `transactions` was uploaded.
    pub fn segment_uploaded(&self, bytes: u64, events: u64, transactions: u64) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        self.transactions.fetch_add(transactions, Ordering::Relaxed);
        self.last_upload_ms.store(now_ms(), Ordering::Relaxed);
        self.upload_succeeded();
    }

    /// The slot retains `bytes` of WAL; `warning` says why that is too much.
    pub fn set_retained_wal(&self, bytes: u64, warning: Option<String>) {
        self.retained_wal.store(bytes, Ordering::Relaxed);
        self.status().wal_warning = warning;
    }

    /// A session ended with `error`.
    pub fn session_failed(&self, error: &str) {
        self.session_errors.fetch_add(1, Ordering::Relaxed);
        self.status().last_error = Some((Utc::now(), error.to_string()));
    }

    /// The last error that ended a session.
    pub fn last_error(&self) -> Option<(DateTime<Utc>, String)> {
        self.status().last_error.clone()
    }

    /// Replication lag in bytes: the server's WAL end past what is confirmed.
    pub fn lag_bytes(&self) -> u64 {
        let end = self.server_wal_end.load(Ordering::Relaxed);
        end.saturating_sub(self.confirmed_lsn.load(Ordering::Relaxed))
    }

    /// Replication lag in seconds: how long ago the oldest transaction not
    /// yet archived committed (0 when nothing is waiting).
    pub fn lag_seconds(&self) -> f64 {
        match self.pending_commit_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            t => ((now_ms() - t).max(0)) as f64 / 1000.0,
        }
    }

    /// `None` when live, or why not.
    pub fn liveness(&self) -> Option<String> {
        let s = self.status();
        let limit = self.unhealthy_after;
        if let Some(t) = s.upload_failing_since.filter(|t| t.elapsed() > limit) {
            let why = s.last_error.as_ref().map_or("", |(_, e)| e.as_str());
            return Some(format!(
                "uploads have been failing for {}s: {why}",
                t.elapsed().as_secs()
            ));
        }
        let stuck = matches!(s.phase, Phase::Starting | Phase::Reconnecting);
        if stuck && s.not_streaming_since.elapsed() > limit {
            let why = s.last_error.as_ref().map_or("", |(_, e)| e.as_str());
            return Some(format!(
                "not streaming for {}s: {why}",
                s.not_streaming_since.elapsed().as_secs()
            ));
        }
        None
    }

    /// `None` when ready, or why not.
    pub fn readiness(&self) -> Option<String> {
        if let Some(why) = self.liveness() {
            return Some(why);
        }
        let s = self.status();
        match &s.phase {
            Phase::Streaming => {}
            Phase::Standby { holder_pid } => {
                return Some(format!(
                "standby: the slot is streamed by another process (walsender PID {holder_pid}); waiting to take over"
            ))
            }
            Phase::Reconnecting => {
                let why = s.last_error.as_ref().map_or("", |(_, e)| e.as_str());
                return Some(format!("not streaming: reconnecting after: {why}"));
            }
            p => return Some(format!("not streaming: {}", p.name())),
        }
        s.wal_warning.clone()
    }

    /// The Prometheus text exposition of everything above.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        put(
            "waly_events_archived_total",
            "counter",
            "Changes and messages archived.",
            get(&self.events),
        );
        put(
            "waly_transactions_archived_total",
            "counter",
            "Transactions archived.",
            get(&self.transactions),
        );
        put(
            "waly_bytes_archived_total",
            "counter",
            "Segment bytes uploaded (compressed).",
            get(&self.bytes),
        );
        put(
            "waly_segment_uploads_total",
            "counter",
            "Segments uploaded.",
            get(&self.uploads),
        );
        put(
            "waly_upload_failures_total",
            "counter",
            "Upload attempts that failed.",
            get(&self.upload_failures),
        );
        put(
            "waly_upload_retries_total",
            "counter",
            "Upload attempts that were retries.",
            get(&self.upload_retries),
        );
        let last = self.last_upload_ms.load(Ordering::Relaxed);
        put(
            "waly_last_upload_timestamp_seconds",
            "gauge",
            "Unix time of the last successful segment upload (0: none yet).",
            format!("{:.3}", last as f64 / 1000.0),
        );
        put(
            "waly_confirmed_lsn",
            "gauge",
            "The WAL position confirmed to PostgreSQL, as a number.",
            get(&self.confirmed_lsn),
        );
        put(
            "waly_received_lsn",
            "gauge",
            "The end of the last transaction received, archived or still held in memory, as a number.",
            get(&self.received_lsn),
        );
        put(
            "waly_replication_lag_bytes",
            "gauge",
            "The server's WAL end past the confirmed position.",
            self.lag_bytes().to_string(),
        );
        put(
            "waly_replication_lag_seconds",
            "gauge",
            "Age of the oldest committed transaction not yet archived (0: none waiting).",
            format!("{:.3}", self.lag_seconds()),
        );
        put(
            "waly_slot_retained_wal_bytes",
            "gauge",
            "WAL the slot retains, as last looked at.",
            get(&self.retained_wal),
        );
        put(
            "waly_snapshot_tables",
            "gauge",
            "Tables the current snapshot copies.",
            get(&self.snapshot_tables),
        );
        put(
            "waly_snapshot_tables_done",
            "gauge",
            "Tables the current snapshot has copied.",
            get(&self.snapshot_tables_done),
        );
        put(
            "waly_snapshot_rows_total",
            "counter",
            "Rows copied by snapshots.",
            get(&self.snapshot_rows),
        );
        put(
            "waly_session_errors_total",
            "counter",
            "Sessions that ended in an error.",
            get(&self.session_errors),
        );
        let phase = self.phase();
        put(
            "waly_streaming",
            "gauge",
            "1 while streaming the slot into the archive.",
            u8::from(phase == Phase::Streaming).to_string(),
        );
        put(
            "waly_standby",
            "gauge",
            "1 while waiting as a standby for the slot.",
            u8::from(matches!(phase, Phase::Standby { .. })).to_string(),
        );
        put(
            "waly_ready",
            "gauge",
            "1 when /readyz answers 200.",
            u8::from(self.readiness().is_none()).to_string(),
        );
        let generation = self.status().generation.clone();
        let _ = writeln!(
            out,
            "# HELP waly_info The generation being written and the phase.\n# TYPE waly_info gauge\nwaly_info{{generation=\"{generation}\",phase=\"{}\"}} 1",
            phase.name()
        );
        out
    }

    /// Sets the confirmed position.
    pub fn set_confirmed(&self, lsn: Lsn) {
        self.confirmed_lsn.fetch_max(lsn.as_u64(), Ordering::Relaxed);
    }

    /// A transaction ending at `lsn` was received (a replay after a
    /// reconnect never moves the gauge back).
    pub fn set_received(&self, lsn: Lsn) {
        self.received_lsn.fetch_max(lsn.as_u64(), Ordering::Relaxed);
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the
/// process ends. One short request per connection; anything else is 404.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let mut sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of file descriptors, say: do not spin; try again shortly.
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            // The request line and headers; bounded, and a slow client gets 5 s.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&buf);
            let mut words = line.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let path = path.split('?').next().unwrap_or("");
            let (status, body) = match (method, path) {
                ("GET", "/metrics") => ("200 OK", m.render()),
                ("GET", "/healthz") => match m.liveness() {
                    None => ("200 OK", "ok\n".to_string()),
                    Some(why) => ("503 Service Unavailable", format!("{why}\n")),
                },
                ("GET", "/readyz") => match m.readiness() {
                    None => ("200 OK", "ready\n".to_string()),
                    Some(why) => ("503 Service Unavailable", format!("{why}\n")),
                },
                ("GET", _) => ("404 Not Found", "try /metrics, /healthz or /readyz\n".to_string()),
                _ => ("405 Method Not Allowed", "GET only\n".to_string()),
            };
            let content_type = if path == "/metrics" {
                "text/plain; version=0.0.4; charset=utf-8"
            } else {
                "text/plain; charset=utf-8"
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_phase_uploads_and_wal() {
        let patient = Metrics::new(Duration::from_secs(60));
        assert!(patient.readiness().unwrap_or_default().contains("starting"));
        assert_eq!(patient.liveness(), None, "starting is not yet a failure");
        let m = Metrics::new(Duration::from_millis(0));
        std::thread::sleep(Duration::from_millis(2));
        assert!(m.liveness().unwrap_or_default().contains("not streaming"));
        m.set_phase(Phase::Streaming);
        assert_eq!(m.readiness(), None);
        assert_eq!(m.liveness(), None);
        m.set_retained_wal(10, Some("too much WAL".into()));
        assert_eq!(m.readiness().as_deref(), Some("too much WAL"));
        assert_eq!(m.liveness(), None, "WAL retention is not a reason to restart");
        m.set_retained_wal(1, None);
        m.upload_failed("disk full");
        std::thread::sleep(Duration::from_millis(2));
        assert!(m.liveness().unwrap_or_default().contains("uploads have been failing"));
        m.segment_uploaded(10, 1, 1);
        assert_eq!(m.readiness(), None);
        m.set_phase(Phase::Standby {
            holder_pid: "42".into(),
        });
        assert!(m.readiness().unwrap_or_default().contains("PID 42"));
        assert_eq!(m.liveness(), None, "a standby is alive");
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.segment_uploaded(100, 7, 2);
        m.set_confirmed(Lsn(0x10));
        m.set_received(Lsn(0x30));
        m.set_received(Lsn(0x20));
        let text = m.render();
        assert!(text.contains("\nwaly_events_archived_total 7\n"), "{text}");
        assert!(text.contains("\nwaly_transactions_archived_total 2\n"), "{text}");
        assert!(text.contains("\nwaly_confirmed_lsn 16\n"), "{text}");
        assert!(
            text.contains("\nwaly_received_lsn 48\n"),
            "a replay never moves it back: {text}"
        );
        assert!(text.contains("# TYPE waly_bytes_archived_total counter\nwaly_bytes_archived_total 100\n"));
    }
}
