"""The control: the run controller, run transitions and the run book, the operator API, launch and view logic."""
