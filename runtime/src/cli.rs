//! The `sluice` command line: `serve`, `plugin new` (scaffolds a plugin crate),
//! and clients of the REST API.
//!
//! Exit codes scripts can rely on: 0 success, 1 server or connection error,
//! 2 usage error, 3 not found, 4 conflict, 5 request refused as invalid,
//! 6 a gate's circuit is open (`status`), 7 not allowed (401 or 403).

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
        /// Run only these workloads: w1, w1c, w2, w3, w4, w5, w5b, w6, w7
        /// (repeatable).
        #[arg(long)]
        only: Vec<String>,
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
    },
    /// List plugins.
    Ls,
    /// Show one plugin version, with its imports.
    Get { name: String, version: String },
    /// Delete a plugin version (refused while tasks or schedules use it).
    Rm { name: String, version: String },
    /// Scaffold a plugin crate that builds with the SDK.
    New {
        /// The crate's and the plugin's name: lowercase letters, digits and '-'.
        name: String,
        /// The directory to create [default: ./NAME].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Use the SDK at this path (a checkout's sdk/) instead of crates.io.
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
        /// A label as key=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Create this many identical tasks (through the batch API).
        #[arg(long, default_value_t = 1)]
        count: usize,
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
        /// key:value
        #[arg(long)]
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
}

/// A failed client call, carrying its exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure {
            code: 1,
            message: format!("{e:#}"),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
        } => serve(Flags {
            data_dir,
            listen,
            grace: shutdown_grace,
            tls_cert,
            tls_key,
            retention,
            config,
        })
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
        } => crate::bench::run(crate::bench::Options {
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
    }
}

async fn serve(flags: Flags) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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

struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(client: &Client) -> Result<Api, Failure> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(120));
        if let Some(path) = &client.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --ca-cert {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).with_context(|| {
                format!("--ca-cert {} is not a PEM certificate", path.display())
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Api {
            base: client.server.trim_end_matches('/').to_string(),
            token: client.token.clone(),
            http,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(body).unwrap_or_default());
        }
        let (status, value) = self.send(request).await?;
        if status.is_success() {
            return Ok(value);
        }
        Err(failure(status, &value))
    }

    /// Sends a request and returns its status and JSON body, whatever the
    /// status; fails only when the server cannot be reached.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Value), Failure> {
        let response = request.send().await.map_err(|e| Failure {
            code: 1,
            message: format!("cannot reach the server at {}: {e}", self.base),
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// An error answer as a failure: the server's message, the field at fault,
/// the status, and the exit code for it.
fn failure(status: reqwest::StatusCode, value: &Value) -> Failure {
    let message = value["error"]["message"]
        .as_str()
        .unwrap_or("request failed")
        .to_string();
    let field = value["error"]["field"]
        .as_str()
        .map(|f| format!(" (field {f})"))
        .unwrap_or_default();
    let code = match status.as_u16() {
        404 => 3,
        409 => 4,
        400 | 413 => 5,
        401 | 403 => 7,
        _ => 1,
    };
    Failure {
        code,
        message: format!("{message}{field} [{}]", status.as_u16()),
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn gate(api: &Api, command: GateCommand, json: bool) -> Result<(), Failure> {
    let value = match command {
        GateCommand::Set {
            name,
            rate,
            burst,
            concurrency,
            allow_host,
            accept_next_from,
            timeout,
            max_attempts,
            recovery_start,
            recovery_over,
            no_circuit,
        } => {
            let mut body = json!({ "rate": rate });
            if let Some(b) = burst {
                body["burst"] = json!(b);
            }
            if let Some(c) = concurrency {
                body["concurrency"] = json!(c);
            }
            if !allow_host.is_empty() {
                body["allowed_hosts"] = json!(allow_host);
            }
            if !accept_next_from.is_empty() {
                body["accept_next_from"] = json!(accept_next_from);
            }
            if let Some(t) = timeout {
                body["timeout"] = json!(t);
            }
            if let Some(n) = max_attempts {
                body["retry"] = json!({ "max_attempts": n });
            }
            if recovery_start.is_some() || recovery_over.is_some() {
                let mut r = json!({});
                if let Some(s) = recovery_start {
                    r["start"] = json!(s);
                }
                if let Some(o) = recovery_over {
                    r["over"] = json!(o);
                }
                body["recovery"] = r;
            }
            if no_circuit {
                body["circuit"] = Value::Null;
            }
            api.call(
                reqwest::Method::PUT,
                &format!("/v1/gates/{}", enc(&name)),
                Some(&body),
            )
            .await?
        }
        GateCommand::Get { name } => api.get(&format!("/v1/gates/{}", enc(&name))).await?,
        GateCommand::Ls => {
            let v = api.get("/v1/gates").await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", gates_table(&v));
            }
            return Ok(());
        }
        GateCommand::Rm { name, force } => {
            let q = if force { "?force=true" } else { "" };
            api.call(
                reqwest::Method::DELETE,
                &format!("/v1/gates/{}{q}", enc(&name)),
                None,
            )
            .await?;
            if !json {
                println!("deleted gate {name}");
            }
            return Ok(());
        }
        GateCommand::Pause { name } => {
            api.call(
                reqwest::Method::POST,
                &format!("/v1/gates/{}/pause", enc(&name)),
                None,
            )
            .await?
        }
        GateCommand::Resume { name } => {
            api.call(
                reqwest::Method::POST,
                &format!("/v1/gates/{}/resume", enc(&name)),
                None,
            )
            .await?
        }
    };
    if json {
        print_json(&value);
    } else {
        print!("{}", gates_table(&json!({ "gates": [value] })));
    }
    Ok(())
}

fn split_pair<'a>(text: &'a str, sep: char, what: &str) -> Result<(&'a str, &'a str), Failure> {
    text.split_once(sep).ok_or_else(|| Failure {
        code: 2,
        message: format!("{what} {text:?} must look like name{sep}value"),
    })
}

async fn task(api: &Api, command: TaskCommand, json: bool) -> Result<(), Failure> {
    match command {
        TaskCommand::Create {
            gate,
            url,
            plugin,
            input,
            method,
            headers,
            body,
            delay,
            run_at,
            max_attempts,
            timeout,
            expires_after,
            idempotency_key,
            labels,
            count,
        } => {
            let mut task = match (plugin, url) {
                (Some(plugin), _) => {
                    let (name, version) = split_pair(&plugin, '@', "plugin")?;
                    let mut target = json!({ "name": name.trim(), "version": version.trim() });
                    if let Some(i) = input {
                        target["input"] = body_value(i)?;
                    }
                    json!({ "gate": gate, "plugin": target })
                }
                (None, url) => {
                    let mut webhook = json!({ "url": url });
                    if let Some(m) = method {
                        webhook["method"] = json!(m);
                    }
                    if !headers.is_empty() {
                        let mut map = BTreeMap::new();
                        for h in &headers {
                            let (k, v) = split_pair(h, ':', "header")?;
                            map.insert(k.trim().to_string(), v.trim().to_string());
                        }
                        webhook["headers"] = json!(map);
                    }
                    if let Some(b) = body {
                        webhook["body"] = body_value(b)?;
                    }
                    json!({ "gate": gate, "webhook": webhook })
                }
            };
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    task[k] = v;
                }
            };
            set("delay", delay.map(Value::from));
            set("run_at", run_at.map(Value::from));
            set("max_attempts", max_attempts.map(Value::from));
            set("timeout", timeout.map(Value::from));
            set("expires_after", expires_after.map(Value::from));
            set("idempotency_key", idempotency_key.map(Value::from));
            if !labels.is_empty() {
                let mut map = BTreeMap::new();
                for l in &labels {
                    let (k, v) = split_pair(l, '=', "label")?;
                    map.insert(k.to_string(), v.to_string());
                }
                task["labels"] = json!(map);
            }
            if count <= 1 {
                let v = api
                    .call(reqwest::Method::POST, "/v1/tasks", Some(&task))
                    .await?;
                if json {
                    print_json(&v);
                } else {
                    println!("{}", v["id"].as_str().unwrap_or(""));
                }
                return Ok(());
            }
            let tasks = std::iter::repeat_n(task, count);
            send_batches(api, tasks, 1_000, count, json).await
        }
        TaskCommand::Import { file, batch } => {
            let reader = std::io::BufReader::new(
                std::fs::File::open(&file)
                    .with_context(|| format!("opening {}", file.display()))?,
            );
            let mut tasks = Vec::new();
            for (i, line) in reader.lines().enumerate() {
                let line = line.with_context(|| format!("reading {}", file.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(&line).map_err(|e| Failure {
                    code: 5,
                    message: format!("{}:{}: not JSON: {e}", file.display(), i + 1),
                })?;
                tasks.push(value);
            }
            let total = tasks.len();
            send_batches(api, tasks.into_iter(), batch.clamp(1, 10_000), total, json).await
        }
        TaskCommand::Get { id } => {
            let v = api.get(&format!("/v1/tasks/{}", enc(&id))).await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", task_detail(&v));
            }
            Ok(())
        }
        TaskCommand::Ls {
            gate,
            state,
            label,
            limit,
            cursor,
        } => {
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [
                ("gate", gate),
                ("state", state),
                ("label", label),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            let v = api.get(&format!("/v1/tasks?{}", q.join("&"))).await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", tasks_table(&v));
            }
            Ok(())
        }
        TaskCommand::Cancel { id } => {
            let v = api
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/tasks/{}", enc(&id)),
                    None,
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("cancelled {}", v["id"].as_str().unwrap_or(&id));
            }
            Ok(())
        }
        TaskCommand::Retry { id } => {
            let v = api
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/tasks/{}/retry", enc(&id)),
                    None,
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("re-running {}", v["id"].as_str().unwrap_or(&id));
            }
            Ok(())
        }
    }
}

