"""The llama.cpp engine: a supervised ``llama-server`` child behind the InferenceService.

On Linux CPUs MLX is slow on real models; a worker may run llama.cpp instead
(``engine = llamacpp`` or ``auto``). Parts, one job each: :mod:`.binary` (find the
optional, separately built binary), :mod:`.http` (a small HTTP/1.1 client: closing a
stream aborts the request in llama-server), :mod:`.child` (the supervised process and
its health), :mod:`.store` (GGUF models), :mod:`.engine` (submit, cancel, deadlines,
counters), :mod:`.select` (which engine a worker runs). Embeddings stay in MLX.
"""
