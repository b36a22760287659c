"""efficientnet family: being written."""
