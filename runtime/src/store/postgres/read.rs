//! Reads: `PgReader`, a snapshot on a pooled connection.

use super::*;

/// A snapshot: one read-only `REPEATABLE READ` transaction on a pooled
/// connection, given back when dropped.
pub(super) struct PgReader {
    pub(super) client: Option<Conn>,
    pub(super) pool: Arc<Mutex<Vec<Conn>>>,
}

impl PgReader {
    fn client(&self) -> Result<&Conn> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Postgres("the snapshot has ended".into()))
    }
}

impl Drop for PgReader {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if wait(client.client.batch_execute("ROLLBACK")).is_ok()
            && let Ok(mut pool) = self.pool.lock()
            && pool.len() < POOL
        {
            pool.push(client);
        }
    }
}

impl Reads for PgReader {
    fn plugins(&self) -> Result<Vec<PluginRecord>> {
        records(
            "plugins",
            rows(self.client()?, "SELECT record FROM plugins", &[])?,
        )
    }

    fn plugin(&self, key: &str) -> Result<Option<PluginRecord>> {
        record(
            "plugins",
            one(
                self.client()?,
                "SELECT record FROM plugins WHERE key = $1",
                &[&key],
            )?,
        )
    }

    fn plugin_wasm(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let row = one(
            self.client()?,
            "SELECT wasm FROM plugin_wasm WHERE key = $1",
            &[&key],
        )?;
        Ok(row.map(|row| row.get(0)))
    }

    fn compiled(&self, key: &str, engine: u64) -> Result<Option<Vec<u8>>> {
        let row = one(
            self.client()?,
            "SELECT artifact FROM plugin_compiled WHERE key = $1 AND engine = $2",
            &[&key, &(engine as i64)],
        )?;
        Ok(row.map(|row| row.get(0)))
    }

    fn gates(&self) -> Result<Vec<GateRecord>> {
        records(
            "gates",
            rows(
                self.client()?,
                "SELECT record FROM gates ORDER BY name",
                &[],
            )?,
        )
    }

    fn gate(&self, name: &str) -> Result<Option<GateRecord>> {
        record(
            "gates",
            one(
                self.client()?,
                "SELECT record FROM gates WHERE name = $1",
                &[&name],
            )?,
        )
    }

    fn task(&self, id: u64) -> Result<Option<TaskRecord>> {
        let (found, mut kept) = rows_and_starts(
            self.client()?,
            "SELECT record, coalesce(v, 0) FROM tasks WHERE id = $1",
            &[&big(id)],
            &[big(id)],
        )?;
        (found.first())
            .map(|row| kept.task(id, row.get(1), row.get(0)))
            .transpose()
    }

    fn attempts(&self, task_id: u64) -> Result<Vec<AttemptRecord>> {
        // Element n of the row's array is attempt n (schema 8), and a start
        // that counts (schema 9) holds its own.
        let (found, mut kept) = rows_and_starts(
            self.client()?,
            "SELECT coalesce(t.v, 0), i, t.attempts[i] FROM tasks t \
             LEFT JOIN LATERAL generate_subscripts(t.attempts, 1) i ON true \
             WHERE t.id = $1 ORDER BY i",
            &[&big(task_id)],
            &[big(task_id)],
        )?;
        let Some(first) = found.first() else {
            return Ok(Vec::new());
        };
        let mut by_number: BTreeMap<u32, Vec<u8>> = found
            .iter()
            .filter_map(|row| {
                let n = row.get::<_, Option<i32>>(1)?;
                Some((unint(n), row.get::<_, Option<Vec<u8>>>(2)?))
            })
            .collect();
        if let Some(start) = kept.take(task_id, first.get(0)) {
            by_number.insert(start.n, start.attempt);
        }
        by_number
            .values()
            .map(|bytes| decode_attempt(bytes))
            .collect()
    }

    fn counts(&self, gate_id: u32) -> Result<Counts> {
        let row = one(
            self.client()?,
            "SELECT record FROM counts WHERE gate_id = $1",
            &[&int(gate_id)],
        )?;
        Ok(row.map_or_else(Counts::default, |row| {
            Counts::decode(row.get::<_, &[u8]>(0))
        }))
    }

    fn gate_keys(
        &self,
        gate_id: u32,
        after: Option<&str>,
        limit: usize,
        count_cap: u64,
    ) -> Result<Vec<KeyBacklog>> {
        let found = rows(
            self.client()?,
            concat!(
                "SELECT pkey, count(*), min(due) FROM tasks \
                 WHERE gate_id = $1 AND due IS NOT NULL AND pkey > $2",
                unstarted!("$1"),
                " GROUP BY pkey ORDER BY pkey LIMIT $3"
            ),
            &[&int(gate_id), &after.unwrap_or(""), &big(limit as u64)],
        )?;
        Ok(found
            .iter()
            .map(|row| KeyBacklog {
                key: row.get(0),
                pending: unbig(row.get(1)).min(count_cap),
                oldest_due_ms: unbig(row.get(2)),
            })
            .collect())
    }

