"""Dense all-action InfoNCE with recency weighting, sampling-bias correction and false-negative masking.

For user b, every valid history position i gives a user embedding u_bi and every valid target
position j an item embedding v_bj. Each (u_bi, v_bj) is a positive; the negatives of that pair
are all valid targets of the *other* users in the batch, plus optional extra negatives shared
by the batch (uniformly sampled catalog items, "mixed negatives"). A user's other targets are
neither positive nor negative for the pair. With s = u.v / tau - log q (see below):

    l_bij = -log( exp(s_bij) / (exp(s_bij) + sum_negatives exp(s)) )
          = softplus(lse_neg_bi - s_bij)

Per user: L_b = sum_i w_bi * mean_j l_bij, with the paper's recency weights
w_bi ∝ log(alpha + i * (beta - alpha) / (n_b - 1)) over the user's n_b real history
positions (i = 0 oldest), normalised to sum to one. With n_b = 1 the single weight is 1.
The batch loss is the mean of L_b over users.

Two corrections from the two-tower literature, both optional (they need the items' catalog ids;
``learn_features.pch.negatives`` builds them, with the sampling they correct for):

- **Sampling-bias correction** (Yi et al., RecSys 2019). In-batch negatives are other users'
  targets, so an item is drawn in proportion to its popularity, and an uncorrected softmax
  learns to push popular items down. Every logit of an item is lowered by log q, the log of
  its expected number of draws among the candidates (``log_q``), positives included, which
  turns the sampled softmax into an estimate of the full one.
- **False-negative masking.** When another user's target is one of b's own targets, it is not
  a negative for b; it is masked.

Data-parallel training splits a batch over processes. Each process passes its own users and
the targets of *every* user in the batch (gathered across processes, see
``training.collectives``), says where its users sit in that gathered batch (``first_user``)
and how many real users the batch has (``global_batch``), and gets its share of the batch
mean: sum of its L_b / global_batch. The shares add up to the one-process loss, with the same
negatives. With the defaults (one process) nothing changes: the plain mean over the batch.

``full_softmax_infonce`` is the same per-user loss with every item of a pool (the catalog's
items with a training event, or the whole catalog) as the candidates of every pair, instead of
the batch's sampled ones: the full softmax that makes SASRec a strong ID baseline (cross-entropy
over the catalog; Klenitskiy and Vasilev, RecSys 2023). Every candidate is present once, so no
log-q correction applies, and a user's other targets are never negatives.

``next_item_softmax`` is SASRec's own objective over the same pool: each history position is
scored against the one event right after it (cross-entropy over the pool, every position of a
user weighted alike), not against the window's targets after the cut. A sequence of n events
then gives n - 1 pairs in one forward pass, where the all-action windows need a window per
target; which objective a data set wants is chosen on validation users (``train.objective``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from learn_features.pch.negatives import Candidates


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
    candidates: Candidates | None = None,
) -> torch.Tensor:
    """users (B, N, D) and items (G, M, D), both L2-normalised; lengths count real positions.

    User b's own targets are items[first_user + b]. On one process G == B and first_user is 0;
    rows of ``items`` with target length 0 (padding of a gathered batch) are never negatives.

    Computed over the real positions only: the R real history positions against the K real
    targets, an (R, K) logit matrix instead of the padded (B N, G M) one (about a third of
    its size at the paper's N = 80, M = 40, where windows are rarely full).
    """
    c = candidates or Candidates()
    batch, n, _ = users.shape
    m = items.shape[1]
    device = users.device
    history_valid = torch.arange(n, device=device).unsqueeze(0) < history_lengths.unsqueeze(1)  # (B, N)
    target_valid = torch.arange(m, device=device).unsqueeze(0) < target_lengths.unsqueeze(1)  # (G, M)
    row_user = _rows_of(history_valid)  # (R,)
    col_owner = _rows_of(target_valid)  # (K,)
    logits = users[history_valid] @ items[target_valid].T / temperature  # (R, K)
    logits = logits.float()
    if c.target_log_q is not None:
        logits = logits - c.target_log_q[target_valid].float()

    own_row = first_user + torch.arange(batch, device=device)  # (B,): each user's row in the gathered batch
    negative = col_owner.unsqueeze(0) != own_row.unsqueeze(1)  # (B, K)
    own_ids, own_valid = None, target_valid[own_row]
    if c.target_ids is not None:
        own_ids = c.target_ids[own_row]
        negative = negative & ~_is_own_target(own_ids, own_valid, c.target_ids[target_valid])
    negative_logits = logits.masked_fill(~negative[row_user], float("-inf"))
    if c.extra is not None:
        extra = (users[history_valid] @ c.extra.T / temperature).float()  # (R, U)
        if c.extra_log_q is not None:
            extra = extra - c.extra_log_q.float()
        if c.extra_ids is not None and own_ids is not None:
            extra = extra.masked_fill(_is_own_target(own_ids, own_valid, c.extra_ids)[row_user], float("-inf"))
        negative_logits = torch.cat([negative_logits, extra], dim=1)
    lse_negative = negative_logits.logsumexp(dim=1)  # (R,)

    # Each user's own targets are a contiguous run of columns: gather them as an (R, M) block.
    first_col = torch.cumsum(target_lengths, 0) - target_lengths  # (G,)
    own_cols = (first_col[own_row].unsqueeze(1) + torch.arange(m, device=device)).clamp_max(max(logits.shape[1] - 1, 0))
    own = logits.gather(1, own_cols[row_user]) if logits.shape[1] else logits.new_zeros(len(row_user), m)  # (R, M): s_bij
    per_pair = F.softplus(lse_negative.unsqueeze(1) - own) * own_valid[row_user]  # -inf negatives (batch of 1) give 0
    return _batch_loss(per_pair, target_lengths[own_row], history_lengths, history_valid, row_user, alpha, beta, global_batch)


def _batch_loss(per_pair: torch.Tensor, target_counts: torch.Tensor, history_lengths: torch.Tensor, history_valid: torch.Tensor,
                row_user: torch.Tensor, alpha: float, beta: float, global_batch: int | None) -> torch.Tensor:
    """From the (R, M) pair losses of the real history positions (zero off the real targets) to
    the batch loss: mean over each user's targets, recency-weighted sum over their positions,
    mean over users (or this rank's share of it, with ``global_batch``). Both objectives end here."""
    batch, n = history_valid.shape
    per_position = per_pair.sum(1) / target_counts[row_user].clamp_min(1)  # (R,)
    weights = recency_weights(history_lengths, n, alpha, beta)[history_valid]
    per_user = torch.zeros(batch, device=per_pair.device).index_add(0, row_user, weights * per_position)
    return per_user.mean() if global_batch is None else per_user.sum() / global_batch


def _rows_of(mask: torch.Tensor) -> torch.Tensor:
    """The row of each True entry of a 2-D mask, in the row-major order boolean indexing uses:
    which user a selected history position, or a selected target, belongs to."""
    return mask.nonzero(as_tuple=True)[0]


def _is_own_target(own_ids: torch.Tensor, own_valid: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
    """(B, K): whether each candidate id is one of user b's own (valid) target ids."""
    hit = (own_ids[:, :, None] == candidate_ids[None, None, :]) & own_valid[:, :, None]
    return hit.any(dim=1) & (candidate_ids >= 0)[None, :]


def full_softmax_infonce(
    users: torch.Tensor,
    pool: torch.Tensor,
    history_lengths: torch.Tensor,
    target_positions: torch.Tensor,
    target_lengths: torch.Tensor,
    temperature: float,
    alpha: float = 10.0,
    beta: float = 10000.0,
    global_batch: int | None = None,
) -> torch.Tensor:
    """users (B, N, D) and the pool's item embeddings (P, D), both L2-normalised.

    ``target_positions`` (B, M) are each user's targets as rows of ``pool`` (padding past
    ``target_lengths``). For each real history position i and target j,
    l_bij = softplus(lse over the pool minus b's targets of s_bi - s_bij), weighted as
    ``dense_all_action_infonce`` weights it; the batch loss (or this rank's share of it,
    with ``global_batch``) as there.
    """
    batch, n, _ = users.shape
    m = target_positions.shape[1]
    device = users.device
    history_valid = torch.arange(n, device=device).unsqueeze(0) < history_lengths.unsqueeze(1)  # (B, N)
    target_valid = torch.arange(m, device=device).unsqueeze(0) < target_lengths.unsqueeze(1)  # (B, M)
    row_user = _rows_of(history_valid)  # (R,)
    logits = (users[history_valid] @ pool.T / temperature).float()  # (R, P)
    safe_targets = target_positions.clamp_min(0)
    own = torch.zeros(batch, pool.shape[0], dtype=torch.bool, device=device)
    own[_rows_of(target_valid), safe_targets[target_valid]] = True
    lse_negative = logits.masked_fill(own[row_user], float("-inf")).logsumexp(dim=1)  # (R,)
    positive = logits.gather(1, safe_targets[row_user])  # (R, M): s_bij
    per_pair = F.softplus(lse_negative.unsqueeze(1) - positive) * target_valid[row_user]
    return _batch_loss(per_pair, target_lengths, history_lengths, history_valid, row_user, alpha, beta, global_batch)


def next_item_softmax(
    users: torch.Tensor,
    pool: torch.Tensor,
    history_lengths: torch.Tensor,
    next_positions: torch.Tensor,
    temperature: float,
    global_batch: int | None = None,
) -> torch.Tensor:
    """users (B, N, D) and the pool's item embeddings (P, D), both L2-normalised.

    ``next_positions`` (B, N) is, for each history position, the pool row of the event right
    after it, or -1 where that event is no target (not a positive, or padding). Each real
    position with a target pays the cross-entropy of that row over the whole pool; a user's
    loss is the mean over their positions, the batch loss the mean over users (or this rank's
    share of it, with ``global_batch``), as in ``_batch_loss``.
    """
    batch, n, _ = users.shape
    device = users.device
    real = torch.arange(n, device=device).unsqueeze(0) < history_lengths.unsqueeze(1)
    valid = real & (next_positions[:, :n] >= 0)  # (B, N)
    row_user = _rows_of(valid)  # (R,)
    logits = (users[valid] @ pool.T / temperature).float()  # (R, P)
    per_position = F.cross_entropy(logits, next_positions[:, :n][valid], reduction="none")  # (R,)
    counts = valid.sum(1).clamp_min(1).float()
    per_user = torch.zeros(batch, device=device).index_add(0, row_user, per_position) / counts
    return per_user.mean() if global_batch is None else per_user.sum() / global_batch


def next_item_chance(pool_size: int, users: int, global_batch: int | None = None) -> torch.Tensor:
    """``next_item_softmax`` of a model that scores every pool item alike: log(P) per user with a
    target (every sampled sequence has one), as this rank's share with ``global_batch``."""
    return torch.tensor(math.log(pool_size) * (1.0 if global_batch is None else users / global_batch))
