//! Server settings: flags win over `SLUICE_*` environment variables, which win
//! over the TOML file given with `--config`, which wins over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::api::auth::{TokenEntry, Tokens};
use crate::core::parse_duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7460";
pub const DEFAULT_DATA_DIR: &str = "./sluice-data";
/// The shortest `retention`: SPEC §1 keeps an idempotency key at least 24 h
/// after its task ends, and pruning a task frees its key.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The `--config` file. Every key is optional.
#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// How long shutdown waits for attempts in flight, e.g. `"10s"`.
    pub shutdown_grace: Option<String>,
    /// Standard Webhooks secrets for gates without their own.
    pub signing_secrets: Option<Vec<String>>,
    /// API tokens, as `sluice token new` prints them.
    pub tokens: Option<Vec<TokenConfig>>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// When set, the only hosts any outgoing request may reach, whatever a
    /// gate allows (patterns as in a gate's `allowed_hosts`).
    pub outbound_hosts: Option<Vec<String>>,
    /// How long finished tasks and their history are kept, e.g. `"7d"`.
    pub retention: Option<String>,
    /// Plugin attempts that may run at once (each reserves an instance slot
    /// with its memory); more wait for a slot.
    pub plugin_instances: Option<u32>,
    /// The most memory (MiB) a plugin may ask for at upload.
    pub plugin_memory_max: Option<u32>,
    /// Most tasks one root task's `next` chain may create, all generations.
    pub max_descendants: Option<u32>,
    /// `postgres://…`: the data in PostgreSQL instead of the data dir's file.
    pub store: Option<String>,
    /// In a cluster, the URL other nodes reach this one at.
    pub advertise: Option<String>,
}

/// One `[[tokens]]` entry of the config file.
#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: String,
    pub hash: String,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }
}

/// What the command line (flags and environment, via clap) gave.
#[derive(Debug, Default)]
pub struct Flags {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub grace: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub retention: Option<String>,
    pub config: Option<PathBuf>,
    pub store: Option<String>,
    pub advertise: Option<String>,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub grace: Duration,
    /// Server-wide Standard Webhooks secrets (`whsec_…`).
    pub signing_secrets: Vec<String>,
    /// API tokens; empty means no auth, on loopback only.
    pub tokens: Tokens,
    pub tls: Option<TlsFiles>,
    /// Empty: no server-wide limit beyond the gates' own rules.
    pub outbound_hosts: Vec<String>,
    /// Finished tasks and their attempts are removed this long after they end.
    pub retention: Duration,
    /// Plugin attempts at once (instance slots of the pooling allocator).
    pub plugin_instances: u32,
    /// The most linear memory (MiB) a plugin may ask for at upload; each
    /// instance slot reserves this much address space.
    pub plugin_memory_max: u32,
    /// Most descendants a root task may have through `next` (SPEC §1).
    pub max_descendants: u32,
    /// A PostgreSQL URL; `None` keeps the data in `data_dir`'s redb file.
    pub store: Option<String>,
    /// In a cluster, the URL other nodes forward requests to (default: the
    /// scheme and the address listened on).
    pub advertise: Option<String>,
}

pub use crate::shell::DEFAULT_MAX_DESCENDANTS;

/// A numeric environment variable, if set; a value that is not a number is
/// an error naming the variable.
fn env_number(name: &str) -> anyhow::Result<Option<u32>> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{name}={text:?} is not a whole number")),
        Err(_) => Ok(None),
    }
}

