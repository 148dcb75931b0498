"""Tenants and their targets: which controller decides a Route call that names no policy.

A deployment sets a target per tenant: a strong share (`--share-targets "default=0.3,batch=0.1"`) for
routing between the default pair, a spend in USD per 1,000 requests (`--spend-targets "default=3"`)
for routing among candidates. A caller names its tenant in a request metadata key (`--tenant-header`,
default `x-lmroute-tenant`). A Route call without a policy is decided by its tenant's controller for
its router: the share controller (lmroute.service.share_control) without candidates, the spend
controller (lmroute.service.spend_control) with them. A tenant not configured is the `default` tenant
when one is set (so unknown names create no state: a caller cannot grow the server's memory by
inventing tenants), else the call is refused (no policy).

Controllers are keyed by (tenant, router) and created on first use, seeded from the router's calibration
table. When the bundle changes (a hot swap), a controller is re-seeded from the new bundle's table and
keeps its deficit: the window of old scores is not comparable with the new router's.

Targets can change while the server runs (AdminService.SetTargets: `set_share`, `set_spend`, `remove`):
a tenant's controllers hold a new target from their next decision on, keeping their window and
restarting their deficit; a removed target's controllers are dropped. With an outcome store the changes
are recorded there and applied over the settings at startup and, on every replica sharing the store,
as they appear (lmroute.service.target_sync, `apply`); without one they last while the process runs.

State across restarts: every controlled decision is recorded in the outcome store with its tenant and
policy ("target"; "spend_target" with its candidates' qualities and costs); at startup `restore`
replays each controller's latest decisions (in order) from the store, which gives back its window,
deficit and realised value. Replicas that share a store
each control their own traffic: the share of all replicas together is the traffic-weighted mean of
theirs, so it is as close to the target as the furthest replica's own share.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lmroute.outcomes.records import TENANT_RE, TargetChange
from lmroute.service.scorer_api import RouterDescription
from lmroute.service.share_control import ControlSettings, ControlState, ShareController, seed_scores
from lmroute.service.spend_control import SPEND_REPAY, SpendController, SpendState

__all__ = ["DEFAULT_TENANT", "TENANT_RE", "TargetState", "TenantTargets", "parse_share_targets"]

DEFAULT_TENANT = "default"


def parse_share_targets(text: str, *, high: float = 1.0) -> dict[str, float]:
    """`tenant=value,...` -> {tenant: value}, each value in [0, high] (a share: 1; a spend: inf);
    ValueError naming the bad entry (empty text: no targets)."""
    out: dict[str, float] = {}
    for j, part in enumerate(p.strip() for p in text.split(",")):
        if not part:
            continue
        tenant, sep, value = part.partition("=")
        tenant = tenant.strip()
        if not sep or not TENANT_RE.match(tenant):
            raise ValueError(f"entry {j} ({part!r}): expected tenant=value, tenant of 1-64 of [A-Za-z0-9._-]")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(f"entry {j} ({part!r}): value is not a number") from None
        if not (math.isfinite(share) and 0.0 <= share <= high):
            bound = "in [0, 1]" if high == 1.0 else "a finite number >= 0"
            raise ValueError(f"entry {j} ({part!r}): value must be {bound}")
        if tenant in out:
            raise ValueError(f"entry {j} ({part!r}): tenant {tenant} given twice")
        out[tenant] = share
    return out


@dataclass(frozen=True)
class TargetState:
    """One controller as reported: its tenant and router, and the controller's state."""

    tenant: str
    router: str
    bundle_version: str
    state: ControlState


class _Replay:
    """Where a replayed deficit restarts (`TenantTargets.restore`): between two decisions made at different
    targets (a live change restarted it there) and through decisions whose target was not recorded."""

    def __init__(self) -> None:
        self.started = False
        self.last: float | None = None  # the target the decision replayed last was made at

    def deficit_before(self, deficit: float, made_at: float | None) -> float:
        """The deficit a decision made at `made_at` starts from."""
        restart = self.started and made_at != self.last
        self.started, self.last = True, made_at
        return 0.0 if restart or made_at is None else deficit

    def deficit_after(self, deficit: float) -> float:
        """The deficit after it: none known when its target was not recorded."""
        return 0.0 if self.last is None else deficit

    def held(self, target: float) -> bool:
        """Whether the decision replayed last was made at `target` (to the rounding of its units)."""
        return self.last is not None and math.isclose(self.last, target, rel_tol=1e-12, abs_tol=1e-15)


