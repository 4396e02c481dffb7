"""The prediction server (`nq serve`): the request path on the one prediction path (DESIGN.md section 9).
`engine/` advances the served sources and keeps every acknowledged tick; `http/` is its HTTP and WebSocket
face (`http.app.create_server`); `keys.py` the API keys, `server_settings.py` the server's own settings,
`logs.py` its structured logs."""
