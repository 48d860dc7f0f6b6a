//! TLS to PostgreSQL, on rustls (the same ring provider as the API's
//! listener). The URL says it as libpq does: `sslmode=require`,
//! `verify-ca` or `verify-full` connect only over TLS, and the server's
//! certificate is always verified, against `sslrootcert` (a PEM file of the
//! CA, as a managed database hands it out) or else the Mozilla roots, for
//! the host named in the URL. `sslmode=prefer` (the default) and `disable`
//! connect without TLS, which `check_transport` allows only to loopback, a
//! Unix socket, or a server the URL explicitly trusts (`disable`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, NoTls};
use tokio_rustls::rustls;

use crate::store::{Result, StoreError};

/// How to reach the server: its settings and, for `sslmode=require` and
/// above, the TLS client that verifies it.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Option<Tls>,
}

impl Target {
    /// Parses a PostgreSQL URL, taking out what tokio-postgres does not read
    /// itself (`sslrootcert`, the `verify-*` modes).
    pub fn parse(url: &str) -> Result<Target> {
        let invalid = |e: &dyn std::fmt::Display| {
            StoreError::Postgres(format!("invalid PostgreSQL URL: {e}"))
        };
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut kept = Vec::new();
        let mut root = None;
        let mut verify = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslrootcert" => {
                    root = url::form_urlencoded::parse(pair.as_bytes())
                        .next()
                        .map(|(_, path)| path.into_owned())
                        .filter(|path| !path.is_empty());
                }
                "sslmode" if matches!(value, "verify-ca" | "verify-full") => {
                    verify = true;
                    kept.push("sslmode=require".to_string());
                }
                _ => kept.push(pair.to_string()),
            }
        }
        let url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let config: tokio_postgres::Config = url.parse().map_err(|e| invalid(&e))?;
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => Some(Tls::new(root.as_deref())?),
            _ if verify || root.is_some() => {
                return Err(StoreError::Postgres(
                    "sslrootcert and sslmode=verify-* need TLS: drop sslmode=disable or prefer"
                        .into(),
                ));
            }
            _ => None,
        };
        Ok(Target { config, tls })
    }

    /// Connects, and drives the connection in a task of the current runtime
    /// until it ends; `on_end` hears why.
    pub async fn connect(
        &self,
        on_end: fn(tokio_postgres::Error),
    ) -> std::result::Result<Client, tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        on_end(e);
                    }
                });
                Ok(client)
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        on_end(e);
                    }
                });
                Ok(client)
            }
        }
    }

    /// A connection whose notifications (`LISTEN`) go to `to`; it ends
    /// when `to` is dropped, and `to` closes when the connection ends.
    pub async fn connect_listening(
        &self,
        to: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
    ) -> std::result::Result<Client, tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(forward(connection, to));
                Ok(client)
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                tokio::spawn(forward(connection, to));
                Ok(client)
            }
        }
    }
}

/// Drives `connection`, handing its notifications to `to`.
async fn forward<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    to: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
        match message {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                if to.send(n).is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!("PostgreSQL listening connection ended: {e}");
                return;
            }
            None => return,
        }
    }
}

/// A rustls client for PostgreSQL connections.
#[derive(Clone)]
pub struct Tls(Arc<rustls::ClientConfig>);

impl Tls {
    /// Trusting the CA in the PEM file `root`, or the Mozilla roots.
    fn new(root: Option<&str>) -> Result<Tls> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match root {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|iter| iter.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| StoreError::Postgres(format!("sslrootcert {path}: {e}")))?;
                if certs.is_empty() {
                    return Err(StoreError::Postgres(format!(
                        "sslrootcert {path}: no certificate in it"
                    )));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| StoreError::Postgres(format!("sslrootcert {path}: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Postgres(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls(Arc::new(config)))
    }
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> std::result::Result<Connect, Self::Error> {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
        Ok(Connect {
            config: self.0.clone(),
            name,
        })
    }
}

/// One connection's handshake, for the host it names.
pub struct Connect {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            connector.connect(self.name, stream).await.map(Stream)
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding; the certificate is verified.
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_spellings_are_read() {
        let t = Target::parse("postgres://u@db.example.com/s?sslmode=verify-full").expect("parses");
        assert!(t.tls.is_some());
        assert!(matches!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        ));
        let t = Target::parse("postgres://u@127.0.0.1/s").expect("parses");
        assert!(t.tls.is_none(), "prefer stays without TLS");
        let e = Target::parse("postgres://u@h/s?sslmode=disable&sslrootcert=%2Fca.pem")
            .err()
            .expect("refused");
        assert!(e.to_string().contains("need TLS"), "{e}");
        let e = Target::parse("postgres://u@h/s?sslmode=require&sslrootcert=%2Fnone.pem")
            .err()
            .expect("refused");
        assert!(e.to_string().contains("/none.pem"), "{e}");
    }
}
