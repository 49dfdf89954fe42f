"""No host sync inside a training step: every stage's step code, run on the META device.

A meta tensor has a shape but no data, so whatever reads a device value on the host raises there: `.item()`,
`int()` / `bool()` / `float()` of a tensor, `.tolist()`, `nonzero`, one-argument `torch.where`, boolean-mask
indexing `x[mask]` (its result's shape depends on the data). On a GPU each of these stalls the host until the
stream drains, and under ZeRO-3 the parameter prefetch waits with it. So a step that runs start to end on meta
(forward and backward) is a step without host syncs: the device part of building the batch (frames -> visual
words through the frozen clip encoder and the vocabulary tree, the words placed by index, clip features,
attention masks), then each stage's losses.

What does not run here: the host side of batch building (tokenizing, masking draws), which runs on CPU tensors
by design, and the all_gather of MIL-NCE negatives (world size 1: `gather_across_ranks` returns its inputs; a
collective is not a host sync anyway).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from tests.helpers.tiny import SP, tiny_config
from videobert_ds.model.finetuning import VideoBertForFinetuning
from videobert_ds.model.videobert import VideoBertForPreTraining
from videobert_ds.objectives.autoencoder import AutoencoderObjective, EncoderObjectiveConfig, split_into_clips
from videobert_ds.objectives.distillation import DistillationObjective, DistillConfig
from videobert_ds.objectives.finetuning import FinetuneObjective, TaskConfig, TaskSample, build_task_batch, task_tensors
from videobert_ds.objectives.layout import ClipSample, ObjectiveConfig, build_batch, to_device
from videobert_ds.objectives.pretraining import PretrainingObjective
from videobert_ds.visual.autoencoder import (
    AutoencoderClipEncoder,
    ClipAutoencoder,
    ClipAutoencoderConfig,
    normalize_frames,
)
from videobert_ds.visual.narration import hash_words
from videobert_ds.visual.tokenizer import VisualTokenizer
from videobert_ds.visual.vocab import VisualVocabulary

META = torch.device("meta")


def meta(x: Any) -> Any:
    """Tensors (in dicts and lists) moved to the meta device; everything else as is."""
    if isinstance(x, torch.Tensor):
        return x.to(META)
    if isinstance(x, dict):
        return {k: meta(v) for k, v in x.items()}
    return x


def on_meta(build, *args: Any, **kwargs: Any) -> torch.nn.Module:
    with torch.device(META):
        return build(*args, **kwargs)


def step(module: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One training micro-step's device work: forward and backward."""
    module.train()
    out = module(inputs)
    out["loss"].backward()
    assert out["loss"].device.type == "meta"
    return out


def pretraining_batch(cfg: ObjectiveConfig, features: bool = True) -> dict[str, Any]:
    samples = [
        ClipSample(list(range(10, 10 + n)), num_clips=c, video_id=f"v{i % 3}", segment=i)
        for i, (n, c) in enumerate([(6, 4), (4, 3), (0, 4), (5, 0), (7, 4), (3, 2)])
    ]
    host = build_batch(samples, 4, SP, cfg, generator=torch.Generator().manual_seed(0))
    # The visual words and clip features come from the device (the frozen visual tokenizer).
    ids = torch.randint(0, 16, (6, 4), device=META)
    feats = torch.randn(6, 4, 8, device=META) if features else None
    stats = (torch.zeros(8, device=META), torch.ones(8, device=META))
    inputs = to_device(host, ids, feats, SP, META, stats if features else None)
    inputs["skipped_samples"] = torch.zeros((), device=META)
    return inputs


def test_meta_device_catches_a_host_sync():
    """The audit's premise: each way of reading a device value on the host raises on meta."""
    x = torch.ones(4, 3, device=META)
    mask = torch.ones(4, dtype=torch.bool, device=META)
    for read in (
        lambda: x.sum().item(),
        lambda: int(x.sum()),
        lambda: bool(mask.any()),
        lambda: x[mask],
        lambda: mask.nonzero(),
        lambda: x.tolist(),
    ):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


def test_video_encoder_step_has_no_host_sync():
    """Stage 1: autoencoder reconstruction (with the shift augmentation and the reconstruct_every subset) plus
    the clip-narration MIL-NCE (world size 1)."""
    objective = EncoderObjectiveConfig(lambda_narration=1.0, shift_augment=2, reconstruct_every=2)
    config = ClipAutoencoderConfig(frames_per_clip=4, image_size=16, channels=[4, 8], feature_dim=8, embedding_dim=8)
    module = on_meta(AutoencoderObjective, on_meta(ClipAutoencoder, config), 0.5, objective)
    frames = torch.zeros(3, 8, 16, 16, 3, dtype=torch.uint8, device=META)
    clips, valid = split_into_clips(frames, torch.tensor([8, 5, 8], device=META), 4)
    ids, offsets, has_text = hash_words(["a red square", "", "a blue circle moves"], objective.narration_buckets)
    inputs = {"clips": normalize_frames(clips), "valid": valid}
    inputs.update(meta({"text_ids": ids, "text_offsets": offsets, "has_text": has_text}))
    out = step(module, inputs)
    assert "l_nce" in out


