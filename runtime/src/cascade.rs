//! Confidence of a local answer, from its tokens' log-probabilities and checks on its text.
//!
//! (Interface fixed; the body is filled in by the cascade work.)
