//! Wiring: open the store, start the driver, serve the router, stop gracefully.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

use crate::api::{self, AppState, forward, forward::Peers};
use crate::clock;
use crate::cluster::{Cluster, Terms};
use crate::config::{ServerConfig, TlsFiles};
use crate::core::Tuning;
use crate::shell::{self, Handle, Options, Start};
use crate::store::{Backend, Fence, PgStore, Store, StoreError};

pub const DATA_FILE: &str = "sluice.redb";

/// How long a stopped server waits for the last user of its store to let go.
const STORE_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Running {
    addr: SocketAddr,
    tls: bool,
    /// Stops the driver: readiness turns false, no attempt starts, those in
    /// flight get the grace period.
    stop: watch::Sender<bool>,
    /// Closes the listener, once the driver has stopped.
    http_stop: watch::Sender<bool>,
    /// How long the listener waits for answers still being sent (a backup's
    /// stream, say) before it drops them.
    grace: std::time::Duration,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The driver (alone) or the node's supervisor (in a cluster).
    driver: tokio::task::JoinHandle<anyhow::Result<()>>,
    plugins: Arc<crate::plugin::Host>,
    cluster: Option<Arc<Cluster>>,
    /// Picks up replays that were running (it holds the store: stopped
    /// with the driver).
    resume: tokio::task::JoinHandle<()>,
    /// The store, to close it: `wait` waits until nothing else holds it and
    /// drops it last, on its own thread, so the file (or the connections)
    /// are free when it returns. A count of zero seen from a weak handle is
    /// not enough: the last holder may still be inside the store's drop.
    store: Arc<dyn Backend>,
}

