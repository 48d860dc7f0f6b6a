//! The wasmtime side of plugins: engine, linker, compile and cache, attempts.
//!
//! One file for one wasmtime `Engine` and everything configured on it (pool,
//! epochs, limits, the linker's grants): the sandbox is reviewed here as a
//! whole. The outgoing HTTP hook is `host/http.rs`.

mod http;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::attempt::{Action, Plan, Report};
use crate::clock;
use crate::core::Outcome;
use crate::dispatch::Dispatcher;
use crate::store::{Backend, LogRecord, LogSource};

use super::{PermitMessage, PluginError, audit};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sluice:task/task",
        exports: { default: async },
        with: {
            "wasi": wasmtime_wasi::p2::bindings,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });
}

use bindings::exports::sluice::task::handler;
use bindings::sluice::task::log;

/// Bytes of each memory and table slot kept resident between attempts.
const KEEP_RESIDENT: usize = 2 << 20;
/// Core module instances one component may have: CPython's runtime
/// (componentize-py) has 14, SpiderMonkey's (componentize-js) 4, Rust's 1-3.
const CORE_INSTANCES: u32 = 24;
/// Host resources one attempt may hold at once (header lists, requests,
/// bodies, streams, pollables...): with [`MAX_FIELDS_BYTES`] per header list,
/// this bounds what the host keeps on an attempt's behalf.
pub const MAX_HANDLES: usize = 1_024;
/// Largest header list a plugin may build (wasmtime counts names and values
/// with their in-memory overhead).
pub const MAX_FIELDS_BYTES: usize = 8 * 1024;
/// Kept of an output or a reason, as of a webhook's response body.
const KEPT: usize = 4 * 1024;
/// Longest log line kept, and most kept per attempt.
const LOG_LINE: usize = 1024;
const LOG_TOTAL: usize = 16 * 1024;
/// How often the epoch advances; a running guest gives way this often.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// A component that passed the upload checks, ready to store.
pub struct Compiled {
    pub sha256: String,
    pub imports: Vec<String>,
    pub artifact: Vec<u8>,
    pre: bindings::TaskPre<Attempt>,
}

/// A component ready to run, with the memory its plugin was given.
#[derive(Clone)]
struct Loaded {
    pre: bindings::TaskPre<Attempt>,
    /// Bytes all of an attempt's linear memories may grow to, together.
    memory: usize,
    /// Of the component: an upload of the same version since (deleted and
    /// uploaded again, through another node) is another component.
    sha256: String,
}

impl Loaded {
    /// Whether this is the component a task was created for (`None`: a task
    /// that does not say).
    fn is(&self, sha256: Option<&str>) -> bool {
        sha256.is_none_or(|want| want == self.sha256)
    }
}

/// The plugin runtime: one engine, one linker, the loaded components.
pub struct Host {
    engine: Engine,
    /// Where guests run: threads of their own, so that a guest that spins
    /// (until its epoch deadline) takes CPU time from other guests, never
    /// from the driver, the pacer or requests in flight, which stay on the
    /// server's runtime. `None` only while dropping.
    guests: Option<tokio::runtime::Runtime>,
    linker: Linker<Attempt>,
    /// Loaded components by `name@version`.
    loaded: RwLock<HashMap<String, Loaded>>,
    /// The most memory any plugin may have (`plugin_memory_max`), in bytes.
    memory_max: usize,
    /// Held while a stored component is loaded (`pre`).
    loading: Mutex<()>,
    store: Arc<dyn Backend>,
    slots: Arc<Semaphore>,
    engine_hash: u64,
    compilations: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(guests) = self.guests.take() {
            // Dropped on an async thread too: never block there.
            guests.shutdown_background();
        }
    }
}

/// What one attempt's store holds.
pub(crate) struct Attempt {
    limits: Limits,
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: http::GateHooks,
    log: Arc<Mutex<AttemptLog>>,
}

