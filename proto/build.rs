//! Compiles the bus protocol with a vendored `protoc`, so a fresh clone builds
//! without a system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=switchboard");
    prost_build::Config::new()
        .protoc_executable(protoc)
        .bytes(["."])
        .compile_protos(&["switchboard/bus/v1/bus.proto"], &["."])?;
    Ok(())
}
