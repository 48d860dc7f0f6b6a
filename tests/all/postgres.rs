//! A server on PostgreSQL (`--store postgres://…`): the same API and
//! delivery as on redb, and what it acknowledged survives a restart.

use std::time::Duration;

use serde_json::json;

use sluice::core::units::{UNITS, unit_of};

use crate::pg::PgServer;
use crate::support::{Reply, Server, Sink, gate_for, settled_cluster, webhook_task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_delivers_and_keeps_its_tasks_across_a_restart() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let url = pg.url();
    let on_pg = |config: &mut sluice::config::ServerConfig| config.store = Some(url.clone());
    let sink = Sink::start().await;
    let mut server = Server::start_with(dir.path(), on_pg).await;
    let c = server.client();
    // A second server on the same schema joins: the gates spread over the
    // two, and each answers the whole API.
    let second_dir = tempfile::tempdir().expect("temp dir");
    let mut second = Server::start_with(second_dir.path(), on_pg).await;
    let c2 = second.client();
    let cluster = c2.send("GET", "/v1/cluster", None).await.1;
    assert_eq!(cluster["store"], "postgres", "{cluster}");
    assert_eq!(
        cluster["nodes"].as_array().map(Vec::len),
        Some(2),
        "{cluster}"
    );
    let first_node = server.node().expect("a cluster node");
    let second_node = second.node().expect("a cluster node");
    assert_eq!(cluster["node"], second_node.as_str(), "{cluster}");
    c.put_gate("pg", gate_for(&sink, "100/s")).await;
    let mut keyed = webhook_task("pg", &sink.url("/now"));
    keyed["idempotency_key"] = json!("order-7");
    let first = c.create(keyed.clone()).await;
    let (status, replay) = c.send("POST", "/v1/tasks", Some(keyed)).await;
    assert_eq!((status, &replay["id"]), (200, &first["id"]), "{replay}");
    let ids = c
        .batch(
            (0..20)
                .map(|_| webhook_task("pg", &sink.url("/batch")))
                .collect(),
        )
        .await;
    let mut later = webhook_task("pg", &sink.url("/later"));
    later["delay"] = json!("1500ms");
    let later = c.create(later).await;
    // Through the other node: it commits the create itself, and the gate's
    // owner hears of it.
    let forwarded = c2.create(webhook_task("pg", &sink.url("/forwarded"))).await;
    let seen = c2.task(forwarded["id"].as_str().expect("id")).await;
    assert_eq!(seen["gate"], "pg", "{seen}");
    // The gate's view names its owner (the node that answered it).
    let gate = c2.send("GET", "/v1/gates/pg", None).await.1;
    assert!(
        [&first_node, &second_node]
            .iter()
            .any(|n| gate["owner"] == n.as_str()),
        "{gate}"
    );
    second.stop().await;
    sink.wait_for(22, Duration::from_secs(10)).await;
    let done = c
        .wait_state(&ids[19], "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(done["attempts"][0]["status"], 200, "{done}");
    // No file backups of a PostgreSQL store: PostgreSQL's tools do that.
    let (status, body) = c.send("POST", "/v1/admin/backup", None).await;
    assert_eq!(status, 501, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pg_dump")),
        "{body}"
    );
    server.stop().await;
    assert!(
        !dir.path().join(sluice::server::DATA_FILE).exists(),
        "nothing is written to the data dir's file"
    );

    let server = Server::start_with(dir.path(), on_pg).await;
    let c = server.client();
    let later_id = later["id"].as_str().expect("id");
    let t = c
        .wait_state(later_id, "succeeded", Duration::from_secs(15))
        .await;
    assert_eq!(t["attempt_count"], 1, "{t}");
    let gate = c.send("GET", "/v1/gates/pg", None).await.1;
    assert_eq!(gate["counters"]["succeeded"], 23, "{gate}");
    assert_eq!(gate["backlog"], 0, "{gate}");
    let listed = c.send("GET", "/v1/tasks?gate=pg&limit=100", None).await.1;
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(23),
        "{listed}"
    );
    assert_eq!(sink.hits().len(), 23, "each task arrived once");
}

/// A server from before clusters held an exclusive advisory lock on its
/// schema and knows no lease: a node must not start beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_does_not_start_beside_a_server_from_before_clusters() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let open = |url: String| {
        tokio::task::spawn_blocking(move || sluice::store::PgStore::open(&url).map(drop))
    };
    open(url.clone())
        .await
        .expect("joined")
        .expect("the schema is created");
    let client = pg.client("sluice").await;
    // As the old server did; the store just closed may still hold its
    // shared lock for a moment.
    let start = sluice::clock::instant();
    loop {
        let held: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(7206317, hashtext(current_schema()))",
                &[],
            )
            .await
            .expect("lock")
            .get(0);
        if held {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never got the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = open(url.clone()).await.expect("joined");
    let message = refused
        .expect_err("started beside an old server")
        .to_string();
    assert!(message.contains("before clusters"), "{message}");
    drop(client);
}

/// `sluice migrate` creates (or upgrades) the schema and exits, as the
/// step before starting a new build on every node; run again, it changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_schema_and_can_run_again() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    for _ in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["migrate", "--store", &pg.url()])
            .output()
            .expect("sluice migrate");
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        assert!(
            said.contains(&format!(
                "schema is at version {}",
                sluice::store::PG_SCHEMA_VERSION
            )),
            "{said}"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .env_remove("SLUICE_STORE")
        .output()
        .expect("sluice migrate");
    assert_eq!(out.status.code(), Some(3), "no store in an empty dir");
}

