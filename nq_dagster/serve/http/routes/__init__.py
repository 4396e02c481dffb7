"""The API's routes, one module per resource; each module's `routes(state)` gives its routes bound to the
server's state (see `http/app.py` for the table of all of them)."""
