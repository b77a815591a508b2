"""Every auth kind authenticates; OAuth refreshes before expiry and retries a 401 exactly once;
no secret ever shows in a message, a log line, a stored page request or a budget key."""

from __future__ import annotations

import base64
import logging

import httpx
import orjson
import pytest
import respx

from kanal.core.errors import AuthError
from kanal.core.http import (
    Basic,
    Bearer,
    HeaderToken,
    HttpClient,
    LinkHeader,
    OAuth2ClientCredentials,
    PageRequest,
    QueryKey,
    budgets,
)
from kanal.core.retry import RetryPolicy

CK, CS = "ck_4f1b9c0e77aa", "cs_9d2e5a61f0bb"


class Clock:
    """A clock the test moves by hand, so token expiry needs no waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=[])


def test_header_token_bearer_and_basic_set_their_headers(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    route = router.get("/me").mock(side_effect=_ok)
    for auth in (HeaderToken("X-Shopify-Access-Token", "shpat_1234567890"), Bearer("pat-na1-abcdef"), Basic(CK, CS)):
        with HttpClient("shop", base_url, auth, transport=transport) as client:
            client.request("GET", "me")
    sent = [c.request.headers for c in route.calls]
    assert sent[0]["X-Shopify-Access-Token"] == "shpat_1234567890"
    assert sent[1]["Authorization"] == "Bearer pat-na1-abcdef"
    assert base64.b64decode(sent[2]["Authorization"].removeprefix("Basic ")).decode() == f"{CK}:{CS}"


def test_query_key_credentials_never_reach_a_message_a_log_or_a_stored_next_page(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def woo(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        assert params["consumer_key"] == CK and params["consumer_secret"] == CS
        if params.get("page") == "2":
            return httpx.Response(200, json=[{"id": 3}])
        # WordPress builds its Link URL from the request, credentials included
        link = f"{base_url}/products?consumer_key={CK}&consumer_secret={CS}&page=2"
        return httpx.Response(200, json=[{"id": 1}, {"id": 2}], headers={"Link": f'<{link}>; rel="next"'})

    router.get("/products").mock(side_effect=woo)
    router.get("/orders").mock(
        return_value=httpx.Response(
            401, json={"code": "woocommerce_rest_authentication_error", "message": f"Consumer secret {CS} is invalid."}
        )
    )
    with HttpClient(
        "shop", base_url, QueryKey({"consumer_key": CK, "consumer_secret": CS}), transport=transport
    ) as client:
        pages = list(client.pages(PageRequest("products"), LinkHeader()))
        with pytest.raises(AuthError) as refused:
            client.request("GET", "orders")

    assert [r["id"] for p in pages for r in p.records] == [1, 2, 3]
    stored = pages[0].next
    assert stored is not None and "page=2" in stored.path
    assert CK not in stored.path and CS not in stored.path
    message = str(refused.value)
    assert "401" in message and "orders" in message and "***" in message
    assert CS not in message and CK not in message
    assert "products" in caplog.text  # httpx did log the requests...
    assert CS not in caplog.text and CK not in caplog.text  # ...without the credentials


def test_a_plain_401_is_not_retried(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    route = router.get("/products").mock(return_value=httpx.Response(401, json={"message": "[API] Invalid API key"}))
    with HttpClient("shop", base_url, Bearer("shpat_abcdef123"), transport=transport, retry=fast) as client:
        with pytest.raises(AuthError, match="401"):
            client.request("GET", "products")
    assert route.call_count == 1


class TokenServer:
    """An OAuth2 token endpoint handing out tok-1, tok-2, ... valid for `lifetime` seconds."""

    def __init__(self, router: respx.Router, lifetime: int = 120) -> None:
        self.issued = 0
        self.forms: list[dict[str, str]] = []
        self.lifetime = lifetime
        self.route = router.post("/oauth/token").mock(side_effect=self.issue)

    def issue(self, request: httpx.Request) -> httpx.Response:
        self.forms.append(dict(httpx.QueryParams(request.content.decode())))
        self.issued += 1
        return httpx.Response(
            200, json={"token_type": "Bearer", "access_token": f"tok-{self.issued}", "expires_in": self.lifetime}
        )


def test_oauth_refreshes_the_token_before_it_expires(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    tokens = TokenServer(router, lifetime=120)
    api = router.get("/items").mock(side_effect=_ok)
    clock = Clock()
    auth = OAuth2ClientCredentials(
        f"{base_url}/oauth/token", "client-a", "s3cr3t-client", "api", leeway_s=30, clock=clock
    )
    with HttpClient("erp", base_url, auth, transport=transport) as client:
        client.request("GET", "items")
        clock.now += 60
        client.request("GET", "items")  # still valid: no new token
        clock.now += 31  # 91 s: within 30 s of expiry
        client.request("GET", "items")
    assert [c.request.headers["Authorization"] for c in api.calls] == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    assert tokens.issued == 2
    assert tokens.forms[0] == {
        "grant_type": "client_credentials",
        "scope": "api",
        "client_id": "client-a",
        "client_secret": "s3cr3t-client",
    }


def test_oauth_retries_a_401_exactly_once_with_a_fresh_token(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    tokens = TokenServer(router)
    revoked = {"Bearer tok-1"}
    api = router.get("/items").mock(
        side_effect=lambda r: (
            httpx.Response(401) if r.headers["Authorization"] in revoked else httpx.Response(200, json=[])
        )
    )
    auth = OAuth2ClientCredentials(f"{base_url}/oauth/token", "client-b", "s3cr3t-client-b")
    with HttpClient("erp", base_url, auth, transport=transport, retry=fast) as client:
        assert client.request("GET", "items").status_code == 200
        assert (tokens.issued, api.call_count) == (2, 2)

        revoked.add("Bearer tok-2")
        revoked.add("Bearer tok-3")
        with pytest.raises(AuthError, match="401"):
            client.request("GET", "items")
    assert (tokens.issued, api.call_count) == (3, 4)  # one renewal, one more try, then the error


def test_oauth_json_style_and_a_refused_client_secret_stays_secret(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    secret = "shopware-int-secret-77"
    token = router.post("/api/oauth/token").mock(
        return_value=httpx.Response(
            401, json={"errors": [{"title": "Unauthorized", "detail": f"client_secret {secret} is wrong"}]}
        )
    )
    auth = OAuth2ClientCredentials(f"{base_url}/api/oauth/token", "SWIA123", secret, style="json")
    with HttpClient("shopware", base_url, auth, transport=transport, retry=fast) as client:
        with pytest.raises(AuthError) as refused:
            client.request("GET", "product")
    assert token.call_count == 1  # refused credentials are not retried
    assert orjson.loads(token.calls[0].request.content) == {
        "grant_type": "client_credentials",
        "client_id": "SWIA123",
        "client_secret": secret,
    }
    assert "refused the client credentials" in str(refused.value)
    assert secret not in str(refused.value)


def test_budget_registry_never_holds_a_credential(base_url: str, transport: httpx.MockTransport) -> None:
    token = "shpat_registry_check_42"
    with HttpClient("shop", base_url, HeaderToken("X-Shopify-Access-Token", token), transport=transport) as client:
        assert token not in client.budget.label
    from kanal.core.http import budget as budget_module

    assert all(token not in "|".join(key) for key in budget_module._budgets)
    assert all(token not in b.label for b in budgets())
