//! Leases per unit (schema 6): the database's half of spreading the gates
//! over the nodes (`core::units` has the rules, `docs/cluster-spread.md`
//! the plan). Each of the `UNITS` rows of `units` is a lease of its own,
//! with the rules of `core::lease`: an owner,
//! an epoch that grows with every takeover, an expiry on the database's
//! clock. What changes is the fence: it is the node's (`nodes.fence`), so
//! an engine's transaction checks one row however many units it runs.
//!
//! - **Renewal is joint**: one statement renews every unit the node holds,
//!   and the node's one deadline (`Terms::hold` after the renewal was sent)
//!   moves only if every unit it holds came back. A live node loses units
//!   against its will only all at once (a lapse), so one deadline is
//!   enough.
//! - **A takeover of a lapsed unit raises the last owner's fence**, after
//!   locking its node row for update: that waits for a write transaction of
//!   the last owner still in progress (each holds the row key-share-locked,
//!   `store::postgres::check_fence`), so its commit either lands before the
//!   takeover or never.
//! - **A handover fences nobody**: the owner stops sending for the unit and
//!   commits that before it releases the row.
//!
//! `server::supervise` runs `balance` every beat, and `leave` on a clean
//! stop.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Cluster, Sent, lease_ms};
use crate::clock::{self, Deadline};
use crate::core::Timestamp;
use crate::core::units::{Moves, UNITS, UnitView, Units, fnv1a, plan_moves};
use crate::shell::{Handle, Start, UnitsOrder};
use crate::store::StoreError;

/// The units a node holds: the epoch of each, and their one deadline.
#[derive(Debug, Default)]
pub(super) struct Spread {
    held: BTreeMap<u32, u64>,
    deadline: Arc<Deadline>,
}

/// A unit taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acquired {
    pub unit: u32,
    pub epoch: u64,
    /// The unit had lapsed under this very node, whose fence is now raised:
    /// its engine's writes are refused from here on, and it must start a
    /// new one under `Cluster::node_fence`.
    pub fenced_me: bool,
    /// After a lapse, the last owner's slot mark (`nodes.slots_until`):
    /// it sent no attempt whose slot time is later, so those on record
    /// never left and go straight back to the queue (`Start::Takeover`).
    /// `None` when the unit was vacant or handed over, or the mark unknown.
    pub unsent_after: Option<Timestamp>,
}

/// What one joint renewal found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewal {
    /// The units still held, under `deadline`.
    pub held: Units,
    /// Units held before and taken over since (each after a lapse): the
    /// node's engine was fenced, and sends nothing more for any unit.
    pub lost: Units,
    /// Units the database had as this node's but the node did not know it
    /// held (an acquire whose answer was lost): released at once.
    pub released: Units,
}

/// What one beat of the balance did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balanced {
    /// Taken over and adopted by the engine.
    pub adopted: Units,
    /// Stopped, drained, dropped and released.
    pub handed_over: Units,
    /// Taken from this node after a lapse (or taken back by it): its
    /// engine is fenced and sends nothing more. Start a new one under
    /// `Cluster::node_fence` that adopts what `Cluster::units_held` says.
    pub lost: Units,
    /// Of `handed_over`, those with something out when stopped (so
    /// drained): one a beat, and any found idle that took a start just
    /// before its stop.
    pub drained: Units,
    /// It took as many units as a beat takes: more may be waiting.
    pub more: bool,
}

fn units_column(units: Units) -> Vec<i32> {
    units.iter().map(|u| u as i32).collect()
}

impl Cluster {
    /// This node's fence as it is now: the generation its engine's writes
    /// must carry (`store::Fence::Node`).
    pub async fn node_fence(&self) -> Result<u64, StoreError> {
        let id = self.id.clone();
        let fence: Option<i64> = self
            .with_client(async |client| {
                let row = client
                    .query_opt("SELECT fence FROM nodes WHERE id = $1", &[&id])
                    .await?;
                Ok(row.map(|row| row.get(0)))
            })
            .await?;
        fence
            .map(|f| u64::try_from(f).unwrap_or(0))
            .ok_or_else(|| StoreError::Postgres(format!("node {} is not in the list", self.id)))
    }

