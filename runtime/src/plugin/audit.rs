//! The upload check: a plugin may import only what the `sluice:task` world
//! grants and must export its handler. Pure, over the names a component's type
//! lists, so every refusal is testable without compiling anything.
//!
//! Names are compared by interface, ignoring the patch version: WASI `0.2.x` and
//! `sluice:task` `0.1.x` are semver-compatible lines the host links to the
//! newest it has.
//!
//! The file system and sockets are admitted but inert ([`INERT`]): language
//! runtimes import them whether or not a plugin uses them (CPython's does),
//! and the host links implementations that grant nothing.

/// Interfaces a plugin may import, without their version.
const GRANTED: &[&str] = &[
    "sluice:task/log",
    "wasi:http/outgoing-handler",
    "wasi:http/types",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// Interfaces a plugin may import that the host links inert: no directory is
/// ever preopened, so no file can be named, and TCP, UDP and name lookups are
/// refused before any socket exists. The network stays `wasi:http`, bound to
/// the gate.
pub const INERT: &[&str] = &[
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// The export every plugin must have.
pub const HANDLER: &str = "sluice:task/handler";

/// Why an upload was refused. The message names what is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("the component imports {0}, which the sluice:task world does not grant{why}", why = refusal_reason(.0))]
    Forbidden(String),
    #[error("the component imports {name} at version {version}; this host serves {line}")]
    Version {
        name: String,
        version: String,
        line: &'static str,
    },
    #[error(
        "the component does not export {HANDLER}@0.1.x; build it with the sluice-sdk crate (export!) for the sluice:task world"
    )]
    NoHandler,
}

/// Splits `pkg:ns/iface@1.2.3` into name and version.
fn split(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (name, None),
    }
}

/// The version line this host serves for a package, as `(major, minor)` of 0.x.
fn line_of(name: &str) -> (&'static str, u64) {
    if name.starts_with("sluice:task/") {
        ("0.1.x", 1)
    } else {
        ("0.2.x", 2)
    }
}

fn compatible(version: &str, minor: u64) -> bool {
    let mut parts = version.split('.');
    let major = parts.next().and_then(|p| p.parse::<u64>().ok());
    let min = parts.next().and_then(|p| p.parse::<u64>().ok());
    let patch = parts.next().map(|p| {
        let end = p.find(['-', '+']).unwrap_or(p.len());
        p[..end].parse::<u64>().is_ok()
    });
    major == Some(0) && min == Some(minor) && patch == Some(true) && parts.next().is_none()
}

fn refusal_reason(name: &str) -> &'static str {
    let (base, _) = split(name);
    if base == "wasi:http/incoming-handler" || base == "wasi:cli/run" {
        ": a plugin is called through sluice:task/handler, not served or run"
    } else {
        ""
    }
}

/// Checks a component's imports and exports (their full names, as
/// `Component::component_type` lists them).
pub fn check<'a>(
    imports: impl IntoIterator<Item = &'a str>,
    exports: impl IntoIterator<Item = &'a str>,
) -> Result<(), AuditError> {
    for import in imports {
        let (base, version) = split(import);
        if !GRANTED.contains(&base) && !INERT.contains(&base) {
            return Err(AuditError::Forbidden(import.to_string()));
        }
        let (line, minor) = line_of(base);
        match version {
            Some(v) if compatible(v, minor) => {}
            Some(v) => {
                return Err(AuditError::Version {
                    name: base.to_string(),
                    version: v.to_string(),
                    line,
                });
            }
            None => {
                return Err(AuditError::Version {
                    name: base.to_string(),
                    version: "(none)".into(),
                    line,
                });
            }
        }
    }
    let has_handler = exports.into_iter().any(|e| {
        let (base, version) = split(e);
        base == HANDLER && version.is_some_and(|v| compatible(v, 1))
    });
    if has_handler {
        Ok(())
    } else {
        Err(AuditError::NoHandler)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &[&str] = &[
        "sluice:task/log@0.1.0",
        "wasi:io/poll@0.2.12",
        "wasi:io/error@0.2.12",
        "wasi:io/streams@0.2.12",
        "wasi:clocks/monotonic-clock@0.2.12",
        "wasi:cli/environment@0.2.12",
        "wasi:cli/exit@0.2.12",
        "wasi:random/insecure-seed@0.2.12",
        "wasi:http/types@0.2.12",
        "wasi:http/outgoing-handler@0.2.12",
    ];
    const EXPORTS: &[&str] = &["sluice:task/handler@0.1.0"];

    #[test]
    fn what_an_sdk_plugin_imports_passes() {
        assert_eq!(check(BASE.iter().copied(), EXPORTS.iter().copied()), Ok(()));
    }

    #[test]
    fn older_and_newer_patch_versions_pass() {
        let imports = [
            "wasi:io/poll@0.2.0",
            "wasi:http/types@0.2.99",
            "sluice:task/log@0.1.7",
        ];
        assert_eq!(check(imports, ["sluice:task/handler@0.1.3"]), Ok(()));
    }

    #[test]
    fn forbidden_imports_are_named() {
        for (import, hint) in [
            ("wasi:http/incoming-handler@0.2.12", "not served"),
            ("wasi:cli/run@0.2.12", "not served"),
            ("acme:evil/backdoor@1.0.0", "does not grant"),
            ("plain-function", "does not grant"),
        ] {
            let imports = BASE.iter().copied().chain([import]);
            let err = check(imports, EXPORTS.iter().copied()).expect_err(import);
            assert_eq!(err, AuditError::Forbidden(import.into()));
            let text = err.to_string();
            assert!(text.contains(import) && text.contains(hint), "{text}");
        }
    }

    #[test]
    fn what_a_python_runtime_imports_passes_inert() {
        // componentize-py 0.25's CPython imports these at 0.2.9.
        let imports = BASE.iter().copied().chain([
            "wasi:filesystem/types@0.2.9",
            "wasi:filesystem/preopens@0.2.9",
            "wasi:sockets/network@0.2.9",
            "wasi:sockets/instance-network@0.2.9",
            "wasi:sockets/tcp@0.2.9",
            "wasi:sockets/tcp-create-socket@0.2.9",
            "wasi:sockets/udp@0.2.9",
            "wasi:sockets/udp-create-socket@0.2.9",
            "wasi:sockets/ip-name-lookup@0.2.9",
        ]);
        assert_eq!(check(imports, EXPORTS.iter().copied()), Ok(()));
        // Inert does not mean any version: the 0.3 line is refused.
        let err = check(["wasi:sockets/tcp@0.3.0"], EXPORTS.iter().copied());
        assert!(matches!(err, Err(AuditError::Version { .. })), "{err:?}");
    }

    #[test]
    fn other_version_lines_are_refused() {
        for import in [
            "wasi:io/poll@0.3.0",
            "wasi:io/poll@1.0.0",
            "sluice:task/log@0.2.0",
            "wasi:io/poll",
            "wasi:io/poll@0.2",
        ] {
            let err = check([import], EXPORTS.iter().copied()).expect_err(import);
            assert!(matches!(err, AuditError::Version { .. }), "{import}: {err}");
        }
    }

    #[test]
    fn a_component_without_the_handler_is_refused() {
        for exports in [
            vec![],
            vec!["wasi:cli/run@0.2.12"],
            vec!["sluice:task/handler@0.2.0"],
            vec!["sluice:task/handler"],
        ] {
            assert_eq!(
                check(BASE.iter().copied(), exports),
                Err(AuditError::NoHandler)
            );
        }
    }
}