/// `sluice check --store` checks a PostgreSQL store as it does a file: no
/// problems after a server ran on it; a pending entry deleted behind the
/// server's back is found (exit 8, in text and JSON); `--repair` there is
/// refused (exit 2), naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_a_lost_index_entry_in_postgres() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let url = pg.url();
    let sink = Sink::start().await;
    let mut server =
        Server::start_with(dir.path(), |config| config.store = Some(url.clone())).await;
    let c = server.client();
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let mut later = webhook_task("g", &sink.url("/later"));
    later["delay"] = json!("1h");
    let waiting = c.create(later.clone()).await;
    later["coalesce_key"] = json!("c1");
    later["priority"] = json!(9);
    c.create(later).await;
    let done = c.create(webhook_task("g", &sink.url("/now"))).await;
    c.wait_state(
        done["id"].as_str().expect("id"),
        "succeeded",
        Duration::from_secs(15),
    )
    .await;
    server.stop().await;

    let check = |args: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let mut all = vec!["check", "--store", url.as_str()];
            all.extend_from_slice(args);
            let out = crate::ops::sluice(&all).await;
            (out.status.code(), crate::ops::said(&out))
        }
    };
    let (code, said) = check(&[]).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("checked 3 tasks"), "{said}");
    assert!(said.contains("no problems"), "{said}");

    let lost = crate::ops::task_number(waiting["id"].as_str().expect("id"));
    let client = pg.client("sluice").await;
    let unpended = client
        .execute(
            "UPDATE tasks SET due = NULL WHERE id = $1",
            &[&(lost as i64)],
        )
        .await
        .expect("update");
    assert_eq!(unpended, 1);
    let (code, said) = check(&[]).await;
    assert_eq!(code, Some(8), "{said}");
    assert!(said.contains(&format!("pending: task {lost}")), "{said}");
    let (code, said) = check(&["--json"]).await;
    assert_eq!(code, Some(8), "{said}");
    assert!(said.contains("\"ok\":false"), "{said}");
    let (code, said) = check(&["--repair"]).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("redb file only"), "{said}");
}

/// TLS to PostgreSQL: against a server that takes TLS connections only, a
/// URL without TLS is turned away by the server; `sslmode=verify-full` with
/// the server's CA runs the whole server (writer, readers, the cluster's
/// own connections) over TLS; a CA that did not sign the server's
/// certificate is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_speaks_tls_to_postgres_and_verifies_the_server() {
    let issue = || {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rcgen::CertifiedIssuer::self_signed(params, key).expect("CA")
    };
    let ca = issue();
    let other_ca = issue();
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let Some(pg) = PgServer::start_tls(&server_cert.pem(), &server_key.serialize_pem()) else {
        return;
    };
    let temp = tempfile::tempdir().expect("temp dir");
    let ca_file = temp.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write");
    let other_file = temp.path().join("other.pem");
    std::fs::write(&other_file, other_ca.pem()).expect("write");
    let with_ca = |file: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            pg.url(),
            file.display()
        )
    };

    let open = |url: String| async move {
        tokio::task::spawn_blocking(move || sluice::store::PgStore::open(&url).map(|_| ()))
            .await
            .expect("open")
    };
    let plain = open(pg.url()).await.expect_err("the server takes TLS only");
    assert!(
        plain.to_string().contains("no encryption"),
        "refused by the server: {plain}"
    );
    let wrong = open(with_ca(&other_file))
        .await
        .expect_err("a certificate another CA signed");
    assert!(
        wrong.to_string().to_lowercase().contains("certificate"),
        "{wrong}"
    );

    let url = with_ca(&ca_file);
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::start().await;
    let mut server =
        Server::start_with(dir.path(), |config| config.store = Some(url.clone())).await;
    let c = server.client();
    c.put_gate("tls", gate_for(&sink, "100/s")).await;
    let task = c.create(webhook_task("tls", &sink.url("/over-tls"))).await;
    c.wait_state(
        task["id"].as_str().expect("id"),
        "succeeded",
        Duration::from_secs(20),
    )
    .await;
    let cluster = c.send("GET", "/v1/cluster", None).await.1;
    assert_eq!(cluster["store"], "postgres", "{cluster}");
    server.stop().await;
}

/// Engines driven directly on one database, each running half of the
/// units, as two nodes of a cluster will.
mod engines {
    use std::sync::Arc;

    use sluice::core::units::{UNITS, Units, unit_of};
    use sluice::core::{Timestamp, Tuning};
    use sluice::model::{NewTask, PluginCall, Target};
    use sluice::shell::plugins::Upload;
    use sluice::shell::{Command, Created, Engine, ShellError, Start};
    use sluice::store::{Backend, PgStore, PluginRecord};

    pub const NOW: Timestamp = Timestamp(1_767_225_600_000);

    /// The lower or the upper half of the units.
    pub fn half(upper: bool) -> Units {
        (0..UNITS).filter(|u| (*u >= UNITS / 2) == upper).collect()
    }

    /// A gate name in that half.
    pub fn gate_in(upper: bool) -> String {
        (0..)
            .map(|i| format!("gate-{i}"))
            .find(|name| (unit_of(name, UNITS) >= UNITS / 2) == upper)
            .expect("a name")
    }

    /// An engine on the database at `url` running one half, with its gate.
    pub fn engine(url: &str, upper: bool) -> Engine {
        let store: Arc<dyn Backend> = Arc::new(PgStore::open(url).expect("open"));
        let mut engine = Engine::empty(store, Tuning::default(), u64::from(upper)).expect("engine");
        engine
            .adopt(NOW, half(upper), Start::Restart)
            .expect("adopt");
        put_gate(&mut engine, NOW, &gate_in(upper));
        engine
    }

    /// Puts gate `name` (a fast one) through `engine`.
    pub fn put_gate(engine: &mut Engine, at: Timestamp, name: &str) {
        let spec = crate::support::engine_gate(1_000.0, 1_000, 2_000, "127.0.0.1:9".into());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let put = Command::PutGate {
            name: name.to_string(),
            spec: Box::new(spec),
            reply: tx,
        };
        engine.turn(at, vec![put], Vec::new()).expect("turn");
        rx.blocking_recv().expect("answer").expect("gate");
    }

