//! Operating a server's store: `backup` (from the running server), `restore`
//! and `check` (offline, on a stopped server's data directory).

use std::path::Path;

use super::*;
use crate::server::DATA_FILE;
use crate::store::{Copied, Findings, Offline, SCHEMA_VERSION, Store, in_use, needs_repair};

/// Exit code of `check` when it finds problems.
const PROBLEMS: u8 = 8;

fn describe(c: &Copied) -> String {
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{}, {}, {}, {} (schema version {})",
        plural(c.tasks, "task", "tasks"),
        plural(c.gates, "gate", "gates"),
        plural(c.schedules, "schedule", "schedules"),
        plural(c.plugins, "plugin", "plugins"),
        c.schema_version
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// `sluice backup --out FILE`: streams the server's snapshot to `FILE.partial`,
/// checks that it opens, then renames it into place.
pub(super) async fn backup(api: &Api, out: &Path, json: bool) -> Result<(), Failure> {
    let partial = out.with_extension("partial");
    // A backup of a large store takes as long as it takes: no overall deadline.
    let request = api
        .request(reqwest::Method::POST, "/v1/admin/backup")
        .timeout(Duration::from_secs(7 * 24 * 3_600));
    let mut response = request.send().await.map_err(|e| Failure {
        code: 1,
        message: format!("cannot reach the server: {}", crate::client::causes(&e)),
    })?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        return Err(failure(status, &value));
    }
    let total = response.content_length();
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let progress = std::io::stderr().is_terminal() && !json;
    let mut received = 0u64;
    let mut last_shown = crate::clock::instant();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(Failure {
                    code: 1,
                    message: format!("the backup stream broke after {}: {e}", mib(received)),
                });
            }
        };
        file.write_all(&chunk)
            .with_context(|| format!("writing {}", partial.display()))?;
        received += chunk.len() as u64;
        if progress && last_shown.elapsed() >= Duration::from_millis(200) {
            last_shown = crate::clock::instant();
            match total {
                Some(t) => eprint!("\r{} of {}", mib(received), mib(t)),
                None => eprint!("\r{}", mib(received)),
            }
        }
    }
    if progress {
        eprint!("\r\x1b[2K");
    }
    if total.is_some_and(|t| t != received) {
        let _ = std::fs::remove_file(&partial);
        return Err(Failure {
            code: 1,
            message: format!(
                "the backup stream ended after {} of {} bytes",
                received,
                total.unwrap_or_default()
            ),
        });
    }
    file.sync_all()
        .with_context(|| format!("writing {}", partial.display()))?;
    drop(file);
    let summary = Offline::open(&partial)
        .and_then(|f| f.summary())
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            anyhow::anyhow!("the backup does not open as a data file: {e}")
        })?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    if json {
        println!(
            "{}",
            json!({"file": out, "bytes": received, "summary": summary})
        );
    } else {
        println!(
            "backup written to {}: {}, {}",
            out.display(),
            mib(received),
            describe(&summary)
        );
    }
    Ok(())
}

