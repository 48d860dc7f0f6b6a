//! The one path from an error to HTTP: status plus
//! `{"error": {"code", "message", "field"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::shell::ShellError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn invalid(field: impl Into<Option<String>>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message: message.into(),
            field: field.into(),
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::invalid(Some(field.to_string()), message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            field: None,
        }
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: message.into(),
            field: None,
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthenticated",
            message: message.into(),
            field: None,
        }
    }

    pub fn permission_denied(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: "permission_denied",
            message: message.into(),
            field: None,
        }
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: message.into(),
            field: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
            field: None,
        }
    }

    /// A 5xx says only "internal error" and an id to find the details in the log.
    /// An error whose detail goes to the log only; the answer names the
    /// request, whose id is on that log line.
    pub fn internal(detail: &dyn std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {detail}");
        let message = match super::request_id::current() {
            Some(id) => format!("internal error (request {id}; see the server log)"),
            None => "internal error (see the server log)".to_string(),
        };
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
            field: None,
        }
    }
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// `invalid_argument` (400), `unauthenticated` (401), `permission_denied` (403),
    /// `not_found` (404), `conflict` (409), `payload_too_large` (413),
    /// `unavailable` (503) or `internal` (500).
    #[schema(example = "invalid_argument")]
    code: &'a str,
    message: &'a str,
    /// The input at fault, when there is one, like `rate` or `tasks[3].webhook.url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// The id of this request, as in the `x-request-id` header and on the
    /// server's log lines about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "4f1c2a9be07d3165")]
    request_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                request_id: super::request_id::current(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Each 503 is a moment's state (a stop, a handover): try again soon.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Where a request carries its tasks, so that a shell error's field is
/// named as the client wrote it.
#[derive(Debug, Clone, Copy)]
pub enum Tasks {
    /// The body is the task (`POST /v1/tasks`): `gate`.
    One,
    /// A list of them: `tasks[2].gate`, `next[0].gate`.
    List(&'static str),
    /// One, under a field: `task.gate`.
    Under(&'static str),
}

impl ApiError {
    /// A shell error as the answer to a request whose tasks are where `tasks` says.
    pub fn shell(e: ShellError, tasks: Tasks) -> ApiError {
        let field = e.at().map(|at| match tasks {
            Tasks::One => at.field.to_string(),
            Tasks::List(list) => at.in_list(list),
            Tasks::Under(name) => format!("{name}.{}", at.field),
        });
        let with = |error: ApiError| ApiError { field, ..error };
        match e {
            ShellError::NotFound { what } => ApiError::not_found(format!("{what} not found")),
            ShellError::Conflict(message) => ApiError::conflict(message),
            ShellError::Forbidden { message, .. } => with(ApiError::permission_denied(message)),
            ShellError::Exhausted { message, .. } => with(ApiError::conflict(message)),
            ShellError::NoGate { gate, .. } => with(ApiError::invalid(
                None,
                format!("gate {gate:?} does not exist; create it with PUT /v1/gates/{gate}"),
            )),
            ShellError::NoPlugin { key, .. } => with(ApiError::invalid(
                None,
                format!(
                    "plugin {key} is not in the registry; upload it with PUT /v1/plugins/{}",
                    key.replacen('@', "/", 1)
                ),
            )),
            ShellError::Invalid { message, .. } => with(ApiError::invalid(None, message)),
            ShellError::ShuttingDown => ApiError::unavailable("the server is shutting down"),
            ShellError::Moved { gate } => {
                ApiError::unavailable(format!("gate {gate:?} is moving to another node; retry"))
            }
        }
    }
}

impl From<ShellError> for ApiError {
    fn from(e: ShellError) -> ApiError {
        ApiError::shell(e, Tasks::One)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unsupported(message) => ApiError {
                status: StatusCode::NOT_IMPLEMENTED,
                code: "unimplemented",
                message,
                field: None,
            },
            e => ApiError::internal(&e),
        }
    }
}
