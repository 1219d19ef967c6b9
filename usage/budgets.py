"""Budgets: a team's monthly spending limit and each member's daily tokens, enforced across
every web and worker process.

Running totals live in Redis, one key per team-month (nano-dollars, an integer so sums are
exact) and one per member-day (tokens). A key missing (a new month, a flushed Redis) is seeded
from the daily rollups with ``SET NX``. Then:

- ``check`` (before a message is accepted) refuses when a total has reached its limit;
- ``reserve`` (before every model call) runs one Lua script that checks both totals and, if
  neither limit is reached, adds an estimate of the call to both and notes it as the run's
  hold: check and reservation are one atomic step, so however many processes call at once,
  a call is admitted only while the total *including every call in flight* is below the limit;
- ``settle`` (when the call's usage is recorded) swaps the hold for the real figures.

So the total can pass a limit only by what the last admitted call uses, plus whatever calls in
flight use beyond their estimates (tests/test_budgets_concurrency.py measures it).
Embedded mode (no Redis: one process) keeps the same totals in memory under a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db.models import F, Sum
from django.utils import timezone

from assistant.errors import BudgetExceeded
from config import metrics

if TYPE_CHECKING:
    from accounts.models import Team, User
    from assistant.models import Run

NANO = Decimal(10**9)
HOLD_TTL_SECONDS = 6 * 3600  # a call never takes this long; a crashed worker's hold expires
NO_LIMIT = -1
ADMITTED, TEAM_SPENT, MEMBER_SPENT = 0, 1, 2
SEED_TEAM, SEED_MEMBER = -1, -2


def to_nano(usd: Decimal | int | float) -> int:
    return int((Decimal(str(usd)) * NANO).to_integral_value(ROUND_HALF_UP))


def from_nano(nano: int) -> Decimal:
    return Decimal(nano) / NANO


# --- Keys ------------------------------------------------------------------------------------


def team_key(team_id: int, when: datetime) -> str:
    return f"tandem:budget:team:{team_id}:{when.astimezone(UTC):%Y-%m}"


def member_key(team_id: int, user_id: int | None, when: datetime) -> str:
    return f"tandem:budget:member:{team_id}:{user_id or 0}:{when.astimezone(UTC):%Y-%m-%d}"


def hold_key(hold_id: str) -> str:
    return f"tandem:budget:hold:{hold_id}"


def month_start(when: datetime) -> date:
    return when.astimezone(UTC).date().replace(day=1)


def next_month(when: datetime) -> date:
    first = month_start(when)
    return (first + timedelta(days=32)).replace(day=1)


def _ttl_until(day: date, when: datetime, margin_days: int) -> int:
    end = datetime.combine(day + timedelta(days=margin_days), datetime.min.time(), tzinfo=UTC)
    return max(int((end - when).total_seconds()), 60)


# --- Seeds: the totals as the database has them -------------------------------------------------


def db_team_spent(team_id: int, when: datetime) -> Decimal:
    from .models import DailyUsage

    total = DailyUsage.objects.filter(
        team_id=team_id, day__gte=month_start(when), day__lt=next_month(when)
    ).aggregate(cost=Sum("cost_usd"))["cost"]
    return total or Decimal(0)


def db_member_tokens(team_id: int, user_id: int | None, when: datetime) -> int:
    from .models import DailyMemberUsage

    if not user_id:
        return 0
    total = DailyMemberUsage.objects.filter(
        team_id=team_id, user_id=user_id, day=when.astimezone(UTC).date()
    ).aggregate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))["tokens"]
    return int(total or 0)


# --- The stores --------------------------------------------------------------------------------

# Releases a run's hold (the estimate added by its last reservation) from the keys it went to.
_RELEASE = """
local function release(hold)
  local h = redis.call('HMGET', hold, 'team', 'cost', 'member', 'tokens')
  if h[1] and redis.call('EXISTS', h[1]) == 1 then redis.call('DECRBY', h[1], h[2]) end
  if h[3] and redis.call('EXISTS', h[3]) == 1 then redis.call('DECRBY', h[3], h[4]) end
  redis.call('DEL', hold)
end
"""
# KEYS: team-month total (nano-USD), member-day total (tokens), the run's hold.
# ARGV: budget (nano-USD, -1: none), daily tokens (-1: none), estimate (nano-USD), estimate
# (tokens), hold TTL. Returns {code, total}: 0 admitted, 1/2 team/member limit reached,
# -1/-2 team/member total missing (seed it and call again).
_RESERVE = (
    _RELEASE
    + """
