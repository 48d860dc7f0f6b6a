//! A build without the `plugins` feature (the fuzz targets): the same API, and
//! every plugin task fails as denied. Keeps wasmtime out of sanitizer builds.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{PermitMessage, PluginError};
use crate::attempt::{Plan, Report};
use crate::dispatch::Dispatcher;
use crate::store::Backend;

pub struct Compiled {
    pub sha256: String,
    pub imports: Vec<String>,
    pub artifact: Vec<u8>,
}

pub struct Host;

impl Host {
    pub fn new(
        _store: Arc<dyn Backend>,
        _instances: u32,
        _memory_max_mib: u32,
    ) -> Result<Arc<Host>, PluginError> {
        Ok(Arc::new(Host))
    }

    pub fn memory_max_mib(&self) -> u32 {
        0
    }

    pub fn engine_hash(&self) -> u64 {
        0
    }

    pub fn compilations(&self) -> u64 {
        0
    }

    pub fn compile(&self, _wasm: &[u8]) -> Result<Compiled, PluginError> {
        Err(PluginError::Link(
            "this build of sluice has no plugin runtime".into(),
        ))
    }

    pub fn install(&self, _key: &str, _compiled: &Compiled, _memory_mib: Option<u32>) {}

    pub fn evict(&self, _key: &str) {}

    pub async fn run(
        self: Arc<Self>,
        plan: Plan,
        _dispatcher: Dispatcher,
        _permits: mpsc::UnboundedSender<PermitMessage>,
    ) -> Report {
        super::unavailable(plan)
    }
}
