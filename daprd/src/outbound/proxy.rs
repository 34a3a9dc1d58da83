//! Transparent gRPC proxying on the gRPC API port: a call to any service other than `Dapr`,
//! with `dapr-app-id` (or `dapr-callee-app-id`) metadata naming the target, is forwarded as it is
//! to the target's sidecar, which hands it to its app.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;

use super::invoker::parse_target;
use super::state::Shared;
use crate::Error;
use crate::trace::{self, Kind};
use crate::wire::names;

/// The fallback of the gRPC API router.
pub async fn handle(shared: Arc<Shared>, request: Request) -> Response {
    match forward(&shared, request.map(tonic::body::Body::new)).await {
        Ok(response) => response.map(Body::new),
        Err(e) => {
            tracing::debug!(reason = %e, "proxied gRPC call failed");
            tonic::Status::from(e).into_http::<Body>()
        }
    }
}

async fn forward(
    shared: &Shared,
    request: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, Error> {
    // Scoped so no borrow of the (non-`Sync`) request lives across the await below.
    let target = {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(expected) = shared.config.api_token.as_deref()
            && header(names::API_TOKEN) != Some(expected)
        {
            return Err(Error::Unauthorized);
        }
        let id = header(names::CALLEE_APP_ID)
            .or_else(|| header(names::DAPR_APP_ID))
            .ok_or(Error::NoProxyTarget)?;
        parse_target(id, &shared.config.namespace)?
    };
    let mut span = shared.tracer.active().map(|active| {
        let headers = request.headers();
        let incoming = headers
            .get(names::TRACEPARENT)
            .and_then(|v| v.to_str().ok());
        let mut span = active.start(incoming, Kind::Client);
        span.proxied(request.uri().path());
        span.dapr_headers(
            headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        );
        span
    });
    let response = trace::traced(&mut span, shared.invoker.proxy(&target, request)).await?;
    Ok(match span {
        None => response,
        Some(span) => trace::ended_with_stream(span, response),
    })
}
