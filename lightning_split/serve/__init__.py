"""``lightning-split serve``: model hosting, per-device sessions, state on disk, the websocket app."""
