"""Validation of every client-supplied field; one ``BadRequest`` names each bad field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from llmesh.kernel.durations import MAX_TTL_S, seconds_of
from llmesh.kernel.errors import FieldViolation, InvalidArgument
from llmesh.v1 import common_pb2, gateway_pb2

SESSION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
MEMORY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
KEY_ID = re.compile(r"^[0-9a-f]{1,64}$")
WORKER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")
DEFAULT_MAX_TOKENS = 256
DEFAULT_HISTORY = 20


class Checker:
    """Collects violations; ``done()`` raises them all at once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def bad(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def text(
        self,
        field: str,
        value: str,
        *,
        min_bytes: int = 0,
        max_bytes: int,
        required: bool = False,
    ) -> None:
        size = _utf8_size(value)
        if size is None:
            self.bad(field, "must be valid UTF-8")
        elif (required or size) and not min_bytes <= size <= max_bytes:
            self.bad(field, f"must be {min_bytes}..{max_bytes} bytes of UTF-8 (got {size})")

    def pattern(
        self, field: str, value: str, pattern: re.Pattern[str], what: str, *, required: bool
    ) -> None:
        if not value:
            if required:
                self.bad(field, f"is required ({what})")
            return
        if not pattern.match(value):
            self.bad(field, f"must be {what}")

    def int_range(self, field: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            self.bad(field, f"must be in {low}..{high} (got {value})")

    def metadata(self, field: str, values: Mapping[str, str], *, max_pairs: int = 32) -> None:
        if len(values) > max_pairs:
            self.bad(field, f"at most {max_pairs} pairs (got {len(values)})")
        for key, value in values.items():
            if not 1 <= len(key) <= 64 or _utf8_size(key) is None:
                self.bad(f"{field}[{key[:64]}]", "keys must be 1..64 characters of UTF-8")
            size = _utf8_size(value)
            if size is None or size > 1024:
                self.bad(f"{field}[{key[:64]}]", "values must be at most 1024 bytes of UTF-8")

    def done(self, what: str = "invalid request") -> None:
        if self.violations:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:5])
            raise InvalidArgument(f"{what}: {summary}", field_violations=self.violations)


def _utf8_size(value: str) -> int | None:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates cannot come from the wire, but be sure
        return None


def _finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


def check_sampling(c: Checker, field: str, sampling: common_pb2.SamplingParams) -> None:
    """Ranges of every sampling option."""
    if sampling.HasField("temperature") and not (
        _finite(sampling.temperature) and 0.0 <= sampling.temperature <= 2.0
    ):
        c.bad(f"{field}.temperature", "must be in [0, 2]")
    if sampling.HasField("top_p") and not (_finite(sampling.top_p) and 0.0 < sampling.top_p <= 1.0):
        c.bad(f"{field}.top_p", "must be in (0, 1]")
    if sampling.HasField("top_k") and not 0 <= sampling.top_k <= 1000:
        c.bad(f"{field}.top_k", "must be in 0..1000")
    if sampling.HasField("max_tokens") and not 1 <= sampling.max_tokens <= 8192:
        c.bad(f"{field}.max_tokens", "must be in 1..8192")
    if len(sampling.stop) > 8:
        c.bad(f"{field}.stop", f"at most 8 stop sequences (got {len(sampling.stop)})")
    for i, stop in enumerate(sampling.stop):
        c.text(f"{field}.stop[{i}]", stop, min_bytes=1, max_bytes=64, required=True)


def max_tokens_of(sampling: common_pb2.SamplingParams) -> int:
    """The effective ``max_tokens`` (server default when unset)."""
    return sampling.max_tokens if sampling.HasField("max_tokens") else DEFAULT_MAX_TOKENS


def check_messages(c: Checker, field: str, messages: Sequence[common_pb2.ChatMessage]) -> None:
    if not 1 <= len(messages) <= 256:
        c.bad(field, f"must hold 1..256 messages (got {len(messages)})")
    for i, message in enumerate(messages):
        if message.role not in (
            common_pb2.CHAT_ROLE_SYSTEM,
            common_pb2.CHAT_ROLE_USER,
            common_pb2.CHAT_ROLE_ASSISTANT,
        ):
            c.bad(f"{field}[{i}].role", "must be SYSTEM, USER or ASSISTANT")
        c.text(f"{field}[{i}].content", message.content, max_bytes=65536)


def check_model(c: Checker, field: str, model: str) -> None:
    c.pattern(field, model, MODEL_NAME, "a model name of [A-Za-z0-9._:/-], 1..128", required=False)


def check_generate(
    request: gateway_pb2.GenerateRequest | gateway_pb2.GenerateStreamRequest,
) -> None:
    """Validate ``Generate``/``GenerateStream``."""
    c = Checker()
    check_model(c, "model", request.model)
    if request.WhichOneof("input") == "messages":
        check_messages(c, "messages.messages", request.messages.messages)
    else:
        c.text("prompt", request.prompt, min_bytes=1, max_bytes=65536, required=True)
    check_sampling(c, "sampling", request.sampling)
    c.pattern(
        "session_id", request.session_id, SESSION_ID, "1..128 of [A-Za-z0-9._:-]", required=False
    )
    c.done()


