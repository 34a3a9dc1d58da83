//! Why a call to the app, or to an HTTPEndpoint, failed in this sidecar (not in the app: the
//! app's own error answers are responses).

/// A failed app-channel call, with its cause as the source where one is owned.
#[derive(Debug, thiserror::Error)]
pub enum AppChannelError {
    #[error("this sidecar has no app port configured")]
    NoAppPort,
    #[error("bad app address {base}: {source}")]
    Address {
        base: String,
        source: tonic::transport::Error,
    },
    /// rustls refused the app client's TLS settings.
    #[error("TLS to the app: {0}")]
    Tls(#[source] rustls::Error),
    #[error("concurrency limiter closed")]
    LimiterClosed,
    #[error("cannot build request for {uri}: {source}")]
    Request { uri: String, source: http::Error },
    /// A method path a plaintext HTTP/1.1 app's request line cannot carry.
    #[error("cannot build request for {uri}: {source}")]
    Target {
        uri: String,
        source: crate::wire::http1::Http1Error,
    },
    #[error("app did not answer within {seconds}s")]
    Timeout { seconds: u64 },
    /// The connection to the app failed; `cause` is the error's chain as text (the transport
    /// errors are borrowed from a status or a response, not owned).
    #[error("cannot reach the app at {base}: {cause}")]
    Unreachable { base: String, cause: String },
    /// The app's body failed while it was read whole.
    #[error("app body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An HTTPEndpoint's answer failed while it was read whole.
    #[error("endpoint answer: {0}")]
    EndpointAnswer(#[source] Box<dyn std::error::Error + Send + Sync>),
}
