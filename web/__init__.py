"""The web program: a status page, its JSON API and /metrics, served as a client of the bus (python -m web)."""
