//! Generates the Rust message types from `proto/engine.proto` (the session
//! layer every game shares) and `proto/tether.proto` (the MMO's messages).
//!
//! The schema is parsed by `protox` (a protobuf compiler written in Rust), so a
//! fresh machine needs nothing but cargo: no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let files = ["engine.proto", "tether.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={schema_dir}/{f}");
    }
    let descriptors = protox::compile(files, [schema_dir])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
