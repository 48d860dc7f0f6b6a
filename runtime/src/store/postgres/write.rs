//! Writes: `PgTx`, one transaction on the writer connection, and the
//! per-minute due counts it keeps in step, written once at its end.
//!
//! A write whose answer nobody waits for (a record put, an index entry) is
//! queued, and the queue goes out as one pipeline (every statement sent
//! before the first answer is read) before the next read and at commit.
//! PostgreSQL runs a connection's statements in order, so a read still sees
//! every write before it.
//!
//! A task's row holds its record, its place in its gate's due order while
//! it is pending, and its attempts (schema 8): whatever a transaction did
//! to a task goes out as one statement, so its creation and its end each
//! write one row.
//!
//! Its start, when that is all a transaction did to a task pending in the
//! database (and it starts at least `FEWEST_APART` such), is kept apart
//! (schema 9): the transaction's starts go out as one row of `starts`, and
//! the task rows are left as they were. Each write of a task's row counts
//! up its version (`tasks.v`), and a start counts while the row is at the
//! version the start was made on: every read of a task lays such a start
//! over its row (`live_rows`, `StartsOf`), and the reads of due orders
//! leave such tasks out (`unstarted!`). The next write of the row takes the
//! start in (`Start::under`), so the start no longer counts once its row
//! is written: the transaction that writes it has read the task, or reads
//! its start first (`learn_starts`). Only the engine running a gate starts
//! and ends its tasks, so no other writer changes a row under it. Every
//! `SWEEP_EVERY`th transaction removes the rows of `starts` none of whose
//! starts counts any more.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};

use super::*;

type Param = Box<dyn ToSql + Sync + Send>;

/// A pending task's place in its gate's due order: its row's `gate_id`,
/// `pkey` and `due`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Place {
    gate: u32,
    key: Option<String>,
    due: u64,
}

impl Place {
    /// The place in columns `at..at + 3` (`gate_id`, `pkey`, `due`) of a
    /// row; none where `due` is null.
    fn read(row: &Row, at: usize) -> Option<Place> {
        let due: Option<i64> = row.get(at + 2);
        Some(Place {
            gate: unint(row.get::<_, Option<i32>>(at)?),
            key: row.get(at + 1),
            due: unbig(due?),
        })
    }

    /// Its per-minute counter.
    fn minute(&self) -> (u32, u64) {
        (self.gate, self.due / MINUTE_MS)
    }

    fn holds(&self, gate: u32, key: Option<&str>) -> bool {
        self.gate == gate && self.key.as_deref() == key
    }
}

/// A task row's statement that moves its place: to where, and whether the
/// statement makes the row if it is missing. It answers with the place
/// before, and the minute counts follow the difference.
struct Move {
    to: Option<Place>,
    creates: bool,
}

/// A start kept apart from its task's row, read through `live` while it
/// is newer than the row.
#[derive(Clone)]
struct Start {
    gate: Option<u32>,
    n: u32,
    record: Vec<u8>,
    attempt: Vec<u8>,
}

impl Start {
    /// A start as stored, of a task of `gate`.
    fn of(kept: Kept, gate: Option<u32>) -> Start {
        Start {
            gate,
            n: kept.n,
            record: kept.record,
            attempt: kept.attempt,
        }
    }

    /// Lays the start under what a transaction writes to its task's row:
    /// whatever the transaction left as it was is the start's.
    fn under(self, row: &mut TaskRow) {
        if row.record.is_none() {
            row.record = Some(self.record);
            row.gate_id = row.gate_id.or(self.gate);
        }
        row.running.get_or_insert(true);
        row.place.get_or_insert(None);
        row.attempts.entry(self.n).or_insert(self.attempt);
    }
}

/// Removes the rows of `starts` none of whose starts counts any more (each
/// task's row written since, or gone). Each task's row is looked up on its
/// own (the lateral subquery, kept apart by `OFFSET 0`, takes the id as a
/// parameter): as a join, statistics from when `tasks` was small (a new
/// database under its first load) chose to hash all of `tasks` once per
/// row of `starts`, hundreds of milliseconds inside the writer's
/// transaction.
const SWEEP: &str = "DELETE FROM starts s WHERE NOT EXISTS (\
    SELECT 1 FROM unnest(s.ids, s.vs) e(id, v), \
    LATERAL (SELECT coalesce(t.v, 0) AS v FROM tasks t WHERE t.id = e.id OFFSET 0) t \
    WHERE t.v = e.v)";

/// The starts kept apart of `gate`'s tasks, by task and the version of the
/// row each was made on (those that no longer count among them), found
/// through the index on `starts.gates`: a read of the gate's due order
/// drops the tasks whose rows are still at those versions. (Dropped in
/// Rust: `<> ALL` in the statement costs a comparison with every start
/// for each row read.)
fn kept_in(conn: &Conn, gate: GateId) -> Result<HashSet<(u64, i32)>> {
    let found = rows(
        conn,
        "SELECT e.id, e.v FROM starts s, unnest(s.ids, s.vs, s.gates) AS e(id, v, gate_id) \
         WHERE s.gates @> ARRAY[$1::int] AND e.gate_id = $1",
        &[&int(gate.0)],
    )?;
    Ok(found
        .iter()
        .map(|row| (unbig(row.get(0)), row.get(1)))
        .collect())
}

/// The due orders among `found` (`due`, `id`, the row's version) whose
/// tasks have no start kept apart that counts.
fn unkept(found: Vec<Row>, kept: &HashSet<(u64, i32)>) -> Vec<(Timestamp, TaskId)> {
    found
        .iter()
        .map(|row| (unbig(row.get(0)), unbig(row.get(1)), row.get::<_, i32>(2)))
        .filter(|&(_, id, v)| !kept.contains(&(id, v)))
        .map(|(due, id, _)| (Timestamp(due), TaskId(id)))
        .collect()
}

/// A start that can be kept apart: its task, the task's place before and
/// the version of its row, the start, and the row it would otherwise write.
type Apart = (u64, Place, i32, Start, TaskRow);

/// The fewest starts a row of `starts` holds: with fewer, their task rows
/// cost less (the row of starts is written again when swept).
const FEWEST_APART: usize = 3;

/// The most starts a row of `starts` holds: a read of a task's start reads
/// its whole row (every record in it).
const MOST_APART: usize = 32;

/// A queued write.
struct Queued {
    sql: &'static str,
    params: Vec<Param>,
    moves: Option<Move>,
    /// A task row's statement that takes in a start kept apart: the task
    /// was out of its gate's due order, whatever the row's place before.
    took_start: bool,
    /// A task row's changes sent without its record: if the row is not
    /// there yet (its record comes later in the transaction, as a create's
    /// does after its pending entry), they wait for the record's statement.
    unless_missing: Option<(u64, TaskRow)>,
}

