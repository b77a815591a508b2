"""How requests prove who they are, without a secret ever reaching a message or a log.

Every token, password, key and secret handed to an `Auth` is registered
with `register_secret` when the `Auth` is built (plain and URL-encoded, as it
would appear in a query string), and so are OAuth access tokens when they
arrive: `redact` removes them from every Kanal message, and the kit's log
filter removes them from httpx's request log lines.

`identity()` names the credential for the process-wide rate-limit budget
registry by a hash: two connectors holding the same token share one budget,
and the registry never holds the token itself.
"""

from __future__ import annotations

import base64
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import quote, quote_plus

import httpx
import orjson

from kanal.core.errors import AuthError, Unreachable, register_secret
from kanal.core.http.budget import fingerprint
from kanal.core.http.responses import api_message, unreachable


def _secret(value: str) -> str:
    """Register `value` (and its URL-encoded spellings) as a secret; return it."""
    for spelling in (value, quote(value, safe=""), quote_plus(value, safe="")):
        register_secret(spelling)
    return value


class Auth(ABC):
    """A way of authenticating requests; built once per connector instance."""

    @abstractmethod
    def identity(self) -> str:
        """A hash naming the credential (never the credential itself)."""

    @abstractmethod
    def apply(self, request: httpx.Request, http: httpx.Client, system: str) -> None:
        """Add the credential to `request`; `http` reaches a token endpoint if one is needed."""

    def renew(self, request: httpx.Request) -> bool:
        """After a 401 to `request`: drop what may be stale; True if one more try may succeed."""
        return False

    def query_names(self) -> frozenset[str]:
        """Query parameters that carry the credential: removed from URLs a paginator hands back,
        so a stored page position never holds a secret."""
        return frozenset()


class HeaderToken(Auth):
    """A fixed token in a header, e.g. `X-Shopify-Access-Token: shpat_...`."""

    def __init__(self, header: str, token: str, prefix: str = "") -> None:
        self._header = header
        self._value = prefix + _secret(token)

    def identity(self) -> str:
        return fingerprint(type(self).__name__, self._header, self._value)

    def apply(self, request: httpx.Request, http: httpx.Client, system: str) -> None:
        request.headers[self._header] = self._value


class Bearer(HeaderToken):
    """`Authorization: Bearer <token>` (private-app tokens, Odoo API keys, HubSpot)."""

    def __init__(self, token: str) -> None:
        super().__init__("Authorization", token, prefix="Bearer ")


class Basic(HeaderToken):
    """HTTP Basic, e.g. WooCommerce consumer key and secret over HTTPS."""

    def __init__(self, username: str, password: str) -> None:
        _secret(password)
        encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
        super().__init__("Authorization", encoded, prefix="Basic ")


class QueryKey(Auth):
    """Credentials in the query string, e.g. WooCommerce `consumer_key` / `consumer_secret`."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self._params = {name: _secret(value) for name, value in params.items()}

    def identity(self) -> str:
        return fingerprint(type(self).__name__, *(f"{k}={v}" for k, v in sorted(self._params.items())))

    def apply(self, request: httpx.Request, http: httpx.Client, system: str) -> None:
        request.url = request.url.copy_merge_params(self._params)

    def query_names(self) -> frozenset[str]:
        return frozenset(self._params)


class OAuth2ClientCredentials(Auth):
    """OAuth2 client credentials (Shopware integrations, Business Central, Amazon, HubSpot apps).

    The access token is fetched on first use and again shortly before it
    expires (`leeway_s`, at most half its lifetime), so requests do not
    meet an expired token in the normal course. A 401 anyway (revoked,
    rotated) drops the token; the client then retries that request exactly
    once with a fresh one. `style` says how the token endpoint wants the
    client credentials: form fields (RFC 6749), a JSON body (Shopware), or
    HTTP Basic.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        *,
        style: Literal["form", "json", "basic"] = "form",
        leeway_s: float = 60.0,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = _secret(client_secret)
        self._scope = scope
        self._style = style
        self._leeway_s = leeway_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = threading.Lock()

    def identity(self) -> str:
        return fingerprint(type(self).__name__, self._token_url, self._client_id, self._client_secret)

    def apply(self, request: httpx.Request, http: httpx.Client, system: str) -> None:
        with self._lock:  # one fetch when many threads find the token expired
            if self._token is None or self._clock() >= self._refresh_at:
                self._fetch(http, system)
            request.headers["Authorization"] = f"Bearer {self._token}"

    def renew(self, request: httpx.Request) -> bool:
        with self._lock:
            if request.headers.get("Authorization") == f"Bearer {self._token}":
                self._token = None  # not when another thread already replaced it
        return True

    def _fetch(self, http: httpx.Client, system: str) -> None:
        what = f"POST {self._token_url} (OAuth2 token)"
        try:
            response = http.send(self._token_request(http))
        except httpx.TransportError as exc:
            raise unreachable(exc, system, what) from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise Unreachable(system, f"{what} answered {status}: {api_message(response)}", answered=True)
        if status >= 400:
            raise AuthError(system, f"{what} refused the client credentials ({status}): {api_message(response)}")
        try:
            body = orjson.loads(response.content)
            token, lifetime = str(body["access_token"]), float(body.get("expires_in") or 3600)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise AuthError(system, f"{what} answered without an access_token") from None
        self._token = _secret(token)
        self._refresh_at = self._clock() + lifetime - min(self._leeway_s, lifetime / 2)

    def _token_request(self, http: httpx.Client) -> httpx.Request:
        fields = {"grant_type": "client_credentials"}
        if self._scope:
            fields["scope"] = self._scope
        body: dict[str, Any] = {"data": fields}
        if self._style == "basic":
            pair = base64.b64encode(f"{self._client_id}:{self._client_secret}".encode()).decode()
            body["headers"] = {"Authorization": f"Basic {_secret(pair)}"}
        else:
            fields |= {"client_id": self._client_id, "client_secret": self._client_secret}
            if self._style == "json":
                body = {"json": fields}
        return http.build_request("POST", self._token_url, timeout=self._timeout_s, **body)
