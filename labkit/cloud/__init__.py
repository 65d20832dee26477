"""The embedded cloud: one process that speaks the OpenStack APIs on 127.0.0.1."""
