"""Shared Access Signature verification for CBS put-token requests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote_plus, unquote_plus

_PREFIX = "SharedAccessSignature "


class AuthError(Exception):
    """The token is malformed, expired or not signed with the namespace key."""


def resource_path(uri: str) -> str:
    """The entity path a token or address names: ``sb://host:port/a/b`` -> ``a/b`` (lower)."""
    if "://" in uri:
        rest = uri.split("://", 1)[1]
        uri = rest.split("/", 1)[1] if "/" in rest else ""
    return uri.strip("/").lower()


def verify_sas(token: str, key_name: str, key: str, now: float | None = None) -> tuple[str, float]:
    """Check a SAS token; return (resource path it grants, expiry as epoch seconds)."""
    if not isinstance(token, str) or not token.startswith(_PREFIX):
        raise AuthError("not a SharedAccessSignature token")
    fields = {}
    for part in token[len(_PREFIX):].split("&"):
        name, sep, value = part.partition("=")
        if sep:
            fields[name] = unquote_plus(value)
    try:
        resource, signature, expiry_text = fields["sr"], fields["sig"], fields["se"]
        expiry = int(expiry_text)
    except (KeyError, ValueError) as exc:
        raise AuthError("token lacks sr, sig or se") from exc
    if fields.get("skn") != key_name:
        raise AuthError("unknown shared access key name")
    to_sign = f"{quote_plus(resource)}\n{expiry}".encode()
    expected = base64.b64encode(hmac.new(key.encode(), to_sign, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, signature):
        raise AuthError("invalid signature")
    if expiry <= (time.time() if now is None else now):
        raise AuthError("token expired")
    return resource_path(resource), float(expiry)


def covers(granted: str, path: str) -> bool:
    """Whether a token for ``granted`` (namespace = "") authorizes entity ``path``."""
    return granted == "" or path == granted or path.startswith(granted + "/")