    /// Deletes gate `name` through `engine`, cancelling its tasks.
    pub fn delete_gate(engine: &mut Engine, at: Timestamp, name: &str) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let delete = Command::DeleteGate {
            name: name.to_string(),
            force: true,
            reply: tx,
        };
        engine.turn(at, vec![delete], Vec::new()).expect("turn");
        rx.blocking_recv().expect("answer").expect("deleted");
    }

    /// A task of `gate` that runs plugin `name@version`, or why not.
    pub fn create_plugin_task(
        engine: &mut Engine,
        at: Timestamp,
        gate: &str,
        (name, version): (&str, &str),
    ) -> Result<Vec<Created>, ShellError> {
        let mut task = task(gate, at, 0);
        task.target = Target::Plugin(PluginCall {
            name: name.into(),
            version: version.into(),
            input: serde_json::Value::Null,
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let create = Command::CreateTasks {
            tasks: vec![task],
            reply: tx,
        };
        engine.turn(at, vec![create], Vec::new()).expect("turn");
        rx.blocking_recv().expect("answer")
    }

    /// Where an upload's answer comes: the record and whether it was stored.
    pub type Uploaded = tokio::sync::oneshot::Receiver<Result<(PluginRecord, bool), ShellError>>;

    /// An upload of plugin `name@version` (a record, no component: it is
    /// never run) whose contents say `by`, and where its answer comes.
    pub fn upload(name: &str, version: &str, by: usize) -> (Command, Uploaded) {
        let record: PluginRecord = serde_json::from_value(serde_json::json!({
            "name": name, "version": version, "size": 4, "sha256": format!("{by}"),
            "uploaded_at": 1, "imports": [], "unfinished": 0,
        }))
        .expect("plugin record");
        let upload = Upload {
            record,
            wasm: Vec::new(),
            artifact: Vec::new(),
            engine: 0,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let put = Command::PutPlugin {
            upload: Box::new(upload),
            reply: tx,
        };
        (put, rx)
    }

    /// Deletes plugin `key` through `engine`, or why not.
    pub fn delete_plugin(engine: &mut Engine, at: Timestamp, key: &str) -> Result<(), ShellError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let delete = Command::DeletePlugin {
            key: key.into(),
            reply: tx,
        };
        engine.turn(at, vec![delete], Vec::new()).expect("turn");
        rx.blocking_recv().expect("answer")
    }

    /// `n` tasks in `gate` at `at`, due then, or why not.
    pub fn try_create(
        engine: &mut Engine,
        at: Timestamp,
        gate: &str,
        n: usize,
    ) -> Result<Vec<Created>, ShellError> {
        let tasks = (0..n).map(|i| task(gate, at, i)).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        engine
            .turn(
                at,
                vec![Command::CreateTasks { tasks, reply: tx }],
                Vec::new(),
            )
            .expect("turn");
        rx.blocking_recv().expect("answer")
    }

    /// Creates `n` webhook tasks in `gate` at `at`, due at `due`.
    pub fn create(
        engine: &mut Engine,
        at: Timestamp,
        gate: &str,
        n: usize,
        due: Timestamp,
    ) -> Vec<Created> {
        let tasks = (0..n).map(|i| task(gate, due, i)).collect();
        turn_creating(engine, at, tasks)
    }

    /// One task created with an idempotency key.
    pub fn create_keyed(engine: &mut Engine, at: Timestamp, gate: &str, key: &str) -> Created {
        let mut task = task(gate, at, 0);
        task.idempotency_key = Some(key.to_string());
        let mut created = turn_creating(engine, at, vec![task]);
        created.pop().expect("one created")
    }

    fn turn_creating(engine: &mut Engine, at: Timestamp, tasks: Vec<NewTask>) -> Vec<Created> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        engine
            .turn(
                at,
                vec![Command::CreateTasks { tasks, reply: tx }],
                Vec::new(),
            )
            .expect("turn");
        rx.blocking_recv().expect("answer").expect("created")
    }

    /// A webhook task of `gate`, due at `due`, keyed by `i`.
    fn task(gate: &str, due: Timestamp, i: usize) -> NewTask {
        let mut task = crate::support::engine_task(gate, "http://127.0.0.1:9/", due);
        task.key = Some(format!("k{}", i % 3));
        task
    }
}

/// Two engines on one database, each running half of the units (as two
/// nodes of a cluster will), create tasks at the same instants: the ids
/// come from blocks the database reserves, so none is given twice and no
/// create overwrites another's, and the store checks clean.
#[test]
fn two_engines_on_one_database_never_give_one_task_id_twice() {
    use sluice::core::Timestamp;
    use sluice::store::PgStore;

    let Some(pg) = PgServer::start() else {
        return;
    };
    let run = |upper: bool, url: String| {
        std::thread::spawn(move || {
            let mut engine = engines::engine(&url, upper);
            let gate = engines::gate_in(upper);
            let mut ids = Vec::new();
            for turn in 0..20u64 {
                // Both engines at the same instants: ids counted from the
                // clock alone would be the same on both.
                let at = Timestamp(engines::NOW.as_ms() + turn);
                let due = Timestamp(engines::NOW.as_ms() + 3_600_000);
                let created = engines::create(&mut engine, at, &gate, 250, due);
                ids.extend(created.iter().map(|c| c.id.0));
            }
            ids
        })
    };
    let lower = run(false, pg.url());
    let upper = run(true, pg.url());
    let mut ids = lower.join().expect("lower half");
    ids.extend(upper.join().expect("upper half"));
    let given = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), given, "a task id was given twice");
    assert_eq!(given, 10_000);
    let checked = PgStore::open(&pg.url())
        .expect("open")
        .check()
        .expect("check");
    assert_eq!(checked.tasks, 10_000, "creates overwrote each other");
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
}

