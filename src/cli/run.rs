//! `waly run`: the sidecar.

use super::{ArchiveArgs, SlotArgs, SourceArgs};
use crate::metrics::Metrics;
use crate::pipeline::RunOptions;
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;

/// Parses `500ms`, `1s`, `2m`, `1h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 1s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("invalid duration {s:?}: use e.g. 500ms, 1s, 2m")),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("invalid duration {s:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `16MiB`, `8MB`, `1048576`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("invalid size {s:?}: use e.g. 16MiB"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "kb" => 1000,
        "mib" | "m" => 1 << 20,
        "mb" => 1_000_000,
        "gib" | "g" => 1 << 30,
        _ => return Err(format!("invalid size {s:?}: use e.g. 16MiB")),
    };
    let v = n * mult;
    if v < 4096 {
        return Err(format!("size {s:?} is too small (at least 4KiB)"));
    }
    Ok(v)
}

/// Capture changes into the archive until stopped (SIGTERM/SIGINT flush, confirm and exit 0).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[command(flatten)]
    pub names: SlotArgs,
    /// Close a segment at most this long after its first change.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Close a segment once it holds this much (uncompressed).
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub segment_size: usize,
    /// Warn when the slot retains more WAL than this fraction of max_slot_wal_keep_size.
    #[arg(long, default_value = "0.8")]
    pub wal_warn_fraction: f64,
    /// Warn when the slot retains more WAL than this, if max_slot_wal_keep_size is unlimited.
    #[arg(long, default_value = "10GiB", value_parser = parse_size)]
    pub wal_warn_size: usize,
    /// With the published tables idle while other WAL flows, record how far the archive is
    /// complete (one small object) and advance the slot at most this often. The slot holds
    /// at most this long's WAL meanwhile.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_interval: Duration,
    /// How often to look at the WAL the slot retains.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub wal_check_interval: Duration,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9187).
    #[arg(long, env = "WALY_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Health turns red after uploads have failed, or streaming has been impossible, this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub unhealthy_after: Duration,
    /// As a standby (another process streams the slot), look again this often.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub standby_poll: Duration,
    /// Create the replication slot if it does not exist (`waly init` creates it). Without
    /// this a missing slot is an error: a slot created now holds WAL only from now on.
    #[arg(long)]
    pub create_slot: bool,
    /// Keep a Parquet export (`waly export`) current at this URL, on its own thread: it
    /// only reads the archive, and never delays the slot's confirmation.
    #[arg(long)]
    pub export_to: Option<String>,
    /// With --export-to: how long to wait between export runs.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub export_interval: Duration,
}

pub async fn run(args: &RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.wal_warn_fraction > 0.0 && args.wal_warn_fraction <= 1.0,
        "--wal-warn-fraction must be above 0 and at most 1, e.g. 0.8"
    );
    let info = args.source.conninfo()?;
    let store = args.archive.open()?;
    let metrics = Arc::new(Metrics::new(args.unhealthy_after));
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    }
    if let Some(to) = &args.export_to {
        let dest = crate::archive::Store::open(to).with_context(|| format!("--export-to {to}"))?;
        crate::export::keep_current(store.clone(), dest, args.export_interval)?;
    }
    let opts = RunOptions {
        slot: args.names.slot.clone(),
        publication: args.names.publication.clone(),
        flush_interval: args.flush_interval,
        segment_bytes: args.segment_size,
        idle_interval: args.idle_interval,
        wal_warn_fraction: args.wal_warn_fraction,
        wal_warn_bytes: args.wal_warn_size as u64,
        wal_check_interval: args.wal_check_interval,
        standby_poll: args.standby_poll,
        create_slot: args.create_slot,
        metrics,
    };
    crate::pipeline::run(&info, &store, &opts, super::stop_signal()).await?;
    Ok(())
}
