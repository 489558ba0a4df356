"""KServe's Open Inference Protocol v2 gRPC definition (grpc_predict_v2.proto, Apache-2.0, from
github.com/kserve/kserve docs/predict-api/v2, commit aaac4e29) and its generated message module.

Regenerate (grpcio-tools 1.62.x emits protobuf-4.25 code without a runtime-version gate, so any protobuf
>= 4.21 runs it; the descriptor goes into a private pool, because tritonclient registers the same inference.*
names in the default one and a process may import both):

    python -m venv /tmp/gt && /tmp/gt/bin/pip install grpcio-tools==1.62.3
    cd alexnet_deploy/server/kserve_v2 && /tmp/gt/bin/python -m grpc_tools.protoc -I. --python_out=. grpc_predict_v2.proto
    sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/_POOL = _descriptor_pool.DescriptorPool()  # private: tritonclient registers the same inference.* names in the default pool\\nDESCRIPTOR = _POOL.AddSerializedFile(/' grpc_predict_v2_pb2.py

The service is registered by hand in server/grpc_service.py (no *_pb2_grpc module, which would pin grpcio to
the generator's version)."""
