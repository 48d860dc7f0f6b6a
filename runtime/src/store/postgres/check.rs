//! `sluice check --store postgres://…`: the same checks as on a redb file
//! (`store/check.rs`), over one read-only snapshot. Tasks are read a page
//! at a time; the derived tables whole.

use super::super::check::{Derived, Stored, compare_stored};
use super::*;

/// Tasks per query while the records are scanned.
const PAGE: i64 = 5_000;

impl PgStore {
    /// Checks the store: every task, gate and schedule record decodes, and
    /// every derived table (indexes, counters, the retention and coalesce
    /// indexes) agrees with the records. Changes nothing.
    pub fn check(&self) -> Result<Findings> {
        let conn = self.reader_client()?;
        wait(
            conn.client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        )?;
        let checked = check_on(&conn);
        let _ = wait(conn.client.batch_execute("ROLLBACK"));
        checked
    }
}

fn check_on(conn: &Conn) -> Result<Findings> {
    let mut found = Findings::default();
    let mut d = Derived::default();
    let mut after = -1i64;
    loop {
        let page = rows(
            conn,
            "SELECT id, record FROM live WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &PAGE],
        )?;
        let Some(last) = page.last() else { break };
        after = last.get(0);
        for row in &page {
            d.add(unbig(row.get(0)), row.get::<_, &[u8]>(1), &mut found);
        }
    }
    let mut s = Stored::default();
    for row in rows(conn, "SELECT name, record, unit FROM gates", &[])? {
        found.gates += 1;
        let (name, unit): (&str, Option<i32>) = (row.get(0), row.get(2));
        if unit != Some(unit_column(name)) {
            // The node running the unit would not see the gate.
            found.problem(format!(
                "gate {name:?} is stored in unit {unit:?}, its name puts it in {}",
                unit_column(name)
            ));
        }
        match decode::<GateRecord>("gates", row.get::<_, &[u8]>(1)) {
            Ok(g) => {
                s.gate_ids.insert(g.id);
            }
            Err(e) => found.problem(format!("gate {:?}: {e}", row.get::<_, &str>(0))),
        }
    }
    for row in rows(conn, "SELECT name, record FROM schedules", &[])? {
        found.schedules += 1;
        if let Err(e) = decode::<ScheduleRecord>("schedules", row.get::<_, &[u8]>(1)) {
            found.problem(format!("schedule {:?}: {e}", row.get::<_, &str>(0)));
        }
    }
    let count = one(
        conn,
        "SELECT (SELECT count(a) FROM tasks, unnest(attempts) a WHERE a IS NOT NULL) \
             + (SELECT count(*) FROM live WHERE n IS NOT NULL AND attempts[n] IS NULL)",
        &[],
    )?;
    found.attempts = count.map_or(0, |row| unbig(row.get(0)));
    let count = one(conn, "SELECT count(*) FROM plugins", &[])?;
    found.plugins = count.map_or(0, |row| unbig(row.get(0)));
    // The pending entries (schema 8), the running set, the gate index and
    // the retention index are columns of the task rows (schema 5), read as
    // the tables they were, with the starts kept apart laid over them
    // (schema 9).
    for row in rows(
        conn,
        "SELECT gate_id, pkey, due, id FROM live WHERE due IS NOT NULL",
        &[],
    )? {
        let (gate, due, id) = (
            unint(row.get::<_, Option<i32>>(0).unwrap_or_default()),
            unbig(row.get(2)),
            unbig(row.get(3)),
        );
        match row.get::<_, Option<String>>(1) {
            None => s.pending.insert((gate, due, id)),
            Some(key) => s.pending_keyed.insert((gate, key, due, id)),
        };
    }
    for row in rows(conn, "SELECT id FROM live WHERE running", &[])? {
        s.running.insert(unbig(row.get(0)));
    }
    for row in rows(
        conn,
        "SELECT gate_id, id FROM tasks WHERE gate_id IS NOT NULL",
        &[],
    )? {
        s.gate_tasks.insert((unint(row.get(0)), unbig(row.get(1))));
    }
    for row in rows(
        conn,
        "SELECT finished_at, id FROM tasks WHERE finished_at IS NOT NULL",
        &[],
    )? {
        s.finished.insert((unbig(row.get(0)), unbig(row.get(1))));
    }
    for row in rows(conn, "SELECT gate_id, minute, n FROM due_minutes", &[])? {
        s.due_minutes
            .insert((unint(row.get(0)), unbig(row.get(1))), unbig(row.get(2)));
    }
    for row in rows(conn, "SELECT gate_id, record FROM counts", &[])? {
        s.counted
            .insert(unint(row.get(0)), Counts::decode(row.get::<_, &[u8]>(1)));
    }
    for row in rows(conn, "SELECT gate_id, key, task_id FROM coalesce", &[])? {
        s.coalesce.insert(
            (unint(row.get(0)), row.get::<_, String>(1)),
            unbig(row.get(2)),
        );
    }
    compare_stored(&d, &s, &mut found);
    Ok(found)
}
