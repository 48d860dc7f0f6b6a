//! Paced replay (SPEC §1): failed or expired tasks that match a filter run
//! again through their gates, paced like any task.
//!
//! A replay is a job: it walks the matching tasks newest first, a page at a
//! time, and hands each page to the engine as one command (one bounded
//! commit, between dispatch turns) together with the job's record after the
//! page. So the job is as durable as its tasks: accepted only once its
//! record is committed, and after a restart (or on the node that takes the
//! gates over) it goes on from the page after the last one committed. It can
//! be cancelled between pages.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::core::Timestamp;
use crate::store::{GateRecord, ReplayEnd, ReplayRecord};

/// Tasks per page: per commit of the engine.
pub const REPLAY_PAGE: usize = 250;
/// The least time between two pages: a walk writes at most 10,000 tasks a
/// second (a million in 100 s, far faster than any gate drains them).
const PAGE_EVERY: std::time::Duration = std::time::Duration::from_millis(25);
/// Ended jobs kept for their `GET`.
const KEEP_JOBS: usize = 100;
/// How often a node of a cluster looks for replays to go on with.
const RESUME_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Deserialize, Debug, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Only this gate's tasks; all gates when absent.
    pub gate: Option<String>,
    /// `failed` (default), `expired` or `superseded`.
    pub state: Option<String>,
    /// Finished at or after this instant (RFC 3339).
    pub since: Option<String>,
    /// Finished at or before this instant (RFC 3339).
    pub until: Option<String>,
    /// `key:value`.
    pub label: Option<String>,
    /// Only the tasks of this key (the tenant within the gate).
    pub key: Option<String>,
    /// Answer the count and the drain time, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A dry run's answer.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct ReplayEstimate {
    pub dry_run: bool,
    /// Tasks that match now.
    pub count: u64,
    /// Seconds to start them all at each gate's current effective rate,
    /// behind what is already due there (the slowest gate's).
    #[schema(required)]
    pub eta_s: Option<f64>,
    pub gates: Vec<ReplayGate>,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct ReplayGate {
    pub gate: String,
    pub count: u64,
    /// `null` when the gate is paused.
    #[schema(required)]
    pub eta_s: Option<f64>,
}

/// A replay job.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct ReplayView {
    pub id: String,
    /// `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    /// Matching tasks found so far.
    pub matched: u64,
    /// Tasks that run again (a match that moved on before its page, say
    /// retried by hand, is not counted).
    pub replayed: u64,
    #[schema(format = DateTime)]
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

pub struct Job {
    id: String,
    started_at: u64,
    filter: TaskFilter,
    matched: AtomicU64,
    replayed: AtomicU64,
    cancelled: AtomicBool,
    /// Where the walk goes on: below this task id (`None` before the first
    /// page, `Some(0)` once the last page is done).
    cursor: Mutex<Option<u64>>,
    end: Mutex<Option<ReplayEnd>>,
}

impl Job {
    fn new(filter: TaskFilter, started_at: u64) -> Job {
        Job {
            id: format!("rp_{}", request_id::fresh()),
            started_at,
            filter,
            matched: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
            cursor: Mutex::new(None),
            end: Mutex::new(None),
        }
    }

    fn of(record: ReplayRecord) -> Job {
        Job {
            id: record.id,
            started_at: record.started_at,
            filter: record.filter,
            matched: AtomicU64::new(record.matched),
            replayed: AtomicU64::new(record.replayed),
            cancelled: AtomicBool::new(record.cancelled),
            cursor: Mutex::new(record.cursor),
            end: Mutex::new(record.ended),
        }
    }

    fn record(&self) -> ReplayRecord {
        ReplayRecord {
            id: self.id.clone(),
            filter: self.filter.clone(),
            cursor: self.cursor.lock().ok().and_then(|c| *c),
            matched: self.matched.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            started_at: self.started_at,
            cancelled: self.cancelled.load(Ordering::Relaxed),
            ended: self.end.lock().ok().and_then(|e| e.clone()),
        }
    }

    fn ended(&self) -> bool {
        self.end.lock().is_ok_and(|e| e.is_some())
    }

    fn view(&self) -> ReplayView {
        let end = self.end.lock().ok().and_then(|e| e.clone());
        ReplayView {
            id: self.id.clone(),
            state: end
                .as_ref()
                .map_or("running", |e| e.state.as_str())
                .to_string(),
            matched: self.matched.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            started_at: Timestamp(self.started_at).rfc3339(),
            finished_at: end.as_ref().map(|e| Timestamp(e.at).rfc3339()),
            error: end.and_then(|e| e.error),
        }
    }
}

