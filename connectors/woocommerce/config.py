"""Configuration of the WooCommerce connector: the site, its REST keys, per-entity options.

Connector level (`WooConfig`, the job file's `config:` block)::

    url: "${WOO_URL}"                  # the site; the API lives under /wp-json/wc/v3/
    consumer_key: "${WOO_KEY}"         # ck_...
    consumer_secret: "${WOO_SECRET}"   # cs_...

Per entity (`WooOptions`): `prices: {price_list: retail}` names the list
price that becomes `regular_price`; `stock_levels: {location: WH1}` names
the location whose stock becomes the product's `stock_quantity`
(WooCommerce keeps one stock figure per product).
"""

from __future__ import annotations

from typing import Literal

import httpx
from pydantic import Field, SecretStr, field_validator

from kanal.core.connector import EntityOptions, FrozenModel
from kanal.core.errors import register_secret
from kanal.core.http import Auth, Basic, HttpSettings, QueryKey

API_PATH = "/wp-json/wc/v3"
SYSTEM = "woocommerce"


class WooConfig(FrozenModel):
    """Where the shop is and the REST API keys (WooCommerce > Settings > Advanced > REST API)."""

    url: str = Field(description="the site's address, e.g. https://shop.example.com (the API lives under /wp-json/wc/v3/)")
    consumer_key: SecretStr = Field(description="REST API consumer key (ck_...); use ${ENV_VAR}")
    consumer_secret: SecretStr = Field(description="REST API consumer secret (cs_...); use ${ENV_VAR}")
    auth: Literal["auto", "basic", "query"] = Field(
        "auto",
        description=(
            "how the keys travel: basic (HTTP Basic, HTTPS only), query (consumer_key/consumer_secret parameters, "
            "for servers that drop the Authorization header); auto: basic over https, query otherwise"
        ),
    )
    per_page: int = Field(100, ge=1, le=100, description="records per list page (WooCommerce allows at most 100)")
    batch_items: int = Field(
        100, ge=1, le=100, description="items per /batch call (WooCommerce's default limit is 100 across create, update, delete)"
    )
    variations: bool = Field(
        True,
        description="source: read variations through /variations (WooCommerce 10.3 or later); false: products only",
    )
    http: HttpSettings = Field(HttpSettings(), description="timeouts and concurrency of the HTTP client")

    @field_validator("url")
    @classmethod
    def _site(cls, value: str) -> str:
        url = httpx.URL(value.strip())
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"url must be the shop's http(s) address, got {value!r}")
        return str(url).rstrip("/").removesuffix(API_PATH)

    @field_validator("consumer_key", "consumer_secret")
    @classmethod
    def _remember(cls, value: SecretStr) -> SecretStr:
        register_secret(value.get_secret_value())
        return value

    @property
    def api_url(self) -> str:
        return self.url + API_PATH

    def credentials(self) -> Auth:
        """HTTP Basic over HTTPS (WooCommerce's documented way), the query string otherwise."""
        key, secret = self.consumer_key.get_secret_value(), self.consumer_secret.get_secret_value()
        basic = self.auth == "basic" or (self.auth == "auto" and self.url.startswith("https://"))
        return Basic(key, secret) if basic else QueryKey({"consumer_key": key, "consumer_secret": secret})


class WooOptions(EntityOptions):
    """Per-entity options of the WooCommerce source and sink."""

    price_list: str | None = Field(
        None,
        description=(
            "prices: the price list whose list prices become regular_price (sink; required), "
            "and the name given to regular_price when read (source; default 'retail')"
        ),
    )
    location: str | None = Field(
        None,
        description=(
            "stock_levels: the location whose stock becomes stock_quantity (sink; required, other locations are "
            "skipped), and the location name given to stock_quantity when read (source; default 'default')"
        ),
    )
    channel: str | None = Field(
        None,
        description=(
            "availability: the sales channel (inventory.channels) whose availability becomes stock_quantity "
            "(sink; required, other channels are skipped)"
        ),
    )


def woo_options(options: EntityOptions) -> WooOptions:
    """The WooCommerce options of an entity (plain options when a job gave none of ours)."""
    return options if isinstance(options, WooOptions) else WooOptions(mapping=options.mapping, delta=options.delta)
