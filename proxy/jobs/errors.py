"""The errors of the jobs API, in the OpenAI envelope like every other."""

from __future__ import annotations

from pixelgate.core.errors import GatewayError

__all__ = ["JobInterrupted", "JobNotFound", "TooManyJobs"]


class JobInterrupted(GatewayError):
    """The process running a job stopped mid-generation at a provider that cannot be polled again."""

    status = 503
    type = "server_error"
    code = "job_interrupted"
    error_type = "interrupted"


class TooManyJobs(GatewayError):
    """The key has ``jobs.max_active_per_key`` jobs not yet final."""

    status = 429
    type = "rate_limit_error"
    code = "too_many_jobs"
    error_type = "over_limit"


class JobNotFound(GatewayError):
    """No such job, or not this key's: both are a 404, so ids of other keys cannot be probed."""

    status = 404
    type = "invalid_request_error"
    code = "job_not_found"
    error_type = "invalid_request"
