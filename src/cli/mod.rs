//! The command line: parse, call the library, print. One file per subcommand.

mod compact;
mod drop;
mod export;
mod history;
mod init;
mod keygen;
mod keys;
mod log;
mod prune;
mod reindex;
mod restore;
mod run;
mod schema;
mod show;
mod status;
mod synth;
mod tables;
mod tail;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// waly: every committed change in PostgreSQL, archived as immutable events.
#[derive(Debug, Parser)]
#[command(name = "waly", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level filter (also WALY_LOG), e.g. `debug` or `waly=trace`.
    #[arg(long, global = true, env = "WALY_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream live changes from a publication and print them.
    Tail(tail::TailArgs),
    /// Check the database, create the publication and the slot.
    Init(init::InitArgs),
    /// Print a new age identity (X25519) for encrypted archives, its recipient on a comment line.
    Keygen(keygen::KeygenArgs),
    /// An encrypted archive's recipients and data keys: list, add-recipient, remove-recipient, rotate.
    Keys(keys::KeysArgs),
    /// Capture every committed change into the archive (the sidecar).
    Run(run::RunArgs),
    /// Print the archived changes in commit order, each once.
    Log(log::LogArgs),
    /// Restore a table as it was at a point in time (into a table, a file, or as undo SQL).
    Restore(restore::RestoreArgs),
    /// Print a table, or some rows, as they were at a point in time.
    Show(show::ShowArgs),
    /// Every version of one row: when, in which transaction, what changed, and why.
    History(history::HistoryArgs),
    /// The archived tables: schema versions, changes, latest snapshot.
    Tables(tables::TablesArgs),
    /// A table's schema versions and what each changed.
    Schema(schema::SchemaArgs),
    /// Rebuild the index (derived data) from the segments and snapshots.
    Reindex(reindex::ReindexArgs),
    /// Check that the archive is whole and untouched (exit 0 clean, 1 problems, 2 could not run).
    Verify(verify::VerifyArgs),
    /// Remove waly's slot, publication and guard trigger from the database (asks first, or --yes).
    Drop(drop::DropArgs),
    /// The slot (active, confirmed LSN, lag, retained WAL) and the archive (latest commit, size, generations, writer, last error).
    Status(status::StatusArgs),
    /// Delete what no point inside the retention window needs (--keep 30d; --dry-run lists it).
    Prune(prune::PruneArgs),
    /// Make a fresh snapshot of every table from the archive alone (no source needed).
    Compact(compact::CompactArgs),
    /// Write each table's changes as a Parquet dataset (hive layout), continuing from the last export.
    Export(export::ExportArgs),
    /// Write a valid archive of synthetic changes, without PostgreSQL (a benchmark tool; bench/scale.sh).
    #[command(hide = true)]
    Synth(synth::SynthArgs),
}

/// Where the source database is: a URL or key=value string, else PG* variables.
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// The database, as a libpq URL (postgres://user@host:5432/db?sslmode=verify-full)
    /// or key=value string. Unset parts come from PGHOST, PGPORT, PGUSER,
    /// PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT.
    #[arg(long, env = "WALY_SOURCE", hide_env_values = true, default_value = "")]
    pub source: String,
}

/// Which slot and publication waly uses.
#[derive(Debug, clap::Args)]
pub struct SlotArgs {
    /// The replication slot.
    #[arg(long, default_value = "waly")]
    pub slot: String,
    /// The publication.
    #[arg(long, default_value = "waly")]
    pub publication: String,
}

/// A span of history, by commit time or commit LSN.
#[derive(Debug, clap::Args)]
pub struct SpanArgs {
    /// Only what committed at or after this time (RFC 3339; without an offset it is UTC) or LSN.
    #[arg(long)]
    pub since: Option<crate::log::Bound>,
    /// Only what committed at or before this time or LSN.
    #[arg(long)]
    pub until: Option<crate::log::Bound>,
}

