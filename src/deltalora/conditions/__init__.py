"""Conditions: task prompts (or prompt + answer) encoded by a frozen sentence encoder, cached per text."""

from .cache import EMBED_CODE_VERSION, EmbeddingCache, embedding_key, encode_texts
from .conditions import (
    ANSWER_SEPARATOR,
    FORMS,
    Conditioner,
    ConditionError,
    ConditionPool,
    condition_text,
    pools_from_tasks,
    read_prompt_file,
    sample_indices,
    split_pools,
)
from .encoder import (
    EncoderError,
    EncoderSpec,
    PackagedFiles,
    SentenceEncoder,
    encoder_names,
    fetch_encoder,
    get_encoder_spec,
    load_encoder,
    register_encoder,
)

__all__ = [
    "ANSWER_SEPARATOR",
    "EMBED_CODE_VERSION",
    "FORMS",
    "ConditionError",
    "ConditionPool",
    "Conditioner",
    "EmbeddingCache",
    "EncoderError",
    "EncoderSpec",
    "PackagedFiles",
    "SentenceEncoder",
    "condition_text",
    "embedding_key",
    "encode_texts",
    "encoder_names",
    "fetch_encoder",
    "get_encoder_spec",
    "load_encoder",
    "pools_from_tasks",
    "read_prompt_file",
    "register_encoder",
    "sample_indices",
    "split_pools",
]
