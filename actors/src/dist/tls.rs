//! Erlang distribution over TLS (`-proto_dist inet_tls`), client side.
//!
//! What it owns: loading deployex's certificates ([`TlsSettings`]), the TLS
//! handshake, the re-framing of the distribution handshake, and turning TLS
//! failures into [`DistError::Tls`] with the likely cause.
//!
//! Invariants:
//! - Mutual TLS only: [`TlsSettings::load`] always presents a client
//!   certificate and verifies the node against our CA only (no system
//!   roots). The server name is the host part of the node name, as OTP does.
//! - During the distribution handshake inet_tls frames messages with 4-byte
//!   lengths where erl_dist writes 2. erl_dist runs on one end of an
//!   in-memory pipe; [`pump`] re-frames between the pipe and the TLS stream
//!   and stops reading right after forwarding the last handshake message
//!   (`challenge_ack`), so no post-handshake byte goes to the pipe. Bytes read
//!   past it are handed on with the stream ([`Prefixed`]).
//! - After the handshake the framing is the same as over TCP: the runner
//!   works on the TLS stream directly.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::connection::{Handshake, handshake};
use super::{DistConfig, DistError};

/// The CA that signs the nodes' (and our) certificates.
pub const CA_FILE: &str = "ca.crt";
/// deployex's own certificate, presented to the nodes.
pub const CERT_FILE: &str = "deployex.crt";
/// The private key of [`CERT_FILE`].
pub const KEY_FILE: &str = "deployex.key";

/// Tag of `challenge_ack`, the last handshake message a client receives.
const CHALLENGE_ACK: u8 = b'a';

/// How deployex does TLS towards the nodes: a ready rustls client config.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<ClientConfig>,
    /// Where the files came from, for messages.
    dir: Option<PathBuf>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Why the TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path} is not valid PEM")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },

    #[error("CA certificate in {path} is unusable")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },

    /// E.g. the key does not match the certificate, or an unsupported key type.
    #[error("cannot use the certificate and key in {dir}")]
    Config {
        dir: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

impl TlsSettings {
    /// Reads `ca.crt`, `deployex.crt` and `deployex.key` (PEM) from `dir`
    /// (what `gen-certs.sh` writes, and `DEPLOYEX_OTP_TLS_CERT_PATH` points
    /// to) and builds a client config that presents `deployex.crt` and only
    /// trusts nodes whose certificate `ca.crt` signed.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let ca_path = dir.join(CA_FILE);
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&ca_path)? {
            roots.add(ca).map_err(|source| TlsError::BadCa {
                path: ca_path.clone(),
                source,
            })?;
        }
        let chain = read_certs(&dir.join(CERT_FILE))?;
        let key_path = dir.join(KEY_FILE);
        let key_pem = read(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Pem {
            path: key_path,
            source,
        })?;
        let config_err = |source| TlsError::Config {
            dir: dir.to_owned(),
            source,
        };
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(config_err)?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(config_err)?;
        Ok(Self {
            config: Arc::new(config),
            dir: Some(dir.to_owned()),
        })
    }

    /// Uses a ready rustls config as is (another trust store, no client
    /// certificate...). It must use a crypto provider (e.g.
    /// `builder_with_provider` with `rustls::crypto::ring`).
    pub fn from_client_config(config: Arc<ClientConfig>) -> Self {
        Self { config, dir: None }
    }

    /// The rustls config used for every connection.
    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.config
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The TLS stream a distribution connection runs on, once set up.
pub(crate) type DistTlsStream = Prefixed<tokio_rustls::client::TlsStream<TcpStream>>;

