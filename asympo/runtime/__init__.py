"""What every service process shares: settings from flags and environment, the gRPC server, logs and metrics."""
