"""vgg family: being written."""
