//! Several nodes on one PostgreSQL database (SPEC §9): who owns the gates.
//!
//! The gates are dispatched by one node at a time, the owner, under a lease:
//! the row `ownership('gates')` names the owner, an epoch that grows with
//! every takeover, and an expiry on the **database's** clock. The protocol,
//! and why the gate invariant holds across a handover:
//!
//! - The owner renews every `Terms::renew_every`. It may act until
//!   `Terms::hold` after the moment it sent the renewal that succeeded, on
//!   its own clock (`clock::uptime`, which neither a pause nor a suspend of
//!   the machine stops). The database sets the expiry
//!   to its `now()` plus the lease, and its `now()` comes after that moment,
//!   so the owner's deadline (a margin short of the lease) falls before the
//!   expiry, whatever happens to the owner meanwhile: a `SIGSTOP`, a long
//!   pause, a lost network.
//! - A node takes the gates only when the expiry has passed by the
//!   database's clock (one `UPDATE … WHERE expires_at < now()`), or when the
//!   owner handed them over (`release`, on a clean stop). It starts its
//!   engine afterwards, with every bucket empty and the ramp, and holds the
//!   previous owner's unfinished attempts in flight until their timeouts.
//! - Every write transaction of the owner's store checks the epoch and
//!   key-share-locks the row (`store::postgres::check_fence`); a takeover
//!   locks it for update first, so a stale owner's commit either lands
//!   before the takeover (which then reads it) or changes nothing. A
//!   renewal only updates the expiry, which waits for no write.
//!
//! So the previous owner sends nothing after its deadline, which is before
//! the takeover, and the new owner starts from an empty bucket: in any
//! window, what each sent is bounded by its own gate, and the two spans do
//! not overlap.
//!
//! The rules themselves (what the SQL below does to the row, and the
//! owner's hold) are `core::lease`, where a simulation checks them.
//!
//! Every node answers the whole API: a node that does not own the gates
//! commits creates itself (its standby engine, `server::supervise`) and
//! forwards other requests to the owner (`api::forward`); either answers
//! only after its commit, so an acknowledged create is in PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use crate::clock::{self, Deadline};
use crate::store::StoreError;

pub use crate::core::lease::Terms;

mod units;

pub use units::{Acquired, Balanced, Renewal};

fn deadline(terms: &Terms, sent: clock::Uptime) -> clock::Uptime {
    sent.plus(terms.hold())
}

fn lease_ms(terms: &Terms) -> i64 {
    i64::try_from(crate::core::lease::lease_ms(terms)).unwrap_or(i64::MAX)
}

/// The gates held by this node: the epoch its writes carry and its deadline.
#[derive(Clone, Debug)]
pub struct Lease {
    pub epoch: u64,
    pub deadline: Arc<Deadline>,
}

/// A node of the cluster as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: String,
    pub address: String,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_ms: u64,
    pub started_at: u64,
    pub owner: bool,
}

/// Who owns the gates, as last seen.
#[derive(Clone, Debug, Default)]
struct Seen {
    owner: Option<String>,
    address: Option<String>,
    epoch: u64,
    /// This node holds the lease and its deadline has not passed.
    held: Option<Lease>,
}

