//! TLS on the server's one port (rustls, ring): gRPC, gRPC-web, the web UI,
//! webhooks, git smart HTTP and artifacts all ride it.
//!
//! - The certificate chain and key are PEM files, **reloaded** on SIGHUP and
//!   when either file changes (checked every 2 s): new handshakes get the
//!   new certificate, open connections (runners' streams) keep theirs.
//!   A file that fails to load keeps the old certificate, with an error in
//!   the log.
//! - With a client CA, clients may present a certificate (mutual TLS); it
//!   is verified against the CA, and `RunnerAgent` then requires one from
//!   runners ([`ClientCerts`]). Browsers and the CLI connect without one.
//! - ALPN offers h2 and http/1.1 (gRPC-web from browsers).
//! - Handshakes run concurrently, each with a deadline: a slow or silent
//!   client cannot hold up others.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// Where the server's TLS material is.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM), the server's certificate first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA of client certificates (PEM); `None`: no mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ring, as tonic's clients use (aws-lc-rs, rustls's default with
/// post-quantum key exchange, needs a C toolchain and CMake to build).
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS configuration of a client of this server's (to the database,
/// to the leading replica): it verifies the peer's chain against the
/// system's roots (when `system`) and the certificates of `ca_file` (PEM;
/// `flag` names it in errors), and its name against the host it dials.
pub fn client_config(ca_file: Option<&Path>, flag: &str, system: bool) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(file) = ca_file {
        let shown = file.display();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .map_err(|e| format!("cannot read {flag} {shown}: {e}"))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{flag} {shown} is not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{flag} {shown} holds no PEM certificate"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("{flag} {shown} holds an unusable certificate: {e}"))?;
        }
    }
    if system {
        let native = rustls_native_certs::load_native_certs();
        let (added, _unusable) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            let errors: Vec<String> = native.errors.iter().map(ToString::to_string).collect();
            tracing::warn!(errors = %errors.join("; "), "no system root certificate: only {flag} is trusted");
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Loads a chain and key as a signing key.
fn load(files: &TlsFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    use anyhow::Context;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("cannot read {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", files.cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", files.cert.display());
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("{} is not a PEM private key", files.key.display()))?;
    let key = CertifiedKey::from_der(certs, key, &provider())
        .with_context(|| format!("{} does not go with {}", files.key.display(), files.cert.display()))?;
    Ok(Arc::new(key))
}

/// The certificate the server presents now; replaced by reloads.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner())))
    }
}

/// The server side of TLS: the acceptor and what it reloads.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    files: TlsFiles,
    /// Whether clients may present certificates (mutual TLS).
    pub mutual: bool,
}

impl Tls {
    /// Loads `files`; fails naming the file that is wrong.
    pub fn new(files: TlsFiles) -> anyhow::Result<Self> {
        use anyhow::Context;
        let current = Arc::new(Current(RwLock::new(load(&files)?)));
        let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in
                    CertificateDer::pem_file_iter(ca).with_context(|| format!("cannot read {}", ca.display()))?
                {
                    roots.add(cert.with_context(|| format!("{} is not a PEM certificate", ca.display()))?)?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .allow_unauthenticated()
                    .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mutual = files.client_ca.is_some();
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(config)), current, files, mutual })
    }

    /// Loads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let key = load(&self.files)?;
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Reloads on SIGHUP and when a file's modification time changes.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let stamps = |t: &Tls| (stamp(&t.files.cert), stamp(&t.files.key));
            let mut seen: (Option<SystemTime>, Option<SystemTime>) = stamps(&this);
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                let by_signal = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                let now = stamps(&this);
                if by_signal || now != seen {
                    seen = now;
                    if let Err(e) = this.reload() {
                        tracing::error!(error = %format!("{e:#}"), "cannot reload the TLS certificate: keeping the old one");
                    }
                }
            }
        });
    }

    /// The server's side of a handshake on `tcp` from `peer`, with a
    /// deadline; `None` (logged) when it fails.
    pub async fn handshake(&self, tcp: TcpStream, peer: std::net::SocketAddr) -> Option<TlsStream<TcpStream>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }

    /// TLS connections accepted on `listener`, handshakes done (each with a
    /// deadline, concurrently), as a stream for the HTTP server.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (this, ready) = (Arc::clone(&this), tx.clone());
                tokio::spawn(async move {
                    if let Some(tls) = this.handshake(tcp, peer).await {
                        let _ = ready.send(Ok(tls)).await;
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Whether the server asks runners for client certificates (mutual TLS),
/// kept in the request extensions' state for `RunnerAgent`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCerts {
    /// Runners must present a certificate the client CA signed.
    pub required_for_runners: bool,
}

/// Whether `req` came with a verified client certificate.
pub fn has_client_cert<T>(req: &tonic::Request<T>) -> bool {
    req.peer_certs().is_some_and(|c| !c.is_empty())
}