/// The jobs this server knows: those it runs and the last that ended.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
}

impl Jobs {
    fn add(&self, job: Arc<Job>) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(job.id.clone(), job);
        }
    }

    /// The ended jobs beyond the newest `KEEP_JOBS`, which a new one's
    /// record forgets.
    fn surplus(&self) -> Vec<String> {
        let Ok(mut jobs) = self.jobs.lock() else {
            return Vec::new();
        };
        let mut ended: Vec<(u64, String)> = jobs
            .values()
            .filter(|j| j.ended())
            .map(|j| (j.started_at, j.id.clone()))
            .collect();
        ended.sort();
        let surplus: Vec<String> = ended
            .into_iter()
            .rev()
            .skip(KEEP_JOBS)
            .map(|(_, id)| id)
            .collect();
        for id in &surplus {
            jobs.remove(id);
        }
        surplus
    }

    fn find(&self, id: &str) -> Result<Arc<Job>, ApiError> {
        self.jobs
            .lock()
            .ok()
            .and_then(|j| j.get(id).cloned())
            .ok_or_else(|| ApiError::not_found(format!("replay {id:?} not found")))
    }

    fn forget(&self, id: &str) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(id);
        }
    }

    fn has(&self, id: &str) -> bool {
        self.jobs.lock().is_ok_and(|j| j.contains_key(id))
    }
}

fn filter_of(body: &ReplayBody) -> Result<TaskFilter, ApiError> {
    let state = match body.state.as_deref().unwrap_or("failed") {
        "failed" => TaskState::Failed,
        "expired" => TaskState::Expired,
        "superseded" => TaskState::Superseded,
        _ => {
            return Err(ApiError::field(
                "state",
                "state is failed, expired or superseded",
            ));
        }
    };
    let instant = |field: &str, text: &Option<String>| -> Result<Option<u64>, ApiError> {
        text.as_deref()
            .map(|t| {
                t.parse::<jiff::Timestamp>()
                    .map(|ts| ts.as_millisecond().max(0) as u64)
                    .map_err(|e| {
                        ApiError::field(
                            field,
                            format!("expected RFC 3339, like 2026-01-02T03:04:05Z: {e}"),
                        )
                    })
            })
            .transpose()
    };
    let since = instant("since", &body.since)?;
    let until = instant("until", &body.until)?;
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(ApiError::field("until", "until is before since"));
    }
    let label = body
        .label
        .as_deref()
        .map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ApiError::field("label", "label filter is key:value"))
        })
        .transpose()?;
    let finished = (since.is_some() || until.is_some())
        .then(|| (since.unwrap_or(0), until.unwrap_or(u64::MAX)));
    if let Some(key) = &body.key {
        super::wire::valid_key(key).map_err(|why| ApiError::field("key", why))?;
    }
    Ok(TaskFilter {
        gate_id: None,
        state: Some(state),
        label,
        finished,
        key: body.key.clone(),
    })
}

/// One page of matching task ids below `before`, with the cursor to go on
/// from (`None`: the walk is over).
fn page(
    store: &Arc<dyn Backend>,
    filter: &TaskFilter,
    before: Option<u64>,
) -> Result<(Vec<TaskRecord>, Option<u64>), ApiError> {
    Ok(store.read()?.list_tasks(filter, before, REPLAY_PAGE)?)
}