/// The attempt's history lines, capped: past the cap the plugin's lines are
/// counted, not kept. The host's own notes are marked as such by a field, so a
/// plugin cannot pass its lines off as the host's.
#[derive(Default)]
pub(crate) struct AttemptLog {
    lines: Vec<LogRecord>,
    bytes: usize,
    dropped: u64,
}

impl AttemptLog {
    /// A line the plugin logged.
    pub(crate) fn push(&mut self, level: &str, message: &str) {
        let message = cut(message, LOG_LINE);
        if self.bytes + level.len() + message.len() > LOG_TOTAL {
            self.dropped += 1;
            return;
        }
        self.bytes += level.len() + message.len();
        self.lines.push(LogRecord::plugin(level, message));
    }

    /// A note of the host's: a refusal, a limit reached. Kept within the same
    /// budget, but never crowded out by the plugin's own lines past it.
    pub(crate) fn note(&mut self, message: &str) {
        let message = cut(message, LOG_LINE);
        if self
            .lines
            .iter()
            .filter(|l| l.source == LogSource::Host)
            .count()
            >= HOST_NOTES
        {
            return;
        }
        self.lines.push(LogRecord::host(message));
    }

    fn take(&mut self) -> Vec<LogRecord> {
        let mut lines = std::mem::take(&mut self.lines);
        if self.dropped > 0 {
            lines.push(LogRecord::host(&format!(
                "{} more lines dropped (the log keeps {} KiB per attempt)",
                self.dropped,
                LOG_TOTAL / 1024
            )));
        }
        lines
    }
}

/// An attempt's memory budget: its linear memories together grow to at most
/// `memory` bytes; a growth past it fails in the guest (`memory.grow` returns
/// -1), which its language reports as out of memory.
struct Limits {
    memory: usize,
    used: usize,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let more = desired.saturating_sub(current);
        if self.used.saturating_add(more) > self.memory {
            return Ok(false);
        }
        self.used += more;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The pool bounds table elements.
        Ok(true)
    }
}

/// Most host notes kept per attempt.
const HOST_NOTES: usize = 32;

impl WasiView for Attempt {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Attempt {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl log::Host for Attempt {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        if let Ok(mut log) = self.log.lock() {
            log.push(level, &message);
        }
    }
}

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn engine(instances: u32, memory_max: usize, cache: Arc<CompileCache>) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    let n = instances.max(1);
    pool.total_component_instances(n)
        // Only counters in wasmtime 48: room for every slot's largest.
        .total_core_instances(n * CORE_INSTANCES)
        .max_core_instances_per_component(CORE_INSTANCES)
        .total_memories(n * 2)
        .max_memories_per_component(2)
        .total_tables(n * 4)
        .max_tables_per_component(4)
        .total_stacks(n)
        .max_memory_size(memory_max)
        // Reset by memset instead of madvise, for the first pages of each
        // memory: a decommit shoots down the TLBs of every core, and small
        // attempts reuse their slot's pages (see docs/performance.md, W6).
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT);
    let mut config = Config::new();
    // Reserve only what a memory may grow to, not wasmtime's default 4 GiB per
    // slot: thousands of slots then take a few hundred GiB of address space,
    // not terabytes, at the price of explicit bounds checks.
    config
        .memory_reservation(memory_max as u64)
        .memory_reservation_for_growth(0)
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(512 * 1024)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Components made by the same toolchain share most of their code (every
    // JavaScript plugin carries SpiderMonkey, every Python one CPython): each
    // function compiled once is reused by later uploads.
    config.enable_incremental_compilation(cache)?;
    Engine::new(&config)
}

/// Compiled functions by cranelift's key, kept in memory up to a budget
/// (past it, new ones are simply not kept) and dropped once no compile has
/// used them for [`COMPILE_CACHE_IDLE`]: uploads come in bursts (a deploy
/// pushes several plugins), and between them the memory is better free.
#[derive(Default)]
struct CompileCache {
    entries: Mutex<CacheEntries>,
}