    /// The units this node holds, and the deadline they share: one for
    /// as long as no unit is lost (its engine's `Options::deadline`),
    /// moved by every renewal, even of no unit (a node holding nothing has
    /// nothing to guard, and its engine keeps running); a loss revokes it
    /// and starts the next.
    pub fn units_held(&self) -> (Units, Arc<Deadline>) {
        match self.spread.lock() {
            Ok(spread) => (
                spread.held.keys().copied().collect(),
                spread.deadline.clone(),
            ),
            Err(_) => (Units::NONE, Arc::new(Deadline::default())),
        }
    }

    /// Takes `unit` if it is vacant (never held, or handed over) or has
    /// lapsed by the database's clock. `None` while a node holds it: this
    /// one too, since a second epoch under the first would let both send.
    pub async fn acquire_unit(&self, unit: u32) -> Result<Option<Acquired>, StoreError> {
        if unit >= UNITS {
            return Err(StoreError::Postgres(format!("there is no unit {unit}")));
        }
        let sent = Sent::now();
        let (id, lease_ms) = (self.id.clone(), lease_ms(&self.terms) as f64);
        let (column, slots_until) = (unit as i32, sent.slots_until(&self.terms));
        let taken = self
            .with_client(async |client| {
                client.batch_execute("BEGIN").await?;
                let taken = take(client, &id, column, lease_ms, slots_until).await;
                let end = match taken {
                    Ok(Some(_)) => "COMMIT",
                    _ => "ROLLBACK",
                };
                client.batch_execute(end).await?;
                taken
            })
            .await?;
        let Some(Taken {
            epoch,
            previous,
            slots_until,
        }) = taken
        else {
            return Ok(None);
        };
        let fenced_me = previous.as_deref() == Some(self.id.as_str());
        let acquired = Acquired {
            unit,
            epoch,
            fenced_me,
            unsent_after: slots_until
                .filter(|_| !fenced_me)
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Timestamp),
        };
        if let Ok(mut spread) = self.spread.lock() {
            if acquired.fenced_me {
                // Everything this node's engine held is fenced: the next
                // engine starts under a new deadline.
                for unit in std::mem::take(&mut spread.held).into_keys() {
                    tracing::warn!(unit, "a unit lapsed under this node and was taken back");
                }
                spread.deadline.revoke();
                spread.deadline = Arc::new(Deadline::default());
            }
            if spread.held.is_empty() {
                // Nothing else held: the deadline may move up to this
                // acquire's. With other units held it stays theirs, which
                // is earlier than this unit's expiry.
                sent.extend(&self.terms, &spread.deadline);
            }
            spread.held.insert(unit, epoch);
        }
        tracing::info!(node = %self.id, unit, epoch, "took over a unit");
        Ok(Some(acquired))
    }

    /// Renews every unit this node holds, in one statement, which also
    /// records the node's slot mark (`Acquired::unsent_after`) before the
    /// deadline here moves to it.
    pub async fn renew_units(&self) -> Result<Renewal, StoreError> {
        let sent = Sent::now();
        let (id, lease_ms) = (self.id.clone(), lease_ms(&self.terms) as f64);
        let slots_until = sent.slots_until(&self.terms);
        let rows: Vec<(u32, u64)> = self
            .with_client(async |client| {
                let rows = client
                    .query(
                        "WITH mark AS (UPDATE nodes SET slots_until = \
                         greatest(coalesce(slots_until, 0), $3) WHERE id = $1) \
                         UPDATE units SET expires_at = now() + $2::float8 * interval '1 millisecond' \
                         WHERE owner = $1 RETURNING unit, epoch",
                        &[&id, &lease_ms, &slots_until],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|row| {
                        let (unit, epoch): (i32, i64) = (row.get(0), row.get(1));
                        (
                            u32::try_from(unit).unwrap_or(u32::MAX),
                            u64::try_from(epoch).unwrap_or(0),
                        )
                    })
                    .collect())
            })
            .await?;
        let (renewal, extras) = {
            let mut spread = self
                .spread
                .lock()
                .map_err(|_| StoreError::Postgres("cluster state poisoned".into()))?;
            let back: BTreeMap<u32, u64> = rows.into_iter().collect();
            let lost: Units = (spread.held.iter())
                .filter(|(unit, epoch)| back.get(unit) != Some(epoch))
                .map(|(unit, _)| *unit)
                .collect();
            let extras: Units = (back.iter())
                .filter(|(unit, epoch)| spread.held.get(unit) != Some(epoch))
                .map(|(unit, _)| *unit)
                .collect();
            if lost.is_empty() {
                sent.extend(&self.terms, &spread.deadline);
            } else {
                // Taken over after a lapse, so this node's fence was raised:
                // everything it sends stops; what it still holds goes on
                // under a new deadline, for its next engine.
                tracing::warn!(lost = ?lost.iter().collect::<Vec<_>>(), "units were taken over");
                spread.deadline.revoke();
                spread.deadline = Arc::new(Deadline::default());
                spread.held.retain(|unit, _| !lost.has(*unit));
                if !spread.held.is_empty() {
                    sent.extend(&self.terms, &spread.deadline);
                }
            }
            let renewal = Renewal {
                held: spread.held.keys().copied().collect(),
                lost,
                released: extras,
            };
            (renewal, extras)
        };
        if !extras.is_empty() {
            self.release_rows(extras).await?;
        }
        Ok(renewal)
    }

    /// Hands `units` over at once: peers may take them without waiting for
    /// a lapse. Call only once nothing more is sent for them, and that is
    /// committed.
    pub async fn release_units(&self, units: Units) -> Result<(), StoreError> {
        if let Ok(mut spread) = self.spread.lock() {
            // The deadline stays: it guards only what is held, and the
            // engine (which sends nothing more for these) goes on.
            spread.held.retain(|unit, _| !units.has(*unit));
        }
        self.release_rows(units).await
    }

    async fn release_rows(&self, units: Units) -> Result<(), StoreError> {
        let (id, column) = (self.id.clone(), units_column(units));
        let schema = self.schema.clone();
        self.with_client(async |client| {
            client
                .execute(
                    "UPDATE units SET owner = NULL, expires_at = '-infinity' \
                     WHERE owner = $1 AND unit = ANY($2)",
                    &[&id, &column],
                )
                .await?;
            client
                .execute("SELECT pg_notify($1, $2)", &[&super::HANDOVERS, &schema])
                .await
        })
        .await?;
        tracing::info!(units = ?units.iter().collect::<Vec<_>>(), "handed units over");
        Ok(())
    }

    /// What this node should do at this beat (`core::units::plan_moves`),
    /// from the rows and the live nodes as the database has them: nodes that
    /// beat within a lease, are not leaving, and started a few seconds ago
    /// (so a node that flaps is given nothing). A node that sees no other
    /// counts itself from its start: one alone runs its gates at once.
    pub async fn plan_units(&self) -> Result<Moves, StoreError> {
        let lease_ms = lease_ms(&self.terms) as f64;
        let (rows, fresh) = self
            .with_client(async |client| {
                let rows = client
                    .query(
                        "SELECT unit, owner, owner IS NULL OR expires_at < now() \
                         FROM units ORDER BY unit",
                        &[],
                    )
                    .await?;
                let fresh = client
                    .query(
                        "SELECT id, started_at < now() - interval '3 seconds' FROM nodes \
                         WHERE heartbeat > now() - $1::float8 * interval '1 millisecond' \
                         AND NOT leaving",
                        &[&lease_ms],
                    )
                    .await?;
                let rows: Vec<(i32, Option<String>, bool)> = rows
                    .iter()
                    .map(|row| (row.get(0), row.get(1), row.get(2)))
                    .collect();
                let fresh: Vec<(String, bool)> =
                    fresh.iter().map(|row| (row.get(0), row.get(1))).collect();
                Ok((rows, fresh))
            })
            .await?;
        let alone = fresh.iter().all(|(id, old)| id == &self.id || !old);
        let live: Vec<String> = (fresh.iter())
            .filter(|(id, old)| *old || (alone && id == &self.id))
            .map(|(id, _)| id.clone())
            .collect();
        // Nodes by index, so the rules (which want `Copy` names) can run.
        let mut names: Vec<String> = live.clone();
        let mut index = |name: &str| match names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                names.push(name.to_string());
                names.len() - 1
            }
        };
        let me = index(&self.id);
        let mut views = vec![
            UnitView {
                owner: None,
                free: true,
            };
            UNITS as usize
        ];
        for (unit, owner, free) in rows {
            if let Some(view) = usize::try_from(unit).ok().and_then(|u| views.get_mut(u)) {
                *view = UnitView {
                    owner: owner.as_deref().map(&mut index),
                    free,
                };
            }
        }
        let live: Vec<usize> = (0..live.len()).collect();
        let hashes: Vec<u64> = names.iter().map(|n| fnv1a(n.as_bytes())).collect();
        let mut moves = plan_moves(me, &views, &live, |n| hashes.get(n).copied().unwrap_or(0));
        // Never ask for a unit already held: see `acquire_unit`.
        let (held, _) = self.units_held();
        moves.acquire.retain(|unit| !held.has(*unit));
        Ok(moves)
    }

    /// One beat of the balance: renews the units held; takes the free units
    /// this node should own (a few a beat) and has `engine` adopt them as a
    /// takeover; hands over those it should not: all with nothing out at
    /// once, and at most one busy one a beat: `engine` stops it, drains it
    /// (until nothing is out, or `drain` passes: what is still out is the
    /// taker's to hold), drops it, and only then is its row released. Units
    /// lost (see `Balanced::lost`) end the beat at once. Unless `give`,
    /// it only takes (a beat woken by another node's handover).
    pub async fn balance(
        &self,
        engine: &Handle,
        drain: std::time::Duration,
        give: bool,
    ) -> anyhow::Result<Balanced> {
        let renewal = self.renew_units().await?;
        let mut renewals = Renewals::since(clock::instant());
        let mut beat = Balanced {
            lost: renewal.lost,
            ..Balanced::default()
        };
        if !beat.lost.is_empty() {
            return Ok(beat);
        }
        let moves = self.plan_units().await?;
        beat.more = moves.acquire.len() >= crate::core::units::ACQUIRE_PER_BEAT;
        // The units taken, by what their last owner's mark says.
        let mut taken: BTreeMap<Option<Timestamp>, Units> = BTreeMap::new();
        for unit in moves.acquire {
            match self.acquire_unit(unit).await {
                Ok(Some(acquired)) if acquired.fenced_me => {
                    beat.lost = beat.lost.with(Units::one(unit));
                    return Ok(beat);
                }
                Ok(Some(acquired)) => {
                    beat.adopted = beat.adopted.with(Units::one(unit));
                    let units = taken.entry(acquired.unsent_after).or_default();
                    *units = units.with(Units::one(unit));
                }
                Ok(None) => {}
                // Another node's takeover in progress, say: next beat.
                Err(e) => tracing::debug!(unit, error = %e, "could not take a unit"),
            }
        }
        for (unsent_after, units) in taken {
            let adopt = UnitsOrder::Adopt(units, Start::Takeover { unsent_after });
            let adopted = self.renewing(&mut renewals, engine.units(adopt)).await;
            if let Err(e) = adopted {
                // The engine stopped: let the units go for others to take.
                let _ = self.release_units(beat.adopted).await;
                anyhow::bail!("the engine did not adopt units: {e}");
            }
            if !renewals.lost.is_empty() {
                beat.lost = renewals.lost;
                return Ok(beat);
            }
        }
        if !give {
            return Ok(beat);
        }
        // Every unit with nothing out goes now, in one stop, drop and
        // release; then at most one busy unit, drained first.
        let idle = self.renewing(&mut renewals, engine.idle(moves.surplus));
        let idle = idle.await?;
        if !renewals.lost.is_empty() {
            beat.lost = renewals.lost;
            return Ok(beat);
        }
        let busy = moves.surplus.without(idle).iter().next().map(Units::one);
        for units in [Some(idle), busy].into_iter().flatten() {
            if !units.is_empty()
                && !self
                    .hand_over(engine, units, drain, &mut renewals, &mut beat)
                    .await?
            {
                break;
            }
        }
        Ok(beat)
    }

    /// Hands `units` over: stopped, drained (those with something out
    /// then are `drained`), dropped, released. `false` if a renewal found
    /// units lost meanwhile (in `beat.lost`; nothing is released).
    async fn hand_over(
        &self,
        engine: &Handle,
        units: Units,
        drain: std::time::Duration,
        renewals: &mut Renewals,
        beat: &mut Balanced,
    ) -> anyhow::Result<bool> {
        let order = async |renewals: &mut Renewals, order| {
            self.renewing(renewals, engine.units(order)).await
        };
        order(renewals, UnitsOrder::Stop(units)).await?;
        if order(renewals, UnitsOrder::Busy(units)).await? > 0 {
            for unit in units.iter() {
                let one = Units::one(unit);
                if order(renewals, UnitsOrder::Busy(one)).await? > 0 {
                    beat.drained = beat.drained.with(one);
                }
            }
        }
        self.drain(engine, units, drain, renewals).await?;
        order(renewals, UnitsOrder::Drop(units)).await?;
        if !renewals.lost.is_empty() {
            beat.lost = renewals.lost;
            return Ok(false);
        }
        self.release_units(units).await?;
        beat.handed_over = beat.handed_over.with(units);
        Ok(true)
    }

    /// Waits until nothing of `units` is out at `engine`, or `bound`
    /// passes, or a renewal (kept up meanwhile) finds units lost: the
    /// engine is fenced, stop waiting.
    async fn drain(
        &self,
        engine: &Handle,
        units: Units,
        bound: std::time::Duration,
        renewals: &mut Renewals,
    ) -> anyhow::Result<()> {
        let began = clock::instant();
        loop {
            let busy = engine.units(UnitsOrder::Busy(units));
            let busy = self.renewing(renewals, busy).await?;
            if busy == 0 || !renewals.lost.is_empty() || began.elapsed() >= bound {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Waits for `work` (an order to the engine: under load it waits for
    /// a turn, and an adopt reads every gate it takes up), renewing the
    /// units held whenever the last renewal is a beat old, first if it is
    /// already: a slow engine must not let this node's leases lapse behind
    /// it. The units a renewal finds lost go into `renewals.lost` (the
    /// engine is fenced; the caller stops once `work` is done).
    async fn renewing<T>(
        &self,
        renewals: &mut Renewals,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            let due = renewals.renewed + self.terms.renew_every;
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(due.into()) => {
                    renewals.renewed = clock::instant();
                    match self.renew_units().await {
                        Ok(renewal) => renewals.lost = renewals.lost.with(renewal.lost),
                        Err(e) => tracing::warn!(error = %e, "renewing the units failed"),
                    }
                }
                done = &mut work => return done,
            }
        }
    }

    /// A clean stop: marks this node as leaving (peers plan without it),
    /// stops every unit it holds, drains them (up to `drain`), drops them
    /// and hands them over at once.
    pub async fn leave_units(
        &self,
        engine: &Handle,
        drain: std::time::Duration,
    ) -> anyhow::Result<()> {
        if let Err(e) = self.mark_leaving().await {
            tracing::warn!(error = %e, "could not mark this node as leaving");
        }
        let (held, _) = self.units_held();
        if held.is_empty() {
            return Ok(());
        }
        engine.units(UnitsOrder::Stop(held)).await?;
        let mut renewals = Renewals::since(clock::instant());
        self.drain(engine, held, drain, &mut renewals).await?;
        engine.units(UnitsOrder::Drop(held)).await?;
        if !renewals.lost.is_empty() {
            tracing::warn!("units were taken over while this node drained them");
        }
        // Nothing is sent for them any more: what is still held goes.
        let (held, _) = self.units_held();
        self.release_units(held).await?;
        Ok(())
    }

    /// Marks this node as leaving (a clean stop): peers plan without it.
    pub async fn mark_leaving(&self) -> Result<(), StoreError> {
        let id = self.id.clone();
        self.with_client(async |client| {
            client
                .execute("UPDATE nodes SET leaving = true WHERE id = $1", &[&id])
                .await
        })
        .await?;
        Ok(())
    }
}

/// The joint renewal kept up while a beat waits on the engine: when it
/// last went out, and the units it found lost since.
struct Renewals {
    renewed: std::time::Instant,
    lost: Units,
}

impl Renewals {
    fn since(renewed: std::time::Instant) -> Renewals {
        Renewals {
            renewed,
            lost: Units::NONE,
        }
    }
}

/// What a takeover found.
struct Taken {
    epoch: u64,
    previous: Option<String>,
    /// The previous owner's slot mark, read once its fence was raised.
    slots_until: Option<i64>,
}

/// The takeover, inside a transaction: `Some` if the unit was free and is
/// now `id`'s, which may send at slot times up to `slots_until`.
async fn take(
    client: &tokio_postgres::Client,
    id: &str,
    unit: i32,
    lease_ms: f64,
    slots_until: i64,
) -> Result<Option<Taken>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            "SELECT owner, owner IS NULL OR expires_at < now() FROM units \
             WHERE unit = $1 FOR UPDATE",
            &[&unit],
        )
        .await?
    else {
        return Ok(None);
    };
    let (previous, free): (Option<String>, bool) = (row.get(0), row.get(1));
    if !free {
        return Ok(None);
    }
    let mut mark = None;
    if let Some(previous) = &previous {
        // Lapsed: fence its owner. Locking the row for update waits for
        // the owner's transaction in progress (it holds a key-share lock);
        // the update alone would not (it changes no key). Its slot mark
        // cannot move after this read: its renewal waits for the lock, and
        // by then its units are lost, so its deadline is revoked.
        mark = client
            .query_opt(
                "SELECT slots_until FROM nodes WHERE id = $1 FOR UPDATE",
                &[previous],
            )
            .await?
            .and_then(|row| row.get::<_, Option<i64>>(0));
        client
            .execute(
                "UPDATE nodes SET fence = fence + 1 WHERE id = $1",
                &[previous],
            )
            .await?;
    }
    client
        .execute(
            "UPDATE nodes SET slots_until = greatest(coalesce(slots_until, 0), $2) \
             WHERE id = $1",
            &[&id, &slots_until],
        )
        .await?;
    let epoch: i64 = client
        .query_one(
            "UPDATE units SET owner = $2, epoch = epoch + 1, \
             expires_at = now() + $3::float8 * interval '1 millisecond' \
             WHERE unit = $1 RETURNING epoch",
            &[&unit, &id, &lease_ms],
        )
        .await?
        .get(0);
    Ok(Some(Taken {
        epoch: u64::try_from(epoch).unwrap_or(0),
        previous,
        slots_until: mark,
    }))
}
