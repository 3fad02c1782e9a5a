"""The wire: a no-pickle frame format, the sans-I/O protocol, and the device's websocket client."""
