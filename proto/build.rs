//! Compiles the bus protocol and the admin gRPC API with a vendored `protoc`,
//! so a fresh clone builds without a system protobuf compiler. The admin API
//! also gets a file descriptor set, served by gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=switchboard");
    prost_build::Config::new()
        .protoc_executable(&protoc)
        .bytes(["."])
        .compile_protos(&["switchboard/bus/v1/bus.proto"], &["."])?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut admin = prost_build::Config::new();
    admin.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .type_attribute(".switchboard.admin.v1", "#[derive(serde::Serialize)]")
        .file_descriptor_set_path(out.join("admin_descriptor.bin"))
        .compile_with_config(admin, &["switchboard/admin/v1/admin.proto"], &["."])?;
    Ok(())
}
