"""PCH twin towers (the paper's PCH/PAL module).

input projection -> learned positions -> causal transformer -> linear head -> L2 normalise.

The input is frozen content embeddings (LEARN) projected to ``d_model``, learned item-ID
embeddings (the ID baseline: same towers, ids instead of content), or both (the hybrid,
``HybridInput``): the content projection plus a learned ID residual for items with a training
event, dropped at random in training so that the content path alone stays a trained model, the
one every cold item is served from.

Item-tower variants:
1. the user tower's weights run over the target sequence (causal, chronological);
2. the same weights over each target item alone (a length-1 sequence);
3. the raw content embedding through one linear map to the output dimension.

SASRec's output layer (``tied_output``, ID towers only) replaces the item tower: an item's
vector is its row of the ID table the user tower reads, unnormalised, and a score is the raw
dot product, so an item's popularity can live in its norm. With SASRec's input dropout
(``input_dropout``) it lifted the Amazon Scientific ID baseline from 0.064 to 0.086 test
recall@10 (README, "Amazon benchmark"), where the cosine towers had stalled.

At inference an item embedding needs its text alone: variants 1 and 2 run the item as a
length-1 sequence, variant 3 applies its linear map. Cold-start items are covered either way
(for the ID baseline they all share the one "unknown item" embedding).

Variant 1 is served through a path its paper loss never trains: in training target j sees
targets 0..j at position j, at serving every item runs alone at position 0. So training can
also embed each target alone (``forward(..., alone=True)``) and the trainer adds the same loss
over those serving-path embeddings (``train.serving_loss_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from learn_features.errors import LearnFeaturesError
from learn_features.pch.id_init import ID_INITS

VARIANTS = (1, 2, 3)


def _positions_from_start(width: int, lengths: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Position i is the i-th oldest event of the row (RecBole's SASRec pads after the events)."""
    return torch.arange(width, device=device)


