//! The lease protocol on simulated time: three nodes whose clocks drift
//! (±10 %), a database with its own clock, messages that take up to 200 ms
//! each way or are lost, nodes that pause (`SIGSTOP`), lose the database
//! (a partition) or die and come back as new nodes. Each node runs the
//! rules of `lease.rs` the way `cluster.rs` does: it renews every second,
//! acts until `Terms::hold` after it *sent* a renewal that succeeded (on
//! its own clock), and while it holds the lease runs a real `Gate`, started
//! empty with the ramp. A start leaves at its slot time, after the node
//! checks its deadline then (as `Runner::release` does); a paused node
//! checks when it wakes.
//!
//! Checked over many seeds: every send of an epoch comes before the next
//! epoch's takeover (owners never overlap),
//! the window bound `burst + rate × T` holds over all nodes' starts together,
//! and the gate moves on (it sends again after the last disruption).
//!
//! A test module: its length is its cases.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::{ProptestConfig, proptest};

use super::{Row, Terms};
use crate::core::Timestamp;
use crate::core::gate::{Gate, GateLimits, Signal};
use crate::core::rng::Rng;
use crate::core::sim_nodes::{self, Clock, assert_window, fresh_gate};
use crate::core::time::duration_ms;

const TICK_MS: u64 = 5;
const RUN_MS: u64 = 120_000;
/// Disruptions stop this long before the end, so the cluster must recover.
const QUIET_MS: u64 = 25_000;

/// One attempt that left: its slot time (the gate's schedule), when it
/// actually left (later, if its node was paused), and its epoch.
#[derive(Clone, Copy, Debug)]
struct Send {
    slot: u64,
    left: u64,
    epoch: u64,
}

#[derive(Clone, Copy, Debug)]
enum Ask {
    Acquire,
    Renew(u64),
}

#[derive(Clone, Copy, Debug)]
enum Message {
    /// To the database: a node's ask, sent at its local time `sent`.
    Ask { node: u32, ask: Ask, sent: u64 },
    /// Back to a node: the answer (the epoch held, if any).
    Answer {
        node: u32,
        ask: Ask,
        sent: u64,
        granted: Option<u64>,
    },
}

/// An owner's engine: its epoch, its deadline (local ms), its gate and the
/// starts it admitted that have not left yet or are at the endpoint.
struct Engine {
    epoch: u64,
    deadline: u64,
    gate: Gate,
    /// Admitted starts waiting for their slot time (true ms).
    leaving: Vec<u64>,
    /// Attempts at the endpoint: when each ends (true ms).
    at_endpoint: Vec<u64>,
}

struct Node {
    id: u32,
    clock: Clock,
    engine: Option<Engine>,
}

