//! The end of a job: its results become the final output and error files.
//!
//! - [`finalize`]: the spool becomes the final files, atomically, in input order (with
//!   `extsort`) or completion order;
//! - [`retry_failed`]: a job seeded with an earlier run's successes, the two merged at the end;
//! - [`salvage`]: the final files of a job that cannot run any more (or was cancelled before
//!   it ran);
//! - [`remote`]: inputs and results at http(s) URLs and in object stores, and uploads that
//!   failed.

pub mod finalize;
pub mod remote;
pub mod retry_failed;
pub mod salvage;