def _positions_from_end(width: int, lengths: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Position 0 is the row's latest real event, 1 the one before, and so on (the original
    SASRec pads before the events, which puts the latest one in the same slot in every row).
    Rows without ``lengths`` are taken as unpadded; padding slots get 0 (no real position
    attends to them under the causal mask)."""
    if lengths is None:
        lengths = torch.full((1,), width, device=device)
    return (lengths[:, None] - 1 - torch.arange(width, device=device)[None, :]).clamp_min(0)


#: ``PCHConfig.positions``: how a row's slots map to rows of the learned position table.
POSITIONS = {"from_start": _positions_from_start, "from_end": _positions_from_end}


@dataclass
class PCHConfig:
    """Defaults are the paper's BERT-base-sized towers; small data wants much smaller ones."""

    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    dropout: float = 0.1
    d_out: int = 64
    variant: int = 1
    temperature: float = 0.05
    max_len: int = 128  # longest history or target sequence
    # Hybrid towers only: the probability, per item occurrence in training, that its ID residual
    # is dropped. Cold items are served from content alone, so the towers must keep meeting
    # content alone in training; with no dropout the residual would carry the warm items and
    # the content path would be trained only as its base, never as a model on its own.
    id_dropout: float = 0.5
    # Hybrid towers only: how the ID residual starts (``learn_features.pch.id_init``): "zeros",
    # the pure content model, or "svd", each warm item's truncated-SVD factor of the training
    # events, so the towers start from the co-occurrences a small data set teaches them slowly.
    id_init: str = "zeros"
    # ID towers only: SASRec's tied output. Items are scored by the raw dot product of the
    # user's output with their row of the input ID table (no item tower, no L2 norm; the
    # variant is then moot), so d_out must equal d_model and temperature 1 is SASRec's own.
    tied_output: bool = False
    # Dropout on the towers' inputs (item plus position), before the first layer: SASRec's
    # regulariser of the ID table (``dropout`` acts inside the layers only). 0 keeps the
    # input exact, as the content towers were tuned.
    input_dropout: float = 0.0
    # Tied ID towers only: SASRec's input block as RecBole builds it. Rows and positions start
    # small (std 0.02) and unscaled, and item plus position pass through a LayerNorm before the
    # input dropout, so every input starts at unit scale whatever the rows' norms become. On
    # the Amazon validation users it lifted the ID baseline from 0.0935 to 0.099 recall@10.
    input_norm: bool = False
    # Every linear map inside the transformer (attention projections included) starts at
    # normal(0, init_std) with zero biases, as BERT and RecBole's SASRec start; None keeps
    # PyTorch's defaults. Small layers leave each position's input almost untouched at the
    # start.
    init_std: float | None = None
    # False: the towers' output is the transformer's normalised last state itself, no linear
    # head (d_out must equal d_model), as SASRec reads it. With tied_output a user then starts
    # as the direction of their last item's row (its row scores highest), so the first scores
    # are item-to-item similarities of the tied table; a random head mixes that direction
    # away. At RecBole's batch and rate the tied ID towers left their plateau with this and
    # init_std together, and with neither alone (README, "Amazon benchmark").
    output_head: bool = True
    # Which event of a history learned position 0 marks: "from_start", the oldest (RecBole's
    # SASRec), or "from_end", the latest, whatever the history's length. A prefix's latest
    # event, the one that says most about the next, then always meets the same position row;
    # "from_start" gives it row n - 1 of a length-n prefix, a different one per length. Counting
    # from the end needs each row's real length and makes every earlier position's input depend
    # on how many events follow it, so it fits only objectives that score each history at its
    # last position (training.trainer.LAST_POSITION_OBJECTIVES). On the Amazon validation users
    # it lifted learn_hybrid and learn_v1 in every seed (README, "Amazon benchmark").
    positions: str = "from_start"
    # Hybrid towers only: the rank of the collaborative part published beside the towers'
    # output (``learn_features.pch.collaborative``): the training events' SVD factors, whose
    # weight is chosen on the validation users after training. 0: none, the towers alone. It
    # does not change the towers' training, so it is no part of their fingerprint.
    collaborative_rank: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise LearnFeaturesError(f"model.variant must be one of {VARIANTS}, got {self.variant}")
        if self.d_model % self.n_heads:
            raise LearnFeaturesError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.temperature <= 0:
            raise LearnFeaturesError(f"model.temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise LearnFeaturesError(f"model.id_dropout must be in [0, 1) (1 would never train the ID part), got {self.id_dropout}")
        if self.positions not in POSITIONS:
            raise LearnFeaturesError(f"model.positions must be one of {sorted(POSITIONS)}, got {self.positions!r}")
        if self.id_init not in ID_INITS:
            raise LearnFeaturesError(f"model.id_init must be one of {sorted(ID_INITS)}, got {self.id_init!r}")
        if self.collaborative_rank < 0:
            raise LearnFeaturesError(f"model.collaborative_rank must be 0 (none) or a positive rank, got {self.collaborative_rank}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise LearnFeaturesError(f"model.input_dropout must be in [0, 1), got {self.input_dropout}")
        if self.input_norm and not self.tied_output:
            raise LearnFeaturesError("model.input_norm is SASRec's input block over the tied ID table: it needs model.tied_output")
        if self.init_std is not None and not self.init_std > 0:
            raise LearnFeaturesError(f"model.init_std must be a positive number (or absent for PyTorch's defaults), got {self.init_std}")
        if not self.output_head and self.d_out != self.d_model:
            raise LearnFeaturesError(
                f"model.output_head = false reads the d_model-wide state out as it is: model.d_out ({self.d_out}) must equal model.d_model ({self.d_model})"
            )
        if self.tied_output and self.d_out != self.d_model:
            raise LearnFeaturesError(
                f"model.tied_output scores users against rows of the d_model-wide ID table: model.d_out ({self.d_out}) must equal model.d_model ({self.d_model})"
            )


class HybridInput(nn.Module):
    """The hybrid's item input: the content projection plus a learned ID residual.

    Its input is the content vector with the item's ID slot appended as one float channel
    (``ItemInputs`` builds it; slot 0 = no ID part). The output is
    ``LayerNorm(Linear(content)) + E[slot]`` where the item has a slot and is kept, else the
    content projection alone:

    - a cold item (slot 0) takes no value from the table: the residual is selected away with
      ``torch.where``, not multiplied by a mask, so that not even a non-finite row 0 reaches it
      and no gradient reaches the table from it. Its vector is the content model's.
    - in training each occurrence keeps its residual with probability ``1 - id_dropout``; a
      dropped occurrence is exactly a cold item. The kept residual is not rescaled by
      ``1 / (1 - id_dropout)`` as in ordinary dropout: training then sees exactly the two inputs
      serving sees (warm: content + E, cold: content alone), nothing in between.
    - ``E`` starts at zero, so the hybrid starts as the pure content model and the residual
      grows only where the ids add something; ``PCHConfig.id_init = "svd"`` starts it at the
      warm items' collaborative factors instead (the trainer writes them, ``pch.id_init``).
    """

    def __init__(self, content_dim: int, num_items: int, d_model: int, id_dropout: float):
        super().__init__()
        self.content = nn.Sequential(nn.Linear(content_dim, d_model), nn.LayerNorm(d_model))
        self.ids = nn.Embedding(num_items + 1, d_model)  # row 0 is never used: slot 0 means "no ID part"
        nn.init.zeros_(self.ids.weight)
        self.id_dropout = id_dropout

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """(..., content_dim + 1): content then the ID slot -> (..., d_model)."""
        slots = items[..., -1].long()
        use = slots > 0
        if self.training and self.id_dropout > 0:
            use = use & (torch.rand(slots.shape, device=slots.device) >= self.id_dropout)
        content = self.content(items[..., :-1])
        return torch.where(use.unsqueeze(-1), content + self.ids(slots), content)


class TiedIds(nn.Module):
    """SASRec's shared ID table (``PCHConfig.tied_output``): the towers' input and the items' output.

    Rows start at norm about 1 (std ``d_model**-0.5``), so that random user-item scores start
    near chance instead of spreading the softmax; the towers read them scaled by
    ``sqrt(d_model)`` (as SASRec does), coordinates of the positions' unit scale. With
    ``normed`` (``PCHConfig.input_norm``) rows start at std 0.02 and are read unscaled: the
    LayerNorm after them sets the scale, as in RecBole's SASRec.
    Row 0 is the shared "unknown item", as in the untied ID tower.
    """

    def __init__(self, num_items: int, d_model: int, normed: bool = False):
        super().__init__()
        self.table = nn.Embedding(num_items + 1, d_model)
        nn.init.normal_(self.table.weight, std=0.02 if normed else d_model**-0.5)
        self.scale = 1.0 if normed else d_model**0.5

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The towers' input for ``ids``."""
        return self.table(ids) * self.scale

    def items(self, ids: torch.Tensor) -> torch.Tensor:
        """The items' output vectors: their rows, unscaled."""
        return self.table(ids)


def length_group_widths(lengths: torch.Tensor, longest: int) -> torch.Tensor:
    """Each row's width in ``PCH.encode_by_length``: its length rounded up to a power of two,
    at most ``longest`` (the batch's padded width)."""
    return torch.clamp(2 ** torch.ceil(torch.log2(lengths.clamp_min(1).float())).long(), max=longest)


def _small_init(module: nn.Module, std: float) -> None:
    """``PCHConfig.init_std``: every linear map under ``module`` from normal(0, std), biases zero.
    The attention's packed input projection is a bare parameter, not an ``nn.Linear``."""
    for part in module.modules():
        if isinstance(part, nn.Linear):
            nn.init.normal_(part.weight, std=std)
            nn.init.zeros_(part.bias)
        if isinstance(part, nn.MultiheadAttention):
            nn.init.normal_(part.in_proj_weight, std=std)
            nn.init.zeros_(part.in_proj_bias)


class PCH(nn.Module):
    """Twin towers over item sequences: ``content_dim`` alone is LEARN, ``num_items`` alone the
    ID baseline, both the hybrid (content plus an ID residual for ``num_items`` slots)."""

    def __init__(self, config: PCHConfig, content_dim: int | None = None, num_items: int | None = None):
        super().__init__()
        if content_dim is None and num_items is None:
            raise ValueError("give content_dim (LEARN), num_items (ID baseline) or both (hybrid)")
        if config.variant == 3 and num_items is not None:
            kind = "the ID baseline cannot use it" if content_dim is None else "the hybrid's ID part would bypass it"
            raise LearnFeaturesError(f"variant 3 uses raw content embeddings; {kind}")
        if config.tied_output and content_dim is not None:
            raise LearnFeaturesError("model.tied_output scores items by their ID rows: only the ID baseline (no content) can use it")
        self.config = config
        self.input: nn.Module
        if content_dim is not None and num_items is not None:
            self.input = HybridInput(content_dim, num_items, config.d_model, config.id_dropout)
        elif content_dim is not None:
            self.input = nn.Sequential(nn.Linear(content_dim, config.d_model), nn.LayerNorm(config.d_model))
        elif config.tied_output:
            self.input = TiedIds(num_items, config.d_model, config.input_norm)
        else:
            # index 0 is the shared "unknown item": every item without a trained id lands there.
            self.input = nn.Embedding(num_items + 1, config.d_model)
        self.positions = nn.Embedding(config.max_len, config.d_model)
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.input_norm = nn.LayerNorm(config.d_model) if config.input_norm else None
        if self.input_norm is not None:
            nn.init.normal_(self.positions.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.d_model, config.n_heads, config.d_ff, config.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        if config.init_std is not None:
            _small_init(self.transformer, config.init_std)
        self.final_norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.d_out) if config.output_head else nn.Identity()
        self.raw_item_head = nn.Linear(content_dim, config.d_out) if config.variant == 3 else None

    def encode(self, items: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, content_dim) floats, (B, L) ids or (B, L, content_dim + 1) hybrid inputs ->
        (B, L, d_out) unit vectors (raw ones with ``tied_output``), causally. ``lengths`` (B,)
        are the rows' real lengths, which ``positions = "from_end"`` counts back from (rows
        without them are taken as unpadded).

        Sequences are left-aligned with padding at the end; under the causal mask no real
        position attends to a later (padded) one, so padding needs no key mask. Passing
        ``is_causal=True`` with no key mask lets attention drop the explicit mask and call
        ``scaled_dot_product_attention(is_causal=True)``, which flash/memory-efficient kernels take.
        """
        x = self._positioned(self.input(items), lengths)
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
        x = self.transformer(x, mask=mask, is_causal=True)
        return self._output(x)

    def encode_by_length(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``encode`` of left-aligned rows of very different lengths, at the cost of their lengths.

        A batch pads every row to its longest, so one long history makes the whole batch pay
        for it: RecBole-style prefix batches on Amazon (about 4 events a prefix, a batch
        padded to about 50) spent nine tenths of their transformer work on padding. Rows go
        through ``encode`` in groups of equal width, each length rounded up to a power of two
        (at most log2(L) + 1 shapes, which keeps ``torch.compile`` from recompiling per batch).
        Under the causal mask a real position never sees the padding after it, so every real
        position's output is ``encode``'s (positions past a group's width come back as zeros;
        no loss reads padding). Only the random draws differ: each group draws its own dropout
        masks.
        """
        widths = length_group_widths(lengths, items.shape[1])
        out: torch.Tensor | None = None
        for width in torch.unique(widths).tolist():
            rows = torch.nonzero(widths == width).squeeze(1)
            part = self.encode(items[rows, :width], lengths[rows])
            if out is None:
                out = part.new_zeros(items.shape[0], items.shape[1], part.shape[-1])
            out = out.index_put((rows,), F.pad(part, (0, 0, 0, items.shape[1] - width)))
        assert out is not None  # a batch has rows
        return out

    def last_output(self, projected: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) item inputs already through ``self.input``, (B,) real lengths ->
        (B, d_out): ``last_position(encode(items), lengths)``, at serving cost.

        Retrieval reads one output per history, the one after its last real event. Every layer
        but the last still runs over all positions (later layers attend to them), but the last
        layer runs for that one position alone: its query against the real positions' keys,
        then its feed-forward. For the default two-layer towers this halves the transformer's
        work. The inputs come projected so that a caller can project each catalog item once
        (``pch.inference.input_table``) instead of once per history position.
        """
        x = self._positioned(projected, lengths)
        *lower, last = self.transformer.layers
        if lower:
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
            for layer in lower:
                x = layer(x, src_mask=mask, is_causal=True)
        rows = torch.arange(x.shape[0], device=x.device)
        # ``last`` is a norm_first TransformerEncoderLayer (see __init__), evaluated at one position.
        normed = last.norm1(x)
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        attended = last.self_attn(normed[rows, lengths - 1].unsqueeze(1), normed, normed, key_padding_mask=padding, need_weights=False)[0]
        h = x[rows, lengths - 1] + last.dropout1(attended.squeeze(1))
        h = h + last.dropout2(last.linear2(last.dropout(last.activation(last.linear1(last.norm2(h))))))
        return self._output(h)

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer's states -> user (or item-tower) vectors: unit ones for cosine
        scores, raw ones for ``tied_output``'s dot products."""
        out = self.head(self.final_norm(x))
        return out if self.config.tied_output else F.normalize(out, dim=-1)

    def _positioned(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        length = x.shape[1]
        if length > self.config.max_len:
            raise LearnFeaturesError(f"sequence of length {length} exceeds model.max_len {self.config.max_len}")
        x = x + self.positions(POSITIONS[self.config.positions](length, lengths, x.device))
        return self.input_dropout(x if self.input_norm is None else self.input_norm(x))

    def forward(
        self, history: torch.Tensor, targets: torch.Tensor | None, extra: torch.Tensor | None = None, alone: bool = False,
        history_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """One training step's towers: (user embeddings per history position, target embeddings,
        the targets each embedded alone as served when ``alone``, embeddings of ``extra`` items).

        ``targets`` is None under the full softmax, whose candidates (the targets among them)
        are all ``extra``. ``history_lengths`` asks for the histories to be run grouped by
        length (``encode_by_length``). Training goes through ``forward`` because
        DistributedDataParallel and torch.compile wrap exactly this method.
        """
        served = self.item_embeddings(targets.flatten(0, 1)).unflatten(0, targets.shape[:2]) if alone and targets is not None else None
        extra_embeddings = self.item_embeddings(extra) if extra is not None else None
        target_embeddings = None if targets is None else self.target_embeddings(targets)
        return self.user_embeddings(history, history_lengths), target_embeddings, served, extra_embeddings

    def user_embeddings(self, history: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """One user embedding per history position (the dense all-action loss uses them all)."""
        return self.encode(history) if lengths is None else self.encode_by_length(history, lengths)

    def target_embeddings(self, targets: torch.Tensor) -> torch.Tensor:
        """Item embeddings for a (B, M, ...) target sequence, per the configured variant."""
        if self.config.variant == 1 and not self.config.tied_output:
            return self.encode(targets)
        return self.item_embeddings(targets.flatten(0, 1)).unflatten(0, targets.shape[:2])

    def item_embeddings(self, items: torch.Tensor) -> torch.Tensor:
        """Serving path: (K, ...) item inputs (see ``encode``) -> (K, d_out), each item alone."""
        if isinstance(self.input, TiedIds):
            return self.input.items(items)
        if self.raw_item_head is not None:
            return F.normalize(self.raw_item_head(items), dim=-1)
        return self.encode(items.unsqueeze(1)).squeeze(1)

    @staticmethod
    def last_position(embeddings: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The user embedding for retrieval: the output after the whole (real) history."""
        return embeddings[torch.arange(embeddings.shape[0], device=embeddings.device), lengths - 1]
