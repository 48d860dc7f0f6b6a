//! Several nodes on one PostgreSQL database (SPEC §9): who runs which gates.
//!
//! The gates are spread over the nodes by unit (`core::units`: 64 units, a
//! gate's unit from its name, each unit's owner by rendezvous over the live
//! nodes). Each unit is dispatched by one node at a time under a lease of
//! its own, the row `units(unit)`: an owner, an epoch that grows with every
//! takeover, an expiry on the **database's** clock. The protocol, and why
//! the gate invariant holds across a handover (`units.rs` has the SQL):
//!
//! - The owner renews all its units every `Terms::renew_every`, in one
//!   statement. It may act until `Terms::hold` after the moment it sent the
//!   renewal that brought every unit back, on its own clock
//!   (`clock::uptime`, which neither a pause nor a suspend of the machine
//!   stops). The database sets the expiry to its `now()` plus the lease,
//!   and its `now()` comes after that moment, so the owner's deadline (a
//!   margin short of the lease) falls before the expiry, whatever happens
//!   to the owner meanwhile: a `SIGSTOP`, a long pause, a lost network.
//! - A node takes a unit only when its expiry has passed by the database's
//!   clock, or when the owner handed it over (`release_units`, after it
//!   stopped, drained and dropped the unit's gates). It adopts the unit's
//!   gates with every bucket empty and the ramp, and holds the previous
//!   owner's unfinished attempts in flight until their timeouts.
//! - Every write transaction of a node's engine checks the node's fence
//!   and key-share-locks its row (`store::postgres::check_fence`); a
//!   takeover of a lapsed unit locks the last owner's row for update and
//!   raises its fence, so a stale owner's commit either lands before the
//!   takeover (which then reads it) or changes nothing.
//!
//! So the previous owner sends nothing after its deadline, which is before
//! the takeover, and the new owner starts from an empty bucket: in any
//! window, what each sent is bounded by its own gate, and the two spans do
//! not overlap. The rules themselves are `core::lease` and `core::units`,
//! where simulations check them.
//!
//! Every node answers the whole API (`api::forward`): creates commit on
//! the node that takes them (the owner hears of them by `NOTIFY`), changes
//! to a gate or a task go to the gate's owner, as this node's view of the
//! units (refreshed every beat) has it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use crate::clock;
use crate::core::units::{UNITS, Units, unit_of};
use crate::store::StoreError;

pub use crate::core::lease::Terms;

mod units;

pub use units::{Acquired, Balanced, Renewal};

/// When a renewal (or a takeover) was sent, on both of this node's clocks.
#[derive(Clone, Copy, Debug)]
struct Sent {
    uptime: clock::Uptime,
    wall: crate::core::Timestamp,
}

impl Sent {
    fn now() -> Sent {
        Sent {
            uptime: clock::uptime(),
            wall: clock::now(),
        }
    }

    /// The latest slot time this node may send at on the strength of this
    /// renewal, on its wall clock: written to the database with it.
    fn slots_until(self, terms: &Terms) -> i64 {
        i64::try_from(self.wall.plus(terms.hold()).as_ms()).unwrap_or(i64::MAX)
    }

    /// Moves `deadline` to what this renewal allows.
    fn extend(self, terms: &Terms, deadline: &clock::Deadline) {
        deadline.extend_to(self.uptime.plus(terms.hold()), self.wall.plus(terms.hold()));
    }
}

fn lease_ms(terms: &Terms) -> i64 {
    i64::try_from(crate::core::lease::lease_ms(terms)).unwrap_or(i64::MAX)
}

/// A node of the cluster as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: String,
    pub address: String,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_ms: u64,
    pub started_at: u64,
    /// The units it holds (their leases not expired).
    pub units: Units,
}

/// Who owns each unit, as last seen: a node's id and address.
#[derive(Clone, Debug, Default)]
struct View {
    owners: Vec<Option<(String, String)>>,
}

