//! Wiring: open the store, start the driver, serve the router, stop gracefully.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::config::ServerConfig;
use crate::core::Tuning;
use crate::shell::{self, Options};
use crate::store::Store;

pub const DATA_FILE: &str = "sluice.redb";

pub struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    driver: std::thread::JoinHandle<Result<(), crate::store::StoreError>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking requests, lets attempts in flight finish (up to the grace
    /// period), commits, and returns once the store is consistent and closed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after `shutdown`, or a fatal store error).
    pub async fn wait(self) -> anyhow::Result<()> {
        let driver = self.driver;
        let result = tokio::task::spawn_blocking(move || driver.join())
            .await
            .context("joining the driver")?;
        let _ = self.stop.send(true);
        self.http.await.context("joining the HTTP server")??;
        match result {
            Ok(r) => r.context("the scheduler stopped on a storage error"),
            Err(_) => anyhow::bail!("the scheduler thread panicked"),
        }
    }
}

/// Starts a server. With `tuning` the tests shrink memory windows.
pub async fn start(config: &ServerConfig, tuning: Option<Tuning>) -> anyhow::Result<Running> {
    config.check()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let path = config.data_dir.join(DATA_FILE);
    let store =
        Arc::new(Store::open(&path).with_context(|| format!("opening {}", path.display()))?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let options = Options {
        tuning: tuning.unwrap_or_default(),
        grace: config.grace,
        signing_secrets: config.signing_secrets.clone(),
    };
    let (handle, driver) = shell::spawn(store.clone(), options, stop_rx.clone())?;
    let app = api::router(AppState {
        store,
        shell: handle,
    });
    let mut http_stop = stop_rx;
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            })
            .await
    });
    tracing::info!(%addr, data = %path.display(), "sluice listening");
    Ok(Running {
        addr,
        stop,
        http,
        driver,
    })
}