/// A create on one engine into a gate the other runs (a foreign create):
/// committed there with its rows and counters, never queued on the engine
/// that made it, and started exactly once by the gate's engine once it
/// hears of it, whether its notice comes late, twice, or is lost and the
/// gate reloaded. The store checks clean, counters included.
#[test]
fn a_task_created_into_another_engines_gate_starts_there_exactly_once() {
    use std::collections::BTreeMap;

    use sluice::core::Timestamp;
    use sluice::store::PgStore;

    let Some(pg) = PgServer::start() else {
        return;
    };
    let mut lower = engines::engine(&pg.url(), false);
    let mut upper = engines::engine(&pg.url(), true);
    let theirs = engines::gate_in(true);
    let now = engines::NOW;
    let mut created = Vec::new();
    for turn in 0..4u64 {
        let at = Timestamp(now.as_ms() + turn);
        created.extend(engines::create(&mut lower, at, &theirs, 250, at));
    }
    // The engine that created them starts none of them.
    let idle = lower.turn(Timestamp(now.as_ms() + 10), Vec::new(), Vec::new());
    assert!(
        idle.expect("turn").is_empty(),
        "the creating engine started a task"
    );
    let notices = lower.take_notices();
    assert_eq!(notices.len(), 1_000);
    assert!(lower.take_notices().is_empty(), "notices handed out twice");
    // Heard late and out of order: a few twice, the first hundred lost.
    let mut heard: Vec<_> = notices[100..].to_vec();
    heard.extend(notices[500..600].iter().cloned());
    heard.reverse();
    let mut started: BTreeMap<u64, u32> = BTreeMap::new();
    let mut at = Timestamp(now.as_ms() + 20);
    upper.appeared(at, heard);
    for step in 0..400u64 {
        at = Timestamp(now.as_ms() + 20 + step * 10);
        if step == 50 {
            // A reconnect: the gate is read again.
            upper.reload(at, notices[0].gate);
        }
        for plan in upper.turn(at, Vec::new(), Vec::new()).expect("turn") {
            *started.entry(plan.task.0).or_default() += 1;
        }
        if started.len() == 1_000 {
            break;
        }
    }
    let ids: Vec<u64> = created.iter().map(|c| c.id.0).collect();
    assert_eq!(started.len(), 1_000, "not every task started");
    assert!(started.values().all(|n| *n == 1), "a task started twice");
    assert!(ids.iter().all(|id| started.contains_key(id)));
    let checked = PgStore::open(&pg.url())
        .expect("open")
        .check()
        .expect("check");
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
}

/// Runs `work` on two writers at once, each with a `PgStore` of its own on
/// `pg`'s database (as two nodes have), and gives what each returned.
/// `work` gets its writer's number and a barrier to meet the other at.
fn two_writers<T: Send + 'static>(
    pg: &PgServer,
    work: impl Fn(usize, &dyn sluice::store::Backend, &std::sync::Barrier) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let work = std::sync::Arc::new(work);
    let together = std::sync::Arc::new(std::sync::Barrier::new(2));
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let (url, work, together) = (pg.url(), work.clone(), together.clone());
            std::thread::spawn(move || {
                let store = sluice::store::PgStore::open(&url).expect("open");
                work(i, &store, &together)
            })
        })
        .collect();
    writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect()
}

/// Engines on several nodes count into one gate: each turn adds its change
/// under a lock on the gate's row, so concurrent writers add up instead of
/// overwriting each other.
#[test]
fn counts_added_by_two_writers_at_once_add_up() {
    use sluice::store::{Backend, Counts, CountsDelta, PgStore};

    let Some(pg) = PgServer::start() else {
        return;
    };
    let one = CountsDelta::between(
        &Counts::default(),
        &Counts {
            pending: 1,
            ..Counts::default()
        },
    );
    two_writers(&pg, move |i, store, _| {
        // One writer names gate 2 first, the other gate 1: the store locks
        // them in gate order whatever it is given, so they never deadlock.
        let deltas = if i == 0 {
            [(2, one), (1, one)]
        } else {
            [(1, one), (2, one)]
        };
        for _ in 0..200 {
            store.write(|tx| tx.add_counts(&deltas)).expect("write");
        }
    });
    let store = PgStore::open(&pg.url()).expect("open");
    let reader = (&store as &dyn Backend).read().expect("read");
    assert_eq!(reader.counts(1).expect("counts").pending, 400);
    assert_eq!(reader.counts(2).expect("counts").pending, 400);
}

/// Two writers claim the same idempotency keys at once: for each key one
/// wins, and the other is told the winner's task, never a second task.
#[test]
fn two_writers_claiming_one_idempotency_key_agree_on_its_task() {
    use sluice::store::{Backend, PgStore};

    let Some(pg) = PgServer::start() else {
        return;
    };
    let answers = two_writers(&pg, |i, store, together| {
        (0..300u64)
            .map(|k| {
                let mine = 1_000 * (i as u64 + 1) + k;
                let key = format!("order-{k}");
                // Both claim each key at the same moment.
                together.wait();
                let held = store
                    .write(|tx| tx.claim_idempotent(1, &key, mine))
                    .expect("claim");
                held.unwrap_or(mine)
            })
            .collect::<Vec<u64>>()
    });
    let split = answers[0]
        .iter()
        .zip(&answers[1])
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(split, 0, "keys that made two tasks");
    let store = PgStore::open(&pg.url()).expect("open");
    let store: &dyn Backend = &store;
    for (k, task) in answers[0].iter().enumerate() {
        let stored = store
            .write(|tx| tx.idempotent(1, &format!("order-{k}")))
            .expect("read");
        assert_eq!(stored, Some(*task));
    }
}

/// Writers on two nodes spend one root's budget of descendants at once:
/// together they never pass it.
#[test]
fn two_writers_share_one_lineage_budget() {
    use sluice::store::{Backend, PgStore};

    let Some(pg) = PgServer::start() else {
        return;
    };
    let granted: usize = two_writers(&pg, |_, store, together| {
        (0..100)
            .filter(|_| {
                together.wait();
                store
                    .write(|tx| tx.add_descendants(7, 1, 150))
                    .expect("write")
                    .is_some()
            })
            .count()
    })
    .into_iter()
    .sum();
    assert_eq!(granted, 150, "the budget was passed or left unspent");
    let store = PgStore::open(&pg.url()).expect("open");
    let store: &dyn Backend = &store;
    assert_eq!(store.write(|tx| tx.descendants(7)).expect("read"), 150);
}

/// Stores the record of plugin `resize@1.0.0` (no component: tasks of it
/// are only created here, never run).
fn put_resize_plugin(pg: &PgServer) {
    use sluice::store::{Backend, PgStore, PluginRecord};
    let record: PluginRecord = serde_json::from_value(json!({
        "name": "resize", "version": "1.0.0", "size": 4, "sha256": "00",
        "uploaded_at": 1, "imports": [], "unfinished": 0,
    }))
    .expect("plugin record");
    let store = PgStore::open(&pg.url()).expect("open");
    (&store as &dyn Backend)
        .write(|tx| tx.put_plugin(&record))
        .expect("put");
}

