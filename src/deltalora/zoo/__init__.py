"""The teacher zoo: adapters trained per task, listed in a manifest."""

from .manifest import MANIFEST_NAME, ZooEntry, ZooError, adapter_dir, append_entry, file_sha256, read_manifest

__all__ = ["MANIFEST_NAME", "ZooEntry", "ZooError", "adapter_dir", "append_entry", "file_sha256", "read_manifest"]
