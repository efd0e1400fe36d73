"""Data pipelines: tokenizers and packed text batches (grain is imported lazily)."""

from jaxmoe.data.text import (
    DataError,
    TextPipeline,
    build_text_pipeline,
    default_corpus,
    default_documents,
    pack_tokens,
    read_documents,
    tokenize_documents,
)
from jaxmoe.data.tokenizers import (
    BYTE_BOS_ID,
    BYTE_EOS_ID,
    BYTE_PAD_ID,
    BYTE_VOCAB_SIZE,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "BYTE_BOS_ID",
    "BYTE_EOS_ID",
    "BYTE_PAD_ID",
    "BYTE_VOCAB_SIZE",
    "ByteTokenizer",
    "DataError",
    "HFTokenizer",
    "TextPipeline",
    "Tokenizer",
    "build_text_pipeline",
    "default_corpus",
    "default_documents",
    "load_tokenizer",
    "pack_tokens",
    "read_documents",
    "tokenize_documents",
    "train_bpe_tokenizer",
]
