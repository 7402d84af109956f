//! The prompt router: a small ONNX model (sentence encoder plus heads) run by ONNX Runtime on
//! an owner thread, scoring each prompt's complexity and embedding it.

mod config;

pub use config::RouterConfig;
