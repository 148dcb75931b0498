"""`lmroute-export import-routellm --router mf` against RouteLLM's own code (0.2.0 from PyPI, installed by
scripts/install_routellm.sh into .cache/routellm/site): a checkpoint in RouteLLM's exact format, made by
its own MFModel.save_pretrained with random weights, scored by its MatrixFactorizationRouter and by the
imported bundle, both embedding through the same fake endpoint (a real HTTP server on 127.0.0.1 with
deterministic unit vectors). Also the remote encoder's behaviour when the endpoint fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lmroute.bundle.errors import BundleError
from lmroute.bundle.loader import load_bundle
from lmroute.bundle.remote_encoder import RemoteSettings
from lmroute.bundle.testing import synthetic_prompts
from lmroute.export.import_routellm import ImportError_, import_bert, import_mf, import_sw
from lmroute.service.client import RouterClient
from lmroute.service.fake_upstream import FakeUpstream
from lmroute.service.testing import ServerThread

REPO = Path(__file__).resolve().parents[2]
SIDE = Path(__file__).resolve().parent / "routellm_side.py"
PAIRS = [("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"), ("gpt-4-0613", "llama-2-70b-chat")]


def _prompts() -> list[str]:
    extra = [
        "Écris un poème sur la mer, s'il te plaît. 🌊",
        "数学の問題を解いてください: 2x + 3 = 11",
        "x" * 3000,
        " leading and trailing spaces ",
        "Line one\nline two\n\ttabbed",
    ]
    return synthetic_prompts(200, seed=3) + extra


@pytest.fixture(scope="module")
def routellm() -> Callable[..., None]:
    """Runs routellm_side.py (RouteLLM's code) with the given arguments and environment."""
    subprocess.run([str(REPO / "scripts" / "install_routellm.sh")], check=True, cwd=REPO, timeout=1200)

    def run(*args: object, env: dict[str, str]) -> None:
        subprocess.run([sys.executable, str(SIDE), *map(str, args)], check=True, env=env, cwd=REPO, timeout=900)

    return run


def test_mf_scores_equal_routellm(routellm: Callable[..., None], tmp_path: Path) -> None:
    prompts = _prompts()
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    ckpt = tmp_path / "mf_checkpoint"
    with FakeUpstream("embeddings") as fake:
        env = {**os.environ, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-fake"}
        routellm("make-mf", ckpt, 11, env=env)
        assert {"config.json", "model.safetensors"} <= {p.name for p in ckpt.iterdir()}  # + its model card
        remote = RemoteSettings(base_url=fake.base_url)
        for strong, weak in PAIRS:
            routellm("score-mf", ckpt, tmp_path / "prompts.json", tmp_path / "theirs.json", strong, weak, env=env)
            theirs = np.array(json.loads((tmp_path / "theirs.json").read_text())["scores"])
            out = tmp_path / f"bundle-{strong}"
            import_mf(ckpt, out, strong=strong, weak=weak, remote=remote, calibration_prompts=prompts[:60])
            bundle = load_bundle(out, remote=remote)
            ours = bundle.routers["mf"].score(bundle.prompt_batch(prompts))
            assert len(ours) == len(theirs) == 205
            assert float(np.max(np.abs(ours - theirs))) <= 1e-5, (strong, weak)
            assert theirs.std() > 0.1 and theirs.min() < 0.2 and theirs.max() > 0.8  # spread: the check can fail
            manifest = bundle.manifest
            assert manifest.encoder.kind == "remote" and manifest.encoder.name == "text-embedding-3-small"
            assert "RouteLLM mf imported from mf_checkpoint" in manifest.label
            assert (manifest.default_pair.strong, manifest.default_pair.weak) == (strong, weak)
        # the same scores through a real server (Score), embedding through the same endpoint
        cfg_out = tmp_path / f"bundle-{PAIRS[-1][0]}"
        from lmroute.service.config import ServiceConfig

        with ServerThread(ServiceConfig(bundle_path=cfg_out, port=0, embeddings_base_url=fake.base_url)) as srv:
            with RouterClient(srv.target) as client:
                got = client.score(prompts[:40], ["mf"]).results
        served = np.array([r.scores[0].strong_win_probability for r in got])
        assert float(np.max(np.abs(served - theirs[:40]))) <= 1e-5


def test_bert_scores_equal_routellm(routellm: Callable[..., None], tmp_path: Path) -> None:
    prompts = _prompts()
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    ckpt = tmp_path / "bert_checkpoint"
    env = {**os.environ, "OPENAI_API_KEY": "sk-unused"}
    routellm("make-bert", ckpt, 5, env=env)
    routellm("score-bert", ckpt, tmp_path / "prompts.json", tmp_path / "theirs.json", env=env)
    theirs = np.array(json.loads((tmp_path / "theirs.json").read_text())["scores"])
    out = import_bert(ckpt, tmp_path / "bundle", calibration_prompts=prompts[:60])
    bundle = load_bundle(out)
    ours = bundle.routers["bert"].score(bundle.prompt_batch(prompts))
    assert len(ours) == len(theirs) == 205
    assert theirs.std() > 0.05  # the scores vary: the comparison can fail
    assert float(np.max(np.abs(ours - theirs))) <= 1e-5
    assert bundle.manifest.encoder.max_tokens == 512  # the checkpoint tokenizer's limit (the long prompt is cut)
    assert "RouteLLM bert imported from bert_checkpoint" in bundle.manifest.label
    # weights torch cannot load: refused naming the checkpoint as given (it named a temporary copy)
    broken = tmp_path / "broken_checkpoint"
    shutil.copytree(ckpt, broken)
    for weights in [*broken.glob("*.safetensors"), *broken.glob("*.bin")]:
        weights.unlink()
    (broken / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle of tensors")
    with pytest.raises(ImportError_) as err:
        import_bert(broken, tmp_path / "never", calibration_prompts=prompts[:60])
    assert str(err.value).startswith(f"{broken}: not a model transformers can load (")
    assert "/tmp/tmp" not in str(err.value) and not (tmp_path / "never").exists()


def _battles(root: Path, n: int = 700, seed: int = 4) -> tuple[Path, Path, list[str]]:
    """A battles table and its embeddings table in RouteLLM's released schema (JSON Lines, one directory
    each, as `datasets.load_dataset` reads them): 12 models of graded strength, outcomes drawn from a
    Bradley-Terry model with ties, prompts of which some are under the 16-character cut; and the models."""
    rng = np.random.default_rng(seed)
    models = [f"model-{chr(97 + i)}" for i in range(10)] + ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"]
    strength = dict(zip(models, rng.normal(0, 1, len(models)), strict=True))
    strength["gpt-4-1106-preview"], strength["mixtral-8x7b-instruct-v0.1"] = 2.0, 0.3
    shift = rng.normal(0, 1.5, (5, len(models)))
    bdir, edir = root / "battles", root / "battle_embeddings"
    bdir.mkdir()
    edir.mkdir()
    rows, embs = [], []
    for i in range(n):
        a, b = rng.choice(len(models), 2, replace=False)
        ma, mb = models[a], models[b]
        topic = i % 5  # strengths shift by topic, so which battles weigh most changes the fit
        p = 1 / (1 + np.exp(strength[mb] + shift[topic, b] - strength[ma] - shift[topic, a]))
        u = rng.random()
        winner = "a" if u < p * 0.85 else "b" if u < 0.85 else "tie"
        first = (
            f"battle {i}: " + " ".join(rng.choice(["explain", "prove", "code", "poem", "tax"], 3)) if i % 9 else "hi"
        )
        rows.append(
            {
                "id": i,
                "model_a": ma,
                "model_b": mb,
                "prompt": json.dumps([first, "and a second turn"]),
                "response_a": "[]",
                "response_b": "[]",
                "winner_model_a": int(winner == "a"),
                "winner_model_b": int(winner == "b"),
                "winner_tie": int(winner == "tie"),
            }
        )
        if len(first.strip()) >= 16:  # the released embeddings cover the battles RouteLLM keeps
            v = rng.standard_normal(1536) + 30.0 * np.eye(1536)[topic]  # the topic shows in the embedding
            embs.append({"embeddings": (v / np.linalg.norm(v)).tolist()})
    (bdir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (edir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in embs))
    return bdir / "train.jsonl", edir / "train.jsonl", models


def test_sw_ranking_scores_match_routellm(routellm: Callable[..., None], tmp_path: Path) -> None:
    battles, embeddings, _ = _battles(tmp_path)
    prompts = _prompts()
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    strong, weak, n_tiers = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1", 4
    with FakeUpstream("embeddings") as fake:
        env = {**os.environ, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-fake"}
        out_json = tmp_path / "theirs.json"
        routellm(
            "score-sw",
            battles.parent,
            embeddings.parent,
            tmp_path / "prompts.json",
            out_json,
            strong,
            weak,
            n_tiers,
            env=env,
        )
        theirs_doc = json.loads(out_json.read_text())
        theirs = np.array(theirs_doc["scores"])
        converged_json = tmp_path / "theirs_converged.json"
        args = (battles.parent, embeddings.parent, tmp_path / "prompts.json", converged_json, strong, weak, n_tiers)
        routellm("score-sw", *args, env={**env, "ROUTELLM_SIDE_CONVERGED": "1"})
        converged = np.array(json.loads(converged_json.read_text())["scores"])
        remote = RemoteSettings(base_url=fake.base_url)
        ours = {}
        for fit in ("routellm", "exact"):
            out = import_sw(
                [battles],
                [embeddings],
                tmp_path / f"bundle-{fit}",
                num_tiers=n_tiers,
                fit=fit,
                remote=remote,
                calibration_prompts=prompts[:40],
            )
            bundle = load_bundle(out, remote=remote)
            assert bundle.manifest.routers["sw_ranking"].params.fit == fit
            ours[fit] = bundle.routers["sw_ranking"].score(bundle.prompt_batch(prompts))
    assert dict(bundle.manifest.tiers) == theirs_doc["tiers"]  # the same tiers, from the same battles
    cells = np.load(out / bundle.manifest.routers["sw_ranking"].files["cells"])
    assert (cells[:, 1] == n_tiers).any()  # same-tier battles are there, as games against the virtual tier
    assert theirs.std() > 0.01  # scores differ by prompt (sd ~0.025) far beyond the tolerances below
    released, optimum = np.abs(ours["routellm"] - theirs), np.abs(ours["exact"] - converged)
    gap = np.abs(theirs - converged)
    print(
        f"sw_ranking vs RouteLLM: fit routellm vs as released max |diff| {released.max():.3g} (mean "
        f"{released.mean():.3g}); fit exact vs its fit run to convergence {optimum.max():.3g}; as released vs "
        f"converged {gap.max():.3g}; scores sd {theirs.std():.3g}"
    )
    assert float(released.max()) <= 1e-5  # RouteLLM as released, score for score
    assert float(optimum.max()) <= 1e-5  # the same model: equal once RouteLLM's own fit converges
    assert float(gap.max()) > 1e-5  # what tells the two fits apart: the released fit stops short


def test_remote_encoder_failures(tmp_path: Path) -> None:
    """Retries absorb a transient 503; an endpoint that stays down fails each prompt with a clear
    UNAVAILABLE, and a bundle whose endpoint is down at load is refused naming the encoder."""
    from lmroute.service.config import ServiceConfig

    prompts = synthetic_prompts(8, seed=5)
    with FakeUpstream("emb") as fake:
        from lmroute.bundle.remote_encoder import write_remote_spec

        ckpt = _tiny_mf_checkpoint(tmp_path)
        write_remote_spec(tmp_path, "text-embedding-3-small", 1536)
        out = import_mf(
            ckpt, tmp_path / "b", remote=RemoteSettings(base_url=fake.base_url), calibration_prompts=prompts
        )
        with FakeUpstream("flaky", fail_first=2) as flaky:
            bundle = load_bundle(out, remote=RemoteSettings(base_url=flaky.base_url, retries=2))
            assert flaky.failed == 2 and len(bundle.routers["mf"].score(bundle.prompt_batch(prompts))) == 8
        with (
            FakeUpstream("down", status=503) as down,
            pytest.raises(BundleError, match="the embeddings endpoint failed the probe: .*HTTP 503.*after 2 of 2"),
        ):
            load_bundle(out, remote=RemoteSettings(base_url=down.base_url, retries=1))
        cfg = ServiceConfig(bundle_path=out, port=0, embeddings_base_url=fake.base_url, embeddings_retries=0)
        with ServerThread(cfg) as srv, RouterClient(srv.target) as client:
            fake.status = 500  # the endpoint goes down while serving
            res = client.score(prompts[:3], ["mf"]).results
            for r in res:
                assert r.status.code == 14 and r.status.reason == "ENCODER_UNAVAILABLE"
                assert "embeddings endpoint (model text-embedding-3-small): HTTP 500" in r.status.message
            fake.status = 200
            assert client.score(prompts[:3], ["mf"]).results[0].status.code == 0  # back when it is

    # in process (Controller(bundle=...)): the same failure is a RoutingError, UNAVAILABLE, as from a server
    from lmroute.service.routellm_api import Controller, RoutingError

    with FakeUpstream("emb") as fake:
        os.environ["OPENAI_BASE_URL"] = fake.base_url
        try:
            local = Controller(routers=["mf"], strong_model="big", weak_model="small", bundle=out)
            assert local.route(prompts[0], "mf", 0.5) in ("big", "small")
            fake.status = 500
            with pytest.raises(RoutingError, match="the bundle's embeddings endpoint failed: .*HTTP 500") as down:
                local.route(prompts[1], "mf", 0.5)
            assert down.value.code == "UNAVAILABLE"
        finally:
            del os.environ["OPENAI_BASE_URL"]
    with pytest.raises(RoutingError, match=f"bundle {tmp_path / 'nowhere'}: .*does not exist") as missing:
        Controller(routers=["mf"], strong_model="big", weak_model="small", bundle=tmp_path / "nowhere")
    assert missing.value.reason == "BUNDLE_INVALID"


def _tiny_mf_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint in RouteLLM's layout written without RouteLLM (safetensors of random factors)."""
    from safetensors.numpy import save_file

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    rng = np.random.default_rng(0)
    cfg = {"dim": 16, "num_models": 64, "text_dim": 1536, "num_classes": 1, "use_proj": True}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    save_file(
        {
            "P.weight": rng.standard_normal((64, 16)).astype(np.float32),
            "text_proj.0.weight": (rng.standard_normal((16, 1536)) / 40).astype(np.float32),
            "classifier.0.weight": rng.standard_normal((1, 16)).astype(np.float32),
        },
        str(ckpt / "model.safetensors"),
    )
    return ckpt


def test_bad_checkpoints_are_refused_naming_the_file(tmp_path: Path) -> None:
    ckpt = _tiny_mf_checkpoint(tmp_path)
    with pytest.raises(ImportError_, match="--strong-model 'gpt-5' is not in"):
        import_mf(ckpt, tmp_path / "x", strong="gpt-5")
    (ckpt / "config.json").write_text(json.dumps({"dim": 16, "num_models": 64, "text_dim": 1536}))
    with pytest.raises(ImportError_, match=r"config.json: not an MFModel config \(missing num_classes, use_proj\)"):
        import_mf(ckpt, tmp_path / "x")
    cfg = {"dim": 32, "num_models": 64, "text_dim": 1536, "num_classes": 1, "use_proj": True}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ImportError_, match=r"model.safetensors: P.weight has shape \(64, 16\), config says \(64, 32\)"):
        import_mf(ckpt, tmp_path / "x")
    (ckpt / "config.json").write_text(json.dumps({**cfg, "dim": "big"}))
    with pytest.raises(ImportError_, match=r"config.json: dim must be a positive integer \(got 'big'\)"):
        import_mf(ckpt, tmp_path / "x")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    (ckpt / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ImportError_, match="model.safetensors: not a safetensors file"):
        import_mf(ckpt, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_bad_model_rows_and_flags_are_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A row of P that is -1 (it read P's last row), true (row 1), shared by two models, or all zeros
    (a numpy ValueError naming no file) is refused naming the file; --num-tiers 0 (an IndexError) and
    --calibration-limit 0 are usage errors; an --out that exists, or an embeddings endpoint that cannot be
    reached, is one line, not a traceback."""
    from safetensors.numpy import load_file, save_file

    from lmroute.export.cli import main as export_main

    ckpt = _tiny_mf_checkpoint(tmp_path)
    for ids, said in (
        ({"gpt-4-1106-preview": 0, "mixtral-8x7b-instruct-v0.1": -1}, "rows integers >= 0"),
        ({"gpt-4-1106-preview": 0, "mixtral-8x7b-instruct-v0.1": True}, "rows integers >= 0"),
        ({"gpt-4-1106-preview": 0, "mixtral-8x7b-instruct-v0.1": 0}, "two models share a row of P"),
    ):
        (tmp_path / "ids.json").write_text(json.dumps(ids))
        with pytest.raises(ImportError_, match=said):
            import_mf(ckpt, tmp_path / "x", model_ids=tmp_path / "ids.json")
    weights = load_file(str(ckpt / "model.safetensors"))
    weights["P.weight"][63] = 0.0
    save_file(weights, str(ckpt / "model.safetensors"))
    (tmp_path / "ids.json").write_text(json.dumps({"gpt-4-1106-preview": 0, "mixtral-8x7b-instruct-v0.1": 1, "z": 63}))
    with pytest.raises(ImportError_, match=r"model.safetensors: P's rows of z are all zeros"):
        import_mf(ckpt, tmp_path / "x", model_ids=tmp_path / "ids.json")
    base = ["import-routellm", "--router", "sw_ranking", "--battles", "b", "--embeddings", "e", "--out", "o"]
    for flag in ("--num-tiers", "--calibration-limit"):
        with pytest.raises(SystemExit) as exited:
            export_main([*base, flag, "0"])
        assert exited.value.code == 2 and f"argument {flag}: must be >= 1 (got 0)" in capsys.readouterr().err
    (tmp_path / "ids.json").write_text(json.dumps({"gpt-4-1106-preview": 0, "mixtral-8x7b-instruct-v0.1": 1}))
    (tmp_path / "taken").mkdir()
    argv = ["import-routellm", "--router", "mf", "--checkpoint", str(ckpt), "--model-ids", str(tmp_path / "ids.json")]
    assert export_main([*argv, "--out", str(tmp_path / "taken")]) == 1
    assert capsys.readouterr().err.startswith(f"import-routellm: bundle directory {tmp_path / 'taken'} already exists")
    endpoint = ["--embeddings-base-url", "http://127.0.0.1:9/v1"]  # the discard port: nothing answers
    assert export_main([*argv, "--out", str(tmp_path / "y"), *endpoint]) == 1
    err = capsys.readouterr().err
    assert err.startswith("import-routellm: encoder/remote.json: the embeddings endpoint failed the probe")
    assert "Traceback" not in err and not (tmp_path / "y").exists()


def test_bad_battle_tables_are_refused_naming_file_and_line(tmp_path: Path) -> None:
    battles, embeddings, _ = _battles(tmp_path, n=60)
    lines = battles.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines[:3], json.dumps({"prompt": "[]", "model_a": "x"}), *lines[3:]]) + "\n")
    with pytest.raises(ImportError_, match=r"bad.jsonl:4: a battle needs the columns prompt, model_a"):
        import_sw([bad], [embeddings], tmp_path / "x")
    with pytest.raises(ImportError_, match=r"53 battles kept \(first turn >= 16 characters\) but 106 embeddings"):
        import_sw([battles], [embeddings, embeddings], tmp_path / "x")
    with pytest.raises(ImportError_, match="--strong-model 'gpt-5' is in no battle"):
        import_sw([battles], [embeddings], tmp_path / "x", strong="gpt-5")
    with pytest.raises(ImportError_, match=r"missing.jsonl: cannot be read \(No such file or directory\)"):
        import_sw([tmp_path / "missing.jsonl"], [embeddings], tmp_path / "x")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(battles.read_bytes() + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(ImportError_, match=r"latin.jsonl: not UTF-8 text \(invalid continuation byte at byte \d+\)"):
        import_sw([latin], [embeddings], tmp_path / "x")
    ragged = tmp_path / "ragged.jsonl"
    rows = embeddings.read_text().splitlines()
    ragged.write_text("\n".join([*rows[:2], json.dumps({"embeddings": [0.5, 0.5]}), *rows[2:]]) + "\n")
    with pytest.raises(ImportError_, match=r"ragged.jsonl:3: 'embeddings' must be a list of 1536 numbers"):
        import_sw([battles], [ragged], tmp_path / "x")
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImportError_, match=r"pickled.npy: not a table of numbers \(Object arrays cannot be loaded"):
        import_sw([battles], [pickled], tmp_path / "x")
    assert not (tmp_path / "x").exists()