class _Held:
    """A controller and the bundle version whose calibration seeded it."""

    def __init__(self, controller: ShareController, version: str) -> None:
        self.controller = controller
        self.version = version


class TenantTargets:
    """The configured targets and their controllers (see the module docstring); event-loop only."""

    def __init__(
        self,
        targets: Mapping[str, float],
        settings: ControlSettings | None = None,
        *,
        spends: Mapping[str, float] | None = None,
        spend_settings: ControlSettings | None = None,
    ) -> None:
        self.targets = dict(targets)  # tenant -> strong share
        self.spends = dict(spends or {})  # tenant -> USD per 1,000 requests
        self.settings = settings or ControlSettings()
        self.spend_settings = spend_settings or ControlSettings(repay=SPEND_REPAY)
        self._held: dict[tuple[str, str], _Held] = {}
        self._spend: dict[tuple[str, str], SpendController] = {}

    def tenant_of(self, asked: str, *, spend: bool = False) -> str | None:
        """The configured tenant a caller's tenant name maps to for a share target (or, with `spend`, a
        spend target); None = no such target (module docstring)."""
        table = self.spends if spend else self.targets
        if asked in table:
            return asked
        return DEFAULT_TENANT if DEFAULT_TENANT in table else None

    @staticmethod
    def check_share(share: float) -> None:
        """ValueError unless `share` is a strong-share target: in [0, 1]."""
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise ValueError(f"must be in [0, 1] (got {share})")

    @staticmethod
    def check_spend(usd_per_1k: float) -> None:
        """ValueError unless `usd_per_1k` is a spend target: finite and >= 0."""
        if not (math.isfinite(usd_per_1k) and usd_per_1k >= 0.0):
            raise ValueError(f"must be a finite number >= 0 (got {usd_per_1k})")

    def set_share(self, tenant: str, share: float) -> None:
        """Set `tenant`'s strong-share target (ValueError outside [0, 1]); its controllers retarget (the
        target it holds already: nothing changes)."""
        try:
            self.check_share(share)
        except ValueError as exc:
            raise ValueError(f"strong_share: {exc}") from None
        if self.targets.get(tenant) == share:
            return
        self.targets[tenant] = share
        for (name, _router), held in self._held.items():
            if name == tenant:
                held.controller.retarget(share)

    def set_spend(self, tenant: str, usd_per_1k: float) -> None:
        """Set `tenant`'s spend target, USD per 1,000 requests (ValueError below 0 or not finite); its
        controllers retarget (the target it holds already: nothing changes)."""
        try:
            self.check_spend(usd_per_1k)
        except ValueError as exc:
            raise ValueError(f"spend_per_1k_usd: {exc}") from None
        if self.spends.get(tenant) == usd_per_1k:
            return
        self.spends[tenant] = usd_per_1k
        for (name, _router), ctl in self._spend.items():
            if name == tenant:
                ctl.retarget(usd_per_1k)

    def remove(self, tenant: str, *, spend: bool = False) -> bool:
        """Remove `tenant`'s share (or, with `spend`, spend) target and its controllers; False when it had
        none."""
        table = self.spends if spend else self.targets
        if table.pop(tenant, None) is None:
            return False
        if spend:
            self._spend = {key: ctl for key, ctl in self._spend.items() if key[0] != tenant}
        else:
            self._held = {key: held for key, held in self._held.items() if key[0] != tenant}
        return True

    def apply(self, change: TargetChange) -> bool:
        """Apply one stored change (lmroute.service.target_sync); False when it changed nothing (the value
        held already, or a removal of a target the tenant does not have)."""
        spend = change.target == "spend"
        table = self.spends if spend else self.targets
        if change.value is None:
            return self.remove(change.tenant, spend=spend)
        held = table.get(change.tenant)
        (self.set_spend if spend else self.set_share)(change.tenant, change.value)  # a no-op when held
        return held != change.value

    def spend_controller(self, tenant: str, router: str) -> SpendController:
        """The spend controller of (tenant, router), created on first use."""
        key = (tenant, router)
        ctl = self._spend.get(key)
        if ctl is None:
            ctl = self._spend[key] = SpendController(self.spends[tenant], self.spend_settings)
        return ctl

    def controller(self, tenant: str, calibration: RouterDescription, version: str) -> ShareController:
        """The controller of (tenant, router), created or re-seeded for bundle `version` as needed."""
        key = (tenant, calibration.name)
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(
                ShareController(self.targets[tenant], self._seed(calibration), self.settings), version
            )
        elif held.version != version:
            held = self._held[key] = _Held(held.controller.reseeded(self._seed(calibration)), version)
        return held.controller

    def reseed(self, routers: Sequence[RouterDescription], version: str) -> None:
        """A bundle `version` with `routers` serves from now on (a hot swap): each controller of a router it
        serves is re-seeded from its calibration (its deficit and history kept), at once rather than at
        its next decision, so the report says what the next decision meets; a controller of a router it
        no longer serves is dropped."""
        by_name = {r.name: r for r in routers}
        for key, held in list(self._held.items()):
            calibration = by_name.get(key[1])
            if calibration is None:
                del self._held[key]
            elif held.version != version:
                self.controller(key[0], calibration, version)

    def _seed(self, calibration: RouterDescription) -> list[float]:
        shares, thresholds = calibration.calibration_strong_share, calibration.calibration_thresholds
        return seed_scores(shares, thresholds, self.settings.window)

    @property
    def _replayed(self) -> int:
        """Decisions replayed per controller: enough to refill its window and realised share and to
        rebuild its deficit (older decisions weigh less than exp(-3) in its leaky sum)."""
        st = self.settings
        return max(st.window, st.report_window, 3 * st.horizon)

    def restore(
        self,
        routers: Sequence[RouterDescription],
        version: str,
        read: Callable[[str, str, int], Sequence[tuple[str, float, bool, float | None]]],
        read_spend: Callable[[str, str, int], Sequence[str]] | None = None,
    ) -> int:
        """Replay each (tenant, router)'s latest decisions into its controller: read(tenant, router, limit)
        gives [(bundle version, score, strong, the target share it was made at or None)], oldest first
        (`_replayed` of them at most); decisions of another bundle version count in the deficit and the
        realised share but not in the window. Spend controllers replay the `choice` JSON that
        read_spend(tenant, router, limit) gives (its `target_per_1k` the target it was made at).

        The deficit is counted against the target each decision was made at and restarts where that
        changed, and again when the target held now is another, as a live change restarts it
        (`retarget`); decisions whose target was not recorded count in the window and the realised share
        only. Returns the decisions replayed."""
        n = 0
        if read_spend is not None:
            st = self.spend_settings
            limit = max(st.window, st.report_window, 3 * st.horizon)
            for tenant in self.spends:
                for cal in routers:
                    if not cal.models:
                        continue
                    choices = read_spend(tenant, cal.name, limit)
                    if not choices:
                        continue
                    spend = self.spend_controller(tenant, cal.name)
                    replay = _Replay()
                    for raw in choices:
                        c = json.loads(raw)
                        made_at = c.get("target_per_1k")
                        spend.deficit = replay.deficit_before(spend.deficit, made_at)
                        spend.record(c["qualities"], c["costs"], c["chosen"], made_at_per_1k=made_at)
                        spend.deficit = replay.deficit_after(spend.deficit)
                    if not replay.held(1000.0 * spend.target):
                        spend.retarget(1000.0 * spend.target)
                    n += len(choices)
        for tenant in self.targets:
            for cal in routers:
                rows = read(tenant, cal.name, self._replayed)
                if not rows:
                    continue
                ctl = self.controller(tenant, cal, version)
                replay = _Replay()
                for row_version, score, strong, made_at in rows:
                    ctl.deficit = replay.deficit_before(ctl.deficit, made_at)
                    ctl.record(score if row_version == version else math.nan, strong, made_at=made_at)
                    ctl.deficit = replay.deficit_after(ctl.deficit)
                if not replay.held(ctl.target):
                    ctl.retarget(ctl.target)
                n += len(rows)
        return n

    def spend_states(self) -> list[tuple[str, str, SpendState]]:
        """Every spend controller in use: (tenant, router, state), by tenant then router."""
        return [(tenant, router, ctl.state()) for (tenant, router), ctl in sorted(self._spend.items())]

    def states(self) -> list[TargetState]:
        """Every controller in use, by tenant then router."""
        return [
            TargetState(tenant, router, held.version, held.controller.state())
            for (tenant, router), held in sorted(self._held.items())
        ]
