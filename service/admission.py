"""Admission: which calls enter the queue, decided at once from the measured cost of scoring.

Three bounds, checked in this order when a call of `n` prompts arrives (`refusal`):

1. memory: the prompts admitted and not yet answered stay within `max_queue` (QueueFull, QUEUE_FULL);
   while another tenant asks too (`tenant_fair_share`; a tenant asks when it has prompts admitted or
   sent a call within the queue timeout, refused or not), the last quarter of the queue is kept for
   tenants holding nothing yet or few prompts (at most a sixteenth of `max_queue`, the call's included),
   so that one tenant's flood of large calls cannot fill the memory bound and keep every other tenant
   out (a tenant holding nothing is not flooding: its one call may enter, so an idle server still
   admits any call that fits the queue);
2. the caller's deadline: at the measured cost, `n` prompts alone need longer than the deadline leaves
   (DeadlineExpired, DEADLINE_TOO_SHORT: no retry can succeed, so none is offered); or they would
   finish after it, sharing the scorer with the calls queued now (QueueFull, OVERLOADED, with the delay
   after which that work has drained);
3. queue wait: the work ahead of a newly queued prompt (the running batch and the visits the queue makes
   before the new call's first: batches take tenants in turn and, within a tenant, its calls in turn, up
   to `per_call` prompts a visit; lmroute.service.batch_queue) plus the new call's own first visit stays
   within `admit_wait_ms`, and never below two batches (2 x `max_batch_ms`), so the scorer always has a
   next batch ready (QueueFull, OVERLOADED, with a retry delay). A long call counts one visit here,
   however long it is. With one tenant that is one round over the queued calls; with several
   (`tenant_fair_share`), a call waits for its own tenant's queued calls and, meanwhile, the visits each
   other tenant with calls queued gets (a tenant's visit takes the same work, whoever's; the others
   taken to stay queued, and a tenant that had calls queued within the queue timeout taken to come
   back), so a tenant that floods the queue is refused while another, with little queued, still enters
   and is answered after a visit of each: one tenant cannot starve another (within a tenant, calls
   compete as before).

An idle server admits any call that fits bounds 1 and 2, so a call of any allowed size can succeed.
Until the first batch is measured, only bound 1 applies.

Cost is measured in tokens of work, not prompts: a prompt's scoring time grows with its length and with
the routers it asks for (a BERT router reads the prompt with a transformer of its own; mf only reads the
shared embedding), and prompts in one deployment range from ten tokens to the encoder's limit.
`ServiceRate` keeps exponentially weighted averages over the batches it scores: the scorer's seconds per
token of what every prompt costs (the shared encoder and the batch's overhead), each router's own seconds
per token of the prompts that asked for it (when the scorer reports them, `ScoredBatch.router_s`), and
the tokens per prompt. A prompt of `n` tokens asking for routers R is `n x weight(R)` tokens of work,
`weight(R) = 1 + sum over R of (router's seconds per token / shared seconds per token)`; a work token
takes the shared seconds per token. Queued prompts are counted by their own work (token counts from
admission, weights from when they were queued), a new call's by the average length at its routers'
weight. The limits follow the measurements (Little's law: work in front = rate x wait), so admission
adapts when prompts get longer, routers costlier or the machine slower; one batch counts at most
MAX_STEP_RATIO times the current costs, so a single paused batch does not refuse the calls after it.
`batch_budget` turns `max_batch_ms` into a budget of work tokens for the next batch, so a batch of long
or costly prompts holds fewer of them and its time, part of every queued prompt's wait, stays bounded.

`Admission` counts the admitted prompts; a call holds its `Permit` (`with permit:`) until it is answered.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

from lmroute.service.config import BatchPolicy
from lmroute.service.errors import DeadlineExpired, QueueFull, ServiceError

__all__ = ["Admission", "CostLine", "Load", "Permit", "ServiceRate", "batch_budget", "refusal", "tenant_reserve"]

_MIN_RETRY_MS = 10
_MAX_RETRY_MS = 10_000


def _ewma(old: float | None, x: float, smoothing: float) -> float:
    """An exponentially weighted mean moved towards `x` (`x` itself when there is none yet)."""
    return x if old is None else old + smoothing * (x - old)


class CostLine:
    """A cost against a size (seconds against tokens or characters), as a line: the exponentially
    weighted least-squares fit of the observed (size, seconds) pairs. `line()` is (fixed seconds, seconds
    per unit) or None while the sizes barely differ (the line is not determined) or it does not rise; a
    negative fixed cost becomes 0 with the mean cost per unit as slope. Unlike a proportional rate it
    does not charge a big step the fixed cost of the small ones as if that grew with the size."""

    def __init__(self, smoothing: float = 0.2) -> None:
        self.smoothing = smoothing
        self._moments: tuple[float, float, float, float] | None = None  # E[x], E[y], E[xx], E[xy]

    def observe(self, size: float, seconds: float) -> None:
        """One measured step of `size` units that took `seconds`."""
        x, y = float(size), float(seconds)
        m = self._moments or (None, None, None, None)
        a = self.smoothing
        self._moments = (_ewma(m[0], x, a), _ewma(m[1], y, a), _ewma(m[2], x * x, a), _ewma(m[3], x * y, a))

    def line(self) -> tuple[float, float] | None:
        if self._moments is None:
            return None
        mx, my, mxx, mxy = self._moments
        spread = mxx - mx * mx
        if spread <= (0.05 * mx) ** 2:
            return None
        slope = (mxy - mx * my) / spread
        if slope <= 0.0:
            return None
        fixed = my - slope * mx
        return (fixed, slope) if fixed >= 0.0 else (0.0, my / mx)


MAX_STEP_RATIO = 4.0
"""A scored batch counts in the measured costs at most this many times their current value: a batch
slowed by a pause (a garbage collection, the thread descheduled) moves the estimate by at most 60 %
(smoothing 0.2 x (4 - 1)) instead of multiplying it (a spurious OVERLOADED for the calls that follow),
while a lasting slowdown is followed within a few batches."""


class ServiceRate:
    """Exponentially weighted seconds per work token, each router's relative cost and tokens per prompt
    of the scored batches (None until a batch is observed). Each batch's costs count at most
    MAX_STEP_RATIO times the current ones."""

    def __init__(self, smoothing: float = 0.2) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1] (got {smoothing})")
        self.smoothing = smoothing
        self.seconds_per_token: float | None = None  # the shared cost of a token (encoder, overhead)
        self.tokens_per_prompt: float | None = None
        self.router_seconds_per_token: dict[str, float] = {}  # a router's own cost of a token it reads
        self.seconds_per_prompt: float | None = None  # all of a batch's time per prompt, at its mix
        self._line = CostLine(smoothing)  # a batch's shared seconds against its tokens, for `batch_seconds`

    def observe(
        self, n_prompts: int, n_tokens: int, seconds: float, routers: Mapping[str, tuple[float, int]] | None = None
    ) -> None:
        """One scored batch of `n_prompts` prompts holding `n_tokens` tokens that took `seconds`;
        `routers`: name -> (seconds the scorer spent in that router alone, tokens of the prompts that
        asked for it), for the routers whose time the scorer reports (the rest counts as shared)."""
        if n_prompts <= 0 or n_tokens <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        own = {r: (s, t) for r, (s, t) in (routers or {}).items() if t > 0 and math.isfinite(s) and s >= 0}
        shared = max(seconds - sum(s for s, _ in own.values()), 1e-9)
        self.seconds_per_token = self._cost(self.seconds_per_token, shared / n_tokens)
        self.tokens_per_prompt = _ewma(self.tokens_per_prompt, n_tokens / n_prompts, self.smoothing)
        self.seconds_per_prompt = self._cost(self.seconds_per_prompt, max(seconds, 1e-9) / n_prompts)
        for r, (s, t) in own.items():
            self.router_seconds_per_token[r] = self._cost(self.router_seconds_per_token.get(r), s / t)
        self._line.observe(n_tokens, shared)

    def _cost(self, old: float | None, x: float) -> float:
        """A cost moved towards `x`, counted at most MAX_STEP_RATIO times `old`."""
        if old is not None and old > 0.0:
            x = min(x, MAX_STEP_RATIO * old)
        return _ewma(old, x, self.smoothing)

    @property
    def measured(self) -> bool:
        return self.seconds_per_token is not None and self.tokens_per_prompt is not None

    def weight(self, routers: Iterable[str]) -> float:
        """Work tokens per token of a prompt that asks for `routers`: 1 + each measured router's own cost
        relative to the shared cost (a router not measured yet adds nothing)."""
        if not self.seconds_per_token:
            return 1.0
        return 1.0 + sum(self.router_seconds_per_token.get(r, 0.0) for r in routers) / self.seconds_per_token

    def seconds(self, *, tokens: float = 0.0, prompts: float = 0.0, weight: float = 1.0) -> float:
        """The time to score `tokens` work tokens plus `prompts` prompts of average length at `weight`
        (0.0 unmeasured)."""
        if self.seconds_per_token is None or self.tokens_per_prompt is None:
            return 0.0
        return (tokens + prompts * self.tokens_per_prompt * weight) * self.seconds_per_token

    def batch_line(self) -> tuple[float, float] | None:
        """(seconds a batch costs whatever it holds, seconds per token on top): `CostLine` of the observed
        batches' shared seconds against their tokens."""
        return self._line.line()

    def batch_seconds(self, *, tokens: float = 0.0, prompts: float = 0.0, weight: float = 1.0) -> float:
        """The time to score ONE batch of this work (`seconds`'s arguments): with `batch_line`, its fixed
        cost plus its tokens at the line's slope (and at the routers' own costs, by `weight`), so that a
        big batch is not charged the per-call overhead of the one-prompt batches as if it grew with its
        tokens; else `seconds`. For deciding whether a batch is cheap enough to run inline."""
        line = self.batch_line()
        if line is None or self.seconds_per_token is None or self.tokens_per_prompt is None:
            return self.seconds(tokens=tokens, prompts=prompts, weight=weight)
        fixed, slope = line
        own_tokens = (tokens + prompts * self.tokens_per_prompt * weight) / weight
        return fixed + own_tokens * (slope + (weight - 1.0) * self.seconds_per_token)

    @property
    def prompts_per_s(self) -> float | None:
        """The measured rate in prompts per second at the scored batches' mix of lengths and routers;
        None before the first batch."""
        return None if self.seconds_per_prompt is None else 1.0 / self.seconds_per_prompt


