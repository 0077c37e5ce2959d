//! `waly keys`: who may read an encrypted archive, and rotation.

use super::ArchiveArgs;
use std::io::Write;

/// List or change an encrypted archive's recipients and data keys.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum KeysAction {
    /// The recipient sets (the newest is in force) and the data keys.
    List {
        /// One JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        archive: ArchiveArgs,
    },
    /// Add a recipient: every data key is wrapped for it too (needs --identity or WALY_PASSPHRASE).
    AddRecipient {
        /// age1...
        recipient: String,
        #[command(flatten)]
        archive: ArchiveArgs,
    },
    /// Remove a recipient: what is written from now on is sealed under a new data key it cannot open.
    RemoveRecipient {
        /// age1...
        recipient: String,
        #[command(flatten)]
        archive: ArchiveArgs,
    },
    /// Move writers to a new data key (the same recipients); `waly run` picks it up within seconds.
    Rotate {
        #[command(flatten)]
        archive: ArchiveArgs,
    },
}

pub async fn run(args: &KeysArgs) -> anyhow::Result<()> {
    use crate::crypt::rotate;
    let store = match &args.action {
        KeysAction::List { archive, .. }
        | KeysAction::AddRecipient { archive, .. }
        | KeysAction::RemoveRecipient { archive, .. }
        | KeysAction::Rotate { archive } => archive.open()?,
    };
    let mut out = std::io::stdout();
    let set = match &args.action {
        KeysAction::List { json, .. } => {
            let l = rotate::list(&store).await?;
            if *json {
                serde_json::to_writer(&mut out, &l)?;
                writeln!(out)?;
                return Ok(());
            }
            for s in &l.sets {
                writeln!(
                    out,
                    "set {:>4}  {}  {:<16} {}{}",
                    s.number,
                    s.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    s.reason,
                    s.recipients.join(","),
                    if s.passphrase {
                        "  (one is the passphrase's)"
                    } else {
                        ""
                    }
                )?;
            }
            for k in &l.data_keys {
                let what = if k.schema { "schema key" } else { "data key" };
                writeln!(out, "{what} {}  {} wrapping(s)", k.id, k.wrappings)?;
            }
            return Ok(());
        }
        KeysAction::AddRecipient { recipient, .. } => rotate::add_recipient(&store, recipient).await?,
        KeysAction::RemoveRecipient { recipient, .. } => rotate::remove_recipient(&store, recipient).await?,
        KeysAction::Rotate { .. } => rotate::rotate(&store).await?,
    };
    writeln!(
        out,
        "recipient set {} ({}) is in force: {}. A running `waly run` seals under a new data key within seconds.",
        set.number,
        set.reason,
        set.recipients.join(",")
    )?;
    Ok(())
}
