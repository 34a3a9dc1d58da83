//! Compiles `proto/**/*.proto` with protox (no system `protoc`), writes the descriptor set for
//! reflection and the compatibility test, and generates tonic clients and servers.

use std::path::PathBuf;

use prost::Message;

const FILES: &[&str] = &[
    "dapr/proto/common/v1/common.proto",
    "dapr/proto/runtime/v1/dapr.proto",
    "dapr/proto/runtime/v1/appcallback.proto",
    "dapr/proto/internals/v1/service_invocation.proto",
    "dapr/proto/sentry/v1/sentry.proto",
    "dapr/proto/operator/v1/operator.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(FILES, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `bytes` fields as `Bytes`, so body chunks are passed on without copying.
        .bytes(".")
        // The sidecar-to-sidecar metadata maps as `BTreeMap`: a few dozen short keys per call,
        // for which ordered compares cost less than SipHash (about 5% of daprd's instructions
        // per call went to hashing them).
        .btree_map(".dapr.proto.internals.v1")
        .compile_fds(fds)?;
    Ok(())
}
