//! `waly tail`: print live changes.

use super::SourceArgs;
use crate::tail::TailOptions;
use crate::Lsn;

/// Stream live changes from a temporary slot on an existing publication.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The publication to stream.
    #[arg(long, default_value = "waly")]
    pub publication: String,
    /// Print one JSON object per change instead of text lines.
    #[arg(long)]
    pub json: bool,
    /// Read this existing slot (and confirm what was printed) instead of a
    /// temporary one.
    #[arg(long)]
    pub slot: Option<String>,
    /// With --slot: where to start (default: where the slot was confirmed).
    #[arg(long, default_value = "0/0")]
    pub start: Lsn,
    /// Stop once the stream reaches this LSN (like pg_recvlogical --endpos).
    #[arg(long)]
    pub endpos: Option<Lsn>,
    /// pgoutput protocol version (1 or 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub proto_version: u32,
}

pub async fn run(args: &TailArgs) -> anyhow::Result<()> {
    let info = args.source.conninfo()?;
    let opts = TailOptions {
        publication: args.publication.clone(),
        slot: args.slot.clone(),
        start: args.start,
        endpos: args.endpos,
        json: args.json,
        proto_version: args.proto_version,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout);
    match crate::tail::run(&info, &opts, &mut out, super::stop_signal()).await {
        Ok(summary) => {
            tracing::info!(
                changes = summary.changes,
                transactions = summary.transactions,
                messages = summary.messages,
                "tail ended"
            );
            Ok(())
        }
        // `waly tail | head` closes the pipe: that is how a reader says "enough".
        Err(crate::Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}
