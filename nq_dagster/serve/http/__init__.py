"""The prediction server's HTTP layer: the app factory (`app.py`), its one middleware (`middleware.py`),
errors and their JSON shape (`errors.py`), request bodies (`bodies.py`), keys and roles (`auth.py`), the state
the routes share (`state.py`), and the routes, one module per resource (`routes/`)."""
