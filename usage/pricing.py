"""What a model call costs: a team's own price for the model, else litellm's price map, else 0.

litellm is imported inside the functions (it takes seconds to import; servers and workers warm
it up in the background) and never fetches its map from the network
(``LITELLM_LOCAL_MODEL_COST_MAP``, set by assistant/llm).
"""

from __future__ import annotations

import functools
import logging
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


def price_for(team_id: int, model: str) -> Price:
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