local budget, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local spent, used = redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])
if budget >= 0 and not spent then return {-1, 0} end
if cap >= 0 and not used then return {-2, 0} end
if budget >= 0 and tonumber(spent) >= budget then return {1, spent} end
if cap >= 0 and tonumber(used) >= cap then return {2, used} end
release(KEYS[3])
local cost, tokens = 0, 0
if spent then redis.call('INCRBY', KEYS[1], ARGV[3]); cost = ARGV[3] end
if used then redis.call('INCRBY', KEYS[2], ARGV[4]); tokens = ARGV[4] end
redis.call('HSET', KEYS[3], 'team', KEYS[1], 'cost', cost, 'member', KEYS[2], 'tokens', tokens)
redis.call('EXPIRE', KEYS[3], ARGV[5])
return {0, 0}
"""
)
# KEYS: team-month and member-day totals of now, the run's hold. ARGV: cost, tokens.
_SETTLE = (
    _RELEASE
    + """
release(KEYS[3])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], ARGV[2]) end
return 0
"""
)


class _RedisStore:
    def __init__(self) -> None:
        from assistant.streams import sync_redis

        self.client = sync_redis()
        self.reserve_script = self.client.register_script(_RESERVE)
        self.settle_script = self.client.register_script(_SETTLE)

    def reserve(self, keys: list[str], args: list[int]) -> tuple[int, int]:
        code, total = self.reserve_script(keys=keys, args=args)
        return int(code), int(total)

    def settle(self, keys: list[str], args: list[int]) -> None:
        self.settle_script(keys=keys, args=args)

    def get(self, keys: list[str]) -> list[int | None]:
        return [None if v is None else int(v) for v in self.client.mget(keys)]

    def seed(self, key: str, value: int, ttl: int) -> None:
        self.client.set(key, value, nx=True, ex=ttl)


class _MemoryStore:
    """The same operations for one process (embedded mode); keys carry their month or day,
    so nothing needs to expire."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.holds: dict[str, tuple[str, int, str, int]] = {}
        self.lock = threading.Lock()

    def _release(self, hold: str) -> None:
        held = self.holds.pop(hold, None)
        if held is None:
            return
        for key, amount in ((held[0], held[1]), (held[2], held[3])):
            if key in self.values:
                self.values[key] -= amount

    def reserve(self, keys: list[str], args: list[int]) -> tuple[int, int]:
        team, member, hold = keys
        budget, cap, cost, tokens, _ = args
        with self.lock:
            spent, used = self.values.get(team), self.values.get(member)
            if budget >= 0 and spent is None:
                return SEED_TEAM, 0
            if cap >= 0 and used is None:
                return SEED_MEMBER, 0
            if budget >= 0 and spent is not None and spent >= budget:
                return TEAM_SPENT, spent
            if cap >= 0 and used is not None and used >= cap:
                return MEMBER_SPENT, used
            self._release(hold)
            cost = cost if spent is not None else 0
            tokens = tokens if used is not None else 0
            if spent is not None:
                self.values[team] += cost
            if used is not None:
                self.values[member] += tokens
            self.holds[hold] = (team, cost, member, tokens)
            return ADMITTED, 0

    def settle(self, keys: list[str], args: list[int]) -> None:
        team, member, hold = keys
        with self.lock:
            self._release(hold)
            if team in self.values:
                self.values[team] += args[0]
            if member in self.values:
                self.values[member] += args[1]

    def get(self, keys: list[str]) -> list[int | None]:
        with self.lock:
            return [self.values.get(key) for key in keys]

    def seed(self, key: str, value: int, ttl: int) -> None:
        with self.lock:
            self.values.setdefault(key, value)


_store: _RedisStore | _MemoryStore | None = None
_store_lock = threading.Lock()


def store() -> _RedisStore | _MemoryStore:
    global _store
    with _store_lock:
        if _store is None:
            _store = _RedisStore() if settings.REDIS_URL else _MemoryStore()
        return _store


def reset_store() -> None:
    """Forget the store (tests that switch REDIS_URL)."""
    global _store
    with _store_lock:
        _store = None


# --- Limits and what is left -------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    team_id: int
    user_id: int | None
    budget_usd: Decimal | None
    daily_tokens: int | None

    @classmethod
    def of(cls, team_id: int, user_id: int | None) -> Limits:
        from accounts.models import Team

        found = (
            Team.objects.filter(pk=team_id)
            .values_list("monthly_budget_usd", "member_daily_tokens")
            .first()
        )
        budget, cap = found or (None, None)  # a team deleted meanwhile limits nothing
        return cls(team_id, user_id, budget, cap if user_id else None)

    @property
    def any(self) -> bool:
        return self.budget_usd is not None or self.daily_tokens is not None


