//! Checks that clippy cannot make: the core stays pure.

use std::path::Path;

/// The core never names an I/O crate: no tokio, redb, axum, reqwest, hyper or
/// wasmtime, and never reads a clock. That is what makes its decisions replayable.
#[test]
fn core_does_no_io() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
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
        "crate::store",
        "crate::shell",
        "crate::api",
        "crate::dispatch",
        "crate::clock",
    ];
    let mut checked = 0;
    for entry in std::fs::read_dir(&core).expect("core dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                assert!(
                    !code.contains(word),
                    "{}:{}: the core must not use {word}: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 5, "expected the core's modules, found {checked}");
}
