"""Each paginator walks a real-shaped list to its end, with the requests the API expects."""

from __future__ import annotations

import httpx
import orjson
import respx

from kanal.core.http import (
    BodyCursor,
    GraphQLCursor,
    HttpClient,
    LinkHeader,
    NextLink,
    ODataNextLink,
    OffsetLimit,
    PageNumber,
    PageRequest,
)

RECORDS = [{"id": n} for n in range(1, 6)]


def _ids(pages: list) -> list[int]:
    return [r["id"] for page in pages for r in page.records]


def test_page_number_stops_at_the_announced_total_pages(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    def woo(request: httpx.Request) -> httpx.Response:
        page, size = int(request.url.params["page"]), int(request.url.params["per_page"])
        headers = {"X-WP-Total": "5", "X-WP-TotalPages": "3"}
        return httpx.Response(200, json=RECORDS[(page - 1) * size : page * size], headers=headers)

    route = router.get("/products").mock(side_effect=woo)
    with HttpClient("shop", base_url, transport=transport) as client:
        paginator = PageNumber(2)
        pages = list(client.pages(PageRequest("products", {"status": "publish"}), paginator))
    assert _ids(pages) == [1, 2, 3, 4, 5]
    assert [dict(c.request.url.params) for c in route.calls] == [
        {"status": "publish", "page": str(n), "per_page": "2"} for n in (1, 2, 3)
    ]
    assert paginator.total(pages[0]) == 5
    assert pages[-1].next is None


def test_page_number_trusts_a_body_total_over_a_repeated_last_page(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    # Magento answers a page past the end with the last page again: only the total stops the walk.
    def magento(request: httpx.Request) -> httpx.Response:
        page = min(int(request.url.params["searchCriteria[currentPage]"]), 2)
        return httpx.Response(200, json={"items": RECORDS[(page - 1) * 2 : page * 2], "total_count": 4})

    route = router.get("/products").mock(side_effect=magento)
    paginator = PageNumber(
        2,
        page_param="searchCriteria[currentPage]",
        size_param="searchCriteria[pageSize]",
        pages_header=None,
        total_header=None,
        total_path="total_count",
        items="items",
    )
    with HttpClient("magento", base_url, transport=transport) as client:
        assert _ids(list(client.pages(PageRequest("products"), paginator))) == [1, 2, 3, 4]
    assert route.call_count == 2


def test_page_number_without_totals_stops_at_a_short_page_and_resumes_from_a_stored_request(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    def plain(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        return httpx.Response(200, json=RECORDS[(page - 1) * 2 : page * 2])

    router.get("/items").mock(side_effect=plain)
    with HttpClient("erp", base_url, transport=transport) as client:
        pages = list(client.pages(PageRequest("items"), PageNumber(2, pages_header=None)))
        assert _ids(pages) == [1, 2, 3, 4, 5]
        stored = orjson.loads(orjson.dumps(pages[0].next.__dict__))  # a chunk spec or delta position holds it
        resumed = list(client.pages(PageRequest(**stored), PageNumber(2, pages_header=None)))
    assert _ids(resumed) == [3, 4, 5]


def test_link_header_follows_the_next_url_unedited(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    next_url = f"{base_url}/products.json?limit=2&page_info=abc"

    def shopify(request: httpx.Request) -> httpx.Response:
        if "page_info" not in request.url.params:
            return httpx.Response(200, json={"products": RECORDS[:2]}, headers={"Link": f'<{next_url}>; rel="next"'})
        return httpx.Response(
            200, json={"products": RECORDS[2:3]}, headers={"Link": f'<{base_url}/products.json?p=1>; rel="previous"'}
        )

    route = router.get("/products.json").mock(side_effect=shopify)
    with HttpClient("shop", base_url, transport=transport) as client:
        pages = list(
            client.pages(
                PageRequest("products.json", {"limit": 2, "updated_at_min": "2024-01-01"}), LinkHeader(items="products")
            )
        )
    assert _ids(pages) == [1, 2, 3]
    # page_info must not be combined with the original filters
    assert dict(route.calls[1].request.url.params) == {"limit": "2", "page_info": "abc"}


def test_body_cursor_in_params_and_in_a_search_body(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    def hubspot(after: str | None) -> httpx.Response:
        start = int(after or 0)
        paging = {"next": {"after": str(start + 2)}} if start + 2 < len(RECORDS) else None
        return httpx.Response(200, json={"results": RECORDS[start : start + 2], "paging": paging})

    listing = router.get("/contacts").mock(side_effect=lambda r: hubspot(r.url.params.get("after")))
    search = router.post("/contacts/search").mock(side_effect=lambda r: hubspot(orjson.loads(r.content).get("after")))
    with HttpClient("crm", base_url, transport=transport) as client:
        listed = list(
            client.pages(
                PageRequest("contacts", {"limit": 2}), BodyCursor("paging.next.after", "after", items="results")
            )
        )
        found = list(
            client.pages(
                PageRequest("contacts/search", method="POST", json={"limit": 2, "filterGroups": []}),
                BodyCursor("paging.next.after", "after", items="results", where="json"),
            )
        )
    assert _ids(listed) == _ids(found) == [1, 2, 3, 4, 5]
    assert [c.request.url.params.get("after") for c in listing.calls] == [None, "2", "4"]
    assert [orjson.loads(c.request.content).get("after") for c in search.calls] == [None, "2", "4"]
    assert orjson.loads(search.calls[2].request.content)["filterGroups"] == []


def test_offset_limit_advances_by_the_limit_until_a_short_page(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    def ebay(request: httpx.Request) -> httpx.Response:
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        return httpx.Response(200, json={"inventoryItems": RECORDS[offset : offset + limit]})

    route = router.get("/inventory_item").mock(side_effect=ebay)
    with HttpClient("ebay", base_url, transport=transport) as client:
        pages = list(client.pages(PageRequest("inventory_item"), OffsetLimit(2, items="inventoryItems")))
    assert _ids(pages) == [1, 2, 3, 4, 5]
    assert [c.request.url.params["offset"] for c in route.calls] == ["0", "2", "4"]


def test_odata_next_link(base_url: str, router: respx.Router, transport: httpx.MockTransport) -> None:
    link = f"{base_url}/items?$skiptoken=abc"

    def bc(request: httpx.Request) -> httpx.Response:
        if "$skiptoken" in request.url.params:
            return httpx.Response(200, json={"value": RECORDS[3:]})
        return httpx.Response(200, json={"@odata.context": "x", "value": RECORDS[:3], "@odata.nextLink": link})

    route = router.get("/items").mock(side_effect=bc)
    with HttpClient("bc", base_url, transport=transport) as client:
        pages = list(
            client.pages(
                PageRequest("items", {"$filter": "lastModifiedDateTime gt 2024-01-01T00:00:00Z"}), ODataNextLink()
            )
        )
    assert _ids(pages) == [1, 2, 3, 4, 5]
    assert str(route.calls[1].request.url) == link


def test_a_server_relative_next_link_resolves_against_the_host_not_the_base_path(
    transport: httpx.MockTransport,
) -> None:
    # Salesforce answers nextRecordsUrl as "/services/data/v59.0/query/01g-2000"
    base = "https://sf-next-link.test/services/data/v59.0"
    router = respx.Router(base_url="https://sf-next-link.test", assert_all_mocked=True)
    router.get("/services/data/v59.0/query").mock(
        return_value=httpx.Response(
            200, json={"records": RECORDS[:2], "done": False, "nextRecordsUrl": "/services/data/v59.0/query/01g-2"}
        )
    )
    router.get("/services/data/v59.0/query/01g-2").mock(
        return_value=httpx.Response(200, json={"records": RECORDS[2:], "done": True})
    )
    with HttpClient("sf", base, transport=httpx.MockTransport(router.handler)) as client:
        pages = list(
            client.pages(
                PageRequest("query", {"q": "SELECT Id FROM Account"}), NextLink("nextRecordsUrl", items="records")
            )
        )
    assert _ids(pages) == [1, 2, 3, 4, 5]


def test_graphql_cursor_passes_the_end_cursor_as_after(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    def shopify(request: httpx.Request) -> httpx.Response:
        after = orjson.loads(request.content)["variables"].get("after")
        start = int(after) if after else 0
        more = start + 2 < len(RECORDS)
        connection = {
            "nodes": RECORDS[start : start + 2],
            "pageInfo": {"hasNextPage": more, "endCursor": str(start + 2)},
        }
        return httpx.Response(200, json={"data": {"products": connection}})

    route = router.post("/graphql.json").mock(side_effect=shopify)
    query = (
        "query($first: Int!, $after: String) { products(first: $first, after: $after) "
        "{ nodes { id } pageInfo { hasNextPage endCursor } } }"
    )
    with HttpClient("shop", base_url, transport=transport) as client:
        pages = list(
            client.pages(
                PageRequest("graphql.json", method="POST", json={"query": query, "variables": {"first": 2}}),
                GraphQLCursor("data.products"),
            )
        )
    assert _ids(pages) == [1, 2, 3, 4, 5]
    assert [orjson.loads(c.request.content)["variables"] for c in route.calls] == [
        {"first": 2},
        {"first": 2, "after": "2"},
        {"first": 2, "after": "4"},
    ]