def _seed(limits: Limits, which: int, now: datetime) -> None:
    if which == SEED_TEAM:
        key = team_key(limits.team_id, now)
        value = to_nano(db_team_spent(limits.team_id, now))
        store().seed(key, value, _ttl_until(next_month(now), now, 3))
    else:
        key = member_key(limits.team_id, limits.user_id, now)
        value = db_member_tokens(limits.team_id, limits.user_id, now)
        store().seed(key, value, _ttl_until(now.astimezone(UTC).date(), now, 2))


@dataclass(frozen=True)
class Status:
    """Where a member stands against the team's limits (None: no such limit)."""

    budget_usd: Decimal | None
    spent_usd: Decimal | None
    daily_tokens: int | None
    tokens_today: int | None
    now: datetime

    @property
    def budget_percent(self) -> float | None:
        if self.budget_usd is None or self.spent_usd is None:
            return None
        if self.budget_usd <= 0:
            return 100.0
        return float(self.spent_usd / self.budget_usd * 100)

    @property
    def tokens_percent(self) -> float | None:
        if self.daily_tokens is None or self.tokens_today is None:
            return None
        if self.daily_tokens <= 0:
            return 100.0
        return self.tokens_today / self.daily_tokens * 100

    @property
    def budget_exhausted(self) -> bool:
        return self.budget_percent is not None and self.budget_percent >= 100

    @property
    def tokens_exhausted(self) -> bool:
        return self.tokens_percent is not None and self.tokens_percent >= 100

    @property
    def exhausted(self) -> bool:
        return self.budget_exhausted or self.tokens_exhausted

    @property
    def warning(self) -> bool:
        warn = settings.BUDGET_WARN_PERCENT
        return not self.exhausted and any(
            p is not None and p >= warn for p in (self.budget_percent, self.tokens_percent)
        )

    def refusal(self) -> str:
        """Why nothing more can be sent, in words ('' while something can)."""
        # Exhausted means both figures are known; the checks of None are for the type checker.
        if self.budget_exhausted and self.budget_usd is not None and self.spent_usd is not None:
            return team_refusal(self.budget_usd, self.spent_usd, self.now)
        if (
            self.tokens_exhausted
            and self.daily_tokens is not None
            and self.tokens_today is not None
        ):
            return member_refusal(self.daily_tokens, self.tokens_today)
        return ""

    @property
    def short_note(self) -> str:
        """One line for beside the composer."""
        if self.exhausted:
            return "Limit reached: new messages are refused."
        if not self.warning:
            return ""
        parts = []
        warn = settings.BUDGET_WARN_PERCENT
        if self.budget_percent is not None and self.budget_percent >= warn:
            parts.append(f"{self.budget_percent:.0f}% of this month's budget used.")
        if self.tokens_percent is not None and self.tokens_percent >= warn:
            parts.append(f"{self.tokens_percent:.0f}% of your tokens for today used.")
        return " ".join(parts)

    def warnings(self) -> list[str]:
        notes = []
        warn = settings.BUDGET_WARN_PERCENT
        if self.budget_percent is not None and warn <= self.budget_percent < 100:
            notes.append(
                f"This team has used {self.budget_percent:.0f}% of its monthly budget "
                f"(${self.spent_usd:,.2f} of ${self.budget_usd:,.2f} in "
                f"{self.now:%B}). At 100% the assistant stops answering until "
                f"{_restart_day(self.now)} or until a team admin raises the budget."
            )
        if self.tokens_percent is not None and warn <= self.tokens_percent < 100:
            notes.append(
                f"You have used {self.tokens_percent:.0f}% of your {self.daily_tokens:,} "
                f"tokens for today ({self.tokens_today:,} so far); the allowance renews at "
                "midnight UTC."
            )
        return notes


def _restart_day(now: datetime) -> str:
    return f"{next_month(now):%-d %B} (UTC)"


def team_refusal(budget: Decimal, spent: Decimal, now: datetime) -> str:
    return (
        f"This team has used its monthly budget of ${budget:,.2f} "
        f"(${spent:,.2f} spent in {now:%B %Y}), so the assistant will not be asked. A team "
        f"admin can raise the budget on the Usage page; it starts again on {_restart_day(now)}."
    )


def member_refusal(cap: int, used: int) -> str:
    return (
        f"You have used your {cap:,} tokens for today ({used:,} so far), so the assistant "
        "will not be asked. The allowance renews at midnight UTC, or a team admin can raise "
        "it on the Usage page."
    )


