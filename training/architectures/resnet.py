"""resnet family: being written."""
