"""Built-in task sources; importing this package registers them."""

from . import bigbench, humaneval, olmo_eval, reasoning_gym, userfiles  # noqa: F401