/// The row's statements: with the record (an upsert) or without (an update
/// of its columns), each with one attempt or none. Each answers with the
/// row's place before it (no row: none there).
macro_rules! row_upsert {
    ($column:literal, $value:literal, $set:literal) => {
        concat!(
            "WITH old AS (SELECT gate_id, pkey, due FROM tasks WHERE id = $1), ",
            "up AS (INSERT INTO tasks (id, record, gate_id, finished_at, running, due, pkey, v",
            $column,
            ") VALUES ($1, $2, $3, $4, coalesce($5::bool, false), ",
            "CASE WHEN $6::bool THEN $7::bigint END, CASE WHEN $6::bool THEN $8::text END, ",
            // A row made again (retention removed it while its task ran
            // again) starts past every version a start of it was made on.
            "(SELECT coalesce(max(e.v) + 1, 0) FROM starts s, unnest(s.ids, s.vs) AS e(id, v) ",
            "WHERE s.ids @> ARRAY[$1::bigint] AND e.id = $1)",
            $value,
            ") ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record, ",
            "gate_id = EXCLUDED.gate_id, finished_at = EXCLUDED.finished_at, ",
            "running = coalesce($5::bool, tasks.running), ",
            "due = CASE WHEN $6::bool THEN $7::bigint ELSE tasks.due END, ",
            "pkey = CASE WHEN $6::bool THEN $8::text ELSE tasks.pkey END, ",
            "v = coalesce(tasks.v, 0) + 1",
            $set,
            ") SELECT gate_id, pkey, due FROM old"
        )
    };
}
macro_rules! row_update {
    ($set:literal) => {
        concat!(
            "WITH old AS (SELECT gate_id, pkey, due FROM tasks WHERE id = $1), ",
            "up AS (UPDATE tasks SET v = coalesce(v, 0) + 1, ",
            "running = coalesce($2::bool, running), ",
            "gate_id = coalesce($3::int, gate_id), ",
            "due = CASE WHEN $4::bool THEN $5::bigint ELSE due END, ",
            "pkey = CASE WHEN $4::bool THEN $6::text ELSE pkey END",
            $set,
            " WHERE id = $1) SELECT gate_id, pkey, due FROM old"
        )
    };
}
const ROW_UPSERT: &str = row_upsert!("", "", "");
const ROW_UPSERT_ATTEMPT: &str = row_upsert!(", attempts[$9]", ", $10", ", attempts[$9] = $10");
const ROW_UPDATE: &str = row_update!("");
const ROW_UPDATE_ATTEMPT: &str = row_update!(", attempts[$7] = $8");
/// A second attempt written in one transaction (one that ended and the
/// next that started, say).
const ROW_ATTEMPT: &str = "UPDATE tasks SET attempts[$2] = $3 WHERE id = $1";

/// What a transaction wrote to one task's row since its last flush: its
/// record (with the columns read off it), its place in the running set and
/// in its gate's due order, and its attempts. However often the turn
/// changed the task, the row goes out as one statement (two when it wrote
/// two attempts).
#[derive(Clone, Default)]
struct TaskRow {
    record: Option<Vec<u8>>,
    gate_id: Option<u32>,
    finished_at: Option<u64>,
    running: Option<bool>,
    /// Its place from now on (`Some(None)`: not pending), if it moved.
    place: Option<Option<Place>>,
    /// The attempts written, by number (the last write of each).
    attempts: BTreeMap<u32, Vec<u8>>,
}

impl TaskRow {
    /// The statements that write it.
    fn queued(self, id: u64, took_start: bool, out: &mut Vec<Queued>) {
        let unless_missing = self.record.is_none().then(|| (id, self.clone()));
        let moves = self.place.clone().map(|to| Move {
            to,
            creates: self.record.is_some(),
        });
        let (moved, due, key) = match self.place {
            Some(Some(place)) => (true, Some(big(place.due)), place.key),
            Some(None) => (true, None, None),
            None => (false, None, None),
        };
        let mut attempts = self.attempts.into_iter();
        let first = attempts.next();
        let (sql, mut params): (&'static str, Vec<Param>) = match self.record {
            Some(record) => (
                if first.is_some() {
                    ROW_UPSERT_ATTEMPT
                } else {
                    ROW_UPSERT
                },
                vec![
                    Box::new(big(id)),
                    Box::new(record),
                    Box::new(self.gate_id.map(int)),
                    Box::new(self.finished_at.map(big)),
                    Box::new(self.running),
                    Box::new(moved),
                    Box::new(due),
                    Box::new(key),
                ],
            ),
            None => (
                if first.is_some() {
                    ROW_UPDATE_ATTEMPT
                } else {
                    ROW_UPDATE
                },
                vec![
                    Box::new(big(id)),
                    Box::new(self.running),
                    Box::new(self.gate_id.map(int)),
                    Box::new(moved),
                    Box::new(due),
                    Box::new(key),
                ],
            ),
        };
        if let Some((number, record)) = first {
            params.push(Box::new(int(number)));
            params.push(Box::new(record));
        }
        out.push(Queued {
            sql,
            params,
            moves,
            took_start,
            unless_missing,
        });
        for (number, record) in attempts {
            out.push(Queued {
                sql: ROW_ATTEMPT,
                params: vec![Box::new(big(id)), Box::new(int(number)), Box::new(record)],
                moves: None,
                took_start: false,
                unless_missing: None,
            });
        }
    }
}

/// One write transaction on the writer connection.
pub(super) struct PgTx<'a> {
    client: &'a Conn,
    queued: RefCell<Vec<Queued>>,
    /// Task rows written since the last flush of everything.
    rows: RefCell<BTreeMap<u64, TaskRow>>,
    /// The place of each task this transaction read or moved, as of its
    /// writes so far: a start's removal is answered from it and folded into
    /// the row's one statement. (Only the engine that runs a gate moves
    /// its tasks, so no other writer changes one under it.)
    places: RefCell<HashMap<u64, Option<Place>>>,
    /// Changes to `due_minutes`, written once at the end.
    due_deltas: RefCell<HashMap<(u32, u64), i64>>,
    /// The place in the database of each task this transaction read, and
    /// the version of its row, when it read it (and has not written the
    /// row since).
    seen: RefCell<HashMap<u64, (Option<Place>, i32)>>,
    /// For each task this transaction read or wrote, its start kept apart
    /// that is newer than its row (`None`: none).
    starts: RefCell<HashMap<u64, Option<Start>>>,
    /// Whether the transaction ends with a sweep of `starts`.
    sweep: bool,
}

