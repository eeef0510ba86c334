"""Policy versions: the on-disk store (store), the probes a pod checks after a reload (probes), and the
gRPC stream that brings a version to a pod without a shared volume (transfer)."""