@dataclass(frozen=True)
class Load:
    """What admission sees of the scheduler: prompts admitted and unanswered (`in_flight`), the work
    tokens of the batch being scored (`running_tokens`) and of each queued visit that comes before the
    new call's first one (`visits`: a call's next `per_call` prompts each; `BatchQueue.visits_ahead`),
    the prompts the caller's tenant has admitted (`held`) and whether another tenant asks too
    (`contended`: `Admission.contended`; always False without `tenant_fair_share`).

    A newly queued prompt waits about that long behind the running batch: `ahead_tokens`, however long
    the queued calls are. A call of `n` prompts needs ceil(n / per_call) visits, each behind about as
    much."""

    in_flight: int
    running_tokens: float = 0.0
    visits: tuple[float, ...] = ()
    per_call: int = 1
    held: int = 0
    contended: bool = False

    @property
    def ahead_tokens(self) -> float:
        return self.running_tokens + sum(self.visits)


def batch_budget(policy: BatchPolicy, rate: ServiceRate) -> int | None:
    """Work tokens the next batch may hold: what the scorer scores in `max_batch_ms` at the measured cost
    (None: no such budget, before the first batch or with `max_batch_ms` 0). A batch always takes at
    least one prompt."""
    if policy.max_batch_ms == 0 or rate.seconds_per_token is None:
        return None
    return max(1, int(policy.max_batch_ms / 1000.0 / rate.seconds_per_token))


