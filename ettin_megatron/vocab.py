"""The vocabulary facts every layer shares: the special tokens' names and the ids the model, the data
and the conversion need, ModernBERT's by default.

Ground floor: it imports nothing of the package. Which ids a given tokenizer has is data/tokenizer.py's
business (``special_ids``); this module only says what they are.
"""

from dataclasses import dataclass
from typing import Dict, Optional

#: Special token names shared by the ModernBERT tokenizer and the small tokenizers we train.
SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
#: The same tokens under the names transformers' tokenizer_config.json / special_tokens_map.json use.
TOKEN_NAMES = dict(zip(("unk_token", "cls_token", "sep_token", "pad_token", "mask_token"), SPECIAL_TOKENS))


@dataclass(frozen=True)
class SpecialIds:
    """Ids the model and objectives need. `vocab_size` counts added tokens; `padded_vocab_size`
    rounds it up to a multiple (64 by default, which keeps ModernBERT's 50368 unchanged) so the
    embedding splits evenly under tensor parallelism."""

    unk: int
    cls: int
    sep: int
    pad: int
    mask: int
    vocab_size: int
    padded_vocab_size: int

    def token_id_fields(self) -> dict:
        """The ids under the names configs use (EttinDatasetConfig, Hugging Face configs)."""
        return {"cls_token_id": self.cls, "sep_token_id": self.sep, "pad_token_id": self.pad,
                "mask_token_id": self.mask}


#: The ids of the ModernBERT tokenizer Ettin was trained with: the defaults wherever no tokenizer is
#: given (tests check them against the real tokenizer when it is available).
MODERNBERT_IDS = SpecialIds(unk=50280, cls=50281, sep=50282, pad=50283, mask=50284,
                            vocab_size=50368, padded_vocab_size=50368)


def transformers_tokenizer_files(model_max_length: Optional[int]) -> Dict[str, dict]:
    """{file name: content} of tokenizer_config.json and special_tokens_map.json for our special
    tokens: with them AutoTokenizer loads a bare tokenizer.json as a fast tokenizer that knows its
    [CLS] / [SEP] / [PAD] / [MASK]. Also written by the HF export when its tokenizer lacks them."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **TOKEN_NAMES,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    if model_max_length:
        config["model_max_length"] = model_max_length
    return {"tokenizer_config.json": config, "special_tokens_map.json": dict(TOKEN_NAMES)}
