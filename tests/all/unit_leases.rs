//! Leases per unit (`cluster::units`, schema 6) on a real PostgreSQL: one
//! owner per unit at a time, a takeover after a lapse fences the last owner
//! (and waits for its commit in progress), a handover fences nobody, one
//! statement renews every unit and tells which were lost, and the plan
//! follows the rendezvous over the live nodes. Lapses are made by moving a
//! row's expiry into the past, as a paused owner would find it. Last, the
//! engine's half of a handover (`UnitsOrder`): two running engines pass a
//! busy gate's unit between them while it delivers to a sink.

use std::sync::Arc;

use std::time::Duration;

use sluice::cluster::{Acquired, Cluster, Terms};
use sluice::core::units::{ACQUIRE_PER_BEAT, UNITS, Units, fnv1a, owner_of, unit_of};
use sluice::store::{Backend, Fence, PgStore, StoreError};

use crate::pg::PgServer;

/// A node: its membership and its store, fenced by the node's generation.
struct Node {
    cluster: Arc<Cluster>,
    store: Arc<PgStore>,
}

impl Node {
    async fn join(url: &str, schema: &str) -> Node {
        Node::join_on(url, schema, Terms::default()).await
    }

    async fn join_on(url: &str, schema: &str, terms: Terms) -> Node {
        let store = {
            let (url, schema) = (url.to_string(), schema.to_string());
            tokio::task::spawn_blocking(move || PgStore::open_in(&url, &schema))
                .await
                .expect("joined")
                .expect("open")
        };
        let (target, schema) = store.settings();
        let cluster = Cluster::join(target, schema, "http://127.0.0.1:1".into(), terms)
            .await
            .expect("join");
        Node {
            cluster,
            store: Arc::new(store),
        }
    }

    fn id(&self) -> String {
        self.cluster.id().to_string()
    }

    /// Fences the store at the node's generation as it is now.
    async fn fence(&self) -> u64 {
        let generation = self.cluster.node_fence().await.expect("fence");
        self.store.set_fence(Some(Fence::Node {
            node: self.id(),
            generation,
        }));
        generation
    }

    /// One write transaction of its engine (it takes a gate id).
    async fn write(&self) -> Result<u32, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let store: &dyn Backend = store.as_ref();
            store.write(|tx| tx.next_gate_id())
        })
        .await
        .expect("joined")
    }

    async fn acquire(&self, unit: u32) -> Option<Acquired> {
        self.cluster.acquire_unit(unit).await.expect("acquire")
    }
}

/// A schedule is its gate's engine's: moved by a `PUT` to a gate another
/// engine runs, it is refused with a conflict that says what to do (it
/// was taken as a new schedule there, and both engines ran it), and it
/// stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_is_not_moved_to_a_gate_another_engine_runs() {
    use sluice::shell::UnitsOrder;
    let Some(pg) = PgServer::start() else {
        return;
    };
    let sink = crate::support::Sink::start().await;
    let (a, stop, thread) = running_engine(
        &pg.url(),
        "schedule_move",
        Units::ALL,
        Duration::from_millis(20),
    )
    .await;
    let there = (0..)
        .map(|i| format!("there-{i}"))
        .find(|name| Units::of(name) != Units::of("here"))
        .expect("a gate of another unit");
    for gate in ["here", there.as_str()] {
        a.put_gate(gate.into(), smooth_gate(&sink, 10.0))
            .await
            .expect("gate");
    }
    let spec = |gate: &str| sluice::model::ScheduleSpec {
        cron: None,
        timezone: "UTC".into(),
        every: Some(Duration::from_secs(3_600)),
        misfire: sluice::core::schedule::Misfire::Skip,
        catchup_limit: 1,
        jitter: Duration::ZERO,
        template: crate::support::engine_task(gate, &sink.url("/"), sluice::clock::now()),
    };
    a.put_schedule("hourly".into(), spec("here"))
        .await
        .expect("schedule");
    // The other gate's unit goes to another engine.
    a.units(UnitsOrder::Stop(Units::of(&there)))
        .await
        .expect("stop");
    a.units(UnitsOrder::Drop(Units::of(&there)))
        .await
        .expect("drop");
    let moved = a.put_schedule("hourly".into(), spec(&there)).await;
    match moved {
        Err(sluice::shell::ShellError::Conflict(message)) => assert!(
            message.contains("delete it and create it again"),
            "{message}"
        ),
        other => panic!("a move to another engine's gate: {other:?}"),
    }
    let (kept, created) = (a.put_schedule("hourly".into(), spec("here")).await)
        .expect("the schedule stays on its gate");
    assert!(!created, "the schedule was lost");
    assert_eq!(kept.template.gate, "here");
    stop_engines([(stop, thread)]);
}

