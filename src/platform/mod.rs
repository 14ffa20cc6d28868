//! Platforms: where a revision plan becomes running workloads.

pub mod kubernetes;
