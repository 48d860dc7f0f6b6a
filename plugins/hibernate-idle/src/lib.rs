//! Hibernates the apps that have been idle too long.
//!
//! Input: `{"api": "http://apps.internal:8080", "idle_after": "24h"}`.
//! `GET {api}/apps` lists the apps, each with its `last_active` time (RFC 3339).
//! Every app idle for longer than `idle_after` and not already hibernated gets
//! `POST {api}/apps/{id}/hibernate`. `idle_after` is in hours or smaller units
//! (`"90m"`, `"24h"`, `"168h"`), since days vary in length. Every request goes
//! through the task's gate, so a thousand idle apps are hibernated at the
//! gate's pace, not in one burst.
//!
//! Hibernating is idempotent, so a retry simply carries on: an app hibernated by
//! an earlier attempt is listed as `hibernated` and skipped. If the attempt's
//! deadline comes near with apps left, it stops and asks for a retry.
//!
//! Output: `{"apps": 40, "idle": 12, "hibernated": 11, "skipped": 1}`.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, Error, Request, info};

/// Stop starting new requests this close to the deadline.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The apps API's base URL, such as `http://apps.internal:8080`.
    api: String,
    /// How long an app must have been inactive to be hibernated.
    idle_after: SignedDuration,
}

#[derive(Deserialize)]
struct App {
    id: String,
    last_active: Timestamp,
    /// `running`, `hibernated`, ...; absent means running.
    #[serde(default)]
    state: Option<String>,
}

#[derive(Serialize)]
struct Output {
    /// Apps listed.
    apps: usize,
    /// Apps idle past the threshold and not already hibernated.
    idle: usize,
    /// Apps hibernated by this attempt.
    hibernated: usize,
    /// Idle apps the API would not hibernate (gone, or changed state meanwhile).
    skipped: usize,
}

async fn run(ctx: Context, input: Input) -> Result<Output, Error> {
    if input.idle_after.is_negative() {
        return Err(Error::fail(
            "invalid input: idle_after must not be negative",
        ));
    }
    let api = input.api.trim_end_matches('/');
    let http = ctx.http();
    let apps: Vec<App> = http.get_json(&format!("{api}/apps")).await?;
    let now = Timestamp::now();
    let idle: Vec<&App> = apps
        .iter()
        .filter(|app| app.state.as_deref() != Some("hibernated"))
        .filter(|app| now.duration_since(app.last_active) > input.idle_after)
        .collect();
    info!(
        "{} of {} apps idle for over {}",
        idle.len(),
        apps.len(),
        input.idle_after
    );

    let (mut hibernated, mut skipped) = (0, 0);
    for app in &idle {
        if ctx.remaining() < DEADLINE_MARGIN {
            return Err(Error::retry(format!(
                "deadline near after hibernating {hibernated} of {} idle apps; the next attempt carries on",
                idle.len()
            )));
        }
        let url = format!("{api}/apps/{}/hibernate", app.id);
        let response = http.send(Request::post(url)).await?;
        match response.status() {
            // Deleted, or woken up or hibernated by someone else meanwhile.
            404 | 409 => {
                info!("skipped {}: the API answered {}", app.id, response.status());
                skipped += 1;
            }
            _ => {
                response.error_for_status()?;
                info!("hibernated {} (last active {})", app.id, app.last_active);
                hibernated += 1;
            }
        }
    }
    Ok(Output {
        apps: apps.len(),
        idle: idle.len(),
        hibernated,
        skipped,
    })
}

sluice_sdk::export!(run);