/// A page of a replay is retried whole or not at all: with one of its
/// tasks' gates moved to another engine, the page is refused as `Moved`
/// (a 503, on which the job pauses and does the page again later) and
/// none of it is retried. (Before, that task was left out and the page
/// counted done: it was never replayed.) Back on this engine, the page
/// goes through whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_page_with_a_moving_gate_waits_and_goes_through_whole() {
    use sluice::shell::{ShellError, Start, UnitsOrder};
    use sluice::store::TaskState;
    let Some(pg) = PgServer::start() else {
        return;
    };
    let sink = crate::support::Sink::start().await;
    sink.behave(|_, _| crate::support::Reply::status(500));
    let (a, stop, thread) = running_engine(
        &pg.url(),
        "replay_move",
        Units::ALL,
        Duration::from_millis(20),
    )
    .await;
    let there = (0..)
        .map(|i| format!("there-{i}"))
        .find(|name| Units::of(name) != Units::of("here"))
        .expect("a gate of another unit");
    let now = sluice::clock::now();
    let mut tasks = Vec::new();
    for gate in ["here", there.as_str()] {
        a.put_gate(gate.into(), smooth_gate(&sink, 10.0))
            .await
            .expect("gate");
        tasks.push(sluice::model::NewTask {
            max_attempts: Some(1),
            ..crate::support::engine_task(gate, &sink.url("/"), now)
        });
    }
    let ids: Vec<_> = (a.create_tasks(tasks).await.expect("created"))
        .iter()
        .map(|c| c.id)
        .collect();
    let store = {
        let url = pg.url();
        tokio::task::spawn_blocking(move || PgStore::open_in(&url, "replay_move"))
            .await
            .expect("joined")
            .expect("open")
    };
    let states = || -> Vec<TaskState> {
        let reads = (&store as &dyn Backend).read().expect("read");
        (ids.iter())
            .map(|id| reads.task(id.0).expect("read").expect("task").state)
            .collect()
    };
    for _ in 0..200 {
        if states() == [TaskState::Failed; 2] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(states(), [TaskState::Failed; 2], "both failed first");

    let unit = Units::of(&there);
    a.units(UnitsOrder::Stop(unit)).await.expect("stop");
    a.units(UnitsOrder::Drop(unit)).await.expect("drop");
    match a.replay_tasks(ids.clone(), None).await {
        Err(ShellError::Moved { gate }) => assert_eq!(gate, there),
        other => panic!("a page with a moving gate's task: {other:?}"),
    }
    assert_eq!(states(), [TaskState::Failed; 2], "none of the page retried");

    a.units(UnitsOrder::Adopt(unit, Start::Restart))
        .await
        .expect("adopt");
    let replayed = a.replay_tasks(ids.clone(), None).await;
    assert_eq!(replayed.ok(), Some(2), "the page goes through whole");
    stop_engines([(stop, thread)]);
}

/// Requests asking the database who owns a gate, while their node is cut
/// off from it, each give up in bounded time (they share one connection,
/// and each waited for every one before it: the twentieth about 8 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_lookups_cut_off_from_the_database_each_give_up_soon() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let proxy = crate::cluster::Proxy::start(pg.port()).await;
    let terms = Terms {
        lease: Duration::from_secs(2),
        renew_every: Duration::from_millis(400),
        margin: Duration::from_millis(400),
    };
    let a = Node::join_on(&proxy.url(), "cut_off", terms).await;
    a.cluster
        .owner_now("g")
        .await
        .expect("asked while connected");
    proxy.set_cut(true);
    let asked = sluice::clock::instant();
    let answers = futures_util::future::join_all((0..20).map(|i| {
        let cluster = a.cluster.clone();
        async move {
            let answer = cluster.owner_now(&format!("g{i}")).await;
            (answer.is_err(), asked.elapsed())
        }
    }))
    .await;
    proxy.set_cut(false);
    let slowest = answers.iter().map(|(_, took)| *took).max();
    assert!(answers.iter().all(|(failed, _)| *failed), "{answers:?}");
    assert!(
        slowest < Some(Duration::from_secs(3)),
        "the slowest lookup took {slowest:?}"
    );
}

/// A take given up halfway (its caller dropped, as a beat is when its
/// engine ends) leaves no transaction open on the lease connection: the
/// renewal after it commits. (Left open, the renewals ran inside it,
/// seen by no other node, and the unit lapsed under its holder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_given_up_halfway_leaves_no_transaction_open() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let a = Node::join(&pg.url(), "given_up").await;
    assert!(a.acquire(1).await.is_some(), "a takes unit 1");
    let db = pg.client("given_up").await;
    let expires = async || -> f64 {
        db.query_one(
            "SELECT extract(epoch FROM expires_at)::float8 FROM units WHERE unit = 1",
            &[],
        )
        .await
        .expect("unit 1")
        .get(0)
    };
    db.batch_execute("BEGIN; SELECT * FROM units WHERE unit = 2 FOR UPDATE")
        .await
        .expect("lock unit 2");
    // Within the connection's own limit (200 ms at least), so the take is
    // given up from outside, waiting for the lock inside its transaction.
    let take = tokio::time::timeout(Duration::from_millis(100), a.cluster.acquire_unit(2)).await;
    assert!(
        take.is_err(),
        "the take did not wait for the lock: {take:?}"
    );
    db.batch_execute("COMMIT").await.expect("unlock");
    let before = expires().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let renewal = a.cluster.renew_units().await.expect("renewal");
    assert!(renewal.lost.is_empty(), "{renewal:?}");
    let after = expires().await;
    assert!(
        after > before,
        "the renewal is not committed: unit 1 expires at {after}, as before"
    );
}

/// Dates `node`'s start a minute back: it counts as live to the others
/// (a node is given units only a while after it starts).
async fn started_long_ago(db: &tokio_postgres::Client, node: &str) {
    db.execute(
        "UPDATE nodes SET started_at = now() - interval '1 minute' WHERE id = $1",
        &[&node],
    )
    .await
    .expect("sql");
}

/// Moves `unit`'s expiry into the past: its owner was paused past it.
async fn lapse(db: &tokio_postgres::Client, unit: u32) {
    let n = db
        .execute(
            "UPDATE units SET expires_at = now() - interval '1 millisecond' WHERE unit = $1",
            &[&(unit as i32)],
        )
        .await
        .expect("lapse");
    assert_eq!(n, 1);
}