async fn send_batches(
    api: &Api,
    tasks: impl Iterator<Item = Value>,
    batch: usize,
    total: usize,
    json: bool,
) -> Result<(), Failure> {
    let mut ids: Vec<Value> = Vec::with_capacity(total);
    let mut chunk = Vec::with_capacity(batch);
    let progress = std::io::stderr().is_terminal();
    let flush = async |chunk: &mut Vec<Value>, ids: &mut Vec<Value>| -> Result<(), Failure> {
        if chunk.is_empty() {
            return Ok(());
        }
        let body = json!({ "tasks": std::mem::take(chunk) });
        let v = api
            .call(reqwest::Method::POST, "/v1/tasks/batch", Some(&body))
            .await?;
        ids.extend(v["ids"].as_array().cloned().unwrap_or_default());
        if progress {
            eprint!("\rcreated {}/{}", ids.len(), total);
            let _ = std::io::stderr().flush();
        }
        Ok(())
    };
    for task in tasks {
        chunk.push(task);
        if chunk.len() >= batch {
            flush(&mut chunk, &mut ids).await?;
        }
    }
    flush(&mut chunk, &mut ids).await?;
    if progress {
        eprintln!();
    }
    if json {
        print_json(&json!({ "ids": ids }));
    } else {
        println!("created {} tasks", ids.len());
    }
    Ok(())
}

