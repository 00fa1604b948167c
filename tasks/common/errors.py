"""The named errors a user can meet; the command line turns them into a one-line message and an exit code."""


class PipelineError(Exception):
    """Base of every error the pipeline reports to a user.

    `retryable`: whether running the stage again can help. Bad params, bad data and refused promotions cannot,
    so no pipeline error is retried unless its class says so; a crash or a kill (no pipeline error) is.
    """

    exit_code = 1
    retryable = False


class ConfigError(PipelineError):
    """params.yaml is missing, malformed, or has an unknown or ill-typed key."""

    exit_code = 2


class DataError(PipelineError):
    """Input data cannot be read or split."""

    exit_code = 3


class ValidationFailed(PipelineError):
    """A data version failed its Great Expectations suite."""

    exit_code = 4


class PromotionError(PipelineError):
    """The registry or the model store refused a step."""

    exit_code = 5


class ResourceUnavailable(PipelineError):
    """The machine failed the stage, not the data: a full disk. Nothing half-written is left (outputs are written
    atomically), and an ordinary run finishes the job once the cause is gone; retrying at once into the same full
    disk would not, so it is not retried."""

    exit_code = 6


class TrackingServerLost(ResourceUnavailable):
    """The MLflow tracking server did not answer. It may be back in a moment: the flow retries the stage (with its
    delay), and a later run finishes the job once the server is back."""

    retryable = True
