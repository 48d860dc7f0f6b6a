"""schemathesis hooks for Sluice: plugin uploads are raw bytes (application/wasm)."""

import schemathesis


@schemathesis.serializer("application/wasm")
def wasm(ctx, value):
    # Generated bodies for a binary schema arrive as bytes; anything else is
    # sent as its text, which the server must refuse with a 4xx.
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode()