fn fenced(result: Result<u32, StoreError>) -> bool {
    matches!(result, Err(StoreError::Fenced { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_has_one_owner_and_a_takeover_after_a_lapse_fences_the_last() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let (a, b) = (
        Node::join(&url, "leases").await,
        Node::join(&url, "leases").await,
    );
    let db = pg.client("leases").await;

    let first = a.acquire(5).await.expect("vacant");
    assert_eq!((first.epoch, first.fenced_me), (1, false));
    assert_eq!(first.unsent_after, None, "nobody sent anything before");
    assert_eq!(b.acquire(5).await, None, "held by a");
    assert_eq!(a.acquire(5).await, None, "a never asks twice for its own");
    let generation = a.fence().await;
    a.write().await.expect("a writes while it holds the unit");
    let (held, deadline) = a.cluster.units_held();
    assert_eq!(held, Units::one(5));
    assert!(deadline.valid());
    // Each renewal moves a's slot mark, in the database before here.
    let marked = deadline.slots_until();
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.cluster.renew_units().await.expect("renew");
    assert!(
        deadline.slots_until() > marked,
        "the renewal moved the mark"
    );

    // a pauses past its lease: b takes the unit and a's writes stop. b
    // learns a's mark: a sends no attempt whose slot time is later.
    lapse(&db, 5).await;
    let taken = b.acquire(5).await.expect("lapsed");
    assert_eq!((taken.epoch, taken.fenced_me), (2, false));
    assert_eq!(taken.unsent_after, Some(deadline.slots_until()));
    assert_eq!(a.cluster.node_fence().await.expect("fence"), generation + 1);
    assert!(fenced(a.write().await), "a's engine is fenced");
    let renewal = a.cluster.renew_units().await.expect("renew");
    assert_eq!(renewal.lost, Units::one(5));
    assert_eq!(renewal.held, Units::NONE);
    assert!(!deadline.valid(), "a sends nothing more");

    // A handover fences nobody.
    let b_generation = b.fence().await;
    b.write().await.expect("b writes");
    b.cluster
        .release_units(Units::one(5))
        .await
        .expect("release");
    let back = a.acquire(5).await.expect("handed over");
    assert_eq!((back.epoch, back.fenced_me), (3, false));
    assert_eq!(back.unsent_after, None, "a handover names no last owner");
    assert_eq!(b.cluster.node_fence().await.expect("fence"), b_generation);
    b.write().await.expect("b still writes after handing over");

    // A unit that lapsed under a node and is taken back by it fences that
    // node's engine too: the old engine may still be sending under epoch 3.
    a.fence().await;
    lapse(&db, 5).await;
    let again = a.acquire(5).await.expect("lapsed");
    assert_eq!((again.epoch, again.fenced_me), (4, true));
    assert_eq!(again.unsent_after, None, "its own engine starts afresh");
    assert!(fenced(a.write().await));
    a.fence().await;
    a.write().await.expect("a's next engine writes");
}

/// A takeover waits for the last owner's transaction in progress (each
/// holds its node row key-share-locked): it gives up while the commit is
/// open, which then lands; only afterwards is the unit taken, and the old
/// owner's next commit is refused. Without the lock the takeover would pass
/// the open transaction, whose commit would land after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_last_owners_commit_in_progress() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let (a, b) = (
        Node::join(&url, "waits").await,
        Node::join(&url, "waits").await,
    );
    let db = pg.client("waits").await;
    a.acquire(7).await.expect("vacant");
    a.fence().await;
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let store = a.store.clone();
    let open = std::thread::spawn(move || {
        let store: &dyn Backend = store.as_ref();
        store.write(|tx| {
            let id = tx.next_gate_id()?;
            let _ = entered_tx.send(());
            let _ = go_rx.recv();
            Ok(id)
        })
    });
    entered.recv().expect("the transaction is open");
    lapse(&db, 7).await;
    let refused = b
        .cluster
        .acquire_unit(7)
        .await
        .expect_err("taken over past an open commit")
        .to_string();
    assert!(refused.contains("lock"), "{refused}");
    go.send(()).expect("go");
    let id = open
        .join()
        .expect("joined")
        .expect("the commit in progress lands");
    let taken = b.acquire(7).await.expect("then the takeover");
    assert_eq!(taken.epoch, 2);
    assert!(fenced(a.write().await));
    // What a committed is there for b.
    let next = b.write().await.expect("b writes");
    assert!(next > id, "{next} after {id}");
}

/// Two nodes asking for the same vacant unit at once: one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_asking_for_one_unit_at_once_get_one_owner() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let (a, b) = (
        Node::join(&url, "race").await,
        Node::join(&url, "race").await,
    );
    for round in 0..40u32 {
        let unit = round % UNITS;
        let (x, y) = tokio::join!(a.cluster.acquire_unit(unit), b.cluster.acquire_unit(unit));
        let won: Vec<&Node> = [(&a, x), (&b, y)]
            .into_iter()
            .filter_map(|(node, got)| got.expect("acquire").map(|_| node))
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {} owners", won.len());
        won[0]
            .cluster
            .release_units(Units::one(unit))
            .await
            .expect("release");
    }
}

