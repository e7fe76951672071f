//! Generates the arena's message types from `proto/arena.proto`.
//!
//! The session layer it imports (`proto/engine.proto`, package `tether.v1`)
//! is not generated again: its messages are `tether_proto::pb`'s, so a
//! `Welcome` or `Resume` is the same Rust type in every game.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    for f in ["arena.proto", "engine.proto"] {
        println!("cargo:rerun-if-changed={schema_dir}/{f}");
    }
    let descriptors = protox::compile(["arena.proto"], [schema_dir])?;
    prost_build::Config::new()
        .extern_path(".tether.v1", "::tether_proto::pb")
        .compile_fds(descriptors)?;
    Ok(())
}
