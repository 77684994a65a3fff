"""Dense all-action InfoNCE with recency weighting.

For user b, every valid history position i gives a user embedding u_bi and every valid target
position j an item embedding v_bj. Each (u_bi, v_bj) is a positive; the negatives of that pair
are all valid targets of the *other* users in the batch (a user's other targets are neither
positive nor negative for the pair). With s = u.v / tau:

    l_bij = -log( exp(s_bij) / (exp(s_bij) + sum_{b' != b, j'} exp(s_bi,b'j')) )
          = softplus(lse_neg_bi - s_bij)

Per user: L_b = sum_i w_bi * mean_j l_bij, with the paper's recency weights
w_bi ∝ log(alpha + i * (beta - alpha) / (n_b - 1)) over the user's n_b real history
positions (i = 0 oldest), normalised to sum to one. With n_b = 1 the single weight is 1.
The batch loss is the mean of L_b over users.

Data-parallel training splits a batch over processes. Each process passes its own users and
the targets of *every* user in the batch (gathered across processes, see
``training.collectives``), says where its users sit in that gathered batch (``first_user``)
and how many real users the batch has (``global_batch``), and gets its share of the batch
mean: sum of its L_b / global_batch. The shares add up to the one-process loss, with the same
negatives. With the defaults (one process) nothing changes: the plain mean over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def recency_weights(lengths: torch.Tensor, max_len: int, alpha: float = 10.0, beta: float = 10000.0) -> torch.Tensor:
    """(B, max_len) weights, zero on padding, each row summing to one."""
    positions = torch.arange(max_len, device=lengths.device, dtype=torch.float32).unsqueeze(0)
    span = (lengths.float() - 1).clamp_min(1.0).unsqueeze(1)
    weights = torch.log(alpha + positions * (beta - alpha) / span)
    weights = weights * (positions < lengths.unsqueeze(1))
    return weights / weights.sum(dim=1, keepdim=True)


def dense_all_action_infonce(
    users: torch.Tensor,
    items: torch.Tensor,
    history_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    temperature: float,
    alpha: float = 10.0,
    beta: float = 10000.0,
    first_user: int = 0,
    global_batch: int | None = None,
) -> torch.Tensor:
    """users (B, N, D) and items (G, M, D), both L2-normalised; lengths count real positions.

    User b's own targets are items[first_user + b]. On one process G == B and first_user is 0;
    rows of ``items`` with target length 0 (padding of a gathered batch) are never negatives.
    """
    batch, n, dim = users.shape
    gathered, m = items.shape[:2]
    device = users.device
    target_valid = torch.arange(m, device=device).unsqueeze(0) < target_lengths.unsqueeze(1)  # (G, M)
    logits = users.reshape(batch * n, dim) @ items.reshape(gathered * m, dim).T / temperature  # (BN, GM)
    logits = logits.float().view(batch, n, gathered, m)

    own_row = first_user + torch.arange(batch, device=device)  # (B,): each user's row in the gathered batch
    other_user = own_row.unsqueeze(1) != torch.arange(gathered, device=device).unsqueeze(0)  # (B, G)
    negative = other_user[:, None, :, None] & target_valid[None, None, :, :]  # (B, 1, G, M)
    lse_negative = logits.masked_fill(~negative, float("-inf")).flatten(2).logsumexp(dim=-1)  # (B, N)

    own = logits[torch.arange(batch, device=device), :, own_row]  # (B, N, M): s_bij
    own_valid = target_valid[own_row]  # (B, M)
    per_pair = F.softplus(lse_negative.unsqueeze(-1) - own)  # -inf negatives (batch of 1) give 0
    per_position = (per_pair * own_valid.unsqueeze(1)).sum(-1) / target_lengths[own_row].clamp_min(1).unsqueeze(1)
    weights = recency_weights(history_lengths, n, alpha, beta)
    per_user = (weights * per_position).sum(dim=1)
    return per_user.mean() if global_batch is None else per_user.sum() / global_batch
