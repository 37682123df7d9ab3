"""The teacher zoo: adapters trained per task, listed in a manifest."""

from .build import CONFIG_NAME, ZooConfig, ZooJob, build_zoo, load_zoo_config, parse_shard, plan_jobs, shard_jobs
from .canonical import INIT_DIR, ensure_init, init_record, read_init, zoo_init_kind
from .dnd_import import import_dnd
from .manifest import MANIFEST_NAME, ZooEntry, ZooError, adapter_dir, append_entry, file_sha256, read_manifest
from .multitask import MultitaskTeacher, build_multitask
from .train import TeacherTrainConfig, train_teacher

__all__ = [
    "CONFIG_NAME",
    "INIT_DIR",
    "TeacherTrainConfig",
    "ensure_init",
    "init_record",
    "read_init",
    "train_teacher",
    "zoo_init_kind",
    "MANIFEST_NAME",
    "MultitaskTeacher",
    "ZooConfig",
    "ZooEntry",
    "ZooError",
    "ZooJob",
    "adapter_dir",
    "append_entry",
    "build_multitask",
    "build_zoo",
    "file_sha256",
    "import_dnd",
    "load_zoo_config",
    "parse_shard",
    "plan_jobs",
    "read_manifest",
    "shard_jobs",
]