impl<'a> PgTx<'a> {
    pub(super) fn new(client: &'a Conn, sweep: bool) -> PgTx<'a> {
        PgTx {
            client,
            queued: RefCell::default(),
            rows: RefCell::default(),
            places: RefCell::default(),
            due_deltas: RefCell::default(),
            seen: RefCell::default(),
            starts: RefCell::default(),
            sweep,
        }
    }

    /// Changes what goes out for task `id`'s row.
    fn row(&self, id: u64, change: impl FnOnce(&mut TaskRow)) {
        change(self.rows.borrow_mut().entry(id).or_default());
    }

    fn send(&self, sql: &'static str, params: Vec<Param>) {
        self.queued.borrow_mut().push(Queued {
            sql,
            params,
            moves: None,
            took_start: false,
            unless_missing: None,
        });
    }

    /// Sends the task rows and the queued writes as one pipeline and waits
    /// for every answer. The rows go first: the only other statement on
    /// `tasks` (retention's delete) is queued after a read of the task,
    /// which flushed its row. The starts that can be kept apart go in one
    /// row of `starts`.
    fn flush(&self) -> Result<()> {
        let rows = std::mem::take(&mut *self.rows.borrow_mut());
        let mut apart = Vec::new();
        let mut others = Vec::new();
        for (id, row) in rows {
            match self.apart(id, row) {
                Ok(start) => apart.push(start),
                Err(row) => others.push((id, row)),
            }
        }
        if apart.len() < FEWEST_APART {
            // A row of starts would cost as much as their task rows, and
            // once more when swept.
            others.extend(apart.into_iter().map(|(id, _, _, _, row)| (id, row)));
            apart = Vec::new();
        }
        self.queue_rows(others)?;
        self.queue_starts(apart);
        self.flush_queued()
    }

    /// Task `id`'s start, its place before and the start itself, if that is
    /// all `row` holds and the task is pending in the database as this
    /// transaction read it (and its row not written since, nor its start
    /// kept apart);
    /// else the row.
    fn apart(&self, id: u64, row: TaskRow) -> std::result::Result<Apart, TaskRow> {
        let (place, version) = match self.seen.borrow().get(&id) {
            Some((Some(place), version)) => (place.clone(), *version),
            _ => return Err(row),
        };
        let plain = matches!(self.starts.borrow().get(&id), Some(None))
            && row.running == Some(true)
            && row.place == Some(None)
            && row.finished_at.is_none()
            && row.attempts.len() == 1
            && row.gate_id.is_none_or(|gate| gate == place.gate);
        if !plain {
            return Err(row);
        }
        let (Some(record), Some((&n, attempt))) = (&row.record, row.attempts.first_key_value())
        else {
            return Err(row);
        };
        let start = Start {
            gate: Some(place.gate),
            n,
            record: record.clone(),
            attempt: attempt.clone(),
        };
        Ok((id, place, version, start, row))
    }

    /// Queues one row of `starts` with these starts kept apart, each task
    /// out of its gate's due order from now on.
    fn queue_starts(&self, apart: Vec<Apart>) {
        if apart.is_empty() {
            return;
        }
        // Rows of at most `MOST_APART`, as even as can be.
        let rows = apart.len().div_ceil(MOST_APART);
        let size = apart.len().div_ceil(rows);
        let mut apart = apart.into_iter().peekable();
        while apart.peek().is_some() {
            self.queue_start_row(apart.by_ref().take(size));
        }
    }

    /// Queues one row of `starts`.
    fn queue_start_row(&self, apart: impl Iterator<Item = Apart>) {
        let (mut ids, mut vs, mut gates, mut ns, mut records, mut attempts) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        {
            let mut deltas = self.due_deltas.borrow_mut();
            let mut starts = self.starts.borrow_mut();
            let mut seen = self.seen.borrow_mut();
            for (id, place, version, start, _) in apart {
                *deltas.entry(place.minute()).or_default() -= 1;
                seen.insert(id, (None, version));
                ids.push(big(id));
                vs.push(version);
                gates.push(int(place.gate));
                ns.push(int(start.n));
                records.push(start.record.clone());
                attempts.push(start.attempt.clone());
                starts.insert(id, Some(start));
            }
        }
        self.send(
            "INSERT INTO starts (ids, vs, gates, ns, records, attempts) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                Box::new(ids),
                Box::new(vs),
                Box::new(gates),
                Box::new(ns),
                Box::new(records),
                Box::new(attempts),
            ],
        );
    }

    /// Puts the statements of task rows ahead of the queued writes, each
    /// with the start kept apart that it takes in.
    fn queue_rows(&self, rows: Vec<(u64, TaskRow)>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.learn_starts(rows.iter().map(|(id, _)| *id))?;
        let mut statements = Vec::new();
        {
            let mut starts = self.starts.borrow_mut();
            let mut seen = self.seen.borrow_mut();
            for (id, mut row) in rows {
                let start = starts.insert(id, None).flatten();
                let took_start = start.is_some();
                if let Some(start) = start {
                    start.under(&mut row);
                }
                // Read again before it is kept apart, or not at all.
                seen.remove(&id);
                row.queued(id, took_start, &mut statements);
            }
        }
        let mut queued = self.queued.borrow_mut();
        statements.append(&mut queued);
        *queued = statements;
        Ok(())
    }

