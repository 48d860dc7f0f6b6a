//! The spread of gates over nodes (`units.rs`) on simulated time, with the
//! single lease's world (`lease_sim_tests.rs`) grown to many units: nodes
//! whose clocks drift (±10 %), a database with its own clock, messages that
//! take up to 200 ms each way, nodes that pause, lose the database, die,
//! join and leave cleanly. Each node beats every second of its own clock:
//! one message renews every unit it holds (each unit's row by its epoch)
//! and brings back the rows and the live nodes; from that answer it plans
//! its moves (`plan_moves`), takes free units it should own, and hands one
//! over by stopping it first and then releasing its row. A unit it holds
//! runs a real `Gate` for each of its gates, started empty with the ramp,
//! and acts until `Terms::hold` after it sent the beat or takeover that
//! last succeeded for that unit; a start leaves at its slot time if the
//! unit is still held then.
//!
//! The starts a node admits in a tick are its engine's turn: one commit,
//! sent the next tick the node runs (so a pause can fall between the
//! decision and the write, as in a real process), under the node's fence
//! (ARCHITECTURE.md, cluster, point 3). The database raises a node's fence
//! when another takes over a unit it let lapse, and refuses a commit under
//! an older one; the node then starts a new engine under the new fence
//! (every gate empty again, nothing of the old engine's leaves). A start
//! leaves only once its commit is answered. A unit is released, on a
//! handover or a clean stop, only after its commits are answered.
//!
//! Checked over many seeds: a unit's sends under one epoch all come before
//! its next epoch's takeover (owners never overlap), and so do the writes
//! the database takes under that epoch (the fence: a stale owner's writes
//! change nothing); each gate's window bound `burst + rate × T` holds over
//! all nodes' starts together, every gate sends again after the last
//! disruption, and every unit ends held by its rendezvous owner among the
//! nodes alive then.
//!
//! A test module: its length is its cases.

use std::collections::BTreeMap;

use proptest::prelude::{ProptestConfig, proptest};

use super::{UnitView, fnv1a, owner_of, plan_moves_taking, unit_of};
use crate::core::Timestamp;
use crate::core::gate::{Gate, GateLimits, Signal};
use crate::core::lease::{Row, Terms};
use crate::core::rng::Rng;
use crate::core::sim_nodes::{self, Clock, assert_window, fresh_gate};
use crate::core::time::duration_ms;

const TICK_MS: u64 = 5;
const RUN_MS: u64 = 120_000;
/// Disruptions stop this long before the end, so the cluster must settle.
const QUIET_MS: u64 = 35_000;
const UNITS: u32 = 8;
/// Free units a node takes in a beat here: half the world's (a real
/// node's `ACQUIRE_PER_BEAT` is a quarter of its 64).
const TAKE_PER_BEAT: usize = 4;
const GATES: usize = 12;
const MAX_NODES: usize = 5;

fn gate_name(gate: usize) -> String {
    format!("gate-{gate}")
}

fn hash(node: u32) -> u64 {
    fnv1a(&node.to_le_bytes())
}

/// One attempt that left: its gate, unit and epoch, its slot time and when
/// it actually left.
#[derive(Clone, Copy, Debug)]
struct Send {
    gate: usize,
    unit: u32,
    epoch: u64,
    slot: u64,
    left: u64,
}

/// A start an engine admitted: its gate, unit and epoch, its slot time.
#[derive(Clone, Copy, Debug)]
struct Start {
    gate: usize,
    unit: u32,
    epoch: u64,
    slot: u64,
}

/// A write the database took: for which unit under which epoch, when
/// (true ms).
#[derive(Clone, Copy, Debug)]
struct Write {
    unit: u32,
    epoch: u64,
    at: u64,
}

/// A commit on its way or waiting for its answer: the engine that sent it
/// (the node's count of engines), the units it names, when it left (local
/// ms).
struct InFlight {
    engine: u64,
    units: Vec<u32>,
    sent: u64,
}