/// One statement renews every unit; a unit taken over is reported lost (and
/// the units left go on under a new deadline); a unit the database has as
/// the node's but the node does not know of is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_keeps_the_units_and_tells_which_were_lost() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let (a, b) = (
        Node::join(&url, "renew").await,
        Node::join(&url, "renew").await,
    );
    let db = pg.client("renew").await;
    for unit in [1, 2, 3] {
        a.acquire(unit).await.expect("vacant");
    }
    let three = Units::one(1).with(Units::one(2)).with(Units::one(3));
    let renewal = a.cluster.renew_units().await.expect("renew");
    assert_eq!(
        (renewal.held, renewal.lost, renewal.released),
        (three, Units::NONE, Units::NONE)
    );
    let (_, first_deadline) = a.cluster.units_held();
    assert!(first_deadline.valid());

    // An acquire whose answer never came back.
    let n = db
        .execute(
            "UPDATE units SET owner = $1, epoch = 9, expires_at = now() + interval '5 seconds' \
             WHERE unit = 4",
            &[&a.id()],
        )
        .await
        .expect("sql");
    assert_eq!(n, 1);
    let renewal = a.cluster.renew_units().await.expect("renew");
    assert_eq!((renewal.held, renewal.released), (three, Units::one(4)));
    let owner: Option<String> = db
        .query_one("SELECT owner FROM units WHERE unit = 4", &[])
        .await
        .expect("sql")
        .get(0);
    assert_eq!(owner, None, "released at once");

    lapse(&db, 2).await;
    b.acquire(2).await.expect("lapsed");
    let renewal = a.cluster.renew_units().await.expect("renew");
    assert_eq!(renewal.lost, Units::one(2));
    assert_eq!(renewal.held, Units::one(1).with(Units::one(3)));
    assert!(!first_deadline.valid(), "everything sent under it stops");
    let (held, deadline) = a.cluster.units_held();
    assert_eq!(held, renewal.held);
    assert!(deadline.valid(), "the rest goes on under a new deadline");

    // Holding nothing for a while ends no deadline (the engine runs on):
    // one deadline from the loss on, while renewals succeed.
    a.cluster.release_units(held).await.expect("release");
    a.cluster.renew_units().await.expect("renew nothing");
    a.acquire(9).await.expect("vacant");
    let (held, same) = a.cluster.units_held();
    assert_eq!(held, Units::one(9));
    assert!(Arc::ptr_eq(&deadline, &same) && same.valid());
}

/// The plan: a node takes a few of the free units the rendezvous gives it,
/// never one that is held, and hands over one unit per beat that is
/// another live node's; a node that is leaving, or started moments ago, is
/// given nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_follows_the_rendezvous_over_the_live_nodes() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let nodes = [
        Node::join(&url, "plan").await,
        Node::join(&url, "plan").await,
        Node::join(&url, "plan").await,
    ];
    let db = pg.client("plan").await;
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    let owners = |live: &[usize]| -> Vec<Option<usize>> {
        (0..UNITS)
            .map(|u| owner_of(u, live, |i| fnv1a(ids[i].as_bytes())))
            .collect()
    };
    // Just started, none settled: each counts itself alone, so a lone
    // node runs its gates at once.
    let moves = nodes[0].cluster.plan_units().await.expect("plan");
    assert_eq!(
        moves.acquire,
        (0..ACQUIRE_PER_BEAT as u32).collect::<Vec<_>>()
    );
    // Once another has settled, a node just started takes nothing: it is
    // not live to the others yet.
    started_long_ago(&db, &ids[1]).await;
    let moves = nodes[0].cluster.plan_units().await.expect("plan");
    assert!(moves.acquire.is_empty() && moves.hand_over.is_none());

    db.batch_execute("UPDATE nodes SET started_at = now() - interval '1 minute'")
        .await
        .expect("sql");
    let desired = owners(&[0, 1, 2]);
    let mine: Vec<u32> = (0..UNITS)
        .filter(|u| desired[*u as usize] == Some(0))
        .collect();
    let moves = nodes[0].cluster.plan_units().await.expect("plan");
    assert_eq!(
        moves.acquire,
        mine[..ACQUIRE_PER_BEAT.min(mine.len())].to_vec()
    );
    assert_eq!(moves.hand_over, None);

    // Node 0 holds everything: it hands over one unit of another's a beat,
    // and the others wait for it.
    for unit in 0..UNITS {
        nodes[0].acquire(unit).await.expect("vacant");
    }
    let moves = nodes[0].cluster.plan_units().await.expect("plan");
    assert!(moves.acquire.is_empty());
    let first_other = (0..UNITS).find(|u| desired[*u as usize] != Some(0));
    assert_eq!(moves.hand_over, first_other);
    let moves = nodes[1].cluster.plan_units().await.expect("plan");
    assert!(moves.acquire.is_empty() && moves.hand_over.is_none());

    // Node 1 leaves: its units are planned among the other two.
    nodes[1].cluster.mark_leaving().await.expect("leaving");
    let without_1 = owners(&[0, 2]);
    nodes[0]
        .cluster
        .release_units(Units::ALL)
        .await
        .expect("release");
    let moves = nodes[2].cluster.plan_units().await.expect("plan");
    let theirs: Vec<u32> = (0..UNITS)
        .filter(|u| without_1[*u as usize] == Some(2))
        .collect();
    assert_eq!(moves.acquire, theirs[..ACQUIRE_PER_BEAT].to_vec());
    let moves = nodes[1].cluster.plan_units().await.expect("plan");
    assert!(moves.acquire.is_empty(), "a leaving node takes nothing");
}

/// A handover wakes the other nodes of its schema at once (`NOTIFY`, its
/// payload the schema; their balance then takes the units rather than at
/// its next beat), and not the nodes of another schema on the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_wakes_the_nodes_of_its_schema_only() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let (a, b, other) = (
        Node::join(&url, "wakes").await,
        Node::join(&url, "wakes").await,
        Node::join(&url, "elsewhere").await,
    );
    let hear = |node: &Node| {
        let (heard, count) = tokio::sync::watch::channel(0u64);
        (
            tokio::spawn(node.cluster.clone().hear_handovers(heard)),
            count,
        )
    };
    let reach = async |count: &mut tokio::sync::watch::Receiver<u64>, n: u64, what: &str| {
        let reached = count.wait_for(|c| *c >= n);
        let reached = tokio::time::timeout(Duration::from_secs(10), reached).await;
        assert!(matches!(reached, Ok(Ok(_))), "{what}");
    };
    let (b_hearing, mut b_heard) = hear(&b);
    let (other_hearing, mut other_heard) = hear(&other);
    // The first count: each listens from here on.
    reach(&mut b_heard, 1, "b listens").await;
    reach(&mut other_heard, 1, "the other schema's node listens").await;

    // One handover in each schema, the other schema's first: each node
    // hears its own schema's, after the other's on the same channel.
    other.acquire(3).await.expect("vacant");
    other
        .cluster
        .release_units(Units::one(3))
        .await
        .expect("release");
    a.acquire(3).await.expect("vacant");
    a.cluster
        .release_units(Units::one(3))
        .await
        .expect("release");
    reach(&mut b_heard, 2, "b hears a's handover").await;
    reach(&mut other_heard, 2, "the other node hears its own").await;
    // Both notices were out before these waits began: a node that counted
    // the other schema's would be at 3 by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *b_heard.borrow(),
        2,
        "b counted the other schema's handover"
    );
    assert_eq!(*other_heard.borrow(), 2, "the other node counted a's");
    b_hearing.abort();
    other_hearing.abort();
}

