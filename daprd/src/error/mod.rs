//! daprd's errors: [`Error`], what a call fails with, and its mapping to the wire (Dapr's JSON
//! error body for HTTP and a `tonic::Status` for gRPC, each in exactly one place); and
//! [`StartError`], why the sidecar could not start, with its exit code.

mod app;
mod start;

pub use app::AppChannelError;
pub use start::StartError;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// Header carrying an HTTP app's status on gRPC errors (upstream name).
pub const DAPR_HTTP_STATUS: &str = "dapr-http-status";

/// What a call through the sidecar fails with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("name resolution: {0}")]
    Resolver(#[from] crate::resolve::ResolveError),
    #[error("failed getting app id either from the URL path or the header dapr-app-id")]
    NoAppId,
    #[error(
        "failed to proxy request: required metadata dapr-callee-app-id or dapr-app-id not found"
    )]
    NoProxyTarget,
    #[error("failed to invoke, id: {0}, err: invalid app id")]
    InvalidAppId(String),
    #[error("invalid method {method:?}: {reason}")]
    InvalidMethod {
        method: String,
        reason: &'static str,
    },
    #[error("failed to invoke, id: {id}, err: {reason}")]
    Invoke { id: String, reason: String },
    /// The peer's sidecar failed the call with `code` (not the app: its answers are responses).
    #[error("failed to invoke, id: {id}, err: {reason}")]
    Peer {
        id: String,
        code: tonic::Code,
        reason: String,
    },
    /// A Resiliency circuit breaker refused the call (gobreaker's errors, as upstream shows them).
    #[error("failed to invoke, id: {id}, err: {rejected}")]
    CircuitBreaker {
        id: String,
        rejected: crate::resiliency::breaker::Rejected,
    },
    /// A Resiliency timeout fired (Go's `context.DeadlineExceeded`, as upstream shows it).
    #[error("failed to invoke, id: {id}, err: context deadline exceeded")]
    PolicyTimeout { id: String },
    #[error("failed to invoke, id: {id}, err: deadline of {seconds}s exceeded")]
    Timeout { id: String, seconds: u64 },
    /// The call's own `grpc-timeout` passed before the peer answered (Go's
    /// `context.DeadlineExceeded`, as upstream's proxy shows it).
    #[error("failed to invoke, id: {id}, err: context deadline exceeded")]
    CallDeadline { id: String },
    #[error(
        "access control policy has denied access to id: {caller} operation: {operation} verb: {verb}"
    )]
    PermissionDenied {
        caller: String,
        operation: String,
        verb: String,
    },
    #[error("failed to invoke, id: {id}, err: {message}")]
    DeniedByPeer { id: String, message: String },
    #[error("request body is larger than the limit of {limit} bytes (--max-body-size)")]
    BodyTooLarge { limit: usize },
    #[error("invalid api token")]
    Unauthorized,
    #[error("dapr is not ready: {0}")]
    NotReady(String),
    #[error("dapr outbound is not ready")]
    OutboundNotReady,
    #[error("dapr app id is {actual}, not {requested}")]
    AppIdMismatch { requested: String, actual: String },
    #[error("app is not in a healthy state")]
    AppUnhealthy,
    #[error("app channel: {0}")]
    AppChannel(#[from] AppChannelError),
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl Error {
    /// Dapr's `errorCode`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NoAppId
            | Error::NoProxyTarget
            | Error::InvalidAppId(_)
            | Error::Invoke { .. }
            | Error::Peer { .. }
            | Error::CircuitBreaker { .. }
            | Error::PolicyTimeout { .. }
            | Error::Timeout { .. }
            | Error::CallDeadline { .. }
            | Error::PermissionDenied { .. }
            | Error::DeniedByPeer { .. }
            | Error::InvalidMethod { .. }
            | Error::AppChannel(_)
            | Error::AppUnhealthy
            | Error::Resolver(_) => "ERR_DIRECT_INVOKE",
            Error::BodyTooLarge { .. } => "ERR_BODY_TOO_LARGE",
            Error::Unauthorized => "ERR_UNAUTHORIZED",
            Error::NotReady(_) => "ERR_HEALTH_NOT_READY",
            Error::OutboundNotReady => "ERR_OUTBOUND_HEALTH_NOT_READY",
            Error::AppIdMismatch { .. } => "ERR_HEALTH_APPID_NOT_MATCH",
            Error::Malformed(_) => "ERR_MALFORMED_REQUEST",
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::NoAppId => StatusCode::NOT_FOUND,
            Error::NoProxyTarget
            | Error::InvalidAppId(_)
            | Error::InvalidMethod { .. }
            | Error::Malformed(_) => StatusCode::BAD_REQUEST,
            Error::PermissionDenied { .. } | Error::DeniedByPeer { .. } => StatusCode::FORBIDDEN,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Invoke { .. }
            | Error::Peer { .. }
            | Error::CircuitBreaker { .. }
            | Error::PolicyTimeout { .. }
            | Error::CallDeadline { .. }
            | Error::Resolver(_)
            | Error::AppChannel(_)
            | Error::AppUnhealthy
            | Error::NotReady(_)
            | Error::OutboundNotReady
            | Error::AppIdMismatch { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::NoAppId
            | Error::NoProxyTarget
            | Error::InvalidAppId(_)
            | Error::InvalidMethod { .. } => tonic::Code::InvalidArgument,
            Error::Malformed(_) => tonic::Code::InvalidArgument,
            Error::PermissionDenied { .. } | Error::DeniedByPeer { .. } => {
                tonic::Code::PermissionDenied
            }
            Error::BodyTooLarge { .. } => tonic::Code::ResourceExhausted,
            Error::Unauthorized => tonic::Code::Unauthenticated,
            Error::Timeout { .. } | Error::PolicyTimeout { .. } | Error::CallDeadline { .. } => {
                tonic::Code::DeadlineExceeded
            }
            Error::Invoke { .. }
            | Error::Peer { .. }
            | Error::CircuitBreaker { .. }
            | Error::Resolver(_) => tonic::Code::Unavailable,
            Error::NotReady(_) | Error::OutboundNotReady | Error::AppUnhealthy => {
                tonic::Code::Unavailable
            }
            Error::AppIdMismatch { .. } => tonic::Code::FailedPrecondition,
            Error::AppChannel(_) => tonic::Code::Internal,
        }
    }
}

