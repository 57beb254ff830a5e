//! The loopback HTTP fake, shared with the sinks' tests: `tests/fake/http.rs`.

#[allow(dead_code)] // what only the sinks' tests use
#[path = "../../fake/http.rs"]
mod fake;

pub use fake::*;
