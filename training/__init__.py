"""convzoo training: build, fit, evaluate and export landmark CNNs (Keras 3 on TensorFlow)."""
