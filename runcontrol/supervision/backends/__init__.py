"""Supervision backends: where and how a program's processes run."""
