"""The data-path kit: receivers (`receiver.py`) and the acquisition loop (`acquisition.py`), on the client library."""
