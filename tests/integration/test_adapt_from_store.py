"""`lmroute-export adapt` end to end: a small real bundle (a real tiny ONNX encoder), paired outcomes of a
learnable problem in a real store (SQLite and the session's PostgreSQL), adapt -> gate -> a written,
loadable adapted bundle; a second round replaces the adapted router; outcomes shuffled across prompts
are refused by the gate and nothing is written; every run is recorded in the store."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmroute.adapt.from_store import adapt_from_store
from lmroute.bundle import kinds
from lmroute.bundle.loader import load_bundle
from lmroute.bundle.routers import PromptBatch
from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle, synthetic_prompts
from lmroute.export.cli import main
from lmroute.outcomes.records import Decision, Outcome, OutcomeKind, prompt_sha256
from lmroute.outcomes.store import open_store
from lmroute.service.decisions import new_decision_id

N = 600


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapt_store")
    encoder = make_fake_encoder_dir(root / "encoder", dim=16, seed=3)
    return make_tiny_bundle(root / "parent", encoder_dir=encoder, seed=5)


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    return str(request.getfixturevalue("fresh_postgres_db"))


def _judged(parent: Path, *, shuffled: bool, seed: int = 2) -> list[Outcome]:
    """Paired outcomes of N prompts: the strong model's gain follows one direction of the embedding."""
    bundle = load_bundle(parent)
    texts = synthetic_prompts(N, seed=9)
    emb = bundle.prompt_batch(texts).embeddings
    assert emb is not None
    u = np.random.default_rng(1).standard_normal(emb.shape[1])
    rng = np.random.default_rng(seed)
    weak = (rng.random(N) < 1.0 / (1.0 + np.exp(-(1.0 - 6.0 * (emb @ u))))).astype(float)
    strong = np.maximum(weak, (rng.random(N) < 0.8).astype(float))
    if shuffled:  # the same outcomes, each on another prompt: nothing left to learn
        order = rng.permutation(N)
        strong, weak = strong[order], weak[order]
    pair = bundle.manifest.default_pair
    t0 = int(time.time() * 1000) - N * 1000
    out: list[Outcome] = []
    for i, text in enumerate(texts):
        for model, q in ((pair.strong, strong[i]), (pair.weak, weak[i])):
            out.append(
                Outcome(
                    OutcomeKind.PAIRED, model, float(q), prompt_text=text, source="judge", observed_ms=t0 + i * 1000
                )
            )
    return out


def test_adapt_gate_write_then_adapt_again(parent: Path, dsn: str, tmp_path: Path) -> None:
    store = open_store(dsn)
    store.write([], _judged(parent, shuffled=False))
    first = adapt_from_store(parent, store, tmp_path / "b1")
    assert first.accepted, first.report
    assert first.n_outcomes == N and first.report["champion"] == "mf"
    b1 = load_bundle(tmp_path / "b1")
    assert b1.version == first.candidate_version and "adapted" in b1.routers
    lineage = b1.manifest.lineage
    assert lineage is not None and lineage.parent_version == first.parent_version and lineage.n_outcomes == N
    # a prompt kept as its embedding and length (the privacy switch) scores as its text does
    texts = synthetic_prompts(8, seed=21)
    full = b1.prompt_batch(texts)
    assert full.embeddings is not None
    stored = PromptBatch.from_features(full.embeddings, [len(t) for t in texts])
    text_free = [name for name, spec in b1.manifest.routers.items() if not kinds.get(spec.kind).reads_text]
    assert text_free == ["mf", "sw_ranking", "adapted"]
    for name in text_free:
        assert np.array_equal(b1.routers[name].score(stored), b1.routers[name].score(full)), name
    # the next round starts from the adapted bundle: its adapted router is the champion, judged only on
    # outcomes it was not fitted on (after its lineage's last one); with none, nothing can be judged
    stale = adapt_from_store(tmp_path / "b1", store, tmp_path / "b2", margin=1.0)
    assert not stale.accepted and stale.report["outcomes_unseen_by_champion"] == 0
    # a second opinion since, on prompts the champion was fitted on, leaves them seen (they counted as
    # unseen by their newest outcome, and the champion was judged on them in-sample)
    late = int(time.time() * 1000) + 1000
    opinions = _judged(parent, shuffled=False)[:100]
    store.write([], [dataclasses.replace(o, source="judge:late", observed_ms=late + i) for i, o in enumerate(opinions)])
    restale = adapt_from_store(tmp_path / "b1", store, tmp_path / "b2", margin=1.0)
    assert not restale.accepted and restale.report["outcomes_unseen_by_champion"] == 0
    later = int(time.time() * 1000) + 2000
    fresh = [
        dataclasses.replace(o, prompt_text=f"later: {o.prompt_text}", observed_ms=later + i)
        for i, o in enumerate(_judged(parent, shuffled=False, seed=3)[:200])
    ]
    store.write([], fresh)
    second = adapt_from_store(tmp_path / "b1", store, tmp_path / "b2", margin=1.0)  # any candidate passes
    assert second.report["champion"] == "adapted" and second.accepted
    assert second.report["outcomes_unseen_by_champion"] == 100 and second.report["gate"]["n_held_out"] == 100
    assert second.n_outcomes == N + 100
    b2 = load_bundle(tmp_path / "b2")
    assert list(b2.routers).count("adapted") == 1 and b2.manifest.lineage is not None
    assert b2.manifest.lineage.parent_version == b1.version
    runs = store.adaptations()
    assert [(r["parent_version"], r["accepted"]) for r in runs] == [
        (first.parent_version, True),
        (b1.version, False),
        (b1.version, False),
        (b1.version, True),
    ]
    assert runs[0]["report"]["gate"]["candidate_apgr"] == first.report["gate"]["candidate_apgr"]
    store.close()


def test_a_candidate_that_cannot_be_written_is_recorded_as_not_adapted(parent: Path, tmp_path: Path) -> None:
    """The gate accepts, the disk refuses (here: the output's folder is a file): the error names the step
    and the directory, and the run is recorded (it was not: every run is)."""
    from lmroute.adapt.bundle_out import CandidateNotWritten

    store = open_store(f"sqlite:{tmp_path / 'outcomes.sqlite3'}")
    store.write([], _judged(parent, shuffled=False))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file")
    with pytest.raises(CandidateNotWritten) as info:
        adapt_from_store(parent, store, blocked / "adapted")
    assert f"the accepted candidate could not be written to {blocked / 'adapted'}" in str(info.value)
    [run] = store.adaptations()
    assert run["accepted"] is False and run["candidate_version"] is None
    assert run["report"]["gate"]["accepted"] is True and "could not be written" in run["report"]["error"]
    store.close()


