//! Boards: device profiles, the memory estimate and `outpost validate`, the start-up memory
//! check of `outpost serve`, and `outpost bench` (see `docs/boards.md`).
//!
//! - [`profiles`]: the qualified boards and `auto` detection.
//! - [`estimate`]: the memory a model and configuration take, part by part.
//! - [`validate`]: the estimate against a board, its verdict and exit code.
//! - [`fit`]: the check `outpost serve` makes against the memory it may use.
//! - [`repack`]: which weights llama.cpp's CPU backend repacks (they stay resident twice).
//! - [`bench`]: speed, memory, power and temperature of a model on this board.
//! - [`sensors`]: power rails and thermal zones in sysfs.

pub mod bench;
pub mod estimate;
pub mod fit;
pub mod profiles;
pub mod repack;
pub mod sensors;
pub mod validate;

pub use fit::DoesNotFit;

/// Writes `text` at `rel` under a fake root (`/proc`, `/sys` trees in tests).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
fn test_write(root: &std::path::Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}
