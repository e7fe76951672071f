//! Generates the arena's message types from `proto/arena.proto`.
//!
//! The session layer it imports (`proto/engine.proto`, package `tether.v1`)
//! is not generated again: its messages are `tether_proto::pb`'s, so a
//! `Welcome` or `Resume` is the same Rust type in every game.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in when the script is compiled: a build
    // script binary can be reused for a checkout at another path.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let schema_dir = format!("{manifest_dir}/../../proto");
    let schema_dir = schema_dir.as_str();
    for f in ["arena.proto", "engine.proto"] {
        println!("cargo:rerun-if-changed={schema_dir}/{f}");
    }
    let descriptors = protox::compile(["arena.proto"], [schema_dir])?;
    prost_build::Config::new()
        .extern_path(".tether.v1", "::tether_proto::pb")
        .compile_fds(descriptors)?;
    Ok(())
}
