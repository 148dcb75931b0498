"""The training recipe (`lmroute.export.recipe`): its shipped defaults, its checks, what the router kinds
read from it, and the flags of `lmroute-export build` and of the validation harness derived from it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmroute.export.cli import build_config, build_parser
from lmroute.export.dataclass_flags import flags_of, parse_pairs
from lmroute.export.pipeline import BuildConfig
from lmroute.export.recipe import SHIPPED, BuildRecipe, Recipe
from lmroute.export.validation_flags import parse_args
from lmroute.export.validation_recipes import Experiment

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "integration" / "plugins"

# What bundle/kinds/*.py read from `ctx.recipe` (and a plug-in kind may): names and meanings are a contract.
KIND_ATTRIBUTES = (
    "seed",
    "quick",
    "mf_dim",
    "mf_epochs",
    "mf_batch_size",
    "mf_lr",
    "mf_noise_sigma",
    "mf_pair_weight",
    "label_weights",
    "gamma",
    "sw_pair_only",
    "bert_pair_only",
    "bert_time_budget_s",
    "bert_max_tokens",
    "encoder_model_dir",
    "max_tokens",
    "truncation",
    "truncation_rule",
)


def test_defaults_are_the_shipped_recipe() -> None:
    """The values the default bundle is built with (docs/eval/validation.md chose them); changing one
    changes the bundle, so it must be deliberate."""
    shipped = {
        "seed": 0,
        "encoder_model_dir": None,
        "encoder": "onnx",
        "static_dim": 256,
        "static_sif_a": 1e-3,
        "max_tokens": 256,
        "truncation": "head_tail:96",
        "label_weights": (("human", 1.0), ("judge", 1.0), ("golden", 1.0)),
        "elo_source_weights": (),
        "elo_min_comparisons": 1,
        "n_tiers": 10,
        "gamma": 1e5,
        "sw_pair_only": True,
        "mf_dim": 128,
        "mf_epochs": 20,
        "mf_batch_size": 1024,
        "mf_lr": 1e-3,
        "mf_noise_sigma": 0.02,
        "mf_weight_decay": 1e-5,
        "mf_source_bias": True,
        "mf_pair_weight": 10.0,
        "bert_pair_only": True,
        "bert_time_budget_s": 420.0,
        "bert_max_tokens": 256,
        "bert_epochs": 3,
        "bert_lr": 1e-4,
        "prior_weights": (("mf", 4.0), ("sw_ranking", 0.5), ("bert", 0.25)),
        "prior_ridge": 10.0,
        "prior_standardise_on": 1000,
    }
    assert dataclasses.asdict(Recipe()) == dataclasses.asdict(SHIPPED) == shipped
    assert BuildConfig(out_dir=Path("x")).recipe == SHIPPED
    assert Experiment().recipe == SHIPPED


def test_every_knob_is_documented_and_frozen() -> None:
    for f in dataclasses.fields(Recipe):
        assert len(f.metadata.get("help", "")) > 10, f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        SHIPPED.gamma = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Recipe(0)  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_tiers": 1}, "n_tiers: must be >= 2 (got 1)"),
        ({"mf_epochs": 0}, "mf_epochs: must be >= 1 (got 0)"),
        ({"gamma": 0.0}, "gamma: must be finite and > 0 (got 0.0)"),
        ({"encoder": "bert"}, "encoder: 'bert' is not one of onnx, onnx-int8, static"),
        ({"static_dim": 0}, "static_dim: must be >= 1 (got 0)"),
        ({"static_sif_a": 0.0}, "static_sif_a: must be finite and > 0 (got 0.0)"),
        ({"mf_noise_sigma": float("nan")}, "mf_noise_sigma: must be finite and >= 0 (got nan)"),
        ({"label_weights": (("gold", 1.0),)}, "label_weights: unknown label kinds ['gold']"),
        (  # was taken, and weighed nothing: no source has that name
            {"elo_source_weights": (("alpaca", 0.0),)},
            "elo_source_weights: unknown sources ['alpaca']; know ('arena_human', 'alpaca_eval',",
        ),
        ({"prior_weights": (("mf", -1.0),)}, "prior_weights: mf=-1.0 must be finite and >= 0"),
        ({"prior_weights": (("mf", 1.0), ("mf", 2.0))}, "prior_weights: a name occurs twice (mf=1,mf=2)"),
        ({"max_tokens": 1, "truncation": "head"}, "max_tokens: must be >= 2 (got 1)"),
        ({"seed": -1}, "seed: must be an integer in [0, 2**63 - 1] (got -1)"),
        ({"seed": 2**63}, "seed: must be an integer in [0, 2**63 - 1] (got 9223372036854775808)"),
        ({"bert_max_tokens": 4}, "bert_max_tokens: must be >= 8 (got 4)"),
        ({"bert_max_tokens": 600}, "bert_max_tokens: must be <= 512, bert's positions (got 600)"),
        ({"bert_lr": 1.0}, "bert_lr: must be in (0, 1) (got 1.0)"),  # was refused only once bert's training began
    ],
)
def test_bad_values_are_refused_with_the_field_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        Recipe(**kwargs)  # type: ignore[arg-type]
    assert str(err.value).startswith(message)


def test_pairs_given_as_lists_become_tuples_of_floats() -> None:
    r = Recipe(label_weights=[["human", 2]], encoder_model_dir="models/x")  # type: ignore[arg-type]
    assert r.label_weights == (("human", 2.0),) and r.encoder_model_dir == Path("models/x")
    assert hash(r) == hash(Recipe(label_weights=(("human", 2.0),), encoder_model_dir=Path("models/x")))


def test_kinds_get_every_attribute_they_read_from_the_recipe() -> None:
    recipe = Recipe(seed=3, mf_lr=0.5, gamma=7.0, encoder_model_dir=Path("m"))
    view = BuildRecipe.of(recipe, quick=True)
    for name in KIND_ATTRIBUTES:
        expected = True if name == "quick" else getattr(recipe, name)
        assert getattr(view, name) == expected, name
    assert {f.name for f in dataclasses.fields(Recipe)} <= {f.name for f in dataclasses.fields(BuildRecipe)}


def test_build_config_refuses_a_prior_weight_for_random() -> None:
    with pytest.raises(ValueError, match="prior_weights: 'random' is not a trained router"):
        BuildConfig(out_dir=Path("x"), recipe=Recipe(prior_weights=(("random", 1.0),)))


def _build(argv: list[str], environ: dict[str, str] | None = None) -> BuildConfig:
    return build_config(build_parser().parse_args(["build", "--out", "out", *argv]), environ=environ or {})


def test_every_recipe_field_is_a_build_flag_and_a_variable() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["build"].format_help()  # type: ignore[union-attr]
    for flag in flags_of(Recipe, env_prefix="LMROUTE_EXPORT_"):
        assert flag.flag in help_text and flag.env in help_text.replace("\n", "").replace(" ", ""), flag.name
    assert _build([]).recipe == SHIPPED


def test_build_flags_beat_variables_which_beat_defaults() -> None:
    env = {"LMROUTE_EXPORT_MF_LR": "0.25", "LMROUTE_EXPORT_GAMMA": "3", "LMROUTE_EXPORT_SW_PAIR_ONLY": "false"}
    cfg = _build(["--gamma", "1e4", "--seed", "5", "--prior-weights", "mf=2,bert=0.5", "--routers", "mf"], env)
    r = cfg.recipe
    assert (r.gamma, r.mf_lr, r.seed, r.sw_pair_only) == (1e4, 0.25, 5, False)
    assert r.prior_weights == (("mf", 2.0), ("bert", 0.5)) and cfg.routers == ("mf",)
    assert _build(["--no-bert-pair-only", "--label-weights", "judge=0.5"]).recipe == Recipe(
        bert_pair_only=False, label_weights=(("judge", 0.5),)
    )
    assert _build([], {"LMROUTE_EXPORT_PRIOR_WEIGHTS": ""}).recipe.prior_weights == ()
    assert _build(["--encoder-model-dir", "m"], {}).recipe.encoder_model_dir == Path("m")


def test_the_default_router_is_mf_when_built_unless_the_build_names_another(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _build([]).default_router_name == "mf"
    assert _build(["--routers", "random", "sw_ranking"]).default_router_name == ""
    assert _build(["--default-router", "sw_ranking"]).default_router_name == "sw_ranking"
    assert _build(["--default-router", "none"]).default_router_name == ""
    assert _build([]).default_quality_router_name == "quality"
    assert _build(["--routers", "mf"]).default_quality_router_name == ""
    assert _build(["--default-quality-router", "none"]).default_quality_router_name == ""
    with pytest.raises(ValueError, match=r"default_quality_router: 'nope' is not a router of the build"):
        _build(["--default-quality-router", "nope"])
    monkeypatch.setenv("LMROUTE_EXPORT_DEFAULT_ROUTER", "bert")  # read when the parser is made, as --quick
    assert _build([]).default_router_name == "bert"
    with pytest.raises(
        ValueError, match=r"default_router: 'bert' is not a router of the build \(mf\), 'auto' or 'none'"
    ):
        _build(["--routers", "mf", "--default-router", "bert"])


def test_bad_build_values_name_the_flag_or_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build", "--out", "o", "--mf-lr", "fast"])
    assert "argument --mf-lr: could not convert string to float: 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build", "--out", "o", "--prior-weights", "mf:4"])
    assert "argument --prior-weights: expected name=value, got 'mf:4'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="LMROUTE_EXPORT_SW_PAIR_ONLY: expected 1/0"):
        _build([], {"LMROUTE_EXPORT_SW_PAIR_ONLY": "maybe"})
    with pytest.raises(ValueError, match=r"mf_epochs: must be >= 1 \(got 0\)"):
        _build(["--mf-epochs", "0"])


def test_parse_pairs() -> None:
    assert parse_pairs(" mf = 4 , bert=0.25,") == (("mf", 4.0), ("bert", 0.25))
    assert parse_pairs("") == ()
    for bad in ("mf", "=1", "mf=x"):
        with pytest.raises(ValueError, match="expected name=value"):
            parse_pairs(bad)


def test_harness_commands_of_the_validation_doc_mean_what_they_meant() -> None:
    """docs/eval/validation.md's commands: the flags set the same training as before the recipe was
    shared (--pair-weight and --pair-only act on mf and sw_ranking alike, --prior-weight on every router)."""
    _, mf, sweep = parse_args(
        "--all-folds --pool --random-seeds 200 --routers mf --pair-weight 10 --mf-lr 1e-3 "
        "--mf-noise-sigma 0.02 --mf-batch-size 1024 --prior-weight 4".split()
    )
    assert sweep is None
    assert mf == Experiment(
        recipe=Recipe(prior_weights=(("mf", 4.0), ("sw_ranking", 4.0), ("bert", 4.0))), sw_pair_weight=10.0
    )
    _, sw, _ = parse_args("--routers sw_ranking --pair-only --gamma 1e5 --prior-weight 0.5".split())
    assert sw == Experiment(
        recipe=Recipe(prior_weights=(("mf", 0.5), ("sw_ranking", 0.5), ("bert", 0.5))), mf_pair_only=True
    )
    args, bert, sweep = parse_args("--all-folds --pool --routers bert --prior-weights 0,0.25,0.5,1,2,4".split())
    assert sweep == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0] and bert == Experiment(recipe=Recipe(prior_weights=()))
    assert args.all_folds and args.pool and args.routers == "bert"
    _, plain, _ = parse_args([])
    assert plain == Experiment()  # no flags: the shipped recipe


def test_harness_flags_share_the_recipe_and_keep_their_own(capsys: pytest.CaptureFixture[str]) -> None:
    _, exp, _ = parse_args(
        "--tier-window 2 --other-weight 0 --source-weights routerbench_winogrande=0 --no-source-bias "
        "--elo-source-weights alpaca_eval=0 --n-tiers 8 --bert-time-budget-s 30 --prior-ridge 3 "
        "--prior-weights mf=1 --mf-pair-weight 2 --pair-weight 5".split()
    )
    assert exp.recipe == Recipe(
        elo_source_weights=(("alpaca_eval", 0.0),),
        n_tiers=8,
        mf_source_bias=False,
        mf_pair_weight=5.0,  # the later flag wins
        bert_time_budget_s=30.0,
        prior_weights=(("mf", 1.0),),
        prior_ridge=3.0,
    )
    assert (exp.tier_window, exp.other_weight, exp.sw_pair_weight) == (2, 0.0, 5.0)
    assert exp.source_weights == (("routerbench_winogrande", 0.0),)
    with pytest.raises(SystemExit):
        parse_args(["--prior-weight", "1", "--prior-weights", "0,1"])
    assert "a sweep (--prior-weights W,W,...) replaces the recipe's prior weights" in capsys.readouterr().err
    harness_help = subprocess.run(
        [sys.executable, "-m", "lmroute.export.validate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in flags_of(Recipe) + flags_of(Experiment, skip=("recipe",)):
        assert flag.flag in harness_help, flag.name


def test_build_plugin_flag_adds_its_kind_to_the_routers(tmp_path: Path) -> None:
    """`lmroute-export build --plugin MODULE` imports the module before the flags are parsed, so its kind
    is a valid --routers choice; the recipe flags parse next to it."""
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    argv = ["build", "--out", str(tmp_path / "b"), "--plugin", "constant_kind", "--routers", "random", "constant"]
    cmd = [sys.executable, "-m", "lmroute.export.cli", *argv, "--gamma", "5", "--help"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    assert "constant" in out and "--mf-pair-weight" in out
    bad = [sys.executable, "-m", "lmroute.export.cli", *argv, "--mf-epochs", "0"]
    res = subprocess.run(bad, capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stderr.endswith("lmroute-export build: --mf-epochs: must be >= 1 (got 0)\n")


def test_build_refuses_an_out_or_report_it_cannot_write_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out a directory of the user's that is not a bundle (it was deleted and replaced without a word)
    and --report under a missing directory (a traceback after the bundle was written): exit 2 naming the
    flag, before anything is built (the data dir here is empty: a build would fail at once)."""
    from lmroute.export.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["build", "--data-dir", str(empty), "--cache-dir", str(tmp_path / "cache"), "--routers", "random"]
    cases = [
        (["--out", str(mine)], f"--out: {mine} holds files but no manifest.json (not a bundle, so it is not replaced)"),
        (
            ["--out", str(tmp_path / "b"), "--report", str(tmp_path / "nodir" / "r.json")],
            f"--report: {tmp_path / 'nodir'} is not a directory",
        ),
        (
            ["--out", str(tmp_path / "b"), "--report", str(empty)],
            f"--report: {empty} is a directory (name the JSON file to write)",
        ),
    ]
    for extra, says in cases:
        assert main([*base, *extra]) == 2, extra
        assert capsys.readouterr().err == f"lmroute-export build: {says}\n"
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine"]


