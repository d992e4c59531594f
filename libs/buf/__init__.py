"""The ``buf.validate`` schema for protovalidate (generated from third_party/protovalidate)."""