    /// Reads the starts kept apart of the tasks among `ids` this
    /// transaction knows nothing of (a write without a read before it).
    fn learn_starts(&self, ids: impl Iterator<Item = u64>) -> Result<()> {
        let unknown: Vec<i64> = {
            let starts = self.starts.borrow();
            ids.filter(|id| !starts.contains_key(id)).map(big).collect()
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let (found, mut kept) = rows_and_starts(
            self.client,
            "SELECT id, coalesce(v, 0), gate_id FROM tasks WHERE id = ANY($1)",
            &[&unknown],
            &unknown,
        )?;
        let mut starts = self.starts.borrow_mut();
        starts.extend(unknown.iter().map(|&id| (unbig(id), None)));
        for row in &found {
            let id = unbig(row.get(0));
            let gate = row.get::<_, Option<i32>>(2).map(unint);
            let start = kept.take(id, row.get(1)).map(|k| Start::of(k, gate));
            starts.insert(id, start);
        }
        Ok(())
    }

    /// Sends the queued writes, not the task rows (for reads of tables
    /// other than `tasks`, which need not wait for them).
    fn flush_queued(&self) -> Result<()> {
        let queued = std::mem::take(&mut *self.queued.borrow_mut());
        if queued.is_empty() {
            return Ok(());
        }
        let statements = queued
            .iter()
            .map(|q| self.client.statement(q.sql))
            .collect::<Result<Vec<_>>>()?;
        let client = &self.client.client;
        let answers = queued
            .iter()
            .zip(&statements)
            .map(|(q, statement)| async move {
                let params: Vec<&(dyn ToSql + Sync)> = q
                    .params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                if q.moves.is_some() || q.unless_missing.is_some() {
                    client.query(statement, &params).await.map(Some)
                } else {
                    client.execute(statement, &params).await.map(|_| None)
                }
            });
        let answers = wait(futures_util::future::try_join_all(answers))?;
        let mut deltas = self.due_deltas.borrow_mut();
        for (q, before) in queued.into_iter().zip(answers) {
            if let (Some((id, row)), Some(before)) = (q.unless_missing, &before)
                && before.is_empty()
            {
                // No row yet: the changes go out with its record.
                self.rows.borrow_mut().insert(id, row);
                continue;
            }
            let (Some(moved), Some(before)) = (&q.moves, before) else {
                continue;
            };
            let Some(before) = before.first() else {
                if !moved.creates {
                    continue;
                }
                if let Some(to) = &moved.to {
                    *deltas.entry(to.minute()).or_default() += 1;
                }
                continue;
            };
            if let Some(from) = Place::read(before, 0).filter(|_| !q.took_start) {
                *deltas.entry(from.minute()).or_default() -= 1;
            }
            if let Some(to) = &moved.to {
                *deltas.entry(to.minute()).or_default() += 1;
            }
        }
        Ok(())
    }

    /// The records of tasks `ids`, each task's start kept apart (if one
    /// counts) laid over its row, once this transaction's writes to them
    /// have gone out; their places (none while a start counts), the
    /// versions of their rows and their starts noted.
    fn live_rows(&self, ids: &[u64]) -> Result<Vec<Vec<u8>>> {
        let conn = self.read_rows(ids)?;
        let wanted: Vec<i64> = ids.iter().map(|&id| big(id)).collect();
        let (found, mut kept) = rows_and_starts(
            conn,
            "SELECT id, record, gate_id, pkey, due, coalesce(v, 0) FROM tasks WHERE id = ANY($1)",
            &[&wanted],
            &wanted,
        )?;
        let unsent = self.rows.borrow();
        let mut places = self.places.borrow_mut();
        let mut seen = self.seen.borrow_mut();
        let mut starts = self.starts.borrow_mut();
        let mut out = Vec::with_capacity(found.len());
        for row in &found {
            let (id, version) = (unbig(row.get(0)), row.get::<_, i32>(5));
            let gate = row.get::<_, Option<i32>>(2).map(unint);
            let start = kept.take(id, version).map(|k| Start::of(k, gate));
            let place = match start {
                Some(_) => None,
                None => Place::read(row, 2),
            };
            if unsent.get(&id).is_none_or(|r| r.place.is_none()) {
                places.insert(id, place.clone());
            }
            seen.insert(id, (place, version));
            starts.insert(id, start.clone());
            out.push(match &start {
                Some(start) => start.record.clone(),
                None => row.get(1),
            });
        }
        Ok(out)
    }

    /// Notes the places of pending tasks just read, no start of theirs
    /// counting (`id` in column 0, the place in columns 1..4, the version
    /// in column 4); a row this transaction moved and has not sent keeps
    /// the place it moved to.
    fn saw_pending(&self, found: &[Row]) {
        let rows = self.rows.borrow();
        let mut places = self.places.borrow_mut();
        let mut seen = self.seen.borrow_mut();
        let mut starts = self.starts.borrow_mut();
        for row in found {
            let id = unbig(row.get(0));
            seen.insert(id, (Place::read(row, 1), row.get(4)));
            starts.insert(id, None);
            if rows.get(&id).is_some_and(|r| r.place.is_some()) {
                continue;
            }
            places.insert(id, Place::read(row, 1));
        }
    }

    /// The places in `gate`'s due order of the tasks whose rows this
    /// transaction holds back for their records (a create writes its entry
    /// first, its record at the turn's end): once everything else has gone
    /// out (`read`), these rows are not in the database yet, so a read of
    /// the whole order adds them.
    fn held_back(&self, gate: GateId) -> Vec<(u64, Place)> {
        (self.rows.borrow().iter())
            .filter_map(|(&id, row)| {
                let place = row.place.clone()??;
                (place.gate == gate.0).then_some((id, place))
            })
            .collect()
    }

    /// Sends what is queued, then the minute counts (and the sweep of
    /// `starts`, if this transaction is the one to).
    pub(super) fn commit(&mut self) -> Result<()> {
        self.flush()?;
        if self.sweep {
            self.send(SWEEP, Vec::new());
        }
        let deltas = std::mem::take(&mut *self.due_deltas.borrow_mut());
        for ((gate_id, minute), delta) in deltas {
            if delta == 0 {
                continue;
            }
            self.send(
                "INSERT INTO due_minutes VALUES ($1, $2, $3) ON CONFLICT (gate_id, minute) \
                 DO UPDATE SET n = due_minutes.n + EXCLUDED.n",
                vec![
                    Box::new(int(gate_id)),
                    Box::new(big(minute)),
                    Box::new(delta),
                ],
            );
            self.send(
                "DELETE FROM due_minutes WHERE gate_id = $1 AND minute = $2 AND n <= 0",
                vec![Box::new(int(gate_id)), Box::new(big(minute))],
            );
        }
        self.flush()
    }

    /// The connection, once every queued write has gone out.
    fn read(&self) -> Result<&Conn> {
        self.flush()?;
        Ok(self.client)
    }

    /// A plugin's record read by `sql` (which locks it as it says).
    fn plugin_row(&self, sql: &'static str, key: &str) -> Result<Option<PluginRecord>> {
        let found = rows(self.read_other()?, sql, &[&key])?;
        Ok(records("plugins", found)?.into_iter().next())
    }

    /// The connection for a read of the rows of tasks `ids`, once what this
    /// transaction wrote to them and the queued writes have gone out; other
    /// task rows wait (a turn reads each report's task as it comes, and
    /// the rows it changed before go out once, at its end).
    fn read_rows(&self, ids: &[u64]) -> Result<&Conn> {
        let taken: Vec<(u64, TaskRow)> = {
            let mut rows = self.rows.borrow_mut();
            ids.iter()
                .filter_map(|&id| rows.remove(&id).map(|row| (id, row)))
                .collect()
        };
        self.queue_rows(taken)?;
        self.read_other()
    }

    /// The connection for a statement that needs no task row sent first (a
    /// read of another table, or of pending orders with the unsent rows
    /// laid over it), once the queued writes have gone out; the task rows
    /// wait, so a start's removal from the due order does not split its
    /// row into two writes.
    fn read_other(&self) -> Result<&Conn> {
        self.flush_queued()?;
        Ok(self.client)
    }

    /// Removes one finished task and what hangs off it, if it still is the
    /// task that finished at `at`. Another node may run it again meanwhile
    /// (the gate's owner retries it, while retention runs on the node of
    /// unit 0), so each statement holds only if the row is still as read:
    /// the row goes only while it still finished at `at`, and what hangs off
    /// it only once the row is gone.
    fn prune_task(&mut self, id: u64, at: u64) -> Result<bool> {
        let Some(task) = self.task(id)? else {
            return Ok(false);
        };
        if !task.state.is_final() || task.finished_at != Some(at) {
            // It ran again since (or an upgraded row's time was stale): its
            // column from its record, so retention stops finding it here.
            self.send(
                "UPDATE tasks SET finished_at = $3 WHERE id = $1 AND finished_at = $2",
                vec![
                    Box::new(big(id)),
                    Box::new(big(at)),
                    Box::new(task.finished_at.filter(|_| task.state.is_final()).map(big)),
                ],
            );
            return Ok(false);
        }
        self.send(
            "DELETE FROM tasks WHERE id = $1 AND finished_at = $2",
            vec![Box::new(big(id)), Box::new(big(at))],
        );
        if task.root.is_none_or(|root| root == id) {
            self.send(
                "DELETE FROM lineage WHERE root = $1 \
                 AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = $1)",
                vec![Box::new(big(id))],
            );
        }
        if let Some(key) = task.idempotency_key {
            self.send(
                "DELETE FROM idempotency WHERE gate_id = $1 AND key = $2 AND task_id = $3 \
                 AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = $3)",
                vec![
                    Box::new(int(task.gate_id)),
                    Box::new(key),
                    Box::new(big(id)),
                ],
            );
        }
        if let Some(key) = task.coalesce_key {
            self.send(
                "DELETE FROM coalesce WHERE gate_id = $1 AND key = $2 AND task_id = $3 \
                 AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = $3)",
                vec![
                    Box::new(int(task.gate_id)),
                    Box::new(key),
                    Box::new(big(id)),
                ],
            );
        }
        Ok(true)
    }
}

impl Writes for PgTx<'_> {
    fn next_gate_id(&mut self) -> Result<u32> {
        let row = one(
            self.read_other()?,
            "UPDATE meta SET value = value + 1 WHERE key = 'next_gate_id' RETURNING value - 1",
            &[],
        )?;
        let next = row.map_or(1, |row| unbig(row.get(0)));
        u32::try_from(next).map_err(|_| StoreError::Corrupt {
            table: "meta",
            detail: "gate ids exhausted".into(),
        })
    }

