//! The `sluice` command line: `serve`, `plugin new` (scaffolds a plugin crate),
//! and clients of the REST API.
//!
//! Exit codes scripts can rely on: 0 success, 1 server or connection error,
//! 2 usage error, 3 not found, 4 conflict, 5 request refused as invalid,
//! 6 a gate's circuit is open (`status`), 7 not allowed (401 or 403), 8 `check`
//! found problems.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::config::{Flags, ServerConfig};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "A task scheduler whose gates never let a backlog flood an endpoint"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct Client {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "SLUICE_SERVER",
        default_value = "http://127.0.0.1:7460"
    )]
    server: String,
    /// API token.
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A PEM certificate to trust for an https server (for a self-signed one).
    #[arg(long, global = true, env = "SLUICE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve {
        /// Where the data file lives [default: ./sluice-data].
        #[arg(long, env = "SLUICE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:7460].
        #[arg(long, env = "SLUICE_LISTEN")]
        listen: Option<String>,
        /// How long shutdown waits for attempts in flight [default: 10s].
        #[arg(long, env = "SLUICE_SHUTDOWN_GRACE")]
        shutdown_grace: Option<String>,
        /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
        #[arg(long, env = "SLUICE_TLS_CERT")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, env = "SLUICE_TLS_KEY")]
        tls_key: Option<PathBuf>,
        /// How long finished tasks and their history are kept [default: 7d].
        #[arg(long, env = "SLUICE_RETENTION")]
        retention: Option<String>,
        /// A TOML file with the same settings.
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Keep the data in PostgreSQL (`postgres://user@host/db`) instead of
        /// the data dir's file.
        #[arg(long, env = "SLUICE_STORE", hide_env_values = true)]
        store: Option<String>,
        /// In a cluster, the URL other nodes forward requests to [default:
        /// the address listened on].
        #[arg(long, env = "SLUICE_ADVERTISE")]
        advertise: Option<String>,
        /// Log lines as text, or as json: one object per line with the fields
        /// timestamp, level, target, message, the event's own fields, and the
        /// request span (`span.request_id`) of API calls.
        #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Manage gates.
    Gate {
        #[command(subcommand)]
        command: GateCommand,
        #[command(flatten)]
        client: Client,
    },
    /// Manage tasks.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
        #[command(flatten)]
        client: Client,
    },
    /// Manage schedules (periodic tasks).
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
        #[command(flatten)]
        client: Client,
    },
    /// Manage plugins (WebAssembly tasks): push, list, remove, scaffold.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
        #[command(flatten)]
        client: Client,
    },
    /// Measure throughput, gate accuracy, outage recovery, lateness, scale and
    /// plugin overhead against a fresh server and a loopback sink (build with
    /// --release; W6 needs scripts/build-plugins).
    Bench {
        /// Pending tasks for the scale workload.
        #[arg(long, default_value_t = 5_000_000)]
        scale_tasks: u64,
        /// Gates for the many-gates workload.
        #[arg(long, default_value_t = 10_000)]
        gates: u64,
        /// Smaller counts, for a quick look.
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench.json")]
        out: PathBuf,
        /// Run only these workloads: w1, w1c, w1k, w2, w3, w4, w5, w5b, w6, w7, w7c, w7d, w8,
        /// w9, w10, w11, w12 (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Run the servers on this PostgreSQL database (`--store` of
        /// `sluice serve`) instead of redb files.
        #[arg(long, hide_env_values = true)]
        store: Option<String>,
    },
    /// Download a consistent snapshot of the running server's store (admin
    /// token); the server keeps dispatching meanwhile.
    Backup {
        /// Where to write it (replaced if it exists, once the download is whole).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        client: Client,
    },
    /// Put a backup in place as a stopped server's store.
    Restore {
        /// A file `sluice backup` wrote.
        file: PathBuf,
        /// The data directory to restore into.
        #[arg(long, env = "SLUICE_DATA_DIR")]
        data_dir: PathBuf,
        /// Replace a store already there (it is kept as sluice.redb.before-restore).
        #[arg(long)]
        force: bool,
    },
    /// Verify a stopped server's store: counters, indexes and reference counts
    /// against a scan of the records. Changes nothing unless --repair.
    Check {
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = crate::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Check this PostgreSQL store (`postgres://user@host/db`) instead
        /// of the data dir's file.
        #[arg(long, env = "SLUICE_STORE", hide_env_values = true)]
        store: Option<String>,
        /// Rebuild what can be derived from the records.
        #[arg(long)]
        repair: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create or upgrade the store's schema and exit (`serve` does the same
    /// when it starts): the upgrade step before starting a new build on
    /// every node of a cluster.
    Migrate {
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = crate::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The PostgreSQL store (`postgres://user@host/db`); the data dir's
        /// file when not given.
        #[arg(long, env = "SLUICE_STORE", hide_env_values = true)]
        store: Option<String>,
    },
    /// Exit 0 when the server is ready to serve (`GET /readyz` answers 200):
    /// a health probe that needs no curl.
    Ready {
        #[command(flatten)]
        client: Client,
    },
    /// A table of gates: backlog, in flight, rates, state, time to drain.
    Status {
        /// Refresh in place every 2 seconds.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        client: Client,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make a new random token; prints it once, with the hash for the config.
    New {
        /// A name for logs and error messages.
        #[arg(long, default_value = "default")]
        name: String,
        /// admin (everything), writer (tasks and schedules) or reader (GET only).
        #[arg(long, default_value = "writer")]
        role: String,
    },
}

/// `MIN-MAX`, two whole numbers.
fn parse_range(text: &str) -> Result<(u32, u32), String> {
    let (min, max) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not MIN-MAX, e.g. 1-100"))?;
    let number = |n: &str| {
        n.trim()
            .parse::<u32>()
            .map_err(|_| format!("{n:?} in {text:?} is not a whole number"))
    };
    Ok((number(min)?, number(max)?))
}

#[derive(Subcommand, Debug)]
enum GateCommand {
    /// Create or replace a gate.
    Set {
        name: String,
        /// Sustained rate: "100/s", "30/m", "2/h".
        #[arg(long)]
        rate: String,
        #[arg(long)]
        burst: Option<u32>,
        #[arg(long)]
        concurrency: Option<u32>,
        /// A host its tasks may reach (repeat for several): host, host:port, *.domain.
        #[arg(long = "allow-host")]
        allow_host: Vec<String>,
        /// A gate whose tasks may create next tasks in this one (repeat for
        /// several); by default only this gate's own tasks may.
        #[arg(long = "accept-next-from")]
        accept_next_from: Vec<String>,
        /// Default per-attempt timeout, e.g. "30s".
        #[arg(long)]
        timeout: Option<String>,
        /// Default attempts per task.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Recovery ramp start as a fraction of the rate; 1.0 turns it off.
        #[arg(long)]
        recovery_start: Option<f64>,
        /// How long the recovery ramp takes.
        #[arg(long)]
        recovery_over: Option<String>,
        /// Turn the circuit breaker off.
        #[arg(long)]
        no_circuit: bool,
        /// Search for the endpoint's safe concurrency in a range, "MIN-MAX"
        /// (e.g. "1-100"); --concurrency is where the search starts.
        #[arg(long, value_parser = parse_range)]
        adaptive: Option<(u32, u32)>,
        /// Ignore the quota the endpoint states in its response headers.
        #[arg(long)]
        no_quota_headers: bool,
    },
    /// Show one gate.
    Get { name: String },
    /// List gates.
    Ls,
    /// Delete a gate.
    Rm {
        name: String,
        /// Cancel its unfinished tasks.
        #[arg(long)]
        force: bool,
    },
    /// Stop starting attempts.
    Pause { name: String },
    /// Start again (with the recovery ramp).
    Resume { name: String },
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant, reason = "parsed once per run")]
enum ScheduleCommand {
    /// Create or replace a schedule.
    Set {
        name: String,
        /// Cron rule, 5 fields or 6 with seconds first.
        #[arg(long, conflicts_with = "every")]
        cron: Option<String>,
        /// IANA time zone for the cron rule [default: UTC].
        #[arg(long)]
        timezone: Option<String>,
        /// Run every so often, e.g. "10m".
        #[arg(long)]
        every: Option<String>,
        #[arg(long)]
        gate: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        method: Option<String>,
        /// Body: JSON, or @file to read it from a file.
        #[arg(long)]
        body: Option<String>,
        /// skip, once or all.
        #[arg(long)]
        misfire: Option<String>,
        #[arg(long)]
        catchup_limit: Option<u32>,
        /// A stable per-schedule offset in [0, jitter), e.g. "30s".
        #[arg(long)]
        jitter: Option<String>,
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// Show one schedule with its next and last runs.
    Get {
        name: String,
    },
    /// List schedules.
    Ls,
    /// Delete a schedule (its pending occurrence is cancelled).
    Rm {
        name: String,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Upload a component (a .wasm file) as NAME at VERSION.
    Push {
        /// Lowercase letters, digits and '-'.
        name: String,
        /// A semantic version, such as 0.1.0; a version never changes.
        version: String,
        /// The component, e.g. target/wasm32-wasip2/release/NAME.wasm.
        file: PathBuf,
        /// Linear memory its attempts may use, e.g. 128MiB (default 64MiB;
        /// JavaScript and Python runtimes may need more), up to the server's
        /// plugin_memory_max.
        #[arg(long)]
        memory: Option<String>,
    },
    /// List plugins.
    Ls,
    /// Show one plugin version, with its imports.
    Get { name: String, version: String },
    /// Delete a plugin version (refused while tasks or schedules use it).
    Rm { name: String, version: String },
    /// Scaffold a plugin that builds with the SDK of its language.
    New {
        /// The plugin's name (and a Rust plugin's crate's): lowercase
        /// letters, digits and '-'.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// The directory to create [default: ./NAME].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rust: use the SDK at this path (a checkout's sdk/) instead of
        /// crates.io.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
#[expect(clippy::large_enum_variant, reason = "parsed once per run")]
enum TaskCommand {
    /// Create a webhook task (--url) or a plugin task (--plugin).
    Create {
        #[arg(long)]
        gate: String,
        /// The webhook's URL.
        #[arg(long, required_unless_present = "plugin", conflicts_with = "plugin")]
        url: Option<String>,
        /// A plugin to run, as NAME@VERSION (see `sluice plugin ls`).
        #[arg(long)]
        plugin: Option<String>,
        /// The plugin's input: JSON, or @file to read it from a file.
        #[arg(long, requires = "plugin")]
        input: Option<String>,
        #[arg(long, conflicts_with = "plugin")]
        method: Option<String>,
        /// A header as name:value (repeatable).
        #[arg(long = "header", conflicts_with = "plugin")]
        headers: Vec<String>,
        /// A header as name:value whose value is never shown back (an API
        /// key, say), as the API's `{"value": ..., "secret": true}`.
        #[arg(long = "secret-header", conflicts_with = "plugin")]
        secret_headers: Vec<String>,
        /// Body: JSON, or @file to read it from a file.
        #[arg(long, conflicts_with = "plugin")]
        body: Option<String>,
        /// Run after this long, e.g. "90s".
        #[arg(long, conflicts_with = "run_at")]
        delay: Option<String>,
        /// Run at this RFC 3339 time.
        #[arg(long)]
        run_at: Option<String>,
        #[arg(long)]
        max_attempts: Option<u32>,
        #[arg(long)]
        timeout: Option<String>,
        #[arg(long)]
        expires_after: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// The tenant the task acts for: keys share their gate fairly.
        #[arg(long)]
        key: Option<String>,
        /// 0–9 (default 5): higher starts first among its key's due tasks.
        #[arg(long)]
        priority: Option<u8>,
        /// Replace the gate's task of this coalesce key that has not started.
        #[arg(long)]
        coalesce_key: Option<String>,
        /// A label as key=value or key:value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Create this many identical tasks (through the batch API).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
    },
    /// Create tasks from a file of JSON task objects, one per line, in batches.
    Import {
        file: PathBuf,
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
    },
    /// Show a task and its attempts.
    Get { id: String },
    /// List tasks, newest first.
    Ls {
        #[arg(long)]
        gate: Option<String>,
        #[arg(long)]
        state: Option<String>,
        /// A label as key:value (or key=value).
        #[arg(long, value_parser = label_filter)]
        label: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a scheduled task.
    Cancel { id: String },
    /// Re-run a failed or expired task.
    Retry { id: String },
    /// Re-run every failed (or expired) task that matches, paced through
    /// its gate; --dry-run says how many and how long it would take.
    Replay {
        #[arg(long)]
        gate: Option<String>,
        /// failed (default), expired or superseded.
        #[arg(long)]
        state: Option<String>,
        /// Finished at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Finished at or before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// A label as key:value (or key=value).
        #[arg(long, value_parser = label_filter)]
        label: Option<String>,
        /// Only the tasks of this key (the tenant within the gate).
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
}

mod client;
mod gates;
mod ops;
mod plugins;
mod scaffold;
mod schedules;
mod status;
mod table;
mod tasks;

use client::*;
use gates::*;
use plugins::*;
use scaffold::*;
use schedules::*;
use status::*;
use table::*;
use tasks::*;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        quiet_on_a_closed_pipe();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Serve { .. })
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
    {
        // The scheduler's driver has a thread of its own: leave it a core, so the
        // two do not preempt each other (measured in docs/performance.md).
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    // Work still on the blocking pool (a backup snapshot being written when a
    // stop came) must not hold the exit; its scratch file goes at the next start.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            shutdown_grace,
            tls_cert,
            tls_key,
            retention,
            config,
            store,
            advertise,
            log_format,
        } => serve(
            Flags {
                data_dir,
                listen,
                grace: shutdown_grace,
                tls_cert,
                tls_key,
                retention,
                config,
                store,
                advertise,
            },
            log_format,
        )
        .await
        .map_err(Failure::from),
        Command::Token { command, json } => token(command, json),
        Command::Gate { command, client } => gate(&Api::new(&client)?, command, client.json).await,
        Command::Task { command, client } => task(&Api::new(&client)?, command, client.json).await,
        Command::Schedule { command, client } => {
            schedule(&Api::new(&client)?, command, client.json).await
        }
        Command::Plugin { command, client } => plugin(&client, command).await,
        Command::Bench {
            scale_tasks,
            gates,
            quick,
            out,
            only,
            store,
        } => crate::bench::run(crate::bench::Options {
            store,
            scale_tasks: if quick {
                scale_tasks.min(200_000)
            } else {
                scale_tasks
            },
            gates: if quick { gates.min(1_000) } else { gates },
            out,
            quick,
            only,
        })
        .await
        .map_err(Failure::from),
        Command::Status { watch, client } => status(&Api::new(&client)?, watch, client.json).await,
        Command::Ready { client } => ops::ready(&Api::new(&client)?).await,
        Command::Backup { out, client } => {
            ops::backup(&Api::new(&client)?, &out, client.json).await
        }
        Command::Restore {
            file,
            data_dir,
            force,
        } => ops::restore(&file, &data_dir, force),
        Command::Check {
            data_dir,
            store: Some(url),
            repair,
            json,
        } => {
            let _ = data_dir;
            ops::check_postgres(&url, repair, json)
        }
        Command::Check {
            data_dir,
            store: None,
            repair,
            json,
        } => ops::check(&data_dir, repair, json),
        Command::Migrate { data_dir, store } => ops::migrate(&data_dir, store.as_deref()),
    }
}

/// A label filter as the API takes it, `key:value`; `key=value`, as
/// `task create --label` takes it, is read the same.
fn label_filter(text: &str) -> Result<String, String> {
    let (k, v) = split_label(text).ok_or_else(|| format!("{text:?} must look like key:value"))?;
    Ok(format!("{k}:{v}"))
}

/// A label's key and value, split at whichever of `=` and `:` comes first.
fn split_label(text: &str) -> Option<(&str, &str)> {
    let at = text.find([':', '='])?;
    Some((&text[..at], &text[at + 1..]))
}

/// `println!` panics once the reader of stdout has gone (`sluice task ls |
/// head`): a command then ends quietly with success, as a tool ended by
/// SIGPIPE would, instead of printing a panic. (Rust ignores SIGPIPE, and
/// restoring it takes `unsafe`.)
fn quiet_on_a_closed_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info);
    }));
}