/// The unfinished tasks `resize@1.0.0` counts, as stored.
fn resize_unfinished(pg: &PgServer) -> Option<u64> {
    use sluice::store::{Backend, PgStore};
    let store = PgStore::open(&pg.url()).expect("open");
    let reader = (&store as &dyn Backend).read().expect("read");
    reader
        .plugin("resize@1.0.0")
        .expect("read")
        .map(|p| p.unfinished)
}

/// Writers on two nodes count tasks of one plugin at once: the counts add
/// up, so a plugin in use on any node cannot be deleted as unused.
#[test]
fn two_writers_counting_one_plugin_add_up() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    put_resize_plugin(&pg);
    two_writers(&pg, |_, store, _| {
        for _ in 0..200 {
            store
                .write(|tx| tx.add_plugin_refs(&[("resize@1.0.0".into(), 1)]))
                .expect("write");
        }
    });
    assert_eq!(resize_unfinished(&pg), Some(400));
}

/// Creates on two nodes share-lock the plugin their tasks run (a delete
/// elsewhere waits for them), and at the turn's end count their tasks into
/// it. The count's lock must not conflict with the other node's share lock:
/// each would wait for the other until PostgreSQL broke the deadlock by
/// failing one commit (and that node's engine with it).
#[test]
fn two_nodes_creating_tasks_of_one_plugin_at_once_both_commit() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    put_resize_plugin(&pg);
    let failed: Vec<Vec<String>> = two_writers(&pg, |_, store, together| {
        (0..10)
            .filter_map(|_| {
                store
                    .write(|tx| {
                        tx.plugin("resize@1.0.0")?;
                        // Both hold the share lock before either counts.
                        together.wait();
                        tx.add_plugin_refs(&[("resize@1.0.0".into(), 1)])
                    })
                    .err()
                    .map(|e| e.to_string())
            })
            .collect()
    });
    assert_eq!(failed, [Vec::<String>::new(), Vec::new()], "failed commits");
    assert_eq!(resize_unfinished(&pg), Some(20));
}

/// Two nodes take uploads of the same two new plugin versions in one turn
/// each, in opposite orders, at the same moment. Each upload locks its key
/// to the commit: taken in the order of the commands, each node would hold
/// one and wait for the other's (a deadlock PostgreSQL breaks by failing
/// one commit, and that node's engine with it). Both turns commit, and
/// each version is stored by one node.
#[test]
fn two_nodes_uploading_two_plugins_in_opposite_orders_both_commit() {
    use sluice::core::Timestamp;
    use sluice::shell::ShellError;

    let Some(pg) = PgServer::start() else {
        return;
    };
    let together = std::sync::Arc::new(std::sync::Barrier::new(2));
    let nodes: Vec<_> = (0..2usize)
        .map(|i| {
            let (url, together) = (pg.url(), together.clone());
            std::thread::spawn(move || -> Result<Vec<[bool; 2]>, String> {
                let mut engine = engines::engine(&url, i == 1);
                let mut stored = Vec::new();
                for round in 0..20u64 {
                    let version = format!("1.0.{round}");
                    let mut names = ["a", "b"];
                    if i == 1 {
                        names.reverse();
                    }
                    let (puts, answers): (Vec<_>, Vec<_>) = names
                        .iter()
                        .map(|name| engines::upload(name, &version, i))
                        .unzip();
                    together.wait();
                    let at = Timestamp(engines::NOW.as_ms() + 1 + round);
                    let answered = engine
                        .turn(at, puts, Vec::new())
                        .map_err(|e| e.to_string())
                        .and_then(|_| {
                            answers
                                .into_iter()
                                .map(|answer| match answer.blocking_recv() {
                                    Ok(Ok((_, stored))) => Ok(stored),
                                    Ok(Err(ShellError::Conflict(_))) => Ok(false),
                                    other => Err(format!("{other:?}")),
                                })
                                .collect::<Result<Vec<bool>, String>>()
                        });
                    match answered {
                        Ok(mut mine) => {
                            if i == 1 {
                                mine.reverse();
                            }
                            stored.push([mine[0], mine[1]]);
                        }
                        Err(e) => {
                            // The other node still meets this one at the
                            // barrier each round.
                            for _ in round + 1..20 {
                                together.wait();
                            }
                            return Err(format!("round {round}: {e}"));
                        }
                    }
                }
                Ok(stored)
            })
        })
        .collect();
    let stored: Vec<Vec<[bool; 2]>> = nodes
        .into_iter()
        .map(|node| node.join().expect("node").expect("every turn commits"))
        .collect();
    for (round, (first, second)) in stored[0].iter().zip(&stored[1]).enumerate() {
        for plugin in 0..2 {
            assert!(
                first[plugin] != second[plugin],
                "round {round}, plugin {plugin}: stored by both or neither"
            );
        }
    }
}

/// Two nodes take the first upload of one plugin version, with different
/// contents, at the same moment: one stores it, the other then finds it
/// there (and refuses its own as a conflict), never writing over it.
#[test]
fn two_first_uploads_of_one_plugin_version_store_one() {
    use sluice::store::{Backend, PgStore, PluginRecord};

    let Some(pg) = PgServer::start() else {
        return;
    };
    let record = |version: usize, sha: &str| -> PluginRecord {
        serde_json::from_value(json!({
            "name": "resize", "version": format!("1.0.{version}"), "size": 4,
            "sha256": sha, "uploaded_at": 1, "imports": [], "unfinished": 0,
        }))
        .expect("plugin record")
    };
    let stored = two_writers(&pg, move |i, store, together| {
        (0..100)
            .map(|version| {
                let mine = record(version, &format!("{i}"));
                let key = format!("resize@1.0.{version}");
                together.wait();
                store
                    .write(|tx| {
                        if tx.lock_plugin(&key)?.is_some() {
                            return Ok(false);
                        }
                        tx.put_plugin(&mine)?;
                        Ok(true)
                    })
                    .expect("upload")
            })
            .collect::<Vec<bool>>()
    });
    let store = PgStore::open(&pg.url()).expect("open");
    let reader = (&store as &dyn Backend).read().expect("read");
    for (version, stored) in stored[0].iter().zip(&stored[1]).enumerate() {
        let winner = match stored {
            (true, false) => "0",
            (false, true) => "1",
            both => panic!("version {version}: stored by each writer? {both:?}"),
        };
        let kept = reader
            .plugin(&format!("resize@1.0.{version}"))
            .expect("read")
            .map(|p| p.sha256);
        assert_eq!(kept.as_deref(), Some(winner), "version {version}");
    }
}