    fn gates(&self) -> Result<Vec<GateRecord>> {
        records(
            "gates",
            rows(self.read_other()?, "SELECT record FROM gates", &[])?,
        )
    }

    fn gate(&self, name: &str) -> Result<Option<GateRecord>> {
        let found = rows(
            self.read_other()?,
            "SELECT record FROM gates WHERE name = $1 FOR KEY SHARE",
            &[&name],
        )?;
        Ok(records("gates", found)?.into_iter().next())
    }

    fn lock_gate(&mut self, name: &str) -> Result<()> {
        one(
            self.read_other()?,
            "SELECT 1 FROM gates WHERE name = $1 FOR UPDATE",
            &[&name],
        )?;
        Ok(())
    }

    fn gates_in(&self, units: Units) -> Result<Vec<GateRecord>> {
        let units: Vec<i32> = units.iter().map(|u| u as i32).collect();
        records(
            "gates",
            rows(
                self.read_other()?,
                "SELECT record FROM gates WHERE unit = ANY($1)",
                &[&units],
            )?,
        )
    }

    fn put_gate(&mut self, gate: &GateRecord) -> Result<()> {
        self.send(
            "INSERT INTO gates (name, record, unit) VALUES ($1, $2, $3) ON CONFLICT (name) \
             DO UPDATE SET record = EXCLUDED.record, unit = EXCLUDED.unit",
            vec![
                Box::new(gate.name.clone()),
                Box::new(encode(gate)),
                Box::new(unit_column(&gate.name)),
            ],
        );
        Ok(())
    }

    fn delete_gate(&mut self, name: &str) -> Result<()> {
        self.send(
            "DELETE FROM gates WHERE name = $1",
            vec![Box::new(name.to_string())],
        );
        Ok(())
    }

    fn last_task_id(&self) -> Result<Option<u64>> {
        let row = one(self.read()?, "SELECT max(id) FROM tasks", &[])?;
        Ok(row.and_then(|row| row.get::<_, Option<i64>>(0)).map(unbig))
    }

    fn task(&self, id: u64) -> Result<Option<TaskRecord>> {
        self.live_rows(&[id])?
            .first()
            .map(|record| decode_task(record))
            .transpose()
    }

    fn tasks(&self, ids: &[u64]) -> Result<Vec<TaskRecord>> {
        (self.live_rows(ids)?.iter())
            .map(|record| decode_task(record))
            .collect()
    }

    fn put_task(&mut self, task: &TaskRecord) -> Result<()> {
        let record = encode_task(task);
        let finished_at = task.finished_at.filter(|_| task.state.is_final());
        self.row(task.id, |row| {
            row.record = Some(record);
            row.gate_id = Some(task.gate_id);
            row.finished_at = finished_at;
        });
        Ok(())
    }

    fn prune(&mut self, before: u64, limit: usize) -> Result<(usize, bool)> {
        let found = rows(
            self.read()?,
            "SELECT finished_at, id FROM tasks WHERE finished_at < $1 \
             ORDER BY finished_at, id LIMIT $2",
            &[&big(before), &big((limit as u64).saturating_add(1))],
        )?;
        let more = found.len() > limit;
        let mut removed = 0;
        for row in found.iter().take(limit) {
            let (at, id): (i64, i64) = (row.get(0), row.get(1));
            if self.prune_task(unbig(id), unbig(at))? {
                removed += 1;
            }
        }
        Ok((removed, more))
    }

    fn index_task(&mut self, gate_id: u32, task_id: u64) -> Result<()> {
        // A column of the task's row, which its record sets too.
        self.row(task_id, |row| row.gate_id = Some(gate_id));
        Ok(())
    }

    fn insert_pending(
        &mut self,
        gate: GateId,
        key: Option<&str>,
        due: Timestamp,
        task: TaskId,
    ) -> Result<()> {
        // A column of the task's row: one place per task, and the minute
        // counts follow what the row's statement finds there before.
        let place = Place {
            gate: gate.0,
            key: key.map(str::to_owned),
            due: due.as_ms(),
        };
        let mut places = self.places.borrow_mut();
        if places.get(&task.0) == Some(&Some(place.clone())) {
            return Ok(());
        }
        places.insert(task.0, Some(place.clone()));
        self.row(task.0, |row| {
            row.gate_id = Some(place.gate);
            row.place = Some(Some(place));
        });
        Ok(())
    }

