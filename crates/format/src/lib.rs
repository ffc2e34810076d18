//! OpenAI batch wire formats, with no I/O.
//!
//! Layout:
//! - [`problem`]: every way an input line can be wrong, with the OpenAI error code, the field
//!   and a message that says how to fix it;
//! - [`input`]: parsing one input line into a [`input::Request`] that borrows from the line, so
//!   the request body is forwarded byte for byte and never re-serialised;
//! - [`rules`]: the file-wide rules (one endpoint and one model per file, or several models
//!   each with an engine) as a small state machine fed one line at a time;
//! - [`endpoints`]: what the image, video and audio endpoints need of a line's body, and how
//!   their requests and answers travel;
//! - [`output`]: writing result lines in the shape OpenAI's batch output files use.

pub mod endpoints;
pub mod input;
pub mod output;
pub mod problem;
pub mod rules;

pub use input::Request;
pub use problem::Problem;
pub use rules::{LineRules, ModelRoutes, RulesConfig, SUPPORTED_URLS};
