"""lenet family: being written."""