#[derive(Default)]
struct CacheEntries {
    map: HashMap<Vec<u8>, Arc<[u8]>>,
    bytes: usize,
    used: Option<std::time::Instant>,
}

/// What the compile cache keeps at most.
const COMPILE_CACHE_BYTES: usize = 256 << 20;
/// How long the compile cache outlives the last compile that used it.
const COMPILE_CACHE_IDLE: Duration = Duration::from_secs(300);

impl CompileCache {
    /// Empties the cache if no compile has used it for a while.
    fn sweep(&self) {
        let idle = match self.entries.lock() {
            Ok(mut entries)
                if entries
                    .used
                    .is_some_and(|used| used.elapsed() > COMPILE_CACHE_IDLE) =>
            {
                std::mem::take(&mut *entries)
            }
            _ => return,
        };
        // Freed outside the lock.
        drop(idle);
    }
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompileCache")
    }
}

impl wasmtime::CacheStore for CompileCache {
    fn get(&self, key: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
        let mut entries = self.entries.lock().ok()?;
        entries.used = Some(clock::instant());
        let value = entries.map.get(key)?.clone();
        Some(std::borrow::Cow::Owned(value.to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let Ok(mut entries) = self.entries.lock() else {
            return false;
        };
        entries.used = Some(clock::instant());
        let size = key.len() + value.len();
        if entries.bytes + size > COMPILE_CACHE_BYTES {
            return false;
        }
        entries.bytes += size;
        entries.map.insert(key.to_vec(), value.into());
        true
    }
}

fn linker(engine: &Engine) -> wasmtime::Result<Linker<Attempt>> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
    use wasmtime_wasi::p2::bindings::{cli, filesystem, random, sockets};
    use wasmtime_wasi::random::WasiRandom;
    use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView as _};

    let mut linker = Linker::new(engine);
    // Only what the world grants: io, clocks, randomness and inert stdio, the
    // rest of what std imports, HTTP, and the log.
    wasmtime_wasi::p2::add_to_linker_proxy_interfaces_async(&mut linker)?;
    let l = &mut linker;
    cli::exit::add_to_linker::<Attempt, WasiCli>(l, Attempt::cli)?;
    cli::environment::add_to_linker::<Attempt, WasiCli>(l, Attempt::cli)?;
    cli::terminal_input::add_to_linker::<Attempt, WasiCli>(l, Attempt::cli)?;
    cli::terminal_output::add_to_linker::<Attempt, WasiCli>(l, Attempt::cli)?;
    cli::terminal_stdin::add_to_linker::<Attempt, WasiCli>(l, Attempt::cli)?;
    cli::terminal_stdout::add_to_linker::<Attempt, WasiCli>(l, Attempt::cli)?;
    cli::terminal_stderr::add_to_linker::<Attempt, WasiCli>(l, Attempt::cli)?;
    random::insecure::add_to_linker::<Attempt, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure_seed::add_to_linker::<Attempt, WasiRandom>(l, |t| t.wasi.random())?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(l)?;
    log::add_to_linker::<Attempt, HasSelf<Attempt>>(l, |t| t)?;
    // Inert: language runtimes (CPython's) import the file system and
    // sockets whether or not a plugin uses them. Linked, they grant nothing:
    // an attempt's context has no preopened directory, so no file can be
    // named, and allows no TCP, UDP or name lookup, so no socket is ever
    // created (`inert_wasi`).
    filesystem::types::add_to_linker::<Attempt, WasiFilesystem>(l, Attempt::filesystem)?;
    filesystem::preopens::add_to_linker::<Attempt, WasiFilesystem>(l, Attempt::filesystem)?;
    sockets::tcp::add_to_linker::<Attempt, WasiSockets>(l, Attempt::sockets)?;
    sockets::tcp_create_socket::add_to_linker::<Attempt, WasiSockets>(l, Attempt::sockets)?;
    sockets::udp::add_to_linker::<Attempt, WasiSockets>(l, Attempt::sockets)?;
    sockets::udp_create_socket::add_to_linker::<Attempt, WasiSockets>(l, Attempt::sockets)?;
    sockets::instance_network::add_to_linker::<Attempt, WasiSockets>(l, Attempt::sockets)?;
    sockets::network::add_to_linker::<Attempt, WasiSockets>(
        l,
        &Default::default(),
        Attempt::sockets,
    )?;
    sockets::ip_name_lookup::add_to_linker::<Attempt, WasiSockets>(l, Attempt::sockets)?;
    Ok(linker)
}

