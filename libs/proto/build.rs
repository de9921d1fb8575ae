//! Compiles `proto/` with protox (no system protoc) and generates the messages and the
//! gRPC clients and servers into OUT_DIR, plus a file descriptor set for reflection.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "../../proto";

const FILES: &[&str] = &[
    "corvus/common/v1/event.proto",
    "corvus/common/v1/paging.proto",
    "corvus/identity/v1/identity.proto",
    "corvus/identity/v1/log.proto",
    "corvus/ingestion/v1/ingestion.proto",
    "corvus/measurement/v1/measurement.proto",
    "corvus/orchestration/v1/log.proto",
    "corvus/orchestration/v1/orchestration.proto",
    "corvus/scoring/v1/scoring.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let files: Vec<String> = FILES.iter().map(|f| format!("{PROTO_ROOT}/{f}")).collect();
    let descriptors = protox::compile(&files, [PROTO_ROOT])?;
    std::fs::write(out_dir.join("corvus_descriptor.bin"), descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(cfg!(feature = "client"))
        .build_server(cfg!(feature = "server"))
        .codec_path("crate::codec::StrictProstCodec")
        // Free-form data stays encoded until someone needs it: see src/raw.rs.
        .extern_path(".google.protobuf.Struct", "crate::raw::RawStruct")
        // A profile read from the cache is sent as the bytes it is kept in: see
        // src/profile_response.rs.
        .extern_path(
            ".corvus.identity.v1.GetProfileResponse",
            "crate::identity::v1::GetProfileResponse",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
