"""Stubs for the asympo.v1 protobuf package; import as `from asympo.proto.v1 import bus_pb2`."""
