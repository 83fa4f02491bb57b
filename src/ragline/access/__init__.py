"""Access control: API keys, tenants, roles, model allow-lists, budgets, spend and rate limits.

``AccessControl`` (service.py) builds every part from the settings; the parts are usable alone:
``Authenticator`` (authn.py), ``Limiter`` (ratelimit.py), ``BudgetKeeper`` (budget.py),
``SpendRecorder`` (spend.py), ``PriceTable`` (prices.py) and ``AccessAdmin`` (admin.py).
"""

from ragline.access.admin import AccessAdmin, CreatedKey
from ragline.access.authn import Authenticator
from ragline.access.budget import BudgetKeeper, Reservation, window_of
from ragline.access.errors import (
    AccessError,
    AuthThrottled,
    BadRequest,
    BudgetExceeded,
    InvalidKey,
    PermissionDenied,
    RateLimited,
    TooManyRequests,
)
from ragline.access.prices import PriceTable
from ragline.access.principal import Principal
from ragline.access.ratelimit import Limiter, RateDecision
from ragline.access.service import AccessControl
from ragline.access.spend import SpendRecorder

__all__ = [
    "AccessAdmin",
    "AccessControl",
    "AccessError",
    "AuthThrottled",
    "Authenticator",
    "BadRequest",
    "BudgetExceeded",
    "BudgetKeeper",
    "CreatedKey",
    "InvalidKey",
    "Limiter",
    "PermissionDenied",
    "PriceTable",
    "Principal",
    "RateDecision",
    "RateLimited",
    "Reservation",
    "SpendRecorder",
    "TooManyRequests",
    "window_of",
]
