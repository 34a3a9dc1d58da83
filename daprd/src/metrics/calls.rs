//! Recorders of calls the sidecar makes or answers outside the server layers: unary gRPC client
//! calls, sidecar-to-sidecar invocations on both ends, and HTTP calls into the app with their
//! body sizes. Each records once, also when dropped before its outcome.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dapr_proto::internals::v1::Status;
use http::StatusCode;

use super::UNARY;
use super::labels::{StatusLabel, grpc_code_label};
use super::registry::{Families, inc, millis_since, observe};
use crate::Error;

/// A unary RPC the sidecar makes, waiting for its outcome.
pub struct ClientRpc<'a> {
    pub(super) call: Option<(&'a Families, Instant)>,
    pub(super) method: &'static str,
}

impl ClientRpc<'_> {
    /// Records the outcome: the status `code`, and the request and response messages' sizes
    /// (the protobuf encoding, as upstream's `proto.Size`; 0 for a response that never came),
    /// `received` measured only when metrics are on.
    pub fn finish(mut self, code: tonic::Code, sent: usize, received: impl FnOnce() -> usize) {
        if self.call.is_some() {
            let received = received();
            self.record(code, Some((sent, received)));
        }
    }

    fn record(&mut self, code: tonic::Code, sizes: Option<(usize, usize)>) {
        let Some((f, start)) = self.call.take() else {
            return;
        };
        let labels = [self.method, grpc_code_label(code)];
        inc(&f.grpc_client_completed_rpcs, &labels);
        observe(&f.grpc_client_latency, &labels, millis_since(start));
        if let Some((sent, received)) = sizes {
            observe(&f.grpc_client_sent_bytes, &[self.method], sent as f64);
            observe(
                &f.grpc_client_received_bytes,
                &[self.method],
                received as f64,
            );
        }
    }
}

impl Drop for ClientRpc<'_> {
    fn drop(&mut self) {
        // The caller gave up (its own caller went away): a cancelled RPC, as grpc-go reports it.
        self.record(tonic::Code::Cancelled, None);
    }
}

/// A request sent to another sidecar, waiting for its response head.
pub struct SentInvocation<'a> {
    pub(super) call: Option<(&'a Families, Arc<str>, Instant)>,
}

impl SentInvocation<'_> {
    /// Records the response head by its status (the app's HTTP status, or a gRPC code). A call
    /// that ends without a head is not a received response, as upstream.
    pub fn received(self, status: Option<&Status>) {
        if let Some((f, peer, start)) = self.call {
            let code = status.map_or(0, |s| s.code);
            let status = StatusLabel::new(code);
            inc(&f.invocation_res_recv, &[&peer, status.as_str(), UNARY]);
            observe(
                &f.invocation_res_recv_latency,
                &[&peer, status.as_str()],
                millis_since(start),
            );
        }
    }
}

/// A request from another sidecar, waiting for the app's answer.
pub struct ReceivedInvocation<'a> {
    pub(super) call: Option<(&'a Families, Arc<str>)>,
}

impl ReceivedInvocation<'_> {
    /// Awaits the app and records the response sent back: the app's status (`status` reads it
    /// from the answer), or `13` (gRPC `Internal`) when the app could not be called, as
    /// upstream.
    pub async fn respond<F, R>(self, app: F, status: impl Fn(&R) -> u16) -> Result<R, Error>
    where
        F: Future<Output = Result<R, Error>>,
    {
        let response = app.await;
        if let Some((f, peer)) = self.call {
            let code = response
                .as_ref()
                .map_or(tonic::Code::Internal as i32, |r| i32::from(status(r)));
            inc(
                &f.invocation_res_sent,
                &[&peer, StatusLabel::new(code).as_str()],
            );
        }
        response
    }
}

/// A call into the app over HTTP; recorded as completed when the response head arrives, or as
/// a 500 when the call fails or is abandoned first (upstream records transport errors as 500).
pub struct AppCall {
    pub(super) families: Option<Arc<Families>>,
    pub(super) method: &'static str,
    pub(super) start: Instant,
    pub(super) answered: bool,
}

impl AppCall {
    /// Counts the request body's bytes as it streams; recorded when the body ends or is dropped.
    pub fn request_body(&self) -> BodyBytes {
        BodyBytes {
            families: self.families.clone(),
            method: self.method,
            sent: true,
            bytes: 0,
        }
    }

    /// Records the response head; the returned counter measures the response body.
    pub fn answered(mut self, status: StatusCode) -> BodyBytes {
        self.answered = true;
        self.record(status.as_str());
        BodyBytes {
            families: self.families.take(),
            method: self.method,
            sent: false,
            bytes: 0,
        }
    }

    fn record(&self, status: &str) {
        if let Some(f) = &self.families {
            let labels = [self.method, "", status];
            inc(&f.http_client_completed_count, &labels);
            observe(
                &f.http_client_roundtrip_latency,
                &labels,
                millis_since(self.start),
            );
        }
    }
}

impl Drop for AppCall {
    fn drop(&mut self) {
        if !self.answered {
            self.record(StatusCode::INTERNAL_SERVER_ERROR.as_str());
        }
    }
}

/// Bytes of an app-channel body, recorded once when the counter is dropped with its stream.
pub struct BodyBytes {
    families: Option<Arc<Families>>,
    method: &'static str,
    sent: bool,
    bytes: u64,
}

impl BodyBytes {
    pub fn count<E>(&mut self, chunk: &Result<Bytes, E>) {
        if let Ok(chunk) = chunk {
            self.bytes += chunk.len() as u64;
        }
    }
}

impl Drop for BodyBytes {
    fn drop(&mut self) {
        let Some(f) = &self.families else { return };
        let bytes = self.bytes as f64;
        if self.sent {
            // Upstream records this when the request starts, before any status is known.
            observe(&f.http_client_sent_bytes, &[self.method, "", ""], bytes);
        } else {
            f.http_client_received_bytes.observe(bytes);
        }
    }
}
