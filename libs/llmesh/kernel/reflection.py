"""gRPC server reflection under both service names: ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection ships only ``v1alpha``. The ``v1`` protocol is the same schema in
another package (every message and field number identical), so one servicer answers
both names, and the ``v1`` file descriptor (``v1alpha``'s with the package renamed) is
added to the descriptor pool so clients can also describe the ``v1`` service itself.
Current grpcurl, Postman and grpcui ask for ``v1`` first.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_OLD, _NEW = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """``reflection.proto`` of ``v1alpha`` renamed to package ``grpc.reflection.v1``."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    proto.options.Clear()
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(_OLD, _NEW)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(_OLD, _NEW)
            method.output_type = method.output_type.replace(_OLD, _NEW)
    return proto


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
    except KeyError:
        pool.Add(_v1_file())


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection for ``service_names`` (plus both reflection services) on ``server``."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    names = (*service_names, V1, V1ALPHA)
    servicer = ReflectionServicer(names, pool=pool)
    for service in (V1, V1ALPHA):
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),)
        )
