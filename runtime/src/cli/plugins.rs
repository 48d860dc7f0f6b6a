//! `sluice plugin push|list|show|delete`.

use super::*;

/// Past this size the server refuses a component (413).
pub(super) const PLUGIN_MAX_BYTES: u64 = 50 * 1024 * 1024;

pub(super) async fn plugin(client: &Client, command: PluginCommand) -> Result<(), Failure> {
    let json = client.json;
    let path = |name: &str, version: &str| format!("/v1/plugins/{}/{}", enc(name), enc(version));
    let value = match command {
        // The only one that needs no server.
        PluginCommand::New {
            name,
            lang,
            dir,
            sdk,
        } => return plugin_new(&name, lang, dir, sdk, json),
        PluginCommand::Push {
            name,
            version,
            file,
            memory,
        } => {
            let api = Api::new(client)?;
            let mut path = path(&name, &version);
            if let Some(memory) = memory {
                path = format!("{path}?memory={}", enc(&memory));
            }
            return plugin_push(&api, &path, &name, &version, &file, json).await;
        }
        PluginCommand::Ls => {
            let v = Api::new(client)?.get("/v1/plugins").await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", plugins_table(&v));
            }
            return Ok(());
        }
        PluginCommand::Get { name, version } => {
            Api::new(client)?.get(&path(&name, &version)).await?
        }
        PluginCommand::Rm { name, version } => {
            Api::new(client)?
                .call(reqwest::Method::DELETE, &path(&name, &version), None)
                .await?;
            if !json {
                println!("deleted plugin {name} {version}");
            }
            return Ok(());
        }
    };
    if json {
        print_json(&value);
    } else {
        print!("{}", plugin_detail(&value));
    }
    Ok(())
}

pub(super) async fn plugin_push(
    api: &Api,
    path: &str,
    name: &str,
    version: &str,
    file: &std::path::Path,
    json: bool,
) -> Result<(), Failure> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // Caught here, the common mistakes get a clearer word than the server's.
    check_component(&bytes).map_err(|why| Failure {
        code: 5,
        message: format!("{}: {why}", file.display()),
    })?;
    let size = bytes.len() as u64;
    let request = api
        .request(reqwest::Method::PUT, path)
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .body(bytes);
    let sent = if std::io::stderr().is_terminal() {
        let what = format!(
            "uploading {}, then the server checks and compiles it…",
            human_size(size)
        );
        with_progress(api.send(request), &what).await
    } else {
        api.send(request).await
    };
    let (status, value) = match sent {
        Ok(answer) => answer,
        // A server refusing an oversized body may close the connection before
        // it answers 413.
        Err(f) if size > PLUGIN_MAX_BYTES => {
            return Err(Failure {
                code: 5,
                message: format!(
                    "{} is {}, over the server's limit of {}: {}",
                    file.display(),
                    human_size(size),
                    human_size(PLUGIN_MAX_BYTES),
                    f.message
                ),
            });
        }
        Err(f) => return Err(f),
    };
    if status.is_success() {
        let existed = status == reqwest::StatusCode::OK;
        if json {
            if existed {
                eprintln!("{name} {version} was already there with the same bytes");
            }
            print_json(&value);
        } else {
            if existed {
                println!("{name} {version} was already there with the same bytes: nothing changed");
            } else {
                println!("uploaded {name} {version}");
            }
            print!("{}", plugin_detail(&value));
        }
        return Ok(());
    }
    let mut f = failure(status, &value);
    f.message = match status.as_u16() {
        409 => format!(
            "cannot push {name} {version}: {} (a version never changes: push this file as a new version)",
            f.message
        ),
        413 => format!(
            "cannot push {name} {version}: {} is {}: {}",
            file.display(),
            human_size(size),
            f.message
        ),
        _ => format!("cannot push {name} {version}: {}", f.message),
    };
    Err(f)
}

/// Whether `bytes` look like a component: `\0asm`, a version, then layer 1
/// (a core module, what `wasm32-unknown-unknown` or `wasip1` builds, has
/// layer 0).
pub(super) fn check_component(bytes: &[u8]) -> Result<(), String> {
    match bytes {
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => Ok(()),
        [0, b'a', b's', b'm', ..] => Err(
            "a core WebAssembly module, not a component: build the plugin with `cargo build --release --target wasm32-wasip2`".into(),
        ),
        _ => Err("not a WebAssembly component (it does not start with \\0asm)".into()),
    }
}

/// Waits for `work`, redrawing `what` and the seconds elapsed on stderr.
pub(super) async fn with_progress<T>(work: impl std::future::Future<Output = T>, what: &str) -> T {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seconds = 0u64;
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = tick.tick() => {
                eprint!("\r{what} {seconds}s");
                let _ = std::io::stderr().flush();
                seconds += 1;
            }
        }
    };
    eprint!("\r\x1b[K");
    let _ = std::io::stderr().flush();
    result
}

pub(super) fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{:.1} MiB", b / (KIB * KIB))
    }
}

pub(super) fn plugins_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                p["name"].as_str().unwrap_or("").to_string(),
                p["version"].as_str().unwrap_or("").to_string(),
                p["size"].as_u64().map_or("-".into(), human_size),
                p["sha256"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(12)
                    .collect(),
                p["uploaded_at"].as_str().unwrap_or("").to_string(),
                num(&p["references"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "VERSION",
            "SIZE",
            "SHA256",
            "UPLOADED (UTC)",
            "REFERENCES",
        ],
        &rows,
    )
}

pub(super) fn plugin_detail(p: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = String::new();
    for (k, v) in [
        ("name", text(&p["name"])),
        ("version", text(&p["version"])),
        (
            "size",
            p["size"]
                .as_u64()
                .map_or("-".into(), |n| format!("{} ({n} bytes)", human_size(n))),
        ),
        ("sha256", text(&p["sha256"])),
        ("uploaded_at", text(&p["uploaded_at"])),
        ("references", num(&p["references"])),
        (
            "memory",
            p["memory_mib"]
                .as_u64()
                .map_or("-".into(), |n| format!("{n} MiB")),
        ),
    ] {
        out.push_str(&format!("{k:<14}{v}\n"));
    }
    let imports = p["imports"].as_array().cloned().unwrap_or_default();
    if !imports.is_empty() {
        out.push_str("imports\n");
        for i in imports {
            out.push_str(&format!("  {}\n", i.as_str().unwrap_or("")));
        }
    }
    out
}