    fn oldest_pending(&self, gate_id: u32) -> Result<Option<u64>> {
        let row = one(
            self.client()?,
            concat!(
                "SELECT least((SELECT min(due) FROM tasks \
                 WHERE gate_id = $1 AND due IS NOT NULL AND pkey IS NULL",
                unstarted!("$1"),
                "), (SELECT min(due) FROM tasks \
                 WHERE gate_id = $1 AND due IS NOT NULL AND pkey IS NOT NULL",
                unstarted!("$1"),
                "))"
            ),
            &[&int(gate_id)],
        )?;
        Ok(row.and_then(|row| row.get::<_, Option<i64>>(0)).map(unbig))
    }

    fn forecast(&self, gate_id: u32, from: u64, n: usize) -> Result<Vec<u64>> {
        let first = from / MINUTE_MS;
        let found = rows(
            self.client()?,
            "SELECT minute, n FROM due_minutes \
             WHERE gate_id = $1 AND minute >= $2 AND minute < $3",
            &[&int(gate_id), &big(first), &big(first + n as u64)],
        )?;
        let mut out = vec![0; n];
        for row in found {
            let index = unbig(row.get(0)).saturating_sub(first) as usize;
            if let Some(slot) = out.get_mut(index) {
                *slot = unbig(row.get(1));
            }
        }
        Ok(out)
    }

    fn due_now(&self, gate_id: u32, now: u64) -> Result<u64> {
        let minute = now / MINUTE_MS;
        let row = one(
            self.client()?,
            concat!(
                "SELECT (SELECT coalesce(sum(n), 0)::bigint FROM due_minutes \
                     WHERE gate_id = $1 AND minute < $2) \
                  + (SELECT count(*) FROM tasks WHERE gate_id = $1 \
                     AND due IS NOT NULL AND pkey IS NULL AND due >= $3 AND due <= $4",
                unstarted!("$1"),
                ") + (SELECT count(*) FROM tasks WHERE gate_id = $1 \
                     AND due IS NOT NULL AND pkey IS NOT NULL AND due >= $3 AND due <= $4",
                unstarted!("$1"),
                ")"
            ),
            &[
                &int(gate_id),
                &big(minute),
                &big(minute * MINUTE_MS),
                &big(now),
            ],
        )?;
        Ok(row.map_or(0, |row| unbig(row.get(0))))
    }

    fn list_tasks(
        &self,
        filter: &TaskFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<TaskRecord>, Option<u64>)> {
        let client = self.client()?;
        let mut below = big(before.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        let mut scanned = 0;
        loop {
            let page = match filter.gate_id {
                Some(gate_id) => rows(
                    client,
                    "SELECT id, record, coalesce(v, 0) FROM tasks \
                     WHERE gate_id = $1 AND id < $2 ORDER BY id DESC LIMIT 500",
                    &[&int(gate_id), &below],
                )?,
                None => rows(
                    client,
                    "SELECT id, record, coalesce(v, 0) FROM tasks \
                     WHERE id < $1 ORDER BY id DESC LIMIT 500",
                    &[&below],
                )?,
            };
            if page.is_empty() {
                return Ok((out, None));
            }
            // The page's starts kept apart that count, laid over their rows.
            let ids: Vec<i64> = page.iter().map(|row| row.get(0)).collect();
            let mut kept = starts_of(client, &ids)?;
            for row in page {
                let id: i64 = row.get(0);
                below = id;
                scanned += 1;
                let task = kept.task(unbig(id), row.get(2), row.get(1))?;
                if filter.matches(&task) {
                    out.push(task);
                    if out.len() >= limit {
                        return Ok((out, Some(unbig(id))));
                    }
                }
                if scanned >= LIST_SCAN_LIMIT {
                    return Ok((out, Some(unbig(id))));
                }
            }
        }
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        records(
            "schedules",
            rows(
                self.client()?,
                "SELECT record FROM schedules ORDER BY name",
                &[],
            )?,
        )
    }

    fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>> {
        record(
            "schedules",
            one(
                self.client()?,
                "SELECT record FROM schedules WHERE name = $1",
                &[&name],
            )?,
        )
    }

    fn task_count(&self) -> Result<u64> {
        let row = one(self.client()?, "SELECT count(*) FROM tasks", &[])?;
        Ok(row.map_or(0, |row| unbig(row.get(0))))
    }

    fn replay(&self, id: &str) -> Result<Option<ReplayRecord>> {
        record(
            "replays",
            one(
                self.client()?,
                "SELECT record FROM replays WHERE id = $1",
                &[&id],
            )?,
        )
    }

    fn replays(&self) -> Result<Vec<ReplayRecord>> {
        records(
            "replays",
            rows(
                self.client()?,
                "SELECT record FROM replays ORDER BY id",
                &[],
            )?,
        )
    }
}
