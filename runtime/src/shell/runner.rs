//! `Runner`, the async loop around the engine: channels, timers, the release
//! pacer, plugin permits, retention.

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
        loop {
            let mut batch_commands = Vec::new();
            let mut batch_reports = Vec::new();
            let wake = self.engine.poll_timeout();
            tokio::select! {
                biased;
                () = sleep_until_instant(self.deadline.as_ref().map(|d| tokio::time::Instant::from_std(d.at()))), if self.deadline.is_some() => {
                    if self.deadline.as_ref().is_some_and(|d| !d.valid()) {
                        // Another node may own the gates from now on: stop
                        // at once, without a commit or a grace period.
                        self.ready.store(false, Ordering::Release);
                        tracing::warn!(in_flight = self.engine.running(), "the lease on the gates ran out; this node stops dispatching");
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
                () = sleep_until(wake), if wake.is_some() => {}
                () = tokio::time::sleep_until(next_prune), if grace_until.is_none() => {
                    let more = self.engine.prune(clock::now(), self.retention)?;
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
            let plans = self
                .engine
                .turn(clock::now(), batch_commands, batch_reports)?;
            self.release(plans);
            self.grant();
            if grace_until.is_some() && self.engine.running() == 0 {
                tracing::info!("all attempts settled; driver stopped");
                return Ok(());
            }
        }
    }

    /// When an admitted attempt (or a plugin request) may leave: not before
    /// its slot time `at`, chosen by the core ahead of the commit, and not
    /// before a second bucket on the real clock, at the gate's rate and burst,
    /// has a token. The slot times conform to the gate, so when the commit is
    /// done in time the second bucket never holds a release back; when a
    /// commit runs late, it keeps the releases that were waiting for it from
    /// bunching at the endpoint. It only ever delays: what may start at all is
    /// the core's decision.
    pub(super) fn release_at(
        &mut self,
        now: std::time::Instant,
        wall: Timestamp,
        gate: GateId,
        at: Timestamp,
    ) -> std::time::Instant {
        let due = now + at.since(wall);
        let Some((rate, burst)) = self.engine.core.pace(wall, gate) else {
            return due;
        };
        // A hair under the gate's rate, so a millisecond or two of jitter between
        // here and the endpoint cannot push a window over the bound.
        let rate = (rate * PACER_MARGIN).max(1e-6);
        let cap = f64::from(burst.max(1));
        let pacer = self.pacers.entry(gate.0).or_insert((cap, due));
        if due > pacer.1 {
            pacer.0 = (pacer.0 + rate * due.duration_since(pacer.1).as_secs_f64()).min(cap);
            pacer.1 = due;
        }
        pacer.0 -= 1.0;
        if pacer.0 >= 0.0 {
            due
        } else {
            pacer.1 + Duration::from_secs_f64((-pacer.0 / rate).min(3_600.0))
        }
    }

    /// Starts the attempts of a committed turn on the runtime.
    pub(super) fn release(&mut self, plans: Vec<Plan>) {
        let released = clock::instant();
        let wall = clock::now();
        for plan in plans {
            let release = self.release_at(released, wall, plan.gate_id, plan.release_at);
            let dispatcher = self.dispatcher.clone();
            let reports = self.reports.clone();
            let plugins = matches!(plan.action, Action::Plugin(_)).then(|| self.plugins.clone());
            let permits = self.permits.clone();
            let deadline = self.deadline.clone();
            self.runtime.spawn(async move {
                if release > released {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(release)).await;
                }
                if deadline.as_ref().is_some_and(|d| !d.valid()) {
                    // The lease ran out while this attempt waited: the next
                    // owner runs it (its start is on record, so it is retried).
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
    }

    /// Takes a message of a plugin's request into the core.
    pub(super) fn permit_message(&mut self, message: PermitMessage) {
        let now = clock::now();
        match message {
            PermitMessage::Ask {
                task,
                attempt,
                ask,
                reply,
            } => {
                self.asks
                    .entry(task)
                    .or_default()
                    .push((ask, attempt, reply));
                self.engine
                    .core
                    .handle_input(now, Input::Ask { task, attempt, ask });
            }
            PermitMessage::Ended {
                task,
                attempt,
                signal,
                answered,
            } => {
                if let Some((latency, quota)) = answered {
                    let answered = Input::Answered {
                        task,
                        attempt,
                        latency,
                        quota,
                    };
                    self.engine.core.handle_input(now, answered);
                }
                let ended = Input::RequestEnded {
                    task,
                    attempt,
                    signal,
                };
                self.engine.core.handle_input(now, ended);
            }
        }
    }

    /// Answers the plugin requests the gates allowed in this turn, spaced on the
    /// real clock like attempt releases. A permit nobody waits for any more is
    /// handed back at once.
    pub(super) fn grant(&mut self) {
        let released = clock::instant();
        let wall = clock::now();
        while let Some(permit) = self.engine.core.poll_permit() {
            let (task, attempt, ask) = (permit.task, permit.attempt, permit.ask);
            let waiter = self.asks.get_mut(&task).and_then(|waiting| {
                let i = waiting.iter().position(|w| w.0 == ask && w.1 == attempt)?;
                Some(waiting.swap_remove(i))
            });
            let Some((_, _, reply)) = waiter else {
                // The attempt ended while its request waited: nothing will be
                // sent, so the slot the permit took is free again.
                self.engine.core.handle_input(
                    wall,
                    Input::RequestEnded {
                        task,
                        attempt,
                        signal: crate::core::Signal::Neutral,
                    },
                );
                continue;
            };
            if self.asks.get(&task).is_some_and(Vec::is_empty) {
                self.asks.remove(&task);
            }
            let release = self.release_at(released, wall, permit.gate, permit.at);
            let permits = self.permits.clone();
            let deadline = self.deadline.clone();
            let answer = move || {
                if deadline.is_some_and(|d| !d.valid()) {
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
            if release > released {
                self.runtime.spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(release)).await;
                    answer();
                });
            } else {
                answer();
            }
        }
    }
}

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