/// A comma-separated environment variable, if set.
fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|list| {
        list.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

impl ServerConfig {
    /// A server on `listen` with everything else at its default: no tokens, no
    /// TLS, no signing secrets.
    pub fn local(data_dir: PathBuf, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            data_dir,
            listen,
            grace: Duration::from_secs(10),
            signing_secrets: Vec::new(),
            tokens: Tokens::default(),
            tls: None,
            outbound_hosts: Vec::new(),
            retention: crate::shell::DEFAULT_RETENTION,
            plugin_instances: crate::plugin::DEFAULT_INSTANCES,
            plugin_memory_max: crate::plugin::DEFAULT_MEMORY_MIB,
            max_descendants: DEFAULT_MAX_DESCENDANTS,
            store: None,
            advertise: None,
        }
    }

    /// Merges the flags with the environment and the file.
    pub fn resolve(flags: Flags) -> anyhow::Result<ServerConfig> {
        let file = match &flags.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let listen_text = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().with_context(|| {
            format!("--listen {listen_text:?} is not an address like 127.0.0.1:7460")
        })?;
        let grace_text = flags
            .grace
            .or(file.shutdown_grace)
            .unwrap_or_else(|| "10s".into());
        let grace = parse_duration(&grace_text)
            .with_context(|| format!("shutdown grace {grace_text:?}"))?;
        let signing_secrets = env_list("SLUICE_SIGNING_SECRETS")
            .or(file.signing_secrets)
            .unwrap_or_default();
        // SLUICE_TOKENS is `name:role:sha256:<hex>`, comma-separated.
        let token_entries = match env_list("SLUICE_TOKENS") {
            Some(list) => list
                .iter()
                .map(|item| {
                    let mut parts = item.splitn(3, ':');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(name), Some(role), Some(hash)) => TokenEntry::new(name, role, hash),
                        _ => Err("SLUICE_TOKENS entries are name:role:sha256:<hex>".to_string()),
                    }
                })
                .collect::<Result<Vec<_>, String>>(),
            None => file
                .tokens
                .unwrap_or_default()
                .iter()
                .map(|t| TokenEntry::new(&t.name, &t.role, &t.hash))
                .collect(),
        }
        .map_err(|e| anyhow::anyhow!("tokens: {e}"))?;
        let tls = match (
            flags.tls_cert.or(file.tls_cert),
            flags.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => bail!("TLS needs both --tls-cert and --tls-key"),
        };
        let retention = match flags.retention.or(file.retention) {
            Some(text) => parse_duration(&text).with_context(|| format!("retention {text:?}"))?,
            None => crate::shell::DEFAULT_RETENTION,
        };
        if retention < MIN_RETENTION {
            bail!(
                "retention must be at least 1d: a task's idempotency key goes with it, and is kept a day after it ends"
            );
        }
        let outbound_hosts = env_list("SLUICE_OUTBOUND_HOSTS")
            .or(file.outbound_hosts)
            .unwrap_or_default();
        let plugin_instances = env_number("SLUICE_PLUGIN_INSTANCES")?
            .or(file.plugin_instances)
            .unwrap_or(crate::plugin::DEFAULT_INSTANCES);
        let plugin_memory_max = env_number("SLUICE_PLUGIN_MEMORY_MAX")?
            .or(file.plugin_memory_max)
            .unwrap_or(crate::plugin::DEFAULT_MEMORY_MIB);
        let max_descendants = env_number("SLUICE_MAX_DESCENDANTS")?
            .or(file.max_descendants)
            .unwrap_or(DEFAULT_MAX_DESCENDANTS);
        let config = ServerConfig {
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            listen,
            grace,
            signing_secrets,
            tokens: Tokens::new(token_entries),
            tls,
            outbound_hosts,
            retention,
            plugin_instances,
            plugin_memory_max,
            max_descendants,
            store: flags.store.or(file.store),
            advertise: flags.advertise.or(file.advertise),
        };
        config.check()?;
        Ok(config)
    }

    /// Refuses settings that cannot work, or that would expose an open API.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(1..=crate::plugin::DEFAULT_INSTANCES).contains(&self.plugin_instances) {
            bail!(
                "plugin_instances must be between 1 and {}",
                crate::plugin::DEFAULT_INSTANCES
            );
        }
        let memory = crate::plugin::DEFAULT_MEMORY_MIB..=crate::plugin::MAX_MEMORY_MIB;
        if !memory.contains(&self.plugin_memory_max) {
            bail!(
                "plugin_memory_max must be between {} and {} (MiB)",
                memory.start(),
                memory.end()
            );
        }
        for secret in &self.signing_secrets {
            crate::attempt::sign::SigningKey::parse(secret)
                .map_err(|e| anyhow::anyhow!("signing_secrets: {e}"))?;
        }
        if let Some(url) = &self.advertise {
            let parsed = url::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("advertise: {url:?} is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                bail!("advertise: {url:?} must be an http(s) URL with a host");
            }
        }
        if self.tokens.is_empty() && !self.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {}: no API tokens are configured, so the server only listens on loopback (127.0.0.1 or ::1); create one with `sluice token new` and add it to the config",
                self.listen
            );
        }
        Ok(())
    }
}

