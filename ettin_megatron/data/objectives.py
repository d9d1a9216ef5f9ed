"""Training objectives as pure functions of one sample: MLM masking, CLM and MNTP labels.

Every function works on a 1-D numpy token array that may hold several attention segments
(documents packed into one sample); `segment_lengths` says where they are. A label never crosses a
segment boundary, because the model cannot see across one.

Label convention (shared with the batch contract in batches.py): ``labels[p]`` is the token the
model's output at position ``p`` must predict and ``loss_mask[p]`` is 1.0 where that label counts;
``labels`` is 0 wherever ``loss_mask`` is 0. The loss therefore never shifts anything: each
objective places its targets at the positions that predict them.

Randomness comes only from the ``numpy.random.Generator`` the caller passes in, so a sample's
masking is a function of how that generator was seeded (the dataset seeds it from
(seed, split, sample index)).
"""

from dataclasses import dataclass, field
from typing import Dict, Sequence

import numpy

OBJECTIVES = ("mlm", "clm", "mntp")


@dataclass(frozen=True, eq=False)
class Masking:
    """How MLM / MNTP choose and corrupt positions.

    Positions are chosen independently with probability ``rate`` (Bernoulli, as in Hugging Face's
    DataCollatorForLanguageModeling that ModernBERT and Ettin trained with), among ordinary tokens
    only. A chosen position becomes [MASK] with probability ``mask_token_prob``, a random ordinary
    token with probability ``random_token_prob``, and keeps its token otherwise (BERT's 80/10/10).

    Compared and hashed by identity (``eq=False``): the generated field-wise ``==`` would compare
    ``ordinary_token_ids`` arrays, which raises, and an ndarray field cannot be hashed.
    """

    rate: float
    mask_token_id: int
    ordinary_token_ids: numpy.ndarray
    """Sorted ids that may be masked and may be drawn as random replacements; everything else
    ([CLS], [SEP], [PAD], [MASK], [UNK], [unusedN], ...) is never chosen and never drawn."""
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    _ordinary_table: numpy.ndarray = field(init=False, repr=False)
    """Whether each id is ordinary, for is_ordinary."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"mask rate must be in [0, 1], got {self.rate}.")
        if min(self.mask_token_prob, self.random_token_prob) < 0.0 or (
            self.mask_token_prob + self.random_token_prob > 1.0
        ):
            raise ValueError(
                "mask_token_prob and random_token_prob must be >= 0 and sum to at most 1, got "
                f"{self.mask_token_prob} and {self.random_token_prob}."
            )
        table = numpy.zeros(int(self.ordinary_token_ids.max(initial=-1)) + 3, dtype=bool)
        table[self.ordinary_token_ids + 1] = True
        object.__setattr__(self, "_ordinary_table", table)

    def is_ordinary(self, tokens: numpy.ndarray) -> numpy.ndarray:
        """Whether each token is one of ``ordinary_token_ids``: one look-up per token, where
        numpy.isin would scan or sort the ~50k ordinary ids again for every sample. The table is
        indexed by id + 1 between two False entries, onto which negative ids and ids above the
        largest ordinary one are clipped."""
        return self._ordinary_table.take(tokens + 1, mode="clip")


def ordinary_token_ids(
    num_ordinary_tokens: int, extra_special_ids: Sequence[int] = ()
) -> numpy.ndarray:
    """Ids [0, num_ordinary_tokens) minus `extra_special_ids`, sorted (see Masking)."""
    return numpy.setdiff1d(numpy.arange(num_ordinary_tokens, dtype=numpy.int64), extra_special_ids)


def mlm_mask(tokens: numpy.ndarray, masking: Masking, rng: numpy.random.Generator):
    """Corrupt `tokens` for masked language modelling.

    Returns (inputs, labels, loss_mask): labels hold the original token at chosen positions only.
    The generator draws a fixed number of values per token whatever the outcome, so the choice at
    one position does not change the draws of the others.
    """
    tokens = numpy.asarray(tokens, dtype=numpy.int64)
    n = tokens.shape[0]
    chosen = (rng.random(n) < masking.rate) & masking.is_ordinary(tokens)
    action = rng.random(n)
    random_ids = masking.ordinary_token_ids.take(rng.integers(0, len(masking.ordinary_token_ids), n))

    # A chosen position becomes [MASK] where action < mask_token_prob, a random id where action is
    # below the two shares' sum, and keeps its token above; whole-array selects, no scatter.
    replacement = numpy.where(action < masking.mask_token_prob, masking.mask_token_id, random_ids)
    kept = ~chosen | (action >= masking.mask_token_prob + masking.random_token_prob)
    inputs = numpy.where(kept, tokens, replacement)
    labels = numpy.where(chosen, tokens, 0)
    return inputs, labels, chosen.astype(numpy.float32)


def shift_left_within_segments(
    values: numpy.ndarray, valid: numpy.ndarray, segment_lengths: Sequence[int]
):
    """Move each (value, valid) pair from position p to p - 1 inside its segment.

    The first position of a segment has no predecessor, so its pair is dropped; the last position
    of a segment receives nothing (value 0, valid 0). This is what turns "the token at p" into
    "the target predicted at p - 1" without crossing documents. `values` must already be 0
    wherever `valid` is 0 (true of MLM labels), so the result keeps that property.
    """
    shifted_values = numpy.zeros_like(values)
    shifted_valid = numpy.zeros(values.shape[0], dtype=numpy.float32)
    shifted_values[:-1] = values[1:]
    shifted_valid[:-1] = valid[1:]
    segment_ends = numpy.cumsum(segment_lengths) - 1
    shifted_values[segment_ends] = 0
    shifted_valid[segment_ends] = 0.0
    return shifted_values, shifted_valid


def apply_objective(
    objective: str,
    tokens: numpy.ndarray,
    segment_lengths: Sequence[int],
    masking: Masking,
    rng: numpy.random.Generator,
) -> Dict[str, numpy.ndarray]:
    """Build the model inputs and targets of one sample for `objective`.

    - "mlm": inputs corrupted by `mlm_mask`; label of a chosen position p at p.
    - "clm": inputs unchanged; ``labels[p] = tokens[p + 1]`` when p + 1 is in the same segment.
      The last token of a segment has no label.
    - "mntp" (LLM2Vec's masked next-token prediction): inputs corrupted exactly as MLM; the label
      of a chosen position i is placed at i - 1 (``labels[i - 1] = tokens[i]``), i.e. the output
      at i - 1 predicts the masked token i, as a decoder's next-token head does. A chosen position
      that starts its segment has no predecessor and gets no label (it is still corrupted);
      with the [CLS]-first documents of this project that cannot happen, since [CLS] is never
      chosen.
    """
    tokens = numpy.asarray(tokens, dtype=numpy.int64)
    if objective == "clm":
        labels, loss_mask = shift_left_within_segments(
            tokens, numpy.ones(tokens.shape[0], dtype=numpy.float32), segment_lengths
        )
        inputs = tokens
    elif objective in ("mlm", "mntp"):
        inputs, labels, loss_mask = mlm_mask(tokens, masking, rng)
        if objective == "mntp":
            labels, loss_mask = shift_left_within_segments(labels, loss_mask, segment_lengths)
    else:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    return {"tokens": inputs, "labels": labels, "loss_mask": loss_mask}
