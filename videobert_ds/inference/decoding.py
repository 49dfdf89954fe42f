"""Caption decoding: greedy and beam search over a next-token function, with a fixed number of steps.

Both searches call `step_fn` exactly `max_len` times whatever the captions do (a finished caption keeps
being fed, its extra tokens ignored), so every rank makes the same sequence of forward calls — under
ZeRO-3 a rank that stopped early would leave the others waiting on its parameter gathers forever.

    step_fn(prefix, sources) -> log-probs (R, V)
        prefix   (R, s) int64: the caption tokens so far (s = 0 at the first step)
        sources  (R,) int64: which source (video) each row continues
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _masked(logp: torch.Tensor, banned: Sequence[int]) -> torch.Tensor:
    logp = logp.float()
    if banned:
        logp = logp.index_fill(1, torch.as_tensor(list(banned), device=logp.device), float("-inf"))
    return logp


def _strip(tokens: torch.Tensor, end_id: int) -> list[list[int]]:
    """Each row up to (not including) its first end token."""
    out = []
    for row in tokens.tolist():
        out.append(row[: row.index(end_id)] if end_id in row else row)
    return out


def greedy_decode(
    step_fn: StepFn,
    num_sources: int,
    *,
    max_len: int,
    end_id: int,
    banned: Sequence[int] = (),
    device: torch.device | str = "cpu",
) -> list[list[int]]:
    """The most likely next token at each of `max_len` steps; -> token ids per source, end token removed."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    sources = torch.arange(num_sources, device=device)
    prefix = torch.zeros((num_sources, 0), dtype=torch.long, device=device)
    done = torch.zeros(num_sources, dtype=torch.bool, device=device)
    for _ in range(max_len):
        token = _masked(step_fn(prefix, sources), banned).argmax(-1)
        token = torch.where(done, torch.full_like(token, end_id), token)
        done |= token == end_id
        prefix = torch.cat([prefix, token[:, None]], 1)
    return _strip(prefix.cpu(), end_id)


def beam_decode(
    step_fn: StepFn,
    num_sources: int,
    *,
    max_len: int,
    end_id: int,
    beam_size: int,
    banned: Sequence[int] = (),
    length_penalty: float = 1.0,
    device: torch.device | str = "cpu",
) -> list[list[int]]:
    """Beam search with `beam_size` beams per source for exactly `max_len` steps.

    A beam that emits `end_id` is finished: it continues only with `end_id` at no cost, so its score
    stays fixed while it competes with the open beams. The best beam at the end is chosen by
    log-probability / length ** length_penalty (length counts the end token; 0 = raw log-probability).
    """
    if max_len < 1 or beam_size < 1:
        raise ValueError(f"max_len and beam_size must be >= 1, got {max_len} and {beam_size}")
    b, k = num_sources, beam_size
    sources = torch.arange(b, device=device).repeat_interleave(k)
    prefix = torch.zeros((b * k, 0), dtype=torch.long, device=device)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis per source at the start
    done = torch.zeros((b, k), dtype=torch.bool, device=device)
    lengths = torch.zeros((b, k), device=device)
    for _ in range(max_len):
        logp = _masked(step_fn(prefix, sources), banned)
        vocab = logp.shape[-1]
        logp = logp.view(b, k, vocab)
        finished_row = torch.full((vocab,), float("-inf"), device=device)
        finished_row[end_id] = 0.0
        logp = torch.where(done[..., None], finished_row, logp)
        total = (scores[..., None] + logp).view(b, k * vocab)
        scores, flat = total.topk(k, dim=-1)
        parent, token = flat // vocab, flat % vocab
        rows = (torch.arange(b, device=device)[:, None] * k + parent).view(-1)
        lengths = lengths.gather(1, parent) + (~done.gather(1, parent)).float()
        done = done.gather(1, parent) | (token == end_id)
        prefix = torch.cat([prefix[rows], token.view(-1, 1)], 1)
    final = scores / lengths.clamp_min(1) ** length_penalty if length_penalty else scores
    best = final.argmax(-1)
    chosen = prefix.view(b, k, -1)[torch.arange(b, device=device), best]
    return _strip(chosen.cpu(), end_id)