def status(team_id: int, user_id: int | None, now: datetime | None = None) -> Status:
    """The totals the next reservation would see (holds of calls in flight included)."""
    now = now or timezone.now()
    limits = Limits.of(team_id, user_id)
    if not limits.any:
        return Status(None, None, None, None, now)
    keys = [team_key(team_id, now), member_key(team_id, user_id, now)]
    spent, used = store().get(keys)
    missing = [
        which
        for which, limit, total in (
            (SEED_TEAM, limits.budget_usd, spent),
            (SEED_MEMBER, limits.daily_tokens, used),
        )
        if limit is not None and total is None
    ]
    for which in missing:
        _seed(limits, which, now)
    if missing:
        spent, used = store().get(keys)
    return Status(
        budget_usd=limits.budget_usd,
        spent_usd=from_nano(spent or 0) if limits.budget_usd is not None else None,
        daily_tokens=limits.daily_tokens,
        tokens_today=(used or 0) if limits.daily_tokens is not None else None,
        now=now,
    )


def check(*, team: Team, user: User | None) -> None:
    """Refuse, in words, when the team's budget or the member's tokens for today are used up
    (services.message_send calls this before it accepts a message)."""
    now = status(team.pk, getattr(user, "pk", None))
    refusal = now.refusal()
    if refusal:
        limit = "team" if now.budget_exhausted else "member"
        metrics.safely(lambda: metrics.BUDGET_REFUSALS.labels(limit, "message").inc())
        raise BudgetExceeded(refusal)


# --- Reservations around one model call -----------------------------------------------------


def estimate(team_id: int, model: str, prompt_chars: int) -> tuple[int, int]:
    """(nano-USD, tokens) to hold for a call: the prompt at ~4 characters a token, and
    BUDGET_RESERVE_COMPLETION_TOKENS for the answer."""
    from .pricing import price_for

    prompt = prompt_chars // 4
    completion = settings.BUDGET_RESERVE_COMPLETION_TOKENS
    price = price_for(team_id, model)
    return to_nano(price.input * prompt + price.output * completion), prompt + completion


def reserve_for(
    *, team_id: int, user_id: int | None, hold_id: str, model: str, prompt_chars: int = 0
) -> None:
    """Atomically: refuse if a limit is reached, else hold an estimate of the call."""
    limits = Limits.of(team_id, user_id)
    if not limits.any:
        return
    now = timezone.now()
    keys = [team_key(team_id, now), member_key(team_id, user_id, now), hold_key(hold_id)]
    cost, tokens = estimate(team_id, model, prompt_chars)
    args = [
        to_nano(limits.budget_usd) if limits.budget_usd is not None else NO_LIMIT,
        limits.daily_tokens if limits.daily_tokens is not None else NO_LIMIT,
        cost,
        tokens,
        HOLD_TTL_SECONDS,
    ]
    for _ in range(3):
        code, total = store().reserve(keys, args)
        if code in (SEED_TEAM, SEED_MEMBER):
            _seed(limits, code, now)
            continue
        # The script answers *_SPENT only for a limit it was given (not NO_LIMIT).
        if code == TEAM_SPENT:
            assert limits.budget_usd is not None
            metrics.safely(lambda: metrics.BUDGET_REFUSALS.labels("team", "call").inc())
            raise BudgetExceeded(team_refusal(limits.budget_usd, from_nano(total), now))
        if code == MEMBER_SPENT:
            assert limits.daily_tokens is not None
            metrics.safely(lambda: metrics.BUDGET_REFUSALS.labels("member", "call").inc())
            raise BudgetExceeded(member_refusal(limits.daily_tokens, total))
        return
    raise RuntimeError("The budget totals could not be seeded")


def settle_for(
    *, team_id: int, user_id: int | None, hold_id: str, cost_usd: Decimal, tokens: int
) -> None:
    """Replace the call's hold with what it really cost (also for calls made without a hold:
    the totals that exist are kept current)."""
    now = timezone.now()
    keys = [team_key(team_id, now), member_key(team_id, user_id, now), hold_key(hold_id)]
    store().settle(keys, [to_nano(cost_usd), tokens])


def reserve(*, run: Run, model: str, messages: list[dict[str, Any]]) -> None:
    chars = sum(
        len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or "")) for m in messages
    )
    reserve_for(
        team_id=run.conversation.team_id,
        user_id=run.requested_by_id,
        hold_id=str(run.uuid),
        model=model,
        prompt_chars=chars,
    )
