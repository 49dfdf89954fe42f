"""The host-side pretraining batch: vectorised BERT masking (its distribution and determinism), the index tensors
the losses gather with, and the masked-token head computing only the vocabulary rows a loss reads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.helpers.tiny import SP, tiny_model
from videobert_ds.objectives.layout import (
    IGNORE,
    REPLACE_KEEP,
    REPLACE_MASK,
    SEG_PAD,
    ClipSample,
    ObjectiveConfig,
    build_batch,
    selections,
    to_device,
)
from videobert_ds.objectives.pretraining import _masked_ce, losses_from_outputs

PLAIN = dict(concat_neighbours_prob=0.0, max_subsample_rate=1, align_negative_prob=0.0)


def samples(n: int, text: int = 20, clips: int = 8) -> list[ClipSample]:
    return [ClipSample(list(range(10, 10 + text)), clips, f"v{i}", 0) for i in range(n)]


def test_masking_keeps_berts_distribution():
    """Text and visual words each masked with mask_prob; of the masked, 80% [MASK], 10% random, 10% kept."""
    cfg = ObjectiveConfig(joint_ratio=1.0, text_only_ratio=0.0, video_only_ratio=0.0, caption_ratio=0.0, **PLAIN)
    host = build_batch(samples(400), 8, SP, cfg, generator=torch.Generator().manual_seed(0))
    original = torch.arange(10, 30)
    text = host.input_ids[:, 1:21]
    labelled = host.mlm_labels[:, 1:21] != IGNORE
    assert (host.mlm_labels[:, 1:21][labelled] == original.expand_as(text)[labelled]).all()  # label = the true token
    assert (host.mlm_labels[:, 21:] == IGNORE).all() and (host.mlm_labels[:, 0] == IGNORE).all()
    # Each position with probability 0.15, plus the one forced pick of a row that drew none: (1 - p)^n / n.
    assert abs(labelled.float().mean().item() - (0.15 + 0.85**20 / 20)) < 0.01
    masked = text[labelled]
    kept = masked == original.expand_as(text)[labelled]
    as_mask = masked == SP.mask
    random = ~kept & ~as_mask
    assert abs(as_mask.float().mean().item() - 0.8) < 0.03
    assert abs(random.float().mean().item() - 0.1) < 0.02  # (a random draw can equal the true token: ~1/34)
    assert ((masked[random] >= SP.first_regular_text) & (masked[random] < SP.text_vocab_size)).all()
    assert (text[~labelled] == original.expand_as(text)[~labelled]).all()  # unmasked text untouched
    # Visual words: only placed clips, same rates; the replacement codes on the masked ones only.
    vis = host.visual_masked
    assert (host.video_src[vis] >= 0).all()
    assert abs(vis[host.video_src >= 0].float().mean().item() - (0.15 + 0.85**8 / 8)) < 0.02
    replace = host.visual_replace[vis]
    assert abs((replace == REPLACE_MASK).float().mean().item() - 0.8) < 0.04
    assert abs((replace == REPLACE_KEEP).float().mean().item() - 0.1) < 0.03
    assert ((replace >= 0) & (replace < SP.visual_vocab_size) | (replace < 0)).all()
    assert (host.visual_replace[~vis] == REPLACE_KEEP).all()


def test_sequence_kinds_captions_and_negatives_keep_their_ratios():
    """The per-sample draws (one vectorised draw per sample): kinds 60/20/20, captioning on 25% of joint rows,
    alignment negatives on 50% of the remaining joint rows, sub-sampling rates uniform in 1..5."""
    cfg = ObjectiveConfig(concat_neighbours_prob=0.0)
    host = build_batch(samples(2000, text=4, clips=10), 10, SP, cfg, generator=torch.Generator().manual_seed(3))
    has_text = host.segments[:, 1] == 0
    has_video = (host.video_src >= 0).any(1)
    joint = has_text & has_video
    for share, expected in ((joint, 0.6), (has_text & ~has_video, 0.2), (~has_text & has_video, 0.2)):
        assert abs(share.float().mean().item() - expected) < 0.03
    assert abs(host.caption_mode[joint].float().mean().item() - 0.25) < 0.03
    aligned = host.align_labels[joint & ~host.caption_mode]
    assert abs((aligned == 0).float().mean().item() - 0.5) < 0.04 and ((aligned == 0) | (aligned == 1)).all()
    words = (host.video_src >= 0).sum(1)[~has_text & has_video]  # 10 clips at rate r: ceil(10 / r) words
    counts = torch.bincount(words, minlength=11)
    for rate in range(1, 6):
        assert abs(counts[-(-10 // rate)].item() / len(words) - 0.2) < 0.06


def test_every_row_gets_a_prediction_and_captions_none():
    """A row with text (or clips) but no draw under mask_prob gets one masked position; captioning rows none."""
    cfg = ObjectiveConfig(mask_prob=0.01, caption_ratio=0.5, **PLAIN)
    host = build_batch(samples(64, text=3, clips=2), 2, SP, cfg, generator=torch.Generator().manual_seed(1))
    open_rows = ~host.caption_mode
    has_text = (host.input_ids[:, 1] != SP.video_sep) & (host.segments[:, 1] == 0)
    assert ((host.mlm_labels != IGNORE).sum(1)[open_rows & has_text] >= 1).all()
    has_video = (host.video_src >= 0).any(1)
    assert (host.visual_masked.sum(1)[open_rows & has_video] >= 1).all()
    assert not (host.mlm_labels[~open_rows] != IGNORE).any() and not host.visual_masked[~open_rows].any()
    assert open_rows.any() and (~open_rows).any()


def test_the_generator_decides_every_draw():
    """Same generator seed, same batch, whatever torch's global RNG did in between; another seed, another batch.
    (The trainer's prefetch builds batches in a thread from a generator per data position.)"""
    cfg = ObjectiveConfig(mask_prob=0.3)
    batch = samples(16, text=6, clips=4)

    def build(seed: int):
        torch.rand(7)  # global RNG traffic must not matter
        h = build_batch(batch, 4, SP, cfg, generator=torch.Generator().manual_seed(seed))
        return [h.input_ids, h.mlm_labels, h.visual_masked, h.visual_replace, h.video_src, h.align_labels]

    for a, b in zip(build(3), build(3)):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(build(3), build(4)))


