"""Tests of lmroute.export.evaluate on synthetic eval sets: numbers, files and the Markdown table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lmroute.export.evalsets import load_eval
from lmroute.export.evaluate import PAPER_RESULTS, benchmark_key, evaluate_router, write_report
from lmroute.export.metrics import oracle_scores, random_baseline, router_metrics


@dataclass(frozen=True)
class SyntheticEvalSet:
    """Same fields as lmroute.export.evalsets.EvalSet, filled with made-up data."""

    name: str
    prompts: tuple[str, ...]
    strong_quality: np.ndarray
    weak_quality: np.ndarray
    n_dropped_contaminated: int


def _evalsets() -> dict[str, SyntheticEvalSet]:
    rng = np.random.default_rng(7)
    n_mt, n_mm = 72, 400
    mt_strong = rng.integers(6, 11, n_mt).astype(float)
    mt_weak = np.clip(mt_strong - rng.integers(-1, 4, n_mt), 1, 10).astype(float)
    mm_strong = (rng.random(n_mm) < 0.8).astype(float)
    mm_weak = (rng.random(n_mm) < 0.65).astype(float)
    return {
        "mt_bench": SyntheticEvalSet("mt_bench", tuple(f"q{i}" for i in range(n_mt)), mt_strong, mt_weak, 8),
        "mmlu": SyntheticEvalSet("mmlu", tuple(f"m{i}" for i in range(n_mm)), mm_strong, mm_weak, 5),
    }


def _scores(es: SyntheticEvalSet) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    gain = es.strong_quality - es.weak_quality
    good = 1.0 / (1.0 + np.exp(-(gain + rng.normal(0.0, 0.3, gain.size))))
    return {"good": good, "inverse": 1.0 - good}


@pytest.fixture(scope="module")
def evaluated() -> tuple[dict[str, SyntheticEvalSet], dict]:
    sets = _evalsets()
    scores = {name: _scores(es) for name, es in sets.items()}
    results = evaluate_router(
        scores, sets, models={"strong": "gpt-4-1106-preview", "weak": "mixtral-8x7b-instruct-v0.1"}
    )
    return sets, results


def test_numbers_match_metrics_functions(evaluated: tuple[dict, dict]) -> None:
    sets, results = evaluated
    for bench, es in sets.items():
        b = results["benchmarks"][bench]
        sq, wq = es.strong_quality, es.weak_quality
        assert b["n_prompts"] == len(es.prompts)
        assert b["n_dropped_contaminated"] == es.n_dropped_contaminated
        assert b["strong_mean"] == pytest.approx(sq.mean())
        assert b["weak_mean"] == pytest.approx(wq.mean())
        for name, s in _scores(es).items():
            m = router_metrics(s, sq, wq)
            r = b["routers"][name]
            assert r["apgr"] == pytest.approx(m.apgr, abs=1e-12)
            assert r["cpt"] == pytest.approx({"0.2": m.cpt[0.2], "0.5": m.cpt[0.5], "0.8": m.cpt[0.8]}, abs=1e-12)
            np.testing.assert_allclose(r["curve"]["quality"], m.curve.quality)
        rnd = random_baseline(len(es.prompts), sq, wq, seeds=10)
        assert b["random"]["apgr_mean"] == pytest.approx(rnd.apgr_mean, abs=1e-12)
        assert b["random"]["apgr_std"] == pytest.approx(rnd.apgr_std, abs=1e-12)
        assert b["random"]["cpt_mean"]["0.5"] == pytest.approx(rnd.cpt_mean[0.5], abs=1e-12)
        null = random_baseline(len(es.prompts), sq, wq, seeds=200)
        assert b["random_null"]["apgr_std"] == pytest.approx(null.apgr_std, abs=1e-12)
        for r in b["routers"].values():
            assert r["beats_random"] == (r["apgr"] > null.apgr_mean + 2 * null.apgr_std)
            assert r["apgr_z_vs_random"] == pytest.approx((r["apgr"] - null.apgr_mean) / null.apgr_std)
        orc = router_metrics(oracle_scores(sq, wq, graded=True), sq, wq)
        assert b["oracle"]["apgr"] == pytest.approx(orc.apgr, abs=1e-12)
        # The synthetic "good" router sees the gain, "inverse" its opposite.
        assert b["routers"]["good"]["beats_random"] is True
        assert b["routers"]["inverse"]["beats_random"] is False
        assert b["routers"]["good"]["apgr"] > 0.6 > 0.4 > b["routers"]["inverse"]["apgr"]
    assert results["benchmarks"]["mt_bench"]["quality_label"].startswith("mean GPT-4 score")
    assert results["benchmarks"]["mmlu"]["quality_label"] == "accuracy"


def test_write_report_files_and_table(evaluated: tuple[dict, dict], tmp_path: Path) -> None:
    sets, results = evaluated
    command = "lmroute-export evaluate --bundle artifacts/bundle --out artifacts/eval"
    files = write_report(results, tmp_path / "eval", command)

    saved = json.loads(files.results_json.read_text())
    assert saved["command"] == command
    assert saved["benchmarks"].keys() == results["benchmarks"].keys()
    assert saved["benchmarks"]["mmlu"]["routers"]["good"]["apgr"] == pytest.approx(
        results["benchmarks"]["mmlu"]["routers"]["good"]["apgr"]
    )

    assert set(files.plots) == {"mt_bench", "mmlu"}
    for path in files.plots.values():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    md = files.markdown.read_text()
    head = md.splitlines()[:8]
    assert command in head
    for bench in sets:
        section = md.split(f"(`{bench}`)")[1].split("\n## ")[0]
        rows = [line for line in section.splitlines() if line.startswith("| ")]
        labels = [row.split(" | ")[0][2:] for row in rows[1:]]  # skip the header row
        paper = [p.label for p in PAPER_RESULTS[benchmark_key(bench)]]
        assert labels == ["good", "inverse", "random (10 seeds)", "oracle", *paper]
        b = results["benchmarks"][bench]
        good = rows[1]
        r = b["routers"]["good"]
        assert f"| {100 * r['cpt']['0.5']:.2f} % |" in good
        assert f"| {r['apgr']:.3f} |" in good
        assert "| yes (z = +" in good
        assert "| no (z = -" in rows[2]
        rnd = b["random"]
        assert f"{rnd['apgr_mean']:.3f} ± {rnd['apgr_std']:.3f}" in rows[3]
        assert f"{100 * rnd['cpt_mean']['0.5']:.2f} ± {100 * rnd['cpt_std']['0.5']:.2f} %" in rows[3]
        assert f"| {b['oracle']['apgr']:.3f} |" in rows[4]
        assert f"({bench}.png)" in section
    # The paper's published numbers sit beside ours.
    mt = md.split("(`mt_bench`)")[1]
    assert "| paper: mf (arena + judge) | – | 13.40 % | 31.30 % | 0.802 | – |" in mt
    assert "| paper: bert (arena + judge) | – | 19.58 % | – | – | – |" in mt
    assert "~50.00 %" in md.split("(`mmlu`)")[1]


def test_mismatched_scores_are_refused() -> None:
    sets = _evalsets()
    with pytest.raises(ValueError, match=r"\['mmlu'\]\['mf'\]: shape \(3,\), expected \(400,\)"):
        evaluate_router({"mmlu": {"mf": np.zeros(3)}}, sets)
    with pytest.raises(ValueError, match="no eval set of that name"):
        evaluate_router({"gsm8k": {"mf": np.zeros(3)}}, sets)


def test_evalsets_as_sequence_keyed_by_name() -> None:
    sets = _evalsets()
    es = sets["mmlu"]
    a = evaluate_router({"mmlu": _scores(es)}, list(sets.values()))
    b = evaluate_router({"mmlu": _scores(es)}, sets)
    assert a == b
    assert benchmark_key("MT-Bench") == benchmark_key("mt_bench") == "mtbench"


# ---- the evaluation command on a small but real bundle --------------------------------------------

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle

    root = tmp_path_factory.mktemp("bundle")
    enc = make_fake_encoder_dir(root / "encoder", dim=16)
    return make_tiny_bundle(root / "bundle", encoder_dir=enc, n_prompts=30, n_calibration=32)


def test_score_bundle_batched_equals_one_batch_in_input_order(tiny_bundle: Path) -> None:
    from lmroute.bundle import load_bundle
    from lmroute.bundle.testing import synthetic_prompts
    from lmroute.export.evaluate import score_bundle

    bundle = load_bundle(tiny_bundle)
    texts = synthetic_prompts(23, seed=5)
    got = score_bundle(bundle, texts, batch_size=4)
    assert set(got) == set(bundle.routers)
    whole = bundle.prompt_batch(texts)
    for name, router in bundle.routers.items():
        np.testing.assert_allclose(got[name], router.score(whole), atol=1e-6, err_msg=name)
    only = score_bundle(bundle, texts[:5], routers=["mf"], batch_size=2)
    assert list(only) == ["mf"]
    np.testing.assert_allclose(only["mf"], got["mf"][:5], atol=1e-6)
    with pytest.raises(ValueError, match=r"routers: \['nope'\] not in the bundle"):
        score_bundle(bundle, texts, routers=["nope"])


def test_main_writes_a_report_for_real_eval_data(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lmroute.export.evaluate import main

    if not (REPO / "data" / "eval" / "mt_bench").is_dir():
        pytest.skip("data/eval is not in this checkout")
    out = tmp_path / "report"
    argv = [
        "--bundle",
        str(tiny_bundle),
        "--out",
        str(out),
        "--data-dir",
        str(REPO / "data"),
        "--benchmarks",
        "mt_bench",
        "gsm8k",
        "--limit",
        "40",
    ]
    assert main(argv, prog="lmroute-export evaluate") == 0
    md = (out / "report.md").read_text()
    assert "lmroute-export evaluate " + " ".join(argv) in md.splitlines()[:8]
    results = json.loads((out / "results.json").read_text())
    assert results["models"] == {"strong": "model-05", "weak": "model-00"}
    assert set(results["benchmarks"]) == {"mt_bench", "gsm8k"}
    for b in results["benchmarks"].values():
        assert b["n_prompts"] == 40
        # the bundle's routers, then the two reference baselines (the tiny bundle has a prior)
        assert set(b["routers"]) == {"random", "mf", "sw_ranking", "baseline:length", "baseline:prior"}
    es = load_eval("gsm8k", REPO / "data", limit=40)
    lengths = np.array([len(p) for p in es.prompts], dtype=np.float64)
    expected = router_metrics(lengths, es.strong_quality, es.weak_quality).apgr
    assert results["benchmarks"]["gsm8k"]["routers"]["baseline:length"]["apgr"] == pytest.approx(expected, abs=1e-12)
    assert (out / "mt_bench.png").is_file() and (out / "gsm8k.png").is_file()
    printed = capsys.readouterr().out
    assert "mt_bench  mf" in printed and f"report: {out / 'report.md'}" in printed


def test_main_refuses_a_bad_flag_in_one_line_before_scoring(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad flag is exit 2 and one line naming it (they were tracebacks; --out a file only after the
    whole evaluation ran)."""
    from lmroute.export.evaluate import main

    if not (REPO / "data" / "eval" / "gsm8k").is_dir():
        pytest.skip("data/eval is not in this checkout")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a report directory\n")
    out = tmp_path / "report"
    base = ["--bundle", str(tiny_bundle), "--data-dir", str(REPO / "data"), "--benchmarks", "gsm8k"]
    cases = [
        (["--out", str(out), "--limit", "0"], "--limit: must be >= 1 (got 0)"),
        (["--out", str(out), "--batch-size", "0"], "--batch-size: must be >= 1 (got 0)"),
        (["--out", str(out), "--benchmarks", "bogus"], "--benchmarks: unknown bogus (known: mt_bench, mmlu, gsm8k)"),
        (
            ["--out", str(out), "--routers", "mf", "bogus"],
            "--routers: bogus not in the bundle (has random, mf, sw_ranking)",
        ),
        (["--out", str(a_file)], f"--out: {a_file} exists and is not a directory"),
        (["--out", str(a_file / "report")], f"--out: {a_file} is not a directory"),
        (["--out", str(out), "--bundle", str(tmp_path / "nope")], f"--bundle: {tmp_path / 'nope'} does not exist"),
        (["--out", str(out), "--bundle", str(tmp_path)], f"--bundle: {tmp_path}: manifest.json: missing"),
        (["--out", str(out), "--data-dir", str(tmp_path)], f"--data-dir: {tmp_path} holds no eval/ directory"),
        # a bundle of a plug-in kind is evaluated with its --plugin, as the other bundle commands take it
        (
            ["--out", str(out), "--plugin", "no_such_plugin_module"],
            "--plugin: router kind plugin 'no_such_plugin_module' cannot be imported: "
            "No module named 'no_such_plugin_module'",
        ),
        (["--out", str(out), "--plugin", "json", "--limit", "0"], "--limit: must be >= 1 (got 0)"),  # taken
    ]
    for extra, says in cases:
        assert main(base + extra, prog="lmroute-export evaluate") == 2, extra
        assert capsys.readouterr().err == f"lmroute-export evaluate: {says}\n"
    assert not out.exists()


