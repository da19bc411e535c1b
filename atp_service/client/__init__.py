"""The Python client of the gRPC API, with the retry policy the API documents."""

from .api import RETRYABLE, AtpClient, RetryPolicy

__all__ = ["RETRYABLE", "AtpClient", "RetryPolicy"]
