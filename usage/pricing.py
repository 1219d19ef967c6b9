"""What a model call costs: a team's own price for the model, else litellm's price map, else 0.

litellm is imported inside the functions (it takes seconds to import; servers and workers warm
it up in the background) and never fetches its map from the network
(``LITELLM_LOCAL_MODEL_COST_MAP``, set by assistant/llm).
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal

log = logging.getLogger(__name__)

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)
# Cost is stored with ten decimal places (UsageRecord.cost_usd).
PLACES = Decimal("1e-10")


@dataclass(frozen=True)
class Price:
    """USD per token, input and output."""

    input: Decimal
    output: Decimal
    source: str  # "team", "litellm" or "unknown"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return (self.input * prompt_tokens + self.output * completion_tokens).quantize(PLACES)


UNKNOWN = Price(ZERO, ZERO, "unknown")


def provider_of(model: str) -> str:
    """ "openai" for "openai/gpt-4o"; for a bare name, the provider litellm infers."""
    if "/" in model:
        return model.split("/", 1)[0][:50]
    return _inferred_provider(model)


@functools.lru_cache(maxsize=256)
def _inferred_provider(model: str) -> str:
    if not model:
        return ""
    from assistant.llm import _litellm

    try:
        return (_litellm().get_llm_provider(model)[1] or "")[:50]
    except Exception:  # litellm raises for names it can't place
        return ""


# A team's own prices, kept by each process between calls: every model call is priced, and the
# lookup was a query each time. Exact all the same — a price saved applies from the next call
# on, in every process: each team has a token (in Redis, so every process sees it; in memory
# in embedded mode, where one process does everything) that is replaced whenever one of its
# prices changes (prices_changed, once committed), and a kept price counts only under the token
# it was read with. The token is read before the price, so a change committed after that read
# always leaves a new token behind it. No token readable (Redis away): no keeping.
PRICES_TOKEN_KEY = "tandem:prices:{}"
PRICES_TOKEN_SECONDS = 24 * 3600  # a token that expired is made anew: the kept prices lapse
_kept: dict[tuple[int, str], tuple[str, Price]] = {}
_local_tokens: dict[int, str] = {}
_lock = threading.Lock()
KEPT_MAX = 10_000


def _token(team_id: int) -> str | None:
    from django.conf import settings

    if not settings.REDIS_URL:
        with _lock:
            return _local_tokens.setdefault(team_id, uuid.uuid4().hex)
    from assistant.streams import sync_redis

    key = PRICES_TOKEN_KEY.format(team_id)
    try:
        client = sync_redis()
        token = client.get(key)
        if token is None:
            client.set(key, uuid.uuid4().hex, nx=True, ex=PRICES_TOKEN_SECONDS)
            token = client.get(key)
    except Exception as exc:  # Redis restarting: price from the database alone
        log.warning("Could not read the prices token of team %s: %r", team_id, exc)
        return None
    return token.decode() if isinstance(token, bytes) else token


def prices_changed(team_id: int) -> None:
    """A price of the team was saved or removed: no process keeps using what it had. Called
    at once (this process) and again once the change is committed (every process)."""
    from django.conf import settings
    from django.db import transaction

    def forget() -> None:
        with _lock:
            _local_tokens.pop(team_id, None)
            for key in [k for k in _kept if k[0] == team_id]:
                del _kept[key]

    def replace() -> None:
        forget()
        if settings.REDIS_URL:
            from assistant.streams import sync_redis

            try:
                sync_redis().set(
                    PRICES_TOKEN_KEY.format(team_id), uuid.uuid4().hex, ex=PRICES_TOKEN_SECONDS
                )
            except Exception:
                # Other processes would keep the old price: say so loudly (the token expires
                # within PRICES_TOKEN_SECONDS, or the next change replaces it).
                log.exception("Could not replace the prices token of team %s", team_id)

    forget()
    transaction.on_commit(replace)


def price_for(team_id: int, model: str) -> Price:
    token = _token(team_id)
    if token is not None:
        kept = _kept.get((team_id, model))
        if kept is not None and kept[0] == token:
            return kept[1]
    price = _read_price(team_id, model)
    if token is not None:
        with _lock:
            if len(_kept) >= KEPT_MAX:
                _kept.clear()
            _kept[(team_id, model)] = (token, price)
    return price


def _read_price(team_id: int, model: str) -> Price:
    from .models import ModelPrice

    own = (
        ModelPrice.objects.filter(team_id=team_id, model=model)
        .values_list("input_usd_per_mtok", "output_usd_per_mtok")
        .first()
    )
    if own is not None:
        return Price(own[0] / MILLION, own[1] / MILLION, "team")
    return map_price(model)


@functools.lru_cache(maxsize=256)
def map_price(model: str) -> Price:
    """litellm's price for ``model`` (per token), or zero when the map doesn't have it. Cached:
    the map is fixed for the life of the process."""
    from assistant.llm import _litellm

    litellm = _litellm()
    try:
        # 1M tokens each way gives the per-token prices without float dust at small counts.
        prompt, completion = litellm.cost_per_token(
            model=model, prompt_tokens=1_000_000, completion_tokens=1_000_000
        )
    except Exception:  # litellm's ModelNotMappedError, BadRequestError for unknown providers
        log.debug("No price for %s in litellm's map", model)
        return UNKNOWN
    return Price(Decimal(str(prompt)) / MILLION, Decimal(str(completion)) / MILLION, "litellm")


def cost(team_id: int, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    if not prompt_tokens and not completion_tokens:
        return ZERO
    return price_for(team_id, model).cost(prompt_tokens, completion_tokens)