def test_main_names_an_eval_file_it_cannot_read(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated eval gzip: exit 1 and one line naming the file and line (it was a bare EOFError)."""
    import gzip
    import shutil

    from lmroute.export.evaluate import main

    if not (REPO / "data" / "eval" / "gsm8k").is_dir():
        pytest.skip("data/eval is not in this checkout")
    data = tmp_path / "data"
    shutil.copytree(REPO / "data" / "eval" / "gsm8k", data / "eval" / "gsm8k")
    gz = data / "eval" / "gsm8k" / "gsm8k_responses.csv.gz"
    whole = gzip.compress(gzip.decompress(gz.read_bytes()))
    gz.write_bytes(whole[: len(whole) // 2])
    argv = [
        "--bundle",
        str(tiny_bundle),
        "--out",
        str(tmp_path / "r"),
        "--data-dir",
        str(data),
        "--benchmarks",
        "gsm8k",
    ]
    assert main(argv, prog="lmroute-export evaluate") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lmroute-export evaluate: {gz}:") and "unreadable after line" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_main_reads_the_repository_data_from_any_directory(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--data-dir defaults to the repository's data/, as the other commands' (it was ./data)."""
    from lmroute.export.evaluate import main

    if not (REPO / "data" / "eval" / "gsm8k").is_dir():
        pytest.skip("data/eval is not in this checkout")
    monkeypatch.chdir(tmp_path)
    argv = ["--bundle", str(tiny_bundle), "--out", "report", "--benchmarks", "gsm8k", "--limit", "20"]
    assert main(argv, prog="lmroute-export evaluate") == 0
    assert json.loads((tmp_path / "report" / "results.json").read_text())["benchmarks"]["gsm8k"]["n_prompts"] == 20


class _InterruptedAt(dict):  # type: ignore[type-arg]
    """A benchmark's results whose `key` raises KeyboardInterrupt when read (Ctrl-C while the plots are drawn)."""

    def __init__(self, data: dict, key: str) -> None:
        super().__init__(data)
        self.key = key

    def __getitem__(self, name: str) -> object:
        if name == self.key:
            raise KeyboardInterrupt
        return super().__getitem__(name)


def test_an_interrupted_report_leaves_the_earlier_one_whole(evaluated: tuple[dict, dict], tmp_path: Path) -> None:
    """Ctrl-C while a report is written over an earlier one: the earlier one is left as it was (the new
    results.json lay beside the old report.md and plots), and no temporary directory is left behind."""
    _, results = evaluated
    out = tmp_path / "eval"
    write_report(results, out, "first run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    benches = dict(results["benchmarks"])
    last = list(benches)[-1]
    benches[last] = _InterruptedAt(benches[last], "oracle")
    with pytest.raises(KeyboardInterrupt):
        write_report({**results, "benchmarks": benches}, out, "second run")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]
    files = write_report(results, out, "third run")  # a whole run replaces it whole
    assert files.results_json == out / "results.json" and files.markdown.parent == out
    assert json.loads(files.results_json.read_text())["command"] == "third run"
    assert "third run" in files.markdown.read_text() and sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_a_directory_that_is_not_a_report_is_not_replaced(
    evaluated: tuple[dict, dict], tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lmroute.export.evaluate import main

    _, results = evaluated
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious\n")
    says = f"{out} holds files but no results.json (not a report directory, so it is not replaced)"
    with pytest.raises(FileExistsError, match=re.escape(says)):
        write_report(results, out, "a run")
    argv = ["--bundle", str(tiny_bundle), "--out", str(out), "--data-dir", str(REPO / "data"), "--benchmarks", "gsm8k"]
    if (REPO / "data" / "eval").is_dir():
        assert main(argv, prog="lmroute-export evaluate") == 2
        assert capsys.readouterr().err == f"lmroute-export evaluate: --out: {says}\n"
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