/// One server setting as `docs/config.md` lists it: where it can be given
/// (file key, flag, environment variable), its default, and what it does.
/// `tests/all/ops.rs` checks this list against the flags `sluice serve`
/// takes and the keys the config file accepts, and the document against it.
pub struct Setting {
    pub key: Option<&'static str>,
    pub flag: Option<&'static str>,
    pub env: Option<&'static str>,
    pub default: String,
    pub help: &'static str,
}

/// Every setting of `sluice serve`, in the order the reference lists them.
pub fn settings() -> Vec<Setting> {
    let setting = |key, flag, env, default: &str, help| Setting {
        key,
        flag,
        env,
        default: default.to_string(),
        help,
    };
    let days = crate::shell::DEFAULT_RETENTION.as_secs() / 86_400;
    vec![
        setting(
            None,
            Some("--config"),
            Some("SLUICE_CONFIG"),
            "",
            "A TOML file with any of the keys below.",
        ),
        setting(
            Some("data_dir"),
            Some("--data-dir"),
            Some("SLUICE_DATA_DIR"),
            DEFAULT_DATA_DIR,
            "Directory of the data file (`sluice.redb`), created if missing.",
        ),
        setting(
            Some("store"),
            Some("--store"),
            Some("SLUICE_STORE"),
            "",
            "`postgres://user@host:port/db`: keep the data in PostgreSQL (schema `sluice`, created if missing) instead of the data dir's file. Back it up with PostgreSQL's tools. Beyond loopback, TLS: `sslmode=verify-full` (the certificate is always verified; `sslrootcert=/path/ca.pem` for a private CA), or `sslmode=disable` for a trusted network.",
        ),
        setting(
            Some("advertise"),
            Some("--advertise"),
            Some("SLUICE_ADVERTISE"),
            "",
            "In a cluster (`store` on PostgreSQL): the URL other nodes forward API requests to, like `http://10.0.0.7:7070`. Default: the scheme and the address listened on.",
        ),
        setting(
            Some("listen"),
            Some("--listen"),
            Some("SLUICE_LISTEN"),
            DEFAULT_LISTEN,
            "Address and port of the API and dashboard. Beyond loopback only with API tokens.",
        ),
        setting(
            Some("shutdown_grace"),
            Some("--shutdown-grace"),
            Some("SLUICE_SHUTDOWN_GRACE"),
            "10s",
            "How long a stop (SIGTERM, Ctrl-C) waits for attempts in flight; what is still running then is retried after the restart.",
        ),
        setting(
            Some("tls_cert"),
            Some("--tls-cert"),
            Some("SLUICE_TLS_CERT"),
            "",
            "Serve HTTPS with this PEM certificate chain (with `tls_key`).",
        ),
        setting(
            Some("tls_key"),
            Some("--tls-key"),
            Some("SLUICE_TLS_KEY"),
            "",
            "The PEM private key of `tls_cert`.",
        ),
        setting(
            Some("retention"),
            Some("--retention"),
            Some("SLUICE_RETENTION"),
            &format!("{days}d"),
            "How long finished tasks and their attempts are kept; at least 1d (a task's idempotency key goes with it, and is kept a day after it ends).",
        ),
        setting(
            None,
            Some("--log-format"),
            Some("SLUICE_LOG_FORMAT"),
            "text",
            "`text`, or `json`: one object per line (timestamp, level, target, message, fields, and `span.request_id` on API calls).",
        ),
        setting(
            None,
            None,
            Some("SLUICE_LOG"),
            "info",
            "Which log lines to write, as a tracing filter: `debug`, `warn,sluice=info`, ...",
        ),
        setting(
            Some("tokens"),
            None,
            Some("SLUICE_TOKENS"),
            "",
            "API tokens as `sluice token new` prints them: `[[tokens]]` tables with `name`, `role` (admin, writer, reader) and `hash`; in the environment, comma-separated `name:role:sha256:<hex>`. None: the API is open, on loopback only.",
        ),
        setting(
            Some("signing_secrets"),
            None,
            Some("SLUICE_SIGNING_SECRETS"),
            "",
            "Standard Webhooks secrets (`whsec_...`) for gates without their own; each one signs every delivery (one signature per secret), so a secret can be rotated without a gap. Comma-separated in the environment.",
        ),
        setting(
            Some("outbound_hosts"),
            None,
            Some("SLUICE_OUTBOUND_HOSTS"),
            "",
            "When set, the only hosts any webhook or plugin request may reach, whatever a gate allows (`host`, `host:port`, `*.domain`). Comma-separated in the environment.",
        ),
        setting(
            Some("plugin_instances"),
            None,
            Some("SLUICE_PLUGIN_INSTANCES"),
            &crate::plugin::DEFAULT_INSTANCES.to_string(),
            "Plugin attempts that may run at once; more wait for a slot. Each slot reserves address space for its memory.",
        ),
        setting(
            Some("plugin_memory_max"),
            None,
            Some("SLUICE_PLUGIN_MEMORY_MAX"),
            &crate::plugin::DEFAULT_MEMORY_MIB.to_string(),
            "The most linear memory, in MiB, a plugin may ask for at upload (`memory`, for plugins that need more than the default 64), at most 512. Each instance slot reserves address space (not memory) for two memories of this size.",
        ),
        setting(
            Some("max_descendants"),
            None,
            Some("SLUICE_MAX_DESCENDANTS"),
            &DEFAULT_MAX_DESCENDANTS.to_string(),
            "Most tasks one root task's `next` chains may create, all generations together.",
        ),
        setting(
            None,
            None,
            Some("TOKIO_WORKER_THREADS"),
            "cores - 1",
            "Async worker threads; the scheduler's driver has a thread of its own beside them.",
        ),
    ]
}

