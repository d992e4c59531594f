"""``python -m llmesh_inference [flags]``: the same as ``llmesh serve inference``."""

import sys

from llmesh_inference.app import main

sys.exit(main(sys.argv[1:]))
