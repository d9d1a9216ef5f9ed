"""Which ids of a tokenizer MLM may mask and draw as random replacements (training.batching.token_ids).

The tokenizer here is shaped like ModernBERT's: BPE vocabulary, the five specials after it, then
non-special ``[unusedN]`` placeholders; one BPE token is also re-added as a non-special added token
(as ModernBERT does with its whitespace runs), which must stay ordinary.
"""

import os

import numpy
from tokenizers import AddedToken

from ettin_megatron.data.objectives import ordinary_token_ids
from ettin_megatron.data.tokenizer import dataset_token_ids, load_tokenizer, special_ids

UNUSED = [f"[unused{i}]" for i in range(7)]


def test_added_placeholders_are_not_ordinary(tmp_path, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    bpe = tokenizer.get_vocab(with_added_tokens=False)
    text_token = max(bpe, key=len)  # a multi-byte BPE token, re-added as ModernBERT re-adds "   "
    tokenizer.add_tokens([AddedToken(text_token, special=False)] +
                         [AddedToken(t, special=False) for t in UNUSED])
    tokenizer.save(os.path.join(tmp_path, "tokenizer.json"))
    unused_ids = [tokenizer.token_to_id(t) for t in UNUSED]
    assert min(unused_ids) >= len(bpe) and tokenizer.token_to_id(text_token) == bpe[text_token]

    reloaded = load_tokenizer(str(tmp_path))
    fields, padded = dataset_token_ids(reloaded), special_ids(reloaded).padded_vocab_size
    ordinary = ordinary_token_ids(fields["num_ordinary_tokens"], fields["extra_special_token_ids"])
    assert numpy.array_equal(ordinary, numpy.arange(len(bpe)))  # the BPE ids, nothing else
    assert padded >= tokenizer.get_vocab_size(with_added_tokens=True)