def test_teacher_step_has_no_host_sync():
    """Stage 3: batch resolution on the device, then MLM, masked visual words, alignment, captioning and
    clip-feature regression."""
    cfg = ObjectiveConfig(mask_prob=0.3, caption_ratio=0.3)
    module = on_meta(PretrainingObjective, on_meta(VideoBertForPreTraining, tiny_config()), cfg)
    out = step(module, pretraining_batch(cfg))
    assert {"mlm", "mvm", "align", "caption", "video"} <= out.keys()


@pytest.mark.parametrize("attention", [0.0, 1.0])
def test_student_step_has_no_host_sync(attention: float):
    """Stage 4: the frozen teacher's forward, the student's ground-truth losses and every distillation term
    (soft logits, alignment, hidden states per mapped layer, attention per mapped layer)."""
    cfg = ObjectiveConfig(mask_prob=0.3, caption_ratio=0.3)
    attn = {"attn_implementation": "eager"} if attention else {}
    teacher = on_meta(VideoBertForPreTraining._from_config, tiny_config(), **attn)
    small = tiny_config()
    small.hidden_size, small.num_hidden_layers, small.intermediate_size = 16, 1, 32
    student = on_meta(VideoBertForPreTraining._from_config, small, **attn)
    module = on_meta(DistillationObjective, student, teacher, cfg, DistillConfig(lambda_attention=attention))
    out = step(module, pretraining_batch(cfg))
    assert {"kd_mlm", "kd_mvm", "kd_caption", "kd_align", "hidden"} <= out.keys()


class WordTokenizer:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.ids.setdefault(w, 10 + len(self.ids)) for w in text.split()]}


def test_finetune_step_has_no_host_sync():
    """Stage 5: classification, captioning, video QA and retrieval with in-batch hard negatives."""
    labels = {"colour": {"red": 0, "blue": 1}}
    qa = {"question": "what colour", "choices": ["red", "dark blue"], "answer": 1}
    samples = [
        TaskSample([20, 21], 2, "v0", {"colour": "red"}, qa),
        TaskSample([22], 3, "v1", {"colour": "blue"}, None),
        TaskSample([23, 24, 25], 1, "v2", {}, None),
    ]
    tb = build_task_batch(samples, 3, SP, TaskConfig(), labels, WordTokenizer())
    config = tiny_config()
    config.finetune_label_sets = {"colour": ["red", "blue"]}
    module = on_meta(FinetuneObjective, on_meta(VideoBertForFinetuning, config), TaskConfig())
    inputs: dict[str, Any] = to_device(tb.host, torch.randint(0, 16, (3, 3), device=META), None, SP, META)
    inputs.update(task=meta(task_tensors(tb, META)), num_main=tb.num_main, num_candidates=tb.num_candidates)
    out = step(module, inputs)
    assert {"classification", "caption", "qa", "retrieval"} <= out.keys()


@pytest.fixture(scope="module")
def visual_vocab():
    """A tiny clip encoder and a 4^3-word vocabulary fit on random features of its width."""
    config = ClipAutoencoderConfig(frames_per_clip=4, image_size=16, channels=[4, 8], feature_dim=8)
    torch.manual_seed(0)
    encoder = AutoencoderClipEncoder(ClipAutoencoder(config))
    vocab = VisualVocabulary.fit(torch.randn(512, 8), encoder, depth=3, branching=4, seed=0, progress=False)
    return encoder, vocab


@pytest.mark.parametrize("method", ["exact", "descent"])
def test_visual_tokenizer_has_no_host_sync(visual_vocab, method: str):
    """Frames -> visual words inside the teacher's and the student's step (descent: the paper's large vocabularies)."""
    encoder, vocab = visual_vocab
    tokenizer = VisualTokenizer(copy.deepcopy(encoder), vocab, method=method, clips_per_batch=3).to(META)
    frames = torch.zeros(2, 8, 16, 16, 3, dtype=torch.uint8, device=META)
    ids, valid, feats = tokenizer(frames, torch.tensor([8, 5], device=META), return_features=True)
    assert ids.shape == (2, 2) and ids.device.type == "meta" and feats.shape == (2, 2, 8)


def test_sync_free_descent_gives_the_trees_words(visual_vocab):
    """The tokenizer's per-row descent assigns what KMeansTree.assign_descent (rows grouped by node) assigns."""
    encoder, vocab = visual_vocab
    tokenizer = VisualTokenizer(encoder, vocab, method="descent")
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(1)) * 1.5
    assert torch.equal(tokenizer._descend(x), vocab.tree.assign_descent(x))
