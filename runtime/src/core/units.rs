//! Spreading the gates over the nodes of a cluster, as pure rules, which
//! `cluster/units.rs` runs against the database.
//!
//! The gates fall into a fixed number of **units** by a stable hash of
//! their name (`unit_of`: by name, because a gate is routed before it has
//! an id, and FNV-1a, because std's hasher may change between releases).
//! Each unit is leased on its own (`lease::Row`, one row per unit, the
//! same rules for each). Which live node should hold a
//! unit is rendezvous hashing (`owner_of`): the node with the highest
//! weight for it, so a node joining or leaving moves only the units it
//! gains or loses, and every node computes the same answer from the same
//! list of live nodes, with no coordinator.
//!
//! What a node does at each beat is `plan_moves`: take the free units it
//! should own (a few per beat), and hand over at most one unit it holds
//! but should not (first stopping everything it sends for it, then
//! releasing its row). A joining node therefore takes only what is free,
//! and its share comes over from the others one unit per donor per beat:
//! no stampede, and each unit moves once. `units_sim_tests.rs` runs nodes
//! with drifting clocks, pauses, partitions, deaths and joins against these
//! rules and checks that a unit's owners never overlap, that every gate's
//! window bound holds across its handovers, and that the units settle on
//! their rendezvous owners once the disruptions stop.

/// How many units the gates are spread over: many more than there will
/// be nodes, so shares stay even, and few enough to renew in one statement.
pub const UNITS: u32 = 64;

/// Most free units a node takes in one beat: a node that comes back
/// after a partition does not take the whole cluster at once.
pub const ACQUIRE_PER_BEAT: usize = 16;

/// FNV-1a, 64 bits: stable across builds and platforms.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The unit a gate belongs to, of `units`.
pub fn unit_of(gate: &str, units: u32) -> u32 {
    (fnv1a(gate.as_bytes()) % u64::from(units.max(1))) as u32
}

/// A set of units, one bit each (`UNITS` is 64): what an engine runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Units(u64);

impl Units {
    pub const NONE: Units = Units(0);
    pub const ALL: Units = Units(u64::MAX);

    /// The set as bits, unit `u` at bit `u`.
    pub fn bits(self) -> u64 {
        self.0
    }

    pub fn from_bits(bits: u64) -> Units {
        Units(bits)
    }

    pub fn one(unit: u32) -> Units {
        Units(1u64.checked_shl(unit).unwrap_or(0))
    }

    /// The unit of the gate named `gate`.
    pub fn of(gate: &str) -> Units {
        Units::one(unit_of(gate, UNITS))
    }

    pub fn has(self, unit: u32) -> bool {
        self.0 & Units::one(unit).0 != 0
    }

    /// Whether the gate named `gate` is in the set.
    pub fn has_gate(self, gate: &str) -> bool {
        self.has(unit_of(gate, UNITS))
    }

    pub fn with(self, other: Units) -> Units {
        Units(self.0 | other.0)
    }

    /// The units in both.
    pub fn and(self, other: Units) -> Units {
        Units(self.0 & other.0)
    }

    pub fn without(self, other: Units) -> Units {
        Units(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The units in the set, in order.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..UNITS).filter(move |u| self.has(*u))
    }
}

impl FromIterator<u32> for Units {
    fn from_iter<I: IntoIterator<Item = u32>>(units: I) -> Units {
        units
            .into_iter()
            .fold(Units::NONE, |set, u| set.with(Units::one(u)))
    }
}

