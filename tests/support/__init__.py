"""Helpers the tests share: service processes, the local stack, worker scripts run as subprocesses."""