#[utoipa::path(
    post,
    path = "/tasks/replay",
    tag = "tasks",
    request_body = ReplayBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A dry run: the count and the drain time", body = ReplayEstimate),
        (status = 202, description = "The replay started; follow it at its `id`", body = ReplayView),
        (status = 400, description = "Invalid filter; `field` names it", body = ErrorBody),
        (status = 404, description = "No such gate", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub(super) async fn replay(
    State(state): State<AppState>,
    Body(body): Body<ReplayBody>,
) -> Result<Response, ApiError> {
    let mut filter = filter_of(&body)?;
    let store = state.store.clone();
    if let Some(name) = &body.gate {
        let name = name.clone();
        let gate = tokio::task::spawn_blocking({
            let store = store.clone();
            move || store.read()?.gate(&name)
        })
        .await
        .map_err(|e| ApiError::internal(&e))??;
        match gate {
            Some(g) => filter.gate_id = Some(g.id),
            None => {
                return Err(ApiError::not_found(format!(
                    "gate {:?} not found",
                    body.gate.unwrap_or_default()
                )));
            }
        }
    }
    if body.dry_run {
        return Ok(Json(estimate(&state, filter).await?).into_response());
    }
    let job = Arc::new(Job::new(filter, clock::now().as_ms()));
    // Durable before it is accepted: from here a restart goes on with it.
    let forget = state.replays.surplus();
    state.shell.put_replay(job.record(), forget).await?;
    state.replays.add(job.clone());
    let view = job.view();
    run(&state, job);
    let location = format!("/v1/tasks/replay/{}", view.id);
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Walks the job's pages in the background and records how it ended.
fn run(state: &AppState, job: Arc<Job>) {
    let (store, shell) = (state.store.clone(), state.shell.clone());
    let jobs = state.replays.clone();
    let peers = state.cluster.clone().and_then(|cluster| {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(30))
            .no_proxy()
            .build();
        match http {
            Ok(http) => Some((cluster, http)),
            Err(e) => {
                tracing::warn!(error = %e, "no client for the other nodes: the replay pauses");
                None
            }
        }
    });
    if state.cluster.is_some() && peers.is_none() {
        jobs.forget(&job.id);
        return;
    }
    tokio::spawn(async move {
        let filter = job.filter.clone();
        let mut last = clock::instant();
        let ended = walk(
            &job,
            |before| {
                let (store, filter) = (store.clone(), filter.clone());
                async move {
                    tokio::task::spawn_blocking(move || page(&store, &filter, before))
                        .await
                        .map_err(|e| ApiError::internal(&e))?
                }
            },
            |tasks, record| {
                let (shell, peers) = (shell.clone(), peers.clone());
                // At most one page per `PAGE_EVERY`: the pending tasks drain
                // at their gates' pace anyway, and a walk at full speed
                // takes the cores (and the disk) from dispatch.
                let wait = PAGE_EVERY.saturating_sub(last.elapsed());
                last = clock::instant() + wait;
                async move {
                    tokio::time::sleep(wait).await;
                    match peers {
                        Some((cluster, http)) => {
                            spread_page(&cluster, &http, &shell, tasks, record).await
                        }
                        None => {
                            let ids = tasks.into_iter().map(|(id, _)| id).collect();
                            (shell.replay_tasks(ids, Some(record)).await).map_err(ApiError::from)
                        }
                    }
                }
            },
        )
        .await;
        let (state, error) = match ended {
            Ok(true) => ("cancelled", None),
            Ok(false) => ("done", None),
            // The engine stopped (a shutdown, or this node no longer owns
            // the gates): the record still says running, so whoever runs
            // the engine next goes on with it.
            // Forgotten here, so that `resume` takes it up again when
            // this node runs the engine again.
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::info!(replay = %job.id, "replay paused until the engine runs again: {}", e.message);
                jobs.forget(&job.id);
                return;
            }
            Err(e) => ("failed", Some(e.message)),
        };
        if let Ok(mut end) = job.end.lock() {
            *end = Some(ReplayEnd {
                at: clock::now().as_ms(),
                state: state.into(),
                error,
            });
        }
        if let Err(e) = shell.put_replay(job.record(), Vec::new()).await {
            tracing::warn!(replay = %job.id, "the replay's end was not recorded: {e}");
        }
    });
}

/// The header that carries the cluster's key on the nodes' requests to
/// each other (`/v1/internal/…`).
pub const CLUSTER_KEY: &str = "sluice-cluster-key";