/// An attempt's WASI context: an empty environment, no arguments, stdin
/// empty and stdout/stderr discarded, no preopened directory, and no
/// network besides `wasi:http` (TCP, UDP and name lookups refused before any
/// socket exists, every address refused).
fn inert_wasi() -> WasiCtx {
    WasiCtx::builder()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .build()
}

impl Host {
    /// Starts the engine, with room for `instances` attempts at once, each
    /// with at most `memory_max_mib` MiB of linear memory, and its epoch
    /// ticker.
    pub fn new(
        store: Arc<dyn Backend>,
        instances: u32,
        memory_max_mib: u32,
    ) -> Result<Arc<Host>, PluginError> {
        let memory_max = (memory_max_mib as usize) << 20;
        // One per process: servers in one process (tests) share it too.
        static CACHE: std::sync::OnceLock<Arc<CompileCache>> = std::sync::OnceLock::new();
        let cache = CACHE.get_or_init(Arc::default).clone();
        let engine = engine(instances, memory_max, cache.clone())
            .map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let linker = linker(&engine).map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.weak();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                let mut ticks = 0u32;
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                    // About once a second, the compile cache's idle check.
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(200) {
                        cache.sweep();
                    }
                }
            })
            .map_err(|e| PluginError::Link(format!("epoch thread: {e}")))?;
        // As many as the server's own runtime has: the driver keeps a core.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .max(1);
        let guests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sluice-plugin")
            .enable_all()
            .build()
            .map_err(|e| PluginError::Link(format!("plugin threads: {e}")))?;
        Ok(Arc::new(Host {
            engine,
            guests: Some(guests),
            linker,
            loaded: RwLock::new(HashMap::new()),
            memory_max,
            loading: Mutex::new(()),
            store,
            slots: Arc::new(Semaphore::new(instances.max(1) as usize)),
            engine_hash: hasher.finish(),
            compilations: AtomicU64::new(0),
            stop,
        }))
    }

    /// The key compiled artifacts are stored under for this engine.
    pub fn engine_hash(&self) -> u64 {
        self.engine_hash
    }

    /// Components compiled since start (uploads, and stored ones whose artifact
    /// was made by another engine). A restart on the same build compiles none.
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Validates, audits, compiles and links an upload. Blocking: run it off
    /// the async threads.
    pub fn compile(&self, wasm: &[u8]) -> Result<Compiled, PluginError> {
        if !wasmparser_is_component(wasm) {
            return Err(PluginError::Invalid(
                "expected a component (build for wasm32-wasip2), found a core module or other bytes"
                    .into(),
            ));
        }
        // Audited by the names it declares before a byte is compiled: an
        // upload the audit refuses costs no compiler time. (Bytes this
        // reading cannot make sense of go on to wasmtime, whose validation
        // refuses them, also before compiling.)
        if let Some((imports, exports)) = declared_names(wasm) {
            audit::check(
                imports.iter().map(String::as_str),
                exports.iter().map(String::as_str),
            )?;
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| PluginError::Invalid(format!("{e:#}")))?;
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        audit::check(
            imports.iter().map(String::as_str),
            exports.iter().map(String::as_str),
        )?;
        let pre = self.link(&component)?;
        let artifact = component
            .serialize()
            .map_err(|e| PluginError::Invalid(format!("{e:#}")))?;
        Ok(Compiled {
            sha256: crate::hex::encode(&Sha256::digest(wasm)),
            imports,
            artifact,
            pre,
        })
    }

    fn link(&self, component: &Component) -> Result<bindings::TaskPre<Attempt>, PluginError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::Link(format!("{e:#}")))?;
        bindings::TaskPre::new(pre).map_err(|e| {
            PluginError::Link(format!(
                "the component does not fit the sluice:task world: {e:#}"
            ))
        })
    }

    /// Makes an uploaded component runnable under `key` (after it is
    /// stored), with the memory its upload asked for (MiB; `None`: the
    /// default).
    pub fn install(&self, key: &str, compiled: &Compiled, memory_mib: Option<u32>) {
        let loaded = Loaded {
            pre: compiled.pre.clone(),
            memory: self.memory(memory_mib),
            sha256: compiled.sha256.clone(),
        };
        if let Ok(mut all) = self.loaded.write() {
            all.insert(key.to_string(), loaded);
        }
    }

    /// Bytes an attempt of a plugin that asked for `memory_mib` gets: what it
    /// asked for, never more than this server's cap (which may have been
    /// lowered since the upload).
    fn memory(&self, memory_mib: Option<u32>) -> usize {
        let asked = (memory_mib.unwrap_or(super::DEFAULT_MEMORY_MIB) as usize) << 20;
        asked.min(self.memory_max)
    }

    /// The most memory a plugin may ask for on this server, in MiB.
    pub fn memory_max_mib(&self) -> u32 {
        (self.memory_max >> 20) as u32
    }

    /// Forgets a deleted plugin.
    pub fn evict(&self, key: &str) {
        if let Ok(mut loaded) = self.loaded.write() {
            loaded.remove(key);
        }
    }

    /// The loaded component for `key`, if it is the one `sha256` names.
    fn cached(&self, key: &str, sha256: Option<&str>) -> Option<Loaded> {
        let loaded = self.loaded.read().ok()?;
        loaded.get(key).filter(|l| l.is(sha256)).cloned()
    }

    /// The pre-instantiated component for `key` (the one `sha256` names,
    /// when given): from memory, else from its stored artifact, else
    /// compiled from its stored bytes (a new engine) and the artifact stored
    /// for next time. A version stored with other bytes than `sha256` (the
    /// task's version was deleted and uploaded again) runs as stored now.
    fn pre(&self, key: &str, sha256: Option<&str>) -> Result<Loaded, PluginError> {
        if let Some(loaded) = self.cached(key, sha256) {
            return Ok(loaded);
        }
        // One load at a time: a burst of first attempts (after an upgrade,
        // on a new node) compiles a component once, not once per attempt.
        let _loading = self.loading.lock();
        if let Some(loaded) = self.cached(key, sha256) {
            return Ok(loaded);
        }
        let reader = self.store.read()?;
        let record = reader
            .plugin(key)?
            .ok_or_else(|| PluginError::Missing(key.to_string()))?;
        // What this node has is what is stored now: the task's version was
        // uploaded again since the task was made.
        if let Some(loaded) = self.cached(key, Some(&record.sha256)) {
            return Ok(loaded);
        }
        let memory_mib = record.memory_mib;
        let component = match reader.compiled(key, self.engine_hash)? {
            Some(artifact) => deserialize(&self.engine, &artifact)?,
            None => {
                let wasm = reader
                    .plugin_wasm(key)?
                    .ok_or_else(|| PluginError::Missing(key.to_string()))?;
                drop(reader);
                // The bytes of the record read: a version deleted and
                // uploaded again between the two reads loads next time.
                if crate::hex::encode(&Sha256::digest(&wasm)) != record.sha256 {
                    return Err(PluginError::Invalid(
                        "the version was uploaded again while it loaded; the next attempt loads it"
                            .into(),
                    ));
                }
                let component = Component::new(&self.engine, &wasm)
                    .map_err(|e| PluginError::Invalid(format!("{e:#}")))?;
                self.compilations.fetch_add(1, Ordering::Relaxed);
                if let Ok(artifact) = component.serialize() {
                    let hash = self.engine_hash;
                    let sha256 = &record.sha256;
                    // Stored only while the version still has these bytes:
                    // one uploaded again during the compile keeps the
                    // artifact its own upload stored.
                    self.store.write(|tx| {
                        if tx.plugin(key)?.is_some_and(|p| p.sha256 == *sha256) {
                            tx.put_compiled(key, hash, &artifact)?;
                        }
                        Ok(())
                    })?;
                }
                component
            }
        };
        let loaded = Loaded {
            pre: self.link(&component)?,
            memory: self.memory(memory_mib),
            sha256: record.sha256,
        };
        if let Ok(mut all) = self.loaded.write() {
            all.insert(key.to_string(), loaded.clone());
        }
        Ok(loaded)
    }

    /// Runs one plugin attempt, on the plugin threads, and reports it like a
    /// webhook attempt. Dropping the future ends the attempt.
    pub async fn run(
        self: Arc<Self>,
        plan: Plan,
        dispatcher: Dispatcher,
        permits: mpsc::UnboundedSender<PermitMessage>,
    ) -> Report {
        let io = tokio::runtime::Handle::current();
        let (task, attempt) = (plan.task, plan.attempt);
        let lost = |why: String| {
            super::never_ran(task, attempt, Outcome::Failed { retry_after: None }, why)
        };
        // `None` only while the host is dropped: the attempt is retried.
        let Some(guests) = self.guests.as_ref() else {
            return lost("the plugin runtime is shutting down".into());
        };
        let host = self.clone();
        let run = guests.spawn(async move { host.run_here(plan, dispatcher, permits, io).await });
        match http::AbortOnDrop(run).await {
            Ok(report) => report,
            Err(e) => lost(format!("the plugin runtime lost the attempt: {e}")),
        }
    }

    async fn run_here(
        self: Arc<Self>,
        plan: Plan,
        dispatcher: Dispatcher,
        permits: mpsc::UnboundedSender<PermitMessage>,
        io: tokio::runtime::Handle,
    ) -> Report {
        let started = clock::instant();
        let deadline = clock::now().plus(plan.timeout);
        // The one instant the attempt and each of its requests end at.
        let ends = tokio::time::Instant::from_std(started + plan.timeout);
        let log = Arc::new(Mutex::new(AttemptLog::default()));
        let ran = tokio::time::timeout_at(
            ends,
            self.clone().attempt(
                &plan,
                (deadline, ends),
                dispatcher,
                permits,
                log.clone(),
                io,
            ),
        )
        .await;
        // A guest that returns only once its time is up (its request was
        // cut at the deadline, and it said so) ran out of time all the
        // same: which of the two timers fired first must not decide.
        let ran = ran
            .ok()
            .filter(|_| tokio::time::Instant::from_std(clock::instant()) < ends);
        let timed_out = ran.is_none();
        let (outcome, error, response, next) = match ran {
            Some(result) => result,
            None => (
                Outcome::Failed { retry_after: None },
                Some(format!(
                    "timed out after {}",
                    crate::core::format_duration(plan.timeout)
                )),
                None,
                Vec::new(),
            ),
        };
        let logs = log.lock().map(|mut l| l.take()).unwrap_or_default();
        Report {
            task: plan.task,
            attempt: plan.attempt,
            outcome,
            ended_at: clock::now(),
            status: None,
            latency_ms: started.elapsed().as_millis() as u64,
            error,
            timed_out,
            response,
            lease: None,
            quota: None,
            logs,
            next,
        }
    }

    #[allow(clippy::type_complexity, reason = "one tuple, taken apart once")]
    async fn attempt(
        self: Arc<Self>,
        plan: &Plan,
        (deadline, ends): (crate::core::Timestamp, tokio::time::Instant),
        dispatcher: Dispatcher,
        permits: mpsc::UnboundedSender<PermitMessage>,
        log: Arc<Mutex<AttemptLog>>,
        io: tokio::runtime::Handle,
    ) -> (Outcome, Option<String>, Option<String>, Vec<String>) {
        let Action::Plugin(call) = &plan.action else {
            return denied("not a plugin task".into());
        };
        let key = crate::store::plugin_key(&call.name, &call.version);
        let loaded = match self.cached(&key, call.sha256.as_deref()) {
            Some(loaded) => loaded,
            None => {
                // First use since start (or since another upload of the
                // version): load the stored artifact, off the async threads.
                let host = self.clone();
                let lookup = key.clone();
                let sha256 = call.sha256.clone();
                match tokio::task::spawn_blocking(move || host.pre(&lookup, sha256.as_deref()))
                    .await
                {
                    Ok(Ok(loaded)) => loaded,
                    Ok(Err(e @ PluginError::Missing(_))) => return denied(e.to_string()),
                    Ok(Err(e)) => return failed(format!("plugin {key}: {e}")),
                    Err(e) => return failed(format!("plugin {key} could not load: {e}")),
                }
            }
        };
        // A slot of the instance pool; waiting for one counts against the deadline.
        let Ok(_slot) = self.slots.clone().acquire_owned().await else {
            return failed("the plugin runtime is shutting down".into());
        };
        let hooks = http::GateHooks::new(http::Link {
            task: plan.task,
            attempt: plan.attempt,
            gate: plan.gate.clone(),
            allowed_hosts: plan.allowed_hosts.clone().into(),
            dispatcher,
            permits,
            log: log.clone(),
            next_ask: AtomicU64::new(0),
            deadline: ends,
            open: http::Link::open_requests(),
            io,
        });
        let mut http_ctx = WasiHttpCtx::new();
        http_ctx.set_field_size_limit(MAX_FIELDS_BYTES);
        // What the host keeps on the attempt's behalf is bounded: resources
        // (each header list capped above, each body's buffer a chunk or two),
        // open requests (see `http`), and the log.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let state = Attempt {
            limits: Limits {
                memory: loaded.memory,
                used: 0,
            },
            table,
            wasi: inert_wasi(),
            http: http_ctx,
            hooks,
            log,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|attempt| &mut attempt.limits);
        // What the host copies out of the guest in one call (a host call's
        // arguments, the attempt's outcome) is at most what the attempt's
        // memory holds: lists whose elements all point at the same bytes
        // would otherwise cost the host a copy per element.
        store.set_hostcall_fuel(loaded.memory);
        // Above the table's own cap, so the table's clearer error comes first.
        store.set_max_component_handles(2 * MAX_HANDLES);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let context = handler::Context {
            task_id: plan.task.to_string(),
            gate: plan.gate.clone(),
            attempt: plan.attempt,
            scheduled_at_ms: plan.scheduled_at.as_ms(),
            deadline_ms: deadline.as_ms(),
            idempotency_key: plan.idempotency_key.clone(),
            schedule: plan.schedule.clone(),
        };
        let instance = match loaded.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => return failed(describe_trap(&e)),
        };
        let result = instance
            .sluice_task_handler()
            .call_run(&mut store, &context, &call.input)
            .await;
        match result {
            Err(e) => {
                let why = describe_trap(&e);
                if let Some(limit) = budget_exceeded(&e)
                    && let Ok(mut log) = store.data().log.lock()
                {
                    log.note(&limit);
                }
                failed(why)
            }
            Ok(handler::Outcome::Success(success)) => (
                Outcome::Succeeded,
                None,
                Some(cut(&success.output, KEPT).to_string()).filter(|o| !o.is_empty()),
                success.next,
            ),
            Ok(handler::Outcome::Retry(retry)) => (
                Outcome::Failed {
                    retry_after: retry.after_ms.map(Duration::from_millis),
                },
                Some(cut(&retry.reason, KEPT).to_string()),
                None,
                Vec::new(),
            ),
            Ok(handler::Outcome::Fail(reason)) => (
                Outcome::Rejected,
                Some(cut(&reason, KEPT).to_string()),
                None,
                Vec::new(),
            ),
        }
    }
}