fn body_value(body: String) -> Result<Value, Failure> {
    let text = match body.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => body,
    };
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn schedule(api: &Api, command: ScheduleCommand, json: bool) -> Result<(), Failure> {
    let path = |name: &str| format!("/v1/schedules/{}", enc(name));
    let value = match command {
        ScheduleCommand::Set {
            name,
            cron,
            timezone,
            every,
            gate,
            url,
            method,
            body,
            misfire,
            catchup_limit,
            jitter,
            max_attempts,
        } => {
            let mut webhook = json!({ "url": url });
            if let Some(m) = method {
                webhook["method"] = json!(m);
            }
            if let Some(b) = body {
                webhook["body"] = body_value(b)?;
            }
            let mut task = json!({ "gate": gate, "webhook": webhook });
            if let Some(n) = max_attempts {
                task["max_attempts"] = json!(n);
            }
            let mut s = json!({ "task": task });
            for (k, v) in [
                ("cron", cron),
                ("timezone", timezone),
                ("every", every),
                ("misfire", misfire),
                ("jitter", jitter),
            ] {
                if let Some(v) = v {
                    s[k] = json!(v);
                }
            }
            if let Some(n) = catchup_limit {
                s["catchup_limit"] = json!(n);
            }
            api.call(reqwest::Method::PUT, &path(&name), Some(&s))
                .await?
        }
        ScheduleCommand::Get { name } => api.get(&path(&name)).await?,
        ScheduleCommand::Ls => {
            let v = api.get("/v1/schedules").await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", schedules_table(&v));
            }
            return Ok(());
        }
        ScheduleCommand::Rm { name } => {
            api.call(reqwest::Method::DELETE, &path(&name), None)
                .await?;
            if !json {
                println!("deleted schedule {name}");
            }
            return Ok(());
        }
        ScheduleCommand::Pause { name } => {
            api.call(
                reqwest::Method::POST,
                &format!("{}/pause", path(&name)),
                None,
            )
            .await?
        }
        ScheduleCommand::Resume { name } => {
            api.call(
                reqwest::Method::POST,
                &format!("{}/resume", path(&name)),
                None,
            )
            .await?
        }
    };
    if json {
        print_json(&value);
    } else {
        print!("{}", schedule_detail(&value));
    }
    Ok(())
}

fn schedules_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["schedules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            vec![
                s["name"].as_str().unwrap_or("").to_string(),
                s["cron"].as_str().map_or_else(
                    || format!("every {}", s["every"].as_str().unwrap_or("?")),
                    str::to_string,
                ),
                s["timezone"].as_str().unwrap_or("").to_string(),
                if s["paused"] == true {
                    "paused".into()
                } else {
                    "active".into()
                },
                s["next_runs"][0].as_str().unwrap_or("-").to_string(),
                s["last_runs"][0]["state"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
                format!("{}/{}", num(&s["missed"]), num(&s["skipped"])),
            ]
        })
        .collect();
    table(
        &[
            "SCHEDULE",
            "RULE",
            "ZONE",
            "STATE",
            "NEXT RUN",
            "LAST",
            "MISSED/SKIPPED",
        ],
        &rows,
    )
}

fn schedule_detail(s: &Value) -> String {
    let mut out = schedules_table(&json!({ "schedules": [s] }));
    out.push_str("\nnext runs:\n");
    for r in s["next_runs"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!("  {}\n", r.as_str().unwrap_or("")));
    }
    let runs: Vec<Vec<String>> = s["last_runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                r["scheduled_at"].as_str().unwrap_or("").to_string(),
                r["task"].as_str().unwrap_or("").to_string(),
                r["state"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    if !runs.is_empty() {
        out.push_str("\nlast runs:\n");
        out.push_str(&table(&["SCHEDULED", "TASK", "STATE"], &runs));
    }
    out
}

/// Past this size the server refuses a component (413).
const PLUGIN_MAX_BYTES: u64 = 50 * 1024 * 1024;

async fn plugin(client: &Client, command: PluginCommand) -> Result<(), Failure> {
    let json = client.json;
    let path = |name: &str, version: &str| format!("/v1/plugins/{}/{}", enc(name), enc(version));
    let value = match command {
        // The only one that needs no server.
        PluginCommand::New { name, dir, sdk } => return plugin_new(&name, dir, sdk, json),
        PluginCommand::Push {
            name,
            version,
            file,
        } => {
            let api = Api::new(client)?;
            return plugin_push(&api, &path(&name, &version), &name, &version, &file, json).await;
        }
        PluginCommand::Ls => {
            let v = Api::new(client)?.get("/v1/plugins").await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", plugins_table(&v));
            }
            return Ok(());
        }
        PluginCommand::Get { name, version } => {
            Api::new(client)?.get(&path(&name, &version)).await?
        }
        PluginCommand::Rm { name, version } => {
            Api::new(client)?
                .call(reqwest::Method::DELETE, &path(&name, &version), None)
                .await?;
            if !json {
                println!("deleted plugin {name} {version}");
            }
            return Ok(());
        }
    };
    if json {
        print_json(&value);
    } else {
        print!("{}", plugin_detail(&value));
    }
    Ok(())
}

