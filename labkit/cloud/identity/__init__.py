"""Keystone: tokens, the catalog, and who may do what."""