def test_a_candidate_is_signed_before_its_run_is_recorded_accepted(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a signing key the candidate is signed inside the write: a signing cut off (Ctrl-C, SIGTERM, a
    full disk) leaves no run recorded as accepted (it was recorded first, then signed: an interrupted
    signing left a candidate recorded as accepted that no server would take)."""
    import lmroute.adapt.from_store as from_store
    from lmroute.adapt.bundle_out import CandidateNotWritten
    from lmroute.bundle.loader import read_manifest
    from lmroute.bundle.signing import generate_key_pair, load_private_key, load_public_key

    private, public = generate_key_pair(tmp_path / "keys" / "bundles")
    key = load_private_key(private)
    store = open_store(f"sqlite:{tmp_path / 'outcomes.sqlite3'}")
    store.write([], _judged(parent, shuffled=False))
    real_sign = from_store.sign_bundle
    for cut_off, raised in (
        (KeyboardInterrupt(), KeyboardInterrupt),
        (OSError(28, "No space left"), CandidateNotWritten),
    ):

        def sign(bundle_dir: str | Path, key: Any, cut_off: BaseException = cut_off) -> Path:
            raise cut_off

        monkeypatch.setattr(from_store, "sign_bundle", sign)
        with pytest.raises(raised):
            adapt_from_store(parent, store, tmp_path / "cut", sign_key=key, overwrite=True)
        assert not any(run["accepted"] for run in store.adaptations())
    assert len(store.adaptations()) == 1  # the full disk's run, recorded as not adapted; Ctrl-C's: none
    monkeypatch.setattr(from_store, "sign_bundle", real_sign)
    run = adapt_from_store(parent, store, tmp_path / "signed", sign_key=key)
    assert run.accepted and sorted(r["accepted"] for r in store.adaptations()) == [False, True]
    assert (
        read_manifest(tmp_path / "signed", public_key=load_public_key(public)).bundle_version == run.candidate_version
    )
    store.close()


def test_a_short_write_is_said_as_one_without_an_errno() -> None:
    """numpy's short write (a disk that filled mid-file) is an OSError with neither errno nor strerror: it
    was said as '[Errno None] ... 153600 requested and 37856 written'."""
    from lmroute.adapt.bundle_out import CandidateNotWritten, writing_candidate

    report: dict[str, object] = {}
    recorded = []
    with pytest.raises(CandidateNotWritten) as info, writing_candidate("/b2", report, lambda: recorded.append(1)):
        raise OSError("153600 requested and 37856 written")
    said = "the accepted candidate could not be written to /b2: 153600 requested and 37856 written"
    assert str(info.value) == f"{said} (a short write: is the disk full?)" == report["error"]
    assert recorded == [1]
    with pytest.raises(CandidateNotWritten) as info, writing_candidate("/b2", {}, lambda: None):
        raise OSError(28, "No space left on device")
    assert info.value.errno == 28 and info.value.strerror.endswith("/b2: No space left on device")
    from lmroute.bundle.writer import bundle_exists

    with pytest.raises(CandidateNotWritten) as info, writing_candidate("/b2", {}, lambda: None):
        raise bundle_exists(Path("/b2"))  # another run wrote it first: no disk to blame
    assert str(info.value) == (
        "the accepted candidate could not be written to /b2: bundle directory /b2 already exists (pass "
        "overwrite=True; on the command line, --overwrite)"
    )


def _single(parent: Path, weak_answers: int) -> tuple[list[Decision], list[Outcome]]:
    """Route decisions of N prompts and the answering model's single outcome of each: the strong model
    answered all but the first `weak_answers` (thumbs collected mostly where the strong model answered)."""
    bundle = load_bundle(parent)
    pair = bundle.manifest.default_pair
    t0 = int(time.time() * 1000) - N * 1000
    rng = np.random.default_rng(4)
    decisions, outcomes = [], []
    for i, text in enumerate(synthetic_prompts(N, seed=9)):
        model = pair.weak if i < weak_answers else pair.strong
        d = Decision(
            decision_id=new_decision_id(t0 + i * 1000),
            time_ms=t0 + i * 1000,
            kind="route",
            bundle_version=bundle.version,
            scores={"mf": 0.5},
            strong_model=pair.strong,
            weak_model=pair.weak,
            prompt_sha256=prompt_sha256(text),
            n_tokens=8,
            router="mf",
            threshold=0.5,
            chosen_model=model,
            propensity=0.05 if model == pair.weak else 0.95,  # the weak answers are explored flips
            prompt_text=text,
            prompt_chars=len(text),
        )
        decisions.append(d)
        quality = float(rng.random() < 0.8)
        outcomes.append(Outcome(OutcomeKind.SINGLE, model, quality, decision_id=d.decision_id, source="thumbs"))
    return decisions, outcomes


def test_single_outcomes_of_one_model_alone_make_no_candidate(parent: Path, tmp_path: Path) -> None:
    """The gap between the models cannot be learnt from one model's answers: with 5 of the weak model's
    among 600, no candidate (the gate accepted one such head, its held-out gains taking the weak model's
    quality as 0.5); with enough of both, the gate decides."""
    store = open_store(f"sqlite:{tmp_path / 'outcomes.sqlite3'}")
    store.write(*_single(parent, weak_answers=5))
    run = adapt_from_store(parent, store, tmp_path / "never", kind="single")
    pair = load_bundle(parent).manifest.default_pair
    assert not run.accepted and not (tmp_path / "never").exists()
    assert run.report["outcomes_by_model"] == {pair.strong: N - 5, pair.weak: 5}
    assert run.report["gate"]["reason"].startswith(
        f"single outcomes of {pair.strong}: {N - 5}, of {pair.weak}: 5 (need 20 of each"
    )
    [recorded] = store.adaptations()
    assert recorded["accepted"] is False and "need 20 of each" in recorded["report"]["gate"]["reason"]
    store.close()
    store = open_store(f"sqlite:{tmp_path / 'both.sqlite3'}")
    store.write(*_single(parent, weak_answers=60))
    judged = adapt_from_store(parent, store, tmp_path / "maybe", kind="single")
    assert judged.report["outcomes_by_model"] == {pair.strong: N - 60, pair.weak: 60}
    assert "n_held_out" in judged.report["gate"]  # the gate judged it (its verdict is its own)
    store.close()


def test_shuffled_outcomes_are_refused_and_nothing_is_written(parent: Path, dsn: str, tmp_path: Path) -> None:
    store = open_store(dsn)
    store.write([], _judged(parent, shuffled=True))
    run = adapt_from_store(parent, store, tmp_path / "never")
    assert not run.accepted and run.candidate_version is None
    assert not (tmp_path / "never").exists()
    [recorded] = store.adaptations()
    assert recorded["accepted"] is False and recorded["report"]["gate"]["accepted"] is False
    store.close()


def test_adapt_learns_from_the_trusted_reporters_alone(
    parent: Path, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tenant reporting the opposite of every judged outcome cancels them when every reporter counts
    (the gate refuses); trusting the operator's outcomes alone learns exactly what a store without the
    tenant's teaches."""
    clean = _judged(parent, shuffled=False)
    store = open_store(dsn)
    store.write([], clean)  # reported by callers naming no tenant
    store.write([], [dataclasses.replace(o, quality=1.0 - o.quality, reporter="mallory") for o in clean])
    everyone = adapt_from_store(parent, store, tmp_path / "everyone")
    assert not everyone.accepted and everyone.report["reporters"] is None
    trusted = adapt_from_store(parent, store, tmp_path / "trusted", reporters={""})
    assert trusted.accepted and trusted.report["reporters"] == [""]
    store.close()
    reference = open_store(f"sqlite:{tmp_path / 'clean.sqlite3'}")
    reference.write([], clean)
    alone = adapt_from_store(parent, reference, tmp_path / "alone")
    reference.close()
    assert trusted.report["gate"] == alone.report["gate"]
    args = ["adapt", "--bundle", str(parent), "--store", dsn, "--out", str(tmp_path / "cli")]
    assert main(args + ["--reporters", "ops,(none)"]) == 0
    assert '"reporters": [\n    "",\n    "ops"\n  ]' in capsys.readouterr().out
    assert main(args + ["--reporters", "not a name"]) == 1
    assert "reporters: 'not a name' is not a tenant name" in capsys.readouterr().err
    gated = [*args[:-1], str(tmp_path / "gated"), "--gate-reporters", "(none)"]
    assert main(gated) == 0  # learnt from both (their means cancel), judged by the clean outcomes alone
    assert '"gate_reporters": [\n    ""\n  ]' in capsys.readouterr().out
    assert main(args + ["--gate-reporters", "a b"]) == 1
    assert "reporters: 'a b' is not a tenant name" in capsys.readouterr().err
    # the runs the store recorded, newest last: the two refused above first, then the accepted ones
    assert main(["adaptations", "--store", dsn, "--last", "0"]) == 0
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["accepted"] for r in runs] == [False, True, True, True]
    assert runs[0]["reporters"] is None and runs[1]["reporters"] == [""] and runs[2]["reporters"] == ["", "ops"]
    assert runs[0]["reason"].startswith("refused") and runs[1]["reason"].startswith("accepted")
    assert main(["adaptations", "--store", dsn, "--last", "1", "--full"]) == 0
    [last] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert last["report"]["gate_reporters"] == [""] and last["candidate_version"]