struct World {
    rng: Rng,
    terms: Terms,
    limits: GateLimits,
    row: Row<u32>,
    nodes: Vec<Node>,
    next_id: u32,
    /// In flight: (arrives at, true ms) → message.
    wire: Vec<(u64, Message)>,
    /// Each epoch's takeover, by the database's clock (= true time here).
    takeovers: BTreeMap<u64, u64>,
    sends: Vec<Send>,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let mut nodes = Vec::new();
        for id in 0..3 {
            nodes.push(World::node(&mut rng, id, 0));
        }
        World {
            terms: Terms::default(),
            limits: sim_nodes::limits(),
            row: Row::vacant(),
            nodes,
            next_id: 3,
            wire: Vec::new(),
            takeovers: BTreeMap::new(),
            sends: Vec::new(),
            rng,
        }
    }

    fn node(rng: &mut Rng, id: u32, t: u64) -> Node {
        Node {
            id,
            clock: Clock::new(rng, t),
            engine: None,
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
                self.beat(i, t);
                self.dispatch(i, t);
            }
            t += TICK_MS;
        }
    }

    /// Now and then: a pause, a cut from the database, a death and a new
    /// node in its place.
    fn disrupt(&mut self, t: u64) {
        if self.rng.below(2_000) != 0 {
            return;
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        let span = 500 + self.rng.below(12_000);
        match self.rng.below(3) {
            0 => self.nodes[i].clock.paused_until = self.nodes[i].clock.paused_until.max(t + span),
            1 => self.nodes[i].clock.cut_until = self.nodes[i].clock.cut_until.max(t + span),
            _ => {
                // kill -9: what it had in flight is lost with it.
                let id = self.next_id;
                self.next_id += 1;
                let dead = self.nodes[i].id;
                self.wire.retain(|(_, m)| match m {
                    Message::Answer { node, .. } => *node != dead,
                    Message::Ask { .. } => true,
                });
                self.nodes[i] = World::node(&mut self.rng, id, t + span);
            }
        }
    }

    fn deliver(&mut self, t: u64) {
        let mut later = Vec::new();
        let due: Vec<(u64, Message)> = std::mem::take(&mut self.wire);
        for (at, message) in due {
            if at > t {
                later.push((at, message));
                continue;
            }
            match message {
                Message::Ask { node, ask, sent } => {
                    let now = Timestamp(t);
                    let granted = match ask {
                        Ask::Acquire => {
                            let epoch = self.row.acquire(node, now, &self.terms);
                            if let Some(epoch) = epoch {
                                self.takeovers.insert(epoch, t);
                            }
                            epoch
                        }
                        Ask::Renew(epoch) => self
                            .row
                            .renew(node, epoch, now, &self.terms)
                            .then_some(epoch),
                    };
                    let cut = self
                        .nodes
                        .iter()
                        .find(|n| n.id == node)
                        .is_some_and(|n| n.clock.cut(t));
                    if !cut {
                        let back = t + self.delay();
                        later.push((
                            back,
                            Message::Answer {
                                node,
                                ask,
                                sent,
                                granted,
                            },
                        ));
                    }
                }
                Message::Answer {
                    node,
                    ask,
                    sent,
                    granted,
                } => {
                    let Some(n) = self.nodes.iter_mut().find(|n| n.id == node) else {
                        continue;
                    };
                    if !n.clock.awake(t) {
                        // Read when the process runs again.
                        later.push((n.clock.paused_until, message));
                        continue;
                    }
                    let hold = duration_ms(self.terms.hold());
                    match (ask, granted) {
                        (Ask::Acquire, Some(epoch)) => {
                            let gate = fresh_gate(t, self.limits);
                            n.engine = Some(Engine {
                                epoch,
                                deadline: sent + hold,
                                gate,
                                leaving: Vec::new(),
                                at_endpoint: Vec::new(),
                            });
                        }
                        (Ask::Renew(epoch), Some(_)) => {
                            if let Some(e) = n.engine.as_mut().filter(|e| e.epoch == epoch) {
                                e.deadline = e.deadline.max(sent + hold);
                            }
                        }
                        (Ask::Renew(epoch), None) => {
                            if n.engine.as_ref().is_some_and(|e| e.epoch == epoch) {
                                n.engine = None;
                            }
                        }
                        (Ask::Acquire, None) => {}
                    }
                }
            }
        }
        self.wire = later;
    }

    /// Every second of its own clock, an awake node renews or asks to take
    /// over (`Cluster::renew_units`, `acquire_unit`).
    fn beat(&mut self, i: usize, t: u64) {
        let n = &self.nodes[i];
        if !n.clock.awake(t) || n.clock.local(t) < n.clock.next_beat {
            return;
        }
        let local = n.clock.local(t);
        let ask = match &n.engine {
            Some(e) if local < e.deadline => Ask::Renew(e.epoch),
            _ => Ask::Acquire,
        };
        let (id, cut) = (n.id, n.clock.cut(t));
        let every = duration_ms(self.terms.renew_every);
        self.nodes[i].clock.next_beat = local + every;
        if !cut {
            let at = t + self.delay();
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

    /// The owner's engine: stops at its deadline; otherwise admits starts,
    /// which leave at their slot time if the deadline still holds then.
    fn dispatch(&mut self, i: usize, t: u64) {
        let n = &mut self.nodes[i];
        if !n.clock.awake(t) {
            return;
        }
        let local = n.clock.local(t);
        let Some(e) = n.engine.as_mut() else {
            return;
        };
        if local >= e.deadline {
            n.engine = None;
            return;
        }
        let now = Timestamp(t);
        e.at_endpoint.retain(|end| {
            if *end <= t {
                e.gate.attempt_ended(now, Signal::Healthy, true);
                false
            } else {
                true
            }
        });
        while let Ok(at) = e.gate.try_start(now) {
            e.leaving.push(at.as_ms().max(t));
        }
        let mut leaving = std::mem::take(&mut e.leaving);
        leaving.sort_unstable();
        let mut kept = Vec::new();
        for at in leaving {
            if at > t {
                kept.push(at);
                continue;
            }
            // `Runner::release`: the deadline, checked when it leaves.
            if local < e.deadline {
                self.sends.push(Send {
                    slot: at,
                    left: t,
                    epoch: e.epoch,
                });
                let end = t + 10 + (t % 90);
                e.at_endpoint.push(end);
            } else {
                e.gate.attempt_ended(now, Signal::Neutral, true);
            }
        }
        e.leaving = kept;
    }

    fn check(&self) {
        // Owners never overlap: each epoch's sends come before the next
        // epoch's takeover.
        for send in &self.sends {
            let epoch = send.epoch;
            if let Some(&next) = self.takeovers.range(epoch + 1..).next().map(|(_, t)| t) {
                assert!(
                    send.left < next,
                    "epoch {epoch} sent at {}, after the takeover at {next}",
                    send.left
                );
            }
        }
        // The window bound over everyone's slot times. (A start whose node
        // stalled after admitting it leaves late; how late sends bunch is
        // the release pacer's matter, on one node as on many.)
        let times = self.sends.iter().map(|s| s.slot).collect();
        assert_window(times, &self.limits, "the gate");
        // The gates moved on after the last disruption.
        let last = self.sends.iter().map(|s| s.left).max().unwrap_or(0);
        assert!(
            last > RUN_MS - 5_000,
            "nothing sent after {last} ms: the cluster did not recover"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn owners_never_overlap_and_the_window_holds_across_handovers(seed in 0u64..u64::MAX) {
        let mut world = World::new(seed);
        world.run();
        world.check();
        assert!(!world.takeovers.is_empty());
    }
}

/// The check has teeth: with no margin, an owner whose clock runs slow
/// keeps sending after the database let another node take over.
#[test]
fn an_owner_without_a_margin_is_caught_overlapping() {
    let mut caught = 0;
    let mut sends = 0;
    for seed in 0..40 {
        let mut world = World::new(seed);
        world.terms.margin = Duration::ZERO;
        world.run();
        sends += world.sends.len();
        let overlapped = world.sends.iter().any(|s| {
            world
                .takeovers
                .range(s.epoch + 1..)
                .next()
                .is_some_and(|(_, &next)| s.left >= next)
        });
        caught += usize::from(overlapped);
    }
    eprintln!("{caught} of 40 runs overlapped; {sends} sends");
    assert!(caught > 0, "no run overlapped without a margin");
}
