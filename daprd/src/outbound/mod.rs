//! The app-facing side: the HTTP and gRPC APIs, which call other sidecars through the invoker.

pub mod endpoint;
pub mod grpc;
pub mod http;
pub mod invoker;
pub mod proxy;
pub mod request_stream;
pub mod resilient;
pub mod state;