/// `sluice restore FILE --data-dir DIR`: puts a backup in place as DIR's store.
/// Refuses while a server holds DIR; an existing store is replaced only with
/// `--force`, and kept beside as `sluice.redb.before-restore`.
pub(super) fn restore(file: &Path, data_dir: &Path, force: bool) -> Result<(), Failure> {
    if !file.is_file() {
        return Err(Failure {
            code: 3,
            message: format!("no backup at {}", file.display()),
        });
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let target = data_dir.join(DATA_FILE);
    if target.exists() {
        if let Err(e) = Offline::open(&target)
            && in_use(&e)
        {
            return Err(Failure {
                code: 4,
                message: format!(
                    "a running server holds {}; stop it before restoring into it",
                    data_dir.display()
                ),
            });
        }
        if !force {
            return Err(Failure {
                code: 4,
                message: format!(
                    "{} already holds a store; pass --force to replace it (it is kept as {DATA_FILE}.before-restore)",
                    data_dir.display()
                ),
            });
        }
    }
    let staged = data_dir.join(format!("{DATA_FILE}.restoring"));
    std::fs::copy(file, &staged)
        .with_context(|| format!("copying {} into {}", file.display(), data_dir.display()))?;
    // Opening the copy repairs a file a crash left, upgrades an older schema
    // and refuses a newer one, all before anything is replaced.
    let opened = Store::open(&staged).and_then(|store| Ok((store.summary()?, store.check()?)));
    let (summary, findings) = opened.map_err(|e| {
        let _ = std::fs::remove_file(&staged);
        Failure {
            code: 5,
            message: format!("{} cannot be restored: {e}", file.display()),
        }
    })?;
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", staged.display()))?;
    if target.exists() {
        let kept = data_dir.join(format!("{DATA_FILE}.before-restore"));
        std::fs::rename(&target, &kept)
            .with_context(|| format!("moving {} aside", target.display()))?;
    }
    std::fs::rename(&staged, &target)
        .with_context(|| format!("moving the restored store to {}", target.display()))?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    println!(
        "restored {} into {}: {}",
        file.display(),
        data_dir.display(),
        describe(&summary)
    );
    if !findings.problems.is_empty() {
        eprintln!(
            "warning: the backup has {} problems; `sluice check --repair --data-dir {}` rebuilds what it can:",
            findings.problems.len(),
            data_dir.display()
        );
        for p in &findings.problems {
            eprintln!("  {p}");
        }
    }
    Ok(())
}

/// `sluice check --data-dir DIR [--repair]`: a stopped server's store against
/// a scan of its records.
/// `sluice migrate`: opens the store the way `serve` does, which creates
/// or upgrades its schema (under PostgreSQL's advisory lock, or redb's file
/// lock), and says where it stands.
pub(super) fn migrate(data_dir: &Path, store: Option<&str>) -> Result<(), Failure> {
    match store {
        Some(url) => {
            // The URL may hold a password: the message names the store only.
            crate::store::PgStore::open(url).map_err(|e| Failure {
                code: 1,
                message: format!("the PostgreSQL store: {e}"),
            })?;
            println!(
                "the PostgreSQL schema is at version {}",
                crate::store::PG_SCHEMA_VERSION
            );
        }
        None => {
            let path = data_dir.join(DATA_FILE);
            if !path.exists() {
                return Err(Failure {
                    code: 3,
                    message: format!("no store at {}", path.display()),
                });
            }
            crate::store::Store::open(&path).map_err(|e| Failure {
                code: if in_use(&e) { 4 } else { 1 },
                message: format!("opening {}: {e}", path.display()),
            })?;
            println!(
                "{} is at schema version {}",
                path.display(),
                crate::store::SCHEMA_VERSION
            );
        }
    }
    Ok(())
}

pub(super) fn check(data_dir: &Path, repair: bool, json: bool) -> Result<(), Failure> {
    let path = data_dir.join(DATA_FILE);
    if !path.exists() {
        return Err(Failure {
            code: 3,
            message: format!("no store at {}", path.display()),
        });
    }
    let refuse = |e: crate::store::StoreError| Failure {
        code: if in_use(&e) { 4 } else { 1 },
        message: if in_use(&e) {
            format!(
                "a running server holds {}; check a stopped server, or restore a backup elsewhere and check that",
                data_dir.display()
            )
        } else {
            format!("opening {}: {e}", path.display())
        },
    };
    let (before, after) = if repair {
        let store = Store::open(&path).map_err(refuse)?;
        let before = store.check()?;
        if before.problems.is_empty() {
            (before, None)
        } else {
            store.repair()?;
            let after = store.check()?;
            (before, Some(after))
        }
    } else {
        let file = match Offline::open(&path) {
            Err(e) if needs_repair(&e) => return check_crashed(data_dir, &path, json),
            opened => opened.map_err(refuse)?,
        };
        let version = file.summary()?.schema_version;
        if version != SCHEMA_VERSION {
            return Err(Failure {
                code: 1,
                message: format!(
                    "the store has schema version {version}, this build reads {SCHEMA_VERSION}: \
                     start this build's server once (it upgrades the store) or run with --repair"
                ),
            });
        }
        (file.check()?, None)
    };
    report(before, after, json, &path.display().to_string())
}

/// `check --store postgres://…`: the same checks on a PostgreSQL store,
/// over one snapshot, which a running cluster may keep writing meanwhile.
pub(super) fn check_postgres(url: &str, repair: bool, json: bool) -> Result<(), Failure> {
    if repair {
        return Err(Failure {
            code: 2,
            message: "--repair works on a redb file only; on PostgreSQL, report the findings"
                .into(),
        });
    }
    // The URL may hold a password: messages name the store only.
    let store = crate::store::PgStore::open(url).map_err(|e| Failure {
        code: 1,
        message: format!("the PostgreSQL store: {e}"),
    })?;
    let found = store.check().map_err(|e| Failure {
        code: 1,
        message: format!("checking the PostgreSQL store: {e}"),
    })?;
    report(found, None, json, "the PostgreSQL store")
}

/// Prints what a check found (and what remains after a repair); fails with
/// `PROBLEMS` when anything remains.
fn report(
    before: Findings,
    after: Option<Findings>,
    json: bool,
    place: &str,
) -> Result<(), Failure> {
    let remaining = after.as_ref().unwrap_or(&before);
    if json {
        println!(
            "{}",
            json!({"checked": before, "after_repair": after, "ok": remaining.problems.is_empty()})
        );
    } else {
        print_findings(&before);
        if let Some(after) = &after {
            if after.problems.is_empty() {
                println!("repaired: no problems remain");
            } else {
                println!("after repair, {} problems remain:", after.problems.len());
                for p in &after.problems {
                    println!("  {p}");
                }
            }
        }
    }
    if remaining.problems.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: PROBLEMS,
            message: format!("{} problems in {place}", remaining.problems.len()),
        })
    }
}