def _retry_ms(seconds: float) -> int:
    """A retry delay in whole milliseconds, rounded up (so the work has drained by then), clamped."""
    return int(min(max(math.ceil(seconds * 1000.0 - 1e-6), _MIN_RETRY_MS), _MAX_RETRY_MS))


def _ms(seconds: float) -> str:
    """`seconds` in milliseconds: 3 significant digits below 100 ms (0.042 ms, 12.3 ms), whole above."""
    ms = seconds * 1000
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def refusal(
    n: int, timeout_s: float | None, load: Load, policy: BatchPolicy, rate: ServiceRate, weight: float = 1.0
) -> ServiceError | None:
    """Why a call of `n` prompts is refused now (the error to raise), or None to admit it.

    `timeout_s` is the caller's remaining deadline (None: no deadline); `weight` the work tokens per
    token of its prompts (`ServiceRate.weight` of the routers it asks for)."""
    if load.in_flight + n > policy.max_queue:
        return QueueFull(
            f"queue full: {load.in_flight} of {policy.max_queue} prompts admitted, {n} more asked",
            retry_after_ms=_retry_ms(rate.seconds(prompts=load.in_flight + n - policy.max_queue, weight=weight))
            if rate.measured
            else None,
        )
    common, light = tenant_reserve(policy.max_queue)
    if load.contended and load.held > 0 and load.in_flight + n > common and load.held + n > light:
        return QueueFull(
            f"queue full for this tenant: {load.in_flight} of {policy.max_queue} prompts admitted, {load.held} "
            f"of them its own, {n} more asked; while other tenants ask, the last {policy.max_queue - common} "
            f"places are kept for tenants holding nothing yet or at most {light}",
            retry_after_ms=_retry_ms(rate.seconds(prompts=load.in_flight + n - common, weight=weight))
            if rate.measured
            else None,
        )
    if not rate.measured:
        return None
    if timeout_s is not None:
        alone_s = rate.seconds(prompts=n, weight=weight)
        if alone_s > timeout_s:
            return DeadlineExpired(
                f"deadline: {n} prompt{'s' if n != 1 else ''} need{'s' if n == 1 else ''} about {_ms(alone_s)} at "
                "the measured cost and the deadline "
                f"leaves {_ms(max(timeout_s, 0.0))}; split the call or give it a longer deadline",
                reason="DEADLINE_TOO_SHORT",
            )
        rounds = math.ceil(n / load.per_call)
        shared_s = rate.seconds(tokens=load.running_tokens + rounds * sum(load.visits), prompts=n, weight=weight)
        if shared_s > timeout_s:
            return QueueFull(
                f"overloaded: with the {load.in_flight} prompts in flight the call needs about "
                f"{_ms(shared_s)} and the deadline leaves {_ms(timeout_s)}",
                reason="OVERLOADED",
                retry_after_ms=_retry_ms(shared_s - timeout_s),
            )
    if load.in_flight == 0:
        return None
    ahead_s = rate.seconds(tokens=load.ahead_tokens)
    own_s = rate.seconds(prompts=min(n, load.per_call), weight=weight)
    limit_s = max(policy.admit_wait_ms, 2 * policy.max_batch_ms) / 1000.0
    if ahead_s + own_s > limit_s:
        return QueueFull(
            f"overloaded: about {_ms(ahead_s)} of work ahead (the running batch and {len(load.visits)} visits "
            f"of queued calls); admitting up to {_ms(limit_s)}",
            reason="OVERLOADED",
            retry_after_ms=_retry_ms(ahead_s + own_s - limit_s),
        )
    return None


