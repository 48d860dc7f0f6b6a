//! Deletes stray instances: those without an owner tag, or past their expiry.
//!
//! Input: `{"api": "http://cloud.internal:8080"}`, optionally with
//! `"owner_tag": "owner"` (the tag that names an owner), `"retry_delay": "60s"`
//! (how long to wait before retrying after the API failed) and
//! `"dry_run": true` (list, delete nothing).
//!
//! `GET {api}/instances` lists instances as
//! `{"id": "i-1", "tags": {"owner": "team-a"}, "expires_at": "2026-12-01T00:00:00Z"}`
//! (`tags` and `expires_at` may be absent). Each stray gets
//! `DELETE {api}/instances/{id}`; a 404 means it is already gone, which is as
//! good. A 5xx or a timeout from the API retries the task after `retry_delay`
//! (or the API's `Retry-After`): deleting is idempotent, so the next attempt
//! lists again and deletes what is left.
//!
//! Output: `{"instances": 40, "strays": 3, "deleted": 2, "already_gone": 1}`.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, Error, HttpError, info};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The cloud API's base URL, such as `http://cloud.internal:8080`.
    api: String,
    /// The tag that names an instance's owner.
    #[serde(default = "owner_tag_default")]
    owner_tag: String,
    /// How long to wait before retrying when the API fails.
    #[serde(default = "retry_delay_default")]
    retry_delay: SignedDuration,
    /// List the strays without deleting them.
    #[serde(default)]
    dry_run: bool,
}

fn owner_tag_default() -> String {
    "owner".into()
}

fn retry_delay_default() -> SignedDuration {
    SignedDuration::from_secs(60)
}

#[derive(Deserialize)]
struct Instance {
    id: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

impl Instance {
    /// No owner to ask, or its owner's lease on it has run out.
    fn is_stray(&self, owner_tag: &str, now: Timestamp) -> bool {
        let owned = self
            .tags
            .get(owner_tag)
            .is_some_and(|owner| !owner.trim().is_empty());
        let expired = self.expires_at.is_some_and(|at| at <= now);
        !owned || expired
    }
}

#[derive(Serialize)]
struct Output {
    instances: usize,
    strays: usize,
    deleted: usize,
    already_gone: usize,
    dry_run: bool,
}

async fn run(ctx: Context, input: Input) -> Result<Output, Error> {
    let retry_delay = Duration::try_from(input.retry_delay)
        .map_err(|_| Error::fail("invalid input: retry_delay must not be negative"))?;
    // The API's trouble retries after `retry_delay`, unless it said how long.
    let api_error = |err: HttpError| match Error::from(err) {
        Error::Retry { after, reason } => Error::Retry {
            after: after.or(Some(retry_delay)),
            reason,
        },
        fail => fail,
    };

    let api = input.api.trim_end_matches('/');
    let http = ctx.http();
    let instances: Vec<Instance> = http
        .get_json(&format!("{api}/instances"))
        .await
        .map_err(api_error)?;
    let now = Timestamp::now();
    let strays: Vec<&Instance> = instances
        .iter()
        .filter(|instance| instance.is_stray(&input.owner_tag, now))
        .collect();
    info!(
        "{} of {} instances are strays",
        strays.len(),
        instances.len()
    );

    let (mut deleted, mut already_gone) = (0, 0);
    for stray in &strays {
        if input.dry_run {
            info!("would delete {}", stray.id);
            continue;
        }
        match http.delete(&format!("{api}/instances/{}", stray.id)).await {
            Ok(_) => {
                info!("deleted {}", stray.id);
                deleted += 1;
            }
            Err(err) if err.status() == Some(404) => {
                info!("{} was already gone", stray.id);
                already_gone += 1;
            }
            Err(err) => return Err(api_error(err)),
        }
    }
    Ok(Output {
        instances: instances.len(),
        strays: strays.len(),
        deleted,
        already_gone,
        dry_run: input.dry_run,
    })
}

sluice_sdk::export!(run);
