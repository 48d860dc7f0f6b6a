//! `Runner`, the async loop around the engine: channels, timers, sleeping
//! until each release, answering plugin requests, retention.

use futures_util::FutureExt;

use super::*;

impl Runner {
    pub(super) async fn run(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut permits: mpsc::UnboundedReceiver<PermitMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), StoreError> {
        let mut grace_until: Option<tokio::time::Instant> = None;
        // Retention runs a tenth of its period apart (at most a minute), in
        // small commits back to back while there is a backlog of old tasks.
        let prune_every =
            (self.retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut next_prune = tokio::time::Instant::from_std(clock::instant() + prune_every);
        // While the feed of other nodes' creates is lost: when to listen
        // again (and read the gates again meanwhile).
        let mut relisten: Option<tokio::time::Instant> = None;
        loop {
            let mut batch_commands = Vec::new();
            let mut batch_reports = Vec::new();
            let wake = self.engine.poll_timeout();
            tokio::select! {
                biased;
                () = sleep_until_instant(self.deadline.as_ref().map(|d| tokio::time::Instant::from_std(d.at()))), if self.deadline.is_some() => {
                    if self.deadline.as_ref().is_some_and(|d| !d.valid()) {
                        // Another node may own this node's units from now
                        // on: stop at once, without a commit or a grace
                        // period.
                        self.ready.store(false, Ordering::Release);
                        tracing::warn!(in_flight = self.engine.running(), "the leases on this node's units ran out; its engine stops dispatching");
                        return Ok(());
                    }
                }
                changed = shutdown.changed(), if grace_until.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        self.ready.store(false, Ordering::Release);
                        self.engine.begin_shutdown();
                        grace_until = Some(tokio::time::Instant::from_std(clock::instant() + self.grace));
                        tracing::info!(in_flight = self.engine.running(), "shutting down: no new attempts start");
                    }
                }
                Some(report) = reports.recv() => batch_reports.push(report),
                Some(message) = permits.recv() => {
                    self.permit_message(message);
                    while let Ok(message) = permits.try_recv() {
                        self.permit_message(message);
                    }
                }
                Some(command) = commands.recv() => batch_commands.push(command),
                heard = next_heard(&mut self.heard) => match heard {
                    Some(notices) => {
                        let now = clock::now();
                        self.engine.appeared(now, notices);
                        while let Some(Some(more)) = self.heard.as_mut().and_then(|h| std::future::poll_fn(|cx| h.poll_notices(cx)).now_or_never()) {
                            self.engine.appeared(now, more);
                        }
                    }
                    None => {
                        tracing::warn!("lost the feed of other nodes' creates; reading the gates again");
                        self.heard = None;
                        self.engine.reload_all(clock::now());
                        relisten = Some(tokio::time::Instant::from_std(clock::instant() + RELISTEN));
                    }
                },
                () = sleep_until_instant(relisten), if relisten.is_some() => {
                    match self.engine.store.listen(self.engine.loaded) {
                        Ok(heard) => {
                            self.heard = heard;
                            relisten = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not listen for other nodes' creates");
                            relisten = Some(tokio::time::Instant::from_std(clock::instant() + RELISTEN));
                        }
                    }
                    // What was created while no one listened.
                    self.engine.reload_all(clock::now());
                }
                () = sleep_until(wake), if wake.is_some() => {}
                () = tokio::time::sleep_until(next_prune), if grace_until.is_none() => {
                    // Retention is the business of the engine that runs
                    // unit 0 (every unit, on one node): finished tasks are
                    // no engine's to hold.
                    let began = clock::now();
                    let more = self.engine.loaded.has(0)
                        && self.engine.prune(began, self.retention)?;
                    self.engine.was_busy(began, clock::now());
                    // The spacers of gates deleted or handed over since.
                    let gates = &self.engine.gate_names;
                    self.spacers.retain(|gate, _| gates.contains_key(gate));
                    let pause = if more { Duration::from_millis(10) } else { prune_every };
                    next_prune = tokio::time::Instant::from_std(clock::instant() + pause);
                    continue;
                }
                () = sleep_until_instant(grace_until), if grace_until.is_some() => {
                    tracing::warn!(in_flight = self.engine.running(), "grace period over; unfinished attempts will be retried after restart");
                    return Ok(());
                }
            }
            while batch_reports.len() < TURN_REPORTS {
                match reports.try_recv() {
                    Ok(r) => batch_reports.push(r),
                    Err(_) => break,
                }
            }
            while batch_commands.len() < TURN_COMMANDS {
                match commands.try_recv() {
                    Ok(c) => batch_commands.push(c),
                    Err(_) => break,
                }
            }
            for report in &batch_reports {
                // Whatever the attempt still waited for, it waits no more.
                self.asks.remove(&report.task);
            }
            // What a gate paused from here on admitted ahead, in this turn
            // or before, stays (numbered before the pause's commit and
            // answer).
            let unpaused = self.pauses.seen();
            for command in &batch_commands {
                if let Command::SetPaused {
                    name, paused: true, ..
                } = command
                    && let Some(gate) = self.engine.gates.get(name)
                {
                    self.pauses.pause(gate.id);
                }
            }
            // Changes to the units come after the turn: each writes (and
            // waits for) its own commit.
            let (orders, batch_commands): (Vec<Command>, Vec<Command>) = batch_commands
                .into_iter()
                .partition(|c| matches!(c, Command::Units { .. }));
            let (began, commands, reports) =
                (clock::instant(), batch_commands.len(), batch_reports.len());
            let plans = self
                .engine
                .turn(clock::now(), batch_commands, batch_reports)?;
            let took = clock::instant().saturating_duration_since(began);
            if took >= SLOW_TURN {
                // Every task due meanwhile leaves late by about this much:
                // worth a line, so a stall of the disk or the database shows.
                let (ms, work_ms) = (took.as_millis(), self.engine.last_work.as_millis());
                tracing::warn!(
                    ms,
                    work_ms,
                    commands,
                    reports,
                    starts = plans.len(),
                    "a turn took long"
                );
            }
            self.release(plans, unpaused);
            for order in orders {
                if let Command::Units { order, reply } = order {
                    let began = clock::instant();
                    let done = self.order(order);
                    let took = clock::instant().saturating_duration_since(began);
                    if took >= SLOW_TURN {
                        // Nothing was dispatched meanwhile: worth a line too.
                        tracing::warn!(
                            ms = took.as_millis(),
                            ?order,
                            "a change of units took long"
                        );
                    }
                    // A failed adopt leaves the engine half way: it stops
                    // (and whoever asked starts another).
                    let _ =
                        reply.send(done.as_ref().map_err(|_| ShellError::ShuttingDown).copied());
                    done?;
                }
            }
            if grace_until.is_some() && self.engine.running() == 0 {
                tracing::info!("all attempts settled; driver stopped");
                return Ok(());
            }
        }
    }

    /// Applies a change to the units the engine runs (`UnitsOrder`).
    fn order(&mut self, order: UnitsOrder) -> Result<usize, StoreError> {
        let now = clock::now();
        match order {
            UnitsOrder::Adopt(units, start) => {
                // Listening first, as at boot: a create committed after
                // this is heard of, one before it is read by the adopt. On
                // the feed already open (a new connection would hold up
                // the gates run here a while longer), else on a new one.
                let also = self.heard.as_ref().map(|heard| heard.listen_also(units));
                if !matches!(also, Some(Ok(()))) {
                    let heard = self.engine.store.listen(self.engine.loaded.with(units))?;
                    if heard.is_some() {
                        self.heard = heard;
                    }
                }
                self.engine.adopt(now, units, start)?;
                Ok(0)
            }
            UnitsOrder::Stop(units) => {
                self.engine.stop_units(now, units);
                Ok(0)
            }
            UnitsOrder::Busy(units) => Ok(self.engine.busy(units)),
            UnitsOrder::Idle(units) => {
                let idle: Units = (units.iter())
                    .filter(|unit| self.engine.busy(Units::one(*unit)) == 0)
                    .collect();
                Ok(usize::try_from(idle.bits()).unwrap_or(0))
            }
            UnitsOrder::Drop(units) => {
                // First: what waits for its slot time must not leave.
                for unit in units.iter() {
                    if let Some(drops) = self.drops.get(unit as usize) {
                        drops.fetch_add(1, Ordering::AcqRel);
                    }
                }
                self.engine.drop_units(now, units);
                // Their notices would be read and thrown away from now on.
                if let Some(Err(e)) = self.heard.as_ref().map(|h| h.listen_no_more(units)) {
                    tracing::debug!(error = %e, "could not stop listening for units handed over");
                }
                Ok(0)
            }
        }
    }

    /// Whether what the gate named `gate` admits now may still leave when
    /// its time comes: its unit has not been dropped since (even if it was
    /// adopted again: the new run's bucket started empty without it).
    /// Checked right before sending.
    fn may_leave(&self, gate: Option<&str>) -> impl Fn() -> bool + Send + 'static {
        let drops = self.drops.clone();
        let unit = gate.map(|gate| unit_of(gate, UNITS) as usize);
        let seen = unit
            .and_then(|u| drops.get(u))
            .map(|d| d.load(Ordering::Acquire));
        move || match (unit.and_then(|u| drops.get(u)), seen) {
            (Some(drops), Some(seen)) => drops.load(Ordering::Acquire) == seen,
            _ => true,
        }
    }

    /// Starts the attempts of a committed turn and answers the plugin
    /// requests its gates allowed, each when the engine's pacer says; an
    /// attempt of a gate paused after pause number `unpaused` stays.
    pub(super) fn release(&mut self, plans: Vec<Plan>, unpaused: u64) {
        let released = clock::instant();
        let done = clock::now();
        let Released { attempts, grants } = self.engine.release(done, plans);
        for (after, plan) in attempts {
            let release = released + after;
            let spacing = self.spacing(done, plan.gate_id);
            let dispatcher = self.dispatcher.clone();
            let reports = self.reports.clone();
            let plugins = matches!(plan.action, Action::Plugin(_)).then(|| self.plugins.clone());
            let permits = self.permits.clone();
            let deadline = self.deadline.clone();
            let may_leave = self.may_leave(Some(&plan.gate));
            let pauses = self.pauses.clone();
            self.runtime.spawn(async move {
                if !after.is_zero() {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(release)).await;
                }
                spaced(spacing).await;
                let slot = plan.release_at;
                let covered = match &deadline {
                    None => true,
                    Some(deadline) => deadline.admits(slot).await,
                };
                if !covered || !may_leave() || reports.is_closed() {
                    // The lease ran out (or the unit was handed over, or
                    // the engine stopped on a failed commit) while this
                    // attempt waited: the next owner (or engine) runs it
                    // (its start is on record, so it is held, then retried;
                    // or put straight back in the queue if its slot time is
                    // past this node's mark, as it never left). No engine
                    // would hear how it went.
                    return;
                }
                if pauses.since(plan.gate_id.0, unpaused) {
                    // Paused before its slot time: it stays, and goes back
                    // to the queue as it was.
                    let why = "never sent: its gate was paused before its slot time; queued again";
                    let report =
                        plugin::never_ran(plan.task, plan.attempt, Outcome::Withdrawn, why.into());
                    let _ = reports.send(report);
                    return;
                }
                let run = async {
                    match plugins {
                        None => dispatcher.run(plan).await,
                        Some(Some(host)) => host.run(plan, dispatcher, permits).await,
                        Some(None) => plugin::unavailable(plan),
                    }
                };
                let report = match deadline {
                    None => run.await,
                    // A lookup or a connect still under way when the lease
                    // runs out is dropped before anything is written, and
                    // the driver, which stopped, wants no report.
                    Some(deadline) => tokio::select! {
                        report = run => report,
                        () = deadline.lapsed() => return,
                    },
                };
                let _ = reports.send(report);
            });
        }
        for (after, grant) in grants {
            let Grant { task, attempt, ask } = grant;
            let waiter = self.asks.get_mut(&task).and_then(|waiting| {
                let i = waiting.iter().position(|w| w.0 == ask && w.1 == attempt)?;
                Some(waiting.swap_remove(i))
            });
            if self.asks.get(&task).is_some_and(Vec::is_empty) {
                self.asks.remove(&task);
            }
            let Some((_, _, reply)) = waiter else {
                // The engine and this map forget a task's requests together
                // (at its report), so this does not happen; if it did, the
                // slot goes back.
                let neutral = crate::core::Signal::Neutral;
                self.engine
                    .request_ended(done, task, attempt, neutral, None);
                continue;
            };
            let permits = self.permits.clone();
            let deadline = self.deadline.clone();
            let gate = (self.engine.core.gate_of(task))
                .and_then(|gate| self.engine.gate_names.get(&gate.0));
            let may_leave = self.may_leave(gate.map(String::as_str));
            let answer = move || {
                if deadline.is_some_and(|d| !d.valid()) || !may_leave() {
                    // Dropping the reply refuses the request: the lease is gone.
                    return;
                }
                if reply.send(()).is_err() {
                    let _ = permits.send(PermitMessage::Ended {
                        task,
                        attempt,
                        signal: crate::core::Signal::Neutral,
                        answered: None,
                    });
                }
            };
            let spacing = self
                .engine
                .core
                .gate_of(task)
                .and_then(|gate| self.spacing(done, gate));
            if after.is_zero() {
                let wait = spacing.map_or(Duration::ZERO, |s| s.wait());
                if wait.is_zero() {
                    answer();
                } else {
                    self.runtime.spawn(async move {
                        tokio::time::sleep(wait).await;
                        answer();
                    });
                }
            } else {
                let release = released + after;
                self.runtime.spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(release)).await;
                    spaced(spacing).await;
                    answer();
                });
            }
        }
    }

    /// The gate's spacer, with its rate and burst as of `now`.
    fn spacing(&mut self, now: Timestamp, gate: GateId) -> Option<Spacing> {
        let (rate, burst) = self.engine.core.pace(now, gate)?;
        let spacer = self
            .spacers
            .entry(gate.0)
            .or_insert_with(|| Arc::new(Spacer::new()))
            .clone();
        Some(Spacing {
            spacer,
            rate,
            burst,
        })
    }

    /// Takes a message of a plugin's request to the engine.
    pub(super) fn permit_message(&mut self, message: PermitMessage) {
        let now = clock::now();
        match message {
            PermitMessage::Ask {
                task,
                attempt,
                ask,
                reply,
            } => {
                // A request refused (dropping its reply) once the attempt's
                // report is in: the plugin has stopped listening anyway.
                if self.engine.ask(now, task, attempt, ask) {
                    self.asks
                        .entry(task)
                        .or_default()
                        .push((ask, attempt, reply));
                }
            }
            PermitMessage::Ended {
                task,
                attempt,
                signal,
                answered,
            } => self
                .engine
                .request_ended(now, task, attempt, signal, answered),
        }
    }
}

/// A release's check with its gate's [`Spacer`] as it wakes.
struct Spacing {
    spacer: Arc<Spacer>,
    rate: f64,
    burst: u32,
}

impl Spacing {
    /// Takes the release's token now: how long it waits for it.
    fn wait(&self) -> Duration {
        self.spacer.wait(self.rate, self.burst)
    }
}

/// Waits until the release's spacer lets it leave.
async fn spaced(spacing: Option<Spacing>) {
    let wait = spacing.map_or(Duration::ZERO, |s| s.wait());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// How often a lost feed of other nodes' creates is tried again; the
/// gates are read again each time, so their tasks start meanwhile.
const RELISTEN: Duration = Duration::from_secs(1);

/// The next notices of the feed; never, without one.
async fn next_heard(heard: &mut Option<Box<dyn Heard>>) -> Option<Vec<Notice>> {
    match heard {
        Some(heard) => std::future::poll_fn(|cx| heard.poll_notices(cx)).await,
        None => std::future::pending().await,
    }
}

/// A turn this long is logged.
const SLOW_TURN: Duration = Duration::from_millis(200);

async fn sleep_until(at: Option<Timestamp>) {
    match at {
        Some(at) => tokio::time::sleep_until(clock::deadline(at)).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_instant(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
