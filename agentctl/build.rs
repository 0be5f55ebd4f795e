//! Compiles `proto/node.proto` (client and server) with `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/node.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_protos(&["proto/node.proto"], &["proto"])?;
    Ok(())
}
