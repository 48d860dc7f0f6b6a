//! `sluice plugin new`: a plugin crate from the templates in
//! `cli/plugin-template/`.

use super::*;

/// The files of a new plugin crate, as templates in which `{{name}}`,
/// `{{lib_name}}` and `{{sdk}}` are filled in.
pub(super) const PLUGIN_TEMPLATE: [(&str, &str); 5] = [
    ("Cargo.toml", include_str!("plugin-template/Cargo.toml.in")),
    ("src/lib.rs", include_str!("plugin-template/lib.rs.in")),
    (
        ".cargo/config.toml",
        include_str!("plugin-template/config.toml.in"),
    ),
    (".gitignore", include_str!("plugin-template/gitignore.in")),
    ("README.md", include_str!("plugin-template/README.md.in")),
];

/// Rust's keywords and the crates a plugin's own name must not shadow.
pub(super) const RESERVED_NAMES: &[&str] = &[
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
pub(super) fn check_plugin_name(name: &str) -> Result<(), String> {
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
pub(super) fn sdk_dependency(sdk: Option<PathBuf>) -> Result<String, Failure> {
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

pub(super) fn render_plugin(template: &str, name: &str, sdk: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{lib_name}}", &name.replace('-', "_"))
        .replace("{{sdk}}", sdk)
}

pub(super) fn plugin_new(
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
