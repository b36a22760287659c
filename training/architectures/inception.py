"""inception family: being written."""
