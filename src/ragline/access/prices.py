"""What a request costs: USD per million input and output tokens, per deployment, model or default."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_CEILING, Decimal

from ragline.config import ModelPrice, PricesSettings

_NANO_PER_TOKEN = Decimal(1000)  # USD per million tokens -> nano-dollars per token


class PriceTable:
    """Prices from the ``prices`` settings; a deployment's price wins over its model's, then the default."""

    def __init__(self, settings: PricesSettings) -> None:
        def per_token(p: ModelPrice) -> tuple[Decimal, Decimal]:
            return (
                Decimal(str(p.input_per_million)) * _NANO_PER_TOKEN,
                Decimal(str(p.output_per_million)) * _NANO_PER_TOKEN,
            )

        self._default = per_token(settings.default)
        self._models = {name: per_token(p) for name, p in settings.models.items()}
        self._deployments = {name: per_token(p) for name, p in settings.deployments.items()}

    def _price(self, model: str, deployment: str | None) -> tuple[Decimal, Decimal]:
        if deployment is not None and deployment in self._deployments:
            return self._deployments[deployment]
        return self._models.get(model, self._default)

    def cost_nano(
        self, model: str, deployment: str | None, prompt_tokens: int, completion_tokens: int
    ) -> int:
        """The cost in nano-dollars, rounded up."""
        pin, pout = self._price(model, deployment)
        cost = pin * max(0, prompt_tokens) + pout * max(0, completion_tokens)
        return int(cost.to_integral_value(rounding=ROUND_CEILING))

    def max_cost_nano(
        self, model: str, prompt_tokens: int, max_tokens: int, deployments: Sequence[str] = ()
    ) -> int:
        """The most a request can cost: its prompt and ``max_tokens`` at the dearest of the deployments
        it may be served by (its model's price when none is given)."""
        candidates: Sequence[str | None] = list(deployments) or [None]
        return max(self.cost_nano(model, d, prompt_tokens, max_tokens) for d in candidates)