/// SplitMix64's finaliser: spreads a combined key over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A node's weight for `unit` in the rendezvous; `node` is the hash of its
/// id (`fnv1a`).
pub fn weight(node: u64, unit: u32) -> u64 {
    mix(node ^ u64::from(unit).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The live node that should own `unit`: the highest weight, ties (equal
/// hashes) to the lowest id. `None` with no live node.
pub fn owner_of<N: Copy + Ord>(unit: u32, live: &[N], hash: impl Fn(N) -> u64) -> Option<N> {
    live.iter().copied().max_by(|a, b| {
        weight(hash(*a), unit)
            .cmp(&weight(hash(*b), unit))
            .then(b.cmp(a))
    })
}

/// A unit's row as a node last read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitView<N> {
    pub owner: Option<N>,
    /// Vacant, handed over, or past its expiry by the database's clock:
    /// anyone may take it.
    pub free: bool,
}

/// What a node does at one beat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Free units it should own, to take now (at most `ACQUIRE_PER_BEAT`).
    /// The node skips any it holds or has asked for and not heard back
    /// about (for up to a lease): the database gives a node its own unit
    /// again under a new epoch, and the old epoch would still be sending.
    pub acquire: Vec<u32>,
    /// A unit it holds but should not: stop sending for it, then release it.
    pub hand_over: Option<u32>,
    /// Every unit it holds but should not (`hand_over` is the first): those
    /// with nothing out may go in the same beat, as nothing needs draining.
    pub surplus: Units,
}

/// `me`'s moves, from the rows (indexed by unit) and the live nodes (by
/// the database's clock; `me` among them when its heartbeat is fresh).
pub fn plan_moves<N: Copy + Ord>(
    me: N,
    units: &[UnitView<N>],
    live: &[N],
    hash: impl Fn(N) -> u64,
) -> Moves {
    plan_moves_taking(ACQUIRE_PER_BEAT, me, units, live, hash)
}

/// `plan_moves`, taking at most `take` free units.
pub fn plan_moves_taking<N: Copy + Ord>(
    take: usize,
    me: N,
    units: &[UnitView<N>],
    live: &[N],
    hash: impl Fn(N) -> u64,
) -> Moves {
    let mut moves = Moves::default();
    for (unit, row) in units.iter().enumerate() {
        let unit = unit as u32;
        let desired = owner_of(unit, live, &hash);
        if row.free {
            if desired == Some(me) && moves.acquire.len() < take {
                moves.acquire.push(unit);
            }
        } else if row.owner == Some(me) && desired.is_some_and(|d| d != me) {
            moves.surplus = moves.surplus.with(Units::one(unit));
            moves.hand_over = moves.hand_over.or(Some(unit));
        }
    }
    moves
}

#[cfg(test)]
#[path = "units_sim_tests.rs"]
mod sim_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u32) -> u64 {
        fnv1a(&n.to_le_bytes())
    }

    fn owners(live: &[u32]) -> Vec<Option<u32>> {
        (0..UNITS).map(|u| owner_of(u, live, hash)).collect()
    }

    #[test]
    fn a_set_of_units_holds_what_was_put_in() {
        let set = Units::one(0).with(Units::one(63)).with(Units::of("mail"));
        let mail = unit_of("mail", UNITS);
        assert!(set.has(0) && set.has(63) && set.has(mail));
        assert!(set.has_gate("mail"));
        let expect: Vec<u32> = {
            let mut v = vec![0, mail, 63];
            v.sort_unstable();
            v.dedup();
            v
        };
        assert_eq!(set.iter().collect::<Vec<_>>(), expect);
        assert!(!set.without(Units::of("mail")).has_gate("mail"));
        assert!(set.without(set).is_empty());
        assert_eq!(set.and(Units::one(63).with(Units::one(5))), Units::one(63));
        assert_eq!(Units::ALL.iter().count(), UNITS as usize);
        assert!(Units::one(64).is_empty(), "no unit 64");
        assert_eq!(set.iter().collect::<Units>(), set, "collected back");
    }

    #[test]
    fn the_hashes_are_stable() {
        // Written down once: a change here moves every gate of a running
        // cluster to another unit.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(unit_of("billing", UNITS), 28);
        assert_eq!(unit_of("billing", 1), 0);
        assert_eq!(unit_of("billing", 0), 0);
    }

    #[test]
    fn units_spread_evenly_and_a_node_leaving_moves_only_its_own() {
        let live: Vec<u32> = (1..=4).collect();
        let before = owners(&live);
        for node in &live {
            let share = before.iter().filter(|o| **o == Some(*node)).count();
            assert!((6..=26).contains(&share), "node {node} owns {share} of 64");
        }
        let after = owners(&[1, 2, 4]);
        for (unit, (b, a)) in before.iter().zip(&after).enumerate() {
            if *b != Some(3) {
                assert_eq!(b, a, "unit {unit} moved though its owner stayed");
            } else {
                assert_ne!(*a, Some(3));
            }
        }
    }

    #[test]
    fn a_node_joining_takes_only_units_that_move_to_it() {
        let before = owners(&[1, 2, 3]);
        let after = owners(&[1, 2, 3, 9]);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, Some(9));
                moved += 1;
            }
        }
        assert!(
            (6..=26).contains(&moved),
            "{moved} of 64 moved to the new node"
        );
        assert_eq!(owners(&[]), vec![None; UNITS as usize]);
    }

    #[test]
    fn a_beat_takes_a_few_free_units_and_hands_over_one() {
        let live = [1, 2];
        let mine: Vec<u32> = (0..UNITS)
            .filter(|u| owner_of(*u, &live, hash) == Some(1))
            .collect();
        // Everything free: node 1 takes four of its own, nothing else.
        let free = vec![
            UnitView {
                owner: None,
                free: true
            };
            UNITS as usize
        ];
        let moves = plan_moves(1, &free, &live, hash);
        assert_eq!(moves.acquire, mine[..ACQUIRE_PER_BEAT].to_vec());
        assert_eq!(moves.hand_over, None);
        // Node 1 holds everything (it was alone): it hands over one unit
        // per beat, the first of node 2's, and takes nothing.
        let held = vec![
            UnitView {
                owner: Some(1),
                free: false
            };
            UNITS as usize
        ];
        let moves = plan_moves(1, &held, &live, hash);
        let first_of_2 = (0..UNITS).find(|u| !mine.contains(u));
        assert_eq!(moves.hand_over, first_of_2);
        let others: Units = (0..UNITS).filter(|u| !mine.contains(u)).collect();
        assert_eq!(moves.surplus, others);
        assert!(moves.acquire.is_empty());
        // Node 2 waits for them to be free: a held unit is never taken.
        assert_eq!(plan_moves(2, &held, &live, hash), Moves::default());
    }
}