/// A running engine (`shell::spawn`, its runner and dispatcher) on the
/// database at `url`, running `units`, admitting up to `lookahead` ahead.
async fn running_engine(
    url: &str,
    schema: &str,
    units: Units,
    lookahead: Duration,
) -> (
    sluice::shell::Handle,
    tokio::sync::watch::Sender<bool>,
    std::thread::JoinHandle<Result<(), StoreError>>,
) {
    let (url, schema) = (url.to_string(), schema.to_string());
    let store = tokio::task::spawn_blocking(move || PgStore::open_in(&url, &schema))
        .await
        .expect("joined")
        .expect("open");
    let store: Arc<dyn Backend> = Arc::new(store);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let options = sluice::shell::Options {
        tuning: sluice::core::Tuning {
            lookahead,
            lookahead_max: lookahead,
            ..Default::default()
        },
        units,
        grace: Duration::from_secs(1),
        ..Default::default()
    };
    let (handle, thread) =
        tokio::task::block_in_place(|| sluice::shell::spawn(store, options, stop_rx))
            .expect("the engine starts");
    (handle, stop, thread)
}

type Stopper = (
    tokio::sync::watch::Sender<bool>,
    std::thread::JoinHandle<Result<(), StoreError>>,
);

/// Stops engines started by `running_engine`, each of which must stop
/// cleanly.
fn stop_engines<const N: usize>(engines: [Stopper; N]) {
    for (stop, thread) in engines {
        let _ = stop.send(true);
        tokio::task::block_in_place(|| thread.join())
            .expect("joined")
            .expect("the engine stops cleanly");
    }
}