/// The notices of foreign creates travel between nodes by `NOTIFY`, sent at
/// commit on the unit's channel: a listener on the gate's unit hears every
/// one, and the gate's engine starts each task once. The same feed then
/// stops listening for that unit (handed over) and listens for another
/// (adopted): only the other's notices come.
#[test]
fn foreign_creates_are_heard_by_the_gates_node_through_notify() {
    use sluice::core::Timestamp;
    use sluice::core::units::Units;
    use sluice::store::{Heard, PgStore};

    let Some(pg) = PgServer::start() else {
        return;
    };
    let mut lower = engines::engine(&pg.url(), false);
    let mut upper = engines::engine(&pg.url(), true);
    let theirs = engines::gate_in(true);
    let listening = PgStore::open(&pg.url()).expect("open");
    let mut listener = listening.listener().expect("listener");
    listener.listen(Units::of(&theirs)).expect("listen");
    let now = engines::NOW;
    for turn in 0..4u64 {
        let at = Timestamp(now.as_ms() + turn);
        engines::create(&mut lower, at, &theirs, 250, at);
    }
    let mut sent = lower.take_notices();
    let waiting = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let heard = hear(&waiting, &mut listener, sent.len());
    sent.sort_by_key(|n| n.order.1);
    assert_eq!(heard, sent, "the notices heard are not those sent");
    let mut started = std::collections::BTreeSet::new();
    upper.appeared(Timestamp(now.as_ms() + 10), heard);
    for step in 0..400u64 {
        let at = Timestamp(now.as_ms() + 20 + step * 10);
        for plan in upper.turn(at, Vec::new(), Vec::new()).expect("turn") {
            assert!(started.insert(plan.task.0), "a task started twice");
        }
        if started.len() == 1_000 {
            break;
        }
    }
    assert_eq!(started.len(), 1_000, "not every task started");

    let mine = engines::gate_in(false);
    listener
        .listen_no_more(Units::of(&theirs))
        .expect("unlisten");
    listener.listen_also(Units::of(&mine)).expect("listen also");
    // Committed first, on the unit no longer listened for: a notice of
    // it would come before those of the second.
    let at = Timestamp(now.as_ms() + 10_000);
    engines::create(&mut lower, at, &theirs, 5, at);
    engines::create(&mut upper, at, &mine, 5, at);
    assert_eq!(lower.take_notices().len(), 5, "the first create's notices");
    let mut sent = upper.take_notices();
    let heard = hear(&waiting, &mut listener, sent.len());
    sent.sort_by_key(|n| n.order.1);
    assert_eq!(heard, sent, "only the unit listened for is heard");
}

/// At least `n` notices from `listener`, by task id (10 s at most).
fn hear(
    waiting: &tokio::runtime::Runtime,
    listener: &mut sluice::store::PgListener,
    n: usize,
) -> Vec<sluice::store::Notice> {
    let mut heard = Vec::new();
    while heard.len() < n {
        let notices = waiting
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), listener.recv()).await
            })
            .expect("the notices come within 10 s")
            .expect("still listening");
        heard.extend(notices);
    }
    heard.sort_by_key(|n| n.order.1);
    heard
}

/// An idempotency key replayed on a node whose engine does not run the
/// task's gate answers with the task and writes nothing of it: the task's
/// row is its gate's engine's to write, and a copy written back from
/// another node could undo that engine's later change (a start, an end).
#[test]
fn a_replay_on_another_engine_writes_nothing_of_the_task() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let mut lower = engines::engine(&pg.url(), false);
    let _upper = engines::engine(&pg.url(), true);
    let theirs = engines::gate_in(true);
    let first = engines::create_keyed(&mut lower, engines::NOW, &theirs, "once");
    assert!(!first.replayed);
    let version = |id: u64| -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            let row = client
                .query_one(
                    "SELECT xmin::text FROM sluice.tasks WHERE id = $1",
                    &[&i64::try_from(id).expect("id")],
                )
                .await
                .expect("the task's row");
            row.get(0)
        })
    };
    let written = version(first.id.0);
    let again = engines::create_keyed(
        &mut lower,
        sluice::core::Timestamp(engines::NOW.as_ms() + 10),
        &theirs,
        "once",
    );
    assert!(again.replayed, "the key was not replayed");
    assert_eq!(again.id, first.id);
    assert_eq!(
        version(first.id.0),
        written,
        "the replay wrote the task's row"
    );
}