    fn remove_pending(
        &mut self,
        gate: GateId,
        key: Option<&str>,
        due: Timestamp,
        task: TaskId,
    ) -> Result<bool> {
        let entry = PendingEntry {
            gate,
            key: key.map(str::to_owned),
            due,
            task,
        };
        Ok(self.remove_pending_many(&[entry])?.first() == Some(&true))
    }

    fn remove_pending_many(&mut self, entries: &[PendingEntry]) -> Result<Vec<bool>> {
        // A start's task was read in this transaction: its place is known,
        // and its removal joins the row's one statement. Others are read.
        let unknown: Vec<u64> = {
            let places = self.places.borrow();
            entries
                .iter()
                .filter(|e| !places.contains_key(&e.task.0))
                .map(|e| e.task.0)
                .collect()
        };
        if !unknown.is_empty() {
            // Those not found are nowhere.
            self.places
                .borrow_mut()
                .extend(unknown.iter().map(|&id| (id, None)));
            self.live_rows(&unknown)?;
        }
        let mut removed = Vec::with_capacity(entries.len());
        for e in entries {
            let place = Place {
                gate: e.gate.0,
                key: e.key.clone(),
                due: e.due.as_ms(),
            };
            let mut places = self.places.borrow_mut();
            let here = places.get(&e.task.0) == Some(&Some(place));
            if here {
                places.insert(e.task.0, None);
                self.row(e.task.0, |row| row.place = Some(None));
            }
            removed.push(here);
        }
        Ok(removed)
    }

    #[allow(clippy::type_complexity, reason = "a plain pair of key lists")]
    fn pending_range(
        &self,
        gate: GateId,
        key: Option<&str>,
        from: (Timestamp, TaskId),
        until: Timestamp,
        limit: usize,
    ) -> Result<(Vec<(Timestamp, TaskId)>, Option<(Timestamp, TaskId)>)> {
        // The task rows this transaction moved and has not sent yet are laid
        // over what the database holds, so a start's removal still joins
        // its row's one statement: the query reads one more order for each,
        // in case each hid one it returns.
        let moved: HashMap<u64, Option<Place>> = self
            .rows
            .borrow()
            .iter()
            .filter_map(|(id, row)| Some((*id, row.place.clone()?)))
            .collect();
        // So are the gate's starts kept apart: the query reads one more
        // order for each, and drops those whose start counts.
        let conn = self.read_other()?;
        let kept = kept_in(conn, gate)?;
        let (gate_id, due, id, limit1) = (
            int(gate.0),
            big(from.0.as_ms()),
            big(from.1.0),
            big((limit.saturating_add(moved.len() + kept.len()) as u64).saturating_add(1)),
        );
        let found = match key {
            None => rows(
                conn,
                "SELECT due, id, coalesce(v, 0) FROM tasks \
                 WHERE gate_id = $1 AND due IS NOT NULL AND pkey IS NULL \
                 AND (due, id) >= ($2, $3) ORDER BY due, id LIMIT $4",
                &[&gate_id, &due, &id, &limit1],
            )?,
            Some(key) => rows(
                conn,
                "SELECT due, id, coalesce(v, 0) FROM tasks \
                 WHERE gate_id = $1 AND due IS NOT NULL AND pkey = $5 \
                 AND (due, id) >= ($2, $3) ORDER BY due, id LIMIT $4",
                &[&gate_id, &due, &id, &limit1, &key],
            )?,
        };
        let mut found = unkept(found, &kept);
        if !moved.is_empty() {
            found.retain(|(_, id)| !moved.contains_key(&id.0));
            for (id, place) in moved {
                if let Some(place) = place.filter(|p| p.holds(gate.0, key)) {
                    let order = (Timestamp(place.due), TaskId(id));
                    if order >= from {
                        found.push(order);
                    }
                }
            }
            found.sort_unstable();
        }
        cut_range(found.into_iter().map(Ok), until, limit)
    }

