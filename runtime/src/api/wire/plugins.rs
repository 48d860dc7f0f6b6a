//! The plugin registry: `PluginView`.

use super::*;

/// A plugin version in the registry.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    /// Bytes of the component.
    pub size: u64,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    #[schema(format = DateTime)]
    pub uploaded_at: String,
    /// What the component imports (all within the `sluice:task` world).
    pub imports: Vec<String>,
    /// Unfinished tasks and schedules that run it; it cannot be deleted while
    /// this is above zero.
    pub references: u64,
    /// Linear memory (MiB) its upload asked for (64 unless it asked for
    /// more); each attempt gets this, or the server's `plugin_memory_max` if
    /// that was lowered since.
    pub memory_mib: u32,
}

impl PluginView {
    pub fn new(p: &PluginRecord, schedules: u64) -> PluginView {
        PluginView {
            name: p.name.clone(),
            version: p.version.clone(),
            size: p.size,
            sha256: p.sha256.clone(),
            uploaded_at: time(p.uploaded_at),
            imports: p.imports.clone(),
            references: p.unfinished + schedules,
            memory_mib: p.memory_mib.unwrap_or(crate::plugin::DEFAULT_MEMORY_MIB),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginView>,
}