/// Where the archive is.
#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {
    /// The archive: a directory, file:///path, s3://bucket/prefix, gs://bucket/prefix or
    /// az://container/prefix. Credentials come from the usual environment variables
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT, GOOGLE_SERVICE_ACCOUNT, AZURE_STORAGE_*).
    #[arg(long, env = "WALY_ARCHIVE", hide_env_values = true, default_value = "./waly-archive")]
    pub archive: String,
    /// An encrypted archive: the age identity file to read it with (else WALY_PASSPHRASE for a
    /// passphrase archive). `waly run` never needs one.
    #[arg(long, env = "WALY_IDENTITY", hide_env_values = true, value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,
}

impl ArchiveArgs {
    /// Opens the archive's store, with the reader's key source (if any).
    pub fn open(&self) -> anyhow::Result<crate::archive::Store> {
        let store = crate::archive::Store::open(&self.archive)?;
        let source = match &self.identity {
            Some(f) => Some(crate::crypt::KeySource::File(f.clone())),
            None => passphrase_from_env().map(crate::crypt::KeySource::Passphrase),
        };
        store.crypt().set_source(source);
        Ok(store)
    }
}

/// `WALY_PASSPHRASE`, if set and not empty.
pub(crate) fn passphrase_from_env() -> Option<age::secrecy::SecretString> {
    std::env::var("WALY_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty())
        .map(age::secrecy::SecretString::from)
}

impl SourceArgs {
    /// The parsed settings.
    pub fn conninfo(&self) -> anyhow::Result<crate::source::ConnInfo> {
        Ok(crate::source::ConnInfo::parse(&self.source)?)
    }
}

fn init_logging(cli: &Cli) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(ansi).init(),
    }
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub(crate) async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    main_with(|| {})
}

/// [`main`], calling `sidecar` first when the command is `waly run` (the
/// binary tunes its allocator there for a long-lived process).
pub fn main_with(sidecar: fn()) -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run(_)) {
        sidecar();
    }
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The command runs as a task on the worker threads, not on this thread:
    // a task woken by another (the replication reader handing over a batch)
    // then usually runs on the same worker, without a cross-thread wake-up.
    let command = cli.command;
    let result = runtime.block_on(async move {
        let task = tokio::spawn(async move {
            let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS).map_err(|e| (e, 1u8));
            match &command {
                Command::Tail(args) => done(tail::run(args).await),
                Command::Init(args) => done(init::run(args).await),
                Command::Keygen(args) => done(keygen::run(args)),
                Command::Keys(args) => done(keys::run(args).await),
                Command::Run(args) => done(run::run(args).await),
                Command::Log(args) => done(log::run(args).await),
                Command::Restore(args) => done(restore::run(args).await),
                Command::Show(args) => done(show::run(args).await),
                Command::History(args) => done(history::run(args).await),
                Command::Tables(args) => done(tables::run(args).await),
                Command::Schema(args) => done(schema::run(args).await),
                Command::Reindex(args) => done(reindex::run(args).await),
                Command::Drop(args) => done(drop::run(args).await),
                Command::Status(args) => done(status::run(args).await),
                Command::Prune(args) => done(prune::run(args).await),
                Command::Compact(args) => done(compact::run(args).await),
                Command::Export(args) => done(export::run(args).await),
                Command::Synth(args) => done(synth::run(args).await),
                // 0 clean, 1 problems found, 2 could not run.
                Command::Verify(args) => match verify::run(args).await {
                    Ok(true) => Ok(ExitCode::SUCCESS),
                    Ok(false) => Ok(ExitCode::from(1)),
                    Err(e) => Err((e, 2)),
                },
            }
        });
        task.await
            .unwrap_or_else(|e| Err((anyhow::anyhow!("the command's task failed: {e}"), 1)))
    });
    let read_stats = std::env::var("WALY_READ_STATS").unwrap_or_default();
    if read_stats == "2" {
        for (key, bytes, requests) in crate::archive::Store::all_reads_by_object() {
            eprintln!("read {bytes} bytes in {requests} GET requests from {key}");
        }
    }
    if read_stats == "1" || read_stats == "2" {
        let c = crate::archive::Store::all_read_cost();
        eprintln!(
            "reads: {} bytes in {} GET requests to {} objects, {} listings",
            c.bytes, c.requests, c.objects, c.lists
        );
    }
    match result {
        Ok(code) => code,
        Err((e, code)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}
