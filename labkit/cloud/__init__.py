"""The embedded cloud: one process that speaks the OpenStack APIs on 127.0.0.1."""

import sys

# jsonschema checks the "iri" format with rfc3987_syntax when that is installed (jupyter's
# dependencies bring it), and importing it builds a parser: a second of every cloud start.
# No schema here uses that format, so the cloud does without it.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