/// The tasks of a page, in a cluster: each owner retries those of its
/// gates (the others' through `POST /v1/internal/retry`, first), and this
/// node's engine its own with the job's record, counting them all. A
/// gate without an owner, or an owner that does not answer, pauses the
/// job (a 503): the page is done again when it goes on, and what was
/// retried already is refused then (it is no longer failed).
async fn spread_page(
    cluster: &crate::cluster::Cluster,
    http: &reqwest::Client,
    shell: &Handle,
    tasks: Vec<(TaskId, String)>,
    mut record: ReplayRecord,
) -> Result<usize, ApiError> {
    let mut mine = Vec::new();
    let mut theirs: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (id, gate) in tasks {
        if cluster.runs(&gate) {
            mine.push(id);
            continue;
        }
        match cluster.owner_of(&gate) {
            Some(owner) if owner.0 != cluster.id() => {
                theirs.entry(owner).or_default().push(id.to_string());
            }
            _ => {
                return Err(ApiError::unavailable(format!(
                    "gate {gate:?} has no owner right now; the replay goes on later"
                )));
            }
        }
    }
    let mut remote = 0;
    for ((owner, address), ids) in theirs {
        let body =
            serde_json::to_vec(&InternalRetry { ids }).map_err(|e| ApiError::internal(&e))?;
        let sent = http
            .post(format!(
                "{}/v1/internal/retry",
                address.trim_end_matches('/')
            ))
            .header(CLUSTER_KEY, cluster.key())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let retried = match sent {
            Ok(answer) if answer.status().is_success() => answer
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<InternalRetried>(&b).ok()),
            _ => None,
        };
        let Some(retried) = retried else {
            return Err(ApiError::unavailable(format!(
                "node {owner} did not retry its part of a replay; it goes on later"
            )));
        };
        remote += retried.replayed;
    }
    record.replayed += remote as u64;
    Ok(shell.replay_tasks(mine, Some(record)).await? + remote)
}

/// `POST /v1/internal/retry`: a page's part of another node's replay.
#[derive(Serialize, Deserialize)]
pub struct InternalRetry {
    pub ids: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub struct InternalRetried {
    pub replayed: usize,
}

/// Retries the tasks another node's replay found in this node's gates. Only
/// a node of the cluster (the key) may ask; to anyone else the route does
/// not exist.
pub(super) async fn internal_retry(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Body(body): Body<InternalRetry>,
) -> Result<Json<InternalRetried>, ApiError> {
    let offered = headers.get(CLUSTER_KEY).map(|k| k.as_bytes());
    let known = (state.cluster.as_ref()).is_some_and(|c| offered.is_some_and(|k| c.knows(k)));
    if !known {
        return Err(ApiError::not_found("no route for /v1/internal/retry"));
    }
    let ids = (body.ids.iter())
        .map(|id| parse_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let replayed = state.shell.replay_tasks(ids, None).await?;
    Ok(Json(InternalRetried { replayed }))
}

/// Picks up the replays that were running when the engine last stopped:
/// at start, and in a cluster whenever this node holds unit 0 (the node
/// that ran a job may have died). Ended jobs are loaded for their `GET`.
pub async fn resume(state: AppState) {
    loop {
        let owns = (state.cluster.as_ref()).is_none_or(|c| c.units_held().0.has(0));
        if owns {
            let store = state.store.clone();
            let records = tokio::task::spawn_blocking(move || store.read()?.replays()).await;
            match records {
                Ok(Ok(records)) => {
                    for record in records {
                        if state.replays.has(&record.id) {
                            continue;
                        }
                        let running = record.ended.is_none();
                        let job = Arc::new(Job::of(record));
                        state.replays.add(job.clone());
                        if running {
                            tracing::info!(replay = %job.id, "going on with a replay");
                            run(&state, job);
                        }
                    }
                    if state.cluster.is_none() {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::warn!("reading the replays: {e}"),
                Err(e) => tracing::warn!("reading the replays: {e}"),
            }
        }
        tokio::time::sleep(RESUME_EVERY).await;
    }
}

/// Walks the pages and replays each; answers whether it was cancelled.
/// The cancel is looked at before each page, so a cancelled job commits
/// nothing more. Each page goes to `apply` with the job's record after it.
async fn walk<P, PF, A, AF>(job: &Job, mut next_page: P, mut apply: A) -> Result<bool, ApiError>
where
    P: FnMut(Option<u64>) -> PF,
    PF: std::future::Future<Output = Result<(Vec<TaskRecord>, Option<u64>), ApiError>>,
    A: FnMut(Vec<(TaskId, String)>, ReplayRecord) -> AF,
    AF: std::future::Future<Output = Result<usize, ApiError>>,
{
    let mut cursor = job.cursor.lock().ok().and_then(|c| *c);
    loop {
        if job.cancelled.load(Ordering::Relaxed) {
            return Ok(true);
        }
        if cursor == Some(0) {
            return Ok(false);
        }
        let (tasks, next) = next_page(cursor).await?;
        if job.cancelled.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let after = next.unwrap_or(0);
        let mut record = job.record();
        record.cursor = Some(after);
        record.matched += tasks.len() as u64;
        let page = tasks.iter().map(|t| (TaskId(t.id), t.gate.clone()));
        let replayed = apply(page.collect(), record).await?;
        job.matched.fetch_add(tasks.len() as u64, Ordering::Relaxed);
        job.replayed.fetch_add(replayed as u64, Ordering::Relaxed);
        if let Ok(mut c) = job.cursor.lock() {
            *c = Some(after);
        }
        cursor = Some(after);
    }
}

/// Seconds to start `tasks` at `rate`, to a tenth; `None` while paused.
fn drain_s(tasks: u64, rate: f64, paused: bool) -> Option<f64> {
    (!paused && rate > 0.0).then(|| (tasks as f64 / rate * 10.0).round() / 10.0)
}

/// Counts the matches per gate and what starting them would take.
async fn estimate(state: &AppState, filter: TaskFilter) -> Result<ReplayEstimate, ApiError> {
    let store = state.store.clone();
    type Counted = (HashMap<u32, u64>, Vec<GateRecord>);
    let (mut per_gate, records) =
        tokio::task::spawn_blocking(move || -> Result<Counted, ApiError> {
            let mut counts = HashMap::new();
            let mut cursor = None;
            loop {
                let (tasks, next) = page(&store, &filter, cursor)?;
                for t in &tasks {
                    *counts.entry(t.gate_id).or_default() += 1;
                }
                match next {
                    Some(n) => cursor = Some(n),
                    None => return Ok((counts, store.read()?.gates()?)),
                }
            }
        })
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let mut gates = Vec::new();
    for live in state.shell.live(None).await? {
        let Some(count) = per_gate.remove(&live.record.id) else {
            continue;
        };
        gates.push(ReplayGate {
            gate: live.record.name.clone(),
            count,
            eta_s: drain_s(
                count + live.view.due_in_memory,
                live.view.effective_rate,
                live.record.paused,
            ),
        });
    }
    // Gates another node runs (in a cluster): counted all the same, their
    // time at the rate they are set to, without the work that node holds.
    for record in records {
        let Some(count) = per_gate.remove(&record.id) else {
            continue;
        };
        gates.push(ReplayGate {
            eta_s: drain_s(count, record.rate_per_s, record.paused),
            gate: record.name,
            count,
        });
    }
    gates.sort_by(|a, b| a.gate.cmp(&b.gate));
    let count = gates.iter().map(|g| g.count).sum();
    let eta_s = gates
        .iter()
        .map(|g| g.eta_s)
        .try_fold(0.0f64, |most, eta| eta.map(|e| most.max(e)));
    Ok(ReplayEstimate {
        dry_run: true,
        count,
        eta_s: if count == 0 { Some(0.0) } else { eta_s },
        gates,
    })
}

#[utoipa::path(
    get,
    path = "/tasks/replay/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The replay's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The replay", body = ReplayView),
        (status = 404, description = "No such replay on this server", body = ErrorBody),
    )
)]
pub(super) async fn get_replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ReplayView>, ApiError> {
    Ok(Json(state.replays.find(&id)?.view()))
}

