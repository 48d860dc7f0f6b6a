//! Notices of foreign creates between nodes (`Writes::notify`): `NOTIFY`
//! on one channel per unit, delivered at commit, so an engine never hears
//! of a row it cannot read yet; a `Listener` per node on the units it runs.
//!
//! A payload is the schema on its first line (several stores may share a
//! database), then a line per task: `gate,due,task,key` with the key in
//! hex (empty for none). Payloads stay under PostgreSQL's 8,000 bytes by
//! splitting a unit's lines over several notifications.

use std::collections::BTreeMap;
use std::task::{Context, Poll};

use super::*;
use crate::core::units::{UNITS, Units};

/// Most bytes of one notification's lines (PostgreSQL takes under 8,000,
/// and the schema's name goes in front).
const PAYLOAD: usize = 7_000;

/// The channel of a unit.
pub(super) fn channel(unit: u32) -> String {
    format!("sluice_unit_{unit}")
}

/// The payloads that tell `notices`, each a unit's channel and its lines;
/// the statement puts the schema in front (`current_schema()`, at most 63
/// bytes, which `PAYLOAD` leaves room for).
pub(super) fn payloads(notices: &[Notice]) -> Vec<(String, String)> {
    let mut by_unit: BTreeMap<u32, Vec<&Notice>> = BTreeMap::new();
    for notice in notices {
        by_unit.entry(notice.unit).or_default().push(notice);
    }
    let mut out = Vec::new();
    for (unit, notices) in by_unit {
        let mut text = String::new();
        for notice in notices {
            let key = notice.key.as_deref().map_or(String::new(), |k| {
                k.bytes().map(|b| format!("{b:02x}")).collect()
            });
            let line = format!(
                "\n{},{},{},{key}",
                notice.gate.0,
                notice.order.0.as_ms(),
                notice.order.1.0
            );
            if text.len() + line.len() > PAYLOAD {
                out.push((channel(unit), std::mem::take(&mut text)));
            }
            text.push_str(&line);
        }
        out.push((channel(unit), text));
    }
    out
}

/// The notices of a payload, if it is `schema`'s; `unit` from its channel.
fn parse(schema: &str, unit: u32, payload: &str) -> Option<Vec<Notice>> {
    let mut lines = payload.split('\n');
    if lines.next()? != schema {
        return None;
    }
    let mut out = Vec::new();
    for line in lines {
        let mut fields = line.splitn(4, ',');
        let gate = fields.next()?.parse().ok()?;
        let due = fields.next()?.parse().ok()?;
        let task = fields.next()?.parse().ok()?;
        let key = match fields.next()? {
            "" => None,
            hex => Some(String::from_utf8(unhex(hex)?).ok()?),
        };
        out.push(Notice {
            unit,
            gate: GateId(gate),
            key,
            order: (Timestamp(due), TaskId(task)),
        });
    }
    Some(out)
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// A node's ear for notices: one connection that `LISTEN`s on the units it
/// runs. When it reports `None` the connection is gone and notices may have
/// been lost: the caller reloads its gates and listens anew.
pub struct Listener {
    client: Client,
    heard: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    schema: String,
}

impl PgStore {
    /// A new listening connection.
    pub fn listener(&self) -> Result<Listener> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::Postgres("the PostgreSQL runtime has stopped".into()))?;
        let (to, heard) = tokio::sync::mpsc::unbounded_channel();
        let target = self.target.clone();
        let connecting = runtime.spawn(async move { target.connect_listening(to).await });
        let client = match futures_executor::block_on(connecting) {
            Ok(result) => result.map_err(pg)?,
            Err(e) => return Err(StoreError::Postgres(format!("connecting: {e}"))),
        };
        Ok(Listener {
            client,
            heard,
            schema: self.schema.clone(),
        })
    }
}

impl Listener {
    /// Listens on `units`' channels (from when this returns).
    pub fn listen(&self, units: Units) -> Result<()> {
        self.each(units, "LISTEN")
    }

    pub fn unlisten(&self, units: Units) -> Result<()> {
        self.each(units, "UNLISTEN")
    }

    fn each(&self, units: Units, verb: &str) -> Result<()> {
        let sql: String = units
            .iter()
            .filter(|u| *u < UNITS)
            .map(|u| format!("{verb} {};", channel(u)))
            .collect();
        if sql.is_empty() {
            return Ok(());
        }
        wait(self.client.batch_execute(&sql))
    }

    /// The next notices of this schema, `None` once the connection is gone.
    pub async fn recv(&mut self) -> Option<Vec<Notice>> {
        std::future::poll_fn(|cx| self.poll_notices(cx)).await
    }
}

impl Heard for Listener {
    fn poll_notices(&mut self, cx: &mut Context<'_>) -> Poll<Option<Vec<Notice>>> {
        loop {
            let Some(n) = std::task::ready!(self.heard.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            let unit = n
                .channel()
                .strip_prefix("sluice_unit_")
                .and_then(|u| u.parse().ok());
            match unit.and_then(|unit| parse(&self.schema, unit, n.payload())) {
                Some(notices) => return Poll::Ready(Some(notices)),
                // This schema's, yet not read: the notices it held are
                // lost, and the gates must be read again.
                None if n.payload().split('\n').next() == Some(self.schema.as_str()) => {
                    tracing::warn!(channel = n.channel(), "a notice that does not parse");
                    return Poll::Ready(None);
                }
                // Another schema's (several stores may share a database).
                None => {}
            }
        }
    }

    fn listen_also(&self, units: Units) -> Result<()> {
        self.listen(units)
    }

    fn listen_no_more(&self, units: Units) -> Result<()> {
        self.unlisten(units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_through_payloads_split_under_the_limit() {
        let notices: Vec<Notice> = (0..500u64)
            .map(|i| Notice {
                unit: (i % 2) as u32,
                gate: GateId(3),
                key: (i % 3 != 0).then(|| format!("tenant,{i}\nnext")),
                order: (Timestamp(1_767_225_600_000 + i), TaskId(i << 16)),
            })
            .collect();
        let payloads: Vec<(String, String)> = payloads(&notices)
            .into_iter()
            .map(|(channel, lines)| (channel, format!("sluice{lines}")))
            .collect();
        assert!(payloads.len() > 2, "{} payloads", payloads.len());
        assert!(payloads.iter().all(|(_, p)| p.len() <= PAYLOAD + 6));
        let mut back = Vec::new();
        for (channel, payload) in &payloads {
            let unit = channel
                .strip_prefix("sluice_unit_")
                .and_then(|u| u.parse().ok());
            back.extend(parse("sluice", unit.expect("unit"), payload).expect("parsed"));
            assert!(parse("other", 0, payload).is_none(), "another schema's");
        }
        back.sort_by_key(|n| n.order.1);
        assert_eq!(back, notices);
    }
}
