"""Tokenizers for the CLAP text encoder.

The real one is RoBERTa's byte-level BPE, loaded from the local `laion/larger_clap_general` folder.
The tiny one is built in code (no files, no network, identical on every machine): a byte-level
vocabulary with no merges and RoBERTa's special tokens at RoBERTa's ids, so the same TextEncoder code
path (special tokens, pad id 1 = CLAP's padding_idx, right padding) runs for tests and for real.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from foley_dist.errors import FoleyError

# RoBERTa's ids: <s>=0, <pad>=1, </s>=2, <unk>=3; <mask> goes last.
_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
TINY_VOCAB_SIZE = len(_SPECIALS) + 256 + 1  # + <mask>
CLAP_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # either is enough for AutoTokenizer


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte, wrapped as <s> ... </s> like RoBERTa."""
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):  # sorted: the alphabet is a set
        vocab[ch] = len(vocab)
    vocab["<mask>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=512,  # RoBERTa's; TextEncoder truncates to its position table anyway
    )


def load_clap_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local CLAP folder (never the hub)."""
    path = Path(path)
    if not any((path / f).is_file() for f in CLAP_TOKENIZER_FILES):
        raise FoleyError(
            f"no tokenizer in {path}: expected tokenizer.json (or vocab.json + merges.txt) and "
            "tokenizer_config.json from laion/larger_clap_general"
        )
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise FoleyError(f"cannot load the CLAP tokenizer from {path}: {e}") from e