/// This node's membership: its heartbeat, its units, its view of the
/// others'.
pub struct Cluster {
    id: String,
    address: String,
    terms: Terms,
    target: crate::store::PgTarget,
    schema: String,
    /// The leases' connection (the units' renewals and takeovers).
    client: tokio::sync::Mutex<Option<Client>>,
    /// The heartbeat's and the view's, so a slow takeover never delays a
    /// heartbeat.
    beats: tokio::sync::Mutex<Option<Client>>,
    /// The API's (`nodes`), so a busy dashboard never delays a renewal.
    views: tokio::sync::Mutex<Option<Client>>,
    seen: Mutex<View>,
    /// The units held.
    spread: Mutex<units::Spread>,
    /// The cluster's key (`meta`), which the nodes' requests to each other
    /// carry.
    key: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The channel on which a node tells the others it handed units over; the
/// payload is its schema.
const HANDOVERS: &str = "sluice_units";

/// Nodes silent this long leave the list.
const FORGET_AFTER_S: i64 = 600;

/// How long a node keeps trying its first contact with the cluster's
/// tables before it gives up starting.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(crate::store::pg_describe(&e))
}

impl Cluster {
    /// Joins the cluster on the database `config` (schema `schema`) as a
    /// node answering at `address`. The node owns nothing yet.
    pub async fn join(
        target: crate::store::PgTarget,
        schema: String,
        address: String,
        terms: Terms,
    ) -> Result<Arc<Cluster>, StoreError> {
        let cluster = Arc::new(Cluster {
            id: new_id(),
            address,
            terms,
            target,
            schema,
            client: tokio::sync::Mutex::new(None),
            beats: tokio::sync::Mutex::new(None),
            views: tokio::sync::Mutex::new(None),
            seen: Mutex::default(),
            spread: Mutex::default(),
            key: std::sync::OnceLock::new(),
        });
        // Each statement has a lease's renewal time to answer, which a busy
        // machine or database can exceed once: the store has just connected,
        // so joining keeps trying for a while rather than stopping the node.
        let patience = clock::instant() + JOIN_PATIENCE;
        let words = loop {
            match cluster.first_contact().await {
                Ok(words) => break words,
                Err(e) if clock::instant() < patience => {
                    tracing::warn!(error = %e, "joining the cluster: trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        };
        if words.len() != 4 {
            return Err(StoreError::Postgres(
                "the database has no cluster key".into(),
            ));
        }
        let key: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let _ = cluster.key.set(crate::hex::encode(&key));
        tracing::info!(node = %cluster.id, address = %cluster.address, "joined the cluster");
        Ok(cluster)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn terms(&self) -> Terms {
        self.terms
    }

    /// The cluster's key, sent with the nodes' requests to each other.
    pub fn key(&self) -> &str {
        self.key.get().map_or("", String::as_str)
    }

    /// Whether `offered` is the cluster's key (in time independent of
    /// where they differ).
    pub fn knows(&self, offered: &[u8]) -> bool {
        let key = self.key().as_bytes();
        !key.is_empty()
            && key.len() == offered.len()
            && key.iter().zip(offered).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }

    /// The node that owns the gate named `gate`, as last seen: its id and
    /// address (none while its unit is vacant or lapsed).
    pub fn owner_of(&self, gate: &str) -> Option<(String, String)> {
        let seen = self.seen.lock().ok()?;
        let unit = unit_of(gate, UNITS) as usize;
        seen.owners.get(unit).cloned().flatten()
    }

    /// The node that owns the gate named `gate` as the database has it
    /// now (none while its unit is vacant or lapsed), which also goes into
    /// the view: for a request the view would send nowhere, or to a node
    /// that no longer runs the gate, in the second after a handover.
    ///
    /// The requests asking share one connection: each waits for those
    /// before it, and gives up after twice the time one may take, so a
    /// node cut off from the database answers each at once rather than one
    /// a second.
    pub async fn owner_now(&self, gate: &str) -> Result<Option<(String, String)>, StoreError> {
        let unit = unit_of(gate, UNITS);
        let asked = self.on(&self.views, async |client| {
            client
                .query_opt(
                    "SELECT u.owner, n.address FROM units u \
                     JOIN nodes n ON n.id = u.owner \
                     WHERE u.unit = $1 AND u.expires_at > now()",
                    &[&i32::try_from(unit).unwrap_or(i32::MAX)],
                )
                .await
        });
        let row = tokio::time::timeout(self.answer_within() * 2, asked)
            .await
            .map_err(|_| StoreError::Postgres("PostgreSQL did not answer in time".into()))??;
        let owner = row.map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)));
        if let Ok(mut seen) = self.seen.lock()
            && let Some(slot) = seen.owners.get_mut(unit as usize)
        {
            slot.clone_from(&owner);
        }
        Ok(owner)
    }

    /// Whether this node holds the gate's unit now.
    pub fn runs(&self, gate: &str) -> bool {
        let (held, deadline) = self.units_held();
        held.has_gate(gate) && deadline.valid()
    }

    /// The addresses of the nodes that hold units, as last seen, this one
    /// among them if it does.
    pub fn owners(&self) -> Vec<(String, String)> {
        let Ok(seen) = self.seen.lock() else {
            return Vec::new();
        };
        let mut owners: Vec<(String, String)> = seen.owners.iter().flatten().cloned().collect();
        owners.sort();
        owners.dedup();
        owners
    }

    /// The node's first beat, and the cluster's key words.
    async fn first_contact(&self) -> Result<Vec<i64>, StoreError> {
        self.beat().await?;
        self.on(&self.beats, async |client| {
            let rows = client
                .query(
                    "SELECT value FROM meta WHERE key LIKE 'cluster\\_key\\_%' ORDER BY key",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
        .await
    }

    /// Runs `query` on this node's connection (a new one if there is none
    /// or the last failed), within `renew_every`: a database that does not
    /// answer counts as an error, never as a wait.
    async fn with_client<T>(
        &self,
        query: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        self.on(&self.client, query).await
    }

    /// How long a statement (or a connection) may take to answer.
    fn answer_within(&self) -> Duration {
        self.terms.renew_every.max(Duration::from_millis(200))
    }

    async fn on<T>(
        &self,
        connection: &tokio::sync::Mutex<Option<Client>>,
        query: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = connection.lock().await;
        let limit = self.answer_within();
        if slot.as_ref().is_none_or(Client::is_closed) {
            let connecting = tokio::time::timeout(limit, connect(&self.target, &self.schema));
            match connecting.await {
                Ok(Ok(client)) => *slot = Some(client),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(StoreError::Postgres("connecting timed out".into())),
            }
        }
        // Out of its slot while the query runs, and back only once it
        // has answered: a caller that gives up halfway (a beat dropped)
        // drops the connection with it, and with it whatever transaction
        // the query had begun, which the next query would otherwise run
        // inside.
        let Some(client) = slot.take() else {
            return Err(StoreError::Postgres("no connection".into()));
        };
        match tokio::time::timeout(limit, query(&client)).await {
            Ok(Ok(value)) => {
                *slot = Some(client);
                Ok(value)
            }
            Ok(Err(e)) => Err(pg(e)),
            // The connection may be stuck (a network cut): start over.
            Err(_) => Err(StoreError::Postgres(
                "PostgreSQL did not answer in time".into(),
            )),
        }
    }

    /// Counts in `heard` every handover of this schema's units by any node
    /// (`release_units`), so the balance takes them at once rather than at
    /// its next beat; the first count means it listens (handovers before
    /// were missed: look now). Runs until dropped, on a connection of its
    /// own, made anew a beat after it is lost.
    pub async fn hear_handovers(self: Arc<Self>, heard: tokio::sync::watch::Sender<u64>) {
        loop {
            if let Err(e) = self.listen_for_handovers(&heard).await {
                tracing::debug!(error = %e, "listening for handovers");
            }
            tokio::time::sleep(self.terms.renew_every).await;
        }
    }

    async fn listen_for_handovers(
        &self,
        heard: &tokio::sync::watch::Sender<u64>,
    ) -> Result<(), StoreError> {
        let (to, mut notices) = tokio::sync::mpsc::unbounded_channel();
        let listening = tokio::time::timeout(self.answer_within(), async {
            let client = self.target.connect_listening(to).await?;
            client.batch_execute(&format!("LISTEN {HANDOVERS}")).await?;
            Ok(client)
        });
        let _client = match listening.await {
            Ok(client) => client.map_err(pg)?,
            Err(_) => return Err(StoreError::Postgres("listening timed out".into())),
        };
        heard.send_modify(|n| *n += 1);
        while let Some(notice) = notices.recv().await {
            // Other schemas' nodes (several clusters may share a database).
            if notice.payload() == self.schema {
                heard.send_modify(|n| *n += 1);
            }
        }
        Err(StoreError::Postgres(
            "the listening connection ended".into(),
        ))
    }

    /// One heartbeat: this node's row, and who owns each unit as the
    /// database sees it.
    pub async fn beat(&self) -> Result<(), StoreError> {
        let (id, address) = (self.id.clone(), self.address.clone());
        let owners = self
            .on(&self.beats, async |client| {
                client
                    .execute(
                        "INSERT INTO nodes (id, address) VALUES ($1, $2) ON CONFLICT (id) \
                         DO UPDATE SET heartbeat = now(), address = excluded.address",
                        &[&id, &address],
                    )
                    .await?;
                client
                    .execute(
                        "DELETE FROM nodes WHERE heartbeat < now() - $1::float8 * interval '1 second'",
                        &[&(FORGET_AFTER_S as f64)],
                    )
                    .await?;
                let rows = client
                    .query(
                        "SELECT u.unit, u.owner, n.address FROM units u \
                         JOIN nodes n ON n.id = u.owner WHERE u.expires_at > now()",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|row| {
                        let unit: i32 = row.get(0);
                        (unit, row.get::<_, String>(1), row.get::<_, String>(2))
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut view = View {
            owners: vec![None; UNITS as usize],
        };
        for (unit, owner, address) in owners {
            if let Some(slot) = usize::try_from(unit)
                .ok()
                .and_then(|u| view.owners.get_mut(u))
            {
                *slot = Some((owner, address));
            }
        }
        if let Ok(mut seen) = self.seen.lock() {
            *seen = view;
        }
        Ok(())
    }

    /// Leaves the list of nodes (a clean stop).
    pub async fn leave(&self) -> Result<(), StoreError> {
        let id = self.id.clone();
        self.on(&self.beats, async |client| {
            client
                .execute("DELETE FROM nodes WHERE id = $1", &[&id])
                .await
        })
        .await?;
        Ok(())
    }

    /// The nodes, freshest first, each with the units it holds.
    pub async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.on(&self.views, async |client| {
            let rows = client
                .query(
                    "SELECT n.id, n.address, \
                     (extract(epoch FROM now() - n.heartbeat) * 1000)::bigint, \
                     (extract(epoch FROM n.started_at) * 1000)::bigint, \
                     coalesce(array_agg(u.unit) FILTER (WHERE u.unit IS NOT NULL), '{}') \
                     FROM nodes n LEFT JOIN units u ON u.owner = n.id AND u.expires_at > now() \
                     GROUP BY n.id ORDER BY n.heartbeat DESC, n.id",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| Node {
                    id: row.get(0),
                    address: row.get(1),
                    heartbeat_age_ms: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                    started_at: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
                    units: (row.get::<_, Vec<i32>>(4).into_iter())
                        .filter_map(|u| u32::try_from(u).ok())
                        .collect(),
                })
                .collect())
        })
        .await
    }
}

/// A node id: `n-` and 12 random hex digits, new for every process.
fn new_id() -> String {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        let ms = clock::now().as_ms();
        bytes.copy_from_slice(&ms.to_be_bytes()[2..]);
        bytes[0] ^= std::process::id() as u8;
    }
    format!("n-{}", crate::hex::encode(&bytes))
}

async fn connect(target: &crate::store::PgTarget, schema: &str) -> Result<Client, StoreError> {
    let client = target
        .connect(|e| tracing::debug!("cluster connection ended: {e}"))
        .await
        .map_err(pg)?;
    client
        .batch_execute(&format!(
            "SET search_path TO {schema}; SET lock_timeout = '500ms'; \
             SET statement_timeout = '800ms'"
        ))
        .await
        .map_err(pg)?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_differ() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(a.starts_with("n-") && a.len() == 14, "{a}");
    }
}
