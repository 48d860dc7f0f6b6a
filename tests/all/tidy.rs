//! Checks that clippy cannot make: the core stays pure, and imports point down
//! the layers `runtime/src/lib.rs` lists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, subfolders included.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("source dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of a line, without its `//` comment.
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// The core never names an I/O crate: no tokio, redb, axum, reqwest, hyper or
/// wasmtime, and never reads a clock. That is what makes its decisions replayable.
#[test]
fn core_does_no_io() {
    let forbidden = [
        "tokio",
        "redb",
        "axum",
        "reqwest",
        "hyper",
        "wasmtime",
        "std::fs",
        "std::net",
        "SystemTime",
        "Instant",
    ];
    let files = rust_files(&src().join("core"));
    for path in &files {
        let text = std::fs::read_to_string(path).expect("source");
        for (n, line) in text.lines().enumerate() {
            for word in forbidden {
                assert!(
                    !code(line).contains(word),
                    "{}:{}: the core must not use {word}: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
    }
    assert!(
        files.len() >= 5,
        "expected the core's modules, found {files:?}"
    );
}

/// The layers as `lib.rs` states them: module name → its layer, lowest 1.
fn layers() -> BTreeMap<String, usize> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let mut layers = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((number, names)) = rest.split_once(". ") else {
            continue;
        };
        let Ok(layer) = number.parse::<usize>() else {
            continue;
        };
        let names = names.split(':').next().unwrap_or("");
        for name in names.split_whitespace() {
            layers.insert(name.trim_matches('`').to_string(), layer);
        }
    }
    layers
}

/// The top-level modules a source file names through `crate::`, with the
/// line of each: `crate::a::b`, and each item of `crate::{a, b::{c, d}}`.
fn imports(source: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = source.lines().map(code).collect();
    let text = lines.join("\n");
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut from = 0;
    while let Some(found) = text[from..].find("crate::") {
        let at = from + found;
        let after = &text[at + "crate::".len()..];
        from = at + "crate::".len();
        // `sluice::crate::` does not exist; `$crate::` is a macro's own crate.
        if text[..at].ends_with('$') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        out.push((line_of(at), ident(&group[item_start..i])));
                        item_start = i + 1;
                    }
                    _ => {}
                }
                if depth == 0 {
                    out.push((line_of(at), ident(&group[item_start..i])));
                    break;
                }
            }
        } else {
            out.push((line_of(at), ident(after)));
        }
    }
    out.retain(|(_, name)| !name.is_empty() && name != "self");
    out
}

/// What is wrong with the imports of a file in module `module`.
fn violations(module: &str, source: &str, layers: &BTreeMap<String, usize>) -> Vec<String> {
    let Some(&own) = layers.get(module) else {
        return vec![format!("module {module} has no layer in lib.rs")];
    };
    imports(source)
        .into_iter()
        .filter(|(_, name)| name != module)
        .filter_map(|(line, name)| match layers.get(&name) {
            Some(&layer) if layer < own => None,
            Some(&layer) => Some(format!(
                "line {line}: {module} (layer {own}) imports {name} (layer {layer})"
            )),
            None => Some(format!("line {line}: {name} is not a module with a layer")),
        })
        .collect()
}

/// No import points up or sideways, in any file of any module.
#[test]
fn imports_point_down_the_layers() {
    let layers = layers();
    assert!(layers.len() >= 10, "lib.rs states the layers: {layers:?}");
    let root = src();
    let mut problems = Vec::new();
    let mut modules = std::collections::BTreeSet::new();
    for path in rust_files(&root) {
        let relative = path.strip_prefix(&root).expect("under src");
        let first = relative.components().next().expect("a file");
        let first = first.as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        modules.insert(module.to_string());
        let text = std::fs::read_to_string(&path).expect("source");
        for problem in violations(module, &text, &layers) {
            problems.push(format!("{}: {problem}", relative.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let unlisted: Vec<_> = modules
        .iter()
        .filter(|m| !layers.contains_key(*m))
        .collect();
    assert!(unlisted.is_empty(), "modules without a layer: {unlisted:?}");
}

/// The check itself: it must see an upward import in each spelling.
#[test]
fn the_layer_check_catches_an_upward_import() {
    let layers = layers();
    let up = violations("core", "use crate::shell::Engine;\n", &layers);
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(up[0].contains("core (layer 1) imports shell"), "{up:?}");
    let grouped = violations(
        "store",
        "use crate::{\n    core::{TaskId, Timestamp},\n    api::wire, // up\n};\n",
        &layers,
    );
    assert_eq!(grouped.len(), 1, "{grouped:?}");
    assert!(grouped[0].starts_with("line 1: store"), "{grouped:?}");
    let inline = violations("shell", "let x = crate::api::wire::parse(t);", &layers);
    assert_eq!(inline.len(), 1, "{inline:?}");
    let sideways = violations("dispatch", "use crate::dispatch::guard;", &layers);
    assert!(sideways.is_empty(), "a module's own paths: {sideways:?}");
    let same_layer = violations("model", "use crate::attempt::Plan;", &layers);
    assert_eq!(same_layer.len(), 1, "{same_layer:?}");
    let down = violations("api", "use crate::{core, store::Store, shell};", &layers);
    assert!(down.is_empty(), "{down:?}");
    let commented = violations("core", "// see crate::shell::Engine", &layers);
    assert!(commented.is_empty(), "{commented:?}");
}

/// Every seed in `fuzz/seeds/<target>/` (a crash libFuzzer found, once fixed,
/// belongs there) still holds its target's property. `scripts/fuzz` runs the
/// targets themselves; this keeps what they found from coming back.
#[test]
fn fuzz_seeds_hold_their_properties() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut targets: Vec<String> = std::fs::read_dir(fuzz.join("fuzz_targets"))
        .expect("fuzz targets")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().into_string().ok()?;
            Some(name.strip_suffix(".rs")?.to_string())
        })
        .collect();
    targets.sort();
    let names: Vec<&str> = sluice::fuzzing::TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(
        targets, names,
        "fuzz/fuzz_targets and sluice::fuzzing::TARGETS"
    );
    let seeds = fuzz.join("seeds");
    for (target, check) in sluice::fuzzing::TARGETS {
        let dir = seeds.join(target);
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("seed dir") {
            let path = entry.expect("entry").path();
            let data = std::fs::read(&path).expect("seed");
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "{target}: {} fails", path.display());
            count += 1;
        }
        assert!(count > 0, "{target} has no seeds in {}", dir.display());
    }
}

/// The library's unit tests build in their own package from the library's
/// sources (`tests/Cargo.toml` says why): it must build them as the
/// library is built, with the same features and dependencies.
#[test]
fn the_unit_tests_package_builds_the_library_as_it_is() {
    let manifest = |path: &str| -> toml::Table {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&path)
            .expect("manifest")
            .parse()
            .expect("manifest is TOML")
    };
    let library = manifest("Cargo.toml");
    let unit = manifest("../tests/Cargo.toml");
    for table in ["features", "dependencies", "dev-dependencies", "lints"] {
        assert!(
            library.contains_key(table),
            "runtime/Cargo.toml has [{table}]"
        );
        assert_eq!(
            library.get(table),
            unit.get(table),
            "[{table}] in runtime/Cargo.toml and tests/Cargo.toml"
        );
    }
    assert_eq!(
        library["lib"].get("test").and_then(toml::Value::as_bool),
        Some(false),
        "package sluice builds no unit-test harness of its own"
    );
    assert_eq!(
        unit["lib"].get("path").and_then(toml::Value::as_str),
        Some("../runtime/src/lib.rs")
    );
}
