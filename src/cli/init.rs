//! `waly init`: prepare the database and the archive.

use super::{ArchiveArgs, SlotArgs, SourceArgs};
use crate::init::InitOptions;

/// Check the server, create the publication and the slot (safe to run twice).
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[command(flatten)]
    pub names: SlotArgs,
    /// Publish only these tables (comma-separated; schema.table or table). Default: all tables.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Print the SQL it would run, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Give published tables without a primary key REPLICA IDENTITY FULL.
    #[arg(long, conflicts_with = "skip_unkeyed")]
    pub replica_identity_full: bool,
    /// Leave tables without a primary key out of the publication.
    #[arg(long)]
    pub skip_unkeyed: bool,
    /// Do not install the event trigger that protects tables created later (it needs a superuser).
    #[arg(long)]
    pub no_guard: bool,
    /// Do not install the event triggers that record each DDL in the archive as it happens (they need a superuser).
    #[arg(long)]
    pub no_ddl_capture: bool,
    /// Encrypt a new archive: age:RECIPIENT[,RECIPIENT...] (from `waly keygen`), or passphrase
    /// (from WALY_PASSPHRASE, else asked for).
    #[arg(long, value_name = "SPEC")]
    pub encrypt: Option<String>,
    /// The archive's database now lives here (moved by pg_upgrade, or a dump and restore into
    /// another cluster): carry the archive on from this database, in a new generation.
    #[arg(long, conflicts_with = "encrypt")]
    pub source_moved: bool,
}

pub async fn run(args: &InitArgs) -> anyhow::Result<()> {
    let info = args.source.conninfo()?;
    let store = args.archive.open()?;
    let opts = InitOptions {
        slot: args.names.slot.clone(),
        publication: args.names.publication.clone(),
        tables: args.tables.clone(),
        dry_run: args.dry_run,
        replica_identity_full: args.replica_identity_full,
        skip_unkeyed: args.skip_unkeyed,
        no_guard: args.no_guard,
        no_ddl_capture: args.no_ddl_capture,
        source_moved: args.source_moved,
        encrypt: match &args.encrypt {
            Some(spec) => Some(crate::crypt::EncryptSpec::parse(spec, ask_passphrase)?),
            None => None,
        },
    };
    let mut out = std::io::stdout();
    crate::init::init(&info, &store, &opts, &mut out).await?;
    Ok(())
}

/// The passphrase for `--encrypt passphrase`: WALY_PASSPHRASE, else asked
/// for twice on the terminal (not echoed).
fn ask_passphrase() -> Result<age::secrecy::SecretString, crate::Error> {
    use age::secrecy::ExposeSecret;
    if let Some(p) = super::passphrase_from_env() {
        return Ok(p);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(crate::Error::Encryption(
            "--encrypt passphrase: set WALY_PASSPHRASE (no terminal to ask on)".into(),
        ));
    }
    let first = prompt("Passphrase for the archive: ")?;
    let again = prompt("The same passphrase again: ")?;
    if first.expose_secret() != again.expose_secret() {
        return Err(crate::Error::Encryption("the two passphrases differ".into()));
    }
    if first.expose_secret().is_empty() {
        return Err(crate::Error::Encryption("the passphrase is empty".into()));
    }
    Ok(first)
}

/// Reads a line from the terminal with echo off (`stty -echo`).
fn prompt(text: &str) -> Result<age::secrecy::SecretString, crate::Error> {
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
    };
    eprint!("{text}");
    stty("-echo")?;
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    stty("echo")?;
    eprintln!();
    read?;
    Ok(age::secrecy::SecretString::from(
        line.trim_end_matches(['\n', '\r']).to_string(),
    ))
}