async fn plugin_push(
    api: &Api,
    path: &str,
    name: &str,
    version: &str,
    file: &std::path::Path,
    json: bool,
) -> Result<(), Failure> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // Caught here, the common mistakes get a clearer word than the server's.
    check_component(&bytes).map_err(|why| Failure {
        code: 5,
        message: format!("{}: {why}", file.display()),
    })?;
    let size = bytes.len() as u64;
    let request = api
        .request(reqwest::Method::PUT, path)
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .body(bytes);
    let sent = if std::io::stderr().is_terminal() {
        let what = format!(
            "uploading {}, then the server checks and compiles it…",
            human_size(size)
        );
        with_progress(api.send(request), &what).await
    } else {
        api.send(request).await
    };
    let (status, value) = match sent {
        Ok(answer) => answer,
        // A server refusing an oversized body may close the connection before
        // it answers 413.
        Err(f) if size > PLUGIN_MAX_BYTES => {
            return Err(Failure {
                code: 5,
                message: format!(
                    "{} is {}, over the server's limit of {}: {}",
                    file.display(),
                    human_size(size),
                    human_size(PLUGIN_MAX_BYTES),
                    f.message
                ),
            });
        }
        Err(f) => return Err(f),
    };
    if status.is_success() {
        let existed = status == reqwest::StatusCode::OK;
        if json {
            if existed {
                eprintln!("{name} {version} was already there with the same bytes");
            }
            print_json(&value);
        } else {
            if existed {
                println!("{name} {version} was already there with the same bytes: nothing changed");
            } else {
                println!("uploaded {name} {version}");
            }
            print!("{}", plugin_detail(&value));
        }
        return Ok(());
    }
    let mut f = failure(status, &value);
    f.message = match status.as_u16() {
        409 => format!(
            "cannot push {name} {version}: {} (a version never changes: push this file as a new version)",
            f.message
        ),
        413 => format!(
            "cannot push {name} {version}: {} is {}: {}",
            file.display(),
            human_size(size),
            f.message
        ),
        _ => format!("cannot push {name} {version}: {}", f.message),
    };
    Err(f)
}

/// Whether `bytes` look like a component: `\0asm`, a version, then layer 1
/// (a core module, what `wasm32-unknown-unknown` or `wasip1` builds, has
/// layer 0).
fn check_component(bytes: &[u8]) -> Result<(), String> {
    match bytes {
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => Ok(()),
        [0, b'a', b's', b'm', ..] => Err(
            "a core WebAssembly module, not a component: build the plugin with `cargo build --release --target wasm32-wasip2`".into(),
        ),
        _ => Err("not a WebAssembly component (it does not start with \\0asm)".into()),
    }
}

/// Waits for `work`, redrawing `what` and the seconds elapsed on stderr.
async fn with_progress<T>(work: impl std::future::Future<Output = T>, what: &str) -> T {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seconds = 0u64;
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = tick.tick() => {
                eprint!("\r{what} {seconds}s");
                let _ = std::io::stderr().flush();
                seconds += 1;
            }
        }
    };
    eprint!("\r\x1b[K");
    let _ = std::io::stderr().flush();
    result
}

fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{:.1} MiB", b / (KIB * KIB))
    }
}

