//! What the workloads run against: a loopback sink that records arrivals, a
//! release server started as a child process with its own data dir, and the
//! statistics (windows, rates, percentiles) the figures come from.

use super::*;

/// One arrival at the sink.
#[derive(Clone, Debug)]
pub(super) struct Arrival {
    pub(super) at: Instant,
    pub(super) wall_ms: u64,
    pub(super) path: String,
    pub(super) task: String,
    pub(super) scheduled_ms: Option<u64>,
}

#[derive(Default)]
pub(super) struct SinkState {
    pub(super) arrivals: Mutex<Vec<Arrival>>,
    /// Paths answering 503 until this instant.
    pub(super) down_until: Mutex<BTreeMap<String, Instant>>,
    /// Paths that enforce a quota and state it.
    pub(super) quotas: Mutex<BTreeMap<String, Quota>>,
    /// Paths under `/knee`: requests each holds now, and the 500s it gave.
    pub(super) knees: Mutex<BTreeMap<String, (u32, u64)>>,
}

/// A knee endpoint's answer to a request that arrives while it holds `held`
/// (this one included): 20 ms up to 40, 40 ms (p50 doubled) up to 60, and a
/// 500 beyond.
fn knee(held: u32) -> Option<Duration> {
    match held {
        0..=40 => Some(Duration::from_millis(20)),
        41..=60 => Some(Duration::from_millis(40)),
        _ => None,
    }
}

/// Counts a request out of a knee endpoint however it ends.
struct Held(Arc<SinkState>, String);

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut knees) = self.0.knees.lock()
            && let Some(k) = knees.get_mut(&self.1)
        {
            k.0 = k.0.saturating_sub(1);
        }
    }
}

/// An endpoint's quota: `limit` requests per fixed window of the wall clock
/// (windows start at multiples of `window_ms` since the Unix epoch), stated
/// in every answer as the IETF draft's `RateLimit` and `RateLimit-Policy`;
/// past it, 429.
#[derive(Default)]
pub(super) struct Quota {
    pub(super) limit: u64,
    pub(super) window_ms: u64,
    pub(super) counts: BTreeMap<u64, u64>,
    pub(super) refused: u64,
}

impl Quota {
    pub(super) fn new(limit: u64, window: Duration) -> Quota {
        Quota {
            limit,
            window_ms: window.as_millis() as u64,
            ..Quota::default()
        }
    }

    /// Counts a request at `wall_ms`: whether it is within the quota, and
    /// the headers that state what is left.
    fn arrive(&mut self, wall_ms: u64) -> (bool, [(&'static str, String); 2]) {
        let window = wall_ms / self.window_ms;
        let count = self.counts.entry(window).or_default();
        *count += 1;
        let allowed = *count <= self.limit;
        if !allowed {
            self.refused += 1;
        }
        let left = self.limit.saturating_sub(*count);
        let reset_s = ((window + 1) * self.window_ms - wall_ms).div_ceil(1_000);
        let headers = [
            ("ratelimit", format!("\"q\";r={left};t={reset_s}")),
            (
                "ratelimit-policy",
                format!("\"q\";q={};w={}", self.limit, self.window_ms / 1_000),
            ),
        ];
        (allowed, headers)
    }
}

pub(super) async fn sink_handler(
    State(state): State<Arc<SinkState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap) {
    let at = clock::instant();
    let wall_ms = clock::now().as_ms();
    let path = uri.path().to_string();
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let scheduled_ms = get("sluice-scheduled-at")
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond() as u64);
    let slow = path.starts_with("/slow");
    let down = state
        .down_until
        .lock()
        .map(|d| d.get(&path).is_some_and(|u| at < *u))
        .unwrap_or(false);
    if let Ok(mut a) = state.arrivals.lock() {
        a.push(Arrival {
            at,
            wall_ms,
            path,
            task: get("sluice-task-id"),
            scheduled_ms,
        });
    }
    if slow {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    if uri.path().starts_with("/knee") {
        let path = uri.path().to_string();
        let held = state.knees.lock().map_or(0, |mut k| {
            let k = k.entry(path.clone()).or_default();
            k.0 += 1;
            k.0
        });
        let _held = Held(state.clone(), path.clone());
        match knee(held) {
            Some(delay) => tokio::time::sleep(delay).await,
            None => {
                if let Ok(mut k) = state.knees.lock()
                    && let Some(k) = k.get_mut(&path)
                {
                    k.1 += 1;
                }
                return (StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new());
            }
        }
    }
    let mut answer = HeaderMap::new();
    let quota = state
        .quotas
        .lock()
        .ok()
        .and_then(|mut q| q.get_mut(uri.path()).map(|q| q.arrive(wall_ms)));
    if let Some((allowed, stated)) = quota {
        for (name, value) in stated {
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                answer.insert(name, value);
            }
        }
        if !allowed {
            return (StatusCode::TOO_MANY_REQUESTS, answer);
        }
    }
    if down {
        (StatusCode::SERVICE_UNAVAILABLE, answer)
    } else {
        (StatusCode::OK, answer)
    }
}

pub(super) struct Sink {
    pub(super) state: Arc<SinkState>,
    pub(super) addr: SocketAddr,
}

impl Sink {
    pub(super) async fn start() -> anyhow::Result<Sink> {
        let state = Arc::new(SinkState::default());
        let app = axum::Router::new()
            .fallback(sink_handler)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink { state, addr })
    }

