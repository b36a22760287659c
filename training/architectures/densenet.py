"""densenet family: being written."""