#[derive(Clone, Debug)]
enum Ask {
    /// The heartbeat, renewing each held `(unit, epoch)`.
    Beat(Vec<(u32, u64)>),
    /// An engine's turn: its starts, under its fence.
    Commit {
        id: u64,
        fence: u64,
        starts: Vec<Start>,
    },
    Acquire(Vec<u32>),
    Release(u32, u64),
    /// A clean stop: every held unit released, the node off the list.
    Leave(Vec<(u32, u64)>),
}

#[derive(Clone, Debug)]
enum Reply {
    Beat {
        renewed: Vec<(u32, u64)>,
        units: Vec<UnitView<u32>>,
        live: Vec<u32>,
    },
    Acquired {
        asked: Vec<u32>,
        granted: Vec<(u32, u64)>,
    },
    Committed {
        id: u64,
        starts: Vec<Start>,
    },
    /// The commit changed nothing: the node's fence is `fence` now.
    Fenced {
        id: u64,
        fence: u64,
    },
    Done,
}

#[derive(Clone, Debug)]
enum Message {
    Ask { node: u32, ask: Ask, sent: u64 },
    Answer { node: u32, reply: Reply, sent: u64 },
}

/// One gate as its unit's owner runs it.
struct Run {
    gate: usize,
    limiter: Gate,
    /// Admitted starts waiting for their slot time (true ms).
    leaving: Vec<u64>,
    /// Attempts at the endpoint: when each ends (true ms).
    at_endpoint: Vec<u64>,
}

/// A unit a node holds: its epoch, its deadline (local ms), its gates.
struct Held {
    epoch: u64,
    deadline: u64,
    runs: Vec<Run>,
}

struct Node {
    id: u32,
    clock: Clock,
    held: BTreeMap<u32, Held>,
    /// Units it asked to take and has not heard back about: when (local).
    asking: BTreeMap<u32, u64>,
    /// The fence its engine runs under.
    fence: u64,
    /// Engines started since the node's own start.
    engine: u64,
    /// The turn in progress: starts admitted, their commit not yet sent.
    outbox: Vec<Start>,
    /// Commits sent and not yet answered, by id.
    in_flight: BTreeMap<u64, InFlight>,
    next_commit: u64,
    /// Units stopped for a handover, released once no commit names them:
    /// their epochs.
    draining: BTreeMap<u32, u64>,
}

impl Node {
    /// Whether a commit on its way, or the turn in progress, names `unit`.
    fn writing(&self, unit: u32) -> bool {
        self.outbox.iter().any(|s| s.unit == unit)
            || self.in_flight.values().any(|c| c.units.contains(&unit))
    }

    /// A new engine under `fence`: every gate empty again with the ramp,
    /// nothing the old one admitted leaves.
    fn restart(&mut self, fence: u64, t: u64, limits: GateLimits) {
        self.fence = fence;
        self.engine += 1;
        self.outbox.clear();
        for h in self.held.values_mut() {
            for run in &mut h.runs {
                run.limiter = fresh_gate(t, limits);
                run.leaving.clear();
                run.at_endpoint.clear();
            }
        }
    }
}

