//! Generates the Rust message types from `proto/tether.proto`.
//!
//! The schema is parsed by `protox` (a protobuf compiler written in Rust), so a
//! fresh machine needs nothing but cargo: no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let schema = format!("{schema_dir}/tether.proto");
    println!("cargo:rerun-if-changed={schema}");
    let descriptors = protox::compile([&schema], [schema_dir])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
