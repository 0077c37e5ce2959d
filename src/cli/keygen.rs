//! `waly keygen`: a new age X25519 identity, in age's identity-file format.

use age::secrecy::ExposeSecret;
use std::io::Write;

/// Print a new age identity for encrypted archives (like age-keygen).
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Write it to FILE (created with mode 0600; never overwritten) instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

pub fn run(args: &KeygenArgs) -> anyhow::Result<()> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let text = age::secrecy::SecretString::from(format!(
        "# created: {}\n# public key: {recipient}\n{}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        crate::crypt::keys::secret_line(&identity).expose_secret()
    ));
    match &args.output {
        Some(path) => {
            let mut f = create_private(path)
                .map_err(|e| anyhow::anyhow!("cannot create {} (it is never overwritten): {e}", path.display()))?;
            f.write_all(text.expose_secret().as_bytes())?;
            f.sync_all()?;
            eprintln!("Public key: {recipient}");
        }
        None => {
            std::io::stdout().write_all(text.expose_secret().as_bytes())?;
            if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                eprintln!("Public key: {recipient}");
            }
        }
    }
    Ok(())
}

/// Creates `path` new, readable and writable by its owner only.
fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}
