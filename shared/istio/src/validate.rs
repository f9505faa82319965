//! Semantic checks serde cannot express. Each kind's checks live next to the code that
//! interprets it; this module is the single entry point `wasmeshctl validate` calls.

use crate::{Error, Resource, Resources};

/// A check over one resource, registered by the crates that interpret that kind.
pub type Check = fn(&Resource, &Resources) -> Vec<Error>;
