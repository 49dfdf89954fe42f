"""Student distillation (stage 4) in one process: layer maps, the loss terms and initialisation from the teacher
(the real 2-rank ZeRO-3 runs are in tests/integration/test_distill.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from videobert_ds.model.specials import Specials
from videobert_ds.model.videobert import VideoBertForPreTraining, videobert_config
from videobert_ds.objectives.distillation import (
    DistillConfig,
    additive_mask,
    attention_kl,
    binary_soft_kl,
    distillation_losses,
    init_from_teacher,
    init_layer_sources,
    resolve_layer_map,
    soft_kl,
    uniform_layer_map,
)
from videobert_ds.objectives.layout import ClipSample, ObjectiveConfig, build_batch, to_device

SP = Specials(cls=2, sep=3, mask=4, pad=0, video_sep=5, text_vocab_size=40, visual_vocab_size=16, first_regular_text=6)


def tiny_model(hidden: int, layers: int, heads: int, seed: int = 0, attn: str | None = None) -> VideoBertForPreTraining:
    torch.manual_seed(seed)
    cfg = videobert_config(
        text_vocab_size=40,
        visual_vocab_size=16,
        visual_feature_dim=8,
        special_token_ids={"cls": 2, "sep": 3, "mask": 4, "pad": 0, "video_sep": 5},
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    extra = {"attn_implementation": attn} if attn else {}
    return VideoBertForPreTraining._from_config(cfg, **extra).eval()


def tiny_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    samples = [
        ClipSample(list(range(10, 10 + n)), num_clips=c, video_id=f"v{i % 3}", segment=i)
        for i, (n, c) in enumerate([(6, 4), (4, 3), (0, 4), (5, 0), (7, 4), (3, 2)])
    ]
    cfg = ObjectiveConfig(mask_prob=0.3, caption_ratio=0.3)
    host = build_batch(samples, 4, SP, cfg)
    return to_device(host, torch.randint(0, 16, (6, 4)), torch.randn(6, 4, 8), SP, torch.device("cpu"))


def encode(model: VideoBertForPreTraining, inputs: dict, attentions: bool = False):
    mask = additive_mask(inputs["attention_mask"], torch.float32) if attentions else inputs["attention_mask"]
    return model.bert(
        input_ids=inputs["input_ids"],
        token_type_ids=inputs["token_type_ids"],
        attention_mask=mask,
        output_hidden_states=True,
        output_attentions=attentions,
    )


# ---------------------------------------------------------------------------------------------
# In-process: layer maps, loss terms, initialisation
# ---------------------------------------------------------------------------------------------


def test_layer_maps():
    assert uniform_layer_map(2, 4) == [0, 2, 4]
    assert uniform_layer_map(6, 24) == [0, 4, 8, 12, 16, 20, 24]
    assert uniform_layer_map(3, 4) == [0, 1, 2, 4]
    assert init_layer_sources(6, 12) == [0, 2, 4, 6, 8, 10]  # DistilBERT: every other layer
    assert init_layer_sources(2, 4) == [0, 2]
    assert resolve_layer_map([], 2, 4) == [0, 2, 4]
    assert resolve_layer_map([-1, 1, 4], 2, 4) == [-1, 1, 4]
    for bad in ([0, 2], [0, 2, 5], [-1, -1, -1]):
        with pytest.raises(ValueError):
            resolve_layer_map(bad, 2, 4)
    with pytest.raises(ValueError):
        init_layer_sources(5, 4)


def test_soft_kl_matches_definition_and_is_zero_on_agreement():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    temp = 3.0
    p_t = F.softmax(t / temp, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
    torch.testing.assert_close(soft_kl(s, t, temp), expected)
    assert soft_kl(t, t, temp).abs() < 1e-6
    # No selected rows: 0, finite, and still differentiable (the head stays in the graph on every rank).
    empty = torch.zeros(0, 7, requires_grad=True)
    loss = soft_kl(empty, torch.zeros(0, 7), temp)
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None
    # The binary alignment logit as a 2-class distribution: KL of two Bernoullis.
    a, b = torch.tensor([0.3, -1.2]), torch.tensor([1.5, 0.4])
    q, p = torch.sigmoid(a), torch.sigmoid(b)
    bern = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean()
    torch.testing.assert_close(binary_soft_kl(a, b, 1.0), bern)


def test_eager_attention_needs_an_additive_mask():
    """Eager attention adds the mask to the scores: a boolean mask would add 1/0 and leak attention to
    masked keys; the additive mask reproduces SDPA's result with the boolean one."""
    eager = tiny_model(32, 2, 2, attn="eager")
    sdpa = tiny_model(32, 2, 2)
    sdpa.load_state_dict(eager.state_dict())
    inputs = tiny_inputs()
    ref = encode(sdpa, inputs).last_hidden_state
    out = encode(eager, inputs, attentions=True)
    torch.testing.assert_close(out.last_hidden_state, ref, atol=1e-5, rtol=1e-5)
    allowed = inputs["attention_mask"][:, 0]  # (B, L, L)
    probs = out.attentions[0]  # (B, heads, L, L)
    assert probs.masked_select(~allowed[:, None].expand_as(probs)).abs().max() == 0
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_distillation_terms_train_student_and_projection_only():
    teacher = tiny_model(32, 4, 4, seed=1, attn="eager").requires_grad_(False)
    student = tiny_model(16, 2, 2, seed=2, attn="eager")
    projection = torch.nn.Linear(16, 32)
    inputs = tiny_inputs()
    cfg = DistillConfig(lambda_attention=1.0)
    layer_map = resolve_layer_map(cfg.layer_map, 2, 4)
    with torch.no_grad():
        t_out = encode(teacher, inputs, attentions=True)
    s_out = encode(student, inputs, attentions=True)
    out = distillation_losses(student, teacher, s_out, t_out, inputs, cfg, projection, layer_map)
    for key in ("kd_mlm", "kd_mvm", "kd_caption", "kd_align", "hidden", "attention", "loss_kd"):
        assert torch.isfinite(out[key]) and out[key] >= 0, key
    assert out["kd_mlm"] > 0 and out["hidden"] > 0 and out["attention"] > 0
    out["loss_kd"].backward()
    assert projection.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())

    # A student identical to its teacher (and an identity projection) has nothing left to learn.
    twin = copy.deepcopy(teacher).requires_grad_(True)
    ident = torch.nn.Linear(32, 32)
    with torch.no_grad():
        ident.weight.copy_(torch.eye(32))
        ident.bias.zero_()
    same = distillation_losses(
        twin, teacher, encode(twin, inputs, True), t_out, inputs, cfg, ident, resolve_layer_map([], 4, 4)
    )
    assert same["loss_kd"].abs() < 1e-5


def test_attention_kl_with_different_head_counts():
    p = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    q = torch.softmax(torch.randn(2, 2, 5, 5), -1)
    valid = torch.ones(2, 5, dtype=torch.bool)
    assert attention_kl((p,), (p,), [0, 1], valid).abs() < 1e-6
    loss = attention_kl((q,), (p,), [0, 1], valid)  # head-averaged distributions compared
    assert torch.isfinite(loss) and loss > 0


def test_init_from_teacher_copies_every_other_layer():
    teacher = tiny_model(32, 4, 4, seed=1)
    student = tiny_model(32, 2, 4, seed=2)
    assert init_from_teacher(student, teacher) == [0, 2]
    for j, k in ((0, 0), (1, 2)):
        for (name, ps), (_, pt) in zip(
            student.bert.encoder.layer[j].named_parameters(), teacher.bert.encoder.layer[k].named_parameters()
        ):
            torch.testing.assert_close(ps, pt, msg=name)
    torch.testing.assert_close(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    )
    torch.testing.assert_close(student.alignment.weight, teacher.alignment.weight)
