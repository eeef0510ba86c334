"""Generated gRPC/protobuf stubs for proto/asympo/v1 (regenerate with `make proto`)."""