struct World {
    rng: Rng,
    terms: Terms,
    limits: GateLimits,
    /// When a node hands a unit over it stops sending for it first; the
    /// teeth test turns that off.
    stop_before_release: bool,
    /// A node asks for a unit only when it is not waiting to hear about
    /// it; the teeth test turns that off.
    wait_for_answers: bool,
    /// The database refuses a commit under an old fence; the teeth test
    /// turns that off.
    fence: bool,
    rows: Vec<Row<u32>>,
    /// Each node's fence at the database (0 until raised).
    fences: BTreeMap<u32, u64>,
    /// The writes the database took.
    writes: Vec<Write>,
    /// Commits it refused under an old fence.
    fenced: usize,
    /// Each node's last heartbeat at the database (true ms).
    heartbeats: BTreeMap<u32, u64>,
    nodes: Vec<Node>,
    next_id: u32,
    wire: Vec<(u64, Message)>,
    /// Each (unit, epoch)'s takeover, by the database's clock.
    takeovers: BTreeMap<(u32, u64), u64>,
    sends: Vec<Send>,
    handovers: usize,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let first = 1 + rng.below(3) as u32;
        let nodes = (0..first).map(|id| World::node(&mut rng, id, 0)).collect();
        World {
            terms: Terms::default(),
            limits: sim_nodes::limits(),
            stop_before_release: true,
            wait_for_answers: true,
            fence: true,
            rows: vec![Row::vacant(); UNITS as usize],
            fences: BTreeMap::new(),
            writes: Vec::new(),
            fenced: 0,
            heartbeats: BTreeMap::new(),
            nodes,
            next_id: first,
            wire: Vec::new(),
            takeovers: BTreeMap::new(),
            sends: Vec::new(),
            handovers: 0,
            rng,
        }
    }

    fn node(rng: &mut Rng, id: u32, t: u64) -> Node {
        Node {
            id,
            clock: Clock::new(rng, t),
            held: BTreeMap::new(),
            asking: BTreeMap::new(),
            fence: 0,
            engine: 0,
            outbox: Vec::new(),
            in_flight: BTreeMap::new(),
            next_commit: 0,
            draining: BTreeMap::new(),
        }
    }

    fn delay(&mut self) -> u64 {
        self.rng.below(200)
    }

    fn run(&mut self) {
        let mut t = 0;
        while t < RUN_MS {
            if t < RUN_MS - QUIET_MS {
                self.disrupt(t);
            }
            self.deliver(t);
            for i in 0..self.nodes.len() {
                self.flush(i, t);
                self.beat(i, t);
                self.dispatch(i, t);
            }
            t += TICK_MS;
        }
    }

    /// Now and then: a pause, a cut from the database, a death (and a new
    /// node later in its place), a node joining, a node leaving cleanly.
    fn disrupt(&mut self, t: u64) {
        if self.rng.below(1_500) != 0 {
            return;
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        let span = 500 + self.rng.below(12_000);
        match self.rng.below(5) {
            0 => self.nodes[i].clock.paused_until = self.nodes[i].clock.paused_until.max(t + span),
            1 => self.nodes[i].clock.cut_until = self.nodes[i].clock.cut_until.max(t + span),
            2 => {
                // kill -9: what it had in flight dies with it.
                let id = self.next_id;
                self.next_id += 1;
                let dead = self.nodes[i].id;
                self.wire.retain(|(_, m)| match m {
                    Message::Answer { node, .. } => *node != dead,
                    Message::Ask { .. } => true,
                });
                self.nodes[i] = World::node(&mut self.rng, id, t + span);
            }
            3 if self.nodes.len() < MAX_NODES => {
                let id = self.next_id;
                self.next_id += 1;
                let node = World::node(&mut self.rng, id, t);
                self.nodes.push(node);
            }
            4 if self.nodes.len() > 1 && self.nodes[i].clock.awake(t) => {
                // SIGTERM: stop sending, release everything once its
                // commits are in (the turn in progress is dropped), leave.
                let node = self.nodes.remove(i);
                let held: Vec<(u32, u64)> = node
                    .held
                    .iter()
                    .map(|(u, h)| (*u, h.epoch))
                    .chain(node.draining.iter().map(|(u, e)| (*u, *e)))
                    .collect();
                if !node.clock.cut(t) {
                    let last = self
                        .wire
                        .iter()
                        .filter(|(_, m)| {
                            matches!(m, Message::Ask { node: n, ask: Ask::Commit { .. }, .. } if *n == node.id)
                        })
                        .map(|(at, _)| *at)
                        .max()
                        .unwrap_or(t);
                    let at = last.max(t) + self.delay();
                    let (node, sent) = (node.id, node.clock.local(t));
                    let ask = Ask::Leave(held);
                    self.wire.push((at, Message::Ask { node, ask, sent }));
                }
            }
            _ => {}
        }
    }

    fn live(&self, t: u64) -> Vec<u32> {
        let lease = duration_ms(self.terms.lease);
        self.heartbeats
            .iter()
            .filter(|(_, at)| **at + lease >= t)
            .map(|(n, _)| *n)
            .collect()
    }

    /// The database's side: one ask at true time `t`.
    fn answer(&mut self, node: u32, ask: Ask, t: u64) -> Reply {
        let now = Timestamp(t);
        match ask {
            Ask::Beat(held) => {
                self.heartbeats.insert(node, t);
                let renewed = held
                    .into_iter()
                    .filter(|(u, e)| self.rows[*u as usize].renew(node, *e, now, &self.terms))
                    .collect();
                let units = self
                    .rows
                    .iter()
                    .map(|r| UnitView {
                        owner: r.owner,
                        free: r.owner.is_none() || r.expires < now,
                    })
                    .collect();
                Reply::Beat {
                    renewed,
                    units,
                    live: self.live(t),
                }
            }
            Ask::Acquire(units) => {
                let mut granted = Vec::new();
                for u in units.iter().copied() {
                    let last = self.rows[u as usize];
                    if let Some(epoch) = self.rows[u as usize].acquire(node, now, &self.terms) {
                        self.takeovers.insert((u, epoch), t);
                        granted.push((u, epoch));
                        // A lapsed unit of another node's: that node's
                        // engine writes nothing more under its fence.
                        if let Some(owner) = last.owner
                            && owner != node
                            && last.expires < now
                        {
                            *self.fences.entry(owner).or_default() += 1;
                        }
                    }
                }
                Reply::Acquired {
                    asked: units,
                    granted,
                }
            }
            Ask::Commit { id, fence, starts } => {
                let current = self.fences.get(&node).copied().unwrap_or(0);
                if self.fence && fence != current {
                    self.fenced += 1;
                    return Reply::Fenced { id, fence: current };
                }
                self.writes.extend(starts.iter().map(|s| Write {
                    unit: s.unit,
                    epoch: s.epoch,
                    at: t,
                }));
                Reply::Committed { id, starts }
            }
            Ask::Release(u, epoch) => {
                self.rows[u as usize].release(node, epoch);
                Reply::Done
            }
            Ask::Leave(held) => {
                for (u, epoch) in held {
                    self.rows[u as usize].release(node, epoch);
                }
                self.heartbeats.remove(&node);
                Reply::Done
            }
        }
    }

    fn deliver(&mut self, t: u64) {
        let mut later = Vec::new();
        for (at, message) in std::mem::take(&mut self.wire) {
            if at > t {
                later.push((at, message));
                continue;
            }
            match message {
                Message::Ask { node, ask, sent } => {
                    let reply = self.answer(node, ask, t);
                    let reachable = self
                        .nodes
                        .iter()
                        .find(|n| n.id == node)
                        .is_some_and(|n| !n.clock.cut(t));
                    if reachable {
                        let back = t + self.delay();
                        later.push((back, Message::Answer { node, reply, sent }));
                    }
                }
                Message::Answer { node, reply, sent } => {
                    let Some(i) = self.nodes.iter().position(|n| n.id == node) else {
                        continue;
                    };
                    if !self.nodes[i].clock.awake(t) {
                        // Read when the process runs again.
                        let wake = self.nodes[i].clock.paused_until;
                        later.push((wake, Message::Answer { node, reply, sent }));
                        continue;
                    }
                    if let Some(ask) = self.hear(i, reply, sent, t) {
                        later.push(ask);
                    }
                }
            }
        }
        self.wire = later;
    }

    /// A node reads an answer; returns what it asks next, if anything.
    fn hear(&mut self, i: usize, reply: Reply, sent: u64, t: u64) -> Option<(u64, Message)> {
        let hold = duration_ms(self.terms.hold());
        let limits = self.limits;
        let n = &mut self.nodes[i];
        let local = n.clock.local(t);
        match reply {
            Reply::Beat {
                renewed,
                units,
                live,
            } => {
                n.held.retain(|u, h| {
                    if renewed.contains(&(*u, h.epoch)) {
                        h.deadline = h.deadline.max(sent + hold);
                        true
                    } else {
                        // Not renewed: it lapsed and may be another's now.
                        false
                    }
                });
                let moves = plan_moves_taking(TAKE_PER_BEAT, n.id, &units, &live, hash);
                let mut ask = None;
                if let Some(unit) = moves.hand_over
                    && let Some(h) = n.held.get_mut(&unit)
                {
                    let epoch = h.epoch;
                    self.handovers += 1;
                    if !self.stop_before_release {
                        ask = Some(Ask::Release(unit, epoch));
                    } else {
                        n.held.remove(&unit);
                        if n.writing(unit) {
                            // Released once its commits are answered.
                            n.draining.insert(unit, epoch);
                        } else {
                            ask = Some(Ask::Release(unit, epoch));
                        }
                    }
                }
                // Never a unit it holds or is still waiting to hear about:
                // a second takeover of its own would bump the epoch under
                // the first while that one still sends. (An answer lost on
                // the way is given up after a lease.)
                let lease = duration_ms(self.terms.lease);
                n.asking.retain(|_, at| *at + lease > local);
                if !self.wait_for_answers {
                    n.asking.clear();
                }
                // Nor one its engine still writes for under an old epoch.
                let acquire: Vec<u32> = moves
                    .acquire
                    .into_iter()
                    .filter(|u| {
                        !n.held.contains_key(u)
                            && !n.asking.contains_key(u)
                            && !n.draining.contains_key(u)
                            && !n.writing(*u)
                    })
                    .collect();
                let (id, cut) = (n.id, n.clock.cut(t));
                if cut {
                    return None;
                }
                // One ask per answer in this model: a release first, the
                // takeovers at the next beat.
                if ask.is_none() {
                    for u in &acquire {
                        n.asking.insert(*u, local);
                    }
                }
                let ask = ask.or((!acquire.is_empty()).then_some(Ask::Acquire(acquire)))?;
                let at = t + self.delay();
                Some((
                    at,
                    Message::Ask {
                        node: id,
                        ask,
                        sent: local,
                    },
                ))
            }
            Reply::Acquired { asked, granted } => {
                for unit in asked {
                    n.asking.remove(&unit);
                }
                for (unit, epoch) in granted {
                    let runs = (0..GATES)
                        .filter(|g| unit_of(&gate_name(*g), UNITS) == unit)
                        .map(|gate| Run {
                            gate,
                            limiter: fresh_gate(t, limits),
                            leaving: Vec::new(),
                            at_endpoint: Vec::new(),
                        })
                        .collect();
                    n.held.insert(
                        unit,
                        Held {
                            epoch,
                            deadline: sent + hold,
                            runs,
                        },
                    );
                }
                None
            }
            Reply::Committed { id, starts } => {
                // Left only by the engine that admitted them.
                let current = n
                    .in_flight
                    .remove(&id)
                    .is_some_and(|c| c.engine == n.engine);
                if current {
                    for s in starts {
                        if let Some(h) = n.held.get_mut(&s.unit)
                            && h.epoch == s.epoch
                            && let Some(run) = h.runs.iter_mut().find(|r| r.gate == s.gate)
                        {
                            run.leaving.push(s.slot);
                        }
                    }
                }
                None
            }
            Reply::Fenced { id, fence } => {
                n.in_flight.remove(&id);
                if fence > n.fence {
                    n.restart(fence, t, limits);
                }
                None
            }
            Reply::Done => None,
        }
    }

    /// An awake node sends its last turn's commit, and releases each unit
    /// it stopped for a handover once no commit names it.
    fn flush(&mut self, i: usize, t: u64) {
        let lease = duration_ms(self.terms.lease);
        let n = &mut self.nodes[i];
        if !n.clock.awake(t) {
            return;
        }
        let local = n.clock.local(t);
        // A commit that fails (cut from the database), or whose answer was
        // lost to a cut (given up after a lease; the commit itself reached
        // the database long before): the engine stops and a new one starts
        // under the same fence, as after any failed commit. None of the
        // old engine's starts leaves.
        let before = n.in_flight.len();
        n.in_flight.retain(|_, c| c.sent + lease > local);
        let failed = n.in_flight.len() < before || (n.clock.cut(t) && !n.outbox.is_empty());
        if failed {
            let fence = n.fence;
            n.restart(fence, t, self.limits);
        }
        if n.clock.cut(t) {
            return;
        }
        let mut asks = Vec::new();
        if !n.outbox.is_empty() {
            let starts = std::mem::take(&mut n.outbox);
            let mut units: Vec<u32> = starts.iter().map(|s| s.unit).collect();
            units.sort_unstable();
            units.dedup();
            let id = n.next_commit;
            n.next_commit += 1;
            let fence = n.fence;
            n.in_flight.insert(
                id,
                InFlight {
                    engine: n.engine,
                    units,
                    sent: local,
                },
            );
            asks.push(Ask::Commit { id, fence, starts });
        }
        let released: Vec<(u32, u64)> = n
            .draining
            .iter()
            .filter(|(u, _)| !n.writing(**u))
            .map(|(u, e)| (*u, *e))
            .collect();
        for (unit, epoch) in released {
            n.draining.remove(&unit);
            asks.push(Ask::Release(unit, epoch));
        }
        let node = n.id;
        for ask in asks {
            let at = t + self.delay();
            self.wire.push((
                at,
                Message::Ask {
                    node,
                    ask,
                    sent: local,
                },
            ));
        }
    }

    /// Every second of its own clock, an awake node beats.
    fn beat(&mut self, i: usize, t: u64) {
        let n = &self.nodes[i];
        if !n.clock.awake(t) || n.clock.local(t) < n.clock.next_beat {
            return;
        }
        let local = n.clock.local(t);
        let held = n
            .held
            .iter()
            .filter(|(_, h)| local < h.deadline)
            .map(|(u, h)| (*u, h.epoch))
            .collect();
        let (id, cut) = (n.id, n.clock.cut(t));
        self.nodes[i].clock.next_beat = local + duration_ms(self.terms.renew_every);
        if !cut {
            let at = t + self.delay();
            let ask = Ask::Beat(held);
            self.wire.push((
                at,
                Message::Ask {
                    node: id,
                    ask,
                    sent: local,
                },
            ));
        }
    }

    /// Each held unit's gates: a unit past its deadline stops; otherwise
    /// starts are admitted and leave at their slot time if it still holds.
    fn dispatch(&mut self, i: usize, t: u64) {
        let n = &mut self.nodes[i];
        if !n.clock.awake(t) {
            return;
        }
        let local = n.clock.local(t);
        n.held.retain(|_, h| local < h.deadline);
        let now = Timestamp(t);
        for (unit, h) in n.held.iter_mut() {
            for run in &mut h.runs {
                run.at_endpoint.retain(|end| {
                    let done = *end <= t;
                    if done {
                        run.limiter.attempt_ended(now, Signal::Healthy, true);
                    }
                    !done
                });
                while let Ok(at) = run.limiter.try_start(now) {
                    n.outbox.push(Start {
                        gate: run.gate,
                        unit: *unit,
                        epoch: h.epoch,
                        slot: at.as_ms().max(t),
                    });
                }
                let leaving = std::mem::take(&mut run.leaving);
                for at in leaving {
                    if at > t {
                        run.leaving.push(at);
                        continue;
                    }
                    self.sends.push(Send {
                        gate: run.gate,
                        unit: *unit,
                        epoch: h.epoch,
                        slot: at,
                        left: t,
                    });
                    run.at_endpoint.push(t + 10 + (t % 90));
                }
            }
        }
    }

    /// Whether true time `at` is at or after the takeover of `unit` under
    /// an epoch later than `epoch`.
    fn after_next_takeover(&self, unit: u32, epoch: u64, at: u64) -> bool {
        self.takeovers
            .range((unit, epoch + 1)..(unit + 1, 0))
            .next()
            .is_some_and(|(_, next)| at >= *next)
    }

    /// Sends that left after their unit's next takeover.
    fn overlaps(&self) -> Vec<Send> {
        let late = |s: &&Send| self.after_next_takeover(s.unit, s.epoch, s.left);
        self.sends.iter().filter(late).copied().collect()
    }

    /// Writes the database took under an epoch after the unit's next
    /// takeover.
    fn stale_writes(&self) -> Vec<Write> {
        let late = |w: &&Write| self.after_next_takeover(w.unit, w.epoch, w.at);
        self.writes.iter().filter(late).copied().collect()
    }

    fn check(&self) {
        let overlaps = self.overlaps();
        assert!(
            overlaps.is_empty(),
            "sends after their unit's next takeover: {:?}",
            &overlaps[..overlaps.len().min(3)]
        );
        let stale = self.stale_writes();
        assert!(
            stale.is_empty(),
            "writes after their unit's next takeover: {:?}",
            &stale[..stale.len().min(3)]
        );
        for gate in 0..GATES {
            let times = self
                .sends
                .iter()
                .filter(|s| s.gate == gate)
                .map(|s| s.slot)
                .collect();
            assert_window(times, &self.limits, &format!("gate {gate}"));
            let last = self
                .sends
                .iter()
                .filter(|s| s.gate == gate)
                .map(|s| s.left)
                .max()
                .unwrap_or(0);
            assert!(
                last > RUN_MS - 5_000,
                "gate {gate} sent nothing after {last} ms"
            );
        }
        // Settled: each unit held, by its rendezvous owner among the
        // nodes alive at the end.
        let alive: Vec<u32> = self.nodes.iter().map(|n| n.id).collect();
        let now = Timestamp(RUN_MS);
        for (unit, row) in self.rows.iter().enumerate() {
            let desired = owner_of(unit as u32, &alive, hash);
            assert_eq!(
                row.owner, desired,
                "unit {unit}: owner, against the rendezvous"
            );
            assert!(row.expires >= now, "unit {unit} lapsed at the end");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn units_never_have_two_owners_and_every_gate_keeps_its_window(seed in 0u64..u64::MAX) {
        let mut world = World::new(seed);
        world.run();
        world.check();
    }
}

/// The world moves units around: handovers and takeovers happen, and nodes
/// other than the first own units at the end, across the seeds.
#[test]
fn units_move_between_nodes() {
    let (mut handovers, mut takeovers, mut spread, mut fenced) = (0, 0, 0, 0);
    for seed in 0..8 {
        let mut world = World::new(seed);
        world.run();
        world.check();
        handovers += world.handovers;
        takeovers += world.takeovers.len();
        fenced += world.fenced;
        let owners: std::collections::BTreeSet<_> = world.rows.iter().map(|r| r.owner).collect();
        spread += usize::from(owners.len() > 1);
    }
    eprintln!(
        "8 runs: {handovers} handovers, {takeovers} takeovers, {fenced} commits fenced, {spread} spread at the end"
    );
    assert!(handovers > 0, "no clean handover in 8 runs");
    assert!(fenced > 0, "no commit fenced in 8 runs");
    assert!(takeovers > 8 * UNITS as usize, "only {takeovers} takeovers");
    assert!(
        spread > 0,
        "every run ended with one node owning everything"
    );
}

/// The check has teeth: a node that releases a unit while it still sends
/// for it overlaps with the next owner.
#[test]
fn releasing_a_unit_before_stopping_it_is_caught_overlapping() {
    let mut caught = 0;
    for seed in 0..40 {
        let mut world = World::new(seed);
        world.stop_before_release = false;
        world.run();
        caught += usize::from(!world.overlaps().is_empty());
    }
    eprintln!("{caught} of 40 runs overlapped");
    assert!(caught > 0, "no run overlapped");
}

/// The check has teeth: a node that asks again for a unit while its first
/// takeover's answer is still on the way (here: a beat sent as it woke
/// from a pause overtook that takeover) takes it under a second epoch
/// while the first still sends. Found by the property above; the seed
/// found by a search of 2,000 (5 overlapped) since the fence's commits
/// joined the world.
#[test]
fn asking_twice_for_a_unit_is_caught_overlapping() {
    let seed = 10_699_727_889_358_938_059;
    let mut world = World::new(seed);
    world.wait_for_answers = false;
    world.run();
    assert!(!world.overlaps().is_empty(), "no overlap without waiting");
    let mut world = World::new(seed);
    world.run();
    world.check();
}

/// The check has teeth: without the fence, a node paused between its
/// turn's decision and its commit writes after another node took the unit
/// over (its sends still stop at its deadline).
#[test]
fn a_commit_without_the_fence_is_caught_writing_after_a_takeover() {
    let mut caught = 0;
    for seed in 0..100 {
        let mut world = World::new(seed);
        world.fence = false;
        world.run();
        assert!(world.overlaps().is_empty(), "seed {seed}: sends overlapped");
        caught += usize::from(!world.stale_writes().is_empty());
    }
    eprintln!("{caught} of 100 runs wrote after a takeover");
    assert!(caught > 0, "no run wrote after a takeover");
}