/// TLS handshake on `tcp`, then the distribution handshake through the
/// re-framing pump. Returns the stream to give to `from_handshake`.
pub(crate) async fn handshake_tls(
    tcp: TcpStream,
    node: &str,
    host: &str,
    cfg: &DistConfig,
    settings: &TlsSettings,
) -> Result<(DistTlsStream, Handshake), DistError> {
    let sends_cert = settings.config.client_auth_cert_resolver.has_certs();
    let tls_err = |reason: String| DistError::Tls {
        node: node.to_owned(),
        reason,
    };
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|_| tls_err(format!("{host:?} is not a valid TLS server name")))?;
    let mut tls = TlsConnector::from(settings.config.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| tls_err(tls_reason(&e, host, sends_cert, Phase::Tls)))?;

    let (erl_side, pump_side) = tokio::io::duplex(4096);
    let (shaken, pumped) = tokio::join!(handshake(erl_side, node, cfg), pump(&mut tls, pump_side));
    match (shaken, pumped) {
        (Ok((_, hs)), Ok(leftover)) => Ok((
            Prefixed {
                prefix: leftover,
                pos: 0,
                inner: tls,
            },
            hs,
        )),
        // A TLS alert says more than erl_dist (which only sees EOF). A plain
        // close is left to erl_dist's reading (e.g. "cookie rejected?").
        (_, Err(PumpError::Tls(e))) if is_rustls(&e) => {
            Err(tls_err(tls_reason(&e, host, sends_cert, Phase::Dist)))
        }
        (Err(e), _) => Err(e),
        (Ok(_), Err(PumpError::Tls(e))) => {
            Err(tls_err(tls_reason(&e, host, sends_cert, Phase::Dist)))
        }
        (Ok(_), Err(PumpError::Pipe)) => Err(DistError::Handshake {
            node: node.to_owned(),
            reason: "handshake ended before the challenge_ack".to_owned(),
        }),
    }
}

enum PumpError {
    /// The TLS stream failed or closed.
    Tls(io::Error),
    /// erl_dist gave up (its error says why).
    Pipe,
}

/// Moves handshake messages between erl_dist's pipe (2-byte lengths) and
/// TLS (4-byte lengths) until `challenge_ack` went through; returns the TLS
/// bytes read past it. Owns `pipe` so erl_dist sees EOF when this stops.
async fn pump<T>(tls: &mut T, mut pipe: DuplexStream) -> Result<Vec<u8>, PumpError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut from_erl = Vec::with_capacity(512);
    let mut from_peer = Vec::with_capacity(512);
    loop {
        tokio::select! {
            read = pipe.read_buf(&mut from_erl) => {
                match read {
                    Ok(0) | Err(_) => return Err(PumpError::Pipe),
                    Ok(_) => {}
                }
                let mut out = Vec::new();
                while let Some(body) = take_frame(&mut from_erl, 2) {
                    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                    out.extend_from_slice(&body);
                }
                if !out.is_empty() {
                    tls.write_all(&out).await.map_err(PumpError::Tls)?;
                    tls.flush().await.map_err(PumpError::Tls)?;
                }
            }
            read = tls.read_buf(&mut from_peer) => {
                match read {
                    Ok(0) => return Err(PumpError::Tls(io::ErrorKind::UnexpectedEof.into())),
                    Err(e) => return Err(PumpError::Tls(e)),
                    Ok(_) => {}
                }
                while let Some(body) = take_frame(&mut from_peer, 4) {
                    let len = u16::try_from(body.len()).map_err(|_| {
                        PumpError::Tls(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "handshake message longer than 65535 bytes",
                        ))
                    })?;
                    let mut out = len.to_be_bytes().to_vec();
                    out.extend_from_slice(&body);
                    pipe.write_all(&out).await.map_err(|_| PumpError::Pipe)?;
                    if body.first() == Some(&CHALLENGE_ACK) {
                        return Ok(from_peer);
                    }
                }
            }
        }
    }
}