impl Running {
    /// Components this server compiled since it started (uploads, and stored
    /// ones an older engine compiled); a restart compiles none.
    pub fn plugin_compilations(&self) -> u64 {
        self.plugins.compilations()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` or `https://`, and the address.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops taking requests, lets attempts in flight finish (up to the grace
    /// period), commits, and returns once the store is consistent and closed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after `shutdown`, or a fatal store error).
    /// The API answers until the driver has stopped (with `/readyz` at 503
    /// from the start of the stop); then the listener closes, and answers
    /// still being sent get the grace period before they are cut.
    pub async fn wait(self) -> anyhow::Result<()> {
        let result = self.driver.await.context("joining the driver")?;
        self.resume.abort();
        let _ = self.stop.send(true);
        let _ = self.http_stop.send(true);
        let mut http = self.http;
        let cut = match tokio::time::timeout(self.grace, &mut http).await {
            Ok(joined) => {
                joined.context("joining the HTTP server")??;
                false
            }
            Err(_) => {
                tracing::warn!("answers still being sent after the grace period are cut off");
                http.abort();
                true
            }
        };
        drop(self.plugins);
        // The listener's end does not wait for its connections' tasks to drop
        // what they hold (the router, and with it the store): after a clean
        // end, wait for them, within a bound, so that the file (or the
        // connections) are free when this returns. Cut answers hold it until
        // the runtime ends.
        let closing = crate::clock::instant();
        while !cut && Arc::strong_count(&self.store) > 1 {
            if closing.elapsed() > STORE_CLOSE_WAIT {
                tracing::warn!(
                    "the store is still held after the stop; it closes when its last user ends"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // The last holder closes it here, before `wait` returns.
        drop(self.store);
        result
    }

    /// This node's id in a cluster.
    pub fn node(&self) -> Option<String> {
        self.cluster.as_ref().map(|c| c.id().to_string())
    }
}

/// Waits `every`, or until the stop.
async fn pause(every: std::time::Duration, stop: &mut watch::Receiver<bool>) {
    let _ = tokio::time::timeout(every, async {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await;
}

/// Waits for a driver thread, off the runtime.
async fn join(driver: std::thread::JoinHandle<Result<(), StoreError>>) -> anyhow::Result<()> {
    match tokio::task::spawn_blocking(move || driver.join()).await {
        Ok(Ok(result)) => result.context("the scheduler stopped on a storage error"),
        Ok(Err(_)) => anyhow::bail!("the scheduler thread panicked"),
        Err(e) => Err(e).context("joining the driver"),
    }
}

/// How far ahead of its token and its due time a start is admitted on
/// PostgreSQL (`Tuning::lookahead`; 20 ms on redb).
const POSTGRES_LOOKAHEAD: std::time::Duration = std::time::Duration::from_millis(60);

/// Starts a server. With `tuning` the tests shrink memory windows.
pub async fn start(config: &ServerConfig, tuning: Option<Tuning>) -> anyhow::Result<Running> {
    config.check()?;
    // Certificates first: a bad file should stop the start before anything opens.
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let path = config.data_dir.join(DATA_FILE);
    let (store, postgres): (Arc<dyn Backend>, Option<Arc<PgStore>>) = match &config.store {
        None => (
            Arc::new(Store::open(&path).with_context(|| format!("opening {}", path.display()))?),
            None,
        ),
        // The URL may hold a password: errors name the store, not the URL.
        Some(url) => {
            let url = url.clone();
            let store = Arc::new(
                tokio::task::spawn_blocking(move || PgStore::open(&url))
                    .await?
                    .context("opening the PostgreSQL store")?,
            );
            (store.clone(), Some(store))
        }
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let cluster = match &postgres {
        None => None,
        Some(store) => {
            let (settings, schema) = store.settings();
            let advertised = match &config.advertise {
                Some(url) => url.clone(),
                None => format!("{scheme}://{addr}"),
            };
            Some(
                Cluster::join(settings, schema, advertised, Terms::default())
                    .await
                    .context("joining the cluster")?,
            )
        }
    };
    let (stop, stop_rx) = watch::channel(false);
    let (http_stop, http_stop_rx) = watch::channel(false);
    let plugins = crate::plugin::Host::new(
        store.clone(),
        config.plugin_instances,
        config.plugin_memory_max,
    )
    .context("starting the plugin runtime")?;
    // A commit to PostgreSQL takes longer than a local fsync, and longer
    // still in its tail: starts look further ahead there, so a task is on
    // record by its due time all the same.
    let tuning = tuning.unwrap_or_else(|| match postgres {
        Some(_) => Tuning {
            lookahead: POSTGRES_LOOKAHEAD,
            ..Tuning::default()
        },
        None => Tuning::default(),
    });
    let options = Options {
        tuning,
        grace: config.grace,
        signing_secrets: config.signing_secrets.clone(),
        outbound_hosts: config.outbound_hosts.clone(),
        retention: config.retention,
        max_descendants: config.max_descendants,
        plugins: Some(plugins.clone()),
        next_reader: api::wire::parse_next,
        deadline: None,
        start: Start::Restart,
        units: crate::core::units::Units::ALL,
    };
    let (handle, link) = Handle::linked();
    let driver = match (&cluster, postgres) {
        (Some(cluster), Some(postgres)) => {
            let pair = (handle.clone(), link);
            tokio::spawn(supervise(cluster.clone(), postgres, options, pair, stop_rx))
        }
        _ => tokio::spawn(join(shell::spawn_linked(
            store.clone(),
            options,
            stop_rx,
            &link,
        )?)),
    };
    api::admin::clear_scratch(&config.data_dir);
    let peers = cluster
        .clone()
        .map(|cluster| Peers::new(cluster, store.clone()))
        .transpose()
        .context("the client that forwards to the owners of the gates")?;
    let held_store = store.clone();
    let state = AppState {
        store,
        shell: handle,
        plugins: plugins.clone(),
        scratch: config.data_dir.clone(),
        backup: Arc::default(),
        cluster: cluster.clone(),
        replays: Arc::default(),
    };
    let resume = tokio::spawn(api::replay::resume(state.clone()));
    let app = api::router(state)
        .layer(axum::middleware::from_fn_with_state(peers, forward::layer))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(api::auth::Guard::new(config.tokens.clone())),
            api::auth::layer,
        ))
        .layer(axum::middleware::from_fn(api::linger::layer))
        .layer(axum::middleware::from_fn(api::request_id::layer));
    let mut http_stopping = http_stop_rx;
    let stopped = async move {
        let _ = http_stopping.wait_for(|stop| *stop).await;
    };
    let http = match tls.clone() {
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }),
        Some(acceptor) => tokio::spawn(async move {
            axum::serve(TlsListener::new(listener, acceptor, addr), app)
                .with_graceful_shutdown(stopped)
                .await
        }),
    };
    tracing::info!(%addr, tls = tls.is_some(), auth = !config.tokens.is_empty(), data = %path.display(), "sluice listening");
    Ok(Running {
        addr,
        tls: tls.is_some(),
        stop,
        http_stop,
        grace: config.grace,
        http,
        driver,
        plugins,
        cluster,
        resume,
        store: held_store,
    })
}

/// A cluster node's life: one engine, which adopts the units this node
/// takes and drops those it hands over (`Cluster::balance`, every beat),
/// and a new engine, under the node's raised fence, whenever the last was
/// fenced (a unit lapsed and was taken over) or stopped on an error
/// (PostgreSQL went away); it takes up what the node still holds. On stop
/// the node hands every unit over, drained within the grace period, then
/// stops its engine. The heartbeat runs beside it throughout.
async fn supervise(
    cluster: Arc<Cluster>,
    store: Arc<PgStore>,
    options: Options,
    (handle, link): (Handle, shell::Link),
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let every = cluster.terms().renew_every;
    let beating = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = cluster.beat().await {
                    tracing::warn!(error = %e, "cluster heartbeat failed");
                }
                tokio::time::sleep(every).await;
            }
        })
    };
    // A handover by any node wakes the balance: the units it let go are
    // taken at once, not at the next beat.
    let (heard, mut handovers) = watch::channel(0);
    let hearing = tokio::spawn(cluster.clone().hear_handovers(heard));
    let stopped = |stop: &watch::Receiver<bool>| *stop.borrow();
    let drain = options.grace;
    let mut result = Ok(());
    'engines: while !stopped(&stop) {
        // A renewal first: it moves the deadline the engine runs under (a
        // new engine's would not be valid yet), and the units just renewed
        // cannot be taken over before it passes, so the set read below is
        // the engine's to run under the fence read below.
        match cluster.renew_units().await {
            Ok(renewal) if renewal.lost.is_empty() => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "could not renew this node's units");
                pause(every, &mut stop).await;
                continue;
            }
        }
        let generation = match cluster.node_fence().await {
            Ok(generation) => generation,
            Err(e) => {
                tracing::warn!(error = %e, "could not read this node's fence");
                pause(every, &mut stop).await;
                continue;
            }
        };
        store.set_fence(Some(Fence::Node {
            node: cluster.id().to_string(),
            generation,
        }));
        let (units, deadline) = cluster.units_held();
        let engine_options = Options {
            units,
            deadline: Some(deadline),
            start: Start::TAKEOVER,
            ..options.clone()
        };
        let Some(Driver {
            stop: engine_stop,
            mut running,
        }) = Driver::spawn(&store, engine_options, &link).await
        else {
            pause(every, &mut stop).await;
            continue;
        };
        // The next beat; a handover heard meanwhile runs one that only
        // takes (the beats' own pace, one busy unit given a beat, stays).
        let mut due = clock::instant();
        loop {
            // Each step also watches the engine: an order to an engine
            // that has stopped would wait for the next one, which only
            // this loop starts.
            tokio::select! {
                ended = &mut running => {
                    // PostgreSQL went away, or the engine was fenced: a new
                    // one takes up what this node still holds.
                    engine_ended(ended, &link);
                    pause(every, &mut stop).await;
                    continue 'engines;
                }
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    tokio::select! {
                        left = cluster.leave_units(&handle, drain) => {
                            if let Err(e) = left {
                                tracing::warn!(error = format!("{e:#}"), "could not hand the units over; they move when their leases lapse");
                            }
                            let _ = engine_stop.send(true);
                            result = running.await;
                        }
                        ended = &mut running => {
                            link.refuse_waiting();
                            result = ended;
                        }
                    }
                    break 'engines;
                }
                regular = next_beat(due, &mut handovers) => {
                    if regular {
                        due = clock::instant() + every;
                    }
                    let beat = tokio::select! {
                        beat = cluster.balance(&handle, drain, regular) => beat,
                        ended = &mut running => {
                            // What the beat did not finish, the next engine
                            // takes up from what the node holds.
                            engine_ended(ended, &link);
                            continue 'engines;
                        }
                    };
                    match beat {
                        Ok(beat) if !beat.lost.is_empty() => {
                            // Fenced: it sends nothing more, and its commits
                            // are refused.
                            let _ = engine_stop.send(true);
                            let _ = running.await;
                            link.refuse_waiting();
                            continue 'engines;
                        }
                        Ok(beat) if beat.more => due = due.min(clock::instant() + BUSY_BEAT),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = format!("{e:#}"), "a beat of the balance failed"),
                    }
                }
            }
        }
    }
    beating.abort();
    hearing.abort();
    if let Err(e) = cluster.leave().await {
        tracing::warn!(error = %e, "could not leave the list of nodes");
    }
    result
}

