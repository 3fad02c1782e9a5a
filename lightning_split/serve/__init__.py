"""``lightning-split serve``: model hosting (host), one session's compute (session), the sessions held
(sessions), state on disk (store), the websocket app (app) and the same app on a thread (embedded)."""
