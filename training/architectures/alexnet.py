"""alexnet family: being written."""
