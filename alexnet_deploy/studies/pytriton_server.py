"""A real Triton front end for an ONNX model: PyTriton (Triton's own ``tritonserver`` binary, Python backend,
``@batch``) with an onnxruntime session behind it. Run in PyTriton's venv (numpy, onnxruntime, nvidia-pytriton),
as a script by path; it imports nothing of alexnet-deploy (that venv does not have it):

    /work/.venv-pytriton/bin/python alexnet_deploy/studies/pytriton_server.py MODEL.onnx --name N \
        --http-port P --grpc-port Q --metrics-port R [--input-name I --output-name O --dims 3,32,32 ...]

The model interface (name, input/output names, dims, max batch, queue delay) is given explicitly, e.g. parsed from
an exported config.pbtxt (studies/servers.py: TritonModel.from_config_pbtxt); what is not given comes from the
ONNX session. Prints ``pytriton ready`` once bound, serves until SIGTERM/SIGINT.

Used by studies/serve_vs_triton.py and tests/server/test_one_client_two_servers.py through studies/servers.py."""
from __future__ import annotations

import argparse

DTYPES = {"TYPE_FP32": "float32", "TYPE_UINT8": "uint8", "tensor(float)": "float32", "tensor(uint8)": "uint8"}


def _dims(text: str | None):
    return None if not text else tuple(int(d) for d in text.split(","))


def main(argv=None) -> None:
    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--name", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--input-name")
    p.add_argument("--input-dtype", help="TYPE_FP32 | TYPE_UINT8 (default: the ONNX input's)")
    p.add_argument("--input-dims", help="comma-separated dims without the batch (default: the ONNX input's)")
    p.add_argument("--output-name")
    p.add_argument("--output-dims", help="comma-separated dims without the batch (default: the ONNX output's)")
    p.add_argument("--allow-spinning", choices=("0", "1"), default="0",
                   help="ORT session.intra_op.allow_spinning (default 0, what alexnet-serve sets)")
    a = p.parse_args(argv)

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", a.allow_spinning)
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    in_name, out_name = a.input_name or inp.name, a.output_name or out.name
    dtype = np.dtype(DTYPES[a.input_dtype or inp.type])
    in_dims = _dims(a.input_dims) or tuple(inp.shape[1:])
    out_dims = _dims(a.output_dims) or tuple(out.shape[1:])

    @batch
    def infer(**inputs):
        return {out_name: sess.run([out.name], {inp.name: inputs[in_name]})[0]}

    cfg = TritonConfig(http_address="127.0.0.1", http_port=a.http_port, grpc_address="127.0.0.1",
                       grpc_port=a.grpc_port, metrics_port=a.metrics_port, log_verbose=0)
    with Triton(config=cfg) as triton:
        triton.bind(model_name=a.name, infer_func=infer,
                    inputs=[Tensor(name=in_name, dtype=dtype, shape=in_dims)],
                    outputs=[Tensor(name=out_name, dtype=np.float32, shape=out_dims)],
                    config=ModelConfig(max_batch_size=a.max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=a.queue_delay_us)),
                    strict=False)
        print("pytriton ready", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
