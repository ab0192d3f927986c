"""Who may see the list of sessions: with a key set, a reader logs in once with it and gets a
cookie (HttpOnly, SameSite=Strict) holding a digest of the key, never the key itself. Share
pages need no login: their ids are unguessable, as on opencode's own share server."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from ..share_key import key_problem

COOKIE = "syncd_login"
COOKIE_DAYS = 30
# A login form holds one short field; anything longer is not a login.
MAX_FORM_BYTES = 4096


def _token(key: str) -> str:
    return hmac.new(key.encode(), b"syncd share pages login", hashlib.sha256).hexdigest()


def logged_in(request: Request, key: str | None) -> bool:
    """A reader with the login cookie, or a client sending the key header, or no key set."""
    if key is None or key_problem(request.headers, key) is None:
        return True
    given = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(given.encode(), _token(key).encode())


def key_matches(given: str, key: str) -> bool:
    return hmac.compare_digest(given.encode(), key.encode())


async def form_field(request: Request, name: str) -> str:
    """One field of an urlencoded form body ('' when absent or the body is not one)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return ""
    values = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    return values.get(name, [""])[0]


def same_origin(request: Request) -> bool:
    """A form post from this receiver's own pages (browsers send Origin on every POST)."""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


def log_in(response: Response, request: Request, key: str) -> None:
    response.set_cookie(
        COOKIE,
        _token(key),
        max_age=COOKIE_DAYS * 86400,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def log_out(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
