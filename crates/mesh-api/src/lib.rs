//! The mesh control plane's gRPC API, `ghostwire.mesh.v1` (proto/ghostwire/mesh/v1/mesh.proto).
//!
//! The prost/tonic code is generated once and committed (src/gen/), so no build runs protoc or
//! a protobuf compiler. After editing the .proto, regenerate with `scripts/gen-mesh-api.sh`;
//! the test `generated_code_is_current` fails while the committed code is stale.

/// `ghostwire.mesh.v1`: messages, the `MeshControl` client and server.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    include!("gen/ghostwire.mesh.v1.rs");
}

/// The .proto, as served to whoever asks which API this build speaks.
pub const PROTO_V1: &str = include_str!("../proto/ghostwire/mesh/v1/mesh.proto");

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn generate(out: &Path) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let fds = protox::compile(["ghostwire/mesh/v1/mesh.proto"], [root.join("proto")])
            .expect("the .proto compiles");
        tonic_prost_build::configure()
            .out_dir(out)
            .emit_rerun_if_changed(false)
            .compile_fds(fds)
            .expect("code generation");
    }

    /// Regenerates into a temporary directory and compares with src/gen/; with
    /// `GW_REGEN_MESH_API=1` it writes src/gen/ instead (scripts/gen-mesh-api.sh).
    #[test]
    fn generated_code_is_current() {
        let committed: PathBuf =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen/ghostwire.mesh.v1.rs");
        if std::env::var_os("GW_REGEN_MESH_API").is_some() {
            generate(committed.parent().unwrap());
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        generate(tmp.path());
        let fresh = std::fs::read_to_string(tmp.path().join("ghostwire.mesh.v1.rs")).unwrap();
        let old = std::fs::read_to_string(&committed).unwrap_or_default();
        assert!(
            fresh == old,
            "{} is stale: run scripts/gen-mesh-api.sh",
            committed.display()
        );
    }
}
