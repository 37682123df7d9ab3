"""deltalora: LoRA generators supervised by behavioural matching (delta activations)."""

__version__ = "0.1.0"

# The pipeline's stages, in the order data flows through them. A stage's modules import only earlier stages
# and the shared modules (errors, registry, config, paths, sharding, store); tests/test_package_structure.py checks it.
PIPELINE = (
    "backbones",
    "lora",
    "tasks",
    "zoo",
    "deltas",
    "conditions",
    "generators",
    "retrieval",
    "training",
    "eval",
    "experiment",
    "cli",
)
SHARED = ("errors", "registry", "config", "paths", "sharding", "store")