/// This node's membership: its heartbeat, the lease, the view of the owner.
pub struct Cluster {
    id: String,
    address: String,
    terms: Terms,
    target: crate::store::PgTarget,
    schema: String,
    /// The heartbeat's and the lease's connection.
    client: tokio::sync::Mutex<Option<Client>>,
    /// The API's (`nodes`), so a busy dashboard never delays a renewal.
    views: tokio::sync::Mutex<Option<Client>>,
    seen: Mutex<Seen>,
    /// The units held (schema 6, `units`).
    spread: Mutex<units::Spread>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Nodes silent this long leave the list.
const FORGET_AFTER_S: i64 = 600;

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
            views: tokio::sync::Mutex::new(None),
            seen: Mutex::default(),
            spread: Mutex::default(),
        });
        cluster.beat().await?;
        tracing::info!(node = %cluster.id, address = %cluster.address, "joined the cluster");
        Ok(cluster)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn terms(&self) -> Terms {
        self.terms
    }

    /// Whether this node holds the gates now (by its own clock).
    pub fn owns(&self) -> bool {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.held.as_ref().map(|l| l.deadline.valid()))
            .unwrap_or(false)
    }

    /// The owner's id and address, as last seen (none while the lease is
    /// vacant).
    pub fn owner(&self) -> Option<(String, String)> {
        let seen = self.seen.lock().ok()?;
        Some((seen.owner.clone()?, seen.address.clone()?))
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

    async fn on<T>(
        &self,
        connection: &tokio::sync::Mutex<Option<Client>>,
        query: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = connection.lock().await;
        let limit = self.terms.renew_every.max(Duration::from_millis(200));
        if slot.as_ref().is_none_or(Client::is_closed) {
            let connecting = tokio::time::timeout(limit, connect(&self.target, &self.schema));
            match connecting.await {
                Ok(Ok(client)) => *slot = Some(client),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(StoreError::Postgres("connecting timed out".into())),
            }
        }
        let Some(client) = slot.as_ref() else {
            return Err(StoreError::Postgres("no connection".into()));
        };
        match tokio::time::timeout(limit, query(client)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                *slot = None;
                Err(pg(e))
            }
            Err(_) => {
                // The connection may be stuck (a network cut): start over.
                *slot = None;
                Err(StoreError::Postgres(
                    "PostgreSQL did not answer in time".into(),
                ))
            }
        }
    }

    /// One heartbeat: this node's row, the lease renewed if held, the
    /// owner as the database sees it.
    pub async fn beat(&self) -> Result<(), StoreError> {
        let held = self.seen.lock().ok().and_then(|s| s.held.clone());
        let sent = clock::uptime();
        let (id, address, lease_ms) =
            (self.id.clone(), self.address.clone(), lease_ms(&self.terms));
        let (renewed, owner) = self
            .with_client(async |client| {
                client
                    .execute(
                        "INSERT INTO nodes (id, address) VALUES ($1, $2) ON CONFLICT (id) \
                         DO UPDATE SET heartbeat = now(), address = excluded.address",
                        &[&id, &address],
                    )
                    .await?;
                let renewed = match &held {
                    Some(lease) => {
                        let epoch = i64::try_from(lease.epoch).unwrap_or(i64::MAX);
                        client
                            .execute(
                                "UPDATE ownership SET expires_at = now() + $3::float8 * interval '1 millisecond' \
                                 WHERE scope = 'gates' AND owner = $1 AND epoch = $2",
                                &[&id, &epoch, &(lease_ms as f64)],
                            )
                            .await?
                            == 1
                    }
                    None => false,
                };
                client
                    .execute(
                        "DELETE FROM nodes WHERE heartbeat < now() - $1::float8 * interval '1 second'",
                        &[&(FORGET_AFTER_S as f64)],
                    )
                    .await?;
                let row = client
                    .query_one(
                        "SELECT o.owner, n.address, o.epoch FROM ownership o \
                         LEFT JOIN nodes n ON n.id = o.owner WHERE o.scope = 'gates'",
                        &[],
                    )
                    .await?;
                let owner: (Option<String>, Option<String>, i64) =
                    (row.get(0), row.get(1), row.get(2));
                Ok((renewed, owner))
            })
            .await?;
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| StoreError::Postgres("cluster state poisoned".into()))?;
        let current =
            |seen: &Seen, lease: &Lease| seen.held.as_ref().is_some_and(|l| l.epoch == lease.epoch);
        if let Some(lease) = &held {
            if renewed && current(&seen, lease) {
                lease.deadline.extend_to(deadline(&self.terms, sent));
            } else if !renewed && current(&seen, lease) {
                // Taken over (it can only have lapsed): stop now.
                tracing::warn!(epoch = lease.epoch, "the gates were taken over");
                lease.deadline.revoke();
                seen.held = None;
            }
        }
        seen.owner = owner.0;
        seen.address = owner.1;
        seen.epoch = u64::try_from(owner.2).unwrap_or(0);
        Ok(())
    }

    /// Takes the gates if their lease has lapsed by the database's clock
    /// (or was handed over), or is this node's own from an engine that has
    /// stopped (PostgreSQL restarted under it, say): the new epoch fences
    /// whatever that engine left. `None` while another node holds them.
    pub async fn try_acquire(&self) -> Result<Option<Lease>, StoreError> {
        let sent = clock::uptime();
        let (id, lease_ms) = (self.id.clone(), lease_ms(&self.terms));
        let epoch = self
            .with_client(async |client| {
                let row = client
                    .query_opt(
                        // Locked for update first: that waits for a write
                        // transaction of the old owner still in progress
                        // (it holds a key-share lock, `check_fence`).
                        "WITH held AS (SELECT scope FROM ownership WHERE scope = 'gates' FOR UPDATE) \
                         UPDATE ownership o SET owner = $1, epoch = o.epoch + 1, \
                         expires_at = now() + $2::float8 * interval '1 millisecond' \
                         FROM held WHERE o.scope = held.scope \
                         AND (o.expires_at < now() OR o.owner = $1) RETURNING o.epoch",
                        &[&id, &(lease_ms as f64)],
                    )
                    .await?;
                Ok(row.map(|r| r.get::<_, i64>(0)))
            })
            .await?;
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        let lease = Lease {
            epoch: u64::try_from(epoch).unwrap_or(0),
            deadline: Arc::new(Deadline::default()),
        };
        lease.deadline.extend_to(deadline(&self.terms, sent));
        if let Ok(mut seen) = self.seen.lock() {
            seen.owner = Some(self.id.clone());
            seen.address = Some(self.address.clone());
            seen.epoch = lease.epoch;
            seen.held = Some(lease.clone());
        }
        tracing::info!(node = %self.id, epoch = lease.epoch, "took over the gates");
        Ok(Some(lease))
    }

    /// Hands the gates over at once (a clean stop): the next node need not
    /// wait for the lease to lapse. Call only when nothing more is sent.
    pub async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        lease.deadline.revoke();
        if let Ok(mut seen) = self.seen.lock() {
            seen.held = None;
        }
        let id = self.id.clone();
        let epoch = i64::try_from(lease.epoch).unwrap_or(i64::MAX);
        self.with_client(async |client| {
            client
                .execute(
                    "UPDATE ownership SET owner = NULL, expires_at = '-infinity' \
                     WHERE scope = 'gates' AND owner = $1 AND epoch = $2",
                    &[&id, &epoch],
                )
                .await
        })
        .await?;
        tracing::info!(epoch = lease.epoch, "handed the gates over");
        Ok(())
    }

    /// Forgets the lease this node held without handing it over (its engine
    /// stopped on an error; the lease lapses by itself).
    pub fn drop_lease(&self) {
        if let Ok(mut seen) = self.seen.lock()
            && let Some(lease) = seen.held.take()
        {
            lease.deadline.revoke();
        }
    }

    /// Leaves the list of nodes (a clean stop).
    pub async fn leave(&self) -> Result<(), StoreError> {
        let id = self.id.clone();
        self.with_client(async |client| {
            client
                .execute("DELETE FROM nodes WHERE id = $1", &[&id])
                .await
        })
        .await?;
        Ok(())
    }

    /// The nodes, freshest first, with the owner marked.
    pub async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.on(&self.views, async |client| {
            let rows = client
                .query(
                    "SELECT n.id, n.address, \
                     (extract(epoch FROM now() - n.heartbeat) * 1000)::bigint, \
                     (extract(epoch FROM n.started_at) * 1000)::bigint, \
                     (o.owner IS NOT NULL AND o.expires_at > now()) \
                     FROM nodes n LEFT JOIN ownership o ON o.scope = 'gates' AND o.owner = n.id \
                     ORDER BY n.heartbeat DESC, n.id",
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
                    owner: row.get(4),
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