def tenant_reserve(max_queue: int) -> tuple[int, int]:
    """(the places of the queue any tenant may fill, the most prompts a tenant holding some may hold, the
    call's included, to enter the rest) while other tenants ask: the last quarter of the queue is kept
    for tenants holding nothing yet or at most a sixteenth of it (module docstring, bound 1)."""
    reserve = max_queue // 4
    return max_queue - reserve, max(1, reserve // 4) if reserve else 0


class Admission:
    """A counter of the prompts admitted and not yet answered, bounded by `limit`, and per tenant; and the
    tenants that asked within the last `recent_s` seconds (`note`, `contended`)."""

    def __init__(self, limit: int, recent_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.recent_s = recent_s
        self._clock = clock
        self._in_use = 0
        self._held: dict[str, int] = {}  # tenant -> permits held (tenants holding none left out)
        self._asked: OrderedDict[str, float] = OrderedDict()  # tenant -> when it last asked, oldest first

    @property
    def in_use(self) -> int:
        return self._in_use

    def held(self, tenant: str) -> int:
        """The permits `tenant`'s calls hold."""
        return self._held.get(tenant, 0)

    def note(self, tenant: str) -> None:
        """`tenant` sends a call now (admitted or not)."""
        now = self._clock()
        self._asked[tenant] = now
        self._asked.move_to_end(tenant)
        while self._asked and next(iter(self._asked.values())) < now - self.recent_s:
            self._asked.popitem(last=False)

    def contended(self, tenant: str) -> bool:
        """Whether a tenant other than `tenant` holds permits or asked within `recent_s` (after `note`)."""
        return len(self._held) > (tenant in self._held) or len(self._asked) > (tenant in self._asked)

    def try_acquire(self, n: int, tenant: str = "") -> Permit | None:
        """`n` permits at once for `tenant` (hold them with `with permit:`), or None when fewer than `n`
        are free."""
        if self._in_use + n > self.limit:
            return None
        self._in_use += n
        self._held[tenant] = self._held.get(tenant, 0) + n
        return Permit(self, n, tenant)

    def _give_back(self, n: int, tenant: str) -> None:
        self._in_use -= n
        left = self._held[tenant] - n
        if left:
            self._held[tenant] = left
        else:
            del self._held[tenant]
        assert self._in_use >= 0 and left >= 0, "admission got back more permits than it gave"


class Permit:
    """`n` admission permits, given back when the `with` block holding them exits."""

    def __init__(self, admission: Admission, n: int, tenant: str = "") -> None:
        self._admission = admission
        self.n = n
        self.tenant = tenant
        self._held = True

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._held, "permit given back twice"
        self._held = False
        self._admission._give_back(self.n, self.tenant)
