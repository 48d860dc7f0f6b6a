//! The HTTP client of the REST API the commands share, and how an error
//! answer becomes a message and an exit code.

use super::*;

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

pub(super) struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
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
            base: client.server.trim_end_matches('/').to_string(),
            token: client.token.clone(),
            http,
        })
    }

    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(body).unwrap_or_default());
        }
        let (status, value) = self.send(request).await?;
        if status.is_success() {
            return Ok(value);
        }
        Err(failure(status, &value))
    }

    /// Sends a request and returns its status and JSON body, whatever the
    /// status; fails only when the server cannot be reached.
    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Value), Failure> {
        let response = request.send().await.map_err(|e| Failure {
            code: 1,
            message: format!("cannot reach the server at {}: {e}", self.base),
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// An error answer as a failure: the server's message, the field at fault,
/// the status, and the exit code for it.
pub(super) fn failure(status: reqwest::StatusCode, value: &Value) -> Failure {
    let message = value["error"]["message"]
        .as_str()
        .unwrap_or("request failed")
        .to_string();
    let field = value["error"]["field"]
        .as_str()
        .map(|f| format!(" (field {f})"))
        .unwrap_or_default();
    let code = match status.as_u16() {
        404 => 3,
        409 => 4,
        400 | 413 => 5,
        401 | 403 => 7,
        _ => 1,
    };
    Failure {
        code,
        message: format!("{message}{field} [{}]", status.as_u16()),
    }
}

pub(super) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub(super) fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
