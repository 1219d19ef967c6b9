"""Encryption of secrets at rest (provider keys, tokens).

Fernet (AES-128-CBC + HMAC) with a key from FIELD_ENCRYPTION_KEY, or derived from SECRET_KEY
so embedded mode works with no extra setup. Values are never rendered back to users.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@cache
def _fernet() -> Fernet:
    secret = settings.FIELD_ENCRYPTION_KEY or settings.SECRET_KEY
    key = base64.urlsafe_b64encode(hashlib.sha256(("tandem-fields:" + secret).encode()).digest())
    return Fernet(key)


def encrypt(plaintext: str) -> str:
    if not plaintext:
        return ""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    if not ciphertext:
        return ""
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        # The key changed since this was stored: treat as unset rather than crash a run.
        return ""