fn plugins_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                p["name"].as_str().unwrap_or("").to_string(),
                p["version"].as_str().unwrap_or("").to_string(),
                p["size"].as_u64().map_or("-".into(), human_size),
                p["sha256"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(12)
                    .collect(),
                p["uploaded_at"].as_str().unwrap_or("").to_string(),
                num(&p["references"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "VERSION",
            "SIZE",
            "SHA256",
            "UPLOADED (UTC)",
            "REFERENCES",
        ],
        &rows,
    )
}

fn plugin_detail(p: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = String::new();
    for (k, v) in [
        ("name", text(&p["name"])),
        ("version", text(&p["version"])),
        (
            "size",
            p["size"]
                .as_u64()
                .map_or("-".into(), |n| format!("{} ({n} bytes)", human_size(n))),
        ),
        ("sha256", text(&p["sha256"])),
        ("uploaded_at", text(&p["uploaded_at"])),
        ("references", num(&p["references"])),
    ] {
        out.push_str(&format!("{k:<14}{v}\n"));
    }
    let imports = p["imports"].as_array().cloned().unwrap_or_default();
    if !imports.is_empty() {
        out.push_str("imports\n");
        for i in imports {
            out.push_str(&format!("  {}\n", i.as_str().unwrap_or("")));
        }
    }
    out
}

/// The files of a new plugin crate, as templates in which `{{name}}`,
/// `{{lib_name}}` and `{{sdk}}` are filled in.
const PLUGIN_TEMPLATE: [(&str, &str); 5] = [
    (
        "Cargo.toml",
        include_str!("cli/plugin-template/Cargo.toml.in"),
    ),
    ("src/lib.rs", include_str!("cli/plugin-template/lib.rs.in")),
    (
        ".cargo/config.toml",
        include_str!("cli/plugin-template/config.toml.in"),
    ),
    (
        ".gitignore",
        include_str!("cli/plugin-template/gitignore.in"),
    ),
    (
        "README.md",
        include_str!("cli/plugin-template/README.md.in"),
    ),
];

/// Rust's keywords and the crates a plugin's own name must not shadow.
const RESERVED_NAMES: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc-macro",
    "pub",
    "ref",
    "return",
    "self",
    "serde",
    "serde-json",
    "sluice-sdk",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// A plugin's name is also its crate's: lowercase letters, digits and '-',
/// starting with a letter (which the server's plugin names allow too).
fn check_plugin_name(name: &str) -> Result<(), String> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(format!(
            "{name:?} is not a valid plugin name: use lowercase letters, digits and '-', starting with a letter and not ending with '-', at most 64 characters (e.g. \"check-health\")"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "{name:?} cannot name a plugin crate: it is a Rust keyword or a crate the plugin uses"
        ));
    }
    Ok(())
}

/// The `sluice-sdk` line of the new crate's Cargo.toml: `--sdk`, else the SDK
/// of the source tree this binary was built from if it is still there, else
/// crates.io.
fn sdk_dependency(sdk: Option<PathBuf>) -> Result<String, Failure> {
    let is_sdk = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("Cargo.toml"))
            .is_ok_and(|manifest| manifest.contains("name = \"sluice-sdk\""))
    };
    let local = match sdk {
        Some(given) => {
            let dir = std::fs::canonicalize(&given)
                .ok()
                .filter(|dir| is_sdk(dir))
                .ok_or_else(|| Failure {
                    code: 2,
                    message: format!(
                        "--sdk {}: not the SDK's directory (no Cargo.toml of sluice-sdk there)",
                        given.display()
                    ),
                })?;
            Some(dir)
        }
        None => std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk"))
            .ok()
            .filter(|dir| is_sdk(dir)),
    };
    let Some(dir) = local else {
        return Ok(
            "# From crates.io; `sluice plugin new --sdk PATH` uses a source tree's sdk/ instead.\nsluice-sdk = \"0.1\""
                .into(),
        );
    };
    let text = dir.to_str().ok_or_else(|| Failure {
        code: 2,
        message: format!("the SDK's path {} is not UTF-8", dir.display()),
    })?;
    Ok(format!(
        "sluice-sdk = {{ path = {} }}",
        toml::Value::String(text.to_string())
    ))
}

