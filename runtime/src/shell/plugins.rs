//! The plugin registry's writes: uploads and deletions go through the driver,
//! like every write, so a deletion and a task that starts to use the plugin
//! cannot pass each other. Versions are immutable; a plugin still used by an
//! unfinished task or a schedule cannot be deleted.

use std::collections::BTreeSet;

use super::{Command, Engine, ShellError, Turn};
use crate::store::{PluginRecord, StoreError, plugin_key};

/// An upload that passed the audit and compiled.
pub struct Upload {
    pub record: PluginRecord,
    pub wasm: Vec<u8>,
    /// The compiled artifact and the engine hash it is valid for.
    pub artifact: Vec<u8>,
    pub engine: u64,
}

impl Engine {
    /// Where several nodes write one store: locks the plugins this turn's
    /// uploads and deletions name, in key order and before the turn's other
    /// locks, and takes each as stored (another node may have added or
    /// deleted it since this engine last looked). Each lock holds to the
    /// commit, so a concurrent upload or deletion of it goes after this
    /// turn; taken in the order of the commands, two nodes with the same
    /// two in opposite orders would wait on each other (a deadlock that
    /// PostgreSQL breaks by failing one commit, and that node's engine).
    pub(super) fn lock_plugins_first(
        &mut self,
        turn: &mut Turn<'_>,
        commands: &[Command],
    ) -> Result<(), StoreError> {
        if !self.shares_writers {
            return Ok(());
        }
        let keys: BTreeSet<String> = commands
            .iter()
            .filter_map(|command| match command {
                Command::PutPlugin { upload, .. } => {
                    Some(plugin_key(&upload.record.name, &upload.record.version))
                }
                Command::DeletePlugin { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        for key in keys {
            match turn.tx.lock_plugin(&key)? {
                Some(stored) => {
                    self.plugins.insert(key, stored);
                }
                None => {
                    self.plugins.remove(&key);
                }
            }
        }
        Ok(())
    }

    pub(super) fn put_plugin(
        &mut self,
        turn: &mut Turn<'_>,
        upload: Upload,
    ) -> Result<Result<(PluginRecord, bool), ShellError>, StoreError> {
        // Where nodes share the store, `lock_plugins_first` locked the key
        // and read what is stored.
        let key = plugin_key(&upload.record.name, &upload.record.version);
        if let Some(existing) = self.plugins.get(&key) {
            if existing.sha256 == upload.record.sha256
                && existing.memory_mib == upload.record.memory_mib
            {
                return Ok(Ok((existing.clone(), false)));
            }
            if existing.sha256 == upload.record.sha256 {
                let mib = |m: Option<u32>| m.unwrap_or(crate::plugin::DEFAULT_MEMORY_MIB);
                return Ok(Err(ShellError::Conflict(format!(
                    "plugin {key} already exists with {}MiB of memory; versions are immutable, upload a new version to change it",
                    mib(existing.memory_mib)
                ))));
            }
            return Ok(Err(ShellError::Conflict(format!(
                "plugin {key} already exists with other contents (sha256 {}); versions are immutable, upload a new version",
                existing.sha256
            ))));
        }
        turn.tx.put_plugin(&upload.record)?;
        turn.tx.put_plugin_wasm(&key, &upload.wasm)?;
        turn.tx
            .put_compiled(&key, upload.engine, &upload.artifact)?;
        self.plugins.insert(key, upload.record.clone());
        Ok(Ok((upload.record, true)))
    }

    pub(super) fn delete_plugin(
        &mut self,
        turn: &mut Turn<'_>,
        key: &str,
    ) -> Result<Result<(), ShellError>, StoreError> {
        // Where nodes share the store, `lock_plugins_first` locked the key
        // (creates on other nodes wait, and its stored count includes
        // theirs) and read what is stored.
        let Some(plugin) = self.plugins.get(key) else {
            return Ok(Err(ShellError::NotFound {
                what: format!("plugin {key}"),
            }));
        };
        // Every schedule that runs it, those of gates other nodes run too.
        let stored;
        let all = if self.shares_writers {
            stored = turn.tx.schedules()?;
            stored.iter().collect::<Vec<_>>()
        } else {
            self.schedules.values().collect()
        };
        let schedules: Vec<&str> = all
            .into_iter()
            .filter(|s| s.template.plugin.as_ref().is_some_and(|p| p.key() == key))
            .map(|s| s.name.as_str())
            .collect();
        let mut users = Vec::new();
        if plugin.unfinished > 0 {
            users.push(format!("{} unfinished tasks", plugin.unfinished));
        }
        if !schedules.is_empty() {
            users.push(format!("schedules {schedules:?}"));
        }
        if !users.is_empty() {
            return Ok(Err(ShellError::Conflict(format!(
                "plugin {key} is used by {}; let the tasks finish (or cancel them) and change the schedules first",
                users.join(" and ")
            ))));
        }
        turn.tx.delete_plugin(key)?;
        self.plugins.remove(key);
        Ok(Ok(()))
    }
}
