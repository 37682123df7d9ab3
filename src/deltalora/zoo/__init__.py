"""The teacher zoo: adapters trained per task, listed in a manifest."""

from .build import CONFIG_NAME, ZooConfig, ZooJob, build_zoo, load_zoo_config, parse_shard, plan_jobs, shard_jobs
from .dnd_import import import_dnd
from .manifest import MANIFEST_NAME, ZooEntry, ZooError, adapter_dir, append_entry, file_sha256, read_manifest

__all__ = [
    "CONFIG_NAME",
    "MANIFEST_NAME",
    "ZooConfig",
    "ZooEntry",
    "ZooError",
    "ZooJob",
    "adapter_dir",
    "append_entry",
    "build_zoo",
    "file_sha256",
    "import_dnd",
    "load_zoo_config",
    "parse_shard",
    "plan_jobs",
    "read_manifest",
    "shard_jobs",
]