def _on_decisions(parent: Path, outcomes: list[Outcome], caller: str, tag: str) -> tuple[list[Decision], list[Outcome]]:
    """`outcomes` (by prompt text) as outcomes of Score decisions made for `caller`'s calls, one a prompt,
    joined by decision id."""
    pair = load_bundle(parent).manifest.default_pair
    decisions: dict[str, Decision] = {}
    out: list[Outcome] = []
    for o in outcomes:
        assert o.prompt_text is not None
        sha = prompt_sha256(o.prompt_text)
        did = f"{tag}-{sha[:24]}"
        decisions.setdefault(
            did,
            Decision(
                decision_id=did,
                time_ms=o.observed_ms - 10,
                kind="score",
                bundle_version="before",
                scores={},
                strong_model=pair.strong,
                weak_model=pair.weak,
                prompt_sha256=sha,
                n_tokens=8,
                prompt_text=o.prompt_text,
                caller=caller,
            ),
        )
        out.append(dataclasses.replace(o, prompt_text=None, decision_id=did))
    return list(decisions.values()), out


def test_adapt_learns_one_tenants_traffic_from_the_outcomes_of_its_calls(
    parent: Path, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two tenants' calls on the same prompts, whose outcomes teach opposite things (`app`'s follow the
    learnable direction, `batch`'s are shuffled across prompts), and outcomes by prompt text of no call:
    `callers` learns from one tenant's calls alone, the gate judging by them too."""
    store = open_store(dsn)
    for caller, tag, shuffled in (("app", "a", False), ("batch", "b", True)):
        decisions, outcomes = _on_decisions(parent, _judged(parent, shuffled=shuffled), caller, tag)
        store.write(decisions, outcomes)
    store.write([], _judged(parent, shuffled=True, seed=7))  # by prompt text: no call's
    app = adapt_from_store(parent, store, tmp_path / "app", callers={"app"})
    assert app.accepted and app.n_outcomes == N and app.report["callers"] == ["app"]
    batch = adapt_from_store(parent, store, tmp_path / "batch", callers={"batch"})
    assert not batch.accepted and batch.n_outcomes == N
    assert adapt_from_store(parent, store, tmp_path / "none", callers={""}).n_outcomes == 0  # no call named none
    everyone = adapt_from_store(parent, store, tmp_path / "everyone")
    assert everyone.n_outcomes == 3 * N and everyone.report["callers"] is None
    store.close()
    args = ["adapt", "--bundle", str(parent), "--store", dsn, "--out", str(tmp_path / "cli"), "--callers", "app"]
    assert main(args) == 0
    assert '"callers": [\n    "app"\n  ]' in capsys.readouterr().out
    assert main([*args[:-1], "no such/name"]) == 1
    assert "callers: 'no such/name' is not a tenant name" in capsys.readouterr().err


def test_the_gate_judges_by_the_trusted_reporters_while_the_head_learns_from_all(parent: Path, tmp_path: Path) -> None:
    """A tenant reporting on its own prompts that the strong model is always right and the weak one
    wrong wherever it is right steers the head the wrong way while the mean gain stays positive: a gate
    judging by every reporter's outcomes accepts that candidate; `gate_reporters` (the operator's judge,
    on a third of the prompts) refuses it, and still accepts what an honest tenant's outcomes teach."""
    clean = _judged(parent, shuffled=False)
    texts = list(dict.fromkeys(o.prompt_text for o in clean))
    judge = set(texts[: N // 3])  # the operator's judge (no tenant); the rest reported by tenant "app"
    strong = load_bundle(parent).manifest.default_pair.strong

    def reported(poisoned: bool) -> list[Outcome]:
        out = []
        for o in clean:
            if o.prompt_text in judge:
                out.append(o)
            elif poisoned:
                out.append(
                    dataclasses.replace(o, reporter="app", quality=1.0 if o.model == strong else 1.0 - o.quality)
                )
            else:
                out.append(dataclasses.replace(o, reporter="app"))
        return out

    runs = {}
    for poisoned in (True, False):
        store = open_store(f"sqlite:{tmp_path / f'poisoned-{poisoned}.sqlite3'}")
        store.write([], reported(poisoned))
        for gate in (None, {""}):
            out = tmp_path / f"out-{poisoned}-{gate is not None}"
            runs[poisoned, gate is not None] = adapt_from_store(parent, store, out, gate_reporters=gate)
        store.close()
    assert runs[True, False].accepted  # judged by the poisoner's own outcomes too: it passes
    refused = runs[True, True]
    assert not refused.accepted and refused.report["outcomes_gated"] == N // 3
    assert refused.report["gate"]["n_held_out"] == N // 3 and refused.report["gate_reporters"] == [""]
    assert refused.report["gate"]["candidate_apgr"] < refused.report["gate"]["champion_apgr"]
    honest = runs[False, True]
    assert honest.accepted and honest.n_outcomes == N  # learnt from all, judged on the judge's third


def test_adapt_command_exit_codes(parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"sqlite:{tmp_path / 'o.sqlite3'}"
    store = open_store(dsn)
    store.write([], _judged(parent, shuffled=False)[:40])  # 20 prompts: too few to judge
    store.close()
    args = ["adapt", "--bundle", str(parent), "--store", dsn, "--out", str(tmp_path / "out")]
    assert main(args) == 4
    refused = capsys.readouterr()
    assert "refused by the gate: 20 usable outcomes (need 50)" in refused.err
    report = json.loads(refused.out, parse_constant=lambda c: pytest.fail(f"stdout holds {c}, not JSON"))
    assert "20 usable outcomes (need 50)" in report["gate"]["reason"]  # stdout: the report alone, strict JSON
    store = open_store(dsn)
    store.write([], _judged(parent, shuffled=False))
    store.close()
    assert main(args) == 0
    accepted = capsys.readouterr()
    assert "accepted: bundle" in accepted.err and json.loads(accepted.out)["gate"]["accepted"] is True
    with pytest.raises(SystemExit):  # argparse refuses an unknown kind
        main(args + ["--kind", "triplet"])
    assert main([*args, "--margin", "-1"]) == 2  # named, before the store is read
    assert "adapt: --margin: must be a number >= 0 (got -1.0)" in capsys.readouterr().err
    assert main(args) == 2  # --out holds the accepted bundle: said before the fit
    assert f"--out: {args[args.index('--out') + 1]} exists (give --overwrite to replace it)" in capsys.readouterr().err


def test_adapt_refuses_an_out_that_cannot_be_a_bundle_before_reading_the_store(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--out a file, under a file, the current directory or inside the parent bundle: exit 2 naming --out,
    and no run recorded (the outcomes are never read)."""
    dsn = f"sqlite:{tmp_path / 'o.sqlite3'}"
    store = open_store(dsn)
    store.write([], _judged(parent, shuffled=False))
    store.close()
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    monkeypatch.chdir(tmp_path)
    for out, says in (
        (a_file, f"--out: {a_file} exists and is not a directory"),
        (a_file / "sub", f"--out: {a_file} is not a directory"),
        (Path("."), "--out: . names no directory of its own"),
        (parent / "next", f"--out: {parent / 'next'} is inside --bundle {parent}"),
    ):
        assert main(["adapt", "--bundle", str(parent), "--store", dsn, "--out", str(out)]) == 2, out
        assert says in capsys.readouterr().err
    mine = tmp_path / "mine"  # a directory of the user's, not a bundle: --overwrite does not replace it
    mine.mkdir()
    (mine / "notes.txt").write_text("precious\n")
    for overwrite in ([], ["--overwrite"]):  # without the flag too: said now, not after the fit
        assert main(["adapt", "--bundle", str(parent), "--store", dsn, "--out", str(mine), *overwrite]) == 2
        assert f"--out: {mine} holds files but no manifest.json (not a bundle" in capsys.readouterr().err
    assert main(["adaptations", "--store", dsn]) == 0
    assert capsys.readouterr().out == ""  # no run recorded
    assert a_file.read_text() == "" and (mine / "notes.txt").read_text() == "precious\n"
    assert not (parent / "next").exists()


def test_the_adapt_loop_swaps_an_accepted_bundle_into_a_running_server(parent: Path, tmp_path: Path) -> None:
    from lmroute.adapt.loop import RoundSettings, run_round
    from lmroute.bundle.writer import restamp_bundle
    from lmroute.service.client import RouterClient
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread

    served = tmp_path / "served"
    shutil.copytree(parent, served)
    restamp_bundle(served, default_router="mf")  # as a build names it
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    cfg = ServiceConfig(bundle_path=served, port=0, store=dsn, log_level="warning", grace_s=0.0)
    with ServerThread(cfg) as srv:
        with RouterClient(srv.target) as client:
            before = client.list_routers()
            assert "adapted" not in [r.name for r in before.routers] and before.default_router == "mf"
            assert client.route("Explain quicksort.", strong_share=0.5).router == "mf"
            # nothing judged yet: the round adapts nothing and the bundle keeps serving
            idle = run_round(srv.target, dsn, tmp_path / "bundles")
            assert not idle.accepted and idle.serving_version == before.bundle_version
            store = open_store(dsn)
            store.write([], _judged(parent, shuffled=False))
            store.close()
            # outcomes from callers naming no tenant: a round trusting one tenant alone has none to learn from
            only_ops = run_round(srv.target, dsn, tmp_path / "bundles", RoundSettings(reporters=frozenset({"ops"})))
            assert not only_ops.accepted and only_ops.report["outcomes_read"] == 0
            with contextlib.chdir(tmp_path):  # a relative --bundles-dir: the server is sent the whole path
                done = run_round(srv.target, dsn, Path("bundles"))
            assert done.accepted and done.candidate is not None and done.candidate.parent == Path("bundles")
            assert Path(client.get_bundle().path) == tmp_path / "bundles" / done.candidate.name
            after = client.list_routers()
            assert after.bundle_version == done.serving_version != before.bundle_version
            assert "adapted" in [r.name for r in after.routers]
            routed = client.route("Explain quicksort.", router="adapted", strong_share=0.5)
            assert routed.bundle_version == done.serving_version
            # a client that names no router now gets the adapted router's decision
            assert after.default_router == "adapted"
            unnamed = client.route("Explain quicksort.", strong_share=0.5)
            assert unnamed.router == "adapted" and (unnamed.score, unnamed.threshold, unnamed.tier) == (
                routed.score,
                routed.threshold,
                routed.tier,
            )


def test_a_round_does_not_undo_a_swap_made_while_it_adapted(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two loops (or an operator) on one server: a round's candidate, adapted from the bundle serving when
    it started, is swapped in only if that bundle still serves (ReloadBundle's if_version); else the
    round says VERSION_MOVED and what serves stays (the second loop's swap undid the first's)."""
    import lmroute.adapt.loop as loop
    from lmroute.bundle.writer import restamp_bundle
    from lmroute.service.client import RouterClient
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread

    served, other = tmp_path / "served", tmp_path / "other"
    for copy, default in ((served, "mf"), (other, "random")):
        shutil.copytree(parent, copy)
        restamp_bundle(copy, default_router=default)
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    store = open_store(dsn)
    store.write([], _judged(parent, shuffled=False))
    store.close()
    cfg = ServiceConfig(bundle_path=served, port=0, store=dsn, log_level="warning", grace_s=0.0)
    real_adapt = loop._adapt
    with ServerThread(cfg) as srv, RouterClient(srv.target) as client:

        def adapt_while_another_swaps(*args: Any, **kw: Any) -> Any:
            out = real_adapt(*args, **kw)
            client.reload_bundle(str(other))  # the other loop's swap, made while this round adapted
            return out

        monkeypatch.setattr(loop, "_adapt", adapt_while_another_swaps)
        moved = loop.run_round(srv.target, dsn, tmp_path / "bundles")
        now = client.get_bundle()
        assert moved.accepted and moved.swap_refused is not None
        assert (moved.swap_refused["code"], moved.swap_refused["reason"]) == ("ABORTED", "VERSION_MOVED")
        assert f"{now.bundle_version} serves, not {load_bundle(served).version}" in moved.swap_refused["message"]
        assert Path(now.resolved_path) == other.resolve() and moved.serving_version == now.bundle_version
        monkeypatch.setattr(loop, "_adapt", real_adapt)
        done = loop.run_round(srv.target, dsn, tmp_path / "bundles")  # adapted from what serves: taken
        assert (
            done.accepted and done.swap_refused is None and client.get_bundle().bundle_version == done.serving_version
        )


def test_the_adapt_loop_signs_its_candidates_for_a_server_that_takes_only_signed_bundles(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server run with --bundle-public-key refuses an unsigned candidate: the round says so (its
    `swap_refused`, exit 1 with --once) instead of a raw error; with --sign-key the candidate is signed
    and swapped in."""
    from lmroute.adapt.loop import main as adapt_main
    from lmroute.bundle.signing import generate_key_pair, load_private_key, sign_bundle
    from lmroute.bundle.writer import restamp_bundle
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread

    private, public = generate_key_pair(tmp_path / "keys" / "bundles")
    served = tmp_path / "served"
    shutil.copytree(parent, served)
    restamp_bundle(served, default_router="mf")
    sign_bundle(served, load_private_key(private))
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    store = open_store(dsn)
    store.write([], _judged(parent, shuffled=False))
    store.close()
    cfg = ServiceConfig(
        bundle_path=served, port=0, store=dsn, log_level="warning", grace_s=0.0, bundle_public_key=str(public)
    )
    with ServerThread(cfg) as srv:
        argv = ["--server", srv.target, "--store", dsn, "--bundles-dir", str(tmp_path / "bundles"), "--once"]
        assert adapt_main(argv) == 1
        refused = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert refused["accepted"] is True and refused["swap_refused"]["reason"] == "BUNDLE_INVALID"
        assert "not signed" in refused["swap_refused"]["message"]
        assert adapt_main([*argv, "--sign-key", str(private)]) == 0
        done = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert done["accepted"] is True and "swap_refused" not in done
        assert done["serving_version"] != refused["serving_version"]
        with pytest.raises(SystemExit) as exit_:
            adapt_main([*argv, "--sign-key", str(public)])  # a public key is no signing key: refused at once
        assert exit_.value.code == 2 and "--sign-key: " in capsys.readouterr().err


def test_in_link_mode_the_servers_public_key_keeps_the_link_on_bundles_they_take(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --bundle-public-key (the servers'), lmroute-adapt needs its pair as --sign-key (refused at once
    otherwise: every candidate would be refused, and a replica started on the link could not load it), and
    re-points the link only to a candidate that verifies with it (the link was re-pointed to an unsigned
    candidate the servers watching it refused)."""
    from lmroute.adapt.loop import RoundSettings, run_link_round
    from lmroute.adapt.loop import main as adapt_main
    from lmroute.bundle.signing import generate_key_pair

    private, public = generate_key_pair(tmp_path / "keys" / "fleet")
    other, _ = generate_key_pair(tmp_path / "keys" / "other")
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    store = open_store(dsn)
    store.write([], _judged(parent, shuffled=False))
    store.close()
    link = tmp_path / "current"
    link.symlink_to(parent)
    argv = ["--bundle-link", str(link), "--store", dsn, "--bundles-dir", str(tmp_path / "bundles"), "--once"]
    for keys, says in (
        ([], "--bundle-public-key: give --sign-key too"),
        (["--sign-key", str(other)], f"--sign-key: {other} is not the pair of --bundle-public-key"),
    ):
        with pytest.raises(SystemExit) as exit_:
            adapt_main([*argv, "--bundle-public-key", str(public), *keys])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    # a candidate that does not verify (here signed with another key): the link stays where it was
    r = run_link_round(link, dsn, tmp_path / "bundles", RoundSettings(), sign_key=other, public_key=public)
    assert r.accepted and r.swap_refused is not None and r.swap_refused["reason"] == "BUNDLE_INVALID"
    assert link.resolve() == parent.resolve()
    assert adapt_main([*argv, "--bundle-public-key", str(public), "--sign-key", str(private)]) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert done["accepted"] is True and "swap_refused" not in done and link.resolve() != parent.resolve()


def _two_tenants(parent: Path, dsn: str) -> None:
    """`app`'s calls judged by outcomes that follow the learnable direction, `batch`'s by shuffled ones."""
    store = open_store(dsn)
    for caller, tag, shuffled in (("app", "a", False), ("batch", "b", True)):
        store.write(*_on_decisions(parent, _judged(parent, shuffled=shuffled), caller, tag))
    store.close()


def test_a_tenants_own_router_sits_beside_the_default_and_keeps_its_lineage(
    parent: Path, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tenant` adapts a router of that tenant's own from its calls' outcomes (calibrated on its calls),
    which the bundle names in `tenant_routers` while its default router stays; a later adaptation of
    the default keeps the tenant's router and its lineage, so the tenant's next round gates against its
    own router on the outcomes that router has not seen."""
    from lmroute.bundle.writer import restamp_bundle

    served = tmp_path / "served"
    shutil.copytree(parent, served)
    restamp_bundle(served, default_router="mf")
    _two_tenants(parent, dsn)
    store = open_store(dsn)
    app = adapt_from_store(served, store, tmp_path / "app", tenant="app")
    assert app.accepted and app.n_outcomes == N
    assert (app.report["router"], app.report["champion"], app.report["callers"]) == ("adapted-app", "mf", ["app"])
    assert app.report["calibration_prompts"] == N  # the tenant's decisions, not both tenants' 2N
    m = load_bundle(tmp_path / "app").manifest
    assert m.tenant_routers == {"app": "adapted-app"} and m.default_router == "mf" and "adapted" not in m.routers
    assert m.lineage is not None and m.lineage.router == "adapted-app" and m.earlier_lineages == ()
    default = adapt_from_store(tmp_path / "app", store, tmp_path / "default", callers={"app"})
    assert default.accepted and default.report["router"] == "adapted" and default.report["tenant"] is None
    m = load_bundle(tmp_path / "default").manifest
    assert m.default_router == "adapted" and m.tenant_routers == {"app": "adapted-app"}
    assert m.lineage is not None and m.lineage.router == "adapted"
    assert [ln.router for ln in m.earlier_lineages] == ["adapted-app"]
    again = adapt_from_store(tmp_path / "default", store, tmp_path / "again", tenant="app")
    assert again.report["champion"] == "adapted-app" and again.report["outcomes_unseen_by_champion"] == 0
    batch = adapt_from_store(tmp_path / "default", store, tmp_path / "batch", tenant="batch")
    assert not batch.accepted and batch.report["champion"] == "adapted"  # no router of its own: the default
    with pytest.raises(ValueError, match="callers: \\['batch'\\] with tenant 'app'"):
        adapt_from_store(served, store, tmp_path / "x", tenant="app", callers={"batch"})
    with pytest.raises(ValueError, match="tenant: 'x{60}' must be 1-56 of"):
        adapt_from_store(served, store, tmp_path / "x", tenant="x" * 60)
    store.close()
    args = ["adapt", "--bundle", str(served), "--store", dsn, "--out", str(tmp_path / "cli"), "--for-tenant"]
    assert main([*args, "app"]) == 0
    assert load_bundle(tmp_path / "cli").manifest.tenant_routers == {"app": "adapted-app"}
    capsys.readouterr()
    assert main([*args, "no such/name"]) == 1
    assert "for_tenant: 'no such/name' is not a tenant name" in capsys.readouterr().err
    assert main([*args, "app,batch"]) == 1
    assert "for_tenant: 'app,batch': one router a run (lmroute-adapt takes several)" in capsys.readouterr().err


def test_a_tenants_calls_that_name_no_router_get_its_own_router_after_its_round(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lmroute.adapt.loop import main as adapt_main
    from lmroute.bundle.writer import restamp_bundle
    from lmroute.service.client import RouterClient
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread

    served = tmp_path / "served"
    shutil.copytree(parent, served)
    restamp_bundle(served, default_router="mf")
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    _two_tenants(parent, dsn)
    cfg = ServiceConfig(bundle_path=served, port=0, store=dsn, log_level="warning", grace_s=0.0)
    with ServerThread(cfg) as srv:
        argv = ["--server", srv.target, "--store", dsn, "--bundles-dir", str(tmp_path / "bundles"), "--once"]
        assert adapt_main([*argv, "--for-tenant", "batch,app"]) == 0  # one round: batch's, then app's
        out = capsys.readouterr().out.splitlines()  # the rounds' JSON lines among the server's log lines
        refused, done = [json.loads(line) for line in out if line.startswith("{")]
        assert (refused["router"], refused["accepted"], done["router"], done["accepted"]) == (
            "adapted-batch",
            False,
            "adapted-app",
            True,
        )
        with pytest.raises(SystemExit):
            adapt_main([*argv, "--for-tenant", "app,app"])
        assert "for_tenant: 'app,app' names a router twice" in capsys.readouterr().err
        with RouterClient(srv.target) as admin:  # what the operator sees of the serving bundle
            served_now = admin.get_bundle()
        assert (served_now.default_router, dict(served_now.tenant_routers)) == ("mf", {"app": "adapted-app"})
        prompt = "Explain quicksort."
        for tenant, router in (("app", "adapted-app"), ("batch", "mf"), (None, "mf")):
            with RouterClient(srv.target, tenant=tenant) as client:
                assert client.list_routers().default_router == router, tenant
                unnamed = client.route(prompt, strong_share=0.5)
                named = client.route(prompt, router=router, strong_share=0.5)
                assert unnamed.router == router and unnamed.bundle_version == done["serving_version"]
                assert (unnamed.score, unnamed.threshold) == (named.score, named.threshold)


def test_the_adapt_loop_refuses_a_missing_store_and_bad_numbers(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped store DSN fails the round (exit 1 with --once, the error as a JSON line) instead of making
    an empty store that never adapts; negative intervals, budgets or counts are refused before any round."""
    from lmroute.adapt.loop import main as adapt_main

    missing, link = tmp_path / "typo.sqlite3", tmp_path / "serving"
    link.symlink_to(parent)
    argv = ["--bundle-link", str(link), "--store", f"sqlite:{missing}", "--bundles-dir", str(tmp_path / "b")]
    assert adapt_main([*argv, "--once"]) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert "does not exist (this command reads a store; it makes none)" in json.loads(line)["error"]
    assert not missing.exists()
    for flag, value in (
        ("--interval-s", "-5"),
        ("--keep-bundles", "-1"),
        ("--judge-budget", "-2"),
        ("--judge-window", "0"),
        ("--window-days", "nan"),
    ):
        with pytest.raises(SystemExit) as exit_:
            adapt_main([*argv, flag, value])
        assert exit_.value.code == 2
        assert f"{flag}: must be a number " in capsys.readouterr().err
    # finite but past what a round can use (a store's integers, the platform's sleep): refused at once
    for flag, value, says in (
        ("--window-days", "1e300", "--window-days: must be a number in [0, 36500] (got 1e+300)"),
        ("--interval-s", "1e12", "--interval-s: must be a number in [0, 1e+07] (got 1000000000000.0)"),
    ):
        with pytest.raises(SystemExit) as exit_:
            adapt_main([*argv, flag, value])
        assert exit_.value.code == 2
        assert says in capsys.readouterr().err


def test_the_adapt_loop_calls_a_server_with_tokens_with_the_token_its_variable_holds(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from lmroute.adapt.loop import main as adapt_main
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread

    operator = "adapt-operator-token-0123456789"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{operator}\n")
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    cfg = ServiceConfig(
        bundle_path=parent, port=0, store=dsn, log_level="warning", grace_s=0.0, auth_tokens_file=str(tokens)
    )
    argv = ["--store", dsn, "--bundles-dir", str(tmp_path / "bundles"), "--once", "--token-env", "ADAPT_TOKEN"]
    with pytest.raises(SystemExit):  # a reporter that is no tenant name: refused before any round
        adapt_main([*argv, "--reporters", "no such/name"])
    assert "reporters: 'no such/name' is not a tenant name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        adapt_main([*argv, "--callers", "a b"])
    assert "callers: 'a b' is not a tenant name" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # command-line bytes that are not UTF-8 (the round's error said only 'utf-8')
        adapt_main([*argv, "--server", os.fsdecode(b"\xff:1")])
    assert "--server: holds bytes that are not UTF-8 ('\\udcff:1')" in capsys.readouterr().err
    with ServerThread(cfg) as srv:
        monkeypatch.delenv("ADAPT_TOKEN", raising=False)
        with pytest.raises(SystemExit) as exit_:  # the variable named for the token holds none
            adapt_main(["--server", srv.target, *argv])
        assert exit_.value.code == 2 and "ADAPT_TOKEN is not set" in capsys.readouterr().err
        monkeypatch.delenv("LMROUTE_TOKEN", raising=False)
        assert adapt_main(["--server", srv.target, *[a for a in argv if a not in ("--token-env", "ADAPT_TOKEN")]]) == 1
        assert "UNAUTHENTICATED" in json.loads(capsys.readouterr().out.splitlines()[-1])["error"]
        monkeypatch.setenv("ADAPT_TOKEN", operator)
        assert adapt_main(["--server", srv.target, *argv]) == 0
        done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert done["accepted"] is False and done["serving_version"]  # nothing judged yet: the bundle stays


def _route_and_judge(client: Any, parent: Path, texts: list[str]) -> None:
    """Route `texts` naming no router, then report each decision's paired outcome by its id (the
    learnable rule of `_judged`)."""
    from lmroute.v1 import router_pb2

    bundle = load_bundle(parent)
    emb = bundle.prompt_batch(texts).embeddings
    assert emb is not None
    u = np.random.default_rng(1).standard_normal(emb.shape[1])
    rng = np.random.default_rng(len(texts))
    weak = (rng.random(len(texts)) < 1.0 / (1.0 + np.exp(-(1.0 - 6.0 * (emb @ u))))).astype(float)
    strong = np.maximum(weak, (rng.random(len(texts)) < 0.8).astype(float))
    ids = [client.route(t, strong_share=0.5).decision_id for t in texts]
    paired = [router_pb2.PairedOutcome(strong_quality=s, weak_quality=w) for s, w in zip(strong, weak, strict=True)]
    reports = [router_pb2.OutcomeReport(decision_id=d, paired=p) for d, p in zip(ids, paired, strict=True)]
    for _ in range(50):  # a decision is written a moment after its answer: retry UNAVAILABLE ones
        codes = [r.code for r in client.feedback(reports).results]
        if all(c == 0 for c in codes):
            return
        time.sleep(0.1)
    raise AssertionError(f"feedback not stored: {codes}")


def test_with_the_privacy_switch_each_round_learns_from_every_outcome(parent: Path, tmp_path: Path) -> None:
    """A store that keeps no prompt text: a prompt's base and champion scores are computed again from its
    stored embedding and length (mf and the adapted kinds read no text), so the round after an
    adaptation learns from the decisions of the previous bundle and from those of the adapted router
    (decisions that name no router record only its score)."""
    from lmroute.adapt.loop import run_round
    from lmroute.bundle.writer import restamp_bundle
    from lmroute.service.client import RouterClient
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread

    served = tmp_path / "served"
    shutil.copytree(parent, served)
    restamp_bundle(served, default_router="mf")
    dsn = f"sqlite:{tmp_path / 'private.sqlite3'}"
    cfg = ServiceConfig(bundle_path=served, port=0, store=dsn, store_prompts=False, log_level="warning", grace_s=0.0)
    texts = synthetic_prompts(N, seed=9)
    with ServerThread(cfg) as srv, RouterClient(srv.target) as client:
        _route_and_judge(client, parent, texts[: N // 2])
        first = run_round(srv.target, dsn, tmp_path / "bundles")
        assert first.accepted and first.report["outcomes_skipped"] == 0, first.report
        assert client.list_routers().default_router == "adapted"
        _route_and_judge(client, parent, texts[N // 2 :])  # decided by the adapted router
        second = run_round(srv.target, dsn, tmp_path / "bundles")
        assert second.report["champion"] == "adapted"
        assert second.report["outcomes_read"] == N and second.report["outcomes_skipped"] == 0, second.report
        assert second.report["outcomes_unseen_by_champion"] == N - N // 2
    store = open_store(dsn)
    assert all(r.prompt_text is None for r in store.labeled_prompts())  # no text was kept
    store.close()


def _versions(targets: list[str]) -> list[str]:
    from lmroute.service.client import RouterClient

    out = []
    for target in targets:
        with RouterClient(target) as client:
            out.append(client.list_routers().bundle_version)
    return out


def test_the_link_round_repoints_the_link_and_every_watching_server_swaps(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lmroute-adapt --bundle-link`: no server is called; two servers that serve and watch the link swap
    the accepted candidate in themselves, and clients that name no router get the adapted router."""
    from lmroute.adapt.loop import main as adapt_main
    from lmroute.adapt.loop import run_link_round
    from lmroute.bundle.writer import restamp_bundle
    from lmroute.service.client import RouterClient
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread

    bundles = tmp_path / "bundles"
    shutil.copytree(parent, bundles / "base")
    base = restamp_bundle(bundles / "base", default_router="mf")
    link = bundles / "current"
    link.symlink_to("base")
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    cfg = ServiceConfig(bundle_path=link, port=0, store=dsn, bundle_watch_s=0.2, log_level="warning", grace_s=0.0)
    with ServerThread(cfg) as one, ServerThread(cfg) as two:
        targets = [one.target, two.target]
        assert _versions(targets) == [base.bundle_version] * 2
        idle = run_link_round(link, dsn, bundles)  # nothing judged: nothing written, the link unchanged
        assert not idle.accepted and os.readlink(link) == "base" and idle.serving_version == base.bundle_version
        store = open_store(dsn)
        store.write([], _judged(parent, shuffled=False))
        store.close()
        done = run_link_round(link, dsn, bundles)
        assert done.accepted and done.candidate is not None
        assert os.readlink(link) == done.candidate.name  # relative: the volume may be mounted anywhere
        assert load_bundle(link).version == done.serving_version != base.bundle_version
        deadline = time.monotonic() + 60
        while _versions(targets) != [done.serving_version] * 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _versions(targets) == [done.serving_version] * 2
        for target in targets:
            with RouterClient(target) as client:
                assert client.route("Explain quicksort.", strong_share=0.5).router == "adapted"
    assert [p.name for p in bundles.iterdir() if p.name.startswith(".")] == [".current.lock"]  # no temporary link
    args = ["--bundle-link", str(bundles / "base"), "--store", dsn, "--bundles-dir", str(bundles), "--once"]
    assert adapt_main(args) == 1  # a directory, not a link
    assert "is not a symbolic link" in capsys.readouterr().out


def test_one_link_round_at_a_time_and_a_link_moved_meanwhile_is_left_alone(parent: Path, tmp_path: Path) -> None:
    """Two rounds at once on one link both adapted the same parent and both re-pointed the link (the last
    one won). A round finding another's lock is refused at once; a candidate whose parent the link no
    longer names (re-pointed meanwhile: a rollback) does not replace what the link names now."""
    import fcntl

    from lmroute.adapt.loop import LinkMoved, point_link, run_link_round

    bundles = tmp_path / "bundles"
    shutil.copytree(parent, bundles / "base")
    shutil.copytree(parent, bundles / "rollback")
    link = bundles / "current"
    link.symlink_to("base")
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    store = open_store(dsn)
    store.write([], _judged(parent, shuffled=False))
    store.close()
    with open(bundles / ".current.lock", "w") as held:  # another round's
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match=r"another lmroute-adapt round is running on .*current \(it holds"):
            run_link_round(link, dsn, bundles)
    assert os.readlink(link) == "base" and not [p for p in bundles.iterdir() if p.name.startswith("adapted-")]
    with pytest.raises(LinkMoved, match=r"current was re-pointed to .*rollback during the round \(it named .*base\)"):
        os.replace(bundles / "current", bundles / "old-link")
        (bundles / "current").symlink_to("rollback")
        point_link(link, bundles / "base", expected=bundles / "old-link")  # adapted from what it named before
    assert os.readlink(link) == "rollback"
    left = bundles / ".current.tmp-4242-17"  # a round killed (SIGKILL) between staging a link and renaming it
    left.symlink_to("base")
    done = run_link_round(link, dsn, bundles)  # the lock released: a round runs
    assert done.accepted and done.candidate is not None and os.readlink(link) == done.candidate.name
    assert not os.path.lexists(left)  # removed under the round lock: no round stages one now


def _recent_decisions(parent: Path, texts: list[str], start_ms: int) -> list[Decision]:
    """Score decisions of `texts` (one each, in order, a millisecond apart from `start_ms`)."""
    pair = load_bundle(parent).manifest.default_pair
    return [
        Decision(
            decision_id=f"{i:032x}",
            time_ms=start_ms + i,
            kind="score",
            bundle_version="before",
            scores={},
            strong_model=pair.strong,
            weak_model=pair.weak,
            prompt_sha256=prompt_sha256(text),
            n_tokens=8,
            prompt_text=text,
        )
        for i, text in enumerate(texts)
    ]


def test_recalibration_counts_a_hot_prompt_once(parent: Path, tmp_path: Path) -> None:
    """The 5,000 latest decisions are one templated prompt 4,799 times among 201 others: the adapted
    router's thresholds are calibrated on the 202 distinct prompts, each once, so they differ across
    shares and meet each share on those prompts (on the 5,000 decisions as they came, every share of
    0.05-0.95 had the hot prompt's score for its threshold: the strong-share knob moved nothing)."""
    store = open_store(f"sqlite:{tmp_path / 'outcomes.sqlite3'}")
    store.write([], _judged(parent, shuffled=False))
    hot = "Summarise this support ticket for the on-call engineer: printer offline again"
    others = synthetic_prompts(201, seed=33)
    texts = [hot] * 4799 + others
    np.random.default_rng(4).shuffle(texts)
    store.write(_recent_decisions(parent, texts, int(time.time() * 1000) + 1000), [])
    run = adapt_from_store(parent, store, tmp_path / "b1")
    store.close()
    assert run.accepted, run.report
    assert run.report["calibration_prompts"] == 202, run.report
    assert run.report["calibration"] == "on the 202 distinct prompts of the 5000 most recent decisions"
    manifest = load_bundle(tmp_path / "b1").manifest
    assert manifest.lineage is not None and manifest.lineage.calibration_prompts == 202
    cal = manifest.calibration
    assert cal is not None
    shares = np.asarray(cal.strong_share)
    thresholds = np.asarray(cal.thresholds["adapted"])
    middle = (shares >= 0.05 - 1e-9) & (shares <= 0.95 + 1e-9)
    assert len(set(thresholds[middle])) > 80, (
        f"shares 0.05-0.95 share thresholds {sorted(set(thresholds[middle].tolist()))}"
    )
    adapted = load_bundle(tmp_path / "b1").routers["adapted"]
    scores = np.asarray(adapted.score(load_bundle(tmp_path / "b1").prompt_batch([hot, *others])), dtype=np.float64)
    for p, t in zip(shares[middle], thresholds[middle], strict=True):
        sent = float(np.mean(scores >= t))
        assert abs(sent - p) <= 1.0 / 202 + 1e-3, f"strong share {p:.2f}: threshold {t} sends {sent:.3f}"


def test_too_few_distinct_recent_prompts_keep_the_parents_thresholds(parent: Path, tmp_path: Path) -> None:
    """80 judged prompts and 320 recent decisions of 21 distinct prompts (one of them 300 times): too few
    distinct prompts to calibrate on (100), so the adapted router keeps the parent's thresholds of the
    router it replaces, and the report says so."""
    store = open_store(f"sqlite:{tmp_path / 'outcomes.sqlite3'}")
    store.write([], _judged(parent, shuffled=False)[:160])
    texts = ["one hot prompt"] * 300 + synthetic_prompts(20, seed=34)
    store.write(_recent_decisions(parent, texts, int(time.time() * 1000) + 1000), [])
    run = adapt_from_store(parent, store, tmp_path / "b1", margin=1.0)  # any candidate passes
    store.close()
    assert run.accepted and run.n_outcomes == 80, run.report
    assert run.report["calibration_prompts"] == 0
    assert run.report["calibration"] == (
        "not recalibrated: the parent's thresholds of mf kept (the 320 most recent decisions hold 21 distinct "
        "prompts and the judged prompts 80, fewer than 100)"
    )
    manifest = load_bundle(tmp_path / "b1").manifest
    parent_cal = load_bundle(parent).manifest.calibration
    assert manifest.calibration is not None and parent_cal is not None
    assert manifest.calibration.thresholds["adapted"] == parent_cal.thresholds["mf"]
    assert manifest.lineage is not None and manifest.lineage.calibration_prompts == 0


def test_single_skips_the_outcomes_of_decisions_made_among_candidates(parent: Path, tmp_path: Path) -> None:
    """Single outcomes of 60 two-way Route decisions (30 made under a share target, whose `choice` holds
    it) and of 40 Route decisions among three candidates that chose the pair's strong or weak model:
    `--kind single` learns from the 60 alone (a propensity among three is not one between two) and the
    report counts the 40 with the reason."""
    pair = load_bundle(parent).manifest.default_pair
    texts = synthetic_prompts(100, seed=35)
    rng = np.random.default_rng(6)
    t0 = int(time.time() * 1000) - 100_000
    decisions: list[Decision] = []
    outcomes: list[Outcome] = []
    for i, text in enumerate(texts):
        strong = bool(rng.random() < 0.5)
        did = f"{i:032x}"
        threshold: float | None = 0.5  # two-way: at a threshold, every other one under a share target
        policy, choice = ("target", json.dumps({"target": 0.3})) if i % 2 else ("strong_share", "")
        if i >= 60:  # among three candidates (Route's own `choice` layout)
            threshold, policy = None, "cost_weight"
            costs = {"models": [pair.strong, pair.weak, "third"], "qualities": [0.8, 0.6, 0.7], "costs": [3, 1, 2]}
            choice = json.dumps({**costs, "chosen": int(not strong)})
        decisions.append(
            Decision(
                decision_id=did,
                time_ms=t0 + 1000 * i,
                kind="route",
                bundle_version="before",
                scores={"mf": 0.5},
                strong_model=pair.strong,
                weak_model=pair.weak,
                prompt_sha256=prompt_sha256(text),
                n_tokens=8,
                prompt_text=text,
                router="mf",
                chosen_model=pair.strong if strong else pair.weak,
                propensity=0.8,
                threshold=threshold,
                policy=policy,
                choice=choice,
            )
        )
        quality = float(rng.random() < 0.7)
        outcomes.append(Outcome(OutcomeKind.SINGLE, "", quality, decision_id=did, observed_ms=t0 + 1000 * i + 500))
    store = open_store(f"sqlite:{tmp_path / 'outcomes.sqlite3'}")
    store.write(decisions, outcomes)
    run = adapt_from_store(parent, store, tmp_path / "b1", kind="single")
    store.close()
    assert run.report["outcomes_read"] == 60 and run.n_outcomes == 60, run.report
    assert run.report["outcomes_excluded"] == {
        "decided by Route among candidates: an N-way propensity (--kind qualities learns from it)": 40
    }


def test_ctrl_c_stops_the_adapt_loop_in_one_line(tmp_path: Path) -> None:
    """SIGINT while the loop waits for its next round: exit 130 and one line, not a traceback; SIGTERM:
    exit 128 + 15 and one line (it said nothing, so a CronJob's log did not say why it ended)."""
    import signal
    import subprocess
    import sys

    dsn = f"sqlite:{tmp_path / 'o.sqlite3'}"
    open_store(dsn).close()
    argv = [str(Path(sys.executable).parent / "lmroute-adapt"), "--server", "127.0.0.1:1", "--store", dsn]
    argv += ["--bundles-dir", str(tmp_path / "bundles"), "--interval-s", "60"]

    # a shell's background job (CI's) ignores SIGINT, and a child inherits that: Ctrl-C as a terminal sends it
    def as_in_a_terminal() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    loop = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal
    )
    assert loop.stdout is not None
    first = loop.stdout.readline()  # its first round: no server there
    assert '"error"' in first, first
    time.sleep(1.0)  # into its wait for the next round (the round's own ending may still be under way)
    loop.send_signal(signal.SIGINT)
    out, err = loop.communicate(timeout=60)
    assert loop.returncode == 130 and err.strip() == "lmroute-adapt: interrupted" and "Traceback" not in err, err
    # SIGTERM (a CronJob's deadline): exit 143, and a line saying why
    loop = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert loop.stdout is not None and '"error"' in loop.stdout.readline()
    time.sleep(1.0)
    loop.send_signal(signal.SIGTERM)
    out, err = loop.communicate(timeout=60)
    assert loop.returncode == 143 and err.strip() == "lmroute-adapt: terminated (SIGTERM)", err


def test_too_few_usable_outcomes_says_why_the_others_were_left_out(parent: Path, tmp_path: Path) -> None:
    """Outcomes judging another pair than the bundle's: the refusal names that reason, and the report
    counts the judged prompts read and those left out by reason."""
    pair = load_bundle(parent).manifest.default_pair
    other = {pair.strong: "gpt-4", pair.weak: "llama"}
    outcomes = [dataclasses.replace(o, model=other[o.model]) for o in _judged(parent, shuffled=False)]
    store = open_store(f"sqlite:{tmp_path / 'o.sqlite3'}")
    store.write([], outcomes)
    for kind in ("paired", "single"):
        run = adapt_from_store(parent, store, tmp_path / f"b-{kind}", kind=kind)
        assert not run.accepted and run.report["judged_prompts_read"] == N and run.report["outcomes_read"] == 0
        why = (
            f"not judged on the bundle's pair ({pair.strong}, {pair.weak})" if kind == "paired" else "no single outcome"
        )
        assert run.report["outcomes_excluded"] == {why: N}, run.report
        assert run.report["gate"]["reason"] == f"0 usable outcomes (need 50); {N} of the {N} judged prompts read: {why}"
    store.close()