/// A gate deleted by its engine while another node's engine creates into
/// it: each create either commits before the delete, which then cancels
/// its tasks, or finds no gate. Without the delete's lock on the gate, a
/// create could commit between the delete's read of the pending tasks and
/// its commit, and leave a task pending in a gate that is gone.
#[test]
fn a_gate_deleted_while_another_node_creates_into_it_leaves_no_task_behind() {
    use sluice::core::Timestamp;
    use sluice::store::{Backend, PgStore, TaskState};
    use std::sync::Barrier;

    let Some(pg) = PgServer::start() else {
        return;
    };
    const ROUNDS: u64 = 12;
    let url = pg.url();
    let gate = engines::gate_in(true);
    let barrier = Barrier::new(2);
    let created: Vec<u64> = std::thread::scope(|scope| {
        let creating = scope.spawn(|| {
            let mut lower = engines::engine(&url, false);
            let mut ids = Vec::new();
            for round in 0..ROUNDS {
                barrier.wait();
                for step in 0..2_000 {
                    let at = Timestamp(engines::NOW.as_ms() + round * 100_000 + step);
                    match engines::try_create(&mut lower, at, &gate, 20) {
                        Ok(created) => ids.extend(created.iter().map(|c| c.id.0)),
                        Err(_) => break,
                    }
                }
                barrier.wait();
            }
            ids
        });
        let mut upper = engines::engine(&url, true);
        for round in 0..ROUNDS {
            let at = Timestamp(engines::NOW.as_ms() + round * 100_000);
            if round > 0 {
                engines::put_gate(&mut upper, at, &gate);
            }
            barrier.wait();
            std::thread::sleep(Duration::from_millis(5 + round * 3));
            engines::delete_gate(&mut upper, Timestamp(at.as_ms() + 50_000), &gate);
            barrier.wait();
        }
        creating.join().expect("the creating node")
    });
    assert!(created.len() > 50, "only {} tasks created", created.len());
    let store = PgStore::open(&url).expect("open");
    let reads = store.snapshot().expect("snapshot");
    let left: Vec<u64> = created
        .iter()
        .copied()
        .filter(|id| {
            reads
                .task(*id)
                .expect("read")
                .is_none_or(|t| t.state != TaskState::Cancelled)
        })
        .collect();
    assert!(
        left.is_empty(),
        "{} of {} acknowledged tasks outlived their gate, e.g. {:?}",
        left.len(),
        created.len(),
        &left[..left.len().min(5)]
    );
    let checked = store.check().expect("check");
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
}

/// A plugin that a schedule of another node's gate runs cannot be deleted:
/// the delete reads every stored schedule, not only those of the deleting
/// engine's units.
#[test]
fn a_plugin_a_schedule_of_another_nodes_gate_runs_is_not_deleted() {
    use sluice::shell::ShellError;
    use sluice::store::{Backend, PgStore, ScheduleRecord};

    let Some(pg) = PgServer::start() else {
        return;
    };
    put_resize_plugin(&pg);
    let schedule: ScheduleRecord = serde_json::from_value(json!({
        "name": "nightly", "cron": null, "timezone": "UTC", "every_ms": 3_600_000,
        "anchor": 0, "misfire": "skip", "catchup_limit": 100, "jitter_ms": 0,
        "template": {
            "gate": engines::gate_in(false),
            "plugin": { "name": "resize", "version": "1.0.0", "input": {} },
            "max_attempts": null, "timeout_ms": null, "backoff": null,
            "max_retry_duration_ms": null, "expires_after_ms": null, "labels": {},
        },
        "paused": true, "current": null, "last_scheduled": null, "counted_through": 0,
        "missed": 0, "skipped": 0, "last_runs": [], "last_error": null,
        "created_at": 1, "updated_at": 1,
    }))
    .expect("schedule record");
    let store = PgStore::open(&pg.url()).expect("open");
    (&store as &dyn Backend)
        .write(|tx| tx.put_schedule(&schedule))
        .expect("put");
    drop(store);
    // The engine of the other half of the units: the schedule is not its.
    let mut upper = engines::engine(&pg.url(), true);
    let refused = engines::delete_plugin(&mut upper, engines::NOW, "resize@1.0.0");
    assert!(
        matches!(&refused, Err(ShellError::Conflict(m)) if m.contains("nightly")),
        "{refused:?}"
    );
}

/// A plugin whose task another node created cannot be deleted: the delete
/// reads the plugin's stored count under a lock that creates on other
/// nodes wait for (or that makes them wait), not the deleting engine's own
/// count, which misses them. Once that task is gone the delete goes
/// through, and a create on the other node then finds no plugin.
#[test]
fn a_plugin_another_node_created_a_task_of_is_not_deleted() {
    use sluice::core::Timestamp;
    use sluice::shell::ShellError;

    let Some(pg) = PgServer::start() else {
        return;
    };
    put_resize_plugin(&pg);
    let mut lower = engines::engine(&pg.url(), false);
    let mut upper = engines::engine(&pg.url(), true);
    let at = |ms: u64| Timestamp(engines::NOW.as_ms() + ms);
    let created = engines::create_plugin_task(
        &mut lower,
        at(1),
        &engines::gate_in(true),
        ("resize", "1.0.0"),
    )
    .expect("created");
    let refused = engines::delete_plugin(&mut upper, at(2), "resize@1.0.0");
    assert!(
        matches!(&refused, Err(ShellError::Conflict(m)) if m.contains("1 unfinished")),
        "{refused:?}"
    );
    // The task cancelled (through its gate's engine), the plugin goes, and
    // the other node's next create finds it gone.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let cancel = sluice::shell::Command::CancelTask {
        id: created[0].id,
        reply: tx,
    };
    upper.turn(at(3), vec![cancel], Vec::new()).expect("turn");
    rx.blocking_recv().expect("answer").expect("cancelled");
    engines::delete_plugin(&mut upper, at(4), "resize@1.0.0").expect("deleted");
    let late = engines::create_plugin_task(
        &mut lower,
        at(5),
        &engines::gate_in(true),
        ("resize", "1.0.0"),
    );
    assert!(matches!(late, Err(ShellError::NoPlugin { .. })), "{late:?}");
}