type Ended = (Outcome, Option<String>, Option<String>, Vec<String>);

fn failed(error: String) -> Ended {
    (
        Outcome::Failed { retry_after: None },
        Some(error),
        None,
        Vec::new(),
    )
}

fn denied(error: String) -> Ended {
    (Outcome::Denied, Some(error), None, Vec::new())
}

/// The host's budget for an attempt, when that is what a trap ran into.
fn budget_exceeded(e: &wasmtime::Error) -> Option<String> {
    if let Some(wasmtime::component::ResourceTableError::Full) =
        e.downcast_ref::<wasmtime::component::ResourceTableError>()
    {
        return Some(format!(
            "the plugin held more than {MAX_HANDLES} host resources at once (header lists, requests, bodies, streams); the host keeps no more for one attempt"
        ));
    }
    // wasmtime's error for the fuel set in `run`; its type is private.
    if e.chain().any(|cause| {
        cause
            .to_string()
            .starts_with("too much data is being copied")
    }) {
        return Some(
            "the plugin handed the host more in one call than its memory holds (elements sharing their bytes); the host copies no more"
                .into(),
        );
    }
    use wasmtime_wasi_http::FieldMapError;
    if let Some(FieldMapError::TotalSizeTooBig | FieldMapError::TooManyFields) =
        e.downcast_ref::<FieldMapError>()
    {
        return Some(format!(
            "the plugin built a header list over {} KiB; the host keeps no more in one",
            MAX_FIELDS_BYTES / 1024
        ));
    }
    None
}

