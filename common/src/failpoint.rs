//! Test failpoints: named places where a test build can be told to misbehave (hang, abort), so
//! that end-to-end tests reach error paths a healthy system never takes.
//!
//! They exist only in builds with the `failpoints` feature (`scripts/test.sh` builds the daemons
//! that way). In any other build [`armed`] is a constant `false`: a release binary ignores
//! [`ENV`] entirely.

/// The environment variable that arms failpoints: a comma-separated list of names.
pub const ENV: &str = "OUTPOST_FAILPOINT";

/// Whether the failpoint `name` is armed in this process.
#[cfg(feature = "failpoints")]
pub fn armed(name: &str) -> bool {
    std::env::var(ENV).is_ok_and(|v| v.split(',').any(|n| n.trim() == name))
}

/// Whether the failpoint `name` is armed in this process: never, in a build without the
/// `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn armed(_name: &str) -> bool {
    false
}

/// Aborts the process (as `kill -9` would end it, leaving files as they are) when `name` is
/// armed.
pub fn crash(name: &str) {
    if armed(name) {
        tracing::warn!(failpoint = name, "failpoint armed: aborting");
        std::process::abort();
    }
}

/// Whether failpoints are compiled into this build.
pub const COMPILED_IN: bool = cfg!(feature = "failpoints");
