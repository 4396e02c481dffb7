"""The prediction server (`nq serve`): the request path on the one prediction path (DESIGN.md section 9)."""