fn render_plugin(template: &str, name: &str, sdk: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{lib_name}}", &name.replace('-', "_"))
        .replace("{{sdk}}", sdk)
}

fn plugin_new(
    name: &str,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
    json: bool,
) -> Result<(), Failure> {
    check_plugin_name(name).map_err(|message| Failure { code: 2, message })?;
    let sdk = sdk_dependency(sdk)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    match std::fs::metadata(&dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(Failure {
                code: 4,
                message: format!("{} exists and is not a directory", dir.display()),
            });
        }
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
            if entries.next().is_some() {
                return Err(Failure {
                    code: 4,
                    message: format!(
                        "{} exists and is not empty: choose another --dir",
                        dir.display()
                    ),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("reading {}", dir.display()))
                .into());
        }
    }
    for (file, template) in PLUGIN_TEMPLATE {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(render_plugin(template, name, &sdk).as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let wasm = format!(
        "target/wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    );
    let files: Vec<&str> = PLUGIN_TEMPLATE.iter().map(|(file, _)| *file).collect();
    if json {
        print_json(&json!({
            "name": name,
            "dir": dir.display().to_string(),
            "files": files,
            "wasm": wasm,
        }));
    } else {
        println!("created plugin crate {name} in {}", dir.display());
        for file in files {
            println!("  {file}");
        }
        println!("\nnext:");
        println!("  cd {}", dir.display());
        println!("  cargo build --release --target wasm32-wasip2");
        println!("  sluice plugin push {name} 0.1.0 {wasm}");
    }
    Ok(())
}

async fn status(api: &Api, watch: bool, json: bool) -> Result<(), Failure> {
    loop {
        let v = api.get("/v1/gates").await?;
        if json {
            for g in v["gates"].as_array().cloned().unwrap_or_default() {
                println!("{}", serde_json::to_string(&g).unwrap_or_default());
            }
        } else {
            let table = status_table(&v);
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{table}");
        }
        if !watch {
            // Scripts can tell a tripped circuit from the exit code.
            let tripped = v["gates"]
                .as_array()
                .is_some_and(|gs| gs.iter().any(|g| g["state"] == "tripped"));
            if tripped {
                return Err(Failure {
                    code: 6,
                    message: "a gate's circuit is open".into(),
                });
            }
            return Ok(());
        }
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Renders rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut parts = Vec::new();
        for (i, c) in cells.iter().enumerate() {
            parts.push(format!("{c:<width$}", width = widths[i]));
        }
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn num(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::Null => "-".into(),
        other => other.as_str().unwrap_or("-").to_string(),
    }
}

fn age(secs: f64) -> String {
    if secs <= 0.0 {
        "-".into()
    } else if secs < 60.0 {
        format!("{secs:.0}s")
    } else if secs < 3_600.0 {
        format!("{:.0}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3_600.0)
    }
}

fn gates_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["gates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|g| {
            vec![
                g["name"].as_str().unwrap_or("").to_string(),
                g["state"].as_str().unwrap_or("").to_string(),
                g["rate"].as_str().unwrap_or("").to_string(),
                num(&g["burst"]),
                num(&g["concurrency"]),
                g["allowed_hosts"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|h| h.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "(any public)".into()),
            ]
        })
        .collect();
    table(
        &["GATE", "STATE", "RATE", "BURST", "CONCURRENCY", "HOSTS"],
        &rows,
    )
}

fn status_table(v: &Value) -> String {
    let gates = v["gates"].as_array().cloned().unwrap_or_default();
    let backlog: u64 = gates.iter().filter_map(|g| g["backlog"].as_u64()).sum();
    let in_flight: u64 = gates.iter().filter_map(|g| g["in_flight"].as_u64()).sum();
    let mut out = format!(
        "{} gates, {} pending, {} in flight (at {})\n",
        gates.len(),
        backlog,
        in_flight,
        crate::dispatch::rfc3339(crate::clock::now())
    );
    let rows: Vec<Vec<String>> = gates
        .iter()
        .map(|g| {
            let state = g["state"].as_str().unwrap_or("");
            let eff = g["effective_rate"].as_f64().unwrap_or(0.0);
            vec![
                g["name"].as_str().unwrap_or("").to_string(),
                match state {
                    "paused" => "paused (paused)".to_string(),
                    "tripped" => "tripped (open)".to_string(),
                    s => s.to_string(),
                },
                num(&g["backlog"]),
                num(&g["due"]),
                age(g["oldest_due_age_s"].as_f64().unwrap_or(0.0)),
                format!("{}/{}", num(&g["in_flight"]), num(&g["concurrency"])),
                format!("{}/{}", format_rate(eff), g["rate"].as_str().unwrap_or("")),
                format!(
                    "{}/{}",
                    num(&g["recent"]["5m"]["succeeded"]),
                    num(&g["recent"]["5m"]["failed"])
                ),
                g["eta_drain_s"].as_f64().map_or("-".into(), age),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "GATE",
            "STATE",
            "BACKLOG",
            "DUE",
            "AGE",
            "INFLIGHT/LIMIT",
            "RATE(EFF/CONF)",
            "OK/FAIL(5m)",
            "ETA",
        ],
        &rows,
    ));
    out
}

fn format_rate(per_s: f64) -> String {
    crate::core::Rate::per_second(per_s).map_or("0".into(), |r| r.to_string())
}

fn tasks_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            vec![
                t["id"].as_str().unwrap_or("").to_string(),
                t["gate"].as_str().unwrap_or("").to_string(),
                t["state"].as_str().unwrap_or("").to_string(),
                format!("{}/{}", num(&t["attempt_count"]), num(&t["max_attempts"])),
                t["due_at"].as_str().unwrap_or("").to_string(),
                t["webhook"]["url"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &["ID", "GATE", "STATE", "ATTEMPTS", "DUE (UTC)", "URL"],
        &rows,
    );
    if let Some(c) = v["next_cursor"].as_str() {
        out.push_str(&format!("more: --cursor {c}\n"));
    }
    out
}

fn task_detail(t: &Value) -> String {
    let mut out = String::new();
    let field = |k: &str, v: &Value, out: &mut String| {
        if !v.is_null() {
            out.push_str(&format!(
                "{k:<14}{}\n",
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            ));
        }
    };
    for k in [
        "id",
        "gate",
        "state",
        "schedule",
        "parent",
        "scheduled_at",
        "due_at",
        "created_at",
        "finished_at",
        "last_error",
    ] {
        field(k, &t[k], &mut out);
    }
    field("url", &t["webhook"]["url"], &mut out);
    out.push_str(&format!(
        "{:<14}{}/{}\n",
        "attempts",
        num(&t["attempt_count"]),
        num(&t["max_attempts"])
    ));
    let rows: Vec<Vec<String>> = t["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            vec![
                num(&a["attempt"]),
                a["started_at"].as_str().unwrap_or("").to_string(),
                match (a["outcome"].as_str(), a["lease_until"].as_str()) {
                    (Some("leased"), Some(until)) => {
                        let progress = if a["progress"].is_null() {
                            String::new()
                        } else {
                            format!(", progress {}", a["progress"])
                        };
                        format!("leased until {until}{progress}")
                    }
                    (o, _) => o.unwrap_or("").to_string(),
                },
                num(&a["status"]),
                a["latency_ms"]
                    .as_u64()
                    .map_or("-".into(), |l| format!("{l}ms")),
                a["error"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "#",
                "STARTED (UTC)",
                "OUTCOME",
                "STATUS",
                "LATENCY",
                "ERROR",
            ],
            &rows,
        ));
    }
    out
}
