"""VideoBERT teacher pretraining (stage 3) on real 2-rank runs: every objective falls, the export, the ZeRO-3 build of
the default config, and a vocabulary that does not match the encoder."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.distributed import (
    assert_trained_in_bf16,
    launch_env,
    read_metrics,
    run_training,
    write_ds_config,
)
from videobert_ds.model.videobert import VideoBertForPreTraining

# ---------------------------------------------------------------------------------------------
# Real 2-rank runs
# ---------------------------------------------------------------------------------------------


@pytest.mark.multiproc
def test_every_objective_falls(tiny_teacher):
    metrics = read_metrics(tiny_teacher)
    steps = sorted(s for s in metrics if "train/loss" in metrics[s])

    def mean(term: str, window: list[int]) -> float:
        return sum(metrics[s][f"train/{term}"] for s in window) / len(window)

    for term in ("mlm", "mvm", "align", "caption", "video", "loss"):
        first, last = mean(term, steps[:2]), mean(term, steps[-2:])
        print(f"{term}: {first:.4f} -> {last:.4f}")
        assert last < first, term
    for key in (
        "val/mlm",
        "val/mvm",
        "val/align",
        "val/caption",
        "val/video",
        "val/acc_text",
        "val/acc_visual",
        "perf/tokens_per_s",
        "train/acc_text",
        "train/acc_visual",
    ):
        assert key in metrics[steps[-1]], key


@pytest.mark.multiproc
def test_export_reproduces_logits_and_loads_as_bert(tiny_teacher):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoTokenizer, BertModel

    assert_trained_in_bf16(tiny_teacher)  # the fp32 export of a bf16 run matches its fp32 master weights
    final = tiny_teacher / "final"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "visual_vocab.safetensors", "clip_encoder"):
        assert (final / name).exists(), name
    exported = VideoBertForPreTraining.from_pretrained(final).eval()
    reference = VideoBertForPreTraining(exported.config).eval()
    tag = (tiny_teacher / "checkpoints" / "latest").read_text()
    state = get_fp32_state_dict_from_zero_checkpoint(str(tiny_teacher / "checkpoints"), tag=tag)
    missing, _ = reference.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=False)
    assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}, missing  # tied
    reference.tie_weights()

    tok = AutoTokenizer.from_pretrained(final)
    text = tok("a red circle moves to the left", return_tensors="pt")["input_ids"]
    ids, types, mask = text, torch.zeros_like(text), torch.ones_like(text)
    with torch.no_grad():
        h_exp, _ = exported(ids, types, mask)
        h_ref, _ = reference(ids, types, mask)
        torch.testing.assert_close(exported.token_logits(h_exp), reference.token_logits(h_ref))
        bert = BertModel.from_pretrained(final).eval()
        torch.testing.assert_close(bert(input_ids=ids, token_type_ids=types).last_hidden_state, h_exp)
        # The alignment logit of a joint sequence `[CLS] text [>] video [SEP]` (its cosine half included).
        c = exported.config
        video = torch.tensor(
            [
                [
                    c.special_token_ids["video_sep"],
                    c.text_vocab_size + 1,
                    c.text_vocab_size + 7,
                    c.special_token_ids["sep"],
                ]
            ]
        )
        ids = torch.cat([text[:, :-1], video], 1)
        types = torch.cat([torch.zeros_like(text[:, :-1]), torch.ones_like(video)], 1)
        mask = torch.ones_like(ids)
        aligned = [m.alignment_logits(*m(ids, types, mask), ids, types) for m in (exported, reference)]
        torch.testing.assert_close(aligned[0], aligned[1])


@pytest.mark.multiproc
def test_default_config_is_the_teacher_and_builds_bert_large_partitioned(
    tiny_teacher, tiny_vocab, tiny_encoder, tmp_path
):
    from videobert_ds.train import parse_args

    assert parse_args([]).config == "teacher"
    ds = write_ds_config(tmp_path / "ds.json", micro_batch=2)
    run_dir = tmp_path / "large"
    proc = run_training(
        ds,
        "teacher",
        [
            "--build-only",
            f"run.dir={run_dir}",
            f"text.tokenizer={tiny_teacher / 'tokenizer'}",
            f"visual.vocab={tiny_vocab / 'vocab.safetensors'}",
            f"visual.encoder={tiny_encoder}",
        ],
        timeout=900,
        # A fixed mmap threshold: freed large tensors go back to the OS at once, so peak RSS
        # measures what was alive together, not glibc's heap fragmentation.
        env=launch_env(MALLOC_MMAP_THRESHOLD_="131072"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((run_dir / f"partition_rank{rank}.json").read_text())
        assert report["params_total"] > 300_000_000  # BERT-large-size encoder
        assert abs(report["params_local"] / report["params_total"] - 0.5) < 0.01
        whole_fp32 = 4 * report["params_total"]
        print(
            f"rank {rank}: peak RSS growth {report['peak_rss_growth_bytes'] / 2**30:.2f} GiB "
            f"vs {whole_fp32 / 2**30:.2f} GiB for the whole model"
        )
        assert report["peak_rss_growth_bytes"] < 0.75 * whole_fp32


def test_vocabulary_mismatch_is_a_one_line_error(
    tiny_teacher, tiny_vocab, tiny_encoder, pipeline_shards, tmp_path, capsys
):
    from videobert_ds.train import main
    from videobert_ds.visual.autoencoder import ClipAutoencoder, ClipAutoencoderConfig

    base = [
        "--deepspeed",
        str(REPO / "ds_configs" / "zero3_cpu.json"),
        "--config",
        "teacher_tiny",
        f"data.shards={pipeline_shards}",
        f"visual.vocab={tiny_vocab / 'vocab.safetensors'}",
    ]
    assert main([*base, f"visual.encoder={tiny_encoder}", "model.visual_vocab_size=99"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match the visual vocabulary's 64 words" in err

    other = tmp_path / "other_encoder"
    ClipAutoencoder(ClipAutoencoderConfig(feature_dim=32)).save_pretrained(other)
    capsys.readouterr()  # drop save_pretrained's progress bar
    assert main([*base, f"visual.encoder={other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fit on a different clip encoder" in err
