//! `sluice plugin new`: a plugin from the templates in
//! `cli/plugin-template/` (a Rust crate), `cli/plugin-template-js/` and
//! `cli/plugin-template-py/`. A JavaScript or Python plugin also gets a copy
//! of its SDK (`sdk/js`, `sdk/python`) and of the world (`wit/`), so that it
//! builds with nothing but its pinned tools from the package registries.

use super::*;

/// The languages a plugin can be written in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lang {
    Rust,
    Js,
    Python,
}

/// The files of a new JavaScript plugin, templates as for Rust.
const JS_TEMPLATE: [(&str, &str); 5] = [
    ("plugin.js", include_str!("plugin-template-js/plugin.js.in")),
    (
        "package.json",
        include_str!("plugin-template-js/package.json.in"),
    ),
    (
        "package-lock.json",
        include_str!("plugin-template-js/package-lock.json.in"),
    ),
    ("README.md", include_str!("plugin-template-js/README.md.in")),
    (
        ".gitignore",
        include_str!("plugin-template-js/gitignore.in"),
    ),
];

/// The files of a new Python plugin.
const PY_TEMPLATE: [(&str, &str); 4] = [
    ("app.py", include_str!("plugin-template-py/app.py.in")),
    (
        "requirements.txt",
        include_str!("plugin-template-py/requirements.txt.in"),
    ),
    ("README.md", include_str!("plugin-template-py/README.md.in")),
    (
        ".gitignore",
        include_str!("plugin-template-py/gitignore.in"),
    ),
];

/// The JavaScript SDK, copied as it is.
const JS_SDK: [(&str, &str); 3] = [
    (
        "sluice-sdk/index.js",
        include_str!("../../../sdk/js/index.js"),
    ),
    (
        "sluice-sdk/core.js",
        include_str!("../../../sdk/js/core.js"),
    ),
    (
        "sluice-sdk/index.d.ts",
        include_str!("../../../sdk/js/index.d.ts"),
    ),
];

/// The Python SDK, copied as it is.
const PY_SDK: [(&str, &str); 9] = [
    (
        "sluice_sdk/__init__.py",
        include_str!("../../../sdk/python/sluice_sdk/__init__.py"),
    ),
    (
        "sluice_sdk/_glue.py",
        include_str!("../../../sdk/python/sluice_sdk/_glue.py"),
    ),
    (
        "sluice_sdk/_wasi.py",
        include_str!("../../../sdk/python/sluice_sdk/_wasi.py"),
    ),
    (
        "sluice_sdk/context.py",
        include_str!("../../../sdk/python/sluice_sdk/context.py"),
    ),
    (
        "sluice_sdk/decode.py",
        include_str!("../../../sdk/python/sluice_sdk/decode.py"),
    ),
    (
        "sluice_sdk/http.py",
        include_str!("../../../sdk/python/sluice_sdk/http.py"),
    ),
    (
        "sluice_sdk/log.py",
        include_str!("../../../sdk/python/sluice_sdk/log.py"),
    ),
    (
        "sluice_sdk/outcome.py",
        include_str!("../../../sdk/python/sluice_sdk/outcome.py"),
    ),
    (
        "sluice_sdk/timeutil.py",
        include_str!("../../../sdk/python/sluice_sdk/timeutil.py"),
    ),
];

/// The `sluice:task` world, which componentize-js and componentize-py build
/// against.
const WIT: [(&str, &str); 8] = [
    ("wit/task.wit", include_str!("../../../wit/task.wit")),
    (
        "wit/deps/cli.wit",
        include_str!("../../../wit/deps/cli.wit"),
    ),
    (
        "wit/deps/clocks.wit",
        include_str!("../../../wit/deps/clocks.wit"),
    ),
    (
        "wit/deps/filesystem.wit",
        include_str!("../../../wit/deps/filesystem.wit"),
    ),
    (
        "wit/deps/http.wit",
        include_str!("../../../wit/deps/http.wit"),
    ),
    ("wit/deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    (
        "wit/deps/random.wit",
        include_str!("../../../wit/deps/random.wit"),
    ),
    (
        "wit/deps/sockets.wit",
        include_str!("../../../wit/deps/sockets.wit"),
    ),
];

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

/// A plugin's name (and a Rust plugin's crate's): lowercase letters, digits and
/// '-', starting with a letter (which the server's plugin names allow too); a
/// Rust plugin's may not be a keyword or a crate it uses.
pub(super) fn check_plugin_name(name: &str, lang: Lang) -> Result<(), String> {
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
    if lang == Lang::Rust && RESERVED_NAMES.contains(&name) {
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

/// What `plugin new` writes for a language, and how the result builds.
struct Layout {
    /// Files rendered from templates.
    templates: &'static [(&'static str, &'static str)],
    /// Files copied as they are (the SDK, the world).
    copies: Vec<(&'static str, &'static str)>,
    /// The component the build makes, relative to the plugin's directory.
    wasm: String,
    /// The README's build commands.
    build: &'static [&'static str],
}

fn layout(lang: Lang, name: &str) -> Layout {
    match lang {
        Lang::Rust => Layout {
            templates: &PLUGIN_TEMPLATE,
            copies: Vec::new(),
            wasm: format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ),
            build: &["cargo build --release --target wasm32-wasip2"],
        },
        Lang::Js => Layout {
            templates: &JS_TEMPLATE,
            copies: JS_SDK.iter().chain(&WIT).copied().collect(),
            wasm: "plugin.wasm".into(),
            build: &["npm ci", "npm run build"],
        },
        Lang::Python => Layout {
            templates: &PY_TEMPLATE,
            copies: PY_SDK.iter().chain(&WIT).copied().collect(),
            wasm: "app.wasm".into(),
            build: &[
                "python3 -m venv .venv && .venv/bin/pip install --require-hashes -r requirements.txt",
                ".venv/bin/componentize-py -d wit -w sluice:task/task componentize app -p . -o app.wasm",
            ],
        },
    }
}

pub(super) fn plugin_new(
    name: &str,
    lang: Lang,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
    json: bool,
) -> Result<(), Failure> {
    check_plugin_name(name, lang).map_err(|message| Failure { code: 2, message })?;
    if lang != Lang::Rust && sdk.is_some() {
        return Err(Failure {
            code: 2,
            message:
                "--sdk is for Rust plugins; a JavaScript or Python plugin gets a copy of its SDK"
                    .into(),
        });
    }
    let sdk = match lang {
        Lang::Rust => sdk_dependency(sdk)?,
        Lang::Js | Lang::Python => String::new(),
    };
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
    let Layout {
        templates,
        copies,
        wasm,
        build,
    } = layout(lang, name);
    let rendered = templates
        .iter()
        .map(|(file, template)| (*file, render_plugin(template, name, &sdk)));
    let copied = copies
        .iter()
        .map(|(file, text)| (*file, (*text).to_string()));
    let mut files = Vec::new();
    for (file, text) in rendered.chain(copied) {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        files.push(file);
    }
    if json {
        print_json(&json!({
            "name": name,
            "dir": dir.display().to_string(),
            "files": files,
            "wasm": wasm,
        }));
    } else {
        let what = match lang {
            Lang::Rust => "plugin crate",
            Lang::Js => "JavaScript plugin",
            Lang::Python => "Python plugin",
        };
        println!("created {what} {name} in {}", dir.display());
        for file in files {
            println!("  {file}");
        }
        println!("\nnext:");
        println!("  cd {}", dir.display());
        for command in build {
            println!("  {command}");
        }
        println!("  sluice plugin push {name} 0.1.0 {wasm}");
    }
    Ok(())
}