/// `docs/config.md`, generated from [`settings`].
pub fn reference() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the code (`sluice::config::settings`); `tests/all/ops.rs`\n\
         fails when this file, the flags of `sluice serve` or the keys of the\n\
         config file drift apart. Regenerate with\n\
         `SLUICE_BLESS=1 cargo test --test all config_reference`.\n\n\
         A flag wins over its environment variable, which wins over the key in\n\
         the `--config` file, which wins over the default. Durations are written\n\
         like `500ms`, `30s`, `10m`, `2h`, `7d`.\n\n\
         | File key | Flag | Environment | Default | What it does |\n\
         |---|---|---|---|---|\n",
    );
    let cell = |v: Option<&str>| v.map_or_else(|| "-".to_string(), |v| format!("`{v}`"));
    for s in settings() {
        let default = if s.default.is_empty() {
            "-".to_string()
        } else {
            format!("`{}`", s.default)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            cell(s.key),
            cell(s.flag),
            cell(s.env),
            default,
            s.help
        ));
    }
    out.push_str(
        "\nAn example file:\n\n\
         ```toml\n\
         data_dir = \"/var/lib/sluice\"\n\
         listen = \"0.0.0.0:7460\"\n\
         shutdown_grace = \"30s\"\n\
         retention = \"14d\"\n\
         outbound_hosts = [\"api.example.com\", \"*.hooks.example.com\"]\n\
         \n\
         [[tokens]]\n\
         name = \"ops\"\n\
         role = \"admin\"\n\
         hash = \"sha256:<from sluice token new>\"\n\
         ```\n",
    );
    out
}
