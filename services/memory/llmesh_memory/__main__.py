"""``python -m llmesh_memory [flags]``: the same as ``llmesh serve memory``."""

import sys

from llmesh_memory.app import main

sys.exit(main(sys.argv[1:]))
