"""MLM / CLM / MNTP on hand-built examples and on masking statistics of a large sample.

Statistical bounds: over n independent Bernoulli(p) draws the observed fraction has standard
deviation sqrt(p (1 - p) / n); every check allows 5 of them (a false failure once in ~1.7 million
runs), and with n ~ 190k eligible tokens that is +-0.0052 around a 30% rate.
"""

import numpy
import pytest

from ettin_megatron.data.objectives import Masking, apply_objective, mlm_mask, ordinary_token_ids

# A small test vocabulary: ordinary ids [0, 1000) except 5 and 6; specials at the top.
UNK, CLS, SEP, PAD, MASK = 1000, 1001, 1002, 1003, 1004
EXTRA_SPECIALS = (5, 6)
ORDINARY = ordinary_token_ids(1000, EXTRA_SPECIALS)


def masking(rate, mask_token_prob=0.8, random_token_prob=0.1):
    return Masking(rate, MASK, ORDINARY, mask_token_prob, random_token_prob)


def within(observed, p, n, sigmas=5.0):
    return abs(observed - p) <= sigmas * numpy.sqrt(p * (1 - p) / n)


def large_sample(num_tokens=200_000, seed=0):
    """Ordinary tokens with ~5% of every kind of special sprinkled in."""
    rng = numpy.random.default_rng(seed)
    tokens = rng.choice(ORDINARY, num_tokens)
    specials = numpy.array([UNK, CLS, SEP, PAD, MASK, 1010, *EXTRA_SPECIALS])
    where = rng.random(num_tokens) < 0.05
    tokens[where] = rng.choice(specials, int(where.sum()))
    return tokens


@pytest.mark.parametrize("rate", [0.3, 0.15])
def test_mlm_masking_statistics(rate):
    tokens = large_sample()
    inputs, labels, loss_mask = mlm_mask(tokens, masking(rate), numpy.random.default_rng(1))
    eligible = numpy.isin(tokens, ORDINARY)
    chosen = loss_mask == 1.0

    assert not chosen[~eligible].any(), "a special token was chosen"
    assert (inputs[~eligible] == tokens[~eligible]).all(), "a special token was altered"
    assert within(chosen.sum() / eligible.sum(), rate, eligible.sum())
    assert (labels[chosen] == tokens[chosen]).all() and (labels[~chosen] == 0).all()
    assert (inputs[~chosen] == tokens[~chosen]).all()

    m = chosen.sum()
    to_mask = chosen & (inputs == MASK)
    changed = chosen & (inputs != MASK) & (inputs != tokens)
    # A random replacement equals the original token with probability 1 / len(ORDINARY).
    p_changed = 0.1 * (1 - 1 / len(ORDINARY))
    assert within(to_mask.sum() / m, 0.8, m)
    assert within(changed.sum() / m, p_changed, m)
    assert within((chosen & (inputs == tokens)).sum() / m, 1 - 0.8 - p_changed, m)
    assert numpy.isin(inputs[changed], ORDINARY).all(), "a random replacement was not ordinary"


def test_random_replacements_cover_ordinary_tokens_only():
    tokens = numpy.random.default_rng(2).choice(ORDINARY, 100_000)
    inputs, _, loss_mask = mlm_mask(tokens, masking(1.0, 0.0, 1.0), numpy.random.default_rng(3))
    assert (loss_mask == 1).all()
    # ~100 draws per id: every ordinary id shows up, no special one ever does.
    assert set(numpy.unique(inputs)) == set(ORDINARY)


def test_masking_rejects_bad_probabilities():
    with pytest.raises(ValueError):
        masking(1.5)
    with pytest.raises(ValueError):
        masking(0.3, 0.8, 0.3)


def test_clm_labels_stay_inside_segments():
    #         [CLS  a   b  SEP][CLS  c  SEP][ d   e ]
    tokens = [CLS, 11, 12, SEP, CLS, 13, SEP, 14, 15]
    out = apply_objective("clm", tokens, [4, 3, 2], masking(0.3), numpy.random.default_rng(0))
    assert out["tokens"].tolist() == tokens
    assert out["labels"].tolist() == [11, 12, SEP, 0, 13, SEP, 0, 15, 0]
    assert out["loss_mask"].tolist() == [1, 1, 1, 0, 1, 1, 0, 1, 0]


def test_mntp_places_each_masked_token_at_the_previous_position():
    #         [CLS  a   b  SEP][CLS  c   d  SEP][ e   f ]
    tokens = [CLS, 11, 12, SEP, CLS, 13, 14, SEP, 15, 16]
    rng = numpy.random.default_rng(0)
    out = apply_objective("mntp", tokens, [4, 4, 2], masking(1.0, 1.0, 0.0), rng)
    assert out["tokens"].tolist() == [CLS, MASK, MASK, SEP, CLS, MASK, MASK, SEP, MASK, MASK]
    # Masked a (pos 1) is predicted at pos 0, ..., e (pos 8) starts its segment: no label; f (pos 9)
    # is predicted at pos 8; nothing crosses from one segment into the previous one.
    assert out["labels"].tolist() == [11, 12, 0, 0, 13, 14, 0, 0, 16, 0]
    assert out["loss_mask"].tolist() == [1, 1, 0, 0, 1, 1, 0, 0, 1, 0]


def test_mntp_is_mlm_shifted_by_one_within_segments():
    tokens = large_sample(5_000, seed=4)
    segments = [1000, 1500, 2500]
    mlm = apply_objective("mlm", tokens, segments, masking(0.3), numpy.random.default_rng(5))
    mntp = apply_objective("mntp", tokens, segments, masking(0.3), numpy.random.default_rng(5))
    assert (mntp["tokens"] == mlm["tokens"]).all()
    start = 0
    for length in segments:
        seg = slice(start, start + length)
        assert (mntp["labels"][seg][:-1] == mlm["labels"][seg][1:]).all()
        assert (mntp["loss_mask"][seg][:-1] == mlm["loss_mask"][seg][1:]).all()
        assert mntp["labels"][seg][-1] == 0 and mntp["loss_mask"][seg][-1] == 0
        start += length


def test_unknown_objective_is_rejected():
    with pytest.raises(ValueError, match="objective"):
        apply_objective("nsp", [1, 2], [2], masking(0.3), numpy.random.default_rng(0))


def test_masking_compares_and_hashes():
    """A Masking holds an ndarray: == and hash must not raise (as a dataclass field-wise == would)."""
    first, second = masking(0.3), masking(0.3)
    assert first == first and first != second
    assert len({first, second, first}) == 2


def test_ordinary_lookup_agrees_with_isin():
    """is_ordinary's table answers as numpy.isin over the ordinary ids, also for ids outside the
    table (negative, special, above every id) and for a vocabulary whose id 0 is special."""
    ids = numpy.concatenate([numpy.arange(-3, 1012), [10**9]])
    for ordinary in (ORDINARY, ordinary_token_ids(1000, (0, 999)), ordinary_token_ids(0)):
        found = Masking(0.3, MASK, ordinary).is_ordinary(ids)
        assert found.dtype == bool and (found == numpy.isin(ids, ordinary)).all()
