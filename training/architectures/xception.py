"""xception family: being written."""