def test_selections_are_the_masks_positions():
    cfg = ObjectiveConfig(mask_prob=0.3, caption_ratio=0.3)
    host = build_batch(samples(12, text=5, clips=4), 4, SP, cfg, generator=torch.Generator().manual_seed(2))
    sel = selections(host)
    flat = torch.arange(host.input_ids.numel())
    assert torch.equal(sel["mlm_index"], flat[host.mlm_labels.reshape(-1) != IGNORE])
    assert torch.equal(sel["mvm_index"], flat[host.visual_masked.reshape(-1)])
    assert torch.equal(sel["caption_index"], flat[host.caption_labels.reshape(-1) != IGNORE])
    assert torch.equal(sel["valid_index"], flat[host.segments.reshape(-1) != SEG_PAD])
    assert torch.equal(sel["align_index"], torch.arange(len(host.align_labels))[host.align_labels >= 0])
    # valid_index = the positions the device sees as non-padding once the visual words are placed
    resolved = to_device(host, torch.randint(0, 16, (12, 4)), None, SP, torch.device("cpu"))["input_ids"]
    assert torch.equal(sel["valid_index"], flat[resolved.reshape(-1) != SP.pad])


def test_head_computes_only_the_slice_and_matches_full_then_slice():
    """token_logits(h, lo, hi) equals the full joint-vocabulary logits sliced (values and gradients), and the
    pretraining losses (index gathers, sliced head) equal the former boolean-mask, full-then-slice ones."""
    model = tiny_model()
    h = torch.randn(7, 32)
    full = model.token_logits(h)
    assert full.shape == (7, SP.text_vocab_size + SP.visual_vocab_size)
    for lo, hi in ((0, SP.text_vocab_size), (SP.text_vocab_size, SP.text_vocab_size + SP.visual_vocab_size)):
        torch.testing.assert_close(model.token_logits(h, lo, hi), full[:, lo:hi], rtol=0, atol=0)
    # The decoder's matmul has hi - lo output rows: the other rows are never computed.
    calls = []
    decoder = model.cls.predictions.decoder
    hook = decoder.register_forward_hook(lambda m, args, out: calls.append(out.shape[-1]))
    model.token_logits(h, 0, SP.text_vocab_size)
    hook.remove()
    assert calls == [SP.text_vocab_size]

    cfg = ObjectiveConfig(mask_prob=0.3, caption_ratio=0.5, joint_ratio=1.0, text_only_ratio=0.0, video_only_ratio=0.0)
    host = build_batch(samples(6, text=6, clips=4), 4, SP, cfg, generator=torch.Generator().manual_seed(5))
    inputs = to_device(host, torch.randint(0, 16, (6, 4)), torch.randn(6, 4, 8), SP, torch.device("cpu"))
    hidden, pooled = model(inputs["input_ids"], inputs["token_type_ids"], inputs["attention_mask"])
    new = losses_from_outputs(model, hidden, pooled, inputs, cfg)

    def reference(labels: torch.Tensor, lo: int, hi: int) -> torch.Tensor:  # the former _masked_ce
        sel = labels != IGNORE
        logits = model.cls(hidden[sel])[:, lo:hi]
        return F.cross_entropy(logits, labels[sel] - lo, reduction="sum") / sel.sum().clamp_min(1)

    tv, v = SP.text_vocab_size, SP.text_vocab_size + SP.visual_vocab_size
    mvm = torch.where(inputs["mvm_labels"] != IGNORE, inputs["mvm_labels"] + tv, inputs["mvm_labels"])
    params = [model.cls.predictions.transform.dense.weight, model.cls.predictions.decoder.weight]
    for name, labels, index, lo, hi in (
        ("mlm", inputs["mlm_labels"], inputs["mlm_index"], 0, tv),
        ("mvm", mvm, inputs["mvm_index"], tv, v),
        ("caption", inputs["caption_labels"], inputs["caption_index"], 0, tv),
    ):
        assert index.numel() > 0
        ref = reference(labels, lo, hi)
        torch.testing.assert_close(new[name], ref.detach())
        loss, _ = _masked_ce(model.token_logits, hidden, labels, index, lo, hi)
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        for g_new, g_ref in zip(grads, torch.autograd.grad(ref, params, retain_graph=True)):
            torch.testing.assert_close(g_new, g_ref)
