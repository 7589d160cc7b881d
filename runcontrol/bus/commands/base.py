"""What command modules share: the marker for "already answered"."""

ANSWERED = object()
