"""Training (PyTorch): SGD with momentum on digits, CIFAR-10 batches or an ImageFolder tree."""
