"""The REST gateway: jobs, control, metrics and pods over HTTP, backed by Redis."""
