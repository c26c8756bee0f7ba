"""Fake clouds on loopback: real client libraries talk to them over HTTP or gRPC."""
