//! The one client of the REST API. The CLI, `sluice bench` and the
//! integration tests all reach a server through it.
//!
//! Typed calls (`put_gate`, `create_task`, ...) send a request body as JSON
//! and decode a success into the API's own wire views; an error answer
//! becomes [`ClientError::Refused`] with the server's message and the field at
//! fault. `send` returns any answer as it came, for a caller that reads the
//! status itself (a test of a refusal, a probe).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::wire::{BatchCreated, GateView, PluginView, TaskView};

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: the server is down, the address wrong, TLS refused.
    #[error("cannot reach the server at {base}: {}", causes(source))]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{message}{} [{}]", field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default(), status.as_u16())]
    Refused {
        status: StatusCode,
        message: String,
        /// The field at fault (`tasks[2].gate`), when the server named one.
        field: Option<String>,
        /// The whole error body.
        body: Value,
    },
    /// A success whose body is not what the route documents.
    #[error("unexpected answer from {path}: {detail}")]
    Unexpected { path: String, detail: String },
}

/// An error and each of its causes, `: `-separated: reqwest's own text
/// leaves out why (refused, no such name, a certificate not trusted).
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

impl ClientError {
    /// The status of a refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An answer as it came: status, headers, and the body as JSON (a body that
/// is not JSON is a JSON string; an empty one is null).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The answer as a result: the body on success, a refusal otherwise.
    pub fn ok(self) -> Result<Value, ClientError> {
        if self.status.is_success() {
            return Ok(self.body);
        }
        let error = &self.body["error"];
        Err(ClientError::Refused {
            status: self.status,
            message: error["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_string(),
            field: error["field"].as_str().map(str::to_string),
            body: self.body,
        })
    }
}

/// A client of one server, with an optional bearer token.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// How long a call may take unless the caller's reqwest client says otherwise.
const TIMEOUT: Duration = Duration::from_secs(120);

/// How long a repeatable request answered 503 is tried again.
pub const RETRY_FOR: Duration = Duration::from_secs(15);

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|source| ClientError::Unreachable {
                base: base.to_string(),
                source,
            })?;
        Ok(Client::with_http(base, http))
    }

    /// A client over a prepared reqwest client (one that trusts a CA, say).
    pub fn with_http(base: &str, http: reqwest::Client) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: None,
            http,
        }
    }

    /// The same client, sending `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` (from `/`), with the token when there is one.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a prepared request and returns the answer, whatever its status.
    pub async fn send_request(&self, request: RequestBuilder) -> Result<Answer, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            base: self.base.clone(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(unreachable)?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Sends `body` as JSON (or nothing) and returns the answer, whatever its
    /// status. A `GET`, `PUT` or `DELETE` (each safe to repeat) answered 503
    /// is sent again after its `Retry-After` (a second at most), for up to
    /// `RETRY_FOR`: in a cluster, a gate's unit may be changing hands.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let repeatable = matches!(method, Method::GET | Method::PUT | Method::DELETE);
        let began = crate::clock::instant();
        loop {
            let mut request = self.request(method.clone(), path);
            if let Some(body) = body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string());
            }
            let answer = self.send_request(request).await?;
            if !repeatable
                || answer.status != StatusCode::SERVICE_UNAVAILABLE
                || began.elapsed() >= RETRY_FOR
            {
                return Ok(answer);
            }
            let after = (answer.headers.get(reqwest::header::RETRY_AFTER))
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map_or(Duration::from_secs(1), Duration::from_secs);
            tokio::time::sleep(after.min(Duration::from_secs(1))).await;
        }
    }

    /// Sends `body` as JSON (or nothing) and decodes a success as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let value = self.send(method, path, body).await?.ok()?;
        serde_json::from_value(value).map_err(|e| ClientError::Unexpected {
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// `PUT /v1/gates/{name}`: creates or replaces a gate.
    pub async fn put_gate(&self, name: &str, gate: &Value) -> Result<GateView, ClientError> {
        self.call(Method::PUT, &format!("/v1/gates/{}", enc(name)), Some(gate))
            .await
    }

    /// `GET /v1/gates/{name}`.
    pub async fn gate(&self, name: &str) -> Result<GateView, ClientError> {
        self.call(Method::GET, &format!("/v1/gates/{}", enc(name)), None)
            .await
    }

    /// `POST /v1/tasks`: one task, acknowledged once durable.
    pub async fn create_task(&self, task: &Value) -> Result<TaskView, ClientError> {
        self.call(Method::POST, "/v1/tasks", Some(task)).await
    }

    /// `POST /v1/tasks/batch`: all of them or none; their ids in order.
    pub async fn create_tasks(&self, tasks: &[Value]) -> Result<Vec<String>, ClientError> {
        let body = json!({ "tasks": tasks });
        let created: BatchCreated = self
            .call(Method::POST, "/v1/tasks/batch", Some(&body))
            .await?;
        Ok(created.ids)
    }

    /// `GET /v1/tasks/{id}`.
    pub async fn task(&self, id: &str) -> Result<TaskView, ClientError> {
        self.call(Method::GET, &format!("/v1/tasks/{}", enc(id)), None)
            .await
    }

    /// `PUT /v1/plugins/{name}/{version}`: uploads a component.
    pub async fn upload_plugin(
        &self,
        name: &str,
        version: &str,
        wasm: Vec<u8>,
    ) -> Result<PluginView, ClientError> {
        let path = format!("/v1/plugins/{}/{}", enc(name), enc(version));
        let request = self
            .request(Method::PUT, &path)
            .header(CONTENT_TYPE, "application/wasm")
            .body(wasm);
        let value = self.send_request(request).await?.ok()?;
        serde_json::from_value(value).map_err(|e| ClientError::Unexpected {
            path,
            detail: e.to_string(),
        })
    }

    /// `GET /readyz`: true once the server answers ready.
    pub async fn ready(&self) -> bool {
        matches!(
            self.send(Method::GET, "/readyz", None).await,
            Ok(Answer { status, .. }) if status == StatusCode::OK
        )
    }
}

/// `s` as one path segment or query value.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_message_field_and_status() {
        let answer = Answer {
            status: StatusCode::BAD_REQUEST,
            headers: HeaderMap::new(),
            body: json!({ "error": { "message": "must be positive", "field": "tasks[2].delay" } }),
        };
        let error = answer.ok().expect_err("a 400 is a refusal");
        assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            error.to_string(),
            "must be positive (field tasks[2].delay) [400]"
        );
    }

    #[test]
    fn a_success_is_its_body() {
        let answer = Answer {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: json!({ "id": "t1" }),
        };
        assert_eq!(answer.ok().expect("a 201 is a success")["id"], "t1");
    }

    #[test]
    fn a_name_stays_one_path_segment() {
        assert_eq!(enc("a/b?c#d"), "a%2Fb%3Fc%23d");
    }
}
