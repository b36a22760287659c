"""convnext family: being written."""