/// The sink's hits once `n` distinct tasks have arrived, or when `within`
/// has passed (the caller checks which).
async fn every_task_arrives(
    sink: &crate::support::Sink,
    n: usize,
    within: Duration,
) -> Vec<crate::support::Hit> {
    let start = sluice::clock::instant();
    loop {
        let hits = sink.hits();
        let seen: std::collections::BTreeSet<&str> = hits.iter().map(|h| h.task.as_str()).collect();
        if seen.len() >= n || start.elapsed() > within {
            return hits;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A smooth gate (burst 1, no ramp, 1 s timeout) at `rate` to `sink`.
fn smooth_gate(sink: &crate::support::Sink, rate: f64) -> sluice::model::GateSpec {
    sluice::model::GateSpec {
        timeout: Duration::from_secs(1),
        recovery: sluice::core::Recovery {
            start: 1.0,
            over: Duration::from_secs(1),
        },
        ..crate::support::engine_gate(rate, 1, 50, sink.host())
    }
}

/// A gate's unit goes from one running engine to another and back while
/// the gate delivers 150 tasks at 50/s to a sink. The first handover
/// drains (stop, wait until nothing is out, drop, adopt): no task arrives
/// twice. The second drops at once, with starts admitted up to 500 ms
/// ahead still waiting for their slots: none of them leaves after the
/// drop (the sink hears nothing until the unit is adopted again), and the
/// new owner holds them until their timeout, then sends them. Without the
/// runner's check at the slot time they arrive after the drop (caught).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_unit_passes_between_two_engines_and_nothing_leaves_after_its_drop() {
    use sluice::shell::{Start, UnitsOrder};
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let sink = crate::support::Sink::start().await;
    let lookahead = Duration::from_millis(500);
    let (a, a_stop, a_thread) = running_engine(&url, "handover", Units::ALL, lookahead).await;
    let (b, b_stop, b_thread) = running_engine(&url, "handover", Units::NONE, lookahead).await;
    a.put_gate("moving".into(), smooth_gate(&sink, 50.0))
        .await
        .expect("gate");
    let unit = Units::of("moving");
    let now = sluice::clock::now();
    let tasks = (0..150)
        .map(|_| crate::support::engine_task("moving", &sink.url("/"), now))
        .collect();
    let created = a.create_tasks(tasks).await.expect("created");
    let ids: std::collections::BTreeSet<String> =
        created.iter().map(|c| c.id.to_string()).collect();

    // Drained: a stops the unit, waits until nothing is out, drops it.
    sink.wait_for(30, Duration::from_secs(20)).await;
    a.units(UnitsOrder::Stop(unit)).await.expect("stop");
    let mut drained = false;
    for _ in 0..500 {
        if a.units(UnitsOrder::Busy(unit)).await.expect("busy") == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(drained, "a's attempts never ended");
    a.units(UnitsOrder::Drop(unit)).await.expect("drop");
    let first_count = sink.hits().len();
    b.units(UnitsOrder::Adopt(unit, Start::TAKEOVER))
        .await
        .expect("adopt");

    // At once: b drops the unit with starts admitted ahead.
    sink.wait_for(first_count + 30, Duration::from_secs(20))
        .await;
    b.units(UnitsOrder::Stop(unit)).await.expect("stop");
    b.units(UnitsOrder::Drop(unit)).await.expect("drop");
    let dropped = sluice::clock::instant();
    // What left just before the drop may reach the sink a little after.
    const MARGIN: Duration = Duration::from_millis(150);
    // Silence, checked over longer than anything was admitted ahead.
    tokio::time::sleep(lookahead * 3).await;
    let adopted = sluice::clock::instant();
    a.units(UnitsOrder::Adopt(unit, Start::TAKEOVER))
        .await
        .expect("adopt again");
    let late: Vec<Duration> = sink
        .hits()
        .iter()
        .filter(|h| h.at > dropped + MARGIN && h.at < adopted)
        .map(|h| h.at.duration_since(dropped))
        .collect();
    assert!(late.is_empty(), "sent after the drop: {late:?}");

    let hits = every_task_arrives(&sink, ids.len(), Duration::from_secs(30)).await;
    let mut arrivals: std::collections::BTreeMap<&str, Vec<std::time::Instant>> =
        std::collections::BTreeMap::new();
    for hit in &hits {
        arrivals.entry(hit.task.as_str()).or_default().push(hit.at);
    }
    assert_eq!(arrivals.len(), ids.len(), "every task arrives");
    for (task, times) in &arrivals {
        assert!(ids.contains(*task), "an unknown task {task}");
        if times.len() > 1 {
            // Only what b had out when it dropped the unit undrained (its
            // answer not yet committed) is sent again, by the next owner.
            assert!(
                times[0] < dropped + MARGIN && times[0] + lookahead * 3 > dropped,
                "task {task} arrived {} times, first {:?} before the drop",
                times.len(),
                dropped.checked_duration_since(times[0])
            );
        }
    }
    let all: Vec<std::time::Instant> = hits.iter().map(|h| h.at).collect();
    let most = crate::support::max_in_window(&all, Duration::from_secs(1));
    // Two owners at once would show about twice the rate; a few over
    // the bound are the sink's own timing on a busy machine.
    assert!(most <= 55, "{most} arrivals in one second at 50/s, burst 1");
    stop_engines([(a_stop, a_thread), (b_stop, b_thread)]);
}

/// A taker that knows the last owner's slot mark sends at once what that
/// owner admitted ahead but never sent, and counts it as neither a retry
/// nor a second attempt. A gate at 20/s, concurrency 10, with starts
/// admitted up to 500 ms ahead (so about its whole concurrency on record
/// as running) and a 20 s timeout: engine a drops its unit at once,
/// undrained; nothing with a slot time after the drop left (the runner
/// checks at the slot time), so b adopts with the drop's time as the
/// mark. Every task then arrives within a few seconds, none twice.
/// Without the mark b holds every one of those starts in its slot until
/// its timeout, and the gate sends nothing meanwhile (caught); a mark that
/// freed a start which did leave shows as a task arriving twice (caught).
/// A start whose slot time came before the drop but which a's runner, on a
/// loaded machine, had not sent yet is held (it might have left): the
/// wait allows for one such hold, and the counts for its retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taker_sends_at_once_the_starts_the_last_owner_never_sent() {
    use sluice::shell::{Start, UnitsOrder};
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let sink = crate::support::Sink::start().await;
    let lookahead = Duration::from_millis(500);
    let (a, a_stop, a_thread) = running_engine(&url, "unsent", Units::ALL, lookahead).await;
    let (b, b_stop, b_thread) = running_engine(&url, "unsent", Units::NONE, lookahead).await;
    let timeout = Duration::from_secs(20);
    let gate = sluice::model::GateSpec {
        timeout,
        concurrency: 10,
        ..smooth_gate(&sink, 20.0)
    };
    a.put_gate("moving".into(), gate).await.expect("gate");
    let unit = Units::of("moving");
    let now = sluice::clock::now();
    let tasks = (0..60)
        .map(|_| crate::support::engine_task("moving", &sink.url("/"), now))
        .collect();
    let created = a.create_tasks(tasks).await.expect("created");
    let ids: std::collections::BTreeSet<String> =
        created.iter().map(|c| c.id.to_string()).collect();

    sink.wait_for(10, Duration::from_secs(20)).await;
    a.units(UnitsOrder::Stop(unit)).await.expect("stop");
    a.units(UnitsOrder::Drop(unit)).await.expect("drop");
    let mark = sluice::clock::now();
    let before = sink.hits().len();
    b.units(UnitsOrder::Adopt(
        unit,
        Start::Takeover {
            unsent_after: Some(mark),
        },
    ))
    .await
    .expect("adopt");
    let adopted = sluice::clock::instant();

    // 60 tasks at 20/s: three seconds, and a few for a busy machine; as
    // much again if a start the runner missed is held.
    let hits = every_task_arrives(&sink, ids.len(), Duration::from_secs(10)).await;
    let hits = if hits.len() < ids.len() {
        every_task_arrives(&sink, ids.len(), timeout + Duration::from_secs(10)).await
    } else {
        hits
    };
    let seen: std::collections::BTreeSet<&str> = hits.iter().map(|h| h.task.as_str()).collect();
    assert!(
        seen.len() == ids.len(),
        "{} of {} tasks arrived ({before} before the drop) in {:?} after the takeover",
        seen.len(),
        ids.len(),
        adopted.elapsed()
    );
    assert_eq!(hits.len(), ids.len(), "a task arrived twice");

    // Each held start made a second attempt on record; each start that
    // never left was made again under its own number.
    let store = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || PgStore::open_in(&url, "unsent"))
            .await
            .expect("joined")
            .expect("open")
    };
    let reads = (&store as &dyn Backend).read().expect("read");
    let mut held = 0;
    for id in &created {
        let attempts = reads.attempts(id.id.0).expect("attempts");
        assert!(
            (1..=2).contains(&attempts.len()),
            "task {}: {} attempts",
            id.id,
            attempts.len()
        );
        held += attempts.len() - 1;
    }
    assert!(
        held <= 2,
        "{held} starts held: the mark freed almost none ({before} arrived before the drop)"
    );
    let live = b.live(Some("moving".into())).await.expect("live");
    let gate_id = live.first().expect("the gate").record.id;
    let counts = reads.counts(gate_id).expect("counts");
    assert_eq!(
        (counts.attempts, counts.retried),
        (ids.len() as u64 + held as u64, held as u64),
        "attempts and retries counted: a start that never left is neither"
    );
    stop_engines([(a_stop, a_thread), (b_stop, b_thread)]);
}

