"""The store's versioned schema: the migrations, in order, written once for both databases.

`MIGRATIONS[i]` takes a store from schema version i to i + 1. A statement names column types by
placeholders that each dialect fills in (`{id}`: an auto-numbered primary key, `{blob}`: bytes,
`{bigint}`, `{real}`), so SQLite and PostgreSQL run the same schema. A `LOCK TABLE` statement runs on
PostgreSQL only: on SQLite a migration's transaction holds the whole database's write lock already.
The version a store is at lives in the one-row table `lmroute_schema`; a store at a version newer than
this code knows is refused (the store was migrated by a newer lmroute: upgrade this one), never
downgraded.

Version 1:
    decisions   one row per routing decision (lmroute.outcomes.records.Decision); `scores` is JSON
    outcomes    one row per (target, kind, model, source): a model's quality on a decided prompt
                (target `d:<decision id>`) or on a prompt by its hash (target `p:<sha256>`)
Version 2:
    adaptations one row per adaptation run (`lmroute-export adapt`): the parent bundle, the candidate's
                version when one was written, the gate's verdict and its full report (JSON)
Version 3:
    decisions   + tenant, policy: the tenant a Route decision was made for and the policy that made it
                (a share or spend target replays its own decisions after a restart)
Version 4:
    decisions   + choice: a Route among candidates' models, estimates and choice (JSON); under a live
                target also the target it was made at (`target_per_1k`; a share target's decision
                holds only `{"target": share}`), which a restart replays against (no schema change)
Version 5:
    outcomes    + reporter: the tenant the reporting caller spoke for ("" none), part of the key
                (target, kind, model, source, reporter). The table is rebuilt to change its key (SQLite
                cannot drop a constraint), other writers held off meanwhile; rows keep their order (ids
                renumbered in id order) and get reporter "", as do rows an older server writes after
Version 6:
    target_changes  one row per live target change (AdminService.SetTargets): the tenant, the target
                ("strong_share" or "spend"), its new value (NULL: removed); servers apply them in id
                order over their settings, at startup and as they appear
Version 7:
    decisions   + caller: the tenant the deciding call came from ("" none), whatever policy decided it
                (`tenant` is the target's tenant under a target)
"""

from __future__ import annotations

__all__ = ["COPIED", "MIGRATIONS", "SCHEMA_VERSION"]

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE decisions (
            decision_id TEXT PRIMARY KEY,
            time_ms {bigint} NOT NULL,
            kind TEXT NOT NULL,
            bundle_version TEXT NOT NULL,
            router TEXT NOT NULL,
            scores TEXT NOT NULL,
            threshold {real},
            chosen_model TEXT,
            propensity {real},
            strong_model TEXT NOT NULL,
            weak_model TEXT NOT NULL,
            prompt_sha256 TEXT NOT NULL,
            prompt_text TEXT,
            n_tokens INTEGER NOT NULL,
            prompt_chars INTEGER,
            encoder_id TEXT NOT NULL,
            embedding {blob}
        )""",
        "CREATE INDEX decisions_time ON decisions (time_ms)",
        "CREATE INDEX decisions_prompt ON decisions (prompt_sha256)",
        """CREATE TABLE outcomes (
            id {id},
            target TEXT NOT NULL,
            decision_id TEXT,
            prompt_sha256 TEXT NOT NULL,
            prompt_text TEXT,
            kind TEXT NOT NULL,
            model TEXT NOT NULL,
            quality {real} NOT NULL,
            source TEXT NOT NULL,
            observed_ms {bigint} NOT NULL,
            received_ms {bigint} NOT NULL,
            UNIQUE (target, kind, model, source)
        )""",
        "CREATE INDEX outcomes_received ON outcomes (received_ms)",
        "CREATE INDEX outcomes_prompt ON outcomes (prompt_sha256)",
    ),
    (
        """CREATE TABLE adaptations (
            id {id},
            time_ms {bigint} NOT NULL,
            parent_version TEXT NOT NULL,
            candidate_version TEXT,
            kind TEXT NOT NULL,
            n_outcomes INTEGER NOT NULL,
            accepted INTEGER NOT NULL,
            report TEXT NOT NULL
        )""",
    ),
    (
        "ALTER TABLE decisions ADD COLUMN tenant TEXT",
        "ALTER TABLE decisions ADD COLUMN policy TEXT",
        "CREATE INDEX decisions_tenant ON decisions (tenant, router, time_ms)",
    ),
    ("ALTER TABLE decisions ADD COLUMN choice TEXT",),
    (
        # other servers' writes wait until the rebuild commits (a row committed between the copy and the
        # drop was lost), then go to the rebuilt table, where an older server's rows get reporter ''
        "LOCK TABLE outcomes IN EXCLUSIVE MODE",
        """CREATE TABLE outcomes_v5 (
            id {id},
            target TEXT NOT NULL,
            decision_id TEXT,
            prompt_sha256 TEXT NOT NULL,
            prompt_text TEXT,
            kind TEXT NOT NULL,
            model TEXT NOT NULL,
            quality {real} NOT NULL,
            source TEXT NOT NULL,
            reporter TEXT NOT NULL DEFAULT '',
            observed_ms {bigint} NOT NULL,
            received_ms {bigint} NOT NULL,
            UNIQUE (target, kind, model, source, reporter)
        )""",
        "INSERT INTO outcomes_v5 (target, decision_id, prompt_sha256, prompt_text, kind, model, quality, source, "
        "reporter, observed_ms, received_ms) SELECT target, decision_id, prompt_sha256, prompt_text, kind, model, "
        "quality, source, '', observed_ms, received_ms FROM outcomes ORDER BY id",
        "DROP TABLE outcomes",
        "ALTER TABLE outcomes_v5 RENAME TO outcomes",
        "CREATE INDEX outcomes_received ON outcomes (received_ms)",
        "CREATE INDEX outcomes_prompt ON outcomes (prompt_sha256)",
    ),
    (
        """CREATE TABLE target_changes (
            id {id},
            time_ms {bigint} NOT NULL,
            tenant TEXT NOT NULL,
            target TEXT NOT NULL,
            value {real}
        )""",
    ),
    ("ALTER TABLE decisions ADD COLUMN caller TEXT",),
)

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes and reads."""

COPIED: tuple[tuple[str, str, str], ...] = (
    (
        "decisions",
        "decision_id, time_ms, kind, bundle_version, router, scores, threshold, chosen_model, propensity, "
        "strong_model, weak_model, prompt_sha256, prompt_text, n_tokens, prompt_chars, encoder_id, embedding, "
        "tenant, policy, choice, caller",
        "time_ms, decision_id",
    ),
    (
        "outcomes",
        "target, decision_id, prompt_sha256, prompt_text, kind, model, quality, source, reporter, observed_ms, "
        "received_ms",
        "id",
    ),
    ("adaptations", "time_ms, parent_version, candidate_version, kind, n_outcomes, accepted, report", "id"),
    ("target_changes", "time_ms, tenant, target, value", "id"),
)
"""What `OutcomeStore.copy_to` copies at this schema version: (table, its columns but the auto-numbered
id, the order rows are read in, which keeps the ids' order in the copy)."""
