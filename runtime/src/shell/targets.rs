//! A task's target in its three forms: as validated (`model::Target`), as
//! stored (a record's `webhook` or `plugin`), and as an attempt runs it
//! (`attempt::Action`). The shell is the one place that sees all three.

use super::*;
use crate::model::{Body, PluginCall as CallSpec, Target, Webhook};
use crate::store::{JsonText, PluginCallRecord, WebhookRecord};

/// A validated target as a record's `(webhook, plugin)` pair, one of them set.
pub(super) fn to_records(target: Target) -> (Option<WebhookRecord>, Option<PluginCallRecord>) {
    match target {
        Target::Webhook(w) => (
            Some(WebhookRecord {
                url: w.url,
                method: w.method,
                headers: w.headers,
                body: w.body.map(|b| match b {
                    Body::Json(v) => BodyRecord::Json(JsonText::of(&v)),
                    Body::Text(t) => BodyRecord::Text(t),
                }),
                secret_headers: w.secret_headers,
            }),
            None,
        ),
        Target::Plugin(p) => (
            None,
            Some(PluginCallRecord {
                name: p.name,
                version: p.version,
                input: p.input,
                sha256: None,
            }),
        ),
    }
}

/// A stored `(webhook, plugin)` pair as a target (a schedule's template
/// becoming an occurrence).
pub(super) fn of_records(
    webhook: &Option<WebhookRecord>,
    plugin: &Option<PluginCallRecord>,
) -> Target {
    match (webhook, plugin) {
        (_, Some(p)) => Target::Plugin(CallSpec {
            name: p.name.clone(),
            version: p.version.clone(),
            input: p.input.clone(),
        }),
        (webhook, None) => {
            // Neither is never written; a damaged record gets a target its
            // gate refuses.
            let w = webhook.clone().unwrap_or_else(WebhookRecord::empty);
            Target::Webhook(Webhook {
                url: w.url,
                method: w.method,
                headers: w.headers,
                body: w.body.map(|b| match b {
                    BodyRecord::Json(text) => Body::Json(text.value()),
                    BodyRecord::Text(t) => Body::Text(t),
                }),
                secret_headers: w.secret_headers,
            })
        }
    }
}

/// What an attempt of a stored task does.
pub(super) fn action(record: &TaskRecord) -> Action {
    match (&record.webhook, &record.plugin) {
        (_, Some(p)) => Action::Plugin(PluginCall {
            name: p.name.clone(),
            version: p.version.clone(),
            input: p.input.to_string(),
            sha256: p.sha256.clone(),
        }),
        (webhook, None) => {
            let w = webhook.clone().unwrap_or_else(WebhookRecord::empty);
            let (body, json) = match &w.body {
                None => (Bytes::new(), false),
                Some(BodyRecord::Json(text)) => (Bytes::from(text.as_str().to_owned()), true),
                Some(BodyRecord::Text(t)) => (Bytes::from(t.clone()), false),
            };
            Action::Webhook(Request {
                url: w.url,
                method: w.method,
                headers: w.headers,
                secret_headers: w.secret_headers,
                body,
                json,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_survives_the_record_and_back() {
        let webhook = Target::Webhook(Webhook {
            url: "https://a.example/hook".into(),
            method: "PUT".into(),
            headers: [("authorization".to_string(), "Bearer x".to_string())].into(),
            body: Some(Body::Text("hi".into())),
            secret_headers: ["authorization".to_string()].into(),
        });
        let plugin = Target::Plugin(CallSpec {
            name: "charge".into(),
            version: "1.0.0".into(),
            input: serde_json::json!({ "n": 1 }),
        });
        for target in [webhook, plugin] {
            let (w, p) = to_records(target.clone());
            assert!(w.is_some() != p.is_some(), "exactly one side is set");
            assert_eq!(of_records(&w, &p), target);
        }
    }

    #[test]
    fn a_json_body_goes_out_as_json() {
        let (webhook, plugin) = to_records(Target::Webhook(Webhook {
            url: "https://a.example/".into(),
            method: "POST".into(),
            headers: Default::default(),
            body: Some(Body::Json(serde_json::json!({ "a": 1 }))),
            secret_headers: Default::default(),
        }));
        let record = TaskRecord {
            webhook,
            plugin,
            ..serde_json::from_value(serde_json::json!({
                "id": 1, "gate": "g", "gate_id": 1, "state": "scheduled",
                "created_at": 1, "scheduled_at": 1, "due_at": 1, "timeout_ms": 1000,
                "retry": { "max_attempts": 3, "initial_ms": 1, "max_ms": 1, "multiplier": 2.0,
                           "jitter": false, "max_retry_duration_ms": null },
                "expires_at": null, "idempotency_key": null, "labels": {},
                "attempts": 0, "first_attempt_at": null, "last_error": null, "finished_at": null,
            }))
            .expect("a task record")
        };
        match action(&record) {
            Action::Webhook(r) => assert_eq!((&r.body[..], r.json), (&br#"{"a":1}"#[..], true)),
            Action::Plugin(_) => panic!("a webhook task runs its webhook"),
        }
    }
}