/// A trap as history shows it: what happened, not a backtrace.
fn describe_trap(e: &wasmtime::Error) -> String {
    if let Some(limit) = budget_exceeded(e) {
        return format!("trap: {limit}");
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        let what = match trap {
            wasmtime::Trap::StackOverflow => "stack overflow".to_string(),
            wasmtime::Trap::UnreachableCodeReached => {
                "the plugin aborted (a panic, or memory exhausted; see the log)".to_string()
            }
            wasmtime::Trap::Interrupt => "interrupted at its deadline".to_string(),
            // Rust keeps its own stack in linear memory: overflowing it runs off
            // the start of memory.
            wasmtime::Trap::MemoryOutOfBounds => {
                "out-of-bounds memory access (a stack overflow in the plugin's own stack, or a bug)"
                    .to_string()
            }
            other => other.to_string(),
        };
        return format!("trap: {what}");
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return format!("the plugin called exit({})", exit.0);
    }
    let text = format!("{e:#}");
    format!("trap: {}", cut(&text, KEPT))
}

/// The component binary's header: `\0asm`, then a layer of 1 (a component).
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// The names a component imports and exports at its top level (what the
/// host links and calls; nested components and modules are linked inside
/// it), read off its sections without compiling it; `None` when the bytes
/// do not parse.
fn declared_names(wasm: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    use wasmparser::Payload;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.ok()? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    imports.push(import.ok()?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    exports.push(export.ok()?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Some((imports, exports))
}

/// Loads an artifact this host's engine made and stored itself.
#[allow(unsafe_code, reason = "the one deserialization of compiled code")]
fn deserialize(engine: &Engine, artifact: &[u8]) -> Result<Component, PluginError> {
    // SAFETY: wasmtime runs deserialized artifacts as native code without
    // validating them. These bytes were produced by `Component::serialize` of
    // an engine with the same compatibility hash (the key they are stored
    // under) and read back from our own data file, which only the server
    // writes; wasmtime also checks the artifact's header against this engine's
    // version and settings. Anyone who can write the data file can already
    // replace the server binary.
    unsafe { Component::deserialize(engine, artifact) }
        .map_err(|e| PluginError::Invalid(format!("stored artifact: {e:#}")))
}
