"""Hypervisor drivers: what nova-compute asks a hypervisor to do."""
