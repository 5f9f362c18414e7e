//! Errors of the Docker backend.

/// A failure of the Docker backend. Messages name what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine could not be reached or an image is missing.
    #[error(transparent)]
    Images(#[from] crate::images::ImageError),
    /// The run id names containers (DNS names) and a network.
    #[error(
        "run id {run_id:?} is invalid for the docker backend: use 1 to 48 of a-z 0-9 . _ -, starting with a letter or digit"
    )]
    BadRunId {
        /// The rejected id.
        run_id: String,
    },
    /// No free port could be found on 127.0.0.1.
    #[error("cannot find a free port on 127.0.0.1: {source}")]
    Port {
        /// The operating system's answer.
        source: std::io::Error,
    },
    /// A file or directory of the run could not be written.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// What was attempted.
        action: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The operating system's answer.
        source: std::io::Error,
    },
    /// A Docker API call failed.
    #[error("cannot {action}: {message}")]
    Api {
        /// What was attempted.
        action: String,
        /// The engine's answer.
        message: String,
    },
    /// A container did not start or did not become ready in time.
    #[error("the {role} container did not start: {message}")]
    Start {
        /// The container's role.
        role: &'static str,
        /// Why, with the last lines of its log when there are some.
        message: String,
    },
    /// The orchestrator did not answer its liveness probe in time after a
    /// start.
    #[error(
        "the orchestrator did not answer /health/live within {waited_ms} ms; last lines of its log:\n{tail}"
    )]
    NotReady {
        /// How long the harness waited.
        waited_ms: u64,
        /// The last lines of its container's log.
        tail: String,
    },
    /// Something of the topology could not be set up (a proxy, a mount).
    #[error("{message}")]
    Setup {
        /// What went wrong.
        message: String,
    },
    /// A fault could not be applied or reverted.
    #[error("{fault}: {message}")]
    Fault {
        /// The fault or step.
        fault: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A fault needs machinery the run did not prepare.
    #[error("{fault}: the run was not prepared for it (needs {need})")]
    NotPrepared {
        /// The fault.
        fault: &'static str,
        /// The missing need.
        need: &'static str,
    },
    /// The teardown could not remove everything; `gauntlet gc` removes the
    /// rest by label.
    #[error("teardown incomplete (`gauntlet gc` removes the rest): {errors}")]
    Teardown {
        /// Every failure, joined.
        errors: String,
    },
}

impl DockerError {
    /// An API error, with the action that failed.
    pub(crate) fn api(
        action: impl Into<String>,
        error: testcontainers::bollard::errors::Error,
    ) -> DockerError {
        DockerError::Api {
            action: action.into(),
            message: error.to_string(),
        }
    }
}
