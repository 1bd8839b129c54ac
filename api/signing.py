"""Webhook signatures, Standard Webhooks style (standardwebhooks.com), stdlib only so a
client can verify them without the server's dependencies.

The secret is `whsec_<base64 key>`; a delivery carries `webhook-id`,
`webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64
HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` (several space-separated signatures may
appear; one matching is enough)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"


class InvalidSignature(ValueError):
    """A webhook delivery whose signature or timestamp does not check out."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value of one delivery."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> None:
    """Raise `InvalidSignature` unless `body` with these headers was signed with `secret`
    within `tolerance_seconds` of `now` (replayed old deliveries are refused)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lower["webhook-id"]
        timestamp = int(lower["webhook-timestamp"])
        given = lower["webhook-signature"].split()
    except (KeyError, ValueError) as exc:
        raise InvalidSignature("missing or malformed webhook-* headers") from exc
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_seconds:
        raise InvalidSignature("timestamp outside the tolerance (a replay?)")
    expected = sign(secret, msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in given):
        raise InvalidSignature("no signature matches")
