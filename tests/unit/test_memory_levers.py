"""Memory levers of the transformer stages: activation (gradient) checkpointing gives the plain model's loss and
gradients, dropout included, while keeping fewer activations for the backward pass; torch.compile of the layers
leaves the parameter names alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from videobert_ds.model.videobert import VideoBertForPreTraining, apply_memory_levers, videobert_config

SPECIALS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "video_sep": 5}


def tiny_model(seed: int = 0) -> VideoBertForPreTraining:
    torch.manual_seed(seed)
    config = videobert_config(
        text_vocab_size=40,
        visual_vocab_size=24,
        visual_feature_dim=8,
        special_token_ids=SPECIALS,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.2,  # dropout on: the recompute must draw the same masks
        attention_probs_dropout_prob=0.2,
    )
    return VideoBertForPreTraining(config).train()


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 64, (4, 16), generator=g)
    types = torch.zeros_like(ids)
    types[:, 8:] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids)}


def loss_and_grads(model: VideoBertForPreTraining, inputs: dict[str, torch.Tensor], seed: int = 7):
    """One training forward + backward from a fixed RNG state; -> (loss, grads by name, bytes saved for backward)."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden, pooled = model(**inputs)
        logits = model.token_logits(hidden)
        loss = (
            F.cross_entropy(logits.flatten(0, 1), inputs["input_ids"].flatten())
            + model.alignment_logits(hidden, pooled, inputs["input_ids"], inputs["token_type_ids"]).pow(2).mean()
        )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, saved


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
