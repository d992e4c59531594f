"""Helpers to build and copy ``WorkerInfo`` records."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from llmesh.v1 import common_pb2


def timestamp_ms(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def copy_worker(worker: common_pb2.WorkerInfo) -> common_pb2.WorkerInfo:
    clone = common_pb2.WorkerInfo()
    clone.CopyFrom(worker)
    return clone
