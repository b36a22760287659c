"""mobilenet family: being written."""
