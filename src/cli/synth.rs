//! `waly synth`: a synthetic archive for benchmarks (hidden from `--help`).

use super::ArchiveArgs;
use crate::synth::{generate, SynthOptions};

/// Write a valid archive of synthetic changes, without PostgreSQL (a benchmark tool).
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Changes in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Each table's relative share of the changes, one table per weight
    /// (`public.t0`, `public.t1`, ...).
    #[arg(long, value_delimiter = ',', default_value = "1000,100,10,1")]
    pub weights: Vec<u64>,
    /// Rows each table has in the base snapshot: one number per table, or one for all.
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    pub rows: Vec<u64>,
    /// Skew toward low ids of the rows changes touch (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    pub skew: f64,
    /// Bytes of each row's text column.
    #[arg(long, default_value_t = 64)]
    pub row_bytes: usize,
    /// Changes per transaction.
    #[arg(long, default_value_t = 10)]
    pub txn_changes: u32,
    /// Uncompressed bytes per segment (e.g. 16MiB).
    #[arg(long, default_value = "16MiB", value_parser = super::run::parse_size)]
    pub segment_size: usize,
    /// Commit time of the first transaction (RFC 3339).
    #[arg(long, default_value = "2026-01-01T00:00:00Z")]
    pub start: String,
    /// Milliseconds between transactions.
    #[arg(long, default_value_t = 100)]
    pub txn_interval_ms: i64,
    /// The seed of the draw: the same options and seed give the same archive.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tests of `waly verify`: a writer's crash half way through this
    /// transaction (counted from 1), and a second one half way through its
    /// replay; then the stream goes on with it whole.
    #[arg(long)]
    pub crash_at: Option<u64>,
    /// Tests of `waly verify`: the last segment ends half way through a
    /// transaction that never commits.
    #[arg(long)]
    pub orphan_at_end: bool,
    /// Every Nth transaction carries an intent (a `waly` message after its
    /// changes), as an application that says why it changed a row does.
    #[arg(long)]
    pub intent_every: Option<u64>,
    /// The source's clock steps back before every Nth transaction (by
    /// --clock-back-ms), as after a clock correction: commit times are then
    /// not in commit order.
    #[arg(long, value_name = "N")]
    pub clock_back_every: Option<u64>,
    /// How far the clock steps back each time (milliseconds).
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    pub clock_back_ms: i64,
}

pub async fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let store = args.archive.open()?;
    let start = crate::log::parse_time(&args.start).map_err(anyhow::Error::msg)?;
    let t0 = std::time::Instant::now();
    let s = generate(
        &store,
        &SynthOptions {
            events: args.events,
            weights: args.weights.clone(),
            rows: args.rows.clone(),
            skew: args.skew,
            row_bytes: args.row_bytes,
            txn_changes: args.txn_changes,
            segment_bytes: args.segment_size,
            start,
            txn_interval: chrono::Duration::milliseconds(args.txn_interval_ms),
            seed: args.seed,
            crash_at: args.crash_at,
            orphan_at_end: args.orphan_at_end,
            intent_every: args.intent_every,
            clock_back: args
                .clock_back_every
                .map(|n| (n, chrono::Duration::milliseconds(args.clock_back_ms))),
        },
    )
    .await?;
    eprintln!(
        "wrote {} changes in {} transactions, {} segments ({} bytes), {} snapshot rows in {:.1}s",
        s.changes,
        s.transactions,
        s.segments,
        s.segment_bytes,
        s.snapshot_rows,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