    pub(super) fn arrivals(&self, path: &str) -> Vec<Arrival> {
        self.state
            .arrivals
            .lock()
            .map(|a| a.iter().filter(|x| x.path == path).cloned().collect())
            .unwrap_or_default()
    }

    pub(super) async fn wait(&self, path: &str, n: usize, within: Duration) -> Vec<Arrival> {
        let start = clock::instant();
        loop {
            // Counting is cheap; the distinct check (and the copy) runs only once
            // enough requests arrived, so the sink does not compete with the server.
            let arrived = self.state.arrivals.lock().map_or(0, |a| a.len());
            if arrived >= n || start.elapsed() > within {
                let got = self.arrivals(path);
                let distinct = got
                    .iter()
                    .map(|a| a.task.as_str())
                    .collect::<HashSet<_>>()
                    .len();
                if distinct >= n || start.elapsed() > within {
                    return got;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(super) struct Server {
    pub(super) child: Child,
    pub(super) api: Client,
    pub(super) port: u16,
    pub(super) dir: PathBuf,
}

impl Server {
    pub(super) async fn spawn(
        dir: &Path,
        port: u16,
        store: Option<&str>,
    ) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("finding the sluice binary")?;
        let mut command = Command::new(exe);
        match store {
            Some(url) => command.env("SLUICE_STORE", url),
            None => command.env_remove("SLUICE_STORE"),
        };
        let child = command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir)
            // The servers' own log, `warn` unless `SLUICE_BENCH_LOG` says
            // otherwise (to see what a workload's servers did).
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the server")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?;
        let server = Server {
            child,
            api: Client::with_http(&format!("http://127.0.0.1:{port}"), http),
            port,
            dir: dir.to_path_buf(),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    pub(super) async fn wait_ready(&self) -> anyhow::Result<Duration> {
        let start = clock::instant();
        while !self.api.ready().await {
            if start.elapsed() > Duration::from_secs(120) {
                bail!("server not ready after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(start.elapsed())
    }

    pub(super) async fn gate(&self, name: &str, body: Value) -> anyhow::Result<()> {
        self.api.put_gate(name, &body).await?;
        Ok(())
    }

    /// Creates tasks through the batch API, `parallel` batches in flight.
    pub(super) async fn create(
        &self,
        tasks: Vec<Value>,
        batch: usize,
        parallel: usize,
    ) -> anyhow::Result<Duration> {
        let start = clock::instant();
        let chunks: Vec<Vec<Value>> = tasks.chunks(batch).map(|c| c.to_vec()).collect();
        let mut queue = chunks.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < parallel {
                let Some(chunk) = queue.next() else { break };
                let api = self.api.clone();
                running.spawn(async move { api.create_tasks(&chunk).await.map(|_| ()) });
            }
            match running.join_next().await {
                Some(r) => r??,
                None => break,
            }
        }
        Ok(start.elapsed())
    }

    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.api.get(path).await?)
    }

    /// Uploads a plugin component (`PUT /v1/plugins/{name}/{version}`).
    pub(super) async fn upload_plugin(
        &self,
        name: &str,
        version: &str,
        wasm: Vec<u8>,
    ) -> anyhow::Result<()> {
        self.api.upload_plugin(name, version, wasm).await?;
        Ok(())
    }

    /// CPU time the server process has used (user and system), from /proc.
    pub(super) fn cpu_s(&self) -> f64 {
        cpu_of(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Starts counting the server's CPU: the closure, given how many tasks
    /// were done since, says the µs per task of the whole process (its
    /// creates and deliveries) and of the engine thread.
    pub(super) fn cpu_per_task(&self) -> impl Fn(usize) -> (f64, f64) + '_ {
        let (process, driver) = (self.cpu_s(), self.driver_cpu_s());
        move |tasks| {
            let per_task = |s: f64| s * 1e6 / tasks.max(1) as f64;
            (
                per_task(self.cpu_s() - process),
                per_task(self.driver_cpu_s() - driver),
            )
        }
    }

    /// CPU time the server's engine thread (`sluice-driver`) has used: it
    /// decides and writes every turn, so its share bounds what one gate
    /// can do. Zero where /proc does not tell.
    pub(super) fn driver_cpu_s(&self) -> f64 {
        let tasks = format!("/proc/{}/task", self.child.id());
        let Ok(threads) = std::fs::read_dir(&tasks) else {
            return 0.0;
        };
        threads
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == "sluice-driver")
            })
            .map(|t| cpu_of(&t.path().join("stat").to_string_lossy()))
            .sum()
    }

    pub(super) fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// Takes a backup (`POST /v1/admin/backup`), reading it to the end and
    /// keeping nothing; returns how long it took, its size, and the server's
    /// peak RSS seen while it ran.
    pub(super) async fn backup(&self) -> anyhow::Result<(Duration, u64, f64)> {
        let start = clock::instant();
        let mut r = self
            .api
            .request(reqwest::Method::POST, "/v1/admin/backup")
            .timeout(Duration::from_secs(3_600))
            .send()
            .await?;
        let mut peak = self.rss_mb();
        if !r.status().is_success() {
            bail!("backup: {}", r.status());
        }
        peak = peak.max(self.rss_mb());
        let mut bytes = 0u64;
        while let Some(chunk) = r.chunk().await? {
            bytes += chunk.len() as u64;
        }
        Ok((start.elapsed(), bytes, peak))
    }

    pub(super) fn file_mb(&self) -> f64 {
        std::fs::metadata(self.dir.join(crate::server::DATA_FILE))
            .map_or(0.0, |m| m.len() as f64 / 1e6)
    }

    /// Stops the server as a deploy does (`SIGTERM`: a cluster node hands
    /// its gates over drained) and waits until it has ended.
    pub(super) async fn terminate(&mut self) -> anyhow::Result<()> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("sending SIGTERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.child.id());
        }
        let start = clock::instant();
        while self.child.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(120) {
                bail!("the server did not end within 120 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(super) fn task(gate: &str, url: &str, due_ms: Option<u64>) -> Value {
    let mut t = json!({ "gate": gate, "webhook": { "url": url, "body": { "n": 1 } } });
    if let Some(ms) = due_ms
        && let Ok(ts) = jiff::Timestamp::from_millisecond(ms as i64)
    {
        t["run_at"] = json!(ts.to_string());
    }
    t
}

pub(super) fn max_in_window(times: &[Instant], width: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let (mut best, mut start) = (0, 0);
    for end in 0..sorted.len() {
        while sorted[end].duration_since(sorted[start]) >= width {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Arrivals per second over their span, not counting the initial burst.
pub(super) fn rate_after_burst(times: &[Instant], burst: f64) -> f64 {
    let span = times
        .iter()
        .max()
        .zip(times.iter().min())
        .map_or(1.0, |(a, b)| a.duration_since(*b).as_secs_f64());
    (times.len() as f64 - burst) / span.max(1e-3)
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A component built by `scripts/build-plugins`, from `target/plugins/` under
/// the working directory or beside the binary's own target directory
/// (`target/release/sluice` → `target/plugins/`).
pub(super) fn plugin_component(name: &str) -> anyhow::Result<Vec<u8>> {
    let file = format!("{name}.wasm");
    let mut places = vec![Path::new("target/plugins").join(&file)];
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe.parent().and_then(Path::parent)
    {
        places.push(target.join("plugins").join(&file));
    }
    for place in &places {
        if let Ok(wasm) = std::fs::read(place) {
            return Ok(wasm);
        }
    }
    bail!(
        "W6 needs the {name} plugin, target/plugins/{file}: build it with scripts/build-plugins \
         (looked for {})",
        places
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// What one plugin attempt costs by itself, in process: `attempts` no-op
/// attempts one after another through `Host::run`, the path the server takes
/// (a pool slot, a fresh `Store`, instantiation from the pre-instantiated
/// component, the call, the drop), on a host over an in-memory store. Returns
/// the seconds its compile took and the microseconds of each attempt, after
/// a warm-up that is not counted.
pub(super) async fn plugin_attempts(
    wasm: Vec<u8>,
    attempts: usize,
    within: Duration,
) -> anyhow::Result<(f64, Vec<f64>)> {
    use crate::attempt::{Action, Plan, PluginCall};
    use crate::core::{GateId, Outcome, TaskId};
    use crate::dispatch::Dispatcher;

    let store = Arc::new(crate::store::Store::in_memory()?);
    let host = crate::plugin::Host::new(
        store,
        crate::plugin::DEFAULT_INSTANCES,
        crate::plugin::DEFAULT_MEMORY_MIB,
    )?;
    let compiler = host.clone();
    let compiling = clock::instant();
    let compiled = tokio::task::spawn_blocking(move || compiler.compile(&wasm)).await??;
    let compile_s = compiling.elapsed().as_secs_f64();
    host.install(&crate::store::plugin_key("noop", "0.1.0"), &compiled, None);
    let dispatcher = Dispatcher::new(Vec::new())?;
    // The no-op never asks the gate for a permit; the receiver only keeps the
    // channel open, as the driver does.
    let (permits, _permits_rx) = tokio::sync::mpsc::unbounded_channel();
    let plan = |n: u64| Plan {
        task: TaskId(n),
        attempt: 1,
        gate: "w6".into(),
        gate_id: GateId(1),
        action: Action::Plugin(PluginCall {
            name: "noop".into(),
            version: "0.1.0".into(),
            input: "{}".into(),
            sha256: None,
        }),
        timeout: Duration::from_secs(30),
        scheduled_at: clock::now(),
        release_at: clock::now(),
        schedule: None,
        completion_token: String::new(),
        signing_keys: Vec::new(),
        idempotency_key: TaskId(n).to_string(),
        allowed_hosts: Vec::new(),
    };
    let warm_up = (attempts / 10).clamp(10, 1_000);
    let mut micros = Vec::with_capacity(attempts);
    let deadline = clock::instant() + within;
    for n in 0..(warm_up + attempts) as u64 {
        if clock::instant() > deadline {
            break;
        }
        let (plan, dispatcher, permits) = (plan(n + 1), dispatcher.clone(), permits.clone());
        let start = clock::instant();
        let report = host.clone().run(plan, dispatcher, permits).await;
        let took = start.elapsed();
        if report.outcome != Outcome::Succeeded {
            bail!(
                "the noop plugin did not succeed: {:?} {}",
                report.outcome,
                report.error.unwrap_or_default()
            );
        }
        if n >= warm_up as u64 {
            micros.push(took.as_secs_f64() * 1e6);
        }
    }
    Ok((compile_s, micros))
}

/// A gate with no effective limit.
pub(super) fn unlimited(sink: &Sink) -> Value {
    json!({
        "rate": 1_000_000, "burst": 1_000_000, "concurrency": 2_000,
        "allowed_hosts": [sink.addr.to_string()], "recovery": { "start": 1.0 }, "circuit": null,
    })
}

/// Another process's use of the disk, as on a shared machine: 100 MB
/// written and synced, removed, half a second's pause, over and over (at
/// most 2,000 times) until stopped. A commit that syncs meanwhile can wait
/// behind it. A probe beside it syncs 4 KiB every 2 ms, as a small commit
/// does, and its times say how long such a commit waited.
pub(super) struct DiskNeighbour {
    stop: Arc<std::sync::atomic::AtomicBool>,
    writer: std::thread::JoinHandle<u64>,
    probe: std::thread::JoinHandle<Vec<f64>>,
}

impl DiskNeighbour {
    pub(super) fn start(dir: &Path) -> anyhow::Result<DiskNeighbour> {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        std::fs::create_dir_all(dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (file, done) = (dir.join("neighbour"), stop.clone());
        let writer = std::thread::spawn(move || {
            let chunk = vec![0u8; 1 << 20];
            let mut rounds = 0;
            while rounds < 2_000 && !done.load(Ordering::Relaxed) {
                let written = std::fs::File::create(&file).and_then(|mut f| {
                    for _ in 0..100 {
                        f.write_all(&chunk)?;
                    }
                    f.sync_all()
                });
                let _ = std::fs::remove_file(&file);
                if written.is_err() {
                    break;
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            rounds
        });
        let (file, done) = (dir.join("probe"), stop.clone());
        let probe = std::thread::spawn(move || {
            let mut times = Vec::new();
            let Ok(mut f) = std::fs::File::create(&file) else {
                return times;
            };
            while times.len() < 1_000_000 && !done.load(Ordering::Relaxed) {
                let began = clock::instant();
                if f.write_all(&[0u8; 4096])
                    .and_then(|()| f.sync_data())
                    .is_err()
                {
                    break;
                }
                times.push(began.elapsed().as_secs_f64() * 1_000.0);
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = std::fs::remove_file(&file);
            times
        });
        Ok(DiskNeighbour {
            stop,
            writer,
            probe,
        })
    }

    /// Stops it: how many rounds it wrote, and the probe's sync times (ms).
    pub(super) fn stop(self) -> Value {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = self.writer.join().unwrap_or(0);
        let mut times = self.probe.join().unwrap_or_default();
        times.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let i = ((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1));
            times.get(i).copied().unwrap_or(0.0)
        };
        json!({
            "rounds": rounds,
            "syncs": times.len(),
            "sync_p50_ms": at(0.5),
            "sync_p99_ms": at(0.99),
            "sync_max_ms": times.last().copied().unwrap_or(0.0),
            "syncs_over_50ms": times.iter().filter(|&&t| t > 50.0).count(),
        })
    }
}

/// User and system CPU seconds in a `/proc/…/stat` file; zero if unreadable.
fn cpu_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ")".
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    ticks as f64 / 100.0
}