/// Removes one complete `width`-byte-length frame from the front of `buf`.
fn take_frame(buf: &mut Vec<u8>, width: usize) -> Option<Vec<u8>> {
    let len = buf
        .get(..width)?
        .iter()
        .fold(0usize, |n, b| (n << 8) | usize::from(*b));
    if buf.len() < width + len {
        return None;
    }
    let body = buf[width..width + len].to_vec();
    buf.drain(..width + len);
    Some(body)
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// The TLS handshake itself.
    Tls,
    /// The distribution handshake, over TLS (TLS 1.3 servers reject a client
    /// certificate only after the client finished its TLS handshake).
    Dist,
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn is_rustls(e: &io::Error) -> bool {
    rustls_error(e).is_some()
}

/// A TLS failure → what the operator should check.
fn tls_reason(e: &io::Error, host: &str, sends_cert: bool, phase: Phase) -> String {
    let Some(err) = rustls_error(e) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
                if phase == Phase::Tls =>
            {
                "the node closed the connection during the TLS handshake \
                 (is it started with -proto_dist inet_tls?)"
                    .to_owned()
            }
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => {
                "the node closed the TLS connection during the distribution handshake \
                 (did it refuse our certificate? is the cookie right?)"
                    .to_owned()
            }
            _ => format!("TLS I/O error: {e}"),
        };
    };
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(CertificateError::UnknownIssuer)
        | E::InvalidCertificate(CertificateError::BadSignature) => format!(
            "the node's certificate is not signed by our CA ({CA_FILE}): \
             deployex and the node use certificates from different CAs ({err})"
        ),
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the node's certificate is not valid for host {host:?}: it needs \
             subjectAltName DNS:{host} ({err})"
        ),
        E::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => format!("the node's certificate is expired or not yet valid ({err})"),
        E::InvalidCertificate(_) => format!("the node's certificate is rejected ({err})"),
        E::AlertReceived(
            AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure,
        ) if !sends_cert => {
            format!("the node requires a client certificate and we sent none (alert: {err})")
        }
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::DecryptError
            | AlertDescription::AccessDenied,
        ) => format!(
            "the node refused our certificate ({CERT_FILE} not signed by the CA the node \
             trusts? alert: {err})"
        ),
        E::AlertReceived(AlertDescription::HandshakeFailure) => format!(
            "the node refused the TLS handshake (no client certificate, or no common \
             cipher suite; {err})"
        ),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("the node does not speak TLS (started without -proto_dist inet_tls?) ({err})")
        }
        other => format!("TLS failed: {other}"),
    }
}

/// A stream that first yields `prefix[pos..]`, then reads from `inner`.
/// Writes go straight to `inner`.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_whole_only() {
        let mut buf = vec![0, 3, b'a', b'b'];
        assert_eq!(take_frame(&mut buf, 2), None);
        buf.extend_from_slice(b"c\0\0");
        assert_eq!(take_frame(&mut buf, 2), Some(b"abc".to_vec()));
        assert_eq!(buf, vec![0, 0]);
        assert_eq!(take_frame(&mut buf, 2), Some(vec![]));
        let mut four = vec![0, 0, 0, 1, b'a', 9];
        assert_eq!(take_frame(&mut four, 4), Some(b"a".to_vec()));
        assert_eq!(four, vec![9]);
    }

    #[tokio::test]
    async fn pump_reframes_and_keeps_what_follows_the_ack() {
        let (mut erl, pipe) = tokio::io::duplex(1024);
        let (mut peer, mut ours) = tokio::io::duplex(1024);
        let pumping = tokio::spawn(async move { pump(&mut ours, pipe).await.map_err(|_| ()) });
        erl.write_all(&[0, 2, b'N', 1]).await.unwrap();
        let mut got = [0u8; 6];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0, 0, 0, 2, b'N', 1]);
        // status, then ack, then a tick that belongs to the connection.
        peer.write_all(&[0, 0, 0, 3, b's', b'o', b'k', 0, 0, 0, 1, b'a', 0, 0, 0, 0])
            .await
            .unwrap();
        let leftover = pumping.await.unwrap().unwrap();
        assert_eq!(leftover, vec![0, 0, 0, 0]);
        let mut to_erl = Vec::new();
        erl.read_to_end(&mut to_erl).await.unwrap();
        assert_eq!(to_erl, vec![0, 3, b's', b'o', b'k', 0, 1, b'a']);
    }

    #[tokio::test]
    async fn prefixed_reads_prefix_first() {
        let (mut peer, inner) = tokio::io::duplex(64);
        let mut s = Prefixed {
            prefix: b"ab".to_vec(),
            pos: 0,
            inner,
        };
        peer.write_all(b"cd").await.unwrap();
        drop(peer);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcd");
    }
}