#[utoipa::path(
    delete,
    path = "/tasks/replay/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The replay's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled: no page after the current one is replayed", body = ReplayView),
        (status = 404, description = "No such replay on this server", body = ErrorBody),
    )
)]
pub(super) async fn cancel_replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ReplayView>, ApiError> {
    let job = state.replays.find(&id)?;
    if !job.ended() {
        job.cancelled.store(true, Ordering::Relaxed);
        // Durable at once: a restart before the walk sees it does not go on.
        state.shell.put_replay(job.record(), Vec::new()).await?;
    }
    Ok(Json(job.view()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job::new(TaskFilter::default(), 0)
    }

    fn task(id: u64) -> TaskRecord {
        let mut t: TaskRecord = serde_json::from_value(serde_json::json!({
            "id": id, "gate": "g", "gate_id": 1, "state": "failed",
            "webhook": { "url": "https://a.example/", "method": "POST", "headers": {}, "body": null },
            "created_at": 1, "scheduled_at": 1, "due_at": 1, "timeout_ms": 1000,
            "retry": { "max_attempts": 1, "initial_ms": 1, "max_ms": 1, "multiplier": 2.0,
                       "jitter": false, "max_retry_duration_ms": null },
            "expires_at": null, "idempotency_key": format!("k{id}"), "labels": {},
            "attempts": 1, "first_attempt_at": 1, "last_error": null, "finished_at": 5,
        }))
        .expect("task record");
        t.id = id;
        t
    }

    /// Three pages: every one is replayed, in order, and the walk ends.
    #[test]
    fn every_page_is_replayed() {
        let job = job();
        let applied = Mutex::new(Vec::new());
        let cancelled = futures_executor::block_on(walk(
            &job,
            |before| async move {
                Ok(match before {
                    None => (vec![task(9), task(8)], Some(8)),
                    Some(8) => (vec![task(5)], Some(5)),
                    _ => (vec![task(2)], None),
                })
            },
            |ids, record| {
                let n = ids.len();
                applied.lock().expect("lock").push((ids, record));
                async move { Ok(n) }
            },
        ));
        assert_eq!(cancelled, Ok(false));
        // Each page's record is where the job stands after it: a restart
        // goes on below the cursor, and after the last page at nothing.
        let records: Vec<_> = applied
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, r)| (r.cursor, r.matched))
            .collect();
        assert_eq!(records, [(Some(8), 2), (Some(5), 3), (Some(0), 4)]);
        assert_eq!(job.record().cursor, Some(0));
        assert_eq!(job.matched.load(Ordering::Relaxed), 4);
        assert_eq!(job.replayed.load(Ordering::Relaxed), 4);
        assert_eq!(applied.lock().expect("lock").len(), 3);
    }

    /// A job picked up after a restart goes on below its cursor, with its
    /// counts, and one whose last page was done walks no more.
    #[test]
    fn a_resumed_job_goes_on_below_its_cursor() {
        let mut record = job().record();
        record.cursor = Some(5);
        record.matched = 3;
        record.replayed = 2;
        let resumed = Job::of(record.clone());
        let asked = Mutex::new(Vec::new());
        let cancelled = futures_executor::block_on(walk(
            &resumed,
            |before| {
                asked.lock().expect("lock").push(before);
                async move { Ok((vec![task(2)], None)) }
            },
            |ids, _| async move { Ok(ids.len()) },
        ));
        assert_eq!(cancelled, Ok(false));
        assert_eq!(*asked.lock().expect("lock"), [Some(5)]);
        assert_eq!(resumed.matched.load(Ordering::Relaxed), 4);
        assert_eq!(resumed.replayed.load(Ordering::Relaxed), 3);
        let finished = Job::of(resumed.record());
        let cancelled = futures_executor::block_on(walk(
            &finished,
            |_| async { panic!("a finished walk asked for a page") },
            |_, _| async { Ok(0) },
        ));
        assert_eq!(cancelled, Ok(false));
    }

    /// A cancel takes effect before the next page: nothing more is replayed.
    #[test]
    fn a_cancel_stops_before_the_next_page() {
        let job = job();
        let applied = Mutex::new(0);
        let cancelled = futures_executor::block_on(walk(
            &job,
            |before| async move {
                Ok(match before {
                    None => (vec![task(9)], Some(9)),
                    _ => (vec![task(1)], None),
                })
            },
            |ids, _| {
                *applied.lock().expect("lock") += 1;
                job.cancelled.store(true, Ordering::Relaxed);
                async move { Ok(ids.len()) }
            },
        ));
        assert_eq!(cancelled, Ok(true));
        assert_eq!(*applied.lock().expect("lock"), 1);
        assert_eq!(job.replayed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn filters_are_checked() {
        let body =
            |json: serde_json::Value| -> ReplayBody { serde_json::from_value(json).expect("body") };
        let field = |json| filter_of(&body(json)).err().and_then(|e| e.field);
        assert_eq!(
            field(serde_json::json!({ "state": "running" })).as_deref(),
            Some("state")
        );
        assert_eq!(
            field(serde_json::json!({ "since": "yesterday" })).as_deref(),
            Some("since")
        );
        assert_eq!(
            field(serde_json::json!({ "since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z" }))
                .as_deref(),
            Some("until")
        );
        assert_eq!(
            field(serde_json::json!({ "label": "nocolon" })).as_deref(),
            Some("label")
        );
        let superseded =
            filter_of(&body(serde_json::json!({ "state": "superseded" }))).expect("ok");
        assert!(
            !superseded.matches(&task(1)),
            "a failed task is not superseded"
        );
        let mut replaced = task(2);
        replaced.state = TaskState::Superseded;
        assert!(superseded.matches(&replaced));
        let failed = filter_of(&body(serde_json::json!({}))).expect("ok");
        assert!(failed.matches(&task(1)));
        let window = filter_of(&body(
            serde_json::json!({ "since": "1970-01-01T00:00:00.006Z" }),
        ))
        .expect("ok");
        assert!(!window.matches(&task(1)), "finished at 5 ms, before since");
    }
}