/// A schedule's occurrences across handovers: a schedule every second on
/// a gate whose unit passes between two engines six times, drained and
/// undrained in turn. Each occurrence is created once (its key), however
/// its unit moved: no scheduled time reaches the sink from two tasks, and
/// none is missed (every missed one is caught up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_schedule_occurrence_runs_twice_across_handovers() {
    use sluice::shell::{Start, UnitsOrder};
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let sink = crate::support::Sink::start().await;
    let lookahead = Duration::from_millis(100);
    let (a, a_stop, a_thread) = running_engine(&url, "occurrences", Units::ALL, lookahead).await;
    let (b, b_stop, b_thread) = running_engine(&url, "occurrences", Units::NONE, lookahead).await;
    a.put_gate("ticking".into(), smooth_gate(&sink, 50.0))
        .await
        .expect("gate");
    let unit = Units::of("ticking");
    let every = Duration::from_secs(1);
    let spec = sluice::model::ScheduleSpec {
        cron: None,
        timezone: "UTC".into(),
        every: Some(every),
        misfire: sluice::core::schedule::Misfire::All,
        catchup_limit: 100,
        jitter: Duration::ZERO,
        template: crate::support::engine_task("ticking", &sink.url("/"), sluice::clock::now()),
    };
    a.put_schedule("tick".into(), spec).await.expect("schedule");

    let mut owners = [&a, &b];
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let [from, to] = owners;
        from.units(UnitsOrder::Stop(unit)).await.expect("stop");
        if round % 2 == 0 {
            for _ in 0..300 {
                if from.units(UnitsOrder::Busy(unit)).await.expect("busy") == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        from.units(UnitsOrder::Drop(unit)).await.expect("drop");
        to.units(UnitsOrder::Adopt(unit, Start::TAKEOVER))
            .await
            .expect("adopt");
        owners = [to, from];
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let [last, _] = owners;
    last.delete_schedule("tick".into()).await.expect("deleted");
    // What was held at an undrained handover (a 1 s timeout) is sent again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let mut tasks_of: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for hit in sink.hits() {
        let at = hit.headers.get("sluice-scheduled-at").cloned();
        let at = at.expect("an occurrence names its scheduled time");
        tasks_of.entry(at).or_default().insert(hit.task.clone());
    }
    let twice: Vec<_> = tasks_of.iter().filter(|(_, t)| t.len() > 1).collect();
    assert!(twice.is_empty(), "occurrences made twice: {twice:?}");
    let times: Vec<jiff::Timestamp> = tasks_of
        .keys()
        .map(|at| at.parse().expect("an RFC 3339 time"))
        .collect();
    assert!(
        times.len() >= 6,
        "{} occurrences in 7 s, one a second",
        times.len()
    );
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert_eq!(
            gap.as_millis(),
            every.as_millis() as i128,
            "an occurrence missing between {} and {}",
            pair[0],
            pair[1]
        );
    }
    stop_engines([(a_stop, a_thread), (b_stop, b_thread)]);
}

