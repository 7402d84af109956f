//! Where the router's files and ONNX Runtime's library are found.
//!
//! Router directory, first that applies: `[router] dir`; `$OUTPOST_ROUTER_DIR`;
//! `/usr/share/outpost/router` (the packages install it there); the source tree's
//! `runtime/router` (development builds, found through the path this crate was built from).
//!
//! ONNX Runtime, first that applies: `[router] onnxruntime`; `$ORT_DYLIB_PATH`;
//! `/usr/lib/outpost/libonnxruntime.so` (packages); the source tree's
//! `vendor/onnxruntime/libonnxruntime.so` (put there by `scripts/setup.sh`).

use std::path::{Path, PathBuf};

use super::RouterConfig;

/// The packaged router directory.
pub const PACKAGED_DIR: &str = "/usr/share/outpost/router";
/// The packaged ONNX Runtime library.
pub const PACKAGED_ORT: &str = "/usr/lib/outpost/libonnxruntime.so";

fn source_tree(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The router directory to load, and where that choice came from (for messages).
pub fn router_dir(config: &RouterConfig) -> (PathBuf, &'static str) {
    if let Some(dir) = &config.dir {
        return (dir.clone(), "router.dir");
    }
    if let Some(dir) = std::env::var_os("OUTPOST_ROUTER_DIR").filter(|d| !d.is_empty()) {
        return (PathBuf::from(dir), "$OUTPOST_ROUTER_DIR");
    }
    if Path::new(PACKAGED_DIR).join("router.onnx").exists() {
        return (PathBuf::from(PACKAGED_DIR), "the packaged router");
    }
    (source_tree("router"), "the source tree's router")
}

/// The ONNX Runtime library to load, and where that choice came from.
pub fn onnxruntime(config: &RouterConfig) -> (PathBuf, &'static str) {
    if let Some(path) = &config.onnxruntime {
        return (path.clone(), "router.onnxruntime");
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|d| !d.is_empty()) {
        return (PathBuf::from(path), "$ORT_DYLIB_PATH");
    }
    if Path::new(PACKAGED_ORT).exists() {
        return (PathBuf::from(PACKAGED_ORT), "the packaged library");
    }
    (source_tree("../vendor/onnxruntime/libonnxruntime.so"), "the source tree (scripts/setup.sh)")
}