    fn pending_keys(&self, gate: GateId) -> Result<Vec<(Option<String>, (Timestamp, TaskId))>> {
        let conn = self.read()?;
        let held = self.held_back(gate);
        let kept = kept_in(conn, gate)?;
        let mut out: Vec<_> = unkept(
            rows(
                conn,
                "SELECT due, id, coalesce(v, 0) FROM tasks \
                 WHERE gate_id = $1 AND due IS NOT NULL AND pkey IS NULL \
                 ORDER BY due, id LIMIT $2",
                &[&int(gate.0), &big(kept.len() as u64 + 1)],
            )?,
            &kept,
        )
        .into_iter()
        .take(1)
        .map(|first| (None, first))
        .collect();
        let firsts = rows(
            conn,
            concat!(
                "SELECT DISTINCT ON (pkey) pkey, due, id FROM tasks \
                 WHERE gate_id = $1 AND due IS NOT NULL AND pkey IS NOT NULL",
                unstarted!("$1"),
                " ORDER BY pkey, due, id"
            ),
            &[&int(gate.0)],
        )?;
        for row in firsts {
            let first = (Timestamp(unbig(row.get(1))), TaskId(unbig(row.get(2))));
            out.push((Some(row.get(0)), first));
        }
        if !held.is_empty() {
            for (id, place) in held {
                let order = (Timestamp(place.due), TaskId(id));
                match out.iter_mut().find(|(key, _)| *key == place.key) {
                    Some((_, first)) => *first = (*first).min(order),
                    None => out.push((place.key, order)),
                }
            }
            out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(out)
    }

    fn all_pending(&self, gate: GateId) -> Result<Vec<(Option<String>, Timestamp, TaskId)>> {
        let found = rows(
            self.read()?,
            concat!(
                "SELECT id, gate_id, pkey, due, coalesce(v, 0) FROM tasks \
                 WHERE gate_id = $1 AND due IS NOT NULL",
                unstarted!("$1"),
                " ORDER BY pkey NULLS FIRST, due, id"
            ),
            &[&int(gate.0)],
        )?;
        self.saw_pending(&found);
        let mut out: Vec<_> = found
            .iter()
            .filter_map(|row| {
                let place = Place::read(row, 1)?;
                Some((place.key, Timestamp(place.due), TaskId(unbig(row.get(0)))))
            })
            .collect();
        let held = self.held_back(gate);
        if !held.is_empty() {
            out.extend(
                (held.into_iter()).map(|(id, place)| (place.key, Timestamp(place.due), TaskId(id))),
            );
            out.sort_unstable();
        }
        Ok(out)
    }

    fn set_running(&mut self, task_id: u64, running: bool) -> Result<()> {
        self.row(task_id, |row| row.running = Some(running));
        Ok(())
    }

    fn running_tasks(&self) -> Result<Vec<u64>> {
        let found = rows(
            self.read()?,
            "SELECT id FROM tasks WHERE running UNION SELECT id FROM started ORDER BY id",
            &[],
        )?;
        Ok(found.iter().map(|row| unbig(row.get(0))).collect())
    }

    fn running_tasks_in(&self, gates: &[u32]) -> Result<Vec<u64>> {
        let gates: Vec<i32> = gates.iter().map(|g| *g as i32).collect();
        let found = rows(
            self.read()?,
            "SELECT id FROM tasks WHERE running AND gate_id = ANY($1) UNION \
             SELECT id FROM started WHERE gate_id = ANY($1) ORDER BY id",
            &[&gates],
        )?;
        Ok(found.iter().map(|row| unbig(row.get(0))).collect())
    }

    fn attempt(&self, task_id: u64, attempt: u32) -> Result<Option<AttemptRecord>> {
        Ok(self.attempts_of(&[(task_id, attempt)])?.remove(&task_id))
    }

    fn attempts_of(&self, wanted: &[(u64, u32)]) -> Result<HashMap<u64, AttemptRecord>> {
        let ids: Vec<u64> = wanted.iter().map(|(id, _)| *id).collect();
        let conn = self.read_rows(&ids)?;
        let (ids, numbers): (Vec<i64>, Vec<i32>) =
            wanted.iter().map(|&(id, n)| (big(id), int(n))).unzip();
        let (found, mut kept) = rows_and_starts(
            conn,
            "SELECT t.id, coalesce(t.v, 0), w.n, t.attempts[w.n] \
             FROM tasks t JOIN unnest($1::bigint[], $2::int[]) AS w(id, n) ON t.id = w.id",
            &[&ids, &numbers],
            &ids,
        )?;
        let mut out = HashMap::with_capacity(found.len());
        for row in &found {
            let id = unbig(row.get(0));
            // A start that counts holds its attempt.
            let started = kept
                .take_attempt(id, row.get(1), unint(row.get(2)))
                .map(|k| k.attempt);
            if let Some(bytes) = started.or_else(|| row.get::<_, Option<Vec<u8>>>(3)) {
                out.insert(id, decode_attempt(&bytes)?);
            }
        }
        Ok(out)
    }

    fn put_attempt(&mut self, task_id: u64, attempt: &AttemptRecord) -> Result<()> {
        // Element `attempt` of the row's array, written with the row.
        let record = encode_attempt(attempt);
        self.row(task_id, |row| {
            row.attempts.insert(attempt.attempt, record);
        });
        Ok(())
    }

    fn idempotent(&self, gate_id: u32, key: &str) -> Result<Option<u64>> {
        let row = one(
            self.read_other()?,
            "SELECT task_id FROM idempotency WHERE gate_id = $1 AND key = $2",
            &[&int(gate_id), &key],
        )?;
        Ok(row.map(|row| unbig(row.get(0))))
    }

    fn coalesced(&self, gate_id: u32, key: &str) -> Result<Option<u64>> {
        let row = one(
            self.read_other()?,
            "SELECT task_id FROM coalesce WHERE gate_id = $1 AND key = $2",
            &[&int(gate_id), &key],
        )?;
        Ok(row.map(|row| unbig(row.get(0))))
    }

    fn put_coalesced(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()> {
        self.send(
            "INSERT INTO coalesce VALUES ($1, $2, $3) \
             ON CONFLICT (gate_id, key) DO UPDATE SET task_id = EXCLUDED.task_id",
            vec![
                Box::new(int(gate_id)),
                Box::new(key.to_string()),
                Box::new(big(task_id)),
            ],
        );
        Ok(())
    }

    fn claim_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<Option<u64>> {
        // A concurrent claim of the same key waits here, on the unique
        // index, for the other transaction; after its commit this inserts
        // nothing, and the read (a new snapshot) sees its row.
        let claimed = one(
            self.read_other()?,
            "INSERT INTO idempotency VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING task_id",
            &[&int(gate_id), &key, &big(task_id)],
        )?;
        if claimed.is_some() {
            return Ok(None);
        }
        self.idempotent(gate_id, key)
    }

    fn put_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()> {
        self.send(
            "INSERT INTO idempotency VALUES ($1, $2, $3) \
             ON CONFLICT (gate_id, key) DO UPDATE SET task_id = EXCLUDED.task_id",
            vec![
                Box::new(int(gate_id)),
                Box::new(key.to_string()),
                Box::new(big(task_id)),
            ],
        );
        Ok(())
    }

    fn forget_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()> {
        self.send(
            "DELETE FROM idempotency WHERE gate_id = $1 AND key = $2 AND task_id = $3",
            vec![
                Box::new(int(gate_id)),
                Box::new(key.to_string()),
                Box::new(big(task_id)),
            ],
        );
        Ok(())
    }

    fn all_counts(&self) -> Result<Vec<(u32, Counts)>> {
        let found = rows(
            self.read_other()?,
            "SELECT gate_id, record FROM counts",
            &[],
        )?;
        Ok(found
            .iter()
            .map(|row| (unint(row.get(0)), Counts::decode(row.get::<_, &[u8]>(1))))
            .collect())
    }

    fn put_counts(&mut self, gate_id: u32, counts: &Counts) -> Result<()> {
        self.send(
            "INSERT INTO counts VALUES ($1, $2) ON CONFLICT (gate_id) DO UPDATE SET record = EXCLUDED.record",
            vec![Box::new(int(gate_id)), Box::new(counts.encode().to_vec())],
        );
        Ok(())
    }

    fn notify(&mut self, notices: &[Notice]) -> Result<()> {
        for (channel, lines) in super::listen::payloads(notices) {
            self.send(
                "SELECT pg_notify($1, current_schema() || $2)",
                vec![Box::new(channel), Box::new(lines)],
            );
        }
        Ok(())
    }

    fn add_counts(&mut self, deltas: &[(u32, CountsDelta)]) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<i32> = deltas.iter().map(|(g, _)| int(*g)).collect();
        ids.sort_unstable();
        ids.dedup();
        // Every row there to lock (a gate's first count makes it), then
        // locked in gate order, so two writers never wait on each other in
        // a cycle.
        self.send(
            "INSERT INTO counts SELECT unnest($1::int[]), $2 ON CONFLICT DO NOTHING",
            vec![
                Box::new(ids.clone()),
                Box::new(Counts::default().encode().to_vec()),
            ],
        );
        let found = rows(
            self.read_other()?,
            "SELECT gate_id, record FROM counts WHERE gate_id = ANY($1) ORDER BY gate_id FOR UPDATE",
            &[&ids],
        )?;
        let mut counts: BTreeMap<u32, Counts> = found
            .iter()
            .map(|row| (unint(row.get(0)), Counts::decode(row.get::<_, &[u8]>(1))))
            .collect();
        for (gate_id, delta) in deltas {
            counts.entry(*gate_id).or_default().apply(delta);
        }
        for (gate_id, total) in counts {
            self.put_counts(gate_id, &total)?;
        }
        Ok(())
    }

    fn plugins(&self) -> Result<Vec<PluginRecord>> {
        records(
            "plugins",
            rows(self.read_other()?, "SELECT record FROM plugins", &[])?,
        )
    }

    fn put_plugin(&mut self, plugin: &PluginRecord) -> Result<()> {
        self.send(
            "INSERT INTO plugins VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record",
            vec![
                Box::new(plugin_key(&plugin.name, &plugin.version)),
                Box::new(encode(plugin)),
            ],
        );
        Ok(())
    }

    fn plugin(&self, key: &str) -> Result<Option<PluginRecord>> {
        self.plugin_row(
            "SELECT record FROM plugins WHERE key = $1 FOR KEY SHARE",
            key,
        )
    }

    /// A row lock cannot hold a key that is not there yet: two first
    /// uploads of one version on two nodes would both find it missing and
    /// the second would write over the first. The key's advisory lock (to
    /// the commit) puts the second after the first, and the read, a
    /// statement of its own, sees what the first committed.
    fn lock_plugin(&mut self, key: &str) -> Result<Option<PluginRecord>> {
        self.send(
            "SELECT pg_advisory_xact_lock(7206318, hashtext($1))",
            vec![Box::new(key.to_string())],
        );
        self.plugin_row("SELECT record FROM plugins WHERE key = $1 FOR UPDATE", key)
    }

    /// `FOR NO KEY UPDATE`, the lock an update of the record takes anyway:
    /// it lets the share locks of other nodes' creates be (`FOR UPDATE`
    /// would wait for them while they waited for this, a deadlock for
    /// PostgreSQL to break by failing one commit). A delete's `FOR UPDATE`
    /// still waits for every count in flight.
    fn add_plugin_refs(&mut self, refs: &[(String, i64)]) -> Result<()> {
        if refs.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = refs.iter().map(|(k, _)| k.as_str()).collect();
        let found: Vec<PluginRecord> = records(
            "plugins",
            rows(
                self.read_other()?,
                "SELECT record FROM plugins WHERE key = ANY($1) ORDER BY key FOR NO KEY UPDATE",
                &[&keys],
            )?,
        )?;
        for mut plugin in found {
            let key = plugin_key(&plugin.name, &plugin.version);
            let delta: i64 = refs.iter().filter(|(k, _)| *k == key).map(|(_, d)| d).sum();
            plugin.unfinished = plugin.unfinished.saturating_add_signed(delta);
            self.put_plugin(&plugin)?;
        }
        Ok(())
    }

    fn put_plugin_wasm(&mut self, key: &str, wasm: &[u8]) -> Result<()> {
        self.send(
            "INSERT INTO plugin_wasm VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET wasm = EXCLUDED.wasm",
            vec![Box::new(key.to_string()), Box::new(wasm.to_vec())],
        );
        Ok(())
    }

    fn put_compiled(&mut self, key: &str, engine: u64, artifact: &[u8]) -> Result<()> {
        self.send(
            "INSERT INTO plugin_compiled VALUES ($1, $2, $3) \
             ON CONFLICT (key, engine) DO UPDATE SET artifact = EXCLUDED.artifact",
            vec![
                Box::new(key.to_string()),
                Box::new(engine as i64),
                Box::new(artifact.to_vec()),
            ],
        );
        Ok(())
    }

    fn delete_plugin(&mut self, key: &str) -> Result<()> {
        for sql in [
            "DELETE FROM plugins WHERE key = $1",
            "DELETE FROM plugin_wasm WHERE key = $1",
            "DELETE FROM plugin_compiled WHERE key = $1",
        ] {
            self.send(sql, vec![Box::new(key.to_string())]);
        }
        Ok(())
    }

    fn descendants(&self, root: u64) -> Result<u32> {
        let row = one(
            self.read_other()?,
            "SELECT n FROM lineage WHERE root = $1",
            &[&big(root)],
        )?;
        Ok(row.map_or(0, |row| unint(row.get(0))))
    }

    fn set_descendants(&mut self, root: u64, count: u32) -> Result<()> {
        self.send(
            "INSERT INTO lineage VALUES ($1, $2) ON CONFLICT (root) DO UPDATE SET n = EXCLUDED.n",
            vec![Box::new(big(root)), Box::new(int(count))],
        );
        Ok(())
    }

    fn add_descendants(&mut self, root: u64, n: i64, max: u32) -> Result<Option<u32>> {
        let max = i64::from(max);
        if n > max {
            return Ok(None);
        }
        // The update takes the row's lock to the commit: a writer on
        // another node adding to the same root waits, then sees this sum.
        let row = one(
            self.read_other()?,
            "INSERT INTO lineage VALUES ($1, greatest($2::bigint, 0)::int) ON CONFLICT (root) \
             DO UPDATE SET n = greatest(lineage.n + $2::bigint, 0)::int \
             WHERE $2::bigint <= 0 OR lineage.n + $2::bigint <= $3::bigint RETURNING n",
            &[&big(root), &n, &max],
        )?;
        Ok(row.map(|row| unint(row.get(0))))
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        records(
            "schedules",
            rows(self.read_other()?, "SELECT record FROM schedules", &[])?,
        )
    }

    fn put_schedule(&mut self, schedule: &ScheduleRecord) -> Result<()> {
        self.send(
            "INSERT INTO schedules VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
            vec![Box::new(schedule.name.clone()), Box::new(encode(schedule))],
        );
        Ok(())
    }

    fn delete_schedule(&mut self, name: &str) -> Result<()> {
        self.send(
            "DELETE FROM schedules WHERE name = $1",
            vec![Box::new(name.to_string())],
        );
        Ok(())
    }

    fn delete_counts(&mut self, gate_id: u32) -> Result<()> {
        self.send(
            "DELETE FROM counts WHERE gate_id = $1",
            vec![Box::new(int(gate_id))],
        );
        Ok(())
    }

    fn put_replay(&mut self, replay: &ReplayRecord) -> Result<()> {
        self.send(
            "INSERT INTO replays VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            vec![Box::new(replay.id.clone()), Box::new(encode(replay))],
        );
        Ok(())
    }

    fn delete_replay(&mut self, id: &str) -> Result<()> {
        self.send(
            "DELETE FROM replays WHERE id = $1",
            vec![Box::new(id.to_string())],
        );
        Ok(())
    }
}
