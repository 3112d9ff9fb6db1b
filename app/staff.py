"""Staff passwords: argon2id hashes (argon2-cffi's defaults) and the password rule.

The hash is argon2-cffi's PHC string, which carries its own parameters, so a hash made
under older defaults is recognised at login and replaced (`verify` returns the new
one). Passwords are never logged, echoed or taken on a command line.
"""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import TypeAdapter, ValidationError

from app.schemas import Email

PASSWORD_MIN_CHARS = 12
# argon2 hashes any length, but a multi-megabyte "password" is only a way to burn CPU.
PASSWORD_MAX_CHARS = 1024

_hasher = PasswordHasher()
_email = TypeAdapter(Email)


class InvalidStaffInput(ValueError):
    """A staff email or password that breaks the rules; the message says which rule."""


def normalise_email(value: str) -> str:
    """A staff email as user emails are stored: trimmed, lower-case, validated."""
    try:
        return _email.validate_python(value)
    except ValidationError:
        raise InvalidStaffInput(f"{value.strip()!r} is not a valid email address") from None


def check_password(password: str) -> str:
    """The password itself when it meets the rule; InvalidStaffInput (never echoing it)."""
    if len(password) < PASSWORD_MIN_CHARS:
        raise InvalidStaffInput(f"the password must be at least {PASSWORD_MIN_CHARS} characters")
    if len(password) > PASSWORD_MAX_CHARS:
        raise InvalidStaffInput(f"the password must be at most {PASSWORD_MAX_CHARS} characters")
    if not password.strip():
        raise InvalidStaffInput("the password must not be blank")
    return password


def hash_password(password: str) -> str:
    """An argon2id hash of a password that meets the rule."""
    return _hasher.hash(check_password(password))


@dataclass(frozen=True)
class Verification:
    """The outcome of a password check; `new_hash` is set when the stored one is outdated."""

    ok: bool
    new_hash: str | None = None


def verify(password_hash: str, password: str) -> Verification:
    """Check a password against its stored hash, in argon2's constant-time way."""
    if len(password) > PASSWORD_MAX_CHARS:
        return Verification(ok=False)
    try:
        _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return Verification(ok=False)
    if _hasher.check_needs_rehash(password_hash):
        return Verification(ok=True, new_hash=_hasher.hash(password))
    return Verification(ok=True)
