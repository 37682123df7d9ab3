"""Built-in task sources; importing this package registers them."""

from . import bigbench, humaneval, olmo_eval, openai_evals, reasoning_gym, userfiles  # noqa: F401