/// The balance (`Cluster::balance`) on two running nodes. The first, alone,
/// takes every unit, a few a beat; six gates get 100 tasks each at 20/s; a
/// second node joins, and the first hands it its share: idle units at
/// once, busy ones one a beat, each stopped and drained before its row is
/// released, while
/// the gates deliver (each with a few attempts out, the sink answering in
/// 150 ms). At the end each unit is held by its rendezvous owner, each
/// moved once, every task arrived exactly once (without the drain, the
/// attempts out at a drop arrive again: caught), and no gate's window
/// broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balance_spreads_busy_gates_over_two_nodes_one_busy_unit_a_beat() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let sink = crate::support::Sink::start().await;
    // Slow answers: each gate has a few attempts out at any time, which a
    // handover must wait for (or they would be held, then sent again).
    sink.behave(|_, _| crate::support::Reply::ok().delayed(Duration::from_millis(150)));
    let drain = Duration::from_secs(3);
    let lookahead = Duration::from_millis(20);
    // Both join now, but b counts as live only later (a node is given
    // units a few seconds after it starts).
    let (a, b) = (
        Node::join(&url, "balance").await,
        Node::join(&url, "balance").await,
    );
    let (a_engine, a_stop, a_thread) =
        running_engine(&url, "balance", Units::NONE, lookahead).await;
    let db = pg.client("balance").await;
    started_long_ago(&db, &a.id()).await;
    for _ in 0..UNITS {
        let beat = a
            .cluster
            .balance(&a_engine, drain, true)
            .await
            .expect("beat");
        assert!(beat.adopted.iter().count() <= ACQUIRE_PER_BEAT);
        if a.cluster.units_held().0 == Units::ALL {
            break;
        }
    }
    assert_eq!(a.cluster.units_held().0, Units::ALL, "alone, a takes all");

    // Three gates that stay with a, three that move to b.
    let names = [a.id(), b.id()];
    let desired = |gate: &str| {
        owner_of(unit_of(gate, UNITS), &[0usize, 1], |i| {
            fnv1a(names[i].as_bytes())
        })
    };
    let pick = |owner: usize| {
        (0..)
            .map(|i| format!("spread-{i}"))
            .filter(move |g| desired(g) == Some(owner))
            .take(3)
    };
    let gates: Vec<String> = pick(0).chain(pick(1)).collect();
    let mut ids = std::collections::BTreeSet::new();
    for gate in &gates {
        a_engine
            .put_gate(gate.clone(), smooth_gate(&sink, 20.0))
            .await
            .expect("gate");
        let now = sluice::clock::now();
        let tasks = (0..100)
            .map(|_| crate::support::engine_task(gate, &sink.url(&format!("/{gate}")), now))
            .collect();
        for created in a_engine.create_tasks(tasks).await.expect("created") {
            ids.insert(created.id.to_string());
        }
    }

    let (b_engine, b_stop, b_thread) =
        running_engine(&url, "balance", Units::NONE, lookahead).await;
    started_long_ago(&db, &b.id()).await;
    let (mut moved, mut drained, mut quiet) = (Units::NONE, Units::NONE, 0);
    for _ in 0..4 * UNITS {
        // A beat woken by another node's handover only takes.
        let woken = (a.cluster.balance(&a_engine, drain, false).await).expect("a's woken beat");
        assert!(woken.handed_over.is_empty(), "a woken beat gave: {woken:?}");
        let x = a
            .cluster
            .balance(&a_engine, drain, true)
            .await
            .expect("a's beat");
        let y = b
            .cluster
            .balance(&b_engine, drain, true)
            .await
            .expect("b's beat");
        assert!(x.lost.is_empty() && y.lost.is_empty(), "{x:?} {y:?}");
        assert!(x.adopted.is_empty(), "a takes nothing back: {x:?}");
        assert!(y.handed_over.is_empty(), "b gives nothing back: {y:?}");
        assert!(
            moved.and(x.handed_over).is_empty(),
            "a unit moved twice: {x:?}"
        );
        // Busy units one a beat; a unit found idle goes at once, and may
        // get a start between that look and its stop (then it is drained
        // too).
        assert!(x.drained.iter().count() <= 2, "{x:?}");
        drained = drained.with(x.drained);
        moved = moved.with(x.handed_over);
        if x.handed_over.is_empty() && y.adopted.is_empty() {
            quiet += 1;
            if quiet == 2 {
                break;
            }
        } else {
            quiet = 0;
        }
        // The gates deliver between beats (a second apart in a server).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = db
        .query("SELECT unit, owner FROM units ORDER BY unit", &[])
        .await
        .expect("sql");
    for row in rows {
        let (unit, owner): (i32, Option<String>) = (row.get(0), row.get(1));
        let unit = unit as u32;
        let desired = owner_of(unit, &[0usize, 1], |i| fnv1a(names[i].as_bytes()));
        assert_eq!(
            owner.as_deref(),
            desired.map(|i| names[i].as_str()),
            "unit {unit}"
        );
        assert_eq!(moved.has(unit), desired == Some(1), "unit {unit} moved");
    }
    for gate in &gates {
        assert_eq!(moved.has_gate(gate), desired(gate) == Some(1), "{gate}");
    }
    assert!(
        gates.iter().any(|g| drained.has_gate(g)),
        "no busy gate's unit was drained"
    );

    let mut hits = Vec::new();
    for _ in 0..600 {
        hits = sink.hits();
        let delivered: std::collections::BTreeSet<&String> = hits.iter().map(|h| &h.task).collect();
        if delivered.len() >= ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered: std::collections::BTreeSet<String> =
        hits.iter().map(|h| h.task.clone()).collect();
    assert!(
        delivered == ids,
        "{} of {} tasks delivered",
        delivered.len(),
        ids.len()
    );
    assert_eq!(hits.len(), ids.len(), "tasks arrived twice");
    for gate in &gates {
        let times: Vec<std::time::Instant> = (hits.iter())
            .filter(|h| h.path == format!("/{gate}"))
            .map(|h| h.at)
            .collect();
        let most = crate::support::max_in_window(&times, Duration::from_secs(1));
        assert!(most <= 23, "{gate}: {most} in one second at 20/s, burst 1");
    }
    stop_engines([(a_stop, a_thread), (b_stop, b_thread)]);
}

/// A beat keeps the leases up while its engine is slow to adopt: a takes
/// units, and its engine's adopt waits (on a lock this test holds on
/// `gates`) for longer than the lease; meanwhile b finds every unit a took
/// still leased, and the beat ends with nothing lost. Without the
/// renewals during the wait the leases lapse behind the adopt and b takes
/// them (caught).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beat_renews_the_leases_while_its_engine_is_slow_to_adopt() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.url();
    let terms = Terms {
        lease: Duration::from_secs(2),
        renew_every: Duration::from_millis(400),
        margin: Duration::from_millis(400),
    };
    let (a, b) = (
        Node::join_on(&url, "slow", terms).await,
        Node::join_on(&url, "slow", terms).await,
    );
    let (engine, stop, thread) =
        running_engine(&url, "slow", Units::NONE, Duration::from_millis(20)).await;
    let db = pg.client("slow").await;
    started_long_ago(&db, &a.id()).await;
    db.batch_execute("BEGIN; LOCK TABLE gates IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let beat = a.cluster.balance(&engine, Duration::from_secs(1), true);
    let probe = async {
        // Past the lease of the units a took as the beat began.
        tokio::time::sleep(terms.lease + Duration::from_millis(800)).await;
        let held = a.cluster.units_held().0;
        let taken: Vec<u32> = {
            let mut taken = Vec::new();
            for unit in held.iter() {
                if b.acquire(unit).await.is_some() {
                    taken.push(unit);
                }
            }
            taken
        };
        db.batch_execute("COMMIT").await.expect("unlock");
        (held, taken)
    };
    let (beat, (held, taken)) = tokio::join!(beat, probe);
    let beat = beat.expect("a's beat");
    assert!(!held.is_empty(), "a took units as the beat began");
    assert_eq!(beat.adopted, held, "{beat:?}");
    assert!(taken.is_empty(), "b took {taken:?} while a's adopt waited");
    assert!(beat.lost.is_empty(), "{beat:?}");
    assert_eq!(a.cluster.units_held().0, held);
    stop_engines([(stop, thread)]);
}