/// A replay in a cluster (`POST /v1/tasks/replay` on one node) retries the
/// failed tasks of every owner's gates, each once: the node that runs the
/// job retries its own, and hands each other owner its part
/// (`/v1/internal/retry`, which no one without the cluster's key may use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_retries_the_failed_tasks_of_every_owner_once() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let on_pg = |config: &mut sluice::config::ServerConfig| config.store = Some(url.clone());
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let mut a = Server::start_with(dirs[0].path(), on_pg).await;
    let mut b = Server::start_with(dirs[1].path(), on_pg).await;
    let ids = [a.node().expect("a node"), b.node().expect("a node")];
    let c = a.client();
    let owners = settled_cluster(&c, &ids).await;
    let on = |node: usize| {
        (0..10_000)
            .map(|n| format!("r{n}"))
            .find(|g| owners[unit_of(g, UNITS) as usize] == node)
            .expect("a gate of the node")
    };
    let gates = [on(0), on(1)];
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::status(500));
    let mut tasks = Vec::new();
    for gate in &gates {
        let mut spec = gate_for(&sink, "100/s");
        spec["retry"]["max_attempts"] = json!(1);
        spec["circuit"] = serde_json::Value::Null;
        c.put_gate(gate, spec).await;
        tasks.extend(
            c.batch(
                (0..20)
                    .map(|_| webhook_task(gate, &sink.url("/r")))
                    .collect(),
            )
            .await,
        );
    }
    for id in &tasks {
        c.wait_state(id, "failed", Duration::from_secs(30)).await;
    }
    sink.behave(|_, _| Reply::ok());

    // Without the cluster's key the route is not there.
    let (status, body) = b
        .client()
        .send(
            "POST",
            "/v1/internal/retry",
            Some(json!({ "ids": [tasks[0]] })),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // A dry run counts every owner's gates, not only its node's.
    let (status, dry) = c
        .send(
            "POST",
            "/v1/tasks/replay",
            Some(json!({ "state": "failed", "dry_run": true })),
        )
        .await;
    assert_eq!((status, &dry["count"]), (200, &json!(40)), "{dry}");
    assert_eq!(dry["gates"].as_array().map(Vec::len), Some(2), "{dry}");

    let (status, job) = c
        .send(
            "POST",
            "/v1/tasks/replay",
            Some(json!({ "state": "failed" })),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().expect("id");
    let start = sluice::clock::instant();
    let job = loop {
        let (_, job) = c.send("GET", &format!("/v1/tasks/replay/{id}"), None).await;
        if job["state"] != "running" {
            break job;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["replayed"], 40, "{job}");
    for id in &tasks {
        c.wait_state(id, "succeeded", Duration::from_secs(30)).await;
    }
    // Each task twice at the sink: the failure, and the replay's attempt.
    let hits = sink.hits();
    for id in &tasks {
        let n = hits.iter().filter(|h| &h.task == id).count();
        assert_eq!(n, 2, "task {id} arrived {n} times");
    }
    b.stop().await;
    a.stop().await;
}

/// The row writes a backlog costs on PostgreSQL, counted by triggers the
/// test puts on the tables: a task's row is written at its creation and at
/// its end, and its start goes in a row of `starts` that up to 32 of a
/// turn's starts share (written once, and once more when swept). And the
/// statements it costs, counted by PostgreSQL: the two that write the row,
/// and little more (a turn reads its reports' tasks and attempts at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_writes_each_task_row_twice() {
    let Some(pg) = PgServer::start_counting() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let url = pg.url();
    let sink = Sink::start().await;
    let mut server =
        Server::start_with(dir.path(), |config| config.store = Some(url.clone())).await;
    let db = pg.client("sluice").await;
    db.batch_execute(
        "CREATE SEQUENCE task_writes; CREATE SEQUENCE start_writes;
         CREATE FUNCTION counted() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM nextval(TG_ARGV[0]); RETURN NULL; END $$;
         CREATE TRIGGER counted AFTER INSERT OR UPDATE OR DELETE ON tasks
             FOR EACH ROW EXECUTE FUNCTION counted('task_writes');
         CREATE TRIGGER counted AFTER INSERT OR UPDATE OR DELETE ON starts
             FOR EACH ROW EXECUTE FUNCTION counted('start_writes');",
    )
    .await
    .expect("the counting triggers");
    let c = server.client();
    let mut gate = gate_for(&sink, "5000/s");
    gate["concurrency"] = json!(50);
    c.put_gate("backlog", gate).await;
    if pg.counting() {
        pg.client("public")
            .await
            .batch_execute("CREATE EXTENSION pg_stat_statements; SELECT pg_stat_statements_reset()")
            .await
            .expect("counting statements");
    }
    const N: usize = 2000;
    let ids = c
        .batch(vec![webhook_task("backlog", &sink.url("/b")); N])
        .await;
    sink.wait_for(N, Duration::from_secs(30)).await;
    // Waited for through the gate's counters: what a read of each task
    // costs is not the backlog's.
    let began = sluice::clock::instant();
    loop {
        let (_, gate) = c.send("GET", "/v1/gates/backlog", None).await;
        if gate["counters"]["succeeded"] == N {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "{gate}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The statements that read reports' attempts, and the transactions.
    let counted = if pg.counting() {
        let row = db
            .query_one(
                "SELECT coalesce(sum(calls) FILTER (WHERE query LIKE '%attempts[w.n]%'), 0)::bigint, \
                 coalesce(sum(calls) FILTER (WHERE query = 'COMMIT'), 0)::bigint, \
                 sum(calls)::bigint FROM public.pg_stat_statements",
                &[],
            )
            .await
            .expect("the statements run");
        Some((
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        ))
    } else {
        None
    };
    for id in &ids {
        c.wait_state(id, "succeeded", Duration::from_secs(10)).await;
    }
    let writes = |sequence: &'static str| {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    &format!("SELECT last_value, is_called FROM {sequence}"),
                    &[],
                )
                .await
                .expect("a count");
            if row.get::<_, bool>(1) {
                row.get::<_, i64>(0)
            } else {
                0
            }
        }
    };
    let (tasks, starts) = (writes("task_writes").await, writes("start_writes").await);
    // Two per task, and some slack for the turns that start fewer than
    // three tasks (their rows take their starts). Without the starts kept
    // apart: three per task.
    let said = format!("{tasks} task row writes for {N} tasks ({starts} rows of starts)");
    assert!(tasks <= 2 * N as i64 + N as i64 / 10, "{said}");
    // Rows of three starts or more (at most 32), each written and swept:
    // at most two writes per three tasks. (How full they are depends on
    // how many tasks a turn starts.)
    assert!(starts >= 2 && starts <= 2 * N as i64 / 3, "{said}");
    // A turn reads its reports' attempts at once (one statement at most),
    // not one a report.
    if let Some((attempt_reads, commits, statements)) = counted {
        assert!(
            attempt_reads <= commits,
            "{attempt_reads} reads of attempts in {commits} transactions \
             ({statements} statements for {N} tasks)"
        );
    }
    server.stop().await;
}
