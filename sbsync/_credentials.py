"""Credentials for the async SDK from the ones a synchronous caller holds.

``azure.servicebus.aio`` awaits ``credential.get_token(...)``. A synchronous ``TokenCredential``
(``azure.identity.DefaultAzureCredential`` and friends) may do blocking HTTP in ``get_token``,
so the adapter runs it in the loop's executor: the loop thread never blocks on it.
``AzureSasCredential`` and ``AzureNamedKeyCredential`` carry no I/O and pass through unchanged,
as do credentials that are already asynchronous.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

from azure.core.credentials import AccessToken, AzureNamedKeyCredential, AzureSasCredential

__all__ = ["AsyncTokenCredentialAdapter", "to_async_credential"]


class AsyncTokenCredentialAdapter:
    """An ``AsyncTokenCredential`` over a synchronous ``TokenCredential``.

    ``token_type`` is copied when the wrapped credential declares one: the SDK reads it to
    choose between JWT and SAS-token authentication.
    """

    def __init__(self, credential: Any) -> None:
        self._credential = credential
        token_type = getattr(credential, "token_type", None)
        if token_type is not None:
            self.token_type = token_type

    def __repr__(self) -> str:
        return f"<AsyncTokenCredentialAdapter for {type(self._credential).__name__}>"

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        loop = asyncio.get_running_loop()
        call = functools.partial(self._credential.get_token, *scopes, **kwargs)
        return await loop.run_in_executor(None, call)

    async def close(self) -> None:
        """The wrapped credential belongs to the caller, who closes it."""

    async def __aenter__(self) -> AsyncTokenCredentialAdapter:
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()


def to_async_credential(credential: Any) -> AzureSasCredential | AzureNamedKeyCredential | Any:
    """Return ``credential`` in a form ``azure.servicebus.aio`` accepts; TypeError if unusable."""
    if isinstance(credential, (AzureSasCredential, AzureNamedKeyCredential)):
        return credential
    get_token = getattr(credential, "get_token", None)
    if not callable(get_token):
        raise TypeError(
            "credential must be a TokenCredential (with get_token), an AzureSasCredential or an "
            f"AzureNamedKeyCredential, not {type(credential).__name__}."
        )
    if inspect.iscoroutinefunction(get_token):
        return credential
    return AsyncTokenCredentialAdapter(credential)
