//! The batch job pipeline, shared by `batch-runner run` and (later) the service's workers.
//!
//! Layout, in data-flow order:
//! - [`reader`]: numbered lines with bounded memory;
//! - [`validate`] (with [`dedupe`] and [`bitset`]): the pass over the whole input before any
//!   request is sent;
//! - [`dispatch`]: engines, retries, circuit breaking; sends each request body unparsed;
//! - [`spool`]: results appended as they complete, with an index for finalize;
//! - [`progress`], [`metrics`], [`summary`]: what the operator sees while and after it runs;
//! - [`run`]: wires the stages together.

pub mod bitset;
pub mod dedupe;
pub mod reader;
pub mod validate;
