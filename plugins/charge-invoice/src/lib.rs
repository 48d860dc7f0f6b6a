//! Charges an invoice through a payment API, and shows each way an attempt can
//! end.
//!
//! Input:
//! ```json
//! {"api": "https://payments.example.com", "invoice": "inv_42", "amount_cents": 1999,
//!  "currency": "eur", "receipt": {"gate": "mail", "url": "https://mail.internal/receipts"}}
//! ```
//! (`receipt` is optional). It sends `POST {api}/v1/charges` with the task's
//! idempotency key, so that a repeated attempt never charges twice, and reads
//! the answer:
//!
//! | answer | outcome |
//! |---|---|
//! | 200, 201 | success: `{"charge": "ch_1", "status": "succeeded"}`, and the receipt task is created with it |
//! | 402 | fail: `card declined (insufficient_funds)`; retrying would decline again |
//! | 409 | retry in 5 s: another attempt with the same key is still in progress |
//! | 429, 503 | retry after the answer's `Retry-After` (the backoff if none) |
//! | other 5xx, timeout, connection error | retry after the backoff |
//! | other 4xx, a denied host | fail |

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_sdk::{Context, Error, Outcome, Request, Response, info, warn};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The payment API's base URL.
    api: String,
    invoice: String,
    amount_cents: u64,
    currency: String,
    /// Where to send the receipt once charged, if anywhere.
    #[serde(default)]
    receipt: Option<Receipt>,
}

/// A webhook task created in the same commit as the successful charge.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Receipt {
    gate: String,
    url: String,
}

#[derive(Serialize, Deserialize)]
struct Charge {
    #[serde(rename(deserialize = "id"))]
    charge: String,
    status: String,
}

/// The payment API's error body, e.g. `{"decline_code": "insufficient_funds"}`.
#[derive(Deserialize)]
struct Declined {
    #[serde(default)]
    decline_code: Option<String>,
}

async fn run(ctx: Context, input: Input) -> Outcome<Charge> {
    let body = json!({
        "invoice": input.invoice,
        "amount": input.amount_cents,
        "currency": input.currency,
    });
    let request = Request::post(format!("{}/v1/charges", input.api.trim_end_matches('/')))
        .header("idempotency-key", ctx.idempotency_key())
        .header("content-type", "application/json")
        .body(body.to_string());
    let response = match ctx.http().send(request).await {
        Ok(response) => response,
        // Timeouts and connection errors retry; a host the gate denies fails.
        Err(err) => return Error::from(err).into(),
    };
    let outcome = decide(&response);
    if let (Outcome::Success(charge), Some(receipt)) = (&outcome, &input.receipt) {
        ctx.add_next(json!({
            "gate": receipt.gate,
            "webhook": {
                "url": receipt.url,
                "body": { "invoice": input.invoice, "charge": charge.charge },
            },
            "idempotency_key": format!("receipt:{}", input.invoice),
        }));
    }
    outcome
}

/// The payment API's answer, as an outcome (the table in the crate's docs).
fn decide(response: &Response) -> Outcome<Charge> {
    match response.status() {
        200 | 201 => match response.json::<Charge>() {
            Ok(charge) => {
                info!("charged: {} is {}", charge.charge, charge.status);
                Outcome::Success(charge)
            }
            // Charged, but the answer is not what we know how to read: do not
            // charge again, let a person look.
            Err(err) => Outcome::Fail(format!("charged, but {err}")),
        },
        402 => {
            let code = response
                .json::<Declined>()
                .ok()
                .and_then(|d| d.decline_code);
            warn!("declined: {}", code.as_deref().unwrap_or("no reason given"));
            Outcome::Fail(match code {
                Some(code) => format!("card declined ({code})"),
                None => "card declined".into(),
            })
        }
        409 => Outcome::Retry {
            after: Some(Duration::from_secs(5)),
            reason: "another attempt with this idempotency key is in progress".into(),
        },
        429 | 503 => Outcome::Retry {
            after: response.retry_after(),
            reason: format!("payment API answered {}", response.status()),
        },
        status @ 500..=599 => Outcome::Retry {
            after: None,
            reason: format!("payment API answered {status}"),
        },
        status => Outcome::Fail(format!(
            "payment API answered {status}: {}",
            response.text()
        )),
    }
}

sluice_sdk::export!(run);
