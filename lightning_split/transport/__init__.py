"""The wire: a no-pickle frame format, typed messages, the sans-I/O protocol, and the device's websocket client."""
