"""labkit: the life of a VM in OpenStack, explorable.

`labkit.connect()` gives an openstacksdk Connection to a real cloud or to the
embedded one; `labkit.inspect` shows what the public API cannot.
"""

from labkit.connect import connect, connect_admin

__all__ = ["connect", "connect_admin"]
__version__ = "0.1.0"
