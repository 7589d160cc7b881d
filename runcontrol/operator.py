"""`from runcontrol.operator import Operator`, kept for shift scripts; the code lives in `runcontrol.control.operator`."""

from runcontrol.control.operator import Operator

__all__ = ["Operator"]
