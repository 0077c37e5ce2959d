//! A raw PostgreSQL protocol connection for replication: socket (TCP or
//! Unix), TLS negotiation, startup with `replication=database`, password
//! authentication (cleartext, MD5, SCRAM-SHA-256), message framing and the
//! simple-query protocol that replication commands use.
//!
//! Message bodies are handed out as `Bytes` split off the read buffer, so the
//! pgoutput payloads inside CopyData frames reach the decoder without a copy.

use super::conninfo::{ConnInfo, Host, SslMode};
use super::tls;
use crate::error::{Error, ServerError};
use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Anything the connection can run over.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A Unix-domain socket.
    Unix(UnixStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Tcp(_) => "Stream::Tcp",
            Stream::Unix(_) => "Stream::Unix",
            Stream::Tls(_) => "Stream::Tls",
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How much to read from the socket at a time.
const READ_CHUNK: usize = 256 * 1024;

/// The largest backend message accepted (PostgreSQL's own limit is 1 GB).
const MAX_FRAME: usize = 1 << 30;

/// One backend message: its tag and body.
#[derive(Debug)]
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The body, without tag and length.
    pub body: Bytes,
}

/// Reads whole backend messages from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `io`.
    pub fn new(io: R) -> Self {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next message; `Error::ConnectionClosed` at end of stream.
    pub async fn read(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(f) = self.buffered()? {
                return Ok(f);
            }
            // Read in large chunks: one read usually brings many messages.
            let want = match self.buf.len() {
                n if n >= 5 => {
                    let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                    (len + 1 - n).max(READ_CHUNK)
                }
                _ => READ_CHUNK,
            };
            self.buf.reserve(want);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(Error::ConnectionClosed);
            }
        }
    }

    /// Reads whatever the socket holds right now, without waiting; returns
    /// whether anything came.
    pub fn try_fill(&mut self) -> Result<bool, Error> {
        use futures_util::FutureExt;
        self.buf.reserve(READ_CHUNK);
        match self.io.read_buf(&mut self.buf).now_or_never() {
            None => Ok(false),
            Some(Ok(0)) => Err(Error::ConnectionClosed),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(e.into()),
        }
    }

    /// The next message if it is already wholly in the buffer; never reads.
    pub fn buffered(&mut self) -> Result<Option<Frame>, Error> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if !(4..=MAX_FRAME).contains(&len) {
            return Err(Error::Protocol(format!(
                "backend message {:?} has invalid length {len}",
                tag as char
            )));
        }
        if self.buf.len() <= len {
            return Ok(None);
        }
        self.buf.advance(5);
        let body = self.buf.split_to(len - 4).freeze();
        Ok(Some(Frame { tag, body }))
    }

    /// Gives the underlying reader back.
    pub fn into_inner(self) -> R {
        self.io
    }
}

/// A connected, authenticated session.
#[derive(Debug)]
pub struct PgConn {
    pub(crate) reader: FrameReader<tokio::io::ReadHalf<Stream>>,
    pub(crate) writer: tokio::io::WriteHalf<Stream>,
    /// `ParameterStatus` values the server reported (server_version, ...).
    pub params: Vec<(String, String)>,
    /// Whether the session is encrypted.
    pub tls: bool,
}

/// One row of a simple-query result, in text form.
pub type Row = Vec<Option<String>>;

