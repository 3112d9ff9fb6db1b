"""Verified member identity: an email the credit union's own app signed for the member.

The app where the member is logged in computes hex(HMAC-SHA256(IDENTITY_SECRET, email))
over the email as this service stores it (trimmed, lower-cased) and hands it to the
chat frontend, which passes both on. Only a valid signature makes an email verified;
an email a member types never is.
"""

from __future__ import annotations

import hashlib
import hmac

from app.errors import Unauthorized, Unprocessable
from app.schemas import Identity
from app.settings import Settings

IDENTITY_OFF_DETAIL = "Identity verification is off: no IDENTITY_SECRET is configured"


def sign(secret: str, email: str) -> str:
    """The signature the credit union's app computes for an (already normalised) email."""
    return hmac.new(secret.encode(), email.encode(), hashlib.sha256).hexdigest()


def verified_email(settings: Settings, identity: Identity) -> str:
    """The identity's email when its signature is valid; Unauthorized otherwise.

    Unprocessable when no secret is configured: nothing could ever verify.
    """
    if settings.identity_secret is None:
        raise Unprocessable(IDENTITY_OFF_DETAIL)
    expected = sign(settings.identity_secret.get_secret_value(), identity.email)
    # Constant time, so the response time says nothing about how much of it matched.
    if not hmac.compare_digest(expected.encode(), identity.signature.lower().encode()):
        raise Unauthorized("Identity signature does not match")
    return identity.email
