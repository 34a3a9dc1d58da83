//! The peer-facing side: the internal gRPC server other sidecars call, which checks access
//! control and calls the local app.

pub mod acl;
pub mod app_channel;

use std::sync::Arc;

use bytes::Bytes;
use dapr_proto::common::v1::InvokeResponse;
use dapr_proto::common::v1::http_extension::Verb;
use dapr_proto::internals::v1::service_invocation_server::ServiceInvocation;
use dapr_proto::internals::v1::{
    InternalInvokeRequest, InternalInvokeRequestStream, InternalInvokeResponse,
    InternalInvokeResponseStream, Status as InvokeStatus,
};
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::Error;
use crate::config::Config;
use crate::wire::{self, BoxError, BoxStream, names};
use acl::{AccessControl, CallerIdentity};
use app_channel::{AppRequest, AppResponse, HttpChannel};

/// Trust domain assumed for callers until their identity comes from a certificate.
const DEFAULT_TRUST_DOMAIN: &str = "public";

pub struct Internal {
    app: Option<HttpChannel>,
    acl: Option<AccessControl>,
}

impl Internal {
    pub fn new(config: &Config) -> Self {
        let app = config.app_port.map(|port| {
            HttpChannel::new(
                &config.app_channel_address,
                port,
                config.app_api_token.as_deref(),
                config.app_max_concurrency,
            )
        });
        Internal {
            app,
            acl: AccessControl::from_spec(config.configuration.spec.access_control.as_ref()),
        }
    }

    /// Checks the caller against access control and builds the app request head.
    fn admit(
        &self,
        request: InternalInvokeRequest,
        body: BoxStream<Result<Bytes, BoxError>>,
    ) -> Result<(&HttpChannel, AppRequest), Error> {
        let app = self
            .app
            .as_ref()
            .ok_or_else(|| Error::AppChannel("this sidecar has no app port configured".into()))?;
        let message = request
            .message
            .ok_or_else(|| Error::Malformed("request carries no message".into()))?;
        wire_check_method(&message.method)?;
        let ext = message.http_extension.unwrap_or_default();
        let verb = wire::method_of(Verb::try_from(ext.verb).unwrap_or(Verb::None));
        if let Some(acl) = &self.acl {
            let caller_app = wire::first(&request.metadata, names::CALLER_APP_ID);
            let caller_ns = wire::first(&request.metadata, names::CALLER_NAMESPACE);
            let caller = caller_app
                .zip(caller_ns)
                .map(|(app_id, namespace)| CallerIdentity {
                    trust_domain: DEFAULT_TRUST_DOMAIN,
                    namespace,
                    app_id,
                });
            if !acl.is_allowed(caller, &message.method, verb.as_str()) {
                let err = Error::PermissionDenied {
                    caller: caller_app.unwrap_or("unknown").to_owned(),
                    operation: message.method.clone(),
                    verb: verb.to_string(),
                };
                tracing::info!(reason = %err, "invocation denied");
                return Err(err);
            }
        }
        Ok((
            app,
            AppRequest {
                method: message.method,
                verb,
                query: ext.querystring,
                content_type: message.content_type,
                metadata: request.metadata,
                body,
            },
        ))
    }
}

fn wire_check_method(method: &str) -> Result<(), Error> {
    crate::outbound::http::check_method(method)
}

/// The response head sent back to the calling sidecar.
fn response_head(app: &AppResponse) -> InternalInvokeResponse {
    let mut headers = wire::headers_to_metadata(&app.headers, &[]);
    let content_type = wire::first(&headers, "content-type")
        .unwrap_or_default()
        .to_owned();
    headers.remove("content-type");
    InternalInvokeResponse {
        status: Some(InvokeStatus {
            code: i32::from(app.status),
            message: String::new(),
            details: Vec::new(),
        }),
        headers,
        trailers: Default::default(),
        message: Some(InvokeResponse {
            data: None,
            content_type,
        }),
    }
}

#[tonic::async_trait]
impl ServiceInvocation for Internal {
    async fn call_local(
        &self,
        request: Request<InternalInvokeRequest>,
    ) -> Result<Response<InternalInvokeResponse>, Status> {
        let mut request = request.into_inner();
        let data = request
            .message
            .as_mut()
            .and_then(|m| m.data.take())
            .map(|any| Bytes::from(any.value))
            .unwrap_or_default();
        let (app, app_request) = self.admit(request, app_channel::once(data))?;
        let response = app.invoke(app_request).await?;
        let mut head = response_head(&response);
        let body = app_channel::collect(response.body, usize::MAX).await?;
        if let Some(message) = head.message.as_mut() {
            message.data = Some(prost_types::Any {
                type_url: String::new(),
                value: body.to_vec(),
            });
        }
        Ok(Response::new(head))
    }

    type CallLocalStreamStream = BoxStream<Result<InternalInvokeResponseStream, Status>>;

    async fn call_local_stream(
        &self,
        request: Request<Streaming<InternalInvokeRequestStream>>,
    ) -> Result<Response<Self::CallLocalStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the request"))?;
        let head = first
            .request
            .ok_or_else(|| Status::invalid_argument("the first message carries no request"))?;
        // The caller's --max-body-size bounds what it streams; here only each message is bounded.
        let body = wire::payload_body(first.payload, incoming);
        let (app, app_request) = self.admit(head, body)?;
        let response = app.invoke(app_request).await?;
        let head = InternalInvokeResponseStream {
            response: Some(response_head(&response)),
            payload: None,
        };
        let payloads = wire::into_payloads(response.body).map(|p| {
            p.map(|payload| InternalInvokeResponseStream {
                response: None,
                payload: Some(payload),
            })
            .map_err(|e| Status::aborted(format!("app response body failed: {e}")))
        });
        let stream = futures::stream::once(async move { Ok(head) }).chain(payloads);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Shared handle for the server builder.
pub fn server(config: &Config) -> Arc<Internal> {
    Arc::new(Internal::new(config))
}
