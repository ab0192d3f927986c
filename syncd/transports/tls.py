"""Certificate verification for the HTTP clients of every transport."""

from __future__ import annotations

import ssl
from pathlib import Path

from syncd.errors import UserError


def verify_setting(verify: bool | str | Path) -> ssl.SSLContext | bool:
    """What httpx's `verify=` wants: True/False as given, or a context trusting the CA bundle
    file (or hashed certificate directory) at that path (httpx deprecates `verify=<path>`)."""
    if isinstance(verify, bool):
        return verify
    path = Path(verify)
    try:
        if path.is_dir():
            return ssl.create_default_context(capath=str(path))
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as e:
        raise UserError(
            f"ca_bundle = {str(path)!r} is not accepted: expected a readable PEM file of CA "
            f"certificates or a certificate directory ({e})"
        ) from None
