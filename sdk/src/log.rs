//! Lines for the attempt's history, through the world's `log` import.
//!
//! The host keeps them with the attempt and caps them (line length and total
//! per attempt); past the cap lines are dropped, and the history says how
//! many. Logging never fails and never blocks. The macros [`trace!`],
//! [`debug!`], [`info!`], [`warn!`] and [`error!`] take `format!` arguments.
//!
//! [`trace!`]: crate::trace
//! [`debug!`]: crate::debug
//! [`info!`]: crate::info
//! [`warn!`]: crate::warn
//! [`error!`]: crate::error

use crate::wit::sluice::task::log as host;

/// How important a line is.
///
/// ```no_run
/// sluice_sdk::log::write(sluice_sdk::log::Level::Warn, "quota at 90%");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Step-by-step detail.
    Trace,
    /// Detail for whoever debugs the plugin.
    Debug,
    /// What the plugin did.
    Info,
    /// Something odd that did not stop it.
    Warn,
    /// Something that went wrong.
    Error,
}

/// Appends one line to the attempt's log.
///
/// ```no_run
/// sluice_sdk::log::write(sluice_sdk::log::Level::Info, "starting");
/// ```
pub fn write(level: Level, message: &str) {
    let level = match level {
        Level::Trace => host::Level::Trace,
        Level::Debug => host::Level::Debug,
        Level::Info => host::Level::Info,
        Level::Warn => host::Level::Warn,
        Level::Error => host::Level::Error,
    };
    host::log(level, message);
}

/// Logs at [`Level::Trace`], with `format!` arguments.
///
/// ```no_run
/// sluice_sdk::trace!("page {} of {}", 2, 9);
/// ```
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Trace, &::std::format!($($arg)+)) };
}

/// Logs at [`Level::Debug`], with `format!` arguments.
///
/// ```no_run
/// sluice_sdk::debug!("{} apps listed", 40);
/// ```
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Debug, &::std::format!($($arg)+)) };
}

/// Logs at [`Level::Info`], with `format!` arguments.
///
/// ```no_run
/// let id = "app-7";
/// sluice_sdk::info!("hibernated {id}");
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Info, &::std::format!($($arg)+)) };
}

/// Logs at [`Level::Warn`], with `format!` arguments.
///
/// ```no_run
/// sluice_sdk::warn!("{} has no owner tag", "i-42");
/// ```
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Warn, &::std::format!($($arg)+)) };
}

/// Logs at [`Level::Error`], with `format!` arguments.
///
/// ```no_run
/// sluice_sdk::error!("could not hibernate {}: {}", "app-7", "409 conflict");
/// ```
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Error, &::std::format!($($arg)+)) };
}
