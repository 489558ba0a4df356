"""`alexnet-deploy`: one command from a checkpoint to a verified deployment folder with a report.

It composes the stage APIs (ONNX export, INT8 calibration, TensorRT builds, Triton export, parity, benchmarks)
into steps whose cache keys are content hashes of their inputs and options; see ``plan.py``.
"""
