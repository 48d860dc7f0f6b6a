//! Server settings: flags win over `SLUICE_*` environment variables, which win
//! over the TOML file given with `--config`, which wins over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::core::parse_duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7460";
pub const DEFAULT_DATA_DIR: &str = "./sluice-data";

/// The `--config` file. Every key is optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// How long shutdown waits for attempts in flight, e.g. `"10s"`.
    pub shutdown_grace: Option<String>,
    /// Standard Webhooks secrets for gates without their own.
    pub signing_secrets: Option<Vec<String>>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub grace: Duration,
    /// Server-wide Standard Webhooks secrets (`whsec_…`).
    pub signing_secrets: Vec<String>,
}

impl ServerConfig {
    /// Merges what the command line (flags and environment, via clap) gave with
    /// the file.
    pub fn resolve(
        data_dir: Option<PathBuf>,
        listen: Option<String>,
        grace: Option<String>,
        file: Option<&Path>,
    ) -> anyhow::Result<ServerConfig> {
        let file = match file {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let listen_text = listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().with_context(|| {
            format!("--listen {listen_text:?} is not an address like 127.0.0.1:7460")
        })?;
        let grace_text = grace
            .or(file.shutdown_grace)
            .unwrap_or_else(|| "10s".into());
        let grace = parse_duration(&grace_text)
            .with_context(|| format!("shutdown grace {grace_text:?}"))?;
        let signing_secrets = match std::env::var("SLUICE_SIGNING_SECRETS") {
            Ok(list) => list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            Err(_) => file.signing_secrets.unwrap_or_default(),
        };
        let config = ServerConfig {
            data_dir: data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            listen,
            grace,
            signing_secrets,
        };
        config.check()?;
        Ok(config)
    }

    /// With no API tokens (there are none yet) the server listens on loopback only.
    pub fn check(&self) -> anyhow::Result<()> {
        for secret in &self.signing_secrets {
            crate::dispatch::sign::SigningKey::parse(secret)
                .map_err(|e| anyhow::anyhow!("signing_secrets: {e}"))?;
        }
        if !self.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {}: no API tokens are configured, so the server only listens on loopback (127.0.0.1 or ::1)",
                self.listen
            );
        }
        Ok(())
    }
}
