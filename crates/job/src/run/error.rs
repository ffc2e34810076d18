//! How a job can fail, and what each failure means for the exit code and for resuming.

use batch_storage::StorageError;

use crate::dispatch::EngineError;
use crate::input::validate::{Report, ValidateError};
use crate::launch::LaunchError;
use crate::output::finalize::FinalizeError;
use crate::output::remote::UploadError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}", .0.render(&.1))]
    Invalid(Box<Report>, String),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("{0}")]
    Paths(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// Stopped (a signal) while the engines were being started; nothing was sent.
    #[error("stopped before any request was sent; run the same command again to start over")]
    StoppedBeforeStart,
    /// The launched engine kept dying; the job is checkpointed and can be resumed.
    #[error("{0}")]
    EngineGaveUp(String),
    /// No engine serves the batch's model.
    #[error(
        "the batch's model {model:?} is not served by any engine; they serve:\n{served}\nSet \
         body.model to one of these (or add --no-model-check if the engine accepts other names)"
    )]
    ModelNotServed { model: String, served: String },
    /// With several models in one file: models their engines do not serve, each described.
    #[error(
        "no engine serves these models of the batch:\n{0}\nRoute each with --model-engine \
         'MODEL=URL', fix body.model on its lines, or add --no-model-check if the engines accept \
         other names"
    )]
    ModelsNotServed(String),
    /// The batch's answers are images, audio or video and nothing was given to store them.
    #[error(
        "the batch's endpoint answers with images, audio or video, which are stored as files \
         beside the results: give --media-dir DIR or s3://bucket/prefix (it defaults to \
         OUTPUT.media only beside a local or s3:// OUTPUT)"
    )]
    NoMediaStore,
    /// A media payload could not be stored; the job stopped, its results so far kept.
    #[error(
        "cannot store an image, audio or video answer: {0}. The job stopped; the results so far \
         are kept: run the same command again to resume once the media directory can be written"
    )]
    MediaNotStored(String),
    /// Checkpoints kept failing; the job stopped with what the last good one recorded.
    #[error("{0}")]
    CheckpointsFailed(String),
    /// The input's bytes differ from those validated; the results so far are kept.
    #[error(
        "{input} changed while the job was running: {what}. Nothing more was sent; the results \
         so far are kept in {state_dir}. Restore the original input and run the same command \
         again to resume, or add --restart to start over with the new input"
    )]
    InputChanged {
        input: String,
        what: String,
        state_dir: String,
    },
    /// The input ended but some validated lines got no result: never finalized.
    #[error(
        "only {results} of {planned} lines have a result although the input ended; the job is \
         not finalized. The results are kept in {state_dir}: run the same command again to \
         send the rest"
    )]
    Incomplete {
        results: u64,
        planned: u64,
        state_dir: String,
    },
}

impl RunError {
    /// True when the input or the command line is at fault (rather than the environment).
    pub fn is_usage(&self) -> bool {
        match self {
            RunError::Validate(e) => matches!(e, ValidateError::Read { .. }),
            RunError::Invalid(..)
            | RunError::Paths(_)
            | RunError::InputChanged { .. }
            | RunError::ModelNotServed { .. }
            | RunError::ModelsNotServed(_)
            | RunError::NoMediaStore => true,
            RunError::State(e) => !matches!(e, StateError::Io { .. }),
            RunError::Engine(e) => !matches!(e, EngineError::NoneReachable(_)),
            RunError::Io { .. }
            | RunError::Finalize(_)
            | RunError::Launch(_)
            | RunError::Storage(_)
            | RunError::Upload(_)
            | RunError::StoppedBeforeStart
            | RunError::EngineGaveUp(_)
            | RunError::CheckpointsFailed(_)
            | RunError::MediaNotStored(_)
            | RunError::Incomplete { .. } => false,
        }
    }

    /// True when the job stopped with its state kept, so the same command resumes it.
    pub fn is_resumable(&self) -> bool {
        matches!(
            self,
            RunError::EngineGaveUp(_)
                | RunError::StoppedBeforeStart
                | RunError::Incomplete { .. }
                | RunError::CheckpointsFailed(_)
                | RunError::MediaNotStored(_)
        )
    }

    pub(super) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
        let context = context.into();
        move |source| RunError::Io { context, source }
    }
}