def test_build_refuses_bad_flags_in_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flags a build would otherwise take and fail on with a traceback, some only after the training:
    exit 2 and one line naming the flag, nothing made (no cache dir, no bundle)."""
    from lmroute.export.cli import main
    from lmroute.export.encoder_export import default_model_dir

    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    config = default_model_dir() / "config.json"
    base = ["build", "--data-dir", str(empty), "--cache-dir", str(tmp_path / "cache"), "--routers", "random"]
    out = ["--out", str(tmp_path / "b")]
    cases = [
        ([*out, "--max-tokens", "1", "--truncation", "head"], "--max-tokens: must be >= 2 (got 1)"),
        (
            [*out, "--max-tokens", "600", "--truncation", "head"],
            f"--max-tokens: 600 is more than the encoder model's 512 positions (max_position_embeddings in {config})",
        ),
        ([*out, "--seed", "-1"], "--seed: must be an integer in [0, 2**63 - 1] (got -1)"),
        ([*out, "--data-dir", str(tmp_path / "nowhere")], f"--data-dir: {tmp_path / 'nowhere'} is not a directory"),
        (
            [*out, "--encoder-model-dir", str(tmp_path / "nowhere")],
            f"--encoder-model-dir: {tmp_path / 'nowhere'} is not a directory",
        ),
        (
            [*out, "--encoder-model-dir", str(no_config)],
            f"--encoder-model-dir: {no_config} is not a Hugging Face model directory (no config.json)",
        ),
        ([*out, "--cache-dir", str(a_file)], f"--cache-dir: {a_file} exists and is not a directory"),
        ([*out, "--cache-dir", str(a_file / "cache")], f"--cache-dir: {a_file} is not a directory"),
    ]
    if Path("/proc/self").is_dir():  # no directory can be made in /proc, not even by root
        cases.append(
            (
                ["--out", "/proc/lmroute-test-out"],
                "--out: /proc: no directory can be made there (No such file or directory)",
            )
        )
    for extra, says in cases:
        assert main([*base, *extra]) == 2, extra
        assert capsys.readouterr().err == f"lmroute-export build: {says}\n", extra
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty", "no_config"]


def test_build_says_an_error_that_escapes_the_build_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An encoder model dir with a config.json but no tokenizer passes the flag checks and fails in the
    encoder's export: one line naming the file, exit 1, no traceback."""
    from lmroute.export.cli import main

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"max_position_embeddings": 512}')
    argv = ["build", "--quick", "--routers", "random", "--encoder", "static", "--out", str(tmp_path / "b")]
    rc = main([*argv, "--cache-dir", str(tmp_path / "cache"), "--encoder-model-dir", str(model)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.endswith(
        f"lmroute-export build: {model / 'tokenizer.json'}: missing (the runtime needs a HF tokenizers file)\n"
    )
    assert not (tmp_path / "b").exists()