/// `error` and its sources, `: `-separated, skipping a source whose text the chain already
/// holds (hyper and rustls often repeat their cause in their own message).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        next = cause.source();
    }
    chain
}

/// Dapr's HTTP error body.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "errorCode")]
    pub error_code: String,
    pub message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error_code: self.code().to_owned(),
            message: self.to_string(),
        };
        (self.http_status(), Json(body)).into_response()
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}

/// gRPC code → HTTP status, as upstream maps a gRPC app's status for HTTP callers.
pub fn grpc_to_http(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::REQUEST_TIMEOUT,
        InvalidArgument | FailedPrecondition | OutOfRange => StatusCode::BAD_REQUEST,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// HTTP status → gRPC code, as upstream maps an HTTP app's status for gRPC callers.
pub fn http_to_grpc(status: u16) -> tonic::Code {
    use tonic::Code;
    match status {
        200..=299 => Code::Ok,
        408 => Code::Cancelled,
        400 => Code::Internal,
        504 => Code::DeadlineExceeded,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        403 => Code::PermissionDenied,
        401 => Code::Unauthenticated,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_dapr_code_and_statuses() {
        let denied = Error::PermissionDenied {
            caller: "a".into(),
            operation: "/x".into(),
            verb: "GET".into(),
        };
        let table: Vec<(Error, &str, u16, tonic::Code)> = vec![
            (
                Error::NoAppId,
                "ERR_DIRECT_INVOKE",
                404,
                tonic::Code::InvalidArgument,
            ),
            (
                Error::AppUnhealthy,
                "ERR_DIRECT_INVOKE",
                500,
                tonic::Code::Unavailable,
            ),
            (
                Error::NoProxyTarget,
                "ERR_DIRECT_INVOKE",
                400,
                tonic::Code::InvalidArgument,
            ),
            (
                Error::InvalidAppId("a.b.c".into()),
                "ERR_DIRECT_INVOKE",
                400,
                tonic::Code::InvalidArgument,
            ),
            (
                Error::Invoke {
                    id: "b".into(),
                    reason: "x".into(),
                },
                "ERR_DIRECT_INVOKE",
                500,
                tonic::Code::Unavailable,
            ),
            (
                Error::Timeout {
                    id: "b".into(),
                    seconds: 1,
                },
                "ERR_DIRECT_INVOKE",
                504,
                tonic::Code::DeadlineExceeded,
            ),
            (
                denied,
                "ERR_DIRECT_INVOKE",
                403,
                tonic::Code::PermissionDenied,
            ),
            (
                Error::DeniedByPeer {
                    id: "b".into(),
                    message: "x".into(),
                },
                "ERR_DIRECT_INVOKE",
                403,
                tonic::Code::PermissionDenied,
            ),
            (
                Error::BodyTooLarge { limit: 1 },
                "ERR_BODY_TOO_LARGE",
                413,
                tonic::Code::ResourceExhausted,
            ),
            (
                Error::Unauthorized,
                "ERR_UNAUTHORIZED",
                401,
                tonic::Code::Unauthenticated,
            ),
            (
                Error::NotReady("app".into()),
                "ERR_HEALTH_NOT_READY",
                500,
                tonic::Code::Unavailable,
            ),
            (
                Error::OutboundNotReady,
                "ERR_OUTBOUND_HEALTH_NOT_READY",
                500,
                tonic::Code::Unavailable,
            ),
            (
                Error::AppIdMismatch {
                    requested: "x".into(),
                    actual: "y".into(),
                },
                "ERR_HEALTH_APPID_NOT_MATCH",
                500,
                tonic::Code::FailedPrecondition,
            ),
            (
                Error::AppChannel(AppChannelError::Timeout { seconds: 60 }),
                "ERR_DIRECT_INVOKE",
                500,
                tonic::Code::Internal,
            ),
            (
                Error::Malformed("x".into()),
                "ERR_MALFORMED_REQUEST",
                400,
                tonic::Code::InvalidArgument,
            ),
        ];
        for (err, code, http, grpc) in table {
            assert_eq!(err.code(), code, "{err}");
            assert_eq!(err.http_status().as_u16(), http, "{err}");
            assert_eq!(err.grpc_code(), grpc, "{err}");
        }
    }

    #[test]
    fn status_maps_follow_upstream() {
        assert_eq!(
            grpc_to_http(tonic::Code::Cancelled),
            StatusCode::REQUEST_TIMEOUT
        );
        assert_eq!(
            grpc_to_http(tonic::Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            grpc_to_http(tonic::Code::DataLoss),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(http_to_grpc(201), tonic::Code::Ok);
        assert_eq!(http_to_grpc(400), tonic::Code::Internal);
        assert_eq!(http_to_grpc(418), tonic::Code::Unknown);
    }
}
