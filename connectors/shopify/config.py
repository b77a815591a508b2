"""Configuration of the Shopify connector: the shop, its token, the API version; options per entity.

Connector level (`ShopifyConfig`, the job file's `config:` block)::

    shop_url: "${SHOP_URL}"          # https://{shop}.myshopify.com, or any base URL (a simulator)
    access_token: "${SHOPIFY_TOKEN}"
    api_version: "2025-01"

Per entity (`ShopifyOptions`, the job file's `entities:` block)::

    products: {}
    prices: {price_list: retail}
    stock_levels: {locations: {WH1: "gid://shopify/Location/1", WH2: "gid://shopify/Location/2"}}
    availability: {channel: web, location: "gid://shopify/Location/1"}   # sink only
    customers: {}
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from kanal.core.connector import EntityOptions, FrozenModel
from kanal.core.http import HttpSettings

DEFAULT_VERSION = "2025-01"
UPSERT_VERSION = "2025-04"
"""The first API version whose `productSet` and `customerSet` take an `identifier` (upsert), and that has `customerSet`."""
_VERSION = re.compile(r"^(\d{4}-(01|04|07|10)|unstable)$")
_LOCATION = re.compile(r"^gid://shopify/Location/\d+$")


class ShopifyConfig(FrozenModel):
    """Where the shop is and how Kanal signs in (an Admin API access token of a custom app)."""

    shop_url: str = Field(
        description="https://{shop}.myshopify.com, or any base URL serving /admin/api/{version}/graphql.json (a simulator)",
        min_length=1,
    )
    access_token: str = Field(description="Admin API access token (shpat_...); scopes: products, inventory, customers")
    api_version: str = Field(
        DEFAULT_VERSION,
        description=(
            "Admin API version (YYYY-MM, quarterly, or 'unstable'). From 2025-04 products and customers are "
            "upserted by handle and email on Shopify's side (`identifier`) and customers written with customerSet; "
            "below it Kanal looks records up before creating them."
        ),
    )
    bulk_threshold: int = Field(
        50,
        ge=1,
        description=(
            "mutations of one write at or above which Kanal runs one bulk operation instead: its lines cost no query "
            "points, starting and polling it costs about 30 points and a second, while 50 mutations cost 500 points, "
            "5 s of a Standard plan's bucket. Below it (streaming's small batches) mutations keep latency low"
        ),
    )
    mutations_per_request: int = Field(
        10, ge=1, le=25, description="mutations sent in one GraphQL request below the bulk threshold (10 cost points each)"
    )
    wait_for_products_s: float = Field(
        120.0,
        ge=0,
        description=(
            "how long prices and stock levels of a SKU not yet in the shop wait for its product (products and "
            "prices travel in parallel); then they are dead letters"
        ),
    )
    bulk_poll_s: float = Field(0.5, gt=0, le=60, description="seconds between polls of a running bulk operation")
    http: HttpSettings = Field(HttpSettings(), description="timeouts and concurrency of the HTTP client")

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION.match(value):
            raise ValueError(f"api_version {value!r} is not a Shopify API version (YYYY-01/04/07/10 or 'unstable')")
        return value

    @field_validator("shop_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"shop_url {value!r} must start with https:// (e.g. https://my-shop.myshopify.com)")
        return value.rstrip("/")

    @property
    def upserts(self) -> bool:
        """Whether the API version upserts by `identifier` and has `customerSet`."""
        return self.api_version == "unstable" or self.api_version >= UPSERT_VERSION

    @property
    def endpoint(self) -> str:
        return f"{self.shop_url}/admin/api/{self.api_version}"


class ShopifyOptions(EntityOptions):
    """Per-entity options; each applies to one entity and is refused elsewhere with the entity named."""

    price_list: str | None = Field(
        None,
        description="prices: the canonical price list that becomes the variant price (other lists are left out)",
    )
    currency: str | None = Field(
        None, description="prices: only prices in this currency (ISO 4217) become variant prices; unset: any"
    )
    locations: dict[str, str] | None = Field(
        None,
        description="stock_levels: canonical location -> Shopify location GID (gid://shopify/Location/N)",
    )
    channel: str | None = Field(
        None,
        description=(
            "availability (sink; required): the sales channel (inventory.channels) whose availability the shop shows; "
            "availability of other channels is skipped"
        ),
    )
    location: str | None = Field(
        None,
        description=(
            "availability (sink; required): the Shopify location GID (gid://shopify/Location/N) whose `available` "
            "quantity shows the channel's availability; keep it out of stock_levels.locations, or the two overwrite "
            "each other"
        ),
    )

    @field_validator("location")
    @classmethod
    def _gid(cls, value: str | None) -> str | None:
        if value is not None and not _LOCATION.match(value):
            raise ValueError(f"location: {value!r} is not a location GID like gid://shopify/Location/1")
        return value

    @field_validator("locations")
    @classmethod
    def _gids(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, location in (value or {}).items():
            if not _LOCATION.match(location):
                raise ValueError(f"locations: {name}: {location!r} is not a location GID like gid://shopify/Location/1")
        return value