/// Waits until `due` (`true`), or less if a node hands units over
/// meanwhile (`false`).
async fn next_beat(due: std::time::Instant, handovers: &mut watch::Receiver<u64>) -> bool {
    let due = tokio::time::Instant::from_std(due);
    tokio::select! {
        () = tokio::time::sleep_until(due) => true,
        changed = handovers.changed() => {
            if changed.is_err() {
                // No one listens any more: the beats alone.
                tokio::time::sleep_until(due).await;
            }
            changed.is_err()
        }
    }
}

/// An engine that stopped by itself: logged, and what waits for it is
/// answered "shutting down".
fn engine_ended(ended: anyhow::Result<()>, link: &shell::Link) {
    if let Err(e) = ended {
        tracing::warn!(error = format!("{e:#}"), "the engine stopped");
    }
    link.refuse_waiting();
}

/// The next beat's wait when the last took as many units as a beat takes.
const BUSY_BEAT: std::time::Duration = std::time::Duration::from_millis(100);

/// An engine of a cluster node, on its thread: its stop and its end.
struct Driver {
    stop: watch::Sender<bool>,
    running: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
}

impl Driver {
    /// Starts an engine on `store` serving `link`; `None` (logged) if it
    /// did not start.
    async fn spawn(store: &Arc<PgStore>, options: Options, link: &shell::Link) -> Option<Driver> {
        let (stop, stop_rx) = watch::channel(false);
        let spawned = {
            let (store, link): (Arc<dyn Backend>, _) = (store.clone(), link.clone());
            tokio::task::spawn_blocking(move || shell::spawn_linked(store, options, stop_rx, &link))
                .await
        };
        let spawned = spawned.map_err(|e| e.to_string());
        match spawned.and_then(|started| started.map_err(|e| e.to_string())) {
            Ok(thread) => Some(Driver {
                stop,
                running: Box::pin(join(thread)),
            }),
            Err(error) => {
                tracing::warn!(%error, "the engine did not start");
                None
            }
        }
    }
}

/// Loads the PEM certificate chain and key into a rustls acceptor (ring, TLS
/// 1.2 and 1.3, HTTP/1.1 over ALPN).
fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading TLS certificate {}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate found in {}", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading TLS key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS key does not fit the certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A listener for `axum::serve` that hands over connections once their TLS
/// handshake is done. Handshakes run in tasks of their own, so a slow client
/// holds up no one else.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    fn new(listener: TcpListener, acceptor: TlsAcceptor, addr: SocketAddr) -> TlsListener {
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, go on.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task has gone (it only stops when we do).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
