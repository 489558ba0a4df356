"""alexnet-deploy: PyTorch AlexNet -> verified ONNX / TensorRT deployments.

Importing this package is cheap and needs neither torch nor any optional dependency; the stages are
imported from their sub-packages (``alexnet_deploy.models``, ``alexnet_deploy.exporter`` ...).
"""
from alexnet_deploy.errors import AlexnetDeployError

__version__ = "0.1.0"
__all__ = ["AlexnetDeployError", "__version__"]
