//! TLS to PostgreSQL with rustls, honouring libpq's `sslmode` meanings, for
//! both the replication connection and ordinary `tokio_postgres` connections.
//!
//! - `prefer`/`require`: encrypt; no verification, unless a root certificate
//!   is given, in which case the chain is verified (libpq does the same).
//! - `verify-ca`: the chain must lead to a trusted root; the name is not checked.
//! - `verify-full`: the chain and the host name are both checked.
//!
//! Roots come from `sslrootcert` (a PEM file, or `system` for the bundled
//! Mozilla roots), else `~/.postgresql/root.crt`.

use super::conninfo::{ConnInfo, SslMode};
use crate::error::Error;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration for `info`, or `None` when TLS is
/// disabled.
pub fn client_config(info: &ConnInfo) -> Result<Option<Arc<ClientConfig>>, Error> {
    let target = info.describe();
    let tls_err = |message: String| Error::Tls {
        target: target.clone(),
        message,
    };
    let roots_file = info.sslrootcert.clone().or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = std::path::Path::new(&home).join(".postgresql/root.crt");
        p.is_file().then(|| p.to_string_lossy().into_owned())
    });
    let verify = match info.sslmode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require if info.sslrootcert.is_none() => Verify::Nothing,
        SslMode::Prefer | SslMode::Require | SslMode::VerifyCa => Verify::Chain,
        SslMode::VerifyFull => Verify::Full,
    };
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(NoVerification(provider)),
        Verify::Chain | Verify::Full => {
            let file = roots_file.ok_or_else(|| {
                tls_err(format!(
                    "sslmode={} needs trusted root certificates: set sslrootcert=/path/to/root.crt \
                     (or sslrootcert=system), or put them in ~/.postgresql/root.crt",
                    match info.sslmode {
                        SslMode::VerifyFull => "verify-full",
                        _ => "verify-ca",
                    }
                ))
            })?;
            let roots = load_roots(&file).map_err(tls_err)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_err(e.to_string()))?;
            if matches!(verify, Verify::Full) {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

enum Verify {
    Nothing,
    Chain,
    Full,
}

fn load_roots(file: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if file == "system" {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    }
    let pem = std::fs::read(file).map_err(|e| format!("cannot read sslrootcert {file}: {e}"))?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("sslrootcert {file} is not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {file}: unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {file} holds no certificates"));
    }
    Ok(roots)
}

/// Explains a failed handshake in terms of the settings that decide it.
pub fn explain(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "the server's certificate is not signed by a root in sslrootcert (unknown issuer)".into()
        }
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => "the server's certificate is not valid for the host name connected to; \
               connect by a name the certificate lists, or use sslmode=verify-ca"
            .into(),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "the server's certificate has expired".into(),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

/// The server name to present and verify: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_string()).map_err(|e| Error::Tls {
        target: host.to_string(),
        message: format!("{host:?} is not a valid TLS server name: {e}"),
    })
}

/// `sslmode=require` without roots: encryption only. Signatures are still
/// checked so the handshake itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must be trusted; the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A `tokio_postgres` TLS connector over the same rustls configuration, so
/// SQL connections honour `verify-ca`/`verify-full` exactly as replication does.
#[derive(Clone, Debug)]
pub struct MakeRustls {
    config: Option<Arc<ClientConfig>>,
}

impl MakeRustls {
    /// A connector for `info` (plaintext when `sslmode=disable`).
    pub fn new(info: &ConnInfo) -> Result<MakeRustls, Error> {
        Ok(MakeRustls {
            config: client_config(info)?,
        })
    }
}

/// One TLS handshake for `tokio_postgres`.
#[derive(Debug)]
pub struct RustlsConnect {
    /// `None` when TLS cannot be used (sslmode=disable, or a Unix socket,
    /// for which `tokio_postgres` still asks for a connector with no name).
    setup: Result<(Arc<ClientConfig>, ServerName<'static>), String>,
}

/// A TLS stream handed to `tokio_postgres`.
#[derive(Debug)]
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Error> {
        let setup = match &self.config {
            None => Err("TLS requested while sslmode=disable".to_string()),
            Some(config) => server_name(domain)
                .map(|name| (config.clone(), name))
                .map_err(|e| e.to_string()),
        };
        Ok(RustlsConnect { setup })
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let (config, name) = self.setup.map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Opens an ordinary SQL connection (catalog queries, COPY) with the same
/// settings and TLS rules as the replication connection. The connection task
/// is spawned on the current runtime.
pub async fn connect_sql(info: &ConnInfo) -> Result<tokio_postgres::Client, Error> {
    let tls = MakeRustls::new(info)?;
    let (client, conn) = match info.to_sql_config().connect(tls).await {
        Ok(c) => c,
        // tokio_postgres says only "error connecting to server" or "error
        // performing TLS handshake": waly's own connection says which
        // (refused, unresolved, no TLS, a bad certificate) and what to check.
        Err(e) if e.as_db_error().is_none() => {
            return Err(match super::PgConn::connect(info, false).await {
                Err(ours) => ours,
                Ok(_) => sql_error(info, e),
            })
        }
        Err(e) => return Err(sql_error(info, e)),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "SQL connection ended");
        }
    });
    // Values in one exact text form, whatever the server's defaults (and
    // the user's options) say.
    let exact: Vec<String> = info
        .exact_text()
        .iter()
        .map(|(k, v)| format!("SET {k} = '{v}'"))
        .collect();
    client
        .batch_execute(&exact.join("; "))
        .await
        .map_err(|e| sql_failed("setting the session's value formats", e))?;
    Ok(client)
}

/// Runs `sql` (one statement) with the simple-query protocol on an SQL
/// connection: its rows, each value in its text form (`what` names it in
/// an error).
pub async fn simple_rows(
    client: &tokio_postgres::Client,
    sql: &str,
    what: &str,
) -> Result<Vec<super::conn::Row>, Error> {
    let messages = client.simple_query(sql).await.map_err(|e| sql_failed(what, e))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// Converts a `tokio_postgres` error into waly's, keeping the server's fields.
pub fn sql_error(info: &ConnInfo, e: tokio_postgres::Error) -> Error {
    if e.as_db_error().is_some() {
        return sql_failed("", e);
    }
    Error::Connect {
        target: info.describe(),
        cause: std::io::Error::other(e.to_string()),
    }
}

/// A query on an open SQL connection failed (`what` says which): the
/// server's error with its fields (transient or not by its SQLSTATE); a
/// connection that closed or broke is transient, so the session starts
/// again rather than the process giving up.
pub fn sql_failed(what: &str, e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let mut body = Vec::new();
        for (k, v) in [
            (b'V', db.severity()),
            (b'C', db.code().code()),
            (b'M', db.message()),
            (b'D', db.detail().unwrap_or_default()),
            (b'H', db.hint().unwrap_or_default()),
            (b'W', db.where_().unwrap_or_default()),
        ] {
            if !v.is_empty() {
                body.push(k);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
        }
        let e = crate::error::ServerError::parse(&body);
        return Error::Server(Box::new(match what {
            "" => e,
            what => crate::error::ServerError {
                during: Some(what.to_string()),
                ..e
            },
        }));
    }
    if e.is_closed() {
        return Error::ConnectionClosed;
    }
    Error::Io(std::io::Error::other(format!("{what}: {e}")))
}