def check_recall_options(c: Checker, field: str, options: common_pb2.RecallOptions) -> None:
    c.int_range(f"{field}.k", options.k, 0, 100)
    if not _finite(options.min_score):
        c.bad(f"{field}.min_score", "must be a finite number")
    for name in ("semantic_weight", "keyword_weight"):
        if options.HasField(name):
            value = getattr(options, name)
            if not (_finite(value) and 0.0 <= value <= 1.0):
                c.bad(f"{field}.{name}", "must be in [0, 1]")
    if options.mode not in common_pb2.FusionMode.values():
        c.bad(f"{field}.mode", "unknown fusion mode")
    c.metadata(f"{field}.metadata_filter", options.metadata_filter)


def check_chat(request: gateway_pb2.ChatRequest) -> None:
    """Validate ``Chat``."""
    c = Checker()
    c.pattern(
        "session_id", request.session_id, SESSION_ID, "1..128 of [A-Za-z0-9._:-]", required=True
    )
    c.text("message", request.message, min_bytes=1, max_bytes=32768, required=True)
    check_model(c, "model", request.model)
    check_recall_options(c, "recall", request.recall)
    check_sampling(c, "sampling", request.sampling)
    c.text("system_prompt", request.system_prompt, max_bytes=32768)
    c.int_range("history_limit", request.history_limit, 0, 200)
    c.text("idempotency_key", request.idempotency_key, max_bytes=128)
    c.done()


def check_embed(request: gateway_pb2.EmbedRequest) -> None:
    c = Checker()
    if not 1 <= len(request.texts) <= 256:
        c.bad("texts", f"must hold 1..256 texts (got {len(request.texts)})")
    for i, text in enumerate(request.texts):
        c.text(f"texts[{i}]", text, min_bytes=1, max_bytes=8192, required=True)
    check_model(c, "model", request.model)
    c.done()


def check_remember(request: gateway_pb2.RememberRequest) -> None:
    c = Checker()
    c.text("text", request.text, min_bytes=1, max_bytes=16384, required=True)
    c.metadata("metadata", request.metadata)
    if not 0 <= seconds_of(request.ttl) <= MAX_TTL_S:
        c.bad("ttl", "must be 0..10 years (0 means never)")
    c.text("idempotency_key", request.idempotency_key, max_bytes=128)
    c.done()


def check_recall(request: gateway_pb2.RecallRequest) -> None:
    c = Checker()
    c.text("query", request.query, min_bytes=1, max_bytes=4096, required=True)
    check_recall_options(c, "options", request.options)
    c.done()


def check_forget(request: gateway_pb2.ForgetRequest) -> None:
    c = Checker()
    if not request.ids and not request.metadata_filter:
        c.bad("ids", "give ids, a metadata_filter, or both")
    if len(request.ids) > 1000:
        c.bad("ids", "at most 1000 ids")
    for i, memory_id in enumerate(request.ids):
        c.pattern(f"ids[{i}]", memory_id, MEMORY_ID, "1..128 of [A-Za-z0-9._:-]", required=True)
    c.metadata("metadata_filter", request.metadata_filter)
    c.done()


def check_session_id(value: str, field: str = "session_id") -> None:
    c = Checker()
    c.pattern(field, value, SESSION_ID, "1..128 of [A-Za-z0-9._:-]", required=True)
    c.done()


def check_page(page_size: int, page_token: str, *, high: int = 500) -> None:
    c = Checker()
    c.int_range("page_size", page_size, 0, high)
    c.text("page_token", page_token, max_bytes=512)
    c.done()


def check_limit(limit: int) -> None:
    c = Checker()
    c.int_range("limit", limit, 0, 1000)
    c.done()


def check_worker_model(model: str, worker_id: str, *, model_required: bool) -> None:
    c = Checker()
    if model_required and not model:
        c.bad("model", "is required")
    check_model(c, "model", model)
    c.pattern("worker_id", worker_id, WORKER_ID, "1..253 of [A-Za-z0-9._:-]", required=False)
    c.done()


def check_worker_id(worker_id: str) -> None:
    c = Checker()
    c.pattern("worker_id", worker_id, WORKER_ID, "1..253 of [A-Za-z0-9._:-]", required=True)
    c.done()


def check_key_id(key_id: str) -> None:
    c = Checker()
    c.pattern("key_id", key_id, KEY_ID, "a key id (lowercase hex)", required=True)
    c.done()


def check_list_workers(model: str, state: int) -> None:
    c = Checker()
    check_model(c, "model", model)
    if state not in common_pb2.WorkerState.values():
        c.bad("state", "unknown worker state")
    c.done()


def check_drain(worker_id: str, reason: str) -> None:
    c = Checker()
    c.pattern("worker_id", worker_id, WORKER_ID, "1..253 of [A-Za-z0-9._:-]", required=True)
    c.text("reason", reason, max_bytes=1024)
    c.done()
