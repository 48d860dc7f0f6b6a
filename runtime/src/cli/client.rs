//! The HTTP client of the REST API the commands share, and how an error
//! answer becomes a message and an exit code.

use super::*;
use crate::client::ClientError;

/// A failed client call, carrying its exit code.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) code: u8,
    pub(super) message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure {
            code: 1,
            message: format!("{e:#}"),
        }
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Failure {
        Failure {
            code: 1,
            message: e.to_string(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure {
            code: e.status().map_or(1, exit_code),
            message: e.to_string(),
        }
    }
}

/// The exit code for an error status.
fn exit_code(status: reqwest::StatusCode) -> u8 {
    match status.as_u16() {
        404 => 3,
        409 => 4,
        400 | 413 => 5,
        401 | 403 => 7,
        _ => 1,
    }
}

/// The commands' view of the API: the shared client, its answers as
/// failures with exit codes.
pub(super) struct Api {
    client: crate::client::Client,
}

impl Api {
    pub(super) fn new(client: &Client) -> Result<Api, Failure> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(120));
        if let Some(path) = &client.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --ca-cert {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).with_context(|| {
                format!("--ca-cert {} is not a PEM certificate", path.display())
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Api {
            client: crate::client::Client::with_http(&client.server, http)
                .with_token(client.token.as_deref()),
        })
    }

    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, path)
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        Ok(self.client.send(method, path, body).await?.ok()?)
    }

    /// Sends a request and returns its status and JSON body, whatever the
    /// status; fails only when the server cannot be reached.
    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Value), Failure> {
        let answer = self.client.send_request(request).await?;
        Ok((answer.status, answer.body))
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self.client.get(path).await?)
    }
}

/// An error answer as a failure: the server's message, the field at fault,
/// the status, and the exit code for it.
pub(super) fn failure(status: reqwest::StatusCode, value: &Value) -> Failure {
    let answer = crate::client::Answer {
        status,
        headers: reqwest::header::HeaderMap::new(),
        body: value.clone(),
    };
    match answer.ok() {
        Err(e) => e.into(),
        Ok(_) => Failure {
            code: 1,
            message: format!("unexpected answer [{}]", status.as_u16()),
        },
    }
}

pub(super) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub(super) use crate::client::enc;
