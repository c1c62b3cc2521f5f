"""The protocol's gRPC service, `grpc_predict_v2.proto` as KServe publishes it, and the code generated from it.

Regenerate with `make proto`, which runs (mypy-protobuf gives the `.pyi` stubs):

    python -m grpc_tools.protoc -I src --python_out=src --grpc_python_out=src --mypy_out=src \
        --mypy_grpc_out=src src/mlapi/oip/proto/grpc_predict_v2.proto

tritonclient.grpc registers the same `inference.*` messages in protobuf's default pool, so one process cannot
import both: the API serves with these, the tests and benchmarks use tritonclient's.
"""
