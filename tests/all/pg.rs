//! A PostgreSQL server of the test's own: `initdb` in a temp dir, started
//! with `pg_ctl` on a free loopback port (no Unix socket), stopped by
//! `pg_ctl stop` on that data dir when the test ends. Never a shared server.
//! As root (CI), the commands run as the `postgres` user, which owns the dir.

use std::path::PathBuf;
use std::process::Command;

pub struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Whether it counts its statements (`start_counting`).
    counting: bool,
    _temp: tempfile::TempDir,
}

/// The directory of `pg_ctl` and `initdb`: `SLUICE_PG_BIN`, Debian's
/// newest version, or the `PATH`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SLUICE_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").is_file())
        .collect();
    debian.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(bin) = debian.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("pg_ctl").is_file() && dir.join("initdb").is_file())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl PgServer {
    /// A running server, or `None` (with a note) when PostgreSQL is not
    /// installed and `SLUICE_PG_TESTS` is not set; with it set, a missing
    /// server fails the test.
    pub fn start() -> Option<PgServer> {
        PgServer::start_with(None, "")
    }

    /// A server that counts the statements it runs (`pg_stat_statements`,
    /// part of Debian's server package; the test creates the extension),
    /// where the installation has it (`counting`).
    pub fn start_counting() -> Option<PgServer> {
        let library = bin_dir()
            .and_then(|bin| {
                Command::new(bin.join("pg_config"))
                    .arg("--pkglibdir")
                    .output()
                    .ok()
            })
            .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
            .is_some_and(|dir| {
                ["so", "dylib"]
                    .iter()
                    .any(|ext| dir.join(format!("pg_stat_statements.{ext}")).is_file())
            });
        if !library {
            assert!(
                std::env::var_os("SLUICE_PG_TESTS").is_none(),
                "SLUICE_PG_TESTS is set but pg_stat_statements is missing: scripts/pg-setup \
                 installs Debian's server package, which has it"
            );
            eprintln!("not counting statements: pg_stat_statements is not installed");
            return PgServer::start();
        }
        let mut server =
            PgServer::start_with(None, " -c shared_preload_libraries=pg_stat_statements")?;
        server.counting = true;
        Some(server)
    }

    pub fn counting(&self) -> bool {
        self.counting
    }

    /// A server that takes TLS connections only (`hostssl`, `ssl=on`) with
    /// this certificate and key (PEM).
    pub fn start_tls(cert: &str, key: &str) -> Option<PgServer> {
        PgServer::start_with(Some((cert, key)), "")
    }

    fn start_with(tls: Option<(&str, &str)>, more: &str) -> Option<PgServer> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("SLUICE_PG_TESTS").is_none(),
                "SLUICE_PG_TESTS is set but PostgreSQL is missing: scripts/pg-setup installs it"
            );
            eprintln!("skipped: PostgreSQL is not installed (scripts/pg-setup installs it)");
            return None;
        };
        let temp = tempfile::tempdir().expect("temp dir");
        let data = temp.path().join("data");
        let as_postgres = is_root();
        if as_postgres {
            let chown = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(temp.path())
                .status()
                .expect("chown");
            assert!(chown.success(), "chown of the temp dir to postgres");
        }
        let port = crate::crash::free_port();
        let server = PgServer {
            bin,
            data,
            port,
            as_postgres,
            counting: false,
            _temp: temp,
        };
        let data = server.data.display().to_string();
        let log = server.log().display().to_string();
        server.run(
            "initdb",
            &[
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
                &data,
            ],
        );
        let mut options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off{more}"
        );
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            for (file, text) in [
                ("server.crt", cert),
                ("server.key", key),
                ("pg_hba.conf", "hostssl all all 127.0.0.1/32 trust\n"),
            ] {
                let path = server.data.join(file);
                std::fs::write(&path, text).expect("write to the data dir");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                if as_postgres {
                    let chown = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&path)
                        .status()
                        .expect("chown");
                    assert!(chown.success(), "chown {file}");
                }
            }
            options.push_str(" -c ssl=on");
        }
        server.run(
            "pg_ctl",
            &["start", "-w", "-s", "-o", &options, "-l", &log, "-D", &data],
        );
        Some(server)
    }

    fn log(&self) -> PathBuf {
        self.data.with_file_name("postgres.log")
    }

    /// A PostgreSQL tool, as `postgres` when we are root.
    fn tool(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .tool(tool)
            .args(args)
            .output()
            .expect("running a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Restarts the server (fast shutdown: connections are cut, as when
    /// PostgreSQL itself restarts under load).
    pub fn restart(&self) {
        let (data, log) = (
            self.data.display().to_string(),
            self.log().display().to_string(),
        );
        // With its log file: the server must not hold this test's pipes.
        self.run(
            "pg_ctl",
            &["restart", "-w", "-s", "-m", "fast", "-l", &log, "-D", &data],
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A plain client of this server, its `search_path` set to `schema`:
    /// what a test does behind the store's back.
    pub async fn client(&self, schema: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path TO {schema}"))
            .await
            .expect("search_path");
        client
    }
}

impl Drop for PgServer {
    /// Stops the server this test started, through its own data dir.
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl")
            .args(["stop", "-s", "-m", "immediate", "-D"])
            .arg(&self.data)
            .output();
    }
}