async fn serve(flags: Flags, log_format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    let config = ServerConfig::resolve(flags)?;
    let server = crate::server::start(&config, None).await?;
    println!("sluice listening on {}", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    server.shutdown().await
}

fn token(command: TokenCommand, json: bool) -> Result<(), Failure> {
    let TokenCommand::New { name, role } = command;
    if crate::api::auth::Role::parse(&role).is_none() {
        return Err(Failure {
            code: 2,
            message: format!("--role {role:?}: must be admin, writer or reader"),
        });
    }
    let (token, hash) = crate::api::auth::new_token().context("reading random bytes")?;
    if json {
        println!(
            "{}",
            json!({"name": name, "role": role, "token": token, "hash": hash})
        );
    } else {
        println!("token: {token}");
        println!("(shown once: the server keeps only the hash)\n");
        println!("Add this to the server's config file:\n");
        println!("[[tokens]]");
        println!("name = {}", Value::String(name));
        println!("role = \"{role}\"");
        println!("hash = \"{hash}\"");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn adaptive_ranges_are_read_or_refused_clearly() {
        assert_eq!(parse_range("1-100"), Ok((1, 100)));
        assert_eq!(parse_range(" 2 - 8 "), Ok((2, 8)));
        assert!(parse_range("10").is_err_and(|e| e.contains("MIN-MAX")));
        assert!(parse_range("a-3").is_err_and(|e| e.contains("\"a\"")));
        assert!(parse_range("-3").is_err());
    }
}
