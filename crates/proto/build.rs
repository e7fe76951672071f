//! Generates the Rust message types from `proto/engine.proto` (the session
//! layer every game shares) and `proto/tether.proto` (the MMO's messages).
//!
//! The schema is parsed by `protox` (a protobuf compiler written in Rust), so a
//! fresh machine needs nothing but cargo: no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in when the script is compiled: a build
    // script binary can be reused for a checkout at another path.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let schema_dir = format!("{manifest_dir}/../../proto");
    let schema_dir = schema_dir.as_str();
    let files = ["engine.proto", "tether.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={schema_dir}/{f}");
    }
    let descriptors = protox::compile(files, [schema_dir])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
