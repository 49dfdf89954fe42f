"""Memory levers of the transformer stages: activation (gradient) checkpointing gives the plain model's loss and
gradients, dropout included, while keeping fewer activations for the backward pass; torch.compile of the layers
leaves the parameter names alone."""

from __future__ import annotations

import torch

from videobert_ds.bench.memory import build, inputs, step, token_loss
from videobert_ds.model.videobert import VideoBertForPreTraining, apply_memory_levers


def tiny_model(seed: int = 0) -> VideoBertForPreTraining:
    return build(
        3,
        32,
        4,
        64,
        16,
        seed,
        text_vocab_size=40,
        visual_vocab_size=24,
        visual_feature_dim=8,
        max_position_embeddings=32,
        hidden_dropout_prob=0.2,  # dropout on: the recompute must draw the same masks
        attention_probs_dropout_prob=0.2,
    )


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    return inputs(4, 16, 64, seed)


def mlm_and_alignment(model: VideoBertForPreTraining, hidden, pooled, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """The bench's token loss plus the alignment head, so every parameter gets a gradient."""
    alignment = model.alignment_logits(hidden, pooled, x["input_ids"], x["token_type_ids"]).pow(2).mean()
    return token_loss(model, hidden, pooled, x) + alignment


def loss_and_grads(model: VideoBertForPreTraining, inputs: dict[str, torch.Tensor], seed: int = 7):
    """bench.memory's measured step (fixed RNG state, bytes saved for backward); -> (loss, grads by name, bytes)."""
    r = step(model, inputs, seed, loss_fn=mlm_and_alignment)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return torch.tensor(r["loss"]), grads, r["saved_bytes"]


def test_checkpointing_gives_the_same_loss_and_grads_with_dropout_and_saves_less():
    inputs = batch()
    plain = tiny_model()
    ckpt = tiny_model()
    ckpt.load_state_dict(plain.state_dict())
    apply_memory_levers(ckpt, gradient_checkpointing=True)
    assert all(layer.gradient_checkpointing for layer in ckpt.bert.encoder.layer)

    loss0, grads0, saved0 = loss_and_grads(plain, inputs)
    loss1, grads1, saved1 = loss_and_grads(ckpt, inputs)
    # dropout is really on (another seed gives another loss), and the recompute replays the same masks
    other, _, _ = loss_and_grads(plain, inputs, seed=8)
    assert not torch.allclose(loss0, other)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-6)
    assert grads1.keys() == grads0.keys() and len(grads0) > 20
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-6, msg=name)
    # it checkpoints: the layers keep their inputs only, so far fewer bytes are saved for the backward pass
    # (the recompute's own saves happen in backward, outside the hooks' forward context)
    assert saved1 < 0.5 * saved0, (saved1, saved0)


def test_checkpointing_off_in_eval_and_without_grad():
    model = tiny_model()
    apply_memory_levers(model, gradient_checkpointing=True)
    inputs = batch()
    model.eval()
    with torch.no_grad():
        a, _ = model(**inputs)
    plain = tiny_model().eval()
    with torch.no_grad():
        b, _ = plain(**inputs)
    torch.testing.assert_close(a, b)


def test_compile_keeps_parameter_names():
    model = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    apply_memory_levers(model, gradient_checkpointing=False, compile=True)
    assert [n for n, _ in model.named_parameters()] == names
    assert set(model.state_dict()) >= set(names)