impl PgConn {
    /// Connects to the first reachable host of `info` and logs in. With
    /// `replication`, the session is a walsender (`replication=database`).
    pub async fn connect(info: &ConnInfo, replication: bool) -> Result<PgConn, Error> {
        let target = info.describe();
        match tokio::time::timeout(info.connect_timeout, Self::connect_any(info, replication)).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout {
                target,
                after: info.connect_timeout,
            }),
        }
    }

    async fn connect_any(info: &ConnInfo, replication: bool) -> Result<PgConn, Error> {
        let mut last = None;
        for host in &info.hosts {
            match Self::connect_one(info, host, replication).await {
                Ok(c) => return Ok(c),
                // Try the next host only when this one could not be reached.
                Err(e @ (Error::Connect { .. } | Error::Io(_))) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no host to connect to".into())))
    }

    async fn connect_one(info: &ConnInfo, host: &Host, replication: bool) -> Result<PgConn, Error> {
        let target = format!("{host}:{} (user {}, database {})", info.port, info.user, info.dbname);
        let connect_err = |cause| Error::Connect {
            target: target.clone(),
            cause,
        };
        let stream = match host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", info.port));
                Stream::Unix(UnixStream::connect(&path).await.map_err(connect_err)?)
            }
            Host::Tcp(name) => {
                let mut tcp = TcpStream::connect((name.as_str(), info.port))
                    .await
                    .map_err(connect_err)?;
                tcp.set_nodelay(true)?;
                match tls::client_config(info)? {
                    None => Stream::Tcp(tcp),
                    Some(config) => {
                        let mut req = BytesMut::new();
                        frontend::ssl_request(&mut req);
                        tcp.write_all(&req).await?;
                        let answer = tcp.read_u8().await?;
                        match answer {
                            b'S' => {
                                let tls = tokio_rustls::TlsConnector::from(config)
                                    .connect(tls::server_name(name)?, tcp)
                                    .await
                                    .map_err(|e| Error::Tls {
                                        target: target.clone(),
                                        message: tls::explain(&e),
                                    })?;
                                Stream::Tls(Box::new(tls))
                            }
                            b'N' if info.sslmode == SslMode::Prefer => Stream::Tcp(tcp),
                            b'N' => {
                                return Err(Error::Tls {
                                    target,
                                    message: "the server does not offer TLS (its ssl setting is off), but sslmode requires it; turn ssl on in the server, or connect with sslmode=prefer (or disable) if an unencrypted connection is acceptable"
                                        .into(),
                                })
                            }
                            other => {
                                return Err(Error::Protocol(format!(
                                    "unexpected answer {other:#04x} to the TLS request from {target}"
                                )))
                            }
                        }
                    }
                }
            }
        };
        let tls = matches!(stream, Stream::Tls(_));
        let (r, w) = tokio::io::split(stream);
        let mut conn = PgConn {
            reader: FrameReader::new(r),
            writer: w,
            params: Vec::new(),
            tls,
        };
        conn.startup(info, replication).await?;
        Ok(conn)
    }

    async fn startup(&mut self, info: &ConnInfo, replication: bool) -> Result<(), Error> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &info.user),
            ("database", &info.dbname),
            ("application_name", &info.application_name),
            ("client_encoding", "UTF8"),
        ];
        let exact = info.exact_text();
        params.extend(exact.iter().copied());
        if replication {
            params.push(("replication", "database"));
        }
        if let Some(o) = &info.options {
            params.push(("options", o));
        }
        let mut buf = BytesMut::new();
        frontend::startup_message(params, &mut buf)?;
        self.send(&buf).await?;

        let mut scram: Option<ScramSha256> = None;
        let password = || {
            info.password.as_ref().map(|p| p.expose().as_bytes()).ok_or_else(|| {
                Error::Prerequisite(format!(
                    "the server asks for a password for user {:?}, but none was given: \
                     put it in the URL, the password= setting or PGPASSWORD",
                    info.user
                ))
            })
        };
        loop {
            let frame = self.reader.read().await?;
            match frame.tag {
                b'R' => {
                    let code = frame
                        .body
                        .get(..4)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    let data = frame.body.slice(4.min(frame.body.len())..);
                    buf.clear();
                    match code {
                        Some(0) => {}
                        Some(3) => {
                            frontend::password_message(password()?, &mut buf)?;
                            self.send(&buf).await?;
                        }
                        Some(5) => {
                            let salt: [u8; 4] = data
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| Error::Protocol("MD5 request without salt".into()))?;
                            let hash =
                                postgres_protocol::authentication::md5_hash(info.user.as_bytes(), password()?, salt);
                            frontend::password_message(hash.as_bytes(), &mut buf)?;
                            self.send(&buf).await?;
                        }
                        Some(10) => {
                            let offered: Vec<&[u8]> = data.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                            if !offered.contains(&&b"SCRAM-SHA-256"[..]) {
                                return Err(Error::Protocol(format!(
                                    "the server offers no SASL mechanism waly supports (offered: {})",
                                    offered
                                        .iter()
                                        .map(|m| String::from_utf8_lossy(m).into_owned())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )));
                            }
                            // Channel binding is not used: "n" tells the server
                            // so honestly, which it accepts even when it offers
                            // SCRAM-SHA-256-PLUS.
                            let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                            frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut buf)?;
                            self.send(&buf).await?;
                            scram = Some(s);
                        }
                        Some(11) => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| Error::Protocol("SASL continue before SASL start".into()))?;
                            s.update(&data)
                                .map_err(|e| Error::Protocol(format!("SCRAM exchange failed: {e}")))?;
                            frontend::sasl_response(s.message(), &mut buf)?;
                            self.send(&buf).await?;
                        }
                        Some(12) => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| Error::Protocol("SASL final before SASL start".into()))?;
                            s.finish(&data)
                                .map_err(|e| Error::Protocol(format!("SCRAM server signature did not verify: {e}")))?;
                        }
                        other => {
                            return Err(Error::Protocol(format!(
                                "the server asks for an authentication method waly does not support (code {other:?}); \
                                 use trust, password, md5 or scram-sha-256 in pg_hba.conf"
                            )))
                        }
                    }
                }
                b'S' => {
                    let mut parts = frame.body.split(|&b| b == 0);
                    let k = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    self.params.push((k, v));
                }
                b'K' | b'N' => {}
                b'Z' => return Ok(()),
                b'E' => {
                    return Err(Error::Server(Box::new(ServerError::parse_during(
                        &frame.body,
                        "opening the session",
                    ))))
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )))
                }
            }
        }
    }

    /// A parameter the server reported at startup.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Writes and flushes raw frontend bytes.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Runs one statement with the simple-query protocol and returns its rows
    /// (the last result set, if the statement produced several).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, Error> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)?;
        self.send(&buf).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.reader.read().await?;
            match frame.tag {
                b'T' => rows.clear(),
                b'D' => rows.push(parse_data_row(&frame.body)?),
                b'C' | b'I' | b'N' | b'S' => {}
                b'E' => error = Some(ServerError::parse_during(&frame.body, ServerError::running(sql))),
                b'Z' => {
                    return match error {
                        Some(e) => Err(Error::Server(Box::new(e))),
                        None => Ok(rows),
                    }
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected message {:?} in reply to {sql:?}",
                        other as char
                    )))
                }
            }
        }
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.send(&buf).await;
        let _ = self.writer.shutdown().await;
    }
}

fn parse_data_row(body: &[u8]) -> Result<Row, Error> {
    let bad = || Error::Protocol("malformed DataRow".into());
    let mut b = body;
    if b.len() < 2 {
        return Err(bad());
    }
    let n = u16::from_be_bytes([b[0], b[1]]) as usize;
    b = &b[2..];
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len_bytes: [u8; 4] = b.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
        let len = i32::from_be_bytes(len_bytes);
        b = &b[4..];
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        let v = b.get(..len).ok_or_else(bad)?;
        row.push(Some(String::from_utf8_lossy(v).into_owned()));
        b = &b[len..];
    }
    Ok(row)
}