/// A store a crash left needs redb's repair before it can be read, and only
/// a writer may repair. Check a repaired copy beside it instead, so the store
/// itself stays as it was (the server repairs it when it starts).
fn check_crashed(data_dir: &Path, path: &Path, json: bool) -> Result<(), Failure> {
    let copy = data_dir.join(format!("{DATA_FILE}.check"));
    std::fs::copy(path, &copy).with_context(|| format!("copying {}", path.display()))?;
    let checked = Store::open(&copy).and_then(|store| store.check());
    let _ = std::fs::remove_file(&copy);
    let found = checked?;
    if json {
        println!(
            "{}",
            json!({"checked": found, "after_repair": null, "ok": found.problems.is_empty(), "unclean": true})
        );
    } else {
        println!(
            "the store was not closed cleanly (a crash): checked a repaired copy; the server repairs the store itself when it starts"
        );
        print_findings(&found);
    }
    if found.problems.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: PROBLEMS,
            message: format!("{} problems in {}", found.problems.len(), path.display()),
        })
    }
}

fn print_findings(f: &Findings) {
    let scanned = format!(
        "checked {} tasks, {} attempts, {} gates, {} schedules, {} plugins",
        f.tasks, f.attempts, f.gates, f.schedules, f.plugins
    );
    if f.problems.is_empty() {
        println!("{scanned}: no problems");
    } else {
        println!("{scanned}: {} problems", f.problems.len());
        for p in &f.problems {
            println!("  {p}");
        }
    }
}

/// `sluice ready`: the server's readiness as an exit code.
pub(super) async fn ready(api: &Api) -> Result<(), Failure> {
    let request = api
        .request(reqwest::Method::GET, "/readyz")
        .timeout(Duration::from_secs(3));
    let (status, _) = api.send(request).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            message: format!("not ready [{}]", status.as_u16()),
        })
    }
}
